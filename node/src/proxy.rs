//! A TCP proxy that a test (or the demo) puts on a link between two nodes to cut it,
//! slow it down or drop what crosses it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the proxy does to the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Forwards everything.
    Up,
    /// Forwards everything, each chunk after this delay.
    Delay(Duration),
    /// Closes every connection and every new one at once.
    Cut,
    /// Keeps connections open and discards what crosses them (the TLS stream
    /// breaks when the link comes back).
    Drop,
}

#[derive(Debug)]
struct Shared {
    link: Mutex<Link>,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A running proxy; dropped, it stops and closes its connections.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    ///
    /// # Errors
    ///
    /// If no port can be bound.
    pub fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            link: Mutex::new(Link::Up),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if *s.link.lock().expect("proxy lock") == Link::Cut {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        }
                        let Ok(server) =
                            TcpStream::connect_timeout(&target, Duration::from_secs(1))
                        else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        pipe(&s, &client, &server);
                        pipe(&s, &server, &client);
                        let mut conns = s.conns.lock().expect("proxy lock");
                        conns.retain(|c| c.peer_addr().is_ok());
                        conns.extend(client.try_clone());
                        conns.extend(server.try_clone());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Proxy { addr, shared })
    }

    /// The address to dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets what the link does; [`Link::Cut`] also closes the open connections.
    pub fn set(&self, link: Link) {
        *self.shared.link.lock().expect("proxy lock") = link;
        if link == Link::Cut {
            for c in self.shared.conns.lock().expect("proxy lock").drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// What the link does now.
    pub fn link(&self) -> Link {
        *self.shared.link.lock().expect("proxy lock")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for c in self.shared.conns.lock().expect("proxy lock").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn pipe(s: &Arc<Shared>, from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let s = s.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let link = *s.link.lock().expect("proxy lock");
            match link {
                Link::Up => {}
                Link::Delay(d) => thread::sleep(d),
                Link::Drop => continue,
                Link::Cut => break,
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
