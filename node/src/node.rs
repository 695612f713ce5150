//! The engine's task: one task owns the [`SyncEngine`] (an actor) and everything
//! else talks to it over a channel.
//!
//! Its loop: take a batch of commands (client writes and reads, frames from peers,
//! connection events), apply them to the engine, commit what changed to the store
//! (one transaction for the batch: group commit), and only then drain
//! [`SyncEngine::poll_transmit`] into the peers' connections, so nothing leaves the
//! node, acknowledgements included, before it is on disk as the fsync policy says.
//! Then it answers the writes and reads whose conditions now hold, and sleeps until
//! the next command or [`SyncEngine::poll_timeout`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord::hlc::Timestamp;
use concord::ops::alert::{Alerts, State};
use concord::ops::failover::{Action, Coordinator, CoordinatorConfig, Position, Report};
use concord::sync::{AckLevel, Message, Role, Snapshot, SyncEngine};
use concord::{CausalContext, Conflict, Crdt, Dot, MvRegister, ReplicaId, SystemClock};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::{ack_name, Fsync, NodeConfig, LEASE_BLOCK_NO_FSYNC};
use crate::error::Result;
use crate::metrics::{self, Metrics};
use crate::store::{Recovered, RedbLease, RoleRecord, Store};
use crate::Kv;

type Engine = SyncEngine<Kv, SystemClock>;

const CONFLICT_LOG: usize = 1_000;
/// The bytes the conflict log may hold (values are also cut to [`CONFLICT_VALUE`]
/// bytes, and [`CONFLICT_SIBLINGS`] of them per side).
const CONFLICT_LOG_BYTES: usize = 4 << 20;
const CONFLICT_VALUE: usize = 256;
const CONFLICT_SIBLINGS: usize = 16;
/// How many writes, and how many reads, may wait at once (more get a `503`).
pub const MAX_WAITING: usize = 10_000;
const LAG_SAMPLES: usize = 20_000;
const LAG_QUEUE: usize = 200_000;
/// How many frames (and bytes) for a peer without a connection are kept for when
/// one comes up.
const PARKED: usize = 16;
const PARKED_BYTES: usize = 1 << 20;
const TICK: Duration = Duration::from_millis(100);
/// How often the `none` fsync policy syncs the database.
const SYNC_PERIOD: Duration = Duration::from_millis(100);
/// How many failover events `/health` lists.
const EVENTS: usize = 50;

/// A request to the engine's task.
#[derive(Debug)]
pub enum Command {
    /// Write `value` at `key` (`None`: delete it) and answer once `level` holds.
    Put {
        /// The key.
        key: String,
        /// The value; `None` deletes.
        value: Option<String>,
        /// How many peers must hold the write before the answer.
        level: AckLevel,
        /// How long to wait for them.
        timeout: Duration,
        /// Where the answer goes.
        reply: oneshot::Sender<WriteOutcome>,
    },
    /// Read `key` (`None`: every key) once this node covers `token`.
    Get {
        /// The key, or every key.
        key: Option<String>,
        /// The client's session token.
        token: Option<CausalContext>,
        /// How long to wait for this node to catch up with the token.
        wait: Duration,
        /// Where the answer goes.
        reply: oneshot::Sender<ReadOutcome>,
    },
    /// The `/health` document.
    Health {
        /// Where the answer goes.
        reply: oneshot::Sender<Value>,
    },
    /// The `/conflicts` document.
    Conflicts {
        /// Where the answer goes.
        reply: oneshot::Sender<Value>,
    },
    /// The `/alerts` document.
    Alerts {
        /// Where the answer goes.
        reply: oneshot::Sender<Value>,
    },
    /// A frame from a peer (already checked to come from `peer`).
    Frame {
        /// The peer its connection authenticated.
        peer: ReplicaId,
        /// The decoded message.
        msg: Box<Message<Kv>>,
        /// The frame as received (logged if its delta changes the state).
        frame: Vec<u8>,
    },
    /// An operator's command on the replication role (master–follower mode).
    Admin {
        /// What to do.
        op: AdminOp,
        /// Where the answer goes: the `/health` document after it, or why not.
        reply: oneshot::Sender<std::result::Result<Value, String>>,
    },
    /// A connection to `peer` is up; frames for it go to `tx`.
    PeerUp {
        /// The peer.
        peer: ReplicaId,
        /// The connection's number.
        conn: u64,
        /// Its outgoing queue.
        tx: mpsc::Sender<Vec<u8>>,
    },
    /// Connection `conn` to `peer` is gone.
    PeerDown {
        /// The peer.
        peer: ReplicaId,
        /// The connection's number.
        conn: u64,
    },
}

/// The answer to an operator's command: the `/health` document after it, or why not.
type AdminAnswer = std::result::Result<Value, String>;

/// An operator's command on the replication role (`POST /admin/...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminOp {
    /// Become the master of a new epoch: `epoch`, or the next one above every epoch
    /// this node has seen.
    Promote {
        /// The epoch, if the caller chose one.
        epoch: Option<u64>,
    },
    /// Stop taking writes, keeping the epoch (a switchover's first step).
    StopWrites,
    /// Take `epoch` as a follower.
    Fence {
        /// The epoch.
        epoch: u64,
    },
}

/// The answer to a write.
#[derive(Debug)]
pub enum WriteOutcome {
    /// The write reached its level.
    Done {
        /// Its dot (`replica:counter`).
        dot: String,
        /// The session token after it.
        token: String,
        /// The peers that hold it.
        holders: Vec<String>,
    },
    /// Written locally (durable as the fsync policy says), but fewer peers than asked hold it yet;
    /// replication goes on.
    TimedOut {
        /// Its dot.
        dot: String,
        /// The session token after it.
        token: String,
        /// The peers that hold it.
        holders: Vec<String>,
        /// How many were asked for.
        wanted: usize,
    },
    /// A delete of a key this node does not hold: nothing was written.
    Absent {
        /// The node's session token.
        token: String,
    },
    /// Refused.
    Failed {
        /// An HTTP status.
        status: u16,
        /// Why.
        reason: String,
    },
    /// Refused because this node does not take writes now (master–follower mode: a
    /// follower, a deposed master, a master without its lease or in its fencing
    /// wait): nothing was written; retry at `leader`.
    NotWritable {
        /// Why.
        reason: String,
        /// The master this node supports, if it knows one (itself, for a master that
        /// waits for its lease or its fencing wait: retry here shortly).
        leader: Option<ReplicaId>,
        /// Its name.
        leader_name: Option<String>,
        /// Its HTTP address, if configured.
        leader_http: Option<std::net::SocketAddr>,
        /// This node's epoch.
        epoch: u64,
    },
}

/// The answer to a read.
#[derive(Debug)]
pub enum ReadOutcome {
    /// The values: for each key, its siblings in canonical order.
    Values {
        /// Key → siblings.
        entries: Vec<(String, Vec<String>)>,
        /// The node's session token.
        token: String,
    },
    /// This node had not seen everything the token names when the wait ran out.
    NotCaughtUp {
        /// How many writes of the token it lacks.
        missing: u64,
    },
    /// Too many reads are waiting already.
    Busy,
}

/// A connection's number and outgoing queue.
type Link = (u64, mpsc::Sender<Vec<u8>>);

struct WriteWaiter {
    dot: Dot,
    level: AckLevel,
    deadline: Instant,
    reply: oneshot::Sender<WriteOutcome>,
}

struct ReadWaiter {
    key: Option<String>,
    token: CausalContext,
    deadline: Instant,
    reply: oneshot::Sender<ReadOutcome>,
}

/// The engine's task.
pub struct Node {
    config: NodeConfig,
    engine: Engine,
    store: Store,
    metrics: Arc<Metrics>,
    /// The live connections of each peer, newest last (frames go to the newest; an
    /// older one stays until it closes, so a connection dropped right after its
    /// handshake, for a node id mismatch say, leaves the working one in place).
    links: HashMap<ReplicaId, Vec<Link>>,
    /// The newest frames the engine produced for a peer while it had no connection,
    /// sent first when one comes up. (The engine's first greeting goes out before
    /// any connection exists: dropped, the peers would not hear this node until its
    /// next heartbeat, and its writes would wait for that.)
    parked: HashMap<ReplicaId, VecDeque<Vec<u8>>>,
    committed: Vec<WriteWaiter>,
    writes: Vec<WriteWaiter>,
    reads: Vec<ReadWaiter>,
    /// Deletes of absent keys, answered (with a token) after the batch's commit.
    absent: Vec<oneshot::Sender<WriteOutcome>>,
    /// The node's own handle on the counter lease (see [`Node::cover_issued`]).
    lease: RedbLease,
    /// Set once a peer proved that this node issued writes its file does not
    /// remember: writes are refused from then on (see [`Node::check_claims`]).
    fenced: Option<String>,
    lag_queue: VecDeque<(u64, Instant)>,
    lag_samples: VecDeque<f64>,
    conflicts: VecDeque<(Value, usize)>,
    conflicts_bytes: usize,
    conflicts_total: u64,
    mirrored: concord::sync::Metrics,
    last_tick: Instant,
    last_sync: Instant,
    saved_acks: Vec<(ReplicaId, CausalContext)>,
    started: Instant,
    recovery: Value,
    /// The alert rules and their series, evaluated on the node's uptime.
    alerts: Alerts,
    last_alerts: Instant,
    /// The failover coordinator (master–follower mode with automatic failover).
    coordinator: Option<Coordinator>,
    last_check: Instant,
    /// The epoch, leader and role last queued for the store.
    saved_role: Option<RoleRecord>,
    /// What the failover machinery did, newest last (for `/health`).
    events: VecDeque<Value>,
    /// Since when this node has been a master that no majority supports (see
    /// [`Node::step_down_if_unsupported`]).
    unsupported_since: Option<Instant>,
    /// Whether this node has heard from the coordinator's master since it started
    /// (until then, and for a grace period, a silent master is a cluster starting).
    master_heard: bool,
    /// The positions fed to the coordinator at the last check, and since when they
    /// have not changed.
    positions: Vec<(ReplicaId, CausalContext)>,
    settled_since: Instant,
    /// The last master other than this node that its coordinator held (the one it
    /// failed over from, or followed before a newer decision).
    failed_master: Option<ReplicaId>,
    /// What each peer last said about itself in a message the engine took: its
    /// epoch, and whether it leads it (a master stamps `lead` on every message of
    /// the epoch it leads, and only then). One entry per configured peer at most
    /// (frames come only from authenticated peers).
    reported: HashMap<ReplicaId, (u64, Role)>,
    /// Since when the coordinator's master has reported itself a follower (see
    /// [`Node::check_failover`]).
    master_stopped_since: Option<(ReplicaId, Instant)>,
    /// Since when this node's coordinator has known no master while every peer was
    /// heard saying it is none (see [`Node::check_failover`]).
    masterless_since: Option<Instant>,
    /// The epoch in which an operator told this node to stop taking writes
    /// (`POST /admin/stop-writes`): until a newer epoch, it takes no part in an
    /// election (it would elect itself and take writes back long before the other
    /// nodes' grace for a stopped master ran out).
    stopped_in: Option<u64>,
    /// Answers to operators' commands, sent once the batch that ran them is
    /// committed (a node that answered "stopped taking writes" is a follower after a
    /// restart too).
    admin_replies: Vec<(oneshot::Sender<AdminAnswer>, AdminAnswer)>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the store, recovers the state and builds the engine (restored, with
    /// its lease, if the file held a previous life).
    ///
    /// # Errors
    ///
    /// Storage and engine errors.
    pub fn open(config: NodeConfig, metrics: Arc<Metrics>) -> Result<Node> {
        let (store, rec) = Store::open(&config.db_path(), &config.storage)?;
        let Recovered {
            state,
            acks,
            role,
            replayed,
            existed,
            took,
        } = rec;
        let keys = state.len();
        let engine_config = config.engine_config();
        let engine = if existed || role.is_some() {
            let hlc_last = state
                .max_timestamp()
                .unwrap_or(Timestamp::new(0, 0, config.node_id));
            // Master–follower mode: the role, epoch and leader the file holds (a
            // master restarted as one waits for a majority in its epoch again, and
            // steps down as soon as it hears of a newer one); before the first save,
            // the configured role. Multi-master: a master, epoch 0, as always.
            let (role, epoch, leader) = match (&role, config.master_follower()) {
                (Some(r), true) => (
                    if r.master {
                        Role::Master
                    } else {
                        Role::Follower
                    },
                    r.epoch,
                    r.leader,
                ),
                (_, true) => (engine_config.role, 0, None),
                (_, false) => (Role::Master, 0, None),
            };
            let snapshot = Snapshot {
                node: config.node_id,
                role,
                state,
                peers: acks.iter().map(|(p, c, _)| (*p, c.clone())).collect(),
                hlc_last,
                peer_versions: acks.iter().map(|(p, _, v)| (*p, *v)).collect(),
                epoch,
                leader,
            };
            SyncEngine::restore(snapshot, SystemClock, engine_config)?.with_lease(store.lease())?
        } else {
            SyncEngine::new(config.node_id, Kv::new(), SystemClock, engine_config)
                .with_lease(store.lease())?
        };
        let recovery = json!({
            "restarted": existed,
            "keys": keys,
            "log_records_replayed": replayed,
            "ms": took.as_secs_f64() * 1e3,
        });
        if existed {
            tracing::info!(
                "recovered {keys} keys from disk ({replayed} log records replayed) in {:.1} ms",
                took.as_secs_f64() * 1e3
            );
        }
        let mirrored = engine.metrics();
        let alerts = config.alerts.evaluator()?;
        let lease = store.lease();
        let fenced = store.fenced()?;
        let coordinator = (config.master_follower() && config.failover.automatic)
            .then(|| new_coordinator(&config, &engine));
        if config.master_follower() {
            tracing::info!(
                "master-follower mode: {} at epoch {}, leader {}",
                role_name(engine.role()),
                engine.epoch(),
                engine
                    .leader()
                    .map_or("unknown".into(), |l| config.name_of(l))
            );
        }
        if let Some(why) = &fenced {
            tracing::error!("this node is fenced and refuses writes: {why}");
            metrics.fenced.set(1);
        }
        Ok(Node {
            config,
            engine,
            store,
            metrics,
            links: HashMap::new(),
            parked: HashMap::new(),
            committed: Vec::new(),
            writes: Vec::new(),
            reads: Vec::new(),
            absent: Vec::new(),
            lease,
            fenced,
            lag_queue: VecDeque::new(),
            lag_samples: VecDeque::new(),
            conflicts: VecDeque::new(),
            conflicts_bytes: 0,
            conflicts_total: 0,
            mirrored,
            last_tick: Instant::now(),
            last_sync: Instant::now(),
            saved_acks: Vec::new(),
            started: Instant::now(),
            recovery,
            alerts,
            last_alerts: Instant::now(),
            coordinator,
            last_check: Instant::now(),
            saved_role: None,
            events: VecDeque::new(),
            unsupported_since: None,
            master_heard: false,
            positions: Vec::new(),
            settled_since: Instant::now(),
            failed_master: None,
            reported: HashMap::new(),
            admin_replies: Vec::new(),
            master_stopped_since: None,
            masterless_since: None,
            stopped_in: None,
        })
    }

    /// Runs until every sender of `rx` is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.handle(cmd);
                    for _ in 0..512 {
                        match rx.try_recv() {
                            Ok(cmd) => self.handle(cmd),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            self.after_batch();
        }
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = self.last_tick + TICK;
        if let Some(t) = self.engine.poll_timeout() {
            let in_ms = t.saturating_sub(self.engine.now_ms());
            wake = wake.min(now + Duration::from_millis(in_ms));
        }
        for d in self.writes.iter().map(|w| w.deadline) {
            wake = wake.min(d);
        }
        for d in self.reads.iter().map(|r| r.deadline) {
            wake = wake.min(d);
        }
        wake.max(now)
    }

    fn name(&self, id: ReplicaId) -> String {
        self.config.name_of(id)
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Put {
                key,
                value,
                level,
                timeout,
                reply,
            } => self.put(key, value, level, timeout, reply),
            Command::Get {
                key,
                token,
                wait,
                reply,
            } => {
                if self.reads.len() >= MAX_WAITING {
                    let _ = reply.send(ReadOutcome::Busy);
                    return;
                }
                // Answered after the batch's commit (and lease): the answer's token
                // may name writes of this batch.
                self.reads.push(ReadWaiter {
                    key,
                    token: token.unwrap_or_default(),
                    deadline: Instant::now() + wait,
                    reply,
                });
            }
            Command::Health { reply } => {
                let _ = reply.send(self.health());
            }
            Command::Alerts { reply } => {
                let _ = reply.send(self.alerts_document());
            }
            Command::Conflicts { reply } => {
                let _ = reply.send(json!({
                    "total": self.conflicts_total,
                    "recent": self.conflicts.iter().map(|(e, _)| e).collect::<Vec<_>>(),
                }));
            }
            Command::Frame { peer, msg, frame } => self.receive(peer, *msg, frame),
            Command::Admin { op, reply } => {
                let answer = self.admin(op);
                self.admin_replies.push((reply, answer));
            }
            Command::PeerUp { peer, conn, tx } => {
                // Frames produced without a connection were produced after their
                // commit: they may go now.
                for frame in self.parked.remove(&peer).into_iter().flatten() {
                    let labels = metrics::peer(&self.name(peer));
                    let len = frame.len() as u64;
                    if tx.try_send(frame).is_ok() {
                        self.metrics.frames_sent.get_or_create(&labels).inc();
                        self.metrics
                            .bytes_sent
                            .get_or_create(&labels)
                            .inc_by(len + 4);
                    }
                }
                self.links.entry(peer).or_default().push((conn, tx));
                self.metrics
                    .peer_connected
                    .get_or_create(&metrics::peer(&self.name(peer)))
                    .set(1);
            }
            Command::PeerDown { peer, conn } => {
                let conns = self.links.entry(peer).or_default();
                conns.retain(|(c, _)| *c != conn);
                if conns.is_empty() {
                    self.metrics
                        .peer_connected
                        .get_or_create(&metrics::peer(&self.name(peer)))
                        .set(0);
                }
            }
        }
    }

    fn put(
        &mut self,
        key: String,
        value: Option<String>,
        level: AckLevel,
        timeout: Duration,
        reply: oneshot::Sender<WriteOutcome>,
    ) {
        if let Some(why) = &self.fenced {
            let _ = reply.send(WriteOutcome::Failed {
                status: 503,
                reason: format!(
                    "this node refuses writes: {why}. It must not write under its node id \
                     again: replace it with a node under a fresh id (see \"Storage, restarts \
                     and recovery\" in docs/cluster.md)"
                ),
            });
            return;
        }
        if self.writes.len() + self.committed.len() >= MAX_WAITING {
            let _ = reply.send(WriteOutcome::Failed {
                status: 503,
                reason: format!(
                    "{MAX_WAITING} writes are waiting for their acknowledgement level; \
                     nothing was written, retry later"
                ),
            });
            return;
        }
        let written = self.engine.update(|m, hlc| match value {
            Some(v) => m.write(key, v, hlc),
            None => m.remove(&key, hlc),
        });
        let receipt = match written {
            Ok(r) => r,
            Err(
                e @ (concord::Error::ReadOnly { .. }
                | concord::Error::Deposed { .. }
                | concord::Error::NoQuorum { .. }
                | concord::Error::FencingWait { .. }),
            ) => {
                let _ = reply.send(self.not_writable(e.to_string()));
                return;
            }
            Err(e) => {
                let _ = reply.send(WriteOutcome::Failed {
                    status: 400,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let Some(dot) = receipt.dot else {
            self.absent.push(reply);
            return;
        };
        self.store.append_local(&receipt.delta);
        if self.config.storage.fsync == Fsync::Always {
            self.commit();
        }
        self.lag_queue.push_back((dot.counter(), Instant::now()));
        if self.lag_queue.len() > LAG_QUEUE {
            self.lag_queue.pop_front();
        }
        self.committed.push(WriteWaiter {
            dot,
            level,
            deadline: Instant::now() + timeout,
            reply,
        });
    }

    fn receive(&mut self, peer: ReplicaId, msg: Message<Kv>, frame: Vec<u8>) {
        self.check_claims(peer, &msg);
        // The peer's own word on its role, as the envelope carries it: `lead` is set
        // by a master that leads the message's epoch, and by no one else.
        let report = (
            msg.epoch,
            if msg.lead.is_some() {
                Role::Master
            } else {
                Role::Follower
            },
        );
        match self.engine.handle_message(msg) {
            Ok(received) => {
                // Kept only from a message the engine took (its epoch checked: not
                // absurdly far ahead), and never moved back by a reordered one.
                let r = self.reported.entry(peer).or_insert(report);
                if report.0 >= r.0 {
                    *r = report;
                }
                if received.outcome.changed() {
                    self.store.append_remote(&frame);
                }
                for c in received.conflicts {
                    self.log_conflict(peer, c);
                }
            }
            Err(e) => {
                self.metrics
                    .frames_rejected
                    .get_or_create(&metrics::peer(&self.name(peer)))
                    .inc();
                tracing::warn!("refused a message from {}: {e}", self.name(peer));
            }
        }
    }

    /// Fences the node if `msg` names a write of this node above everything it
    /// issued (its state and its lease): proof that an earlier life of the node issued
    /// dots its file no longer holds (an older copy of the file was restored, or the
    /// file was lost), so its next writes would reuse them. The engine would only
    /// ignore or refuse the claim; the node stops taking writes, for good, and says so.
    fn check_claims(&mut self, peer: ReplicaId, msg: &Message<Kv>) {
        let me = self.engine.incarnation();
        if self.fenced.is_some() || me != self.engine.node() {
            // Without the lease (a fresh writer id per boot) nothing can be reused.
            return;
        }
        let claimed = msg.seen.max_counter(me).max(msg.base.max_counter(me)).max(
            msg.delta
                .as_ref()
                .map_or(0, |d| d.context().max_counter(me)),
        );
        let issued = self
            .engine
            .context()
            .max_counter(me)
            .max(self.lease.bound());
        if claimed <= issued {
            return;
        }
        let why = format!(
            "{} holds write {}:{claimed} of this node, but this node's file records only \
             {issued} write(s): it was restored from an older copy or lost",
            self.name(peer),
            self.config.name_of(me),
        );
        tracing::error!("fenced, refusing writes from now on: {why}");
        if let Err(e) = self.store.fence(&why) {
            tracing::error!("cannot record the fence: {e}");
        }
        self.metrics.fenced.set(1);
        self.fenced = Some(why);
    }

    fn log_conflict(&mut self, peer: ReplicaId, c: Conflict<String, MvRegister<String>>) {
        let values = |r: &MvRegister<String>| {
            r.values()
                .take(CONFLICT_SIBLINGS)
                .map(|v| match v.char_indices().nth(CONFLICT_VALUE) {
                    Some((cut, _)) => format!("{}…", &v[..cut]),
                    None => v.clone(),
                })
                .collect::<Vec<_>>()
        };
        self.conflicts_total += 1;
        self.metrics.conflicts.inc();
        let entry = json!({
            "at_ms": self.engine.now_ms(),
            "key": c.key,
            "with": self.name(peer),
            "ours": values(&c.ours),
            "theirs": values(&c.theirs),
            "resolved": values(&c.resolved),
        });
        tracing::info!(
            "conflict on {:?} with {}: siblings {}",
            entry["key"],
            self.name(peer),
            entry["resolved"]
        );
        let bytes = entry.to_string().len();
        self.conflicts.push_back((entry, bytes));
        self.conflicts_bytes += bytes;
        while self.conflicts.len() > CONFLICT_LOG || self.conflicts_bytes > CONFLICT_LOG_BYTES {
            let Some((_, b)) = self.conflicts.pop_front() else {
                break;
            };
            self.conflicts_bytes -= b;
        }
    }

    fn commit(&mut self) {
        if let Err(e) = self.store.commit() {
            // Acknowledging anything now would promise what the disk does not hold:
            // stop, and let the restart recover from the last commit.
            tracing::error!("cannot write the database, stopping: {e}");
            std::process::exit(2);
        }
    }

    fn after_batch(&mut self) {
        let now_ms = self.engine.now_ms();
        if self.engine.poll_timeout().is_some_and(|t| t <= now_ms) {
            self.engine.handle_timeout();
        }
        self.check_failover();
        // The epoch and the leader it supports go to disk with the batch that
        // changed them, before any message that shows them leaves.
        self.save_role();
        // Durable first, then visible to peers and clients.
        self.commit();
        for (reply, answer) in self.admin_replies.drain(..) {
            let _ = reply.send(answer);
        }
        self.cover_issued();
        let committed = std::mem::take(&mut self.committed);
        self.writes.extend(committed);
        self.transmit();
        self.answer_writes();
        self.answer_reads();
        self.measure_lag();
        if self.last_tick.elapsed() >= TICK {
            self.tick();
        }
    }

    /// With the `none` policy, extends the durable lease over every dot this node
    /// issued, before any answer can name one: the log commit that holds a write is
    /// not synced, so without this a crash would let the restart issue the counters
    /// of writes that clients were told about again (their tokens would then name
    /// other writes). One synced commit per [`LEASE_BLOCK_NO_FSYNC`] local writes,
    /// shared with the engine's own extensions before it sends. With `always` and
    /// `group` the synced log commit that precedes every answer already holds them.
    fn cover_issued(&mut self) {
        if self.config.storage.fsync != Fsync::None {
            return;
        }
        let me = self.engine.incarnation();
        if me != self.engine.node() {
            return;
        }
        let issued = self.engine.context().max_counter(me);
        if let Err(e) = self.lease.cover(issued, LEASE_BLOCK_NO_FSYNC) {
            // Answering now would hand out dots a restart may issue again.
            tracing::error!("cannot write the counter lease, stopping: {e}");
            std::process::exit(2);
        }
    }

    fn transmit(&mut self) {
        // The central ordering: nothing leaves before the batch that made it is
        // committed (a change here would let a peer hold a write a crash loses, whose
        // dot the restart then issues again). Checked, not assumed: the tests fail if
        // it breaks.
        assert!(
            !self.store.has_pending(),
            "frames would leave before their commit"
        );
        while let Some(t) = self.engine.poll_transmit() {
            let labels = metrics::peer(&self.name(t.to));
            let len = t.bytes.len() as u64;
            let sent = match self.links.get(&t.to).and_then(|c| c.last()) {
                Some((_, tx)) => tx.try_send(t.bytes).is_ok(),
                None => {
                    let parked = self.parked.entry(t.to).or_default();
                    parked.push_back(t.bytes);
                    while parked.len() > PARKED
                        || parked.iter().map(Vec::len).sum::<usize>() > PARKED_BYTES
                    {
                        parked.pop_front();
                        // The driver resends what is not acknowledged.
                        self.metrics.frames_dropped.get_or_create(&labels).inc();
                    }
                    continue;
                }
            };
            if sent {
                self.metrics.frames_sent.get_or_create(&labels).inc();
                self.metrics
                    .bytes_sent
                    .get_or_create(&labels)
                    .inc_by(len + 4);
            } else {
                // The driver resends what is not acknowledged.
                self.metrics.frames_dropped.get_or_create(&labels).inc();
            }
        }
    }

    fn holders(&self, dot: Dot) -> Vec<String> {
        self.engine
            .holders(dot)
            .into_iter()
            .map(|p| self.name(p))
            .collect()
    }

    fn answer_writes(&mut self) {
        if self.writes.is_empty() && self.absent.is_empty() {
            return;
        }
        let now = Instant::now();
        let token = self.engine.token().to_token();
        for reply in std::mem::take(&mut self.absent) {
            let _ = reply.send(WriteOutcome::Absent {
                token: token.clone(),
            });
        }
        let waiting = std::mem::take(&mut self.writes);
        for w in waiting {
            let done = self.engine.is_replicated(w.dot, w.level);
            if !done && now < w.deadline && !w.reply.is_closed() {
                self.writes.push(w);
                continue;
            }
            let dot = format!("{}:{}", self.name(w.dot.replica()), w.dot.counter());
            let holders = self.holders(w.dot);
            let outcome = if done {
                WriteOutcome::Done {
                    dot,
                    token: token.clone(),
                    holders,
                }
            } else {
                self.metrics.ack_timeouts.inc();
                let wanted = match w.level {
                    AckLevel::None => 0,
                    AckLevel::Peers(k) => k,
                    AckLevel::All => self.config.peers.len(),
                    // A majority of the replicas, this node included.
                    AckLevel::Quorum => self.config.peers.len().div_ceil(2),
                };
                tracing::debug!(
                    "write {dot} missed {} ({} of {wanted} peers hold it)",
                    ack_name(w.level),
                    holders.len()
                );
                WriteOutcome::TimedOut {
                    dot,
                    token: token.clone(),
                    holders,
                    wanted,
                }
            };
            let _ = w.reply.send(outcome);
        }
    }

    fn answer_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let now = Instant::now();
        let waiting = std::mem::take(&mut self.reads);
        for r in waiting {
            if self.engine.can_serve(&r.token) {
                let _ = r.reply.send(self.read(r.key.as_deref()));
            } else if now >= r.deadline || r.reply.is_closed() {
                self.metrics.read_timeouts.inc();
                let missing = match self.engine.read(&r.token) {
                    Err(concord::Error::NotCaughtUp { missing }) => missing,
                    _ => 0,
                };
                let _ = r.reply.send(ReadOutcome::NotCaughtUp { missing });
            } else {
                self.reads.push(r);
            }
        }
    }

    fn read(&self, key: Option<&str>) -> ReadOutcome {
        let state = self.engine.state();
        let siblings = |r: &MvRegister<String>| r.values().cloned().collect::<Vec<_>>();
        let entries = match key {
            Some(k) => state
                .get(k)
                .map(|r| vec![(k.to_string(), siblings(r))])
                .unwrap_or_default(),
            None => state
                .iter_sorted()
                .map(|(k, r)| (k.clone(), siblings(r)))
                .collect(),
        };
        ReadOutcome::Values {
            entries,
            token: self.engine.token().to_token(),
        }
    }

    fn measure_lag(&mut self) {
        let me = self.engine.node();
        while let Some((counter, at)) = self.lag_queue.front() {
            if !self
                .engine
                .is_replicated(Dot::new(me, *counter), AckLevel::All)
            {
                break;
            }
            let secs = at.elapsed().as_secs_f64();
            self.metrics.replication_lag.observe(secs);
            self.lag_samples.push_back(secs * 1e3);
            if self.lag_samples.len() > LAG_SAMPLES {
                self.lag_samples.pop_front();
            }
            self.lag_queue.pop_front();
        }
    }

    fn tick(&mut self) {
        self.last_tick = Instant::now();
        let m = self.engine.metrics();
        let grow = |c: &prometheus_client::metrics::counter::Counter, new: u64, old: u64| {
            c.inc_by(new.saturating_sub(old));
        };
        grow(&self.metrics.writes, m.writes, self.mirrored.writes);
        grow(
            &self.metrics.retransmits,
            m.retransmits,
            self.mirrored.retransmits,
        );
        let old = &self.mirrored;
        let mx = &self.metrics;
        grow(&mx.messages_sent, m.messages_sent, old.messages_sent);
        grow(
            &mx.messages_received,
            m.messages_received,
            old.messages_received,
        );
        grow(
            &mx.messages_rejected,
            m.messages_rejected,
            old.messages_rejected,
        );
        grow(&mx.stale_deltas, m.stale_deltas, old.stale_deltas);
        grow(&mx.unbacked_deltas, m.unbacked_deltas, old.unbacked_deltas);
        grow(&mx.chunks_sent, m.chunks_sent, old.chunks_sent);
        grow(&mx.lease_writes, m.lease_writes, old.lease_writes);
        grow(
            &mx.hot_keys_set_aside,
            m.hot_keys_set_aside,
            old.hot_keys_set_aside,
        );
        grow(&mx.hot_keys_healed, m.hot_keys_healed, old.hot_keys_healed);
        mx.contained_hot_keys.set(m.contained_hot_keys as i64);
        mx.set_aside_writes.set(m.set_aside_writes as i64);
        mx.master
            .set(i64::from(m.role == concord::sync::Role::Master));
        mx.writable.set(i64::from(
            self.engine.writable().is_ok() && self.fenced.is_none(),
        ));
        mx.epoch
            .set(i64::try_from(self.engine.epoch()).unwrap_or(i64::MAX));
        for p in &m.peers {
            let labels = metrics::peer(&self.name(p.peer));
            self.metrics
                .peer_protocol_version
                .get_or_create(&labels)
                .set(i64::from(p.protocol_version));
            self.metrics
                .peer_unacked_writes
                .get_or_create(&labels)
                .set(p.lag.unacked_writes as i64);
            self.metrics
                .peer_oldest_unacked_ms
                .get_or_create(&labels)
                .set(p.lag.oldest_unacked_ms as i64);
            self.metrics
                .peer_since_heard_ms
                .get_or_create(&labels)
                .set(p.lag.since_heard_ms.map_or(-1, |v| v as i64));
        }
        let acks: Vec<(ReplicaId, CausalContext)> =
            m.peers.iter().map(|p| (p.peer, p.acked.clone())).collect();
        if acks != self.saved_acks {
            let records: Vec<_> = m
                .peers
                .iter()
                .map(|p| (p.peer, p.acked.clone(), p.protocol_version))
                .collect();
            // Committed with the next batch (at the latest on the next tick)
            // rather than by a commit, and an fsync, of their own.
            self.store.save_acks(&records);
            self.saved_acks = acks;
        }
        if self.last_alerts.elapsed() >= Duration::from_millis(self.config.alerts.evaluate_ms) {
            self.last_alerts = Instant::now();
            self.evaluate_alerts(&m);
        }
        self.mirrored = m;
        if self.last_sync.elapsed() >= SYNC_PERIOD {
            self.last_sync = Instant::now();
            if let Err(e) = self.store.sync() {
                tracing::error!("cannot sync the database, stopping: {e}");
                std::process::exit(2);
            }
        }
        self.store.maybe_compact();
        let stats = self.store.stats();
        self.metrics.keys.set(self.engine.state().len() as i64);
        self.metrics.log_records.set(self.store.log_len() as i64);
        self.metrics.commits.inc_by(
            stats
                .commits
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(self.metrics.commits.get()),
        );
        self.metrics
            .compactions
            .set(stats.compactions.load(std::sync::atomic::Ordering::Relaxed) as i64);
        if let Ok(meta) = std::fs::metadata(self.config.db_path()) {
            self.metrics.db_bytes.set(meta.len() as i64);
        }
        let micros = |a: &std::sync::atomic::AtomicU64| {
            a.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e3
        };
        self.metrics.live_bytes.set(stats.live_bytes() as i64);
        self.metrics.file_compactions.set(
            stats
                .file_compactions
                .load(std::sync::atomic::Ordering::Relaxed) as i64,
        );
        self.metrics
            .file_compaction_ms
            .set(micros(&stats.file_compaction_micros));
        self.metrics
            .compaction_tx_max_ms
            .set(micros(&stats.compaction_tx_micros_max));
    }

    /// The node's uptime in milliseconds: the alerts' clock (monotonic, so a step of
    /// the wall clock neither fires nor resolves anything).
    fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Evaluates the alert rules on `m`, logs what changed and updates the
    /// `concord_alert_*` gauges.
    fn evaluate_alerts(&mut self, m: &concord::sync::Metrics) {
        let now = self.uptime_ms();
        for t in self.alerts.evaluate_metrics(now, m) {
            let peer = t.peer.map(|p| format!(" for {}", self.name(p)));
            let peer = peer.unwrap_or_default();
            let state = state_name(t.to);
            match t.to {
                State::Firing => {
                    tracing::warn!("alert {}{peer} is firing (value {})", t.name, t.value)
                }
                _ => tracing::info!("alert {}{peer} is {state} (value {})", t.name, t.value),
            }
        }
        for a in self.alerts.list() {
            let peer = a.peer.map(|p| self.name(p));
            let labels = metrics::alert(&a.name, peer.as_deref());
            let mx = &self.metrics;
            mx.alert_firing
                .get_or_create(&labels)
                .set(i64::from(a.state == State::Firing));
            mx.alert_pending
                .get_or_create(&labels)
                .set(i64::from(a.state == State::Pending));
            mx.alert_value
                .get_or_create(&labels)
                .set(i64::try_from(a.value).unwrap_or(i64::MAX));
        }
    }

    fn alerts_document(&self) -> Value {
        let now = self.uptime_ms();
        let wall = self.engine.now_ms();
        let alerts: Vec<Value> = self
            .alerts
            .list()
            .into_iter()
            .map(|a| {
                let held = now.saturating_sub(a.since_ms);
                json!({
                    "name": a.name,
                    "peer": a.peer.map(|p| self.name(p)),
                    "state": state_name(a.state),
                    "since_unix_ms": wall.saturating_sub(held),
                    "for_ms": held,
                    "value": a.value,
                    "threshold": a.threshold,
                    "clear": a.clear,
                    "comparison": a.comparison,
                })
            })
            .collect();
        let firing = alerts.iter().filter(|a| a["state"] == "firing").count();
        json!({
            "node": self.config.name,
            "evaluate_ms": self.config.alerts.evaluate_ms,
            "firing": firing,
            "alerts": alerts,
        })
    }

    fn health(&self) -> Value {
        let peers: Vec<Value> = self
            .engine
            .metrics()
            .peers
            .iter()
            .map(|p| {
                json!({
                    "name": self.name(p.peer),
                    "id": p.peer.to_string(),
                    "connected": self.links.get(&p.peer).is_some_and(|c| !c.is_empty()),
                    "unacked_writes": p.lag.unacked_writes,
                    "oldest_unacked_ms": p.lag.oldest_unacked_ms,
                    "last_heard_ms_ago": p.lag.since_heard_ms,
                })
            })
            .collect();
        let mut lags: Vec<f64> = self.lag_samples.iter().copied().collect();
        lags.sort_by(f64::total_cmp);
        let pct = |q: f64| -> Option<f64> {
            (!lags.is_empty()).then(|| lags[((lags.len() - 1) as f64 * q).round() as usize])
        };
        let mut doc = json!({
            "status": if self.fenced.is_some() { "fenced" } else { "ok" },
            "fenced": self.fenced,
            "node": self.config.name,
            "id": self.config.node_id.to_string(),
            "role": role_name(self.engine.role()),
            "keys": self.engine.state().len(),
            "idle": self.engine.is_idle(),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "log_records": self.store.log_len(),
            "recovery": self.recovery,
            "conflicts": self.conflicts_total,
            "replication_lag_ms": {
                "samples": lags.len(),
                "p50": pct(0.5),
                "p99": pct(0.99),
            },
            "peers": peers,
        });
        if let (Value::Object(d), Value::Object(r)) = (&mut doc, self.replication_status()) {
            d.extend(r);
        }
        doc
    }
}

/// A coordinator that holds `engine`'s leader (else the configured master) for the
/// master, at `engine`'s epoch, over this node and its peers.
fn new_coordinator(config: &NodeConfig, engine: &Engine) -> Coordinator {
    let members = std::iter::once(config.node_id).chain(config.peers.iter().map(|p| p.id));
    let master = supported(engine)
        .or(config.master_id())
        .unwrap_or(config.node_id);
    Coordinator::new(members, master, engine.epoch(), coordinator_config(config))
}

/// The coordinator's settings, from the node's.
fn coordinator_config(config: &NodeConfig) -> CoordinatorConfig {
    CoordinatorConfig {
        failed_checks: config.failover.failed_checks,
        switchover_timeout_ms: config.failover.switchover_timeout_ms,
    }
}

/// The master `engine` supports: its leader, unless that is itself and it is no
/// longer a master (it stepped down, and follows no one yet).
fn supported(engine: &Engine) -> Option<ReplicaId> {
    engine
        .leader()
        .filter(|l| *l != engine.node() || engine.role() == Role::Master)
}

/// The lower-case name of a role (as in `/health`).
fn role_name(role: Role) -> &'static str {
    match role {
        Role::Master => "master",
        Role::Follower => "follower",
    }
}

impl Node {
    /// The refusal of a write this node does not take now, naming the master it
    /// supports.
    fn not_writable(&self, reason: String) -> WriteOutcome {
        let leader = self.engine.leader();
        WriteOutcome::NotWritable {
            reason,
            leader,
            leader_name: leader.map(|l| self.name(l)),
            leader_http: leader.and_then(|l| self.config.http_of(l)),
            epoch: self.engine.epoch(),
        }
    }

    /// Records a failover event: logged, and listed in `/health`.
    fn event(&mut self, what: String) {
        tracing::warn!("failover: {what}");
        self.events
            .push_back(json!({ "at_unix_ms": self.engine.now_ms(), "event": what }));
        while self.events.len() > EVENTS {
            self.events.pop_front();
        }
    }

    /// Runs an operator's command (`POST /admin/...`) on the engine.
    fn admin(&mut self, op: AdminOp) -> std::result::Result<Value, String> {
        if !self.config.master_follower() {
            return Err(
                "this node runs multi-master: every node takes writes, and there \
                        is nothing to promote or fence (replication.mode)"
                    .into(),
            );
        }
        match op {
            AdminOp::Promote { epoch } => {
                let epoch = match epoch {
                    Some(e) => self.engine.promote_at(e).map(|()| e),
                    None => self.engine.promote(),
                }
                .map_err(|e| e.to_string())?;
                self.metrics.promotions.inc();
                self.event(format!("promoted by an operator at epoch {epoch}"));
            }
            AdminOp::StopWrites => {
                self.engine.demote();
                self.stopped_in = Some(self.engine.epoch());
                self.event(format!(
                    "stopped taking writes (epoch {}) at an operator's request",
                    self.engine.epoch()
                ));
            }
            AdminOp::Fence { epoch } => {
                self.engine.fence(epoch).map_err(|e| e.to_string())?;
                self.event(format!("fenced at epoch {}", self.engine.epoch()));
            }
        }
        if let Some(c) = &self.coordinator {
            // Follow the new state rather than a decision taken before it.
            if supported(&self.engine).is_some_and(|l| c.master() != Some(l)) {
                self.rebuild_coordinator();
            }
        }
        Ok(self.health())
    }

    /// Feeds the failover coordinator the peers' health and positions, as this
    /// node's engine knows them, and carries out what concerns this node. Each node
    /// runs one: every follower sees the same master fail and, from the same
    /// positions, chooses the same candidate, which promotes itself; the others
    /// wait to hear from it. A candidate that does not take over fails its checks in
    /// turn, and the next one is chosen. Safety is the engine's (one master per
    /// epoch, the lease, the fencing wait), not the coordinators'.
    fn check_failover(&mut self) {
        if self.coordinator.is_none()
            || self.last_check.elapsed() < Duration::from_millis(self.config.failover.check_ms)
        {
            return;
        }
        self.last_check = Instant::now();
        let me = self.config.node_id;
        let (epoch, leader) = (self.engine.epoch(), supported(&self.engine));
        // The engine supports another master than the coordinator holds, at an epoch
        // at least the coordinator's: someone else's decision (a switchover, a
        // promotion by hand, another node's coordinator) stands.
        if let (Some(l), Some(c)) = (leader, &self.coordinator) {
            if c.master() != Some(l) && epoch >= c.epoch() {
                self.rebuild_coordinator();
            }
        }
        // This node's coordinator holds it for master, but it is not one (deposed by
        // a newer epoch whose master it cannot hear, or stopped), and no promotion of
        // it is awaited: its own follower role is no failed check of itself (failing
        // over from itself would fence it into an epoch no one leads, and deposes
        // whoever leads the newest). It starts over knowing no master; the one that
        // reports itself master of the newest epoch is taken.
        if let Some(c) = &self.coordinator {
            if c.master() == Some(me)
                && self.engine.role() != Role::Master
                && c.awaiting().is_none_or(|(n, _)| n != me)
                && c.step().is_none()
            {
                let members = std::iter::once(me).chain(self.config.peers.iter().map(|p| p.id));
                let epoch = c.epoch().max(epoch);
                self.coordinator = Some(Coordinator::without_master(
                    members,
                    epoch,
                    coordinator_config(&self.config),
                ));
            }
        }
        let m = self.engine.metrics();
        let silence = 2 * self.config.replication.heartbeat_ms;
        self.step_down_if_unsupported(&m, silence);
        // A master this node has not heard since it started is given a grace
        // period: two leases, and at least 10 s (a cluster starting on a loaded
        // machine). A master it has heard is checked at once.
        let grace_ms = (2 * self.config.replication.lease_ms).max(10_000);
        let grace = !self.master_heard && self.uptime_ms() < grace_ms;
        // Positions settle once the master is gone: the followers pass each other
        // what they lack, and acknowledge it, within a heartbeat or two. A failover
        // waits until they have not changed for two heartbeats and a check, so that
        // every follower chooses from the same positions, and so the same node.
        let positions: Vec<(ReplicaId, CausalContext)> =
            std::iter::once((me, self.engine.context().clone()))
                .chain(m.peers.iter().map(|p| (p.peer, p.acked.clone())))
                .collect();
        if positions != self.positions {
            self.positions = positions;
            self.settled_since = Instant::now();
        }
        let settled = self.settled_since.elapsed()
            >= Duration::from_millis(silence + self.config.failover.check_ms);
        let uptime = self.uptime_ms();
        let Some(c) = self.coordinator.as_mut() else {
            return;
        };
        // The time first: the timeouts of the promotions it ordered.
        c.tick(uptime);
        // Each peer's position: what this node knows it holds, and the epoch and role
        // it last reported about itself (not whether this node supports it: the
        // coordinator checks every promotion it orders against the promoted node's
        // own word). A peer not heard from yet has no position, and is no candidate.
        for p in &m.peers {
            let Some(&(epoch, role)) = self.reported.get(&p.peer) else {
                continue;
            };
            let position = Position {
                context: p.acked.clone(),
                epoch,
                role,
            };
            c.observe(p.peer, position);
        }
        c.observe(me, Position::from(&self.engine));
        // A master that reports itself a follower fails its checks (the coordinator
        // counts it so): it was deposed, or restarted as a follower. But one that
        // stopped taking writes at an operator's request (the first step of a planned
        // switchover, run from whichever node received it) is given three switchover
        // timeouts first, the longest a switchover leaves the old master stopped with
        // no new master (its steps StopWrites, WaitCaughtUp and Promote each have one
        // timeout: see `failover.switchover_timeout_ms`), so that the nodes'
        // coordinators do not fail over under a switchover in progress; if it is
        // still a follower after that, they do.
        let master_role = match c.master() {
            Some(l) if l == me => Some(self.engine.role()),
            Some(l) => self.reported.get(&l).map(|r| r.1),
            None => None,
        };
        let stopped = if let (Some(l), Some(Role::Follower)) = (c.master(), master_role) {
            let since = match self.master_stopped_since {
                Some((m, t)) if m == l => t,
                _ => self.master_stopped_since.insert((l, Instant::now())).1,
            };
            let grace = self.config.failover.switchover_timeout_ms.saturating_mul(3);
            since.elapsed() < Duration::from_millis(grace)
        } else {
            self.master_stopped_since = None;
            false
        };
        if !(stopped && c.master() == Some(me)) {
            c.health(me, true);
        }
        for p in &m.peers {
            let connected = self.links.get(&p.peer).is_some_and(|l| !l.is_empty());
            let heard = p.lag.since_heard_ms.is_some_and(|t| t <= silence);
            let mut ok = connected && heard;
            if c.master() == Some(p.peer) {
                self.master_heard |= heard;
                if grace && !heard {
                    continue;
                }
                if stopped && ok {
                    continue;
                }
                // The master must also be the one this node supports.
                ok &= leader == Some(p.peer);
                if !ok && !settled {
                    // Not counted yet, not forgiven either.
                    continue;
                }
            }
            c.health(p.peer, ok);
        }
        // Knowing no master (deposed, see above), and hearing every peer, none of
        // which says it is one: no one leads. After the step timeout (a promotion
        // under way gets that long), the coordinator elects; every node in that state
        // chooses from the same settled positions, so the same node. A peer not heard
        // (it may lead an epoch this node cannot hear) keeps it waiting.
        let stopped_here = self.stopped_in.is_some_and(|e| e >= epoch);
        let masterless = c.master().is_none()
            && !stopped_here
            && c.awaiting().is_none()
            && self.engine.role() == Role::Follower
            && leader.is_none()
            && settled
            && m.peers.iter().all(|p| {
                self.links.get(&p.peer).is_some_and(|l| !l.is_empty())
                    && p.lag.since_heard_ms.is_some_and(|t| t <= silence)
                    && self
                        .reported
                        .get(&p.peer)
                        .is_some_and(|r| r.1 == Role::Follower)
            });
        if masterless {
            let since = *self.masterless_since.get_or_insert_with(Instant::now);
            let timeout = Duration::from_millis(self.config.failover.switchover_timeout_ms);
            if since.elapsed() >= timeout {
                self.masterless_since = None;
                c.elect();
            }
        } else {
            self.masterless_since = None;
        }
        let mut actions: Vec<Action> = std::iter::from_fn(|| c.poll_action()).collect();
        // Reports first (in their order), so the events read as decided, then done.
        actions.sort_by_key(|a| !matches!(a, Action::Report(_)));
        // The epochs of promotions meant for other nodes: this node never fences
        // itself into one (it would take, and pass on, an epoch that only the other
        // node may lead, before that node could act on it).
        let theirs: Vec<u64> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Promote { node, epoch } if *node != me => Some(*epoch),
                _ => None,
            })
            .collect();
        for action in actions {
            match action {
                Action::Promote { node, epoch } if node == me => {
                    match self.engine.promote_at(epoch) {
                        Ok(()) => {
                            self.metrics.promotions.inc();
                            self.event(format!(
                                "promoted itself at epoch {epoch}: writes start once a \
                                 majority is in the epoch and the old lease has run out"
                            ));
                        }
                        Err(e) => self.event(format!("cannot promote itself: {e}")),
                    }
                }
                Action::Promote { node, epoch } => {
                    let name = self.name(node);
                    self.event(format!("expects {name} to take over at epoch {epoch}"));
                }
                Action::Fence { node, epoch } if node == me && !theirs.contains(&epoch) => {
                    if let Err(e) = self.engine.fence(epoch) {
                        self.event(format!("cannot fence itself: {e}"));
                    }
                }
                // A master that cannot be reached is fenced by its lease and by the
                // first message of the new epoch that reaches it; so is this node,
                // by the promoted node's first message.
                Action::Fence { .. } => {}
                Action::StopWrites { node } if node == me => self.engine.demote(),
                Action::StopWrites { .. } => {}
                Action::Report(report) => {
                    match report {
                        Report::FailoverStarted { master, .. } => {
                            self.metrics.failovers.inc();
                            self.failed_master = Some(master);
                        }
                        Report::PromotionFailed { node, .. } if node != me => {
                            self.failed_master = Some(node);
                        }
                        _ => {}
                    }
                    let text = self.describe(&report);
                    self.event(text);
                }
            }
        }
    }

    /// A master that hears from a majority but has had no majority in its epoch for
    /// three leases lost a race: another node was promoted in the same epoch and the
    /// others support it (a replica supports one master per epoch). It would stay a
    /// master that refuses every write, naming itself; it steps down instead, and
    /// follows. (Cut off from the majority, it waits: that is a partition, and its
    /// lease already stops its writes.)
    fn step_down_if_unsupported(&mut self, m: &concord::sync::Metrics, silence: u64) {
        let unsupported = self.engine.role() == Role::Master
            && matches!(
                self.engine.writable(),
                Err(concord::Error::NoQuorum { .. }
                    | concord::Error::FencingWait { until_ms: None, .. })
            );
        let heard = m
            .peers
            .iter()
            .filter(|p| p.lag.since_heard_ms.is_some_and(|t| t <= silence))
            .count();
        if !unsupported || heard + 1 < self.engine.quorum() {
            self.unsupported_since = None;
            return;
        }
        let since = *self.unsupported_since.get_or_insert_with(Instant::now);
        let limit = Duration::from_millis(3 * self.config.replication.lease_ms);
        if since.elapsed() < limit {
            return;
        }
        self.unsupported_since = None;
        let epoch = self.engine.epoch();
        if self.engine.fence(epoch).is_ok() {
            self.event(format!(
                "stepped down: master of epoch {epoch} for {} ms while hearing from a \
                 majority, none of which supports it (another node leads the epoch, or \
                 two were promoted and neither gathered a majority)",
                limit.as_millis()
            ));
            // If no one leads the epoch (two candidates split the votes of a
            // cluster missing its master), the coordinator must not hold this node
            // for the master: it goes back to the master it failed over from, whose
            // checks fail, and the next failover, on settled positions, starts a new
            // epoch.
            // With no master to go back to (this node's mastership came from an
            // operator, say), it holds another node for the master all the same: a
            // coordinator that knew no master would wait for one, and if every node's
            // did, none would ever fail over.
            let me = self.config.node_id;
            let failed = self
                .failed_master
                .filter(|f| *f != me)
                .or_else(|| self.config.peers.iter().map(|p| p.id).min());
            if let (Some(c), Some(failed)) = (&self.coordinator, failed) {
                let config = coordinator_config(&self.config);
                let members = std::iter::once(self.config.node_id)
                    .chain(self.config.peers.iter().map(|p| p.id));
                if c.master() == Some(self.config.node_id) {
                    self.coordinator = Some(Coordinator::new(members, failed, epoch, config));
                }
            }
        }
    }

    /// Rebuilds the coordinator on the engine's view (see [`new_coordinator`]),
    /// remembering the master it held (if another node) as the one to go back to if
    /// this node's own mastership comes to nothing.
    fn rebuild_coordinator(&mut self) {
        let me = self.config.node_id;
        if let Some(old) = self.coordinator.as_ref().and_then(Coordinator::master) {
            if old != me {
                self.failed_master = Some(old);
            }
        }
        self.coordinator = Some(new_coordinator(&self.config, &self.engine));
    }

    /// A coordinator's report in words.
    fn describe(&self, report: &Report) -> String {
        match report {
            Report::FailoverStarted {
                master,
                failed_checks,
            } => format!(
                "master {} failed {failed_checks} consecutive health checks: failing over",
                self.name(*master)
            ),
            Report::NoCandidate { master } => format!(
                "no healthy follower with a known position can replace {}; retrying on \
                 the next failed check",
                self.name(*master)
            ),
            Report::Promoted {
                node,
                epoch,
                missed,
            } => format!(
                "chose {} as the new master at epoch {epoch} (it lacked {missed} write(s) \
                 another follower held; they reach it by replication)",
                self.name(*node)
            ),
            Report::Switchover { target, step } => {
                format!("switchover to {}: {step:?}", self.name(*target))
            }
            Report::SwitchoverAborted {
                target,
                step,
                epoch,
            } => format!(
                "switchover to {} aborted in {step:?}; the old master resumes at epoch {epoch}",
                self.name(*target)
            ),
            Report::SwitchoverAbandoned { target, step } => {
                format!("switchover to {} abandoned in {step:?}", self.name(*target))
            }
            Report::PromotionFailed { node, epoch } => format!(
                "{} did not report itself master of epoch {epoch} in time, or refused it: \
                 failing over in a fresh epoch",
                self.name(*node)
            ),
        }
    }

    /// Queues the engine's epoch, leader and role for the next commit if they
    /// changed (master–follower mode).
    fn save_role(&mut self) {
        if !self.config.master_follower() {
            return;
        }
        let record = RoleRecord {
            epoch: self.engine.epoch(),
            leader: self.engine.leader(),
            master: self.engine.role() == Role::Master,
        };
        if self.saved_role.as_ref() == Some(&record) {
            return;
        }
        if let Some(old) = &self.saved_role {
            if record.leader.is_some() && (old.epoch, old.leader) != (record.epoch, record.leader) {
                self.metrics.leader_changes.inc();
                let leader = record.leader.map(|l| self.name(l)).unwrap_or_default();
                tracing::info!("epoch {}: the master is {leader}", record.epoch);
            }
        }
        self.store.save_role(&record);
        self.saved_role = Some(record);
    }

    /// The replication part of `/health`: mode, role, epoch, leader, whether a
    /// write would be taken now and why not, the lease, and the failover events.
    fn replication_status(&self) -> Value {
        let writable = self.engine.writable();
        let lease = match &writable {
            Ok(()) if self.config.master_follower() => json!({ "state": "held" }),
            Ok(()) => json!({ "state": "none (multi-master)" }),
            Err(concord::Error::NoQuorum {
                answered, needed, ..
            }) => json!({ "state": "not held", "answered": answered, "needed": needed }),
            Err(concord::Error::FencingWait { until_ms, .. }) => {
                json!({ "state": "fencing wait", "until_unix_ms": until_ms })
            }
            Err(_) => json!({ "state": "follower" }),
        };
        let leader = self.engine.leader();
        json!({
            "mode": if self.config.master_follower() { "master-follower" } else { "multi-master" },
            "epoch": self.engine.epoch(),
            "leader": leader.map(|l| self.name(l)),
            "leader_id": leader.map(|l| l.to_string()),
            "leader_http": leader.and_then(|l| self.config.http_of(l)).map(|a| a.to_string()),
            "writable": writable.is_ok() && self.fenced.is_none(),
            "write_refusal": writable.err().map(|e| e.to_string()),
            "lease": lease,
            "lease_ms": self.config.master_follower().then_some(self.config.replication.lease_ms),
            "quorum": self.engine.quorum(),
            "token": self.engine.token().to_token(),
            "failover": {
                "automatic": self.coordinator.is_some(),
                "coordinator_master": self.coordinator.as_ref().and_then(|c| c.master()).map(|m| self.name(m)),
                "coordinator_epoch": self.coordinator.as_ref().map(Coordinator::epoch),
                "events": self.events.iter().collect::<Vec<_>>(),
            },
        })
    }
}

/// The lower-case name of an alert state (as in `/alerts`).
fn state_name(state: State) -> &'static str {
    match state {
        State::Inactive => "inactive",
        State::Pending => "pending",
        State::Firing => "firing",
        State::Resolved => "resolved",
    }
}
