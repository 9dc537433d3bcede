//! The generation gate: clients see a whole generation of the tree, never a mix.
//!
//! The tree engine commits a new generation in place, by a burst of renames beneath the served
//! root (there is no generation directory the server's root could be re-pointed at: the replica
//! *is* the exported path, which kernel nfsd exports too). So the server does not let a file
//! system operation overlap a commit: every operation holds a read guard while it touches the
//! tree, and [`Gate::switch`] holds the write guard while the commit runs. An operation that
//! arrives during a commit waits for it, at most [`Gate::wait`]; beyond that it is answered
//! `NFS3ERR_JUKEBOX` (RFC 1813 §2.6: "try again later"; the Linux client retries it after a few
//! seconds), so a frozen commit stalls clients instead of showing them a half-applied tree.
//!
//! Writers go first: once a switch waits, new operations queue behind it, so a busy server
//! cannot starve a commit; the switch waits only for the operations already running, each one
//! a few system calls.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    readers: usize,
    writer: bool,
    writers_waiting: usize,
    /// Switches completed.
    switches: u64,
    /// Operations answered `NFS3ERR_JUKEBOX` because a switch outlasted the wait.
    jukebox: u64,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    wait: Duration,
}

/// A read/write gate between file system operations and commits. Cheap to clone.
#[derive(Clone)]
pub struct Gate(Arc<Shared>);

/// Held by one file system operation; dropping it lets a waiting switch proceed.
pub struct ReadGuard(Arc<Shared>);

/// An operation gave up waiting for a switch (answer `NFS3ERR_JUKEBOX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters, consistent after every statement: a panic elsewhere
        // while it was held leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Gate {
    /// A gate whose readers wait at most `wait` for a switch.
    pub fn new(wait: Duration) -> Gate {
        Gate(Arc::new(Shared { state: Mutex::default(), cv: Condvar::new(), wait }))
    }

    /// How long an operation waits for a running switch before it is answered JUKEBOX.
    pub fn wait(&self) -> Duration {
        self.0.wait
    }

    /// Enters one operation: immediately unless a switch runs or waits, else after it (blocks
    /// the calling thread; the file system calls this on its blocking pool).
    pub fn read(&self) -> Result<ReadGuard, Busy> {
        let deadline = Instant::now() + self.0.wait;
        let mut st = self.0.lock();
        while st.writer || st.writers_waiting > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.jukebox += 1;
                return Err(Busy);
            }
            st = self.0.cv.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        st.readers += 1;
        Ok(ReadGuard(Arc::clone(&self.0)))
    }

    /// Runs `f` (the commit of a generation) with no operation in progress: waits for the
    /// running ones, holds new ones back until `f` returns, then runs `after` (cache
    /// invalidation) before letting them in. Blocks the calling thread.
    pub fn switch<T>(&self, f: impl FnOnce() -> T, after: impl FnOnce()) -> T {
        let mut st = self.0.lock();
        st.writers_waiting += 1;
        while st.writer || st.readers > 0 {
            st = self.0.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.writers_waiting -= 1;
        st.writer = true;
        drop(st);
        // Released however `f` leaves (a panicking commit must not wedge the server).
        struct Release<'a>(&'a Shared);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let mut st = self.0.lock();
                st.writer = false;
                st.switches += 1;
                drop(st);
                self.0.cv.notify_all();
            }
        }
        let release = Release(&self.0);
        let out = f();
        after();
        drop(release);
        out
    }

    /// Switches completed so far.
    pub fn switches(&self) -> u64 {
        self.0.lock().switches
    }

    /// Operations answered JUKEBOX so far.
    pub fn jukebox(&self) -> u64 {
        self.0.lock().jukebox
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.readers -= 1;
        let last = st.readers == 0;
        drop(st);
        if last {
            self.0.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_switch_waits_for_running_operations_and_holds_new_ones() {
        let g = Gate::new(Duration::from_secs(10));
        let r = g.read().unwrap();
        let inside = Arc::new(AtomicBool::new(false));
        let (g2, i2) = (g.clone(), Arc::clone(&inside));
        let t = std::thread::spawn(move || g2.switch(|| i2.store(true, Ordering::SeqCst), || ()));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!inside.load(Ordering::SeqCst), "the switch ran while an operation was in progress");
        drop(r);
        t.join().unwrap();
        assert!(inside.load(Ordering::SeqCst));
        assert_eq!(g.switches(), 1);
        assert!(g.read().is_ok());
    }

    #[test]
    fn an_operation_during_a_long_switch_is_told_to_retry() {
        let g = Gate::new(Duration::from_millis(50));
        let g2 = g.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            g2.switch(
                || {
                    tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(400));
                },
                || (),
            )
        });
        rx.recv().unwrap();
        let t0 = Instant::now();
        assert_eq!(g.read().err(), Some(Busy));
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert_eq!(g.jukebox(), 1);
        t.join().unwrap();
        assert!(g.read().is_ok());
    }

    #[test]
    fn a_panicking_commit_releases_the_gate() {
        let g = Gate::new(Duration::from_millis(50));
        let g2 = g.clone();
        let r = std::thread::spawn(move || g2.switch(|| panic!("commit failed"), || ())).join();
        assert!(r.is_err());
        assert!(g.read().is_ok());
    }
}
