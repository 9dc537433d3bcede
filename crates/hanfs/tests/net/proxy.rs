//! A fault-injecting TCP proxy for the network tests, between the controller and one agent
//! (plaintext loopback, so it can see the frames): forwards both directions and, per connection,
//! applies the fault it is set to: drop (close both sides), delay, truncate (stop forwarding, keep
//! the socket open), reset (RST) at a byte offset, or stall when the controller sends `Commit`
//! (the agent frozen in its commit, as seen from the MN). Offsets come from a seeded RNG; tests
//! print the seed so a failure can be replayed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// SplitMix64: small, seedable, good enough to pick faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Controller to agent.
    ToAgent,
    /// Agent to controller.
    ToController,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Close both sockets once `at` bytes went in `dir`.
    Drop {
        dir: Dir,
        at: u64,
    },
    /// Pause `ms` once `at` bytes went in `dir`, then go on.
    Delay {
        dir: Dir,
        at: u64,
        ms: u64,
    },
    /// Forward nothing more in `dir` after `at` bytes, but keep both sockets open (a peer that
    /// went silent).
    Truncate {
        dir: Dir,
        at: u64,
    },
    /// Send a TCP reset to both sides once `at` bytes went in `dir`.
    Reset {
        dir: Dir,
        at: u64,
    },
    /// Hold the `Commit` frame (and everything after it) until the proxy is dropped.
    StallAtCommit,
}

impl Fault {
    /// A random fault within the first `budget` bytes of a session.
    pub fn random(rng: &mut Rng, budget: u64) -> Fault {
        let dir = if rng.below(3) == 0 { Dir::ToController } else { Dir::ToAgent };
        // Most sessions are short: put half the offsets in the first few KiB (handshake, plan).
        let at = if rng.below(2) == 0 { rng.below(4096) } else { rng.below(budget) };
        match rng.below(5) {
            0 => Fault::Drop { dir, at },
            1 => Fault::Delay { dir, at, ms: 50 + rng.below(1500) },
            2 => Fault::Truncate { dir, at },
            3 => Fault::Reset { dir, at },
            _ => Fault::StallAtCommit,
        }
    }
}

struct Shared {
    fault: Mutex<Fault>,
    stop: AtomicBool,
    /// Connections accepted (to tell a test whether its fault was reached).
    conns: AtomicU64,
    /// Faults that fired.
    fired: AtomicU64,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            stop: AtomicBool::new(false),
            conns: AtomicU64::new(0),
            fired: AtomicU64::new(0),
        });
        let s = shared.clone();
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        s.conns.fetch_add(1, Ordering::Relaxed);
                        let fault = *s.fault.lock().unwrap();
                        let s2 = s.clone();
                        std::thread::spawn(move || session(c, upstream, fault, s2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { port, shared }
    }

    /// The fault for connections accepted from now on.
    pub fn set(&self, f: Fault) {
        *self.shared.fault.lock().unwrap() = f;
    }

    pub fn fired(&self) -> u64 {
        self.shared.fired.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn reset(s: &TcpStream) {
    // SO_LINGER 0: close sends a reset.
    let _ = rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO));
}

/// Swallows what `from` sends and forwards nothing, the sockets left open, until `from` closes
/// (or the proxy stops); then closes `to` as a closed connection would.
fn hold(from: &mut TcpStream, to: &TcpStream, s: &Shared) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 << 10];
    while !s.stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn session(client: TcpStream, upstream: u16, fault: Fault, s: Arc<Shared>) {
    let Ok(agent) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    let (c2, a2) = (client.try_clone().unwrap(), agent.try_clone().unwrap());
    let s2 = s.clone();
    let killed = Arc::new(AtomicBool::new(false));
    let k2 = killed.clone();
    let up = std::thread::spawn(move || pump(client, agent, Dir::ToAgent, fault, &s2, &k2));
    pump(a2, c2, Dir::ToController, fault, &s, &killed);
    let _ = up.join();
}

/// Copies `from` to `to`, frame by frame towards the agent (to see `Commit`), applying `fault`.
fn pump(mut from: TcpStream, mut to: TcpStream, dir: Dir, fault: Fault, s: &Shared, killed: &AtomicBool) {
    let commit = proto::encode(&proto::ToAgent::Commit).unwrap();
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let mut frame: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            _ if killed.load(Ordering::Relaxed) => return,
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        if fault == Fault::StallAtCommit && dir == Dir::ToAgent {
            // Whole frames only, so the Commit frame is recognised wherever reads split it.
            frame.extend_from_slice(data);
            let mut out = Vec::new();
            while frame.len() >= 4 {
                let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
                if frame.len() < 4 + len {
                    break;
                }
                let f: Vec<u8> = frame.drain(..4 + len).collect();
                if f == commit {
                    let _ = to.write_all(&out);
                    s.fired.fetch_add(1, Ordering::Relaxed);
                    hold(&mut from, &to, s);
                    return;
                }
                out.extend_from_slice(&f);
            }
            if to.write_all(&out).is_err() {
                break;
            }
            continue;
        }
        let (fdir, at) = match fault {
            Fault::Drop { dir, at } | Fault::Truncate { dir, at } | Fault::Reset { dir, at } => (dir, at),
            Fault::Delay { dir, at, .. } => (dir, at),
            _ => (dir, u64::MAX),
        };
        if fdir == dir && sent <= at && at < sent + data.len() as u64 {
            let k = (at - sent) as usize;
            if to.write_all(&data[..k]).is_err() {
                break;
            }
            sent += k as u64;
            data = &data[k..];
            s.fired.fetch_add(1, Ordering::Relaxed);
            match fault {
                Fault::Drop { .. } => {
                    let _ = to.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
                Fault::Reset { .. } => {
                    // Linger 0, then wake the other pump without a FIN: the last close sends RST.
                    killed.store(true, Ordering::Relaxed);
                    reset(&to);
                    reset(&from);
                    let _ = to.shutdown(Shutdown::Read);
                    let _ = from.shutdown(Shutdown::Read);
                    return;
                }
                Fault::Truncate { .. } => {
                    hold(&mut from, &to, s);
                    return;
                }
                Fault::Delay { ms, .. } => std::thread::sleep(Duration::from_millis(ms)),
                _ => {}
            }
        }
        if to.write_all(data).is_err() {
            break;
        }
        sent += data.len() as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
}
