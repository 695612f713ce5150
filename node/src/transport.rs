//! Replication over TCP with mutual TLS: one connection per pair of nodes (the node
//! with the smaller id dials, the other accepts), length-prefixed frames, reconnects
//! with backoff. The engine's task decides what to send and when; this module only
//! moves frames and checks who is at the other end.
//!
//! Frames: a 4-byte big-endian length, then one encoded engine message. A frame
//! above the engine's message limit closes the connection before anything is
//! allocated for it. Every frame's `from` must be the node its certificate names and
//! its `to` this node, or the connection is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord::sync::Message;
use concord::ReplicaId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::certs::{self, Tls};
use crate::metrics::{self, Metrics};
use crate::node::Command;
use crate::Kv;

/// How many frames may wait for one peer's connection before more are dropped (the
/// engine resends what is lost).
const QUEUE: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the transport needs to know.
#[derive(Clone, Debug)]
pub struct Transport {
    /// This node.
    pub node: ReplicaId,
    /// The peers: id, name, address.
    pub peers: Vec<(ReplicaId, String, SocketAddr)>,
    /// TLS configurations.
    pub tls: Tls,
    /// The largest frame.
    pub max_frame: usize,
    /// A connection silent this long is closed.
    pub idle: Duration,
    /// Where frames and connection events go.
    pub to_engine: mpsc::Sender<Command>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl Transport {
    fn name(&self, id: ReplicaId) -> String {
        self.peers
            .iter()
            .find(|p| p.0 == id)
            .map_or_else(|| id.short(), |p| p.1.clone())
    }

    /// Listens on `listener` for the peers with smaller ids and dials those with
    /// larger ones, forever.
    pub async fn run(self, listener: TcpListener) {
        let this = Arc::new(self);
        for (id, _, addr) in this.peers.clone() {
            if this.node < id {
                let t = this.clone();
                tokio::spawn(async move { t.dial_forever(id, addr).await });
            }
        }
        let acceptor = TlsAcceptor::from(this.tls.server.clone());
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let t = this.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        t.metrics.tls_failures.inc();
                        tracing::warn!("TLS handshake from {remote} refused: {e}");
                        return;
                    }
                    Err(_) => {
                        t.metrics.tls_failures.inc();
                        tracing::warn!("TLS handshake from {remote} timed out");
                        return;
                    }
                };
                let lower: Vec<ReplicaId> = t
                    .peers
                    .iter()
                    .map(|p| p.0)
                    .filter(|id| *id < t.node)
                    .collect();
                let named = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| certs::identity(c, &lower));
                match named {
                    Some(peer) => {
                        t.serve(tls, peer).await;
                    }
                    None => {
                        t.metrics.identity_rejections.inc();
                        tracing::warn!(
                            "connection from {remote} refused: its certificate names no peer that dials this node"
                        );
                    }
                }
            });
        }
    }

    async fn dial_forever(self: Arc<Self>, peer: ReplicaId, addr: SocketAddr) {
        let connector = TlsConnector::from(self.tls.client.clone());
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = async {
                let tcp = TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                connector.connect(certs::server_name(peer), tcp).await
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
                Ok(Ok(tls)) => {
                    // A finished handshake proves little (in TLS 1.3 the server checks
                    // the client's certificate after the client is done): only a
                    // valid frame from the peer resets the backoff.
                    if self.serve(tls, peer).await {
                        backoff = Duration::from_millis(50);
                    }
                }
                Ok(Err(e)) => {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        self.metrics.tls_failures.inc();
                        tracing::warn!("TLS handshake with {} refused: {e}", self.name(peer));
                    } else {
                        tracing::debug!("cannot reach {} at {addr}: {e}", self.name(peer));
                    }
                }
                Err(_) => tracing::debug!("connecting to {} timed out", self.name(peer)),
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Runs one authenticated connection until it fails; true if the peer sent at
    /// least one valid frame on it.
    async fn serve<S>(&self, stream: S, peer: ReplicaId) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let name = self.name(peer);
        let labels = metrics::peer(&name);
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        if self
            .to_engine
            .send(Command::PeerUp { peer, conn, tx })
            .await
            .is_err()
        {
            return false;
        }
        tracing::info!("connected to {name}");
        let mut healthy = false;
        self.metrics.connects.get_or_create(&labels).inc();
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let len = (frame.len() as u32).to_be_bytes();
                if wr.write_all(&len).await.is_err() || wr.write_all(&frame).await.is_err() {
                    return;
                }
                // Batch what is queued before flushing.
                if rx.is_empty() && wr.flush().await.is_err() {
                    return;
                }
            }
        });
        let why = loop {
            let frame =
                match tokio::time::timeout(self.idle, read_frame(&mut rd, self.max_frame)).await {
                    Err(_) => break "silent past the idle timeout".to_string(),
                    Ok(Err(e)) => break e.to_string(),
                    Ok(Ok(f)) => f,
                };
            self.metrics.frames_received.get_or_create(&labels).inc();
            self.metrics
                .bytes_received
                .get_or_create(&labels)
                .inc_by(frame.len() as u64 + 4);
            let msg = match Message::<Kv>::decode(&frame, self.max_frame) {
                Ok(m) => m,
                Err(e) => {
                    self.metrics.frames_rejected.get_or_create(&labels).inc();
                    tracing::warn!("malformed frame from {name}: {e}");
                    continue;
                }
            };
            if msg.from != peer || msg.to != self.node {
                self.metrics.identity_rejections.inc();
                break format!(
                    "a frame from {} to {} on the connection of {name}",
                    msg.from, msg.to
                );
            }
            healthy = true;
            let cmd = Command::Frame {
                peer,
                msg: Box::new(msg),
                frame,
            };
            if self.to_engine.send(cmd).await.is_err() {
                break "the node is stopping".to_string();
            }
        };
        writer.abort();
        tracing::info!("connection to {name} closed: {why}");
        let _ = self.to_engine.send(Command::PeerDown { peer, conn }).await;
        healthy
    }
}

/// `d` scaled by a random factor in [0.5, 1.0), so nodes that lost each other at
/// once do not redial in step.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    d.mul_f64(0.5 + (r % 1024) as f64 / 2048.0)
}

/// Reads one frame, refusing one above `max` before allocating it.
async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R, max: usize) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, above the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    rd.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_above_the_limit_are_refused_before_allocation() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let e = read_frame(&mut input, 1 << 20).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let mut ok: &[u8] = &[0, 0, 0, 3, 1, 2, 3];
        assert_eq!(read_frame(&mut ok, 1 << 20).await.unwrap(), [1, 2, 3]);
        let mut short: &[u8] = &[0, 0, 0, 9, 1];
        assert!(read_frame(&mut short, 1 << 20).await.is_err());
    }
}
