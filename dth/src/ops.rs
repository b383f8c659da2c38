//! The operator's commands: `dth status`, `dth failures`, `dth retry`, `dth plan-cost`.
//!
//! Each finds a transfer by its name alone (the provider names every piece after it, [`Names`]) with the
//! standard AWS configuration (environment, shared files, instance role; `AWS_ENDPOINT_URL` and friends for
//! endpoints), or reads the region, endpoints and name from a job config (`--config`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use dth_core::aws::ControlPlane;
use dth_core::config::{AwsConfig, TransferConfig};
use dth_core::cost::thousands as count;
use dth_core::ledger::DynamoLedger;
use dth_core::names::Names;
use dth_core::stats::human_bytes;
use dth_core::status::{self, Overview, Status};
use dth_core::{redrive, Error, Result};
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "dth",
    version = dth_core::build_info::LONG_VERSION,
    about = "Data Transfer Hub: see and steer transfers. `dth finder ...` and `dth worker ...` run the instance \
             binaries."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Where transfers stand: every transfer in the region, or one. A fixed number of AWS calls per transfer.
    Status(StatusArgs),
    /// The failed objects (or images) of a transfer's latest run, with their errors, from its ledger.
    Failures(FailuresArgs),
    /// Move a transfer's dead-lettered jobs back to its job queue, for the workers to try again.
    Retry(RetryArgs),
    /// What moving the objects that differ would cost: `finder --dry-run` with the plan's cost estimate.
    PlanCost {
        /// `finder` arguments: `--config FILE` (or `--config-json`), `--parallelism N`, `--json`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Where to look: the AWS configuration, optionally from a job config.
#[derive(Debug, Clone, Args)]
struct Target {
    /// Region of the transfer's control plane (queue, ledger, fleet). Default: the AWS configuration's.
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// A transfer's job config (JSON): its region, endpoints and transfer name are used.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The transfer; all of them when left out.
    name: Option<String>,
    #[command(flatten)]
    target: Target,
    /// Redraw every SECS seconds (default 5) until interrupted.
    #[arg(long, short = 'w', value_name = "SECS", num_args = 0..=1, default_missing_value = "5")]
    watch: Option<u64>,
    /// With --watch: stop once every transfer shown is settled (in sync, failed or idle, nothing queued); the
    /// exit code is then 1 if one of them failed.
    #[arg(long, requires = "watch")]
    until_settled: bool,
}

#[derive(Debug, Args)]
struct FailuresArgs {
    /// The transfer.
    name: Option<String>,
    #[command(flatten)]
    target: Target,
    /// A run id other than the latest.
    #[arg(long)]
    run: Option<String>,
    /// Show at most this many (0: all).
    #[arg(long, default_value_t = 100)]
    limit: u64,
}

#[derive(Debug, Args)]
struct RetryArgs {
    /// The transfer.
    name: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// Run an operator command (`args` start with the program name).
pub fn main_from(args: Vec<std::ffi::OsString>) -> ! {
    let cli = Cli::parse_from(args);
    if let Command::PlanCost { args } = cli.command {
        let mut argv: Vec<std::ffi::OsString> = vec!["finder".into(), "--dry-run".into()];
        argv.extend(args);
        finder::main_from(argv)
    }
    dth_core::telemetry::init_with(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        dth_core::telemetry::LogFormat::Text,
        std::io::stderr().is_terminal(),
    );
    dth_core::cli::exit_with("dth", run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Status(a) => status(a).await,
        Command::Failures(a) => failures(a).await,
        Command::Retry(a) => retry(a).await,
        Command::PlanCost { .. } => Ok(()),
    }
}

/// The clients, and the transfer's name (given, or the job config's).
async fn connect(t: &Target, name: Option<&str>) -> Result<(ControlPlane, Option<String>)> {
    let mut aws = AwsConfig::default();
    let mut from_config = None;
    if let Some(path) = &t.config {
        let cfg = TransferConfig::load(Some(path), None)?;
        aws = cfg.aws().clone();
        from_config = cfg.metrics().map(|m| m.transfer.clone());
    }
    if let Some(r) = &t.region {
        aws.region = Some(r.clone());
    }
    let cp = ControlPlane::new(&aws).await;
    let name = name.map(str::to_owned).or(from_config);
    if let Some(n) = &name {
        validate_name(n)?;
    }
    Ok((cp, name))
}

fn validate_name(name: &str) -> Result<()> {
    match dth_core::names::problem(name) {
        None => Ok(()),
        Some(p) => Err(Error::config("NAME", p)),
    }
}

fn need_name(name: Option<String>) -> Result<String> {
    name.ok_or_else(|| {
        Error::config(
            "NAME",
            "name the transfer (or give --config with a job config that names it)",
        )
    })
}

fn clients(cp: &ControlPlane) -> status::Clients {
    status::Clients {
        sqs: cp.sqs.clone(),
        dynamodb: cp.dynamodb.clone(),
        autoscaling: cp.autoscaling.clone(),
        cloudwatch: Some(cp.cloudwatch.clone()),
    }
}

fn region_of(cp: &ControlPlane) -> String {
    cp.sdk
        .region()
        .map_or_else(|| "?".to_owned(), |r| r.to_string())
}

async fn one(cp: &ControlPlane, name: &str) -> Result<Overview> {
    status::overview(&clients(cp), name).await?.ok_or_else(|| {
        Error::new(
            dth_core::ErrorKind::NotFound,
            format!(
                "no transfer named {name:?} in {} (no queue, ledger or Auto Scaling group of that name)",
                region_of(cp)
            ),
        )
    })
}

async fn read(cp: &ControlPlane, name: Option<&str>) -> Result<Vec<Overview>> {
    match name {
        Some(n) => Ok(vec![one(cp, n).await?]),
        None => {
            let mut all = Vec::new();
            for n in status::list(&cp.autoscaling).await? {
                // A transfer being destroyed may vanish between the listing and its reading.
                if let Some(o) = status::overview(&clients(cp), &n).await? {
                    all.push(o);
                }
            }
            Ok(all)
        }
    }
}

/// Settled: nothing queued or in flight, and not listing.
fn settled(o: &Overview) -> bool {
    o.status != Status::Syncing
}

async fn status(a: StatusArgs) -> Result<()> {
    let (cp, name) = connect(&a.target, a.name.as_deref()).await?;
    let Some(every) = a.watch else {
        let all = read(&cp, name.as_deref()).await?;
        print_status(&all, name.is_some(), a.target.json, &region_of(&cp));
        return Ok(());
    };
    let every = Duration::from_secs(every.max(1));
    let tty = std::io::stdout().is_terminal() && !a.target.json;
    let stop = interrupted();
    // Each transfer's previous reading: the rate between readings, where the workers' metrics have none yet.
    let mut before: HashMap<String, (Instant, Overview)> = HashMap::new();
    loop {
        let mut all = read(&cp, name.as_deref()).await?;
        let read_at = Instant::now();
        for o in &mut all {
            if let Some((at, prev)) = before.get(&o.name) {
                rate_between(o, prev, read_at.duration_since(*at));
            }
        }
        before = all
            .iter()
            .map(|o| (o.name.clone(), (read_at, o.clone())))
            .collect();
        if tty {
            // Home and clear, then the table: a redraw in place.
            print!("\x1b[H\x1b[2J");
        } else if !a.target.json {
            println!("--- {}", now());
        }
        print_status(&all, name.is_some(), a.target.json, &region_of(&cp));
        if a.until_settled && all.iter().all(settled) {
            if all.iter().any(|o| o.status == Status::Failed) {
                return Err(Error::new(
                    dth_core::ErrorKind::Other,
                    "settled with failures (see `dth failures NAME`)",
                ));
            }
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

/// Where `o` has no rate from the metrics, the rate since `prev` (a reading of the same run `elapsed` ago).
fn rate_between(o: &mut Overview, prev: &Overview, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    let same_run = o.progress.last_finder_run == prev.progress.last_finder_run;
    if o.bytes_per_sec.is_some() || !same_run || secs < 1.0 {
        return;
    }
    let (p, q) = (&o.progress, &prev.progress);
    o.objects_per_sec = Some(p.objects_done.saturating_sub(q.objects_done) as f64 / secs);
    o.bytes_per_sec = Some(p.bytes_done.saturating_sub(q.bytes_done) as f64 / secs);
    o.rate_window_secs = secs.round() as u64;
    o.eta_secs = o.eta();
}

/// Now, to the second (RFC 3339).
fn now() -> String {
    to_second(time::OffsetDateTime::now_utc())
}

fn to_second(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// An RFC 3339 time from the ledger, to the second for people (as it is, if it is not one).
fn shown_time(at: &str) -> String {
    time::OffsetDateTime::parse(at, &Rfc3339).map_or_else(|_| at.to_owned(), to_second)
}

/// A token cancelled at the first SIGINT or SIGTERM.
fn interrupted() -> CancellationToken {
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        s.cancel();
    });
    stop
}

fn print_status(all: &[Overview], one: bool, json: bool, region: &str) {
    if json {
        let v = if one {
            serde_json::to_value(&all[0])
        } else {
            serde_json::to_value(all)
        };
        println!("{}", v.unwrap_or_default());
        return;
    }
    if all.is_empty() {
        println!("no transfers in {region}");
        return;
    }
    if one {
        print!("{}", detail(&all[0]));
    } else {
        print!("{}", table(all));
    }
}

fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn rate(o: &Overview) -> String {
    match (o.bytes_per_sec, o.objects_per_sec) {
        (Some(b), Some(n)) => format!("{}/s, {n:.1} objects/s", human_bytes(b as u64)),
        (Some(b), None) => format!("{}/s", human_bytes(b as u64)),
        (None, Some(n)) => format!("{n:.1} objects/s"),
        (None, None) => "-".to_owned(),
    }
}

fn last_run(o: &Overview) -> String {
    let p = &o.progress;
    match (
        p.last_finder_run.as_deref().map(shown_time),
        &p.finder_error,
    ) {
        (None, _) => "none yet".to_owned(),
        (Some(at), Some(e)) => format!("{at}, failed: {e}"),
        (Some(at), None) if p.finder_finished => format!("{at}, listing finished"),
        (Some(at), None) => format!("{at}, listing"),
    }
}

/// One transfer, in full.
fn detail(o: &Overview) -> String {
    let p = &o.progress;
    let mut s = format!("{}: {}\n", o.name, o.status.as_str());
    s += &format!(
        "  objects   found {} ({})  done {} ({})  pending {} ({})  failed {}  gone {}\n",
        count(p.objects_found),
        human_bytes(p.bytes_found),
        count(p.objects_done),
        human_bytes(p.bytes_done),
        count(o.pending_objects),
        human_bytes(o.pending_bytes),
        count(p.objects_failed),
        count(p.objects_gone)
    );
    s += &format!(
        "  queue     {} waiting, {} in flight, {} dead letters\n",
        count(p.queue_visible),
        count(p.queue_in_flight),
        count(p.dead_letters)
    );
    s += &format!(
        "  fleet     {} of {} workers in service, {}\n",
        o.workers,
        o.workers_desired,
        if o.finders > 0 {
            "finder running"
        } else {
            "finder idle"
        }
    );
    let eta = o
        .eta_secs
        .map(|e| format!(", ETA {}", duration(e)))
        .unwrap_or_default();
    if o.bytes_per_sec.is_some() || o.objects_per_sec.is_some() {
        s += &format!(
            "  rate      {} over the last {}{eta}\n",
            rate(o),
            duration(o.rate_window_secs)
        );
    } else {
        s += &format!(
            "  rate      - (nothing copied in the last {})\n",
            duration(o.rate_window_secs)
        );
    }
    s += &format!("  last run  {}\n", last_run(o));
    if !o.missing.is_empty() {
        s += &format!("  missing   {}\n", o.missing.join(", "));
    }
    if p.dead_letters > 0 || p.objects_failed > 0 {
        s += &format!(
            "  next      `dth failures {}` lists what failed; `dth retry {}` sends dead letters back\n",
            o.name, o.name
        );
    }
    s
}

/// Every transfer, a line each.
fn table(all: &[Overview]) -> String {
    let head = [
        "TRANSFER", "STATUS", "DONE", "PENDING", "FAILED", "DEAD", "QUEUE", "WORKERS", "RATE",
        "ETA",
    ];
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|o| {
            let p = &o.progress;
            vec![
                o.name.clone(),
                o.status.as_str().to_owned(),
                format!("{} ({})", count(p.objects_done), human_bytes(p.bytes_done)),
                format!(
                    "{} ({})",
                    count(o.pending_objects),
                    human_bytes(o.pending_bytes)
                ),
                count(p.objects_failed),
                count(p.dead_letters),
                format!("{}/{}", count(p.queue_visible), count(p.queue_in_flight)),
                format!("{}/{}", o.workers, o.workers_desired),
                o.bytes_per_sec
                    .map_or("-".to_owned(), |b| format!("{}/s", human_bytes(b as u64))),
                o.eta_secs.map_or("-".to_owned(), duration),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l + "\n"
    };
    let mut s = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        s += &line(r);
    }
    s
}

async fn failures(a: FailuresArgs) -> Result<()> {
    let (cp, name) = connect(&a.target, a.name.as_deref()).await?;
    let name = need_name(name)?;
    let n = Names::new(&name);
    let ledger = DynamoLedger::new(cp.dynamodb.clone(), &n.table);
    let run = match a.run {
        Some(r) => r,
        None => match ledger.latest_run().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                if !a.target.json {
                    println!("{name}: no run yet");
                }
                return Ok(());
            }
            Err(e) if e.is_not_found() => {
                return Err(Error::new(
                    dth_core::ErrorKind::NotFound,
                    format!(
                        "no transfer named {name:?} in {}: its ledger {} does not exist",
                        region_of(&cp),
                        n.table
                    ),
                ))
            }
            Err(e) => return Err(e),
        },
    };
    let mut shown = 0u64;
    let mut start = None;
    let limit = if a.limit == 0 { u64::MAX } else { a.limit };
    loop {
        let (rows, next) = ledger.failures_page(&run, start).await?;
        for r in rows {
            if shown == limit {
                println!(
                    "... more: `dth failures {name} --limit 0` shows them all (the run has {} failed)",
                    ledger.summary(&run).await?.map_or(0, |s| s.objects_failed)
                );
                return Ok(());
            }
            shown += 1;
            if a.target.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "run": run, "key": r.key, "size": r.size, "attempt": r.attempt,
                        "error": r.error,
                    })
                );
            } else {
                println!(
                    "{}  (attempt {}, {})\n    {}",
                    r.key,
                    r.attempt,
                    human_bytes(r.size),
                    r.error.as_deref().unwrap_or("no error recorded")
                );
            }
        }
        start = next;
        if start.is_none() {
            break;
        }
    }
    if shown == 0 && !a.target.json {
        println!("{name}: nothing failed in run {run}");
    }
    Ok(())
}

async fn retry(a: RetryArgs) -> Result<()> {
    let (cp, name) = connect(&a.target, a.name.as_deref()).await?;
    let name = need_name(name)?;
    let n = Names::new(&name);
    let (queue, dlq) = tokio::join!(
        status::queue(&cp.sqs, &n.queue),
        status::queue(&cp.sqs, &n.dlq)
    );
    let missing = |q: &str| {
        Error::new(
            dth_core::ErrorKind::NotFound,
            format!(
                "no transfer named {name:?} in {}: queue {q} does not exist",
                region_of(&cp)
            ),
        )
    };
    let queue = queue?.ok_or_else(|| missing(&n.queue))?;
    let dlq = dlq?.ok_or_else(|| missing(&n.dlq))?;
    let waiting = dlq.visible + dlq.in_flight;
    let stop = interrupted();
    let moved = if waiting == 0 {
        redrive::Moved {
            moved: 0,
            method: redrive::Method::OneByOne,
            interrupted: false,
        }
    } else {
        redrive::retry_dead_letters(&cp.sqs, &dlq, &queue, &stop).await?
    };
    if a.target.json {
        println!(
            "{}",
            serde_json::json!({"transfer": name, "dead_letters": waiting, "moved": moved.moved,
                "method": moved.method, "interrupted": moved.interrupted})
        );
    } else if waiting == 0 {
        println!("{name}: no dead letters");
    } else {
        let how = match moved.method {
            redrive::Method::MoveTask => "SQS message move task",
            redrive::Method::OneByOne => "received, sent and deleted in batches",
        };
        println!(
            "{name}: moved {} jobs from {} back to {} ({how}){}",
            moved.moved,
            n.dlq,
            n.queue,
            if moved.interrupted {
                "; interrupted: the rest stay dead-lettered"
            } else {
                ""
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_times_are_shown_to_the_second() {
        assert_eq!(
            shown_time("2026-12-07T10:40:56.965073188Z"),
            "2026-12-07T10:40:56Z"
        );
        assert_eq!(shown_time("20261207T104056Z-d4ad"), "20261207T104056Z-d4ad");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("photos-2026").is_ok());
        for bad in ["", "Photos", "a b", "-x", "x".repeat(41).as_str()] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(340), "5m40s");
        assert_eq!(duration(7200), "2h00m");
    }

    #[test]
    fn a_rate_between_readings_only_where_the_metrics_have_none() {
        let mut prev = Overview::default();
        prev.progress.last_finder_run = Some("r1".into());
        prev.progress.objects_done = 10;
        prev.progress.bytes_done = 1000;
        let mut o = prev.clone();
        o.progress.objects_done = 30;
        o.progress.bytes_done = 6000;
        o.pending_objects = 5;
        o.pending_bytes = 500;
        rate_between(&mut o, &prev, Duration::from_secs(10));
        assert_eq!(
            (o.objects_per_sec, o.bytes_per_sec),
            (Some(2.0), Some(500.0))
        );
        assert_eq!((o.rate_window_secs, o.eta_secs), (10, Some(1)));
        let mut other_run = o.clone();
        other_run.progress.last_finder_run = Some("r2".into());
        other_run.bytes_per_sec = None;
        rate_between(&mut other_run, &prev, Duration::from_secs(10));
        assert_eq!(other_run.bytes_per_sec, None);
    }

    #[test]
    fn the_table_lines_up() {
        let a = Overview {
            name: "photos".into(),
            status: Status::Syncing,
            pending_objects: 3100,
            ..Default::default()
        };
        let b = Overview {
            name: "logs-archive".into(),
            status: Status::InSync,
            ..Default::default()
        };
        let t = table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        let col = lines[0].find("STATUS").unwrap();
        assert_eq!(&lines[1][col..col + 7], "syncing", "{t}");
        assert_eq!(&lines[2][col..col + 7], "in_sync", "{t}");
    }
}
