//! The decoding budget: the limits a message body is held to *while* it is decoded.
//!
//! The body of a message is decoded by the serde implementations of the state types,
//! which take no arguments; the budget reaches them through a thread-local that
//! [`with`] sets for the duration of one decode. Outside [`with`] (a snapshot read
//! with `serde_json`, say) nothing is charged and nothing is refused.
//!
//! What is charged: every key of a map (at any depth) and every element of a dot
//! store (register sibling, counter segment) is one *entry* of the state
//! ([`Limits::max_entries`](crate::Limits::max_entries), the count
//! [`DotStore::size`](crate::DotStore::size) gives), and every range of one causal
//! context is charged to that context
//! ([`Limits::max_context_ranges`](crate::Limits::max_context_ranges)), as is every
//! replica it names (the engine's `max_clock_entries`). The first charge past a limit
//! stops the decoder, so no more than the limit is ever allocated.

use std::cell::Cell;

use crate::error::Error;

/// The limits of one decode.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Entries of the state, at every depth.
    pub entries: usize,
    /// Ranges of one causal context.
    pub ranges: usize,
    /// Replicas one causal context names.
    pub replicas: usize,
}

impl Limits {
    pub(crate) const NONE: Limits = Limits {
        entries: usize::MAX,
        ranges: usize::MAX,
        replicas: usize::MAX,
    };
}

#[derive(Clone, Copy)]
struct State {
    limits: Limits,
    entries: usize,
    /// The first limit passed: (what, count, limit).
    exceeded: Option<(&'static str, usize, usize)>,
}

thread_local! {
    static ACTIVE: Cell<Option<State>> = const { Cell::new(None) };
}

/// Restores the budget that was active before [`with`] (so a panic inside leaves
/// none behind).
struct Restore(Option<State>);

impl Drop for Restore {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.0));
    }
}

/// Runs `f` with `limits` charged by every decoder inside it; returns what `f`
/// returned and, if a limit was passed, the error that names it.
pub(crate) fn with<R>(limits: Limits, f: impl FnOnce() -> R) -> (R, Option<Error>) {
    let previous = ACTIVE.with(|a| {
        a.replace(Some(State {
            limits,
            entries: 0,
            exceeded: None,
        }))
    });
    let restore = Restore(previous);
    let result = f();
    let state = ACTIVE.with(|a| a.get());
    drop(restore);
    let error = state
        .and_then(|s| s.exceeded)
        .map(|(what, count, limit)| Error::TooManyEntries { what, count, limit });
    (result, error)
}

/// The limits in force (none outside [`with`]).
pub(crate) fn limits() -> Limits {
    ACTIVE.with(|a| a.get()).map_or(Limits::NONE, |s| s.limits)
}

/// Records that `count` passed `limit` and returns the message for the decoder's
/// error (the caller of [`with`] gets the typed error instead).
pub(crate) fn refuse(what: &'static str, count: usize, limit: usize) -> String {
    ACTIVE.with(|a| {
        if let Some(mut s) = a.get() {
            s.exceeded.get_or_insert((what, count, limit));
            a.set(Some(s));
        }
    });
    format!("{what}: {count} is more than the limit of {limit}")
}

/// Charges one entry of the state.
pub(crate) fn entry() -> Result<(), String> {
    ACTIVE.with(|a| match a.get() {
        Some(mut s) => {
            s.entries += 1;
            a.set(Some(s));
            if s.entries > s.limits.entries {
                Err(refuse("entries", s.entries, s.limits.entries))
            } else {
                Ok(())
            }
        }
        None => Ok(()),
    })
}

/// Charges the `n`-th range of the context being decoded.
pub(crate) fn range(n: usize) -> Result<(), String> {
    let limit = limits().ranges;
    if n > limit {
        Err(refuse("context ranges", n, limit))
    } else {
        Ok(())
    }
}

/// Charges the `n`-th replica of the context being decoded.
pub(crate) fn replica(n: usize) -> Result<(), String> {
    let limit = limits().replicas;
    if n > limit {
        Err(refuse("version vector entries", n, limit))
    } else {
        Ok(())
    }
}

thread_local! {
    /// Why the last decoder error on this thread was raised, as the visitor said it
    /// (the binary format's error type keeps no message of its own).
    static REASON: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A decoder error saying `msg`, remembered for [`take_reason`] (the first since the
/// last take wins: it is the cause, what follows is the unwinding).
pub(crate) fn custom<E: serde::de::Error>(msg: impl std::fmt::Display) -> E {
    let msg = msg.to_string();
    REASON.with(|r| {
        r.borrow_mut().get_or_insert_with(|| msg.clone());
    });
    E::custom(msg)
}

/// The reason [`custom`] recorded since the last call, if any.
pub(crate) fn take_reason() -> Option<String> {
    REASON.with(|r| r.borrow_mut().take())
}

/// How many elements to reserve for a collection whose encoding claims `hint`: no
/// more than [`RESERVE`], nor than the entries the budget has left (a binary length
/// prefix is only a claim: 2^60 must not reserve anything like it; past the
/// reservation a collection grows as its elements actually arrive).
pub(crate) fn reserve(hint: Option<usize>) -> usize {
    let left = ACTIVE
        .with(|a| a.get())
        .map_or(usize::MAX, |s| s.limits.entries.saturating_sub(s.entries));
    hint.unwrap_or(0).min(RESERVE).min(left)
}

/// The most elements reserved ahead of their arrival (see [`reserve`]).
pub(crate) const RESERVE: usize = 256;

/// Reads a replica table (a list of replica ids), reserving no more than [`RESERVE`]
/// ids ahead of their arrival whatever its length prefix claims: for
/// `#[serde(deserialize_with)]` on a table field.
pub(crate) fn replicas<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<crate::id::ReplicaId>, D::Error> {
    struct Table;
    impl<'de> serde::de::Visitor<'de> for Table {
        type Value = Vec<crate::id::ReplicaId>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of replica ids")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(RESERVE));
            while let Some(id) = seq.next_element()? {
                ids.push(id);
            }
            Ok(ids)
        }
    }
    d.deserialize_seq(Table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_is_held_to_the_entries_left() {
        assert_eq!(reserve(Some(1 << 40)), RESERVE);
        let limits = Limits {
            entries: 3,
            ..Limits::NONE
        };
        let (reserved, over) = with(limits, || {
            let first = reserve(Some(1000));
            entry().unwrap();
            (first, reserve(Some(1000)))
        });
        assert_eq!(reserved, (3, 2));
        assert!(over.is_none());
    }
}
