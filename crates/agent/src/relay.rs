//! Relay fan-out of image payloads (issue 11). A relay keeps the payloads its own update receives
//! (from the controller or from its own parent) in `state_dir/relay/<image>/<generation>-<n>/`
//! and hands them, one at a time and whole, to the children the controller announced
//! (`ExpectRelay`: the child's name and a token for this run only) on its own listener
//! (`relay_listen`; never the control port, which keeps accepting the controller alone). A child
//! (`Fetch`) dials its parent, asks for each payload it needs and stages it exactly as if the
//! controller had sent it (same checks, BLAKE3 included); what it could not get is reported back
//! and the controller sends it. A parent only ever sends payload bytes: it never drives a child.

use anyhow::{anyhow, Context};
use proto::relay::{FromRelay, Parent, ToRelay};
use proto::{Digest, Encoding, Name, CHUNK};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a run's payloads are kept after its session ended (children still fetching).
pub(crate) const GRACE: Duration = Duration::from_secs(600);
/// A run whose session never ended (or never began) is dropped after this long.
const RUN_MAX: Duration = Duration::from_secs(4 * 3600);
/// How often a waiting relay tells its child it is still receiving.
const WAITING_EVERY: Duration = Duration::from_secs(1);
/// A child's first frame must come within this.
const HELLO_WITHIN: Duration = Duration::from_secs(30);
/// Test-only: delay before each payload a relay serves, so a test can kill it mid-transfer.
const DELAY_ENV: &str = "HANFS_TEST_RELAY_DELAY_MS";
/// Test-only: delay before the plan is served (a test kills the relay meanwhile).
const PLAN_DELAY_ENV: &str = "HANFS_TEST_RELAY_PLAN_DELAY_MS";
/// Test-only: `1` makes the relay serve its plan with one byte changed (a child must refuse it).
const PLAN_CORRUPT_ENV: &str = "HANFS_TEST_RELAY_CORRUPT_PLAN";
/// How long a relay holds a child's `GetPlan` for its own plan to arrive (the child may give up
/// sooner, after the `wait_ms` the controller gave it, and then gets the plan from the controller).
const PLAN_WAIT: Duration = Duration::from_secs(60);

/// How a payload came, as the stage needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub encoding: Encoding,
    pub len: u64,
    pub zstd: bool,
}

#[derive(Default)]
struct State {
    have: HashMap<u32, Meta>,
    /// The plan's bytes are kept (`dir/plan`): their BLAKE3 and length.
    plan: Option<(Digest, u64)>,
    started: bool,
    ended: bool,
}

/// One run of one image on this relay: the children allowed and the payloads received so far.
pub(crate) struct Run {
    dir: PathBuf,
    /// Child SN name → its token.
    children: Mutex<HashMap<String, [u8; 32]>>,
    state: watch::Sender<State>,
    /// Bytes this relay's own update received so far (a waiting child is told while it grows).
    progress: AtomicU64,
}

/// Every run of this agent, and its listener's port.
pub(crate) struct Relays {
    dir: PathBuf,
    port: AtomicU16,
    runs: Mutex<HashMap<(String, u64), Arc<Run>>>,
    seq: AtomicU64,
    delay: Duration,
    plan_delay: Duration,
    corrupt_plan: bool,
}

fn same_token(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // Constant time: the comparison does not say how much of a guess was right.
    bool::from(subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]))
}

impl Relays {
    /// The relay state of an agent: `state_dir/relay`, emptied (left by an earlier process).
    pub(crate) fn new(state_dir: &Path) -> anyhow::Result<Relays> {
        let dir = state_dir.join("relay");
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ms = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok()).map(Duration::from_millis);
        Ok(Relays {
            dir,
            port: AtomicU16::new(0),
            runs: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            delay: ms(DELAY_ENV).unwrap_or_default(),
            plan_delay: ms(PLAN_DELAY_ENV).unwrap_or_default(),
            corrupt_plan: std::env::var(PLAN_CORRUPT_ENV).is_ok_and(|v| v == "1"),
        })
    }

    pub(crate) fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Arc<Run>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `ExpectRelay`: lets `child` fetch this run's payloads with `token`; the relay's port and
    /// the run. A run whose session already began (an earlier attempt at the same generation) is
    /// replaced: its payloads may be of another plan.
    pub(crate) fn expect(
        self: &Arc<Self>,
        image: &Name,
        generation: u64,
        child: &Name,
        token: [u8; 32],
    ) -> (u16, Arc<Run>) {
        let key = (image.as_str().to_string(), generation);
        let run = {
            let mut runs = self.runs();
            match runs.get(&key) {
                Some(r) if !r.state.borrow().started => r.clone(),
                _ => {
                    let n = self.seq.fetch_add(1, Ordering::Relaxed);
                    let run = Arc::new(Run::new(self.dir.join(image.as_str()).join(format!("{generation}-{n}"))));
                    runs.insert(key.clone(), run.clone());
                    self.reap_later(key, run.clone());
                    run
                }
            }
        };
        run.children.lock().unwrap_or_else(|p| p.into_inner()).insert(child.as_str().to_string(), token);
        tracing::info!(image = image.as_str(), generation, child = child.as_str(), "relay expects a child");
        (self.port.load(Ordering::Relaxed), run)
    }

    /// The run the update of `image` to `generation` feeds, if a child is expected for it.
    pub(crate) fn session(&self, image: &str, generation: u64) -> Option<Arc<Run>> {
        let run = self.runs().get(&(image.to_string(), generation)).cloned()?;
        run.state.send_modify(|s| s.started = true);
        if let Err(e) = std::fs::create_dir_all(&run.dir) {
            tracing::warn!("relay: creating {}: {e} (children will get their payloads elsewhere)", run.dir.display());
            run.end();
            return None;
        }
        Some(run)
    }

    fn find(&self, image: &str, generation: u64) -> Option<Arc<Run>> {
        self.runs().get(&(image.to_string(), generation)).cloned()
    }

    /// Removes the run (and its payloads) [`GRACE`] after its session ended.
    fn reap_later(self: &Arc<Self>, key: (String, u64), run: Arc<Run>) {
        let me = Arc::downgrade(self);
        let mut rx = run.state.subscribe();
        let handle = tokio::runtime::Handle::try_current();
        let Ok(handle) = handle else { return };
        handle.spawn(async move {
            let _ = tokio::time::timeout(RUN_MAX, rx.wait_for(|s| s.ended)).await;
            tokio::time::sleep(GRACE).await;
            let Some(me) = me.upgrade() else { return };
            {
                let mut runs = me.runs();
                if runs.get(&key).is_some_and(|r| Arc::ptr_eq(r, &run)) {
                    runs.remove(&key);
                }
            }
            let dir = run.dir.clone();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        });
    }
}

impl Run {
    fn new(dir: PathBuf) -> Run {
        Run {
            dir,
            children: Mutex::new(HashMap::new()),
            state: watch::Sender::new(State::default()),
            progress: AtomicU64::new(0),
        }
    }

    fn path(&self, index: u32) -> PathBuf {
        self.dir.join(index.to_string())
    }

    pub(crate) fn progress(&self, n: u64) {
        self.progress.fetch_add(n, Ordering::Relaxed);
    }

    /// Keeps payload `index` (whole: written to `.part`, then renamed) for the children: the bytes
    /// (a small payload) or a hard link to its spool file. Failing to keep it is only logged:
    /// the child is then told it is missing and gets it from the controller.
    pub(crate) async fn put(self: &Arc<Self>, index: u32, meta: Meta, data: Source<'_>) {
        let (part, path) = (self.dir.join(format!("{index}.part")), self.path(index));
        let r = match data {
            Source::Bytes(b) => {
                let b = b.to_vec();
                crate::session::blocking(move || {
                    std::fs::write(&part, &b).with_context(|| format!("writing {}", part.display()))?;
                    std::fs::rename(&part, &path).with_context(|| format!("renaming {}", part.display()))
                })
                .await
            }
            Source::File(f) => {
                let f = f.to_path_buf();
                crate::session::blocking(move || {
                    let _ = std::fs::remove_file(&part);
                    if std::fs::hard_link(&f, &part).is_err() {
                        std::fs::copy(&f, &part).with_context(|| format!("copying {}", f.display()))?;
                    }
                    std::fs::rename(&part, &path).with_context(|| format!("renaming {}", part.display()))
                })
                .await
            }
        };
        match r {
            Ok(()) => self.state.send_modify(|s| {
                s.have.insert(index, meta);
            }),
            Err(e) => tracing::warn!("relay: payload {index} not kept for the children: {e:#}"),
        }
    }

    /// Keeps the plan's bytes as received (`dir/plan`, written to `.part` then renamed) for the
    /// children, keyed by their BLAKE3. Failing to keep them is only logged: a child is then
    /// told the plan is missing and gets it from the controller.
    pub(crate) async fn put_plan(&self, bytes: Arc<Vec<u8>>) {
        let (part, path) = (self.dir.join("plan.part"), self.dir.join("plan"));
        let r = crate::session::blocking(move || {
            let d = Digest::from_bytes(*blake3::hash(&bytes).as_bytes());
            std::fs::write(&part, &bytes[..]).with_context(|| format!("writing {}", part.display()))?;
            std::fs::rename(&part, &path).with_context(|| format!("renaming {}", part.display()))?;
            Ok((d, bytes.len() as u64))
        })
        .await;
        match r {
            Ok(p) => self.state.send_modify(|s| s.plan = Some(p)),
            Err(e) => tracing::warn!("relay: the plan not kept for the children: {e:#}"),
        }
    }

    /// The session feeding this run is over: what is not here by now is missing.
    pub(crate) fn end(&self) {
        self.state.send_modify(|s| s.ended = true);
    }

    /// The child `name` (None on plain TCP: the token alone says who) with `token`, if expected.
    fn admits(&self, name: Option<&str>, token: &[u8; 32]) -> Result<String, String> {
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let by_token = children.iter().find(|(_, t)| same_token(t, token)).map(|(n, _)| n.clone());
        match (by_token, name) {
            (Some(c), Some(n)) if c.eq_ignore_ascii_case(n) => Ok(c),
            (Some(_), Some(n)) | (None, Some(n)) if !children.keys().any(|c| c.eq_ignore_ascii_case(n)) => {
                Err(format!("SN `{n}` is not expected by this relay for this run"))
            }
            (Some(c), None) => Ok(c),
            _ => Err("wrong token for this run".into()),
        }
    }
}

/// What a kept payload is made from.
pub(crate) enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Ends a run when dropped, so every way out of an update (commit, abort, a violation, a dead
/// connection) tells the waiting children.
pub(crate) struct Ending(pub Option<Arc<Run>>);

impl Drop for Ending {
    fn drop(&mut self) {
        if let Some(r) = &self.0 {
            r.end();
        }
    }
}

type Conn = transport::Conn<Parent>;

/// Accepts children on `l` until the agent ends: each connection its own task.
pub(crate) async fn serve(relays: Arc<Relays>, l: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let (tcp, addr) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("relay accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (relays, tls) = (relays.clone(), tls.clone());
        tokio::spawn(async move {
            match serve_child(&relays, tcp, tls.as_ref()).await {
                Ok(()) => {}
                Err(e) => tracing::warn!("relay: child at {addr}: {e:#}"),
            }
        });
    }
}

/// Tells the child why and ends its connection.
async fn refuse(c: &mut Conn, reason: String) -> anyhow::Error {
    let _ = c.request(&FromRelay::Error { reason: reason.clone() }).await;
    c.shutdown().await;
    anyhow!("refused: {reason}")
}

async fn serve_child(
    relays: &Relays,
    tcp: tokio::net::TcpStream,
    tls: Option<&tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    let mut c: Conn = transport::accept_as(tcp, tls, crate::FRAME_TIMEOUT).await?;
    let (token, image, generation) = match c.recv_within(HELLO_WITHIN).await {
        Ok(ToRelay::Hello { token, image, generation }) => (token, image, generation),
        Ok(other) => return Err(refuse(&mut c, format!("expected Hello, got {}", proto::Message::kind(&other))).await),
        Err(e) => return Err(e.into()),
    };
    let Some(run) = relays.find(image.as_str(), generation) else {
        return Err(refuse(&mut c, format!("no relay run for image {image} at generation {generation}")).await);
    };
    let child = match run.admits(c.peer_name.as_deref(), &token) {
        Ok(n) => n,
        Err(r) => return Err(refuse(&mut c, format!("image {image} generation {generation}: {r}")).await),
    };
    tracing::info!(child, image = image.as_str(), generation, "relay serving a child");
    c.request(&FromRelay::Ready).await?;
    loop {
        match c.recv_within(crate::IDLE_TIMEOUT).await {
            Ok(ToRelay::Get { index }) => serve_one(relays, &mut c, &run, index).await?,
            Ok(ToRelay::GetPlan { blake3 }) => serve_plan(relays, &mut c, &run, &blake3).await?,
            Ok(ToRelay::Bye) | Err(transport::Error::Closed) => return Ok(()),
            Ok(other) => {
                return Err(refuse(&mut c, format!("expected Get, got {}", proto::Message::kind(&other))).await)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends payload `index` once it is here whole, `Waiting` while this relay's own transfer makes
/// progress, `Missing` once its session ended without it.
async fn serve_one(relays: &Relays, c: &mut Conn, run: &Run, index: u32) -> anyhow::Result<()> {
    let mut rx = run.state.subscribe();
    let mut seen = run.progress.load(Ordering::Relaxed);
    let meta = loop {
        let (meta, ended) = {
            let s = rx.borrow_and_update();
            (s.have.get(&index).copied(), s.ended)
        };
        if let Some(m) = meta {
            break m;
        }
        if ended {
            c.request(&FromRelay::Missing { index }).await?;
            return Ok(());
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                c.request(&FromRelay::Missing { index }).await?;
                return Ok(());
            },
            _ = tokio::time::sleep(WAITING_EVERY) => {
                let now = run.progress.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    c.request(&FromRelay::Waiting).await?;
                }
            }
        }
    };
    if !relays.delay.is_zero() {
        tokio::time::sleep(relays.delay).await;
    }
    use tokio::io::AsyncReadExt;
    let path = run.path(index);
    let mut f = tokio::fs::File::open(&path).await.with_context(|| format!("{}", path.display()))?;
    c.send(&FromRelay::Blob { index, encoding: meta.encoding, len: meta.len, zstd: meta.zstd }).await?;
    let mut buf = vec![0u8; CHUNK.min(meta.len as usize)];
    let mut left = meta.len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        f.read_exact(&mut buf[..n]).await.with_context(|| format!("{}", path.display()))?;
        c.send_chunk(&buf[..n]).await?;
        left -= n as u64;
    }
    c.request(&FromRelay::BlobEnd).await?;
    Ok(())
}

/// Sends the run's plan once this relay holds it with digest `want` (its own session keeps it
/// before staging; `Waiting` meanwhile), `PlanMissing` once the session ended without it, it
/// holds another, or [`PLAN_WAIT`] passed.
async fn serve_plan(relays: &Relays, c: &mut Conn, run: &Run, want: &Digest) -> anyhow::Result<()> {
    let mut rx = run.state.subscribe();
    let until = tokio::time::Instant::now() + PLAN_WAIT;
    // `Waiting` every WAITING_EVERY meanwhile: the child's stall bound is per frame, and this
    // relay's own plan may still be coming (from the MN, or from its own parent).
    let plan = loop {
        let (plan, ended) = {
            let s = rx.borrow_and_update();
            (s.plan, s.ended)
        };
        if plan.is_some() || ended || tokio::time::Instant::now() >= until {
            break plan;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                break None;
            },
            _ = tokio::time::sleep(WAITING_EVERY) => c.request(&FromRelay::Waiting).await?,
        }
    };
    let len = match plan {
        Some((d, len)) if d == *want => len,
        other => {
            if let Some((d, _)) = other {
                tracing::warn!("relay: a child asked for plan {want}, this run's is {d}");
            }
            c.request(&FromRelay::PlanMissing).await?;
            return Ok(());
        }
    };
    if !relays.plan_delay.is_zero() {
        tokio::time::sleep(relays.plan_delay).await;
    }
    // Streamed a chunk at a time (several children may be served at once).
    use tokio::io::AsyncReadExt;
    let path = run.dir.join("plan");
    let mut f = tokio::fs::File::open(&path).await.with_context(|| format!("{}", path.display()))?;
    c.send(&FromRelay::Plan { len }).await?;
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        f.read_exact(&mut buf[..n]).await.with_context(|| format!("{}", path.display()))?;
        left -= n as u64;
        if left == 0 && relays.corrupt_plan {
            if let Some(b) = buf[..n].last_mut() {
                *b ^= 1;
            }
        }
        c.send_chunk(&buf[..n]).await?;
    }
    c.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_admitted_by_its_token_and_with_tls_by_its_name() {
        let run = Run::new(PathBuf::from("/nonexistent"));
        run.children.lock().unwrap().insert("sn2".into(), [2; 32]);
        run.children.lock().unwrap().insert("sn3".into(), [3; 32]);
        assert_eq!(run.admits(Some("sn2"), &[2; 32]).unwrap(), "sn2");
        assert_eq!(run.admits(None, &[3; 32]).unwrap(), "sn3");
        // Another expected child's token with this certificate: refused.
        assert_eq!(run.admits(Some("sn2"), &[3; 32]).unwrap_err(), "wrong token for this run");
        assert_eq!(run.admits(Some("sn2"), &[9; 32]).unwrap_err(), "wrong token for this run");
        assert_eq!(run.admits(None, &[9; 32]).unwrap_err(), "wrong token for this run");
        // An SN not expected at all, even with a good token.
        let e = run.admits(Some("sn4"), &[2; 32]).unwrap_err();
        assert_eq!(e, "SN `sn4` is not expected by this relay for this run");
    }

    /// A relay whose own plan is late says `Waiting`: its child holds on past its stall bound
    /// (1.5 s per frame) while the controller's `wait_ms` lasts, and gives up when it is over;
    /// a relay whose session ended without the plan says so at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_child_waits_for_its_parents_late_plan_as_long_as_the_controller_said_and_no_longer() {
        let dir = tempfile::tempdir().unwrap();
        let relays = Arc::new(Relays::new(dir.path()).unwrap());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(serve(relays.clone(), l, None));
        let image = |n: &str| Name::parse(n).unwrap();
        let (late, never, gone) = (image("late"), image("never"), image("gone"));
        let child = image("sn2");
        relays.expect(&late, 2, &child, [2; 32]);
        relays.expect(&never, 2, &child, [2; 32]);
        let (_, gone_run) = relays.expect(&gone, 2, &child, [2; 32]);
        let (run, _never_run) = (relays.session("late", 2).unwrap(), relays.session("never", 2).unwrap());
        let plan = b"the plan's bytes as the MN compressed them".to_vec();
        let q = |wait_ms| proto::req::RelayedPlan {
            len: plan.len() as u64,
            blake3: Digest::from_bytes(*blake3::hash(&plan).as_bytes()),
            zstd: true,
            generation: 2,
            parent: Name::parse("sn1").unwrap(),
            addr: "127.0.0.1".into(),
            port,
            token: [2; 32],
            stall_ms: 1500,
            wait_ms,
        };
        let given = plan.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            run.put_plan(Arc::new(given)).await;
        });
        // The parent's session for `gone` ends (its guard dropped, as when it fails) with no plan.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(Ending(Some(gone_run)));
        });
        let t = std::time::Instant::now();
        let bound = Duration::from_secs(8);
        let (q_late, q_never, q_gone) = (q(10_000), q(2000), q(10_000));
        let timed = |q, image| async move {
            let r = tokio::time::timeout(bound, crate::session::relayed_plan(q, image, None)).await;
            (r, t.elapsed())
        };
        let (got, gave_up, told) = tokio::join!(timed(&q_late, &late), timed(&q_never, &never), timed(&q_gone, &gone));
        let (r, at) = got;
        assert_eq!(r.expect("the late plan never came").unwrap(), plan);
        assert!(at >= Duration::from_millis(3500), "{at:?}");
        let (r, at) = gave_up;
        let e = r.expect("the child waited past wait_ms").unwrap_err();
        assert!(e.contains("no plan within 2s"), "{e}");
        // Given up at the first `Waiting` past 2 s: neither at the stall bound nor much later.
        assert!(at >= Duration::from_secs(2) && at < Duration::from_millis(3400), "{at:?}");
        // A session that ended without the plan: the child is told so at once, not at `wait_ms`.
        let (r, at) = told;
        let e = r.expect("the child waited for a session that had ended").unwrap_err();
        assert!(e.contains("the relay has no such plan"), "{e}");
        assert!(at < Duration::from_millis(1500), "{at:?}");
    }
}
