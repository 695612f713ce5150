//! Operations a host runs around its engines, sans-IO like the engine: time comes in
//! as `now_ms`, nothing here touches a socket or a clock, so the simulator can test
//! it.
//!
//! * [`route`]: read routing over replicas (round-robin, weighted, health-, lag- and
//!   token-aware, with failure feedback).
//! * [`alert`]: alert rules on an engine's metrics, with pending, firing and resolved
//!   states and hysteresis.
//! * [`failover`]: a failover coordinator for master–follower deployments (candidate
//!   choice, planned switchover, automatic failover after failed health checks,
//!   fencing epochs).
//! * [`quorum`]: quorum reads (merge what a majority holds).

pub mod alert;
pub mod failover;
pub mod quorum;
pub mod route;
