//! `hanfs exports [--sn NAME] [--commands]`: the exports each SN must serve, in its dialect.

use super::{load_cluster, print_json};
use crate::cli::{ExportsArgs, Global};
use crate::exit::{bad_input, Status};
use anyhow::Result;
use model::{Cluster, ServiceNode};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
struct SnExports {
    dialect: &'static str,
    text: String,
}

pub fn run(g: &Global, a: ExportsArgs) -> Result<Status> {
    let cluster = load_cluster(g)?;
    let sns: Vec<&ServiceNode> = match &a.sn {
        Some(name) => vec![cluster.sn(name).ok_or_else(|| {
            let known: Vec<&str> = cluster.sns().iter().map(|s| s.name.as_str()).collect();
            bad_input(format!("{}: unknown SN `{name}` (the cluster has: {})", g.config.display(), known.join(", ")))
        })?],
        None => cluster.sns().iter().collect(),
    };
    let mut texts = Vec::new();
    for sn in &sns {
        texts.push((*sn, text_for(g, &cluster, sn, a.commands)?));
    }
    if g.json {
        let sns: BTreeMap<_, _> = texts
            .into_iter()
            .map(|(sn, text)| (sn.name.clone(), SnExports { dialect: sn.dialect.as_str(), text }))
            .collect();
        print_json(&serde_json::json!({ "sns": sns }))?;
    } else if a.sn.is_some() {
        // Exactly the file's bytes, so `hanfs exports --sn X > file` reproduces it.
        for (_, text) in texts {
            print!("{text}");
        }
    } else {
        for (i, (sn, text)) in texts.into_iter().enumerate() {
            if i > 0 {
                println!();
            }
            println!("# sn: {} ({}, {})", sn.name, sn.dialect.as_str(), exports::target_file(sn.dialect));
            print!("{text}");
        }
    }
    Ok(Status::Ok)
}

fn text_for(g: &Global, cluster: &Cluster, sn: &ServiceNode, commands: bool) -> Result<String> {
    let ex = exports::build(cluster, &sn.name)
        .map_err(|e| bad_input(format!("{}: SN `{}`: {e}", g.config.display(), sn.name)))?;
    // No export can tell a moved AIX node where to go (exports::aix_unreferred): say it beside the text.
    exports::aix_moves(cluster, &sn.name).iter().for_each(|l| eprintln!("hanfs exports: {l}"));
    Ok(if commands { exports::commands(&ex, sn, cluster.domain()) } else { exports::render(&ex) })
}
