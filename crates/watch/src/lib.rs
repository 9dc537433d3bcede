//! Watches an MN's `source_root` (inotify, via `notify`) and turns the stream of file events into
//! "these images changed and have been quiet for N seconds" batches for `hanfs daemon`.
//!
//! Invariants:
//! - Watches are installed before the caller's first scan ([`Watcher::new`] returns only once they
//!   are in place), so a change made during that scan is never missed.
//! - A lost event is never a missed sync: on inotify queue overflow, or any watch error, every image
//!   is reported dirty and the caller rescans (scans are cheap when nothing changed: the tree
//!   engine's hash cache makes them cost stats only).
//! - An image is reported only after no event touched any watched image for the quiet period, so a
//!   `genimage`/`packimage` run is synced once, at its end, not file by file.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use notify::{EventKind, RecursiveMode, Watcher as _};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot watch {path}: {source}{hint}")]
    Watch { path: String, source: notify::Error, hint: String },
    #[error("the file watcher stopped")]
    Closed,
}

/// An image to watch: its name and its absolute source path.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub path: PathBuf,
}

pub struct Watcher {
    targets: Vec<Target>,
    quiet: Duration,
    rx: Receiver<notify::Result<notify::Event>>,
    // Kept alive: dropping it removes the watches.
    _inner: notify::RecommendedWatcher,
}

impl Watcher {
    /// Watches every target recursively. A target that does not exist is an error: xCAT creates an
    /// image before hanfs is told about it, so a missing one is a config mistake.
    pub fn new(targets: Vec<Target>, quiet: Duration) -> Result<Watcher, Error> {
        let (tx, rx) = mpsc::channel();
        let mut inner = notify::recommended_watcher(move |ev| {
            // The receiver is gone only when the Watcher is dropped.
            let _ = tx.send(ev);
        })
        .map_err(|e| watch_err(Path::new("."), e))?;
        for t in &targets {
            inner.watch(&t.path, RecursiveMode::Recursive).map_err(|e| watch_err(&t.path, e))?;
        }
        Ok(Watcher { targets, quiet, rx, _inner: inner })
    }

    /// Blocks until at least one image changed and then nothing changed for the quiet period;
    /// returns the names of the changed images, in target order.
    pub fn next_batch(&self) -> Result<Vec<String>, Error> {
        self.next_batch_within(None).map(Option::unwrap_or_default)
    }

    /// As [`Watcher::next_batch`], but gives up with `None` if no image changed within `wait`
    /// (`None`: wait for ever), so a daemon can retry failed SNs on a timer.
    pub fn next_batch_within(&self, wait: Option<Duration>) -> Result<Option<Vec<String>>, Error> {
        let mut dirty = BTreeSet::new();
        let deadline = wait.map(|w| Instant::now() + w);
        // First event: wait until the deadline.
        loop {
            let ev = match deadline {
                None => self.rx.recv().map_err(|_| Error::Closed)?,
                Some(d) => match self.rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                    Ok(ev) => ev,
                    Err(RecvTimeoutError::Timeout) => return Ok(None),
                    Err(RecvTimeoutError::Disconnected) => return Err(Error::Closed),
                },
            };
            self.mark(ev, &mut dirty);
            if !dirty.is_empty() {
                break;
            }
        }
        // Then wait for quiet: every further event restarts the clock.
        let mut last = Instant::now();
        loop {
            let left = self.quiet.saturating_sub(last.elapsed());
            if left.is_zero() {
                break;
            }
            match self.rx.recv_timeout(left) {
                Ok(ev) => {
                    let before = dirty.len();
                    let relevant = self.mark(ev, &mut dirty);
                    if relevant || dirty.len() != before {
                        last = Instant::now();
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Closed),
            }
        }
        Ok(Some(self.targets.iter().filter(|t| dirty.contains(&t.name)).map(|t| t.name.clone()).collect()))
    }

    /// Records which images an event touches; returns whether it touched any.
    fn mark(&self, ev: notify::Result<notify::Event>, dirty: &mut BTreeSet<String>) -> bool {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "file watcher error; rescanning every image");
                self.all(dirty);
                return true;
            }
        };
        if ev.need_rescan() {
            tracing::warn!("inotify queue overflowed; rescanning every image");
            self.all(dirty);
            return true;
        }
        if matches!(ev.kind, EventKind::Access(_)) {
            return false;
        }
        let mut hit = false;
        for p in &ev.paths {
            for t in &self.targets {
                if p.starts_with(&t.path) {
                    dirty.insert(t.name.clone());
                    hit = true;
                }
            }
        }
        hit
    }

    fn all(&self, dirty: &mut BTreeSet<String>) {
        dirty.extend(self.targets.iter().map(|t| t.name.clone()));
    }
}

fn watch_err(path: &Path, source: notify::Error) -> Error {
    let hint = match &source.kind {
        notify::ErrorKind::MaxFilesWatch => format!(
            " (inotify watch limit reached: raise fs.inotify.max_user_watches, now {})",
            std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches").unwrap_or_default().trim()
        ),
        _ => String::new(),
    };
    Error::Watch { path: path.display().to_string(), source, hint }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn reports_changed_images_after_quiet() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        fs::create_dir_all(a.join("sub")).unwrap();
        fs::create_dir_all(&b).unwrap();
        let w = Watcher::new(
            vec![Target { name: "a".into(), path: a.clone() }, Target { name: "b".into(), path: b.clone() }],
            Duration::from_millis(300),
        )
        .unwrap();
        let writer = std::thread::spawn(move || {
            for i in 0..5 {
                fs::write(a.join("sub").join(format!("f{i}")), b"x").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t0 = Instant::now();
        let batch = w.next_batch().unwrap();
        writer.join().unwrap();
        assert_eq!(batch, vec!["a".to_string()]);
        // Five writes 100 ms apart then 300 ms of quiet: the batch cannot close before ~600 ms.
        assert!(t0.elapsed() >= Duration::from_millis(550), "{:?}", t0.elapsed());

        fs::write(b.join("g"), b"y").unwrap();
        assert_eq!(w.next_batch().unwrap(), vec!["b".to_string()]);
    }

    #[test]
    fn times_out_when_nothing_changes() {
        let d = tempfile::tempdir().unwrap();
        let w =
            Watcher::new(vec![Target { name: "a".into(), path: d.path().to_path_buf() }], Duration::from_millis(50))
                .unwrap();
        let t0 = Instant::now();
        assert_eq!(w.next_batch_within(Some(Duration::from_millis(200))).unwrap(), None);
        assert!(t0.elapsed() >= Duration::from_millis(190));
        fs::write(d.path().join("x"), b"1").unwrap();
        assert_eq!(w.next_batch_within(Some(Duration::from_secs(5))).unwrap(), Some(vec!["a".to_string()]));
    }

    #[test]
    fn missing_image_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = Watcher::new(vec![Target { name: "x".into(), path: d.path().join("nope") }], Duration::from_millis(10));
        assert!(matches!(e, Err(Error::Watch { .. })));
    }
}
