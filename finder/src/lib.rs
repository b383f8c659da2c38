//! `finder`: list source and destination, enqueue what must move (or, with --dry-run, show it).

use std::sync::Arc;

use clap::Parser;
use dth_core::cli::CommonArgs;
use dth_core::config::TransferConfig;
use dth_core::finder::{self, Sink};
use dth_core::limit::Limits;
use dth_core::{
    aws, fleet, images, ledger::DynamoLedger, queue::SqsQueue, stats, store::ObjectStore,
};

#[derive(Debug, Parser)]
#[command(
    name = "finder",
    version = dth_core::build_info::LONG_VERSION,
    about = "Find objects that must be transferred and enqueue them as jobs"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Print what would move (count, bytes, first keys) and enqueue nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run id to record in the ledger (default: time-based).
    #[arg(long)]
    run_id: Option<String>,
    /// Override finder.depth.
    #[arg(long)]
    depth: Option<u32>,
    /// Override finder.parallelism.
    #[arg(long)]
    parallelism: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// After a successful run (not a dry run), set this Auto Scaling group's desired capacity to 0: how a
    /// finder started by a scheduled action on its group ends the run.
    #[arg(long, value_name = "NAME", env = "DTH_SCALE_IN_ASG")]
    scale_in_asg: Option<String>,
}

/// The `finder` command: parse `args` (the first is the program name), run, and exit with 0, 1 (failed) or
/// 2 (invalid configuration). Shared by the `finder` binary and the image's multi-call `dth`.
pub fn main_from<I, T>(args: I) -> !
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    dth_core::cli::exit_with("finder", run(Args::parse_from(args)))
}

async fn run(args: Args) -> dth_core::Result<()> {
    let loaded = args.common.load()?;
    if args.scale_in_asg.as_deref() == Some("") {
        return Err(dth_core::Error::config(
            "--scale-in-asg",
            "must not be empty",
        ));
    }
    let mut cfg = match loaded {
        TransferConfig::Objects(cfg) => cfg,
        TransferConfig::Images(cfg) => return run_images(args, cfg).await,
    };
    if let Some(d) = args.depth {
        cfg.finder.depth = d;
    }
    if let Some(p) = args.parallelism {
        cfg.finder.parallelism = p;
    }
    cfg.validate()?;
    let cp = aws::ControlPlane::new(&cfg.aws).await;
    let limits = Arc::new(Limits::new(
        cfg.worker.bandwidth_limit,
        cfg.worker.requests_per_second,
    ));
    let src: Arc<dyn ObjectStore> = Arc::new(aws::source_store(&cfg, &cp, limits.clone()).await);
    let dst: Arc<dyn ObjectStore> = Arc::new(aws::destination_store(&cfg, &cp, limits).await);
    let json = args.json;
    let progress = args.common.progress();
    recorded_run(
        &args,
        &cp,
        &cfg.ledger.table,
        &cfg.queue.url,
        |sink, run_id| async {
            let roots = finder::roots(&cfg, &cp.s3).await?;
            let (stats, totals) = stats::spawn(stats::Role::Finder, progress);
            let report = finder::run(&cfg, roots, src, dst, sink, Some(run_id), stats).await;
            // The bar finished and the last record out, failed or not.
            let _ = totals.await;
            let report = report?;
            let cost = report.dry_run.then(|| plan_cost(&cfg, &cp, &report.counts));
            print_report(&report, cost, json);
            Ok(())
        },
    )
    .await
}

/// An image transfer's run: the same ledger records, failure handling and scale-in as an object transfer's.
async fn run_images(args: Args, mut cfg: dth_core::config::ImageJobConfig) -> dth_core::Result<()> {
    if args.depth.is_some() {
        return Err(dth_core::Error::config(
            "--depth",
            "applies to object transfers; an image transfer lists repositories, not prefixes",
        ));
    }
    if let Some(p) = args.parallelism {
        cfg.finder.parallelism = p;
    }
    cfg.validate()?;
    let cp = aws::ControlPlane::new(&cfg.aws).await;
    let limits = Arc::new(Limits::new(
        cfg.worker.bandwidth_limit,
        cfg.worker.requests_per_second,
    ));
    let json = args.json;
    let progress = args.common.progress();
    recorded_run(
        &args,
        &cp,
        &cfg.ledger.table,
        &cfg.queue.url,
        |sink, run_id| async {
            let sides = images::connect(&cfg, &cp, Some(limits)).await?;
            let (stats, totals) = stats::spawn(stats::Role::Finder, progress);
            let report = images::find(&cfg, &sides, sink, Some(run_id), stats).await;
            let _ = totals.await;
            print_image_report(&report?, json);
            Ok(())
        },
    )
    .await
}

/// What every kind of finder run does around its finding (`find`, given where jobs go and the run id): the sink
/// (the job queue and the ledger, or a dry run), a failed run recorded as such, and the scale-in that ends a
/// scheduled run.
async fn recorded_run<F, Fut>(
    args: &Args,
    cp: &aws::ControlPlane,
    table: &str,
    queue_url: &str,
    find: F,
) -> dth_core::Result<()>
where
    F: FnOnce(Sink, String) -> Fut,
    Fut: std::future::Future<Output = dth_core::Result<()>>,
{
    let sink = if args.dry_run {
        Sink::DryRun
    } else {
        let ledger = DynamoLedger::new(cp.dynamodb.clone(), table);
        ledger.check().await?;
        Sink::Queue {
            queue: SqsQueue::new(cp.sqs.clone(), queue_url),
            ledger,
        }
    };
    let run_id = args.run_id.clone().unwrap_or_else(finder::new_run_id);
    let ledger = match &sink {
        Sink::Queue { ledger, .. } => Some(ledger.clone()),
        Sink::DryRun => None,
    };
    let outcome = find(sink, run_id.clone()).await;
    if let (Err(e), Some(ledger)) = (&outcome, &ledger) {
        // What `terraform plan` shows: the run failed, and why.
        if let Err(record) = ledger.fail_run(&run_id, &e.to_string()).await {
            tracing::error!("recording the failed run {run_id} in the ledger: {record}");
        }
    }
    // A scheduled run ends here whether it succeeded or not (after the report is out: a group that cannot be
    // scaled in must not hide what the run did); the next scheduled action starts a new one.
    let scaled = match (&args.scale_in_asg, &ledger) {
        (Some(asg), Some(_)) => fleet::scale_in(&cp.autoscaling, asg).await,
        _ => Ok(()),
    };
    outcome.and(scaled)
}

/// A report as one JSON line, with the build that made it.
fn print_json(mut value: serde_json::Value) {
    if let Some(fields) = value.as_object_mut() {
        fields.insert("build".into(), dth_core::build_info::json());
    }
    println!("{value}");
}

fn print_image_report(report: &images::ImageFinderReport, json: bool) {
    if json {
        print_json(serde_json::to_value(report).unwrap_or_default());
        return;
    }
    let verb = if report.dry_run {
        "would copy"
    } else {
        "enqueued"
    };
    println!(
        "run {}: looked at {} images; {verb} {} ({} bytes, {}); {} up to date, {} failed; {} repositories created",
        report.run,
        report.scanned,
        report.to_move,
        report.bytes_to_move,
        stats::human_bytes(report.bytes_to_move),
        report.up_to_date,
        report.failed,
        report.repositories_created.len(),
    );
    for i in &report.sample_images {
        println!("  {i}");
    }
    if report.to_move > report.sample_images.len() as u64 {
        println!(
            "  ... and {} more",
            report.to_move - report.sample_images.len() as u64
        );
    }
    for f in &report.failures {
        println!("  FAILED {}: {}", f.image, f.error);
    }
    println!(
        "registry requests: {} to the source, {} to the destination; control-plane calls: {} in {:.1}s",
        report.source_requests, report.destination_requests, report.control_plane_calls, report.seconds
    );
}

/// What moving a dry run's objects would cost: the estimate the provider's plan warning gives.
fn plan_cost(
    cfg: &dth_core::JobConfig,
    cp: &aws::ControlPlane,
    c: &finder::FindCounts,
) -> (f64, String) {
    let here = cp.sdk.region().map_or("us-east-1", |r| r.as_ref());
    let from = cfg.source.region.as_deref().unwrap_or(here);
    let to = cfg.destination.region.as_deref().unwrap_or(here);
    let e = dth_core::cost::estimate(from, cfg.source.kind, to, c.to_move, c.bytes_to_move);
    (e.usd, e.describe(c.to_move, c.bytes_to_move, from, to))
}

fn print_report(report: &finder::FinderReport, cost: Option<(f64, String)>, json: bool) {
    if json {
        let mut v = serde_json::to_value(report).unwrap_or_default();
        if let (Some((usd, text)), Some(o)) = (cost, v.as_object_mut()) {
            o.insert(
                "cost_estimate".into(),
                serde_json::json!({"usd": usd, "description": text}),
            );
        }
        print_json(v);
        return;
    }
    let c = &report.counts;
    let verb = if report.dry_run {
        "would move"
    } else {
        "enqueued"
    };
    println!(
        "run {}: scanned {} objects; {verb} {} objects ({} bytes, {}) in {} jobs; {} up to date, {} filtered, {} archived",
        report.run,
        c.scanned,
        c.to_move,
        c.bytes_to_move,
        stats::human_bytes(c.bytes_to_move),
        report.jobs,
        c.up_to_date,
        c.filtered,
        c.archived
    );
    if report.dry_run {
        for k in &report.sample_keys {
            println!("  {k}");
        }
        if c.to_move > report.sample_keys.len() as u64 {
            println!(
                "  ... and {} more",
                c.to_move - report.sample_keys.len() as u64
            );
        }
        if let Some((_, text)) = cost {
            println!("cost: {text}");
        }
    } else {
        println!(
            "requests: {} S3, {} SQS, {} DynamoDB in {:.1}s",
            report.requests.s3, report.requests.sqs, report.requests.dynamodb, report.seconds
        );
    }
}
