//! harness (todo)
