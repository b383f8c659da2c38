//! `dth`: the binary the image carries. `finder` and `worker` share nearly all their code (the AWS SDK, the
//! engine), so the image holds one static file and two names for it: run as `finder` or `worker` (a link),
//! or as `dth finder ...` / `dth worker ...`. Half the image, half the link time of two binaries.

use std::ffi::OsString;
use std::path::Path;

const USAGE: &str = "usage: dth <finder|worker> [ARGS...]   (or run it as `finder` / `worker`)";

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let called = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("dth")
        .to_owned();
    let command = if matches!(called.as_str(), "finder" | "worker") {
        called
    } else {
        match args.get(1).and_then(|a| a.to_str()) {
            Some(c @ ("finder" | "worker")) => {
                let c = c.to_owned();
                args.remove(0);
                c
            }
            Some("--version" | "-V") => {
                println!("dth {}", dth_core::build_info::LONG_VERSION);
                return;
            }
            Some("--help" | "-h") => {
                println!("{USAGE}");
                return;
            }
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    };
    match command.as_str() {
        "finder" => finder::main_from(args),
        _ => worker::main_from(args),
    }
}
