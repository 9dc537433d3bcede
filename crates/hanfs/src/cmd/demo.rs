//! `hanfs demo [--dir DIR] [--sns N]`: arguments and output; the demo is `controller::demo`.

use crate::cli::{DemoArgs, Global};
use crate::exit::{bad_input, Status};
use anyhow::{Context, Result};
use std::io::Write;

pub fn run(g: &Global, a: DemoArgs) -> Result<Status> {
    let agent_exe = std::env::current_exe().context("locating the hanfs binary")?;
    let opts = controller::demo::Options { dir: a.dir, sns: a.sns, agent_exe };
    let out = |s: String| {
        if !g.json {
            println!("{s}");
            let _ = std::io::stdout().flush();
        }
    };
    let (ok, summary) =
        controller::demo::run(&opts, &out).map_err(|e| match e.downcast_ref::<controller::BadInput>() {
            Some(b) => bad_input(b.0.clone()),
            None => e,
        })?;
    if g.json {
        super::print_json(&summary)?;
    }
    Ok(if ok { Status::Ok } else { Status::Failed })
}
