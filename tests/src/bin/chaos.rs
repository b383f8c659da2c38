//! `chaos`: the chaos scenario of `dth_tests::chaos` at any size (`scripts/chaos` runs it at 2 GB+). Prints the
//! figures as a Markdown table (to stdout, and to `--out` if given) and exits 1 when any check failed.
//!
//! ```sh
//! chaos                                   # ~2.3 GB: 8,000 small, 12 multipart, 3 giants; a kill every 2–6 s
//! chaos --faults 0.05 --no-kills          # the same behind the fault proxy, the fleet left alone
//! chaos --small 2400 --multipart 6 --multipart-mib 20-40 --giants 2 --giant-mib 64-80 --giant-threshold-mib 64
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dth_tests::chaos::{run, Faults, Plan, MIB};

/// A range `LO-HI` (or a single value).
fn range(s: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let n = |v: &str| v.trim().parse::<u64>().map_err(|e| format!("{v:?}: {e}"));
    let (lo, hi) = (n(lo)?, n(hi)?);
    if lo > hi {
        return Err(format!("{lo} > {hi}"));
    }
    Ok((lo, hi))
}

#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    about = "Copy a mixed bucket with a fleet of workers SIGKILLed at random (and/or behind a faulty network), \
             then check the transfer is exact"
)]
struct Args {
    /// Seed of the object sizes and bodies, the kills and the proxy's faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Small objects, and their size range in KiB.
    #[arg(long, default_value_t = 8000)]
    small: usize,
    #[arg(long, value_parser = range, default_value = "1-64")]
    small_kib: (u64, u64),
    /// Multipart objects (every other one uploaded in parts), and their size range in MiB.
    #[arg(long, default_value_t = 12)]
    multipart: usize,
    #[arg(long, value_parser = range, default_value = "64-128")]
    multipart_mib: (u64, u64),
    /// Giant objects split across the fleet, their size range in MiB, and the threshold that makes them giant.
    #[arg(long, default_value_t = 3)]
    giants: usize,
    #[arg(long, value_parser = range, default_value = "256-320")]
    giant_mib: (u64, u64),
    #[arg(long, default_value_t = 256)]
    giant_threshold_mib: u64,
    /// Part size of the sources uploaded in parts, and the config's chunk size.
    #[arg(long, default_value_t = 8)]
    part_mib: u64,
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Seconds between kills, drawn from this range.
    #[arg(long, value_parser = range, default_value = "2-6")]
    kill_secs: (u64, u64),
    /// Leave the fleet alone.
    #[arg(long)]
    no_kills: bool,
    /// Put the fault proxy between the binaries and AWS, failing this share of each service's calls.
    #[arg(long)]
    faults: Option<f64>,
    /// With --faults: the share of calls delayed, and by how many milliseconds.
    #[arg(long, default_value_t = 0.10)]
    delay_share: f64,
    #[arg(long, default_value_t = 5)]
    delay_ms: u64,
    /// Deliveries of a job before it is dead-lettered.
    #[arg(long, default_value_t = 25)]
    max_attempts: u32,
    /// The most the transfer may take, in minutes.
    #[arg(long, default_value_t = 90)]
    deadline_mins: u64,
    /// Also write the table here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = Args::parse();
    let plan = Plan {
        name: format!("chaos-{}", a.seed),
        seed: a.seed,
        small: a.small,
        small_bytes: (a.small_kib.0 * 1024, a.small_kib.1 * 1024),
        multipart: a.multipart,
        multipart_bytes: (a.multipart_mib.0 * MIB, a.multipart_mib.1 * MIB),
        giants: a.giants,
        giant_bytes: (a.giant_mib.0 * MIB, a.giant_mib.1 * MIB),
        giant_threshold: a.giant_threshold_mib * MIB,
        part_bytes: a.part_mib * MIB,
        workers: a.workers,
        kill_every: (!a.no_kills).then(|| {
            (
                Duration::from_secs(a.kill_secs.0),
                Duration::from_secs(a.kill_secs.1),
            )
        }),
        faults: a.faults.map(|ratio| Faults {
            ratio,
            delay_ratio: a.delay_share,
            delay: Duration::from_millis(a.delay_ms),
        }),
        max_attempts: a.max_attempts,
        deadline: Duration::from_secs(a.deadline_mins * 60),
    };
    if let Err(e) = plan.check() {
        eprintln!("chaos: {e}");
        std::process::exit(2);
    }
    let figures = run(plan).await;
    let table = figures.table();
    println!("{table}");
    if let Some(out) = &a.out {
        if let Err(e) = std::fs::write(out, &table) {
            eprintln!("chaos: writing {}: {e}", out.display());
        }
    }
    std::process::exit(if figures.problems.is_empty() { 0 } else { 1 });
}
