//! `hanfs ca init DIR` and `hanfs ca issue DIR --name NAME [--san ...]`: mutual-TLS material.

use super::print_json;
use crate::cli::{CaCommand, Global};
use crate::exit::{bad_input, Status};
use anyhow::Result;

pub fn run(g: &Global, c: CaCommand) -> Result<Status> {
    match c {
        CaCommand::Init { dir } => {
            let pem = transport::ca::init(&dir).map_err(|e| bad_input(e.to_string()))?;
            if g.json {
                print_json(&serde_json::json!({ "ca": pem }))?;
            } else {
                println!(
                    "CA created: {} (key {}, keep it on the MN only)",
                    pem.display(),
                    dir.join("ca.key").display()
                );
                println!(
                    "next: hanfs ca issue {} --name mn; hanfs ca issue {} --name <sn>",
                    dir.display(),
                    dir.display()
                );
            }
        }
        CaCommand::Issue { dir, name, sans } => {
            let (cert, key) = transport::ca::issue(&dir, &name, &sans).map_err(|e| bad_input(e.to_string()))?;
            if g.json {
                print_json(&serde_json::json!({ "cert": cert, "key": key }))?;
            } else {
                println!("issued {name}: {} {}", cert.display(), key.display());
            }
        }
    }
    Ok(Status::Ok)
}
