//! Layer 2, dot stores: the replicated types, built from elements tagged with the dots
//! of the writes that made them. The machinery they share ([`causal`]: the
//! [`DotStore`](causal::DotStore) and [`Crdt`](causal::Crdt) traits, limits, conflict
//! reports), the store of dot-tagged elements behind registers and counters
//! (`dotfun`), and the types: [`lww`], [`mvreg`], [`counter`], [`map`].

pub mod causal;
pub mod counter;
pub(crate) mod dotfun;
pub mod lww;
pub mod map;
pub mod mvreg;
