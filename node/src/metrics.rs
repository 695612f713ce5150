//! Prometheus metrics (`/metrics`, OpenMetrics text format).
//!
//! Every series carries a `node` label; replication series carry a `peer` label
//! (peer names from the configuration). Every figure of [`concord::sync::Metrics`]
//! is mirrored by the engine's task (its counters as `_total` counters, per-peer lag
//! and protocol as gauges with a `peer` label; the version vector is not exported:
//! its entries are not a bounded label set). Alert states are exported as
//! `concord_alert_firing`, `concord_alert_pending` and `concord_alert_value`, with an
//! `alert` label (and `peer` for per-peer rules).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a series.
pub type Labels = Vec<(String, String)>;

/// The node's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by method, route and status.
    pub http_requests: Family<Labels, Counter>,
    /// Frames sent, by peer.
    pub frames_sent: Family<Labels, Counter>,
    /// Bytes sent (frame payloads), by peer.
    pub bytes_sent: Family<Labels, Counter>,
    /// Frames received, by peer.
    pub frames_received: Family<Labels, Counter>,
    /// Bytes received (frame payloads), by peer.
    pub bytes_received: Family<Labels, Counter>,
    /// Frames the engine refused (malformed, stale protocol, ...), by peer.
    pub frames_rejected: Family<Labels, Counter>,
    /// Frames dropped because the peer's connection was down for longer than the
    /// frames kept for it cover, or its queue was full (the engine resends).
    pub frames_dropped: Family<Labels, Counter>,
    /// 1 while a connection to the peer is up.
    pub peer_connected: Family<Labels, Gauge>,
    /// Connections established, by peer.
    pub connects: Family<Labels, Counter>,
    /// Local writes the peer has not acknowledged.
    pub peer_unacked_writes: Family<Labels, Gauge>,
    /// Age of the oldest write the peer has not acknowledged, in milliseconds.
    pub peer_oldest_unacked_ms: Family<Labels, Gauge>,
    /// Milliseconds since the peer was last heard (-1: never).
    pub peer_since_heard_ms: Family<Labels, Gauge>,
    /// TLS handshakes that failed (a certificate from another CA, say).
    pub tls_failures: Counter,
    /// Connections dropped because the certificate's node id did not match the
    /// configuration or the messages.
    pub identity_rejections: Counter,
    /// Local writes (engine total).
    pub writes: Counter,
    /// Concurrent writes resolved by merges.
    pub conflicts: Counter,
    /// Deltas resent by the driver.
    pub retransmits: Counter,
    /// Writes that did not reach their acknowledgement level in time.
    pub ack_timeouts: Counter,
    /// Reads whose session token this node could not serve in time.
    pub read_timeouts: Counter,
    /// Time from a local write until every peer holds it, in seconds.
    pub replication_lag: Histogram,
    /// Keys held.
    pub keys: Gauge,
    /// Log records past the base snapshot.
    pub log_records: Gauge,
    /// Database commits.
    pub commits: Counter<u64, AtomicU64>,
    /// Compactions finished.
    pub compactions: Gauge,
    /// Size of the database file, in bytes.
    pub db_bytes: Gauge,
    /// 1 if the node is fenced (refuses writes: a peer proved it issued writes its
    /// file does not remember), else 0.
    pub fenced: Gauge,
    /// The live data in the database file (the base snapshot and the log), in bytes.
    pub live_bytes: Gauge,
    /// Times the database file was compacted while the node ran.
    pub file_compactions: Gauge,
    /// How long the last file compaction held up the node's commits, in milliseconds.
    pub file_compaction_ms: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The longest that one transaction of the background compaction held up the
    /// node's commits, in milliseconds.
    pub compaction_tx_max_ms: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Messages the engine produced.
    pub messages_sent: Counter,
    /// Messages the engine accepted.
    pub messages_received: Counter,
    /// Messages the engine rejected (state unchanged).
    pub messages_rejected: Counter,
    /// Deltas skipped as computed against more than this node had.
    pub stale_deltas: Counter,
    /// Deltas skipped for claiming writes they did not carry.
    pub unbacked_deltas: Counter,
    /// Chunks of catch-ups sent.
    pub chunks_sent: Counter,
    /// Extensions of the counter lease.
    pub lease_writes: Counter,
    /// Reports of keys set aside (a key contained, or more of its writes set aside).
    pub hot_keys_set_aside: Counter,
    /// Contained keys that healed.
    pub hot_keys_healed: Counter,
    /// Keys held contained now.
    pub contained_hot_keys: Gauge,
    /// Writes set aside for contained keys and not taken yet.
    pub set_aside_writes: Gauge,
    /// 1 while the node is a master, 0 while a read-only follower.
    pub master: Gauge,
    /// 1 while a local write would be taken now (a master holding its lease, past
    /// its fencing wait), 0 otherwise.
    pub writable: Gauge,
    /// The fencing epoch (master–follower mode; 0 in multi-master mode).
    pub epoch: Gauge,
    /// Times the master this node supports changed (a new epoch, a new leader).
    pub leader_changes: Counter,
    /// Automatic failovers this node's coordinator started (the master failed its
    /// checks).
    pub failovers: Counter,
    /// Times this node was promoted (automatic failover, switchover or by hand).
    pub promotions: Counter,
    /// The protocol version spoken to each peer.
    pub peer_protocol_version: Family<Labels, Gauge>,
    /// 1 while an alert is firing, by `alert` (and `peer` for per-peer rules).
    pub alert_firing: Family<Labels, Gauge>,
    /// 1 while an alert is pending, by `alert` (and `peer`).
    pub alert_pending: Family<Labels, Gauge>,
    /// The value an alert rule last saw, by `alert` (and `peer`).
    pub alert_value: Family<Labels, Gauge>,
}

impl Metrics {
    /// Metrics of the node named `node`.
    pub fn new(node: &str) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "concord",
            [("node".into(), node.to_string().into())].into_iter(),
        );
        let m = Metrics {
            http_requests: Family::default(),
            frames_sent: Family::default(),
            bytes_sent: Family::default(),
            frames_received: Family::default(),
            bytes_received: Family::default(),
            frames_rejected: Family::default(),
            frames_dropped: Family::default(),
            peer_connected: Family::default(),
            connects: Family::default(),
            peer_unacked_writes: Family::default(),
            peer_oldest_unacked_ms: Family::default(),
            peer_since_heard_ms: Family::default(),
            tls_failures: Counter::default(),
            identity_rejections: Counter::default(),
            writes: Counter::default(),
            conflicts: Counter::default(),
            retransmits: Counter::default(),
            ack_timeouts: Counter::default(),
            read_timeouts: Counter::default(),
            replication_lag: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
            keys: Gauge::default(),
            log_records: Gauge::default(),
            commits: Counter::default(),
            compactions: Gauge::default(),
            db_bytes: Gauge::default(),
            fenced: Gauge::default(),
            live_bytes: Gauge::default(),
            file_compactions: Gauge::default(),
            file_compaction_ms: Gauge::default(),
            compaction_tx_max_ms: Gauge::default(),
            messages_sent: Counter::default(),
            messages_received: Counter::default(),
            messages_rejected: Counter::default(),
            stale_deltas: Counter::default(),
            unbacked_deltas: Counter::default(),
            chunks_sent: Counter::default(),
            lease_writes: Counter::default(),
            hot_keys_set_aside: Counter::default(),
            hot_keys_healed: Counter::default(),
            contained_hot_keys: Gauge::default(),
            set_aside_writes: Gauge::default(),
            master: Gauge::default(),
            writable: Gauge::default(),
            epoch: Gauge::default(),
            leader_changes: Counter::default(),
            failovers: Counter::default(),
            promotions: Counter::default(),
            peer_protocol_version: Family::default(),
            alert_firing: Family::default(),
            alert_pending: Family::default(),
            alert_value: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("http_requests", "HTTP requests", m.http_requests.clone());
        r.register(
            "frames_sent",
            "Replication frames sent",
            m.frames_sent.clone(),
        );
        r.register("sent_bytes", "Replication bytes sent", m.bytes_sent.clone());
        r.register(
            "frames_received",
            "Replication frames received",
            m.frames_received.clone(),
        );
        r.register(
            "received_bytes",
            "Replication bytes received",
            m.bytes_received.clone(),
        );
        r.register(
            "frames_rejected",
            "Frames the engine refused",
            m.frames_rejected.clone(),
        );
        r.register(
            "frames_dropped",
            "Frames dropped: link down past the frames kept for it, or queue full",
            m.frames_dropped.clone(),
        );
        r.register(
            "peer_connected",
            "1 while connected to the peer",
            m.peer_connected.clone(),
        );
        r.register("connects", "Connections established", m.connects.clone());
        r.register(
            "peer_unacked_writes",
            "Local writes the peer has not acknowledged",
            m.peer_unacked_writes.clone(),
        );
        r.register(
            "peer_oldest_unacked_ms",
            "Age of the oldest write the peer lacks (ms)",
            m.peer_oldest_unacked_ms.clone(),
        );
        r.register(
            "peer_since_heard_ms",
            "Milliseconds since the peer was heard (-1: never)",
            m.peer_since_heard_ms.clone(),
        );
        r.register(
            "tls_failures",
            "Failed TLS handshakes",
            m.tls_failures.clone(),
        );
        r.register(
            "identity_rejections",
            "Connections refused for a node id mismatch",
            m.identity_rejections.clone(),
        );
        r.register("writes", "Local writes", m.writes.clone());
        r.register(
            "conflicts",
            "Concurrent writes resolved",
            m.conflicts.clone(),
        );
        r.register("retransmits", "Deltas resent", m.retransmits.clone());
        r.register(
            "ack_timeouts",
            "Writes that missed their acknowledgement level in time",
            m.ack_timeouts.clone(),
        );
        r.register(
            "read_timeouts",
            "Token reads not served in time",
            m.read_timeouts.clone(),
        );
        r.register(
            "replication_lag_seconds",
            "Time until every peer holds a local write",
            m.replication_lag.clone(),
        );
        r.register("keys", "Keys held", m.keys.clone());
        r.register(
            "log_records",
            "Log records past the base snapshot",
            m.log_records.clone(),
        );
        r.register("store_commits", "Database commits", m.commits.clone());
        r.register("compactions", "Compactions finished", m.compactions.clone());
        r.register("db_bytes", "Database file size", m.db_bytes.clone());
        r.register(
            "fenced",
            "1 if the node refuses writes because a peer holds writes of it that its file does not",
            m.fenced.clone(),
        );
        r.register(
            "live_bytes",
            "Live data in the database file (base snapshot and log)",
            m.live_bytes.clone(),
        );
        r.register(
            "file_compactions",
            "Database file compactions while running",
            m.file_compactions.clone(),
        );
        r.register(
            "file_compaction_ms",
            "How long the last file compaction held up commits",
            m.file_compaction_ms.clone(),
        );
        r.register(
            "compaction_tx_max_ms",
            "Longest hold-up of commits by one compaction transaction",
            m.compaction_tx_max_ms.clone(),
        );
        r.register(
            "messages_sent",
            "Messages the engine produced",
            m.messages_sent.clone(),
        );
        r.register(
            "messages_received",
            "Messages the engine accepted",
            m.messages_received.clone(),
        );
        r.register(
            "messages_rejected",
            "Messages the engine rejected, state unchanged",
            m.messages_rejected.clone(),
        );
        r.register(
            "stale_deltas",
            "Deltas skipped as computed against more than this node had",
            m.stale_deltas.clone(),
        );
        r.register(
            "unbacked_deltas",
            "Deltas skipped for claiming writes they did not carry",
            m.unbacked_deltas.clone(),
        );
        r.register(
            "chunks_sent",
            "Chunks of catch-ups sent",
            m.chunks_sent.clone(),
        );
        r.register(
            "lease_writes",
            "Extensions of the counter lease",
            m.lease_writes.clone(),
        );
        r.register(
            "hot_keys_set_aside",
            "Reports of keys whose writes were set aside",
            m.hot_keys_set_aside.clone(),
        );
        r.register(
            "hot_keys_healed",
            "Contained keys that healed",
            m.hot_keys_healed.clone(),
        );
        r.register(
            "contained_hot_keys",
            "Keys held contained: over the sibling cap, writes set aside",
            m.contained_hot_keys.clone(),
        );
        r.register(
            "set_aside_writes",
            "Writes set aside for contained keys, not taken yet",
            m.set_aside_writes.clone(),
        );
        r.register(
            "master",
            "1 while a master, 0 while a read-only follower",
            m.master.clone(),
        );
        r.register(
            "writable",
            "1 while a local write would be taken now",
            m.writable.clone(),
        );
        r.register("epoch", "The fencing epoch", m.epoch.clone());
        r.register(
            "leader_changes",
            "Times the master this node supports changed",
            m.leader_changes.clone(),
        );
        r.register(
            "failovers",
            "Automatic failovers this node's coordinator started",
            m.failovers.clone(),
        );
        r.register(
            "promotions",
            "Times this node was promoted to master",
            m.promotions.clone(),
        );
        r.register(
            "peer_protocol_version",
            "Protocol version spoken to the peer",
            m.peer_protocol_version.clone(),
        );
        r.register(
            "alert_firing",
            "1 while the alert is firing",
            m.alert_firing.clone(),
        );
        r.register(
            "alert_pending",
            "1 while the alert is pending",
            m.alert_pending.clone(),
        );
        r.register(
            "alert_value",
            "The value the alert rule last saw",
            m.alert_value.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The label set of one peer.
pub fn peer(name: &str) -> Labels {
    vec![("peer".to_string(), name.to_string())]
}

/// The label set of one alert series: the rule's name, and the peer's for a
/// per-peer rule. Rules come from the configuration and peers are the configured
/// ones, so the series are bounded.
pub fn alert(name: &str, peer: Option<&str>) -> Labels {
    let mut labels = vec![("alert".to_string(), name.to_string())];
    if let Some(p) = peer {
        labels.push(("peer".to_string(), p.to_string()));
    }
    labels
}
