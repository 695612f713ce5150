#![forbid(unsafe_code)]
#![deny(missing_docs)]
// The guide and a few module docs link into the test kit, which exists only with the
// `testing` feature (docs.rs and CI build the docs with it).
#![cfg_attr(not(feature = "testing"), allow(rustdoc::broken_intra_doc_links))]
#![doc = include_str!("../README.md")]
#![doc = include_str!("../docs/guide.md")]

pub mod causal;
pub mod clock;
pub mod counter;
mod dotfun;
pub mod error;
pub mod hlc;
pub mod id;
pub mod lww;
pub mod map;
pub mod mvreg;
pub mod ops;
mod probe;
pub mod resolver;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

pub use causal::{ChunkCursor, Conflict, ConflictSink, Crdt, Data, DotStore, Limits, Op, SetAside};
pub use clock::{CausalContext, CausalOrder, VectorClock};
pub use counter::PnCounter;
pub use error::{Error, Result};
pub use hlc::{Hlc, ManualClock, SystemClock, TimeSource, Timestamp};
pub use id::{Dot, ReplicaId};
pub use lww::LwwRegister;
pub use map::OrMap;
pub use mvreg::{MergeFn, MvRegister};
pub use resolver::{Outcome, Resolver};
