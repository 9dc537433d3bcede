//! Crash points for the crash-test harness, compiled in only with the `fault-injection` feature.
//! With `HANFS_FAULT_AT=N` in the environment the process SIGKILLs itself at the N-th point it
//! passes; `hits()` tells how many points a run passed.

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static HITS: AtomicU64 = AtomicU64::new(0);
    static AT: OnceLock<Option<u64>> = OnceLock::new();

    pub fn point(name: &str) {
        let n = HITS.fetch_add(1, Ordering::SeqCst) + 1;
        let at = *AT.get_or_init(|| std::env::var("HANFS_FAULT_AT").ok().and_then(|v| v.parse().ok()));
        if at == Some(n) {
            eprintln!("fault injection: SIGKILL at point {n} ({name})");
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        }
    }

    pub fn hits() -> u64 {
        HITS.load(Ordering::SeqCst)
    }
}

#[cfg(not(feature = "fault-injection"))]
mod imp {
    #[inline(always)]
    pub fn point(_name: &str) {}

    pub fn hits() -> u64 {
        0
    }
}

pub use imp::{hits, point};
