#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![doc = include_str!("../README.md")]

pub mod clock;
pub mod error;
pub mod hlc;
pub mod id;
pub mod resolver;

pub use clock::{CausalContext, CausalOrder, VectorClock};
pub use error::{Error, Result};
pub use hlc::{Hlc, ManualClock, SystemClock, TimeSource, Timestamp};
pub use id::{Dot, ReplicaId};
pub use resolver::{Outcome, Resolver};
