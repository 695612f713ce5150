//! Layer 1, causality: who wrote what, and what has been seen. Replica ids and dots
//! ([`id`]), version vectors and causal contexts ([`clock`]), hybrid logical time
//! ([`hlc`]) and the join every replicated type shares ([`resolver`]).

pub mod clock;
pub mod hlc;
pub mod id;
pub mod resolver;
