//! `concord-node`: run a node, generate a local cluster's certificates, or play the
//! three-node demo.
//!
//! Arguments are parsed by hand: three subcommands with a few flags do not need a
//! parser crate in the build.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use concord_node::config::NodeConfig;

const USAGE: &str = "\
usage:
  concord-node run --config NODE.toml
      run a node
  concord-node gen-certs --dir DIR [--nodes N] [--base-port P]
      write a cluster CA, N node certificates and configurations (default 3 nodes,
      replication ports P+1.., HTTP ports P+101..; P defaults to 7100)
  concord-node demo
      start node processes on loopback and walk through multi-region replication,
      then a master-follower failover and switchover";

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => match flag(&args, "--config") {
            Some(path) => NodeConfig::load(&PathBuf::from(path)).and_then(|config| {
                init_logs(&config.log);
                concord_node::run(config)
            }),
            None => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some("gen-certs") => {
            let Some(dir) = flag(&args, "--dir") else {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            };
            let nodes = flag(&args, "--nodes").map_or(Ok(3), |n| n.parse::<usize>());
            let port = flag(&args, "--base-port").map_or(Ok(7100), |n| n.parse::<u16>());
            match (nodes, port) {
                (Ok(n), Ok(p)) if (1..=64).contains(&n) => {
                    concord_node::certs::generate_cluster(&PathBuf::from(dir), n, p).map(|paths| {
                        for p in paths {
                            println!("wrote {}", p.display());
                        }
                    })
                }
                _ => {
                    eprintln!("--nodes takes 1 to 64, --base-port a port\n{USAGE}");
                    return ExitCode::from(2);
                }
            }
        }
        Some("demo") => concord_node::demo::run(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concord-node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(level: &str) {
    let level = level
        .parse::<tracing::Level>()
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}
