//! The HTTP API: a replicated key-value store.
//!
//! * `PUT /kv/{key}` (body: the value, UTF-8) and `DELETE /kv/{key}`, with
//!   `?ack=async|semi|semi:K|quorum|sync` and `?timeout_ms=N`. `200` once the write reached
//!   its level; `202` if it is written here (durable as the fsync policy says) but fewer peers than asked
//!   hold it when the timeout expires (replication goes on); `404` for a delete of a
//!   key this node does not hold. The `x-concord-token` response header is the
//!   session token.
//! * `GET /kv/{key}`, with the token in an `x-concord-token` request header and
//!   `?wait_ms=N`: `200` with the key's siblings (several values = a conflict); `404`
//!   if absent; `503` if this node had not caught up with the token in time.
//! * `GET /kv`: every key with its siblings.
//! * `GET /conflicts`, `GET /health`, `GET /metrics`.
//! * `GET /status`: the same document as `/health` (role, epoch, leader, whether a
//!   write would be taken now and why not, the lease, failover events), always `200`.
//! * Master–follower mode (`409` in multi-master mode): `POST /admin/promote`
//!   (`?epoch=N` optional: this node becomes the master of a new epoch),
//!   `POST /admin/stop-writes`, `POST /admin/fence?epoch=N` (take the epoch as a
//!   follower), and `POST /admin/switchover?to=NODE` (a planned switchover from the
//!   current master to `NODE`, a name or an id, driven from this node over the
//!   other nodes' HTTP APIs; the answer lists every step with its time). A write at
//!   a node that does not take writes now (a follower, a deposed master, a master
//!   without its lease or in its fencing wait) gets `503` naming the master it
//!   supports (`leader`, `leader_http`, and the `x-concord-leader` header when its
//!   address is known): nothing was written, retry there.
//! * `GET /alerts`: every alert series (rule, and peer for per-peer rules) with its
//!   state (`inactive`, `pending`, `firing`, `resolved`), since when (`since_unix_ms`,
//!   `for_ms`), the value last seen, the threshold and the clear value.
//!
//! Keys and query values are percent-decoded (`/kv/caf%C3%A9` is the key `café`; a
//! key is 1 to 1024 bytes once decoded, and must be UTF-8); bodies are limited to
//! 1 MiB.
//!
//! Limits: at most [`MAX_CONNECTIONS`] connections at once (more wait in the
//! listener's backlog, so idle clients cannot take the file descriptors replication
//! needs); a connection that has not sent a whole request head within
//! [`HEADER_TIMEOUT`] is closed (this also closes idle keep-alive connections), and
//! a request whose body has not arrived within [`BODY_TIMEOUT`] gets `408`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use concord::sync::AckLevel;
use concord::CausalContext;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::config::{ack_name, parse_ack, NodeConfig};
use crate::metrics::Metrics;
use crate::node::{AdminOp, Command, ReadOutcome, WriteOutcome};

/// The largest request body.
pub const MAX_BODY: usize = 1 << 20;
/// The longest key.
pub const MAX_KEY: usize = 1024;
/// The longest wait a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The session token header.
pub const TOKEN_HEADER: &str = "x-concord-token";
/// The header naming the HTTP address of the master, on a refused write.
pub const LEADER_HEADER: &str = "x-concord-leader";
/// The most HTTP connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a connection may take to send a request head (or stay idle between
/// requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handlers share.
#[derive(Debug)]
pub struct Api {
    /// The engine's task.
    pub engine: mpsc::Sender<Command>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The default acknowledgement level.
    pub default_ack: AckLevel,
    /// The default write timeout.
    pub ack_timeout: Duration,
    /// The default wait of a token read.
    pub read_wait: Duration,
    /// How many peers the node has.
    pub peers: usize,
    /// The node's configuration (a switchover reaches the other nodes with it).
    pub config: Arc<NodeConfig>,
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut text = body.to_string();
    text.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, reason: impl Into<String>) -> Resp {
    reply(status, json!({ "error": reason.into() }))
}

fn with_token(mut r: Resp, token: &str) -> Resp {
    if let Ok(v) = hyper::header::HeaderValue::from_str(token) {
        r.headers_mut().insert(TOKEN_HEADER, v);
    }
    r
}

/// Decodes `%XX` escapes; `None` if one is malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn query(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        // A value that does not decode is kept as sent, and refused as such.
        (percent_decode(k).as_deref() == Some(name))
            .then(|| percent_decode(v).unwrap_or_else(|| v.to_string()))
    })
}

fn millis(req: &Request<Incoming>, name: &str, default: Duration) -> Result<Duration, Box<Resp>> {
    match query(req, name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .map(|ms| Duration::from_millis(ms).min(MAX_WAIT))
            .map_err(|_| {
                Box::new(error(
                    StatusCode::BAD_REQUEST,
                    format!("{name} must be a number of milliseconds"),
                ))
            }),
    }
}

fn u64_query(req: &Request<Incoming>, name: &str) -> Result<Option<u64>, Box<Resp>> {
    match query(req, name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("{name} must be a non-negative integer"),
            ))
        }),
    }
}

/// Serves the API on `listener` forever.
pub async fn serve(listener: TcpListener, api: Arc<Api>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // At the cap, stop accepting: more clients wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let api = api.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
            drop(slot);
        });
    }
}

impl Api {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let method = req.method().clone();
        let route = match req.uri().path() {
            "/kv" => "kv_all",
            p if p.starts_with("/kv/") => "kv",
            "/health" => "health",
            "/metrics" => "metrics",
            "/conflicts" => "conflicts",
            "/alerts" => "alerts",
            "/status" => "status",
            "/admin/promote" => "admin_promote",
            "/admin/stop-writes" => "admin_stop_writes",
            "/admin/fence" => "admin_fence",
            "/admin/switchover" => "admin_switchover",
            _ => "other",
        };
        let resp = match (&method, route) {
            (&Method::GET, "metrics") => {
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            (&Method::GET, "health") => {
                match self.ask_value(|reply| Command::Health { reply }).await {
                    // A fenced node refuses writes: take it out of rotation.
                    Ok(v) if v["status"] == "fenced" => reply(StatusCode::SERVICE_UNAVAILABLE, v),
                    Ok(v) => reply(StatusCode::OK, v),
                    Err(r) => *r,
                }
            }
            (&Method::GET, "status") => self.ask(|reply| Command::Health { reply }).await,
            (&Method::POST, "admin_promote") => match u64_query(&req, "epoch") {
                Ok(epoch) => self.admin(AdminOp::Promote { epoch }).await,
                Err(r) => *r,
            },
            (&Method::POST, "admin_stop_writes") => self.admin(AdminOp::StopWrites).await,
            (&Method::POST, "admin_fence") => match u64_query(&req, "epoch") {
                Ok(Some(epoch)) => self.admin(AdminOp::Fence { epoch }).await,
                Ok(None) => error(StatusCode::BAD_REQUEST, "fence needs ?epoch=N"),
                Err(r) => *r,
            },
            (&Method::POST, "admin_switchover") => match query(&req, "to") {
                Some(to) => self.switchover(to).await,
                None => error(
                    StatusCode::BAD_REQUEST,
                    "switchover needs ?to=NODE (a name or an id)",
                ),
            },
            (_, r) if r.starts_with("admin_") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "admin routes take POST")
            }
            (&Method::GET, "conflicts") => self.ask(|reply| Command::Conflicts { reply }).await,
            (&Method::GET, "alerts") => self.ask(|reply| Command::Alerts { reply }).await,
            (&Method::GET, "kv_all") => self.get(req, None).await,
            (_, "kv") => {
                let key = percent_decode(&req.uri().path()["/kv/".len()..]);
                let key = key.unwrap_or_default();
                if key.is_empty() || key.len() > MAX_KEY {
                    error(
                        StatusCode::BAD_REQUEST,
                        format!("a key has 1 to {MAX_KEY} bytes, percent-encoded UTF-8"),
                    )
                } else {
                    match method {
                        Method::GET => self.get(req, Some(key)).await,
                        Method::PUT => self.put(req, key, true).await,
                        Method::DELETE => self.put(req, key, false).await,
                        _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET, PUT or DELETE"),
                    }
                }
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "no such route: see /kv/{key}, /health, /status, /metrics, /conflicts, \
                 /alerts, /admin/{promote,stop-writes,fence,switchover}",
            ),
        };
        // A fixed set of label values: a client must not create series at will.
        let method = match method {
            Method::GET | Method::PUT | Method::DELETE | Method::POST => method.as_str(),
            _ => "other",
        };
        self.metrics
            .http_requests
            .get_or_create(&vec![
                ("method".to_string(), method.to_string()),
                ("route".to_string(), route.to_string()),
                ("status".to_string(), resp.status().as_u16().to_string()),
            ])
            .inc();
        resp
    }

    async fn admin(&self, op: AdminOp) -> Resp {
        let (tx, rx) = oneshot::channel();
        if self
            .engine
            .send(Command::Admin { op, reply: tx })
            .await
            .is_err()
        {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
        }
        match rx.await {
            Ok(Ok(v)) => reply(StatusCode::OK, v),
            Ok(Err(reason)) => error(StatusCode::CONFLICT, reason),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping"),
        }
    }

    async fn switchover(&self, to: String) -> Resp {
        let config = self.config.clone();
        let run = tokio::task::spawn_blocking(move || crate::switchover::run(&config, &to));
        match run.await {
            Ok(Ok(v)) => reply(StatusCode::OK, v),
            Ok(Err(e)) => reply(
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::CONFLICT),
                e.body,
            ),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the switchover task failed",
            ),
        }
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<serde_json::Value>) -> Command) -> Resp {
        match self.ask_value(make).await {
            Ok(v) => reply(StatusCode::OK, v),
            Err(r) => *r,
        }
    }

    async fn ask_value(
        &self,
        make: impl FnOnce(oneshot::Sender<serde_json::Value>) -> Command,
    ) -> Result<serde_json::Value, Box<Resp>> {
        let stopping = || {
            Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node is stopping",
            ))
        };
        let (tx, rx) = oneshot::channel();
        if self.engine.send(make(tx)).await.is_err() {
            return Err(stopping());
        }
        rx.await.map_err(|_| stopping())
    }

    async fn get(&self, req: Request<Incoming>, key: Option<String>) -> Resp {
        let token = match req.headers().get(TOKEN_HEADER) {
            None => None,
            Some(v) => match v.to_str().ok().map(CausalContext::from_token) {
                Some(Ok(t)) => Some(t),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("{TOKEN_HEADER} is not a session token"),
                    )
                }
            },
        };
        let wait = match millis(&req, "wait_ms", self.read_wait) {
            Ok(w) => w,
            Err(r) => return *r,
        };
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Get {
            key: key.clone(),
            token,
            wait,
            reply: tx,
        };
        if self.engine.send(cmd).await.is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
        }
        match rx.await {
            Ok(ReadOutcome::Values { entries, token }) => {
                let r = match key {
                    Some(k) => match entries.into_iter().next() {
                        Some((_, values)) => reply(
                            StatusCode::OK,
                            json!({ "key": k, "conflict": values.len() > 1, "values": values }),
                        ),
                        None => error(StatusCode::NOT_FOUND, format!("no key {k:?} here")),
                    },
                    None => reply(
                        StatusCode::OK,
                        json!({ "keys": entries.into_iter().map(|(k, v)| json!({"key": k, "values": v})).collect::<Vec<_>>() }),
                    ),
                };
                with_token(r, &token)
            }
            Ok(ReadOutcome::NotCaughtUp { missing }) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "error": format!(
                        "this node has not yet received {missing} write(s) your session token names; \
                         retry later or read from the node you wrote to (a write that node lost \
                         in a crash under fsync \"none\" before any peer received it is never \
                         received)"
                    ),
                    "missing_writes": missing,
                }),
            ),
            Ok(ReadOutcome::Busy) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} reads are waiting already; retry later",
                    crate::node::MAX_WAITING
                ),
            ),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping"),
        }
    }

    async fn put(&self, req: Request<Incoming>, key: String, put: bool) -> Resp {
        let level = match query(&req, "ack") {
            None => self.default_ack,
            Some(s) => match parse_ack(&s, self.peers) {
                Ok(l) => l,
                Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            },
        };
        let timeout = match millis(&req, "timeout_ms", self.ack_timeout) {
            Ok(t) => t,
            Err(r) => return *r,
        };
        let value = if put {
            let read = Limited::new(req.into_body(), MAX_BODY).collect();
            let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(_)) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("bodies are limited to {MAX_BODY} bytes"),
                    )
                }
                Err(_) => {
                    return error(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the body did not arrive within {} s",
                            BODY_TIMEOUT.as_secs()
                        ),
                    )
                }
            };
            match String::from_utf8(body.to_vec()) {
                Ok(s) => Some(s),
                Err(_) => return error(StatusCode::BAD_REQUEST, "the value must be UTF-8"),
            }
        } else {
            None
        };
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Put {
            key: key.clone(),
            value,
            level,
            timeout,
            reply: tx,
        };
        if self.engine.send(cmd).await.is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
        }
        let ack = ack_name(level);
        match rx.await {
            Ok(WriteOutcome::Done {
                dot,
                token,
                holders,
            }) => with_token(
                reply(
                    StatusCode::OK,
                    json!({ "key": key, "ack": ack, "dot": dot, "held_by": holders }),
                ),
                &token,
            ),
            Ok(WriteOutcome::TimedOut {
                dot,
                token,
                holders,
                wanted,
            }) => with_token(
                reply(
                    StatusCode::ACCEPTED,
                    json!({
                        "key": key, "ack": ack, "dot": dot, "held_by": holders,
                        "error": format!(
                            "written on this node (durable as its fsync policy says), but {} of the \
                             {wanted} peer(s) asked for hold it after {} ms; replication continues \
                             in the background",
                            holders.len(), timeout.as_millis()
                        ),
                    }),
                ),
                &token,
            ),
            Ok(WriteOutcome::Absent { token }) => with_token(
                error(
                    StatusCode::NOT_FOUND,
                    format!("no key {key:?} here: nothing to delete"),
                ),
                &token,
            ),
            Ok(WriteOutcome::NotWritable {
                reason,
                leader,
                leader_name,
                leader_http,
                epoch,
            }) => {
                let mut r = reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({
                        "error": format!("not written: {reason}; retry at the master"),
                        "epoch": epoch,
                        "leader": leader_name,
                        "leader_id": leader.map(|l| l.to_string()),
                        "leader_http": leader_http.map(|a| a.to_string()),
                    }),
                );
                if let Some(v) = leader_http
                    .and_then(|a| hyper::header::HeaderValue::from_str(&a.to_string()).ok())
                {
                    r.headers_mut().insert(LEADER_HEADER, v);
                }
                r
            }
            Ok(WriteOutcome::Failed { status, reason }) => error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                reason,
            ),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping"),
        }
    }
}
