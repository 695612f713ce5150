//! Alerts on replication health: rules, evaluated on samples of an engine's
//! metrics, that move between pending, firing and resolved with hysteresis.
//!
//! A [`Rule`] watches one [`Signal`] (the lag in writes or in age towards each peer,
//! how long a peer has been silent, rejected messages or resolved conflicts over a
//! window, contained hot keys) and compares it with a threshold. The host calls
//! [`Alerts::evaluate`] with the time and a [`Sample`] (made from
//! [`SyncEngine::metrics`](crate::sync::SyncEngine::metrics)) on a timer; each rule
//! keeps one series per peer for per-peer signals, one for the node otherwise, and
//! each series moves through [`State`]:
//!
//! ```text
//!            value past threshold                 held for `for_ms`
//! Inactive ─────────────────────────▶ Pending ─────────────────────▶ Firing
//!    ▲  ▲        (for_ms = 0: straight to Firing)   │                   │
//!    │  └───────────────────────────────────────────┘                   │ value back at `clear`
//!    │            value back within threshold                           │ or better, held for
//!    │                                                                  │ `clear_for_ms`
//!    └──────────────────── Resolved ◀───────────────────────────────────┘
//!      after `keep_resolved_ms`      (past threshold again: Pending or Firing)
//! ```
//!
//! **Hysteresis** keeps a value hovering at the threshold from paging on and off: an
//! alert fires above `threshold` but resolves only once the value is back at `clear`
//! (lower) and has stayed there for `clear_for_ms`. Every value is an integer (counts
//! and milliseconds), so there is no NaN to mishandle.
//!
//! **Rates** (rejected messages, conflicts) are the increase of the engine's counter
//! over the rule's window. The evaluator keeps at most 18 samples per rate rule
//! (one per sixteenth of the window), whatever the uptime, so the window is exact to
//! within a sixteenth; a counter that goes down (a new engine) restarts the count.
//!
//! **Silence** is [`PeerLag::since_heard_ms`]; for a peer never heard, the time
//! since the evaluator first saw it in a sample (a peer that never answers is the
//! silent peer to alert on, not one to ignore).
//!
//! Wall-clock lag comparisons between machines are not used anywhere: lag in age is
//! measured by the engine against its own clock, from the time of its own writes.
//!
//! ```
//! use concord::ops::alert::{Alerts, Comparison, Rule, Sample, Signal, State};
//! use concord::sync::PeerLag;
//! use concord::ReplicaId;
//!
//! let peer = ReplicaId::from_u128(2);
//! let rule = Rule {
//!     name: "lag".into(),
//!     signal: Signal::LagWrites,
//!     comparison: Comparison::Above,
//!     threshold: 100,
//!     clear: 10,
//!     for_ms: 1_000,
//!     clear_for_ms: 0,
//!     window_ms: 0,
//! };
//! let mut alerts = Alerts::new(vec![rule])?;
//! let sample = |writes| Sample {
//!     peers: vec![(peer, PeerLag { unacked_writes: writes, oldest_unacked_ms: 0, since_heard_ms: Some(0) })],
//!     ..Sample::default()
//! };
//! alerts.evaluate(0, &sample(500)); // past the threshold: pending
//! assert_eq!(alerts.list()[0].state, State::Pending);
//! alerts.evaluate(1_000, &sample(500)); // held for a second: firing
//! assert_eq!(alerts.list()[0].state, State::Firing);
//! alerts.evaluate(2_000, &sample(50)); // under the threshold, not yet at `clear`
//! assert_eq!(alerts.list()[0].state, State::Firing);
//! let changes = alerts.evaluate(3_000, &sample(5));
//! assert_eq!(changes[0].to, State::Resolved);
//! # Ok::<(), concord::Error>(())
//! ```

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::ReplicaId;
use crate::sync::{Metrics, PeerLag};

/// What a rule watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Per peer: local writes it has not acknowledged ([`PeerLag::unacked_writes`]).
    LagWrites,
    /// Per peer: age of the oldest of them, in milliseconds
    /// ([`PeerLag::oldest_unacked_ms`]): the window of writes only this node holds.
    LagMs,
    /// Per peer: milliseconds since it was last heard from (see the module docs for
    /// a peer never heard).
    SilenceMs,
    /// Messages rejected ([`Metrics::messages_rejected`]) over the rule's window.
    RejectedMessages,
    /// Concurrent writes resolved ([`Metrics::conflicts_resolved`]) over the rule's
    /// window.
    Conflicts,
    /// Keys held contained ([`Metrics::contained_hot_keys`]).
    ContainedHotKeys,
}

impl Signal {
    /// True for the signals measured per peer.
    pub fn per_peer(self) -> bool {
        matches!(self, Signal::LagWrites | Signal::LagMs | Signal::SilenceMs)
    }

    /// True for the signals measured as an increase over a window.
    pub fn is_rate(self) -> bool {
        matches!(self, Signal::RejectedMessages | Signal::Conflicts)
    }
}

/// Which side of the threshold is bad.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Past the threshold means above it (`value > threshold`); cleared at
    /// `value <= clear`.
    #[default]
    Above,
    /// Past the threshold means below it (`value < threshold`); cleared at
    /// `value >= clear`.
    Below,
}

/// One alert rule (it deserializes from the node's TOML configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Its name (1 to 64 of `A-Z a-z 0-9 _ - .`): the `alert` label of its metrics.
    pub name: String,
    /// What it watches.
    pub signal: Signal,
    /// Which side of the threshold is bad.
    #[serde(default)]
    pub comparison: Comparison,
    /// The value past which the rule goes pending.
    pub threshold: u64,
    /// The value at which (or better) a firing alert starts to resolve: at most
    /// `threshold` for [`Comparison::Above`], at least for [`Comparison::Below`].
    pub clear: u64,
    /// How long the value must stay past the threshold before the alert fires, in
    /// milliseconds (0: at once).
    #[serde(default)]
    pub for_ms: u64,
    /// How long the value must stay at `clear` or better before a firing alert
    /// resolves, in milliseconds.
    #[serde(default)]
    pub clear_for_ms: u64,
    /// The window of a rate signal, in milliseconds (unused by the others).
    #[serde(default = "default_window")]
    pub window_ms: u64,
}

fn default_window() -> u64 {
    60_000
}

impl Rule {
    /// The built-in rules, with thresholds for a cluster on one network whose
    /// heartbeats run every few hundred milliseconds (tune them to your write rate
    /// and failover budget):
    ///
    /// | name | signal | fires | after | resolves at | for |
    /// |---|---|---|---|---|---|
    /// | `replication_lag_writes` | lag in writes | > 1000 | 30 s | ≤ 100 | 10 s |
    /// | `replication_lag_age` | lag in age | > 30 s | 10 s | ≤ 5 s | 10 s |
    /// | `peer_silent` | silence | > 15 s | at once | ≤ 5 s | 5 s |
    /// | `rejected_messages` | rejected, per 5 min | > 10 | at once | 0 | at once |
    /// | `conflict_rate` | conflicts, per min | > 600 | 1 min | ≤ 300 | 1 min |
    /// | `contained_hot_keys` | contained keys | > 0 | 1 min | 0 | at once |
    ///
    /// A contained hot key needs an application to collapse it, hence an alert on
    /// any that stays a minute; conflicts are normal in multi-master use, so only a
    /// sustained rate (ten a second) alerts; a few rejected messages happen during a
    /// rolling upgrade, a steady flow names a broken or hostile peer.
    pub fn builtin() -> Vec<Rule> {
        let rule = |name: &str, signal, threshold, clear, for_ms, clear_for_ms, window_ms| Rule {
            name: name.into(),
            signal,
            comparison: Comparison::Above,
            threshold,
            clear,
            for_ms,
            clear_for_ms,
            window_ms,
        };
        vec![
            rule(
                "replication_lag_writes",
                Signal::LagWrites,
                1_000,
                100,
                30_000,
                10_000,
                0,
            ),
            rule(
                "replication_lag_age",
                Signal::LagMs,
                30_000,
                5_000,
                10_000,
                10_000,
                0,
            ),
            rule("peer_silent", Signal::SilenceMs, 15_000, 5_000, 0, 5_000, 0),
            rule(
                "rejected_messages",
                Signal::RejectedMessages,
                10,
                0,
                0,
                0,
                300_000,
            ),
            rule(
                "conflict_rate",
                Signal::Conflicts,
                600,
                300,
                60_000,
                60_000,
                60_000,
            ),
            rule(
                "contained_hot_keys",
                Signal::ContainedHotKeys,
                0,
                0,
                60_000,
                0,
                0,
            ),
        ]
    }

    /// Checks the rule.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a bad name, a `clear` on the wrong side of the
    /// threshold, or a rate signal with a window of 0.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Err(Error::InvalidConfig {
                reason: format!("alert rule {:?}: {why}", self.name),
            })
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !name_ok {
            return bad("a name has 1 to 64 of A-Z a-z 0-9 _ - .".into());
        }
        match self.comparison {
            Comparison::Above if self.clear > self.threshold => {
                return bad(format!(
                    "clear ({}) must not exceed threshold ({}) for an `above` rule",
                    self.clear, self.threshold
                ))
            }
            Comparison::Below if self.clear < self.threshold => {
                return bad(format!(
                    "clear ({}) must not be under threshold ({}) for a `below` rule",
                    self.clear, self.threshold
                ))
            }
            _ => {}
        }
        if self.signal.is_rate() && self.window_ms == 0 {
            return bad("a rate needs a window_ms above 0".into());
        }
        Ok(())
    }

    fn breaches(&self, v: u64) -> bool {
        match self.comparison {
            Comparison::Above => v > self.threshold,
            Comparison::Below => v < self.threshold,
        }
    }

    fn cleared(&self, v: u64) -> bool {
        match self.comparison {
            Comparison::Above => v <= self.clear,
            Comparison::Below => v >= self.clear,
        }
    }
}

/// Where an alert series stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Within its threshold.
    Inactive,
    /// Past its threshold, not yet for the rule's `for_ms`.
    Pending,
    /// Past its threshold for `for_ms`, and not yet back at `clear` for
    /// `clear_for_ms`.
    Firing,
    /// It fired and has resolved; becomes inactive after
    /// [`Alerts::keep_resolved_ms`] (or pending again if the value goes past the
    /// threshold).
    Resolved,
}

/// The values one evaluation looks at (the engine's counters and per-peer lag).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// [`Metrics::messages_rejected`].
    pub rejected: u64,
    /// [`Metrics::conflicts_resolved`].
    pub conflicts: u64,
    /// [`Metrics::contained_hot_keys`].
    pub contained_hot_keys: u64,
    /// Each peer's lag.
    pub peers: Vec<(ReplicaId, PeerLag)>,
}

impl From<&Metrics> for Sample {
    fn from(m: &Metrics) -> Sample {
        Sample {
            rejected: m.messages_rejected,
            conflicts: m.conflicts_resolved,
            contained_hot_keys: m.contained_hot_keys,
            peers: m.peers.iter().map(|p| (p.peer, p.lag)).collect(),
        }
    }
}

/// One series of one rule, as listed by [`Alerts::list`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The rule's name.
    pub name: String,
    /// The peer, for a per-peer signal.
    pub peer: Option<ReplicaId>,
    /// Where it stands.
    pub state: State,
    /// Since when (the `now_ms` of the evaluation that moved it there; for a series
    /// never moved, its first evaluation).
    pub since_ms: u64,
    /// The value at the last evaluation.
    pub value: u64,
    /// The rule's threshold.
    pub threshold: u64,
    /// The rule's clear value.
    pub clear: u64,
    /// The rule's comparison.
    pub comparison: Comparison,
}

/// A series moved from one state to another (returned by [`Alerts::evaluate`]: what
/// a host logs or notifies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The rule's name.
    pub name: String,
    /// The peer, for a per-peer signal.
    pub peer: Option<ReplicaId>,
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// The value that moved it.
    pub value: u64,
    /// When.
    pub at_ms: u64,
}

#[derive(Clone, Debug)]
struct Series {
    state: State,
    since_ms: u64,
    value: u64,
    /// Since when the value has been at `clear` or better while firing.
    clearing_since: Option<u64>,
}

/// The increase of a counter over a window, from at most [`RATE_SAMPLES`] + 2
/// samples.
#[derive(Clone, Debug)]
struct Window {
    window_ms: u64,
    samples: VecDeque<(u64, u64)>,
}

/// Samples kept per window (one per this fraction of it).
const RATE_SAMPLES: u64 = 16;

impl Window {
    fn increase(&mut self, now_ms: u64, value: u64) -> u64 {
        if self.samples.back().is_some_and(|&(_, last)| value < last) {
            // The counter restarted (a new engine): count from 0.
            self.samples.clear();
            self.samples.push_back((now_ms, 0));
        }
        let step = (self.window_ms / RATE_SAMPLES).max(1);
        match self.samples.back() {
            Some(&(at, _)) if now_ms < at.saturating_add(step) => {}
            _ => self.samples.push_back((now_ms, value)),
        }
        let start = now_ms.saturating_sub(self.window_ms);
        // Keep the newest sample at or before the window's start as the baseline.
        while self.samples.len() >= 2 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
        self.samples
            .front()
            .map_or(0, |&(_, base)| value.saturating_sub(base))
    }
}

/// A set of rules and the state of their series (see the [module docs](self)).
///
/// Memory is bounded by the rules times the peers in the samples (a peer that leaves
/// the samples is forgotten) plus 18 samples per rate rule.
#[derive(Clone, Debug)]
pub struct Alerts {
    rules: Vec<Rule>,
    windows: Vec<Option<Window>>,
    series: BTreeMap<(usize, Option<ReplicaId>), Series>,
    /// When each peer never heard from was first seen.
    first_seen: BTreeMap<ReplicaId, u64>,
    keep_resolved_ms: u64,
}

impl Alerts {
    /// An evaluator of `rules`; resolved alerts stay listed for 15 minutes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if a rule is invalid or two share a name.
    pub fn new(rules: Vec<Rule>) -> Result<Alerts> {
        for (i, r) in rules.iter().enumerate() {
            r.validate()?;
            if rules[..i].iter().any(|q| q.name == r.name) {
                return Err(Error::InvalidConfig {
                    reason: format!("two alert rules are named {:?}", r.name),
                });
            }
        }
        let windows = rules
            .iter()
            .map(|r| {
                r.signal.is_rate().then(|| Window {
                    window_ms: r.window_ms,
                    samples: VecDeque::new(),
                })
            })
            .collect();
        Ok(Alerts {
            rules,
            windows,
            series: BTreeMap::new(),
            first_seen: BTreeMap::new(),
            keep_resolved_ms: 15 * 60_000,
        })
    }

    /// Sets how long a resolved alert stays listed as resolved, in milliseconds.
    #[must_use = "it returns the changed rules"]
    pub fn keep_resolved_ms(mut self, ms: u64) -> Alerts {
        self.keep_resolved_ms = ms;
        self
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Evaluates every rule on `sample` taken at `now_ms`; returns the series that
    /// changed state, in rule order (then peer order).
    pub fn evaluate(&mut self, now_ms: u64, sample: &Sample) -> Vec<Transition> {
        // Forget peers that left the samples, and note when new ones were first seen.
        self.first_seen
            .retain(|p, _| sample.peers.iter().any(|(q, _)| q == p));
        self.series
            .retain(|(_, p), _| p.is_none_or(|p| sample.peers.iter().any(|(q, _)| *q == p)));
        for (peer, lag) in &sample.peers {
            if lag.since_heard_ms.is_some() {
                self.first_seen.remove(peer);
            } else {
                self.first_seen.entry(*peer).or_insert(now_ms);
            }
        }
        let mut changes = Vec::new();
        for i in 0..self.rules.len() {
            let signal = self.rules[i].signal;
            if signal.per_peer() {
                for (peer, lag) in &sample.peers {
                    let value = match signal {
                        Signal::LagWrites => lag.unacked_writes,
                        Signal::LagMs => lag.oldest_unacked_ms,
                        _ => lag.since_heard_ms.unwrap_or_else(|| {
                            let first = self.first_seen.get(peer).copied().unwrap_or(now_ms);
                            now_ms.saturating_sub(first)
                        }),
                    };
                    changes.extend(self.step(i, Some(*peer), now_ms, value));
                }
            } else {
                let value = match signal {
                    Signal::ContainedHotKeys => sample.contained_hot_keys,
                    Signal::RejectedMessages | Signal::Conflicts => {
                        let counter = if signal == Signal::Conflicts {
                            sample.conflicts
                        } else {
                            sample.rejected
                        };
                        self.windows[i]
                            .as_mut()
                            .map_or(0, |w| w.increase(now_ms, counter))
                    }
                    _ => 0,
                };
                changes.extend(self.step(i, None, now_ms, value));
            }
        }
        changes
    }

    /// [`Alerts::evaluate`] on an engine's metrics.
    pub fn evaluate_metrics(&mut self, now_ms: u64, metrics: &Metrics) -> Vec<Transition> {
        self.evaluate(now_ms, &Sample::from(metrics))
    }

    fn step(
        &mut self,
        rule: usize,
        peer: Option<ReplicaId>,
        now_ms: u64,
        value: u64,
    ) -> Option<Transition> {
        let r = &self.rules[rule];
        let s = self.series.entry((rule, peer)).or_insert(Series {
            state: State::Inactive,
            since_ms: now_ms,
            value,
            clearing_since: None,
        });
        s.value = value;
        let held = |since: u64, ms: u64| now_ms.saturating_sub(since) >= ms;
        let breach = r.breaches(value);
        let next = match s.state {
            State::Inactive | State::Resolved if breach => {
                if r.for_ms == 0 {
                    State::Firing
                } else {
                    State::Pending
                }
            }
            State::Resolved if held(s.since_ms, self.keep_resolved_ms) => State::Inactive,
            State::Pending if !breach => State::Inactive,
            State::Pending if held(s.since_ms, r.for_ms) => State::Firing,
            State::Firing if r.cleared(value) => {
                let since = *s.clearing_since.get_or_insert(now_ms);
                if held(since, r.clear_for_ms) {
                    State::Resolved
                } else {
                    State::Firing
                }
            }
            State::Firing => {
                s.clearing_since = None;
                State::Firing
            }
            same => same,
        };
        if next == s.state {
            return None;
        }
        let from = s.state;
        s.state = next;
        s.since_ms = now_ms;
        s.clearing_since = None;
        Some(Transition {
            name: r.name.clone(),
            peer,
            from,
            to: next,
            value,
            at_ms: now_ms,
        })
    }

    /// Every series evaluated so far, in rule order (then peer order).
    pub fn list(&self) -> Vec<Alert> {
        self.series
            .iter()
            .map(|(&(i, peer), s)| {
                let r = &self.rules[i];
                Alert {
                    name: r.name.clone(),
                    peer,
                    state: s.state,
                    since_ms: s.since_ms,
                    value: s.value,
                    threshold: r.threshold,
                    clear: r.clear,
                    comparison: r.comparison,
                }
            })
            .collect()
    }

    /// The series firing now.
    pub fn firing(&self) -> Vec<Alert> {
        self.list()
            .into_iter()
            .filter(|a| a.state == State::Firing)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window keeps at most `RATE_SAMPLES + 2` samples however long it runs, and
    /// with one evaluation per sixteenth of the window its increase is exact: the
    /// counter now minus the counter at the newest evaluation at least a window ago.
    #[test]
    fn a_rate_window_is_bounded_and_exact_on_its_grid() {
        let window_ms = 16_000;
        let step = window_ms / RATE_SAMPLES;
        let mut w = Window {
            window_ms,
            samples: VecDeque::new(),
        };
        let mut history: Vec<(u64, u64)> = Vec::new();
        let mut value = 0u64;
        for k in 0..20_000u64 {
            let now = k * step;
            value += (k * 7919) % 5; // an irregular, growing counter
            history.push((now, value));
            let got = w.increase(now, value);
            let start = now.saturating_sub(window_ms);
            let base = history
                .iter()
                .rev()
                .find(|(t, _)| *t <= start)
                .unwrap_or(&history[0])
                .1;
            assert_eq!(got, value - base, "at {now}");
            assert!(w.samples.len() as u64 <= RATE_SAMPLES + 2);
        }
        // Evaluations far more often than the grid keep it bounded too.
        for k in 0..100_000u64 {
            w.increase(20_000 * step + k, value);
            assert!(w.samples.len() as u64 <= RATE_SAMPLES + 2);
        }
    }

    #[test]
    fn a_counter_that_goes_down_restarts_the_count() {
        let mut w = Window {
            window_ms: 10_000,
            samples: VecDeque::new(),
        };
        assert_eq!(w.increase(0, 100), 0);
        assert_eq!(w.increase(5_000, 130), 30);
        // A new engine: its counter starts again from 0.
        assert_eq!(w.increase(6_000, 4), 4);
        assert_eq!(w.increase(7_000, 9), 9);
    }
}
