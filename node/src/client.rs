//! A small blocking HTTP/1.1 client for the node's API, with keep-alive: what the
//! demo, the tests and the benchmark use (a user would use any HTTP client).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::http::TOKEN_HEADER;

/// A response.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The session token the node returned.
    pub fn token(&self) -> Option<&str> {
        self.header(TOKEN_HEADER)
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The siblings of a `GET /kv/{key}` answer (empty if absent).
    pub fn values(&self) -> Vec<String> {
        match self.json().get("values") {
            Some(serde_json::Value::Array(v)) => v
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A connection to one node (reopened when it breaks).
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Client {
    /// A client of the node whose HTTP API listens on `addr`; each request fails
    /// after `timeout` without an answer.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            timeout,
            conn: None,
        }
    }

    fn connect(&self) -> io::Result<BufReader<TcpStream>> {
        let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.set_nodelay(true)?;
        Ok(BufReader::new(s))
    }

    /// Sends one request. A kept-alive connection that turns out closed is reopened
    /// once, before anything was answered.
    ///
    /// # Errors
    ///
    /// Connection failures, timeouts and malformed answers.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> io::Result<Response> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, headers, body) {
            Err(e) if reused && e.kind() == io::ErrorKind::UnexpectedEof => {
                self.conn = None;
                self.try_request(method, path, headers, body)
            }
            r => r,
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> io::Result<Response> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let result = self.exchange(method, path, headers, body);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> io::Result<Response> {
        {
            let conn = self.conn.as_mut().expect("connected above");
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
                self.addr,
                body.len()
            );
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            req.push_str(body);
            match conn.get_mut().write_all(req.as_bytes()) {
                Ok(()) => read_response(conn),
                // The server may answer (413, say) and close before reading it all.
                Err(e) => read_response(conn).map_err(|_| e),
            }
        }
    }

    /// `PUT /kv/{key}?ack=...`.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn put(&mut self, key: &str, value: &str, ack: &str) -> io::Result<Response> {
        self.request("PUT", &format!("/kv/{key}?ack={ack}"), &[], value)
    }

    /// `DELETE /kv/{key}?ack=...`.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn delete(&mut self, key: &str, ack: &str) -> io::Result<Response> {
        self.request("DELETE", &format!("/kv/{key}?ack={ack}"), &[], "")
    }

    /// `GET /kv/{key}`, with a session token if given.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn get(&mut self, key: &str, token: Option<&str>) -> io::Result<Response> {
        let headers: Vec<(&str, &str)> = token.map(|t| (TOKEN_HEADER, t)).into_iter().collect();
        self.request("GET", &format!("/kv/{key}"), &headers, "")
    }

    /// `GET` of any path.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn get_path(&mut self, path: &str) -> io::Result<Response> {
        self.request("GET", path, &[], "")
    }
}

fn read_response(conn: &mut BufReader<TcpStream>) -> io::Result<Response> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("a malformed status line"))?;
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(bad("closed in the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("a malformed header"))?;
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        if k == "content-length" {
            length = v.parse().map_err(|_| bad("a malformed content-length"))?;
        }
        headers.push((k, v));
    }
    if length > 256 << 20 {
        return Err(bad("a body above 256 MiB"));
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A client of a master–follower cluster that sends its writes to the master: it
/// starts at one node and, when a node refuses a write because it does not take
/// writes now (`503` naming the master, nothing written), moves to the node named,
/// or, when that node does not answer, to the next one, until the write is taken or
/// its deadline passes. This is how clients keep writing through a failover.
#[derive(Debug)]
pub struct LeaderClient {
    nodes: Vec<Client>,
    current: usize,
    /// How long to wait before retrying at a node that names itself or no master
    /// (it waits for its lease or its fencing wait, or a failover is under way).
    pub backoff: Duration,
}

impl LeaderClient {
    /// A client of the nodes whose HTTP APIs listen on `addrs`, starting at the
    /// first; each request fails after `timeout` without an answer.
    ///
    /// # Panics
    ///
    /// If `addrs` is empty.
    pub fn new(addrs: &[SocketAddr], timeout: Duration) -> LeaderClient {
        assert!(!addrs.is_empty(), "a cluster has at least one node");
        LeaderClient {
            nodes: addrs.iter().map(|a| Client::new(*a, timeout)).collect(),
            current: 0,
            backoff: Duration::from_millis(25),
        }
    }

    /// The node the next request goes to.
    pub fn current(&self) -> SocketAddr {
        self.nodes[self.current].addr
    }

    /// Sends a write (`PUT` or `DELETE`) to the master, following refusals that
    /// name it, until `deadline`. Retries only what was never acknowledged: a
    /// refusal of a node that does not take writes (nothing written), and a
    /// connection that could not be opened. Any other answer, or failure, is returned as it came (the last
    /// refusal if the deadline passes).
    ///
    /// # Errors
    ///
    /// As [`Client::request`], once the deadline has passed or for a failure after
    /// the request was sent (it may have been written).
    pub fn write(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
        deadline: std::time::Instant,
    ) -> io::Result<Response> {
        loop {
            match self.nodes[self.current].request(method, path, &[], body) {
                Ok(r) if r.status == 503 && r.json().get("epoch").is_some() => {
                    if std::time::Instant::now() >= deadline {
                        return Ok(r);
                    }
                    let hint = r
                        .header(crate::http::LEADER_HEADER)
                        .and_then(|h| h.parse::<SocketAddr>().ok())
                        .and_then(|a| self.nodes.iter().position(|n| n.addr == a));
                    match hint {
                        Some(i) if i != self.current => self.current = i,
                        // It names itself (a master waiting for its lease, or one
                        // that lost its majority) or no one: wait, then ask the next
                        // node, which names the master it supports.
                        _ => {
                            self.current = (self.current + 1) % self.nodes.len();
                            std::thread::sleep(self.backoff);
                        }
                    }
                }
                // The node is down: the last attempt sent nothing. (An earlier
                // attempt on a kept-alive connection may have: see
                // `Client::request`; such a write was never acknowledged.)
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    if std::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                    self.current = (self.current + 1) % self.nodes.len();
                    std::thread::sleep(self.backoff);
                }
                other => return other,
            }
        }
    }
}
