//! A planned switchover (`POST /admin/switchover?to=NODE`): the sans-IO
//! [`Coordinator`] driven over the nodes' HTTP APIs from the node that received the
//! request.
//!
//! The coordinator's actions become `POST /admin/stop-writes`, `/admin/promote?epoch=N`
//! and `/admin/fence?epoch=N` at the node concerned (this one included, over its own
//! API); the positions it needs come from `GET /status` (the node's context as a
//! session token, its epoch and role). The steps: stop the old master's writes, wait
//! until the target holds everything the old master holds (lag zero), promote the
//! target in a new epoch, fence the old master at that epoch; then wait until the
//! target takes writes (a majority in its epoch and the fencing wait over). Every
//! step is reported with its time. If stopping or catching up outlasts
//! `failover.switchover_timeout_ms`, the old master resumes in a new epoch of its
//! own; after the promotion there is no way back: a target that does not report
//! itself master of the new epoch in time ends it (`504`, the nodes' automatic
//! failover takes over), and an old master that does not report the new epoch in
//! time ends it as done (the first message of the new epoch fences it).
//!
//! Writes that arrive meanwhile are refused with `503` naming the master (nothing is
//! written), so no acknowledged write is lost: the target holds all of the old
//! master's before it is promoted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use concord::ops::failover::{Action, Coordinator, CoordinatorConfig, Position, Report, Step};
use concord::sync::Role;
use concord::{CausalContext, ReplicaId};
use serde_json::{json, Value};

use crate::client::Client;
use crate::config::NodeConfig;

/// How often the positions are read.
const POLL: Duration = Duration::from_millis(50);

/// A switchover that did not happen, or did not finish.
#[derive(Debug)]
pub struct Failed {
    /// The HTTP status to answer.
    pub status: u16,
    /// The answer: `error`, and the steps so far.
    pub body: Value,
}

fn refuse(status: u16, reason: impl Into<String>) -> Failed {
    Failed {
        status,
        body: json!({ "error": reason.into() }),
    }
}

/// How a switchover ended without reaching [`Step::Done`].
#[derive(Clone, Copy, Debug)]
enum Ended {
    /// Timed out before the promotion: the old master resumes.
    Aborted(Step),
    /// Given up at or after the promotion.
    Abandoned(Step),
}

/// One node's API, as the switchover sees it.
struct Member {
    id: ReplicaId,
    name: String,
    client: Client,
}

impl Member {
    fn status(&mut self) -> Option<Value> {
        let r = self.client.get_path("/status").ok()?;
        (r.status == 200).then(|| r.json())
    }

    fn position(&mut self) -> Option<Position> {
        let s = self.status()?;
        let context = CausalContext::from_token(s["token"].as_str()?).ok()?;
        let role = match s["role"].as_str()? {
            "master" => Role::Master,
            _ => Role::Follower,
        };
        Some(Position {
            context,
            epoch: s["epoch"].as_u64()?,
            role,
        })
    }

    fn post(&mut self, path: &str) -> Result<(), String> {
        match self.client.request("POST", path, &[], "") {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!(
                "{} answered {} to {path}: {}",
                self.name,
                r.status,
                r.json()["error"].as_str().unwrap_or("")
            )),
            Err(e) => Err(format!("{} did not answer {path}: {e}", self.name)),
        }
    }
}

/// Runs a switchover from the current master (as this node knows it) to `to` (a
/// node's name or id), and answers with every step.
///
/// # Errors
///
/// [`Failed`] with `400` for an unknown target, `409` in multi-master mode, without
/// a known master, with a node's HTTP address missing from the configuration, or
/// when the coordinator refuses (the target is the master already); `504` with the
/// steps so far if it was aborted or did not finish in time.
pub fn run(config: &NodeConfig, to: &str) -> Result<Value, Failed> {
    let started = Instant::now();
    if !config.master_follower() {
        return Err(refuse(
            409,
            "this node runs multi-master: there is no master to switch from",
        ));
    }
    let Some(target) = config.id_of(to) else {
        return Err(refuse(400, format!("no node called {to:?}")));
    };
    let member = |id: ReplicaId| -> Result<Member, Failed> {
        let addr: SocketAddr = config.http_of(id).ok_or_else(|| {
            refuse(
                409,
                format!(
                    "the HTTP address of {} is not configured ([[peers]] http)",
                    config.name_of(id)
                ),
            )
        })?;
        Ok(Member {
            id,
            name: config.name_of(id),
            client: Client::new(addr, Duration::from_secs(2)),
        })
    };
    let mut me = member(config.node_id)?;
    let status = me
        .status()
        .ok_or_else(|| refuse(503, "this node does not answer its own /status"))?;
    let old = status["leader_id"]
        .as_str()
        .and_then(|s| s.parse::<ReplicaId>().ok())
        .ok_or_else(|| refuse(409, "this node knows no master to switch from"))?;
    let epoch = status["epoch"].as_u64().unwrap_or(0);
    let mut old_m = member(old)?;
    let mut target_m = member(target)?;
    let timeout_ms = config.failover.switchover_timeout_ms;
    let members = std::iter::once(config.node_id).chain(config.peers.iter().map(|p| p.id));
    let mut c = Coordinator::new(
        members,
        old,
        epoch,
        CoordinatorConfig {
            failed_checks: config.failover.failed_checks,
            switchover_timeout_ms: timeout_ms,
        },
    );
    c.switchover(target, 0)
        .map_err(|e| refuse(409, e.to_string()))?;
    let ms = |t: Instant| t.duration_since(started).as_secs_f64() * 1e3;
    let mut steps: Vec<Value> = Vec::new();
    let mut pending: Vec<(ReplicaId, String)> = Vec::new();
    let mut outcome: Option<std::result::Result<u64, Ended>> = None;
    // Each of the four steps ends within the timeout (the coordinator aborts or
    // abandons a step that outlasts it), so the coordinator reaches an outcome within
    // four timeouts; the cap, a margin above that for the nodes' answers, only keeps
    // a request from hanging on a node that holds a connection open without answering.
    let hard = Duration::from_millis(timeout_ms.saturating_mul(4).saturating_add(10_000));
    while outcome.is_none() {
        // Once the outcome is known, the actions after it are not run: after an
        // abandoned promotion this coordinator (which checks no node's health) has
        // no failover to offer; the nodes' own coordinators fail over.
        while let Some(action) = outcome.is_none().then(|| c.poll_action()).flatten() {
            match action {
                Action::StopWrites { node } => pending.push((node, "/admin/stop-writes".into())),
                Action::Promote { node, epoch } => {
                    pending.push((node, format!("/admin/promote?epoch={epoch}")))
                }
                Action::Fence { node, epoch } => {
                    pending.push((node, format!("/admin/fence?epoch={epoch}")))
                }
                Action::Report(report) => {
                    let at = ms(Instant::now());
                    let text = match &report {
                        Report::Switchover { step, .. } => format!("{step:?}"),
                        other => format!("{other:?}"),
                    };
                    tracing::info!("switchover to {to}: {text} at {at:.0} ms");
                    steps.push(json!({ "step": text, "at_ms": at }));
                    match report {
                        Report::Switchover {
                            step: Step::Done, ..
                        } => outcome = Some(Ok(c.epoch())),
                        Report::SwitchoverAborted { step, .. } => {
                            outcome = Some(Err(Ended::Aborted(step)))
                        }
                        // The old master did not report the new epoch in time: the
                        // target is the master all the same (the first message of its
                        // epoch fences the old one).
                        Report::SwitchoverAbandoned {
                            step: Step::Demote, ..
                        } => outcome = Some(Ok(c.epoch())),
                        Report::SwitchoverAbandoned { step, .. } => {
                            outcome = Some(Err(Ended::Abandoned(step)))
                        }
                        _ => {}
                    }
                }
            }
        }
        // Actions that could not be delivered are retried: the coordinator waits
        // for their effect, or times out.
        let mut errors = Vec::new();
        pending.retain(|(node, path)| {
            let m = if *node == old_m.id {
                &mut old_m
            } else if *node == target_m.id {
                &mut target_m
            } else {
                &mut me
            };
            match m.post(path) {
                Ok(()) => false,
                Err(e) => {
                    errors.push(e);
                    true
                }
            }
        });
        for e in errors {
            tracing::warn!("switchover to {to}: {e}");
        }
        if outcome.is_some() {
            break;
        }
        if started.elapsed() > hard {
            return Err(Failed {
                status: 504,
                body: json!({
                    "error": format!("the switchover did not finish in {} ms", hard.as_millis()),
                    "steps": steps,
                }),
            });
        }
        std::thread::sleep(POLL);
        for m in [&mut old_m, &mut target_m] {
            if let Some(p) = m.position() {
                c.observe(m.id, p);
            }
        }
        c.tick(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    }
    let epoch = match outcome {
        Some(Ok(epoch)) => epoch,
        Some(Err(Ended::Abandoned(step))) => {
            return Err(Failed {
                status: 504,
                body: json!({
                    "error": format!(
                        "abandoned in {step:?}: {} did not report itself master of the new \
                         epoch within failover.switchover_timeout_ms ({timeout_ms} ms); the \
                         nodes' automatic failover (if enabled) takes over",
                        target_m.name
                    ),
                    "steps": steps,
                }),
            })
        }
        Some(Err(Ended::Aborted(step))) => {
            return Err(Failed {
                status: 504,
                body: json!({
                    "error": format!(
                        "aborted: {step:?} outlasted failover.switchover_timeout_ms ({timeout_ms} ms); \
                         {} resumed as the master in a new epoch",
                        old_m.name
                    ),
                    "steps": steps,
                }),
            })
        }
        None => unreachable!("the loop ends with an outcome"),
    };
    // The target is the master of the new epoch; it takes writes once a majority is
    // in the epoch and a lease and a quarter has passed.
    let lease = Duration::from_millis(config.replication.lease_ms);
    let until = Instant::now() + lease * 4 + Duration::from_secs(5);
    let mut writable_at = None;
    while Instant::now() < until {
        if target_m.status().is_some_and(|s| s["writable"] == true) {
            writable_at = Some(ms(Instant::now()));
            break;
        }
        std::thread::sleep(POLL);
    }
    steps.push(json!({ "step": "Writable", "at_ms": writable_at }));
    Ok(json!({
        "from": old_m.name,
        "to": target_m.name,
        "epoch": epoch,
        "steps": steps,
        "writable_after_ms": writable_at,
        "total_ms": ms(Instant::now()),
    }))
}
