//! Operations a host runs around its engines, sans-IO like the engine: time comes in
//! as `now_ms`, nothing here touches a socket or a clock.
//!
//! * [`route`]: read routing over replicas (round-robin, weighted, health-, lag- and
//!   token-aware, with failure feedback).
//! * [`alert`]: alert rules on an engine's metrics, with pending, firing and resolved
//!   states and hysteresis.

pub mod alert;
pub mod route;
