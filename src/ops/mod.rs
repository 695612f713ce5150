//! Operations on a cluster of replicas, sans-IO: the logic a node hosts around its
//! engine, kept here so the simulator can test it.
//!
//! * [`failover`]: a failover coordinator for master–follower deployments (candidate
//!   choice, planned switchover, automatic failover after failed health checks,
//!   fencing epochs);
//! * [`quorum`]: quorum reads (merge what a majority holds).

pub mod failover;
pub mod quorum;
