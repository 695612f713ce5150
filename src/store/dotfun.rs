//! `DotFun<E>`: a set of elements, each tagged with its own dot, kept sorted by dot.
//! The store behind registers (one element per concurrent write) and counters (one
//! element per segment), plus the helpers every standalone type shares.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::causal::{
    decode_dot, encode_context, has_unseen, ConflictSink, DecodedContext, DotStore, EncodedContext,
    JoinEffect, Limits, Op, ReplicaTable,
};
use crate::clock::CausalContext;
use crate::error::{Error, Result};
use crate::hlc::{Hlc, TimeSource};
use crate::id::{Dot, ReplicaId};
use crate::resolver::Outcome;

/// Elements tagged with dots, sorted by dot; one element is stored inline.
pub(crate) type Elements<E> = SmallVec<[(Dot, E); 1]>;

/// Elements tagged with dots, sorted by dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DotFun<E> {
    pub(crate) entries: Elements<E>,
}

impl<E> Default for DotFun<E> {
    fn default() -> Self {
        DotFun {
            entries: SmallVec::new(),
        }
    }
}

impl<E: Clone + PartialEq> DotFun<E> {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.entries.iter().map(|e| e.0)
    }

    /// Replaces every element with one new element.
    pub(crate) fn assign(&mut self, dot: Dot, element: E) {
        self.entries.clear();
        // One element is the usual case, and fits inline: nothing is allocated.
        self.entries.shrink_to_fit();
        self.entries.push((dot, element));
    }

    /// Adds an element (its dot must be new).
    pub(crate) fn insert(&mut self, dot: Dot, element: E) {
        match self.entries.binary_search_by(|e| e.0.cmp(&dot)) {
            Ok(i) => self.entries[i].1 = element,
            Err(i) => self.entries.insert(i, (dot, element)),
        }
    }

    pub(crate) fn join(
        &mut self,
        ctx: &CausalContext,
        other: Self,
        other_ctx: &CausalContext,
    ) -> JoinEffect {
        // Fast path: both sides hold the same dots (the usual case between replicas
        // that are in sync): nothing changes.
        if self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.0 == b.0)
        {
            return JoinEffect::default();
        }
        let mut effect = JoinEffect::default();
        let mine = std::mem::take(&mut self.entries);
        let mut out = Elements::with_capacity(mine.len().max(other.entries.len()));
        let mut theirs = other.entries.into_iter().peekable();
        for (dot, element) in mine {
            while let Some((d, _)) = theirs.peek() {
                if *d >= dot {
                    break;
                }
                let (d, e) = theirs.next().expect("peeked");
                if ctx.contains(d) {
                    effect.discarded = true;
                } else {
                    out.push((d, e));
                }
            }
            match theirs.peek() {
                Some((d, _)) if *d == dot => {
                    theirs.next();
                    out.push((dot, element));
                }
                _ if other_ctx.contains(dot) => effect.killed = true,
                _ => out.push((dot, element)),
            }
        }
        for (d, e) in theirs {
            if ctx.contains(d) {
                effect.discarded = true;
            } else {
                out.push((d, e));
            }
        }
        self.entries = out;
        effect
    }

    pub(crate) fn kill(&mut self, ctx: &CausalContext) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(d, _)| !ctx.contains(*d));
        self.entries.len() != before
    }

    pub(crate) fn filtered(&self, keep: &dyn Fn(Dot) -> bool) -> Self {
        DotFun {
            entries: self
                .entries
                .iter()
                .filter(|(d, _)| keep(*d))
                .cloned()
                .collect(),
        }
    }

    pub(crate) fn joined_len(
        &self,
        ctx: &CausalContext,
        other: &Self,
        other_ctx: &CausalContext,
    ) -> usize {
        let mine = self
            .entries
            .iter()
            .filter(|(d, _)| !other_ctx.contains(*d) || other.contains(*d))
            .count();
        let theirs = other
            .entries
            .iter()
            .filter(|(d, _)| !ctx.contains(*d))
            .count();
        mine + theirs
    }

    pub(crate) fn contains(&self, dot: Dot) -> bool {
        self.entries.binary_search_by(|e| e.0.cmp(&dot)).is_ok()
    }

    pub(crate) fn encode<'a, W>(
        &'a self,
        table: &mut ReplicaTable,
        wrap: impl Fn(u32, u64, &'a E) -> W,
    ) -> Vec<W> {
        self.entries
            .iter()
            .map(|(d, e)| {
                let (i, c) = table.dot(*d);
                wrap(i, c, e)
            })
            .collect()
    }

    /// Rebuilds from `(index, counter, element)` triples; rejects duplicate dots.
    pub(crate) fn decode(
        triples: impl IntoIterator<Item = (u32, u64, E)>,
        replicas: &[ReplicaId],
    ) -> Result<Self> {
        let mut entries = Elements::new();
        for (i, c, e) in triples {
            entries.push((decode_dot(replicas, i, c)?, e));
        }
        entries.sort_by_key(|e| e.0);
        if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::InvalidDot {
                dot: w[0].0,
                reason: "the same dot tags two elements",
            });
        }
        Ok(DotFun { entries })
    }
}

/// The next write stamp of `hlc`'s replica for a store whose context is `ctx`.
pub(crate) fn next_op<S: TimeSource>(ctx: &CausalContext, hlc: &mut Hlc<S>) -> Result<Op> {
    let replica = hlc.replica();
    let dot = Dot::new(
        replica,
        ctx.max_counter(replica).max(hlc.counter_floor()) + 1,
    );
    if dot.counter() >= crate::causal::MAX_COUNTER {
        return Err(Error::InvalidDot {
            dot,
            reason: "this replica has issued the largest counter allowed",
        });
    }
    let ts = hlc.tick()?;
    Ok(Op::new(dot, ts))
}

/// A standalone value (store plus its own context) on the wire (`C`: the context as
/// written, or as read).
#[derive(Serialize, Deserialize)]
pub(crate) struct Standalone<E, C = EncodedContext> {
    /// The replica table.
    #[serde(deserialize_with = "crate::wire::budget::replicas")]
    r: Vec<ReplicaId>,
    /// The store.
    s: E,
    /// The causal context.
    c: C,
}

pub(crate) fn serialize_standalone<S: DotStore, Ser: serde::Serializer>(
    store: &S,
    ctx: &CausalContext,
    serializer: Ser,
) -> std::result::Result<Ser::Ok, Ser::Error> {
    let mut table = ReplicaTable::default();
    let s = store.encode(&mut table);
    let c = encode_context(ctx, &mut table);
    Standalone {
        r: table.into_ids(),
        s,
        c,
    }
    .serialize(serializer)
}

pub(crate) fn deserialize_standalone<'de, S: DotStore, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<(S, CausalContext), D::Error> {
    let raw = Standalone::<S::Decoded, DecodedContext>::deserialize(deserializer)?;
    crate::causal::check_table(&raw.r).map_err(crate::wire::budget::custom)?;
    let store = S::decode(raw.s, &raw.r).map_err(crate::wire::budget::custom)?;
    let ctx = raw.c.resolve(&raw.r).map_err(crate::wire::budget::custom)?;
    Ok((store, ctx))
}

/// Joins a standalone value into another and says what happened.
pub(crate) fn standalone_merge<S: DotStore>(
    store: &mut S,
    ctx: &mut CausalContext,
    other: S,
    other_ctx: CausalContext,
) -> Outcome {
    use crate::Resolver;
    // No shortcut on the contexts alone: a state built from deltas that arrived out of
    // order can hold an element its own context says was overwritten, and only the
    // join removes it.
    let grew = !ctx.includes(&other_ctx);
    let behind = !other_ctx.includes(ctx);
    let effect = store.join(ctx, other, &other_ctx);
    ctx.merge(other_ctx);
    Outcome::from_flags(grew || effect.killed, behind || effect.discarded)
}

/// Checks a received standalone value: every held dot is in its context, and the sizes
/// are within `limits`.
pub(crate) fn standalone_validate<S: DotStore>(
    store: &S,
    ctx: &CausalContext,
    limits: &Limits,
) -> Result<()> {
    if ctx.range_count() > limits.max_context_ranges {
        return Err(Error::TooManyEntries {
            what: "context ranges",
            count: ctx.range_count(),
            limit: limits.max_context_ranges,
        });
    }
    let size = store.size();
    if size > limits.max_entries {
        return Err(Error::TooManyEntries {
            what: "entries",
            count: size,
            limit: limits.max_entries,
        });
    }
    let mut bad = None;
    store.for_each_dot(&mut |d| {
        if bad.is_none() && !ctx.contains(d) {
            bad = Some(d);
        }
    });
    if let Some(dot) = bad {
        return Err(Error::InvalidDot {
            dot,
            reason: "element dot missing from the causal context sent with it",
        });
    }
    Ok(())
}

/// Validates and merges a received standalone value, reporting a concurrency if both
/// sides held writes the other had not seen.
pub(crate) fn standalone_try_merge<S, C>(
    store: &mut S,
    ctx: &mut CausalContext,
    other: S,
    other_ctx: CausalContext,
    limits: &Limits,
    sink: &mut C,
    siblings_capped: bool,
) -> Result<Outcome>
where
    S: DotStore,
    C: ConflictSink<(), S>,
{
    standalone_validate(&other, &other_ctx, limits)?;
    if siblings_capped {
        let count = store.joined_siblings(ctx, &other, &other_ctx);
        if count > limits.max_siblings {
            return Err(Error::TooManySiblings {
                count,
                cap: limits.max_siblings,
            });
        }
    }
    let conflict = C::ACTIVE
        && has_unseen(store, &other_ctx)
        && has_unseen(&other, ctx)
        && !store.same_view(&other);
    let before = conflict.then(|| (store.clone(), other.clone()));
    let outcome = standalone_merge(store, ctx, other, other_ctx);
    if let Some((ours, theirs)) = before {
        sink.report(crate::causal::Conflict {
            key: (),
            ours_clock: crate::causal::clock_of(&ours),
            theirs_clock: crate::causal::clock_of(&theirs),
            ours,
            theirs,
            resolved: store.clone(),
        });
    }
    Ok(outcome)
}

/// `delta_since` for a small standalone value: all of it if the peer lacks anything,
/// nothing otherwise. (A register or counter is small; sending it whole also carries
/// every overwrite the peer has not seen.)
pub(crate) fn standalone_delta_since<S: DotStore>(
    store: &S,
    ctx: &CausalContext,
    seen: &CausalContext,
) -> (S, CausalContext) {
    if seen.includes(ctx) {
        (S::default(), CausalContext::new())
    } else {
        (store.clone(), ctx.clone())
    }
}

/// The `DotStore` methods that a value holding its elements in one `DotFun` field
/// forwards to it (everything but `joined_siblings`, `encode` and `decode`).
macro_rules! forward_to_dotfun {
    ($field:ident) => {
        fn is_bottom(&self) -> bool {
            self.$field.is_empty()
        }

        fn for_each_dot(&self, f: &mut dyn FnMut(crate::id::Dot)) {
            self.$field.dots().for_each(f);
        }

        fn same_dots(&self, other: &Self) -> bool {
            self.$field.dots().eq(other.$field.dots())
        }

        fn join(
            &mut self,
            ctx: &crate::clock::CausalContext,
            other: Self,
            other_ctx: &crate::clock::CausalContext,
        ) -> crate::causal::JoinEffect {
            self.$field.join(ctx, other.$field, other_ctx)
        }

        fn kill(&mut self, ctx: &crate::clock::CausalContext) -> bool {
            self.$field.kill(ctx)
        }

        fn filtered(&self, keep: &dyn Fn(crate::id::Dot) -> bool) -> Self {
            Self {
                $field: self.$field.filtered(keep),
                ctx: crate::clock::CausalContext::new(),
            }
        }

        fn size(&self) -> usize {
            self.$field.len()
        }
    };
}

pub(crate) use forward_to_dotfun;

/// The `Resolver`, `Crdt` and serde impls every standalone value (a store with its own
/// context in a `ctx` field, and `split` / `with_context` methods) shares.
/// `capped`: whether the sibling cap of [`Limits`] applies to the value.
macro_rules! standalone_impls {
    ($ty:ident $(<$t:ident>)?, capped = $capped:expr) => {
        impl$(<$t: crate::causal::Data>)? crate::resolver::Resolver for $ty$(<$t>)? {
            fn merge(&mut self, other: Self) -> crate::resolver::Outcome {
                let (other, other_ctx) = other.split();
                let mut ctx = std::mem::take(&mut self.ctx);
                let outcome = crate::dotfun::standalone_merge(self, &mut ctx, other, other_ctx);
                self.ctx = ctx;
                outcome
            }
        }

        impl$(<$t: crate::causal::Data>)? crate::causal::Crdt for $ty$(<$t>)? {
            type Key = ();
            type Value = Self;

            fn context(&self) -> &crate::clock::CausalContext {
                &self.ctx
            }

            fn delta_since_context(&self, seen: &crate::clock::CausalContext) -> Self {
                let (store, ctx) = crate::dotfun::standalone_delta_since(self, &self.ctx, seen);
                store.with_context(ctx)
            }

            fn validate(&self, limits: &crate::causal::Limits) -> crate::error::Result<()> {
                crate::dotfun::standalone_validate(self, &self.ctx, limits)?;
                let count = crate::causal::DotStore::size(self);
                if $capped && count > limits.max_siblings {
                    return Err(crate::error::Error::TooManySiblings {
                        count,
                        cap: limits.max_siblings,
                    });
                }
                Ok(())
            }

            fn try_merge<C: crate::causal::ConflictSink<(), Self>>(
                &mut self,
                other: Self,
                limits: &crate::causal::Limits,
                sink: &mut C,
            ) -> crate::error::Result<crate::resolver::Outcome> {
                let (other, other_ctx) = other.split();
                let mut ctx = std::mem::take(&mut self.ctx);
                let result = crate::dotfun::standalone_try_merge(
                    self, &mut ctx, other, other_ctx, limits, sink, $capped,
                );
                self.ctx = ctx;
                result
            }

            fn max_timestamp(&self) -> Option<crate::hlc::Timestamp> {
                crate::causal::DotStore::max_timestamp(self)
            }

            fn for_each_element_dot(&self, f: &mut dyn FnMut(crate::id::Dot)) {
                crate::causal::DotStore::for_each_dot(self, f);
            }
        }

        impl$(<$t: crate::causal::Data>)? serde::Serialize for $ty$(<$t>)? {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                crate::dotfun::serialize_standalone(self, &self.ctx, s)
            }
        }

        impl<'de, $($t: crate::causal::Data)?> serde::Deserialize<'de> for $ty$(<$t>)? {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let (store, ctx): (Self, _) = crate::dotfun::deserialize_standalone(d)?;
                Ok(store.with_context(ctx))
            }
        }
    };
}

pub(crate) use standalone_impls;
