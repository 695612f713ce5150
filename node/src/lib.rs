//! The reference concord node: the sans-IO [`concord::sync::SyncEngine`] over a real
//! network and a real disk.
//!
//! * [`transport`]: TCP between masters with mutual TLS (a cluster CA, node ids in
//!   the certificates), length-prefixed frames, reconnects with backoff.
//! * [`store`]: one redb file holding a base snapshot, an append-only log of changes
//!   (O(changed) per write), the counter lease and the peers' acknowledgements, with
//!   background compaction and an fsync policy.
//! * [`node`]: the task that owns the engine; [`http`]: a replicated key-value store
//!   over HTTP with acknowledgement levels, session tokens, conflicts, `/metrics`
//!   and `/health`.
//! * [`switchover`]: a planned switchover (master–follower mode), the sans-IO
//!   [`concord::ops::failover::Coordinator`] driven over the nodes' HTTP APIs; the
//!   automatic failover runs in [`node`].
//! * [`harness`], [`proxy`], [`client`]: what the demo and the multi-process tests
//!   use to start clusters, cut links and talk to nodes.
//!
//! The binary `concord-node` runs a node (`run --config node.toml`), generates a
//! local cluster's certificates (`gen-certs`), and plays the three-node demo
//! (`demo`).
//!
//! The guide to running a cluster follows.
//!
#![doc = include_str!("../../docs/cluster.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod certs;
pub mod client;
pub mod config;
pub mod demo;
pub mod error;
pub mod harness;
pub mod http;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod store;
pub mod switchover;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use concord::{MvRegister, OrMap};

pub use error::{Error, Result};

/// The replicated state of the key-value service: each key holds a multi-value
/// register, so concurrent writes stay visible as siblings.
pub type Kv = OrMap<String, MvRegister<String>>;

/// Ends the process when the engine's thread ends: with status 70 if it panicked.
struct ExitWithEngine;

impl Drop for ExitWithEngine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the engine's thread panicked: the node stops");
            std::process::exit(70);
        }
        std::process::exit(0);
    }
}

/// Runs a node with `config` until the process is stopped.
///
/// # Errors
///
/// If a port cannot be bound, the certificates cannot be read or the database
/// cannot be opened.
pub fn run(config: config::NodeConfig) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tls = certs::Tls::load(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
    let default_ack = config::parse_ack(&config.ack.level, config.peers.len())?;
    let label = if config.name.is_empty() {
        config.node_id.short()
    } else {
        config.name.clone()
    };
    let metrics = Arc::new(metrics::Metrics::new(&label));
    let (replication, http_listener) = runtime.block_on(async {
        let r = tokio::net::TcpListener::bind(config.listen).await?;
        let h = tokio::net::TcpListener::bind(config.http).await?;
        Ok::<_, std::io::Error>((r, h))
    })?;
    let node = node::Node::open(config.clone(), metrics.clone())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    // The engine's task gets a thread of its own: its fsyncs never stall the
    // connections or the HTTP handlers.
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            // Without its engine the node is a zombie (every request a 503, the links
            // redialled forever): end the process, non-zero, so a supervisor restarts
            // it from its file.
            let _exit = ExitWithEngine;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            rt.block_on(node.run(rx));
        })?;
    let transport = transport::Transport {
        node: config.node_id,
        peers: config
            .peers
            .iter()
            .map(|p| (p.id, config.name_of(p.id), p.addr))
            .collect(),
        tls,
        max_frame: config.replication.max_message_bytes,
        idle: Duration::from_millis(config.replication.idle_timeout_ms),
        to_engine: tx.clone(),
        metrics: metrics.clone(),
    };
    let api = Arc::new(http::Api {
        engine: tx,
        metrics,
        default_ack,
        ack_timeout: Duration::from_millis(config.ack.timeout_ms),
        read_wait: Duration::from_millis(config.ack.read_wait_ms),
        peers: config.peers.len(),
        config: Arc::new(config.clone()),
    });
    tracing::info!(
        "{label} ({}) replicating on {}, HTTP on {}",
        config.node_id,
        config.listen,
        config.http
    );
    runtime.block_on(async move {
        tokio::spawn(transport.run(replication));
        http::serve(http_listener, api).await;
    });
    let _ = engine_thread.join();
    Ok(())
}
