//! `hanfs daemon`: arguments and the metrics listener; the scheduler is `controller::daemon`.

use crate::cli::{DaemonArgs, Global};
use crate::exit::{bad_input, Status};
use anyhow::Result;
use controller::daemon::{Metrics, Options};
use std::sync::Arc;
use std::time::Duration;

pub fn run(g: &Global, a: DaemonArgs) -> Result<Status> {
    let ctl = super::controller(g, None)?;
    if ctl.cluster.images().is_empty() {
        return Err(bad_input(format!("{}: no [[image]] to watch", g.config.display())));
    }
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = &a.metrics {
        let bound = metrics.serve(addr).map_err(|e| bad_input(format!("--metrics {addr}: {e}")))?;
        eprintln!("hanfs daemon: metrics on {bound}"); // the port really bound (ADDR may say port 0)
    }
    let opts = Options {
        quiet: Duration::from_secs(a.quiet_secs),
        statelite_every: (a.statelite_secs > 0).then(|| Duration::from_secs(a.statelite_secs)),
    };
    controller::daemon::run(&super::runtime()?, ctl, &opts, &metrics)?;
    Ok(Status::Ok)
}
