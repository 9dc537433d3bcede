//! Progress of a run as events, for whoever shows them (the CLI draws bars from them); the
//! controller itself draws nothing.

use std::sync::Arc;

/// What happened to one SN's part of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The SN's session is about to start.
    Start,
    /// Bytes to send for the image now being synced.
    Length(u64),
    /// What is being done now (an image name).
    Message(String),
    /// Bytes sent since the last event.
    Advance(u64),
    /// The SN is done: "done" or "FAILED".
    Finish(String),
}

/// Receives every event with the SN's name; called from the SNs' tasks, so it must be cheap.
pub type Hook = Arc<dyn Fn(&str, &Event) + Send + Sync>;

/// One SN's progress handle (the methods mirror a progress bar's, so session code reads as one).
#[derive(Clone)]
pub struct ProgressBar {
    sn: String,
    hook: Hook,
}

impl ProgressBar {
    /// A handle for `sn`; announces it with [`Event::Start`].
    pub fn new(sn: &str, hook: Hook) -> ProgressBar {
        hook(sn, &Event::Start);
        ProgressBar { sn: sn.to_string(), hook }
    }

    pub fn set_length(&self, bytes: u64) {
        (self.hook)(&self.sn, &Event::Length(bytes));
    }

    pub fn set_message(&self, m: impl Into<String>) {
        (self.hook)(&self.sn, &Event::Message(m.into()));
    }

    pub fn inc(&self, bytes: u64) {
        (self.hook)(&self.sn, &Event::Advance(bytes));
    }

    pub fn finish_with_message(&self, m: impl Into<String>) {
        (self.hook)(&self.sn, &Event::Finish(m.into()));
    }
}
