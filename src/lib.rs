#![forbid(unsafe_code)]
#![deny(missing_docs)]
// The guide and a few module docs link into the test kit, which exists only with the
// `testing` feature (docs.rs and CI build the docs with it).
#![cfg_attr(not(feature = "testing"), allow(rustdoc::broken_intra_doc_links))]
#![doc = include_str!("../README.md")]
#![doc = include_str!("../docs/guide.md")]

// The source is laid out in layers, bottom up (see the guide's "Architecture"); each
// public module keeps its path at the crate root.
mod causality;
mod codec;
pub mod error;
pub mod ops;
mod store;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;

pub use causality::{clock, hlc, id, resolver};
pub(crate) use codec::probe;
pub use codec::wire;
pub(crate) use store::dotfun;
pub use store::{causal, counter, lww, map, mvreg};

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
