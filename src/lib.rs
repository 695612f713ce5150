#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![doc = include_str!("../README.md")]
#![doc = include_str!("../docs/guide.md")]

pub mod causal;
pub mod clock;
pub mod counter;
mod dotfun;
pub mod error;
pub mod hlc;
pub mod id;
#[cfg(feature = "laws")]
pub mod laws;
pub mod lww;
pub mod map;
pub mod mvreg;
mod probe;
pub mod resolver;
pub mod sim;
pub mod sync;
pub mod wire;

pub use causal::{ChunkCursor, Conflict, ConflictSink, Crdt, Data, DotStore, Limits, Op};
pub use clock::{CausalContext, CausalOrder, VectorClock};
pub use counter::PnCounter;
pub use error::{Error, Result};
pub use hlc::{Hlc, ManualClock, SystemClock, TimeSource, Timestamp};
pub use id::{Dot, ReplicaId};
pub use lww::LwwRegister;
pub use map::OrMap;
pub use mvreg::{MergeFn, MvRegister};
pub use resolver::{Outcome, Resolver};
