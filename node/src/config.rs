//! The node's TOML configuration.
//!
//! ```toml
//! node_id = "6f0f4c5e-8a0e-4d7e-9a55-0a4f6a1d2c3b"
//! name = "node-1"
//! listen = "127.0.0.1:7101"     # replication (mutual TLS)
//! http = "127.0.0.1:8101"       # the key-value API, /metrics, /health
//! data_dir = "data/node-1"      # relative paths are relative to this file
//!
//! [tls]
//! ca = "ca.pem"
//! cert = "node-1.pem"
//! key = "node-1.key"
//!
//! [[peers]]
//! id = "0c6b1f1e-2f4a-4d1b-8c1d-3e9a7f6b5a40"
//! name = "node-2"
//! addr = "127.0.0.1:7102"
//!
//! [ack]
//! level = "semi"                # async | semi | semi:K | quorum | sync
//! timeout_ms = 2000
//!
//! [replication]
//! mode = "master-follower"      # or "multi-master" (the default)
//! lease_ms = 2000               # the master lease (the same on every node)
//! master = "node-1"             # the initial master: a node's name or id
//!
//! [failover]                    # master-follower mode only
//! automatic = true
//! check_ms = 500                # health checks of the peers, this often
//! failed_checks = 3             # consecutive failed checks of the master
//! switchover_timeout_ms = 30000
//!
//! [storage]
//! fsync = "group"               # always | group | none
//!
//! [alerts]                      # the built-in rules are on unless builtin = false
//! evaluate_ms = 1000
//!
//! [[alerts.rules]]              # a rule named like a built-in one replaces it
//! name = "peer_silent"
//! signal = "silence_ms"         # lag_writes | lag_ms | silence_ms |
//!                               # rejected_messages | conflicts | contained_hot_keys
//! threshold = 5000
//! clear = 1000
//! clear_for_ms = 2000
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use concord::sync::AckLevel;
use concord::ReplicaId;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The lease block with the `none` fsync policy.
pub const LEASE_BLOCK_NO_FSYNC: u64 = 1024;

/// Everything a node reads at start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id: its certificate must name it.
    pub node_id: ReplicaId,
    /// A name for people (logs, conflict reports, metrics labels).
    #[serde(default)]
    pub name: String,
    /// Where peers connect (mutual TLS).
    pub listen: SocketAddr,
    /// Where the HTTP API listens.
    pub http: SocketAddr,
    /// The directory of the database file.
    pub data_dir: PathBuf,
    /// The cluster CA and this node's certificate and key.
    pub tls: TlsConfig,
    /// The other masters.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Defaults for writes and reads that do not say.
    #[serde(default)]
    pub ack: AckConfig,
    /// Durability and compaction.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Replication tuning.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// Failover settings (master–follower mode).
    #[serde(default)]
    pub failover: FailoverConfig,
    /// Alert rules, evaluated on a timer (`/alerts`, `concord_alert_*` metrics).
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The log level: error, warn, info, debug or trace.
    #[serde(default = "default_log")]
    pub log: String,
}

fn default_log() -> String {
    "info".to_string()
}

/// PEM files, relative to the configuration file unless absolute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA certificate: peers must present a certificate it signed.
    pub ca: PathBuf,
    /// This node's certificate (signed by the CA, naming `node_id`).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// One peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its node id (its certificate must name it).
    pub id: ReplicaId,
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// Where it listens for replication. Of each pair, the node with the smaller id
    /// connects to the other, so only the larger one's address is dialled.
    pub addr: SocketAddr,
    /// Where its HTTP API listens, if known: named to clients as the leader's
    /// address when this node refuses a write, and used by a planned switchover
    /// (`POST /admin/switchover`) to drive the old and the new master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
}

/// Acknowledgement defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AckConfig {
    /// The level of a write that names none: `async`, `semi` (one peer), `semi:K`
    /// (K peers), `quorum` (a majority of the nodes, this one included) or `sync`
    /// (every peer).
    pub level: String,
    /// How long a write waits for its level, in milliseconds.
    pub timeout_ms: u64,
    /// How long a read with a session token waits for this node to catch up.
    pub read_wait_ms: u64,
}

impl Default for AckConfig {
    fn default() -> Self {
        AckConfig {
            level: "async".to_string(),
            timeout_ms: 2_000,
            read_wait_ms: 2_000,
        }
    }
}

/// When the database file is synced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// One commit and fsync per write, before it is acknowledged.
    Always,
    /// One commit and fsync per batch of writes and received deltas (group commit),
    /// before any of them is acknowledged.
    Group,
    /// Commits without fsync; the file is synced ten times a second. A `kill -9`
    /// or a power loss may lose the last 100 ms of writes on this node (peers that
    /// received them give them back).
    None,
}

/// Storage settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The fsync policy.
    pub fsync: Fsync,
    /// Compact (a new base snapshot, the log it covers deleted) once the log holds
    /// this many records.
    pub compact_after: u64,
    /// Compact the database file (give its free space back) once it exceeds this
    /// many times the live data (the base and the log).
    pub max_file_ratio: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            fsync: Fsync::Group,
            compact_after: 50_000,
            max_file_ratio: 8,
        }
    }
}

/// How the nodes share the writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every node takes writes (the default).
    #[default]
    MultiMaster,
    /// One master takes the writes, under a lease, with fencing epochs; the others
    /// follow and take over on failover (see the engine's
    /// [`Config::master_follower`](concord::sync::Config::master_follower)).
    MasterFollower,
}

/// Failover settings (master–follower mode; ignored in multi-master mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Promote a follower when the master fails `failed_checks` consecutive health
    /// checks. Off, failover is by hand (`POST /admin/promote`).
    pub automatic: bool,
    /// How often each node checks its peers, in milliseconds. A check of a peer
    /// fails when its replication connection is down or it has not been heard for
    /// two heartbeats; a check of the master also fails when this node does not
    /// support it as the master of its epoch.
    pub check_ms: u64,
    /// How many consecutive failed checks of the master start a failover.
    pub failed_checks: u32,
    /// The timeout of each step of a planned switchover and of every promotion's
    /// confirmation, in milliseconds (default 30 s; call it T). A switchover that
    /// has not stopped the old master's writes within T, or not caught the target up
    /// within T more, is aborted (the old master resumes in a new epoch); a promoted
    /// node (by a switchover or by a failover) has T to report itself master of its
    /// epoch, else the nodes fail over again; an old master that does not report the
    /// new epoch within T more leaves the switchover done all the same. A switchover
    /// therefore ends within 4T, and `POST /admin/switchover` answers within 4T plus
    /// 10 s. The nodes give a master that stopped taking writes 3T (StopWrites,
    /// WaitCaughtUp and Promote) before its being a follower counts as failed checks.
    pub switchover_timeout_ms: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            automatic: true,
            check_ms: 500,
            failed_checks: 3,
            switchover_timeout_ms: 30_000,
        }
    }
}

/// Replication settings (the engine's [`concord::sync::Config`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Multi-master (the default) or master–follower.
    pub mode: Mode,
    /// The master lease in master–follower mode, in milliseconds: the same on every
    /// node, at least two heartbeats. A master takes writes only while a majority
    /// answered it within the lease; a promoted one waits a lease and a quarter
    /// before its first write.
    pub lease_ms: u64,
    /// The initial master in master–follower mode: a node's name or id. Only the
    /// first start reads it; after that each node keeps its role and epoch in its
    /// file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// The largest frame, in bytes (the same on every node).
    pub max_message_bytes: usize,
    /// Heartbeat period, in milliseconds.
    pub heartbeat_ms: u64,
    /// First resend timeout, in milliseconds.
    pub retransmit_ms: u64,
    /// Full anti-entropy period, in milliseconds.
    pub anti_entropy_ms: u64,
    /// A connection silent for this long is closed and redialled, in milliseconds.
    pub idle_timeout_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            mode: Mode::MultiMaster,
            lease_ms: 3_000,
            master: None,
            max_message_bytes: 4 << 20,
            heartbeat_ms: 500,
            retransmit_ms: 500,
            anti_entropy_ms: 30_000,
            idle_timeout_ms: 5_000,
        }
    }
}

/// Alert rules (see [`concord::ops::alert`]).
///
/// The evaluation clock is the node's monotonic uptime, so a wall-clock step never
/// fires or resolves an alert; `/alerts` reports times as Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often the rules are evaluated, in milliseconds (the node ticks every
    /// 100 ms: a shorter period acts as 100 ms).
    pub evaluate_ms: u64,
    /// Start from [`Rule::builtin`](concord::ops::alert::Rule::builtin) (rules of the
    /// same name in `rules` replace them).
    pub builtin: bool,
    /// How long a resolved alert stays listed as resolved, in milliseconds.
    pub keep_resolved_ms: u64,
    /// Rules of your own, or replacements of built-in ones.
    pub rules: Vec<concord::ops::alert::Rule>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            evaluate_ms: 1_000,
            builtin: true,
            keep_resolved_ms: 15 * 60_000,
            rules: Vec::new(),
        }
    }
}

impl AlertsConfig {
    /// The rules in force: the built-in ones (unless turned off) with those of
    /// `rules` replacing the ones of the same name, then the other rules of `rules`.
    pub fn effective_rules(&self) -> Vec<concord::ops::alert::Rule> {
        let mut out = if self.builtin {
            concord::ops::alert::Rule::builtin()
        } else {
            Vec::new()
        };
        for rule in &self.rules {
            match out.iter_mut().find(|r| r.name == rule.name) {
                Some(slot) => *slot = rule.clone(),
                None => out.push(rule.clone()),
            }
        }
        out
    }

    /// The evaluator of these rules.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if a rule is invalid or two of `rules` share a name.
    pub fn evaluator(&self) -> Result<concord::ops::alert::Alerts> {
        for (i, r) in self.rules.iter().enumerate() {
            if self.rules[..i].iter().any(|q| q.name == r.name) {
                return Err(Error::Config {
                    reason: format!("alerts.rules names {:?} twice", r.name),
                });
            }
        }
        concord::ops::alert::Alerts::new(self.effective_rules())
            .map(|a| a.keep_resolved_ms(self.keep_resolved_ms))
            .map_err(|e| Error::Config {
                reason: e.to_string(),
            })
    }
}

impl NodeConfig {
    /// Reads and checks a configuration file; relative paths in it become relative
    /// to its directory.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the file cannot be read, parsed or makes no sense.
    pub fn load(path: &Path) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| Error::Config {
            reason: format!("{}: {e}", path.display()),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.data_dir,
            &mut config.tls.ca,
            &mut config.tls.cert,
            &mut config.tls.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.check()?;
        Ok(config)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks that the settings make sense together.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first that does not.
    pub fn check(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::Config { reason });
        parse_ack(&self.ack.level, self.peers.len())?;
        for (i, p) in self.peers.iter().enumerate() {
            if p.id == self.node_id {
                return bad(format!("peer {} has this node's own id", p.id));
            }
            if self.peers[..i].iter().any(|q| q.id == p.id) {
                return bad(format!("peer {} is listed twice", p.id));
            }
        }
        self.engine_config().validate().map_err(|e| Error::Config {
            reason: e.to_string(),
        })?;
        if self.replication.idle_timeout_ms <= 2 * self.replication.heartbeat_ms {
            return bad("replication.idle_timeout_ms must exceed two heartbeats".into());
        }
        if self.alerts.evaluate_ms == 0 {
            return bad("alerts.evaluate_ms must be above 0".into());
        }
        match self.replication.mode {
            Mode::MultiMaster => {
                if let Some(m) = &self.replication.master {
                    return bad(format!(
                        "replication.master = {m:?} needs replication.mode = \"master-follower\""
                    ));
                }
            }
            Mode::MasterFollower => {
                let Some(m) = &self.replication.master else {
                    return bad(
                        "replication.mode = \"master-follower\" needs replication.master, \
                         the initial master's name or id"
                            .into(),
                    );
                };
                if self.master_id().is_none() {
                    return bad(format!(
                        "replication.master = {m:?} names neither this node nor a peer"
                    ));
                }
                let f = &self.failover;
                if f.failed_checks == 0 {
                    return bad("failover.failed_checks must be at least 1".into());
                }
                if f.check_ms < 10 {
                    return bad("failover.check_ms must be at least 10".into());
                }
                if f.switchover_timeout_ms == 0 {
                    return bad("failover.switchover_timeout_ms must be above 0".into());
                }
                if f.automatic && self.peers.len() < 2 {
                    return bad(
                        "automatic failover needs at least three nodes: with two, the \
                         survivor is no majority and cannot take writes"
                            .into(),
                    );
                }
            }
        }
        self.alerts.evaluator()?;
        Ok(())
    }

    /// The engine configuration these settings make. With the `none` fsync policy
    /// the counter lease is taken in blocks of [`LEASE_BLOCK_NO_FSYNC`] (one fsync per
    /// block instead of one per outgoing batch; a restart then leaves the unused
    /// rest of a block as a gap in the node's own context); with the others it costs
    /// no fsync (see [`RedbLease`](crate::store::RedbLease)) and is taken one counter
    /// at a time.
    pub fn engine_config(&self) -> concord::sync::Config {
        let r = &self.replication;
        let lease_block = match self.storage.fsync {
            Fsync::None => LEASE_BLOCK_NO_FSYNC,
            Fsync::Always | Fsync::Group => 1,
        };
        let config = concord::sync::Config::with_peers(self.peers.iter().map(|p| p.id))
            .lease_block(lease_block)
            .max_message_bytes(r.max_message_bytes)
            .heartbeat_ms(r.heartbeat_ms)
            .retransmit_ms(r.retransmit_ms)
            .max_retransmit_ms(r.retransmit_ms.max(5_000))
            .anti_entropy_ms(r.anti_entropy_ms);
        match r.mode {
            Mode::MultiMaster => config,
            Mode::MasterFollower => {
                let config = config.master_follower(r.lease_ms);
                if self.master_id() == Some(self.node_id) {
                    config
                } else {
                    config.follower()
                }
            }
        }
    }

    /// True in master–follower mode.
    pub fn master_follower(&self) -> bool {
        self.replication.mode == Mode::MasterFollower
    }

    /// The initial master named by `replication.master` (a name or an id), if it
    /// names this node or a peer.
    pub fn master_id(&self) -> Option<ReplicaId> {
        let m = self.replication.master.as_deref()?;
        self.id_of(m)
    }

    /// The node (this one or a peer) called `name`, or whose id is `name`.
    pub fn id_of(&self, name: &str) -> Option<ReplicaId> {
        if name == self.name || name == self.node_id.to_string() {
            return Some(self.node_id);
        }
        self.peers
            .iter()
            .find(|p| p.name == name || p.id.to_string() == name)
            .map(|p| p.id)
    }

    /// The HTTP address of `id`: this node's, or a peer's if configured.
    pub fn http_of(&self, id: ReplicaId) -> Option<SocketAddr> {
        if id == self.node_id {
            return Some(self.http);
        }
        self.peers.iter().find(|p| p.id == id).and_then(|p| p.http)
    }

    /// The name of `id`: this node's or a peer's, else its short id.
    pub fn name_of(&self, id: ReplicaId) -> String {
        if id == self.node_id && !self.name.is_empty() {
            return self.name.clone();
        }
        match self.peers.iter().find(|p| p.id == id) {
            Some(p) if !p.name.is_empty() => p.name.clone(),
            _ => id.short(),
        }
    }

    /// The path of the database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("concord.redb")
    }
}

/// Parses an acknowledgement level: `async`, `semi` (one peer), `semi:K`, `quorum`
/// (a majority of the nodes, this one included) or `sync`; `peers` is how many peers
/// the node has (a level it cannot reach is refused).
///
/// ```
/// use concord::sync::AckLevel;
/// use concord_node::config::parse_ack;
///
/// assert_eq!(parse_ack("semi:2", 2)?, AckLevel::Peers(2));
/// assert_eq!(parse_ack("quorum", 2)?, AckLevel::Quorum);
/// assert!(parse_ack("semi:3", 2).is_err());
/// assert!(parse_ack("majority", 2).is_err());
/// # Ok::<(), concord_node::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::Config`] for anything else.
pub fn parse_ack(s: &str, peers: usize) -> Result<AckLevel> {
    let level = match s {
        "async" => AckLevel::None,
        "sync" => AckLevel::All,
        "quorum" => AckLevel::Quorum,
        "semi" => AckLevel::Peers(1),
        _ => match s.strip_prefix("semi:").map(usize::from_str) {
            Some(Ok(k)) if k >= 1 => AckLevel::Peers(k),
            _ => {
                return Err(Error::Config {
                    reason: format!(
                        "ack level {s:?}: expected async, semi, semi:K, quorum or sync"
                    ),
                })
            }
        },
    };
    if let AckLevel::Peers(k) = level {
        if k > peers {
            return Err(Error::Config {
                reason: format!("ack level {s:?} asks for {k} peers; this node has {peers}"),
            });
        }
    }
    Ok(level)
}

/// The text form of a level (the inverse of [`parse_ack`]).
pub fn ack_name(level: AckLevel) -> String {
    match level {
        AckLevel::None => "async".into(),
        AckLevel::Peers(k) => format!("semi:{k}"),
        AckLevel::All => "sync".into(),
        AckLevel::Quorum => "quorum".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configurations_load_and_bad_ones_are_refused() {
        let dir = crate::harness::temp_dir("config").unwrap();
        let paths = crate::certs::generate_cluster(&dir, 3, 17_000).unwrap();
        let c = NodeConfig::load(&paths[0]).unwrap();
        assert_eq!(c.peers.len(), 2);
        assert!(c.tls.ca.is_absolute() || c.tls.ca.starts_with(&dir));
        crate::certs::Tls::load(&c.tls.ca, &c.tls.cert, &c.tls.key).unwrap();
        let text = std::fs::read_to_string(&paths[0]).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, text.replace("[ack]", "surprise = 1\n[ack]")).unwrap();
        assert!(NodeConfig::load(&bad).is_err());
        let mut own = c.clone();
        own.peers[0].id = own.node_id;
        assert!(own.check().is_err());
        assert!(parse_ack("semi:0", 2).is_err());
        // Alert rules: a built-in one replaced, one added, a bad one refused; they
        // survive the trip through the TOML file.
        let alerts: AlertsConfig = toml::from_str(
            "evaluate_ms = 500\n\n[[rules]]\nname = \"peer_silent\"\nsignal = \"silence_ms\"\n\
             threshold = 3000\nclear = 1000\n\n[[rules]]\nname = \"slow\"\n\
             signal = \"lag_ms\"\nthreshold = 9\nclear = 9\n",
        )
        .unwrap();
        let mut with = c.clone();
        with.alerts = alerts;
        let path = dir.join("alerts.toml");
        std::fs::write(&path, with.to_toml()).unwrap();
        let with = NodeConfig::load(&path).unwrap();
        assert_eq!(with.alerts.evaluate_ms, 500);
        let rules = with.alerts.effective_rules();
        assert_eq!(rules.len(), concord::ops::alert::Rule::builtin().len() + 1);
        let silent = rules.iter().find(|r| r.name == "peer_silent").unwrap();
        assert_eq!((silent.threshold, silent.for_ms), (3000, 0));
        let mut bad = with.clone();
        bad.alerts.rules[0].clear = 4000;
        assert!(bad.check().is_err(), "clear above threshold");
        let mut twice = with.clone();
        twice.alerts.rules[1].name = "peer_silent".into();
        assert!(twice.check().is_err(), "a rule named twice");
        assert_eq!(parse_ack("sync", 2).unwrap(), AckLevel::All);
        assert_eq!(parse_ack("quorum", 2).unwrap(), AckLevel::Quorum);
        // Master–follower mode: the initial master must be named, and be a node;
        // the lease must cover two heartbeats; failover needs three nodes.
        let mut mf = c.clone();
        mf.replication.mode = Mode::MasterFollower;
        assert!(mf.check().is_err(), "no master named");
        mf.replication.master = Some("nobody".into());
        assert!(mf.check().is_err(), "an unknown master");
        mf.replication.master = Some(c.peers[1].name.clone());
        mf.check().unwrap();
        assert_eq!(mf.master_id(), Some(c.peers[1].id));
        assert_eq!(mf.engine_config().role, concord::sync::Role::Follower);
        mf.replication.master = Some(c.node_id.to_string());
        assert_eq!(mf.engine_config().role, concord::sync::Role::Master);
        assert_eq!(mf.engine_config().master_lease_ms, Some(3_000));
        let mut short = mf.clone();
        short.replication.lease_ms = short.replication.heartbeat_ms;
        assert!(
            short.check().is_err(),
            "a lease shorter than two heartbeats"
        );
        let mut none = mf.clone();
        none.failover.failed_checks = 0;
        assert!(none.check().is_err(), "failed_checks = 0");
        let mut two = mf.clone();
        two.peers.truncate(1);
        assert!(two.check().is_err(), "automatic failover of two nodes");
        two.failover.automatic = false;
        two.check().unwrap();
        let path = dir.join("mf.toml");
        std::fs::write(&path, mf.to_toml()).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap().replication, mf.replication);
        let mut mm = c.clone();
        mm.replication.master = Some(c.name.clone());
        assert!(mm.check().is_err(), "a master in multi-master mode");
        assert_eq!(c.engine_config().master_lease_ms, None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
