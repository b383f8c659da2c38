//! `dth`: the binary the image carries, and the operator's command. `finder` and `worker` share nearly all
//! their code (the AWS SDK, the engine), so the image holds one static file and two names for it: run as
//! `finder` or `worker` (a link), or as `dth finder ...` / `dth worker ...`. Half the image, half the link time
//! of two binaries. `dth status`, `dth failures`, `dth retry` and `dth plan-cost` are for people ([`ops`]).

mod ops;

use std::ffi::OsString;
use std::path::Path;

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
            _ => ops::main_from(args),
        }
    };
    match command.as_str() {
        "finder" => finder::main_from(args),
        _ => worker::main_from(args),
    }
}
