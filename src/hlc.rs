//! Hybrid logical clock (being written).
