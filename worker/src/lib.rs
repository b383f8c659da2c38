//! `worker`: take jobs from the queue and copy them until stopped (SIGTERM / SIGINT) or, if asked, idle.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dth_core::cli::CommonArgs;
use dth_core::config::TransferConfig;
use dth_core::limit::Limits;
use dth_core::worker::{RunOptions, Worker};
use dth_core::{
    aws, fleet, images, ledger::DynamoLedger, metrics, queue::SqsQueue, stats, store::ObjectStore,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "worker", version = dth_core::build_info::LONG_VERSION, about = "Copy objects from the job queue")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Override worker.concurrency (objects at once).
    #[arg(long, env = "DTH_WORKER_CONCURRENCY")]
    concurrency: Option<u32>,
    /// Override worker.part_concurrency (parts of one object at once).
    #[arg(long)]
    part_concurrency: Option<u32>,
    /// Exit after the queue has been empty for this many seconds.
    #[arg(long, value_name = "SECS")]
    exit_when_idle: Option<u64>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The termination lifecycle hook of the worker's Auto Scaling group. When scale-in picks this instance
    /// (the instance metadata's target lifecycle state becomes `Terminated`) the worker takes no new jobs,
    /// finishes or releases the ones in flight, completes the hook, and waits to be stopped.
    #[arg(long, value_name = "NAME", env = "DTH_LIFECYCLE_HOOK")]
    lifecycle_hook: Option<String>,
    /// The worker's Auto Scaling group (with --lifecycle-hook).
    #[arg(long, value_name = "NAME", env = "DTH_AUTO_SCALING_GROUP")]
    auto_scaling_group: Option<String>,
    /// This instance's id (with --lifecycle-hook).
    #[arg(long, value_name = "ID", env = "DTH_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Serve the worker's metrics in Prometheus text format at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR", env = "DTH_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Publish no metrics to CloudWatch, even when the job config names the transfer (`metrics.transfer`).
    #[arg(long)]
    no_cloudwatch_metrics: bool,
}

/// Where a termination lifecycle action is completed: the hook, the group and this instance.
struct Termination {
    hook: String,
    group: String,
    instance: String,
}

impl Args {
    fn termination(&self) -> dth_core::Result<Option<Termination>> {
        let Some(hook) = self.lifecycle_hook.clone().filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let need = |v: &Option<String>, flag: &str| {
            v.clone()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| dth_core::Error::config(flag, "is required with --lifecycle-hook"))
        };
        Ok(Some(Termination {
            hook,
            group: need(&self.auto_scaling_group, "--auto-scaling-group")?,
            instance: need(&self.instance_id, "--instance-id")?,
        }))
    }
}

/// How often a worker asks the instance metadata whether scale-in picked its instance.
const LIFECYCLE_POLL: Duration = Duration::from_secs(5);

/// The `worker` command: parse `args` (the first is the program name), run, and exit with 0, 1 (failed) or
/// 2 (invalid configuration). Shared by the `worker` binary and the image's multi-call `dth`.
pub fn main_from<I, T>(args: I) -> !
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    dth_core::cli::exit_with("worker", run(Args::parse_from(args)))
}

async fn run(args: Args) -> dth_core::Result<()> {
    let mut cfg = args.common.load()?;
    if let Some(c) = args.concurrency {
        cfg.worker_mut().concurrency = c;
    }
    if let Some(c) = args.part_concurrency {
        cfg.worker_mut().part_concurrency = c;
    }
    cfg.validate()?;
    let termination = args.termination()?;
    let cp = aws::ControlPlane::new(cfg.aws()).await;
    let limits = Arc::new(Limits::new(
        cfg.worker().bandwidth_limit,
        cfg.worker().requests_per_second,
    ));
    let ledger = DynamoLedger::new(cp.dynamodb.clone(), &cfg.ledger().table);
    ledger.check().await?;
    let queue = SqsQueue::new(cp.sqs.clone(), &cfg.queue().url);
    let (stats, totals) = stats::spawn(stats::Role::Worker, args.common.progress());
    let cfg_transfer = cfg.metrics().map(|m| m.transfer.clone());
    let worker = match cfg {
        TransferConfig::Objects(cfg) => {
            let cfg = Arc::new(cfg);
            let src: Arc<dyn ObjectStore> =
                Arc::new(aws::source_store(&cfg, &cp, limits.clone()).await);
            let dst: Arc<dyn ObjectStore> =
                Arc::new(aws::destination_store(&cfg, &cp, limits).await);
            Worker::new(cfg, src, dst, queue, ledger, stats)?
        }
        TransferConfig::Images(cfg) => {
            let cfg = Arc::new(cfg);
            let sides = images::connect(&cfg, &cp, Some(limits)).await?;
            let engine = Arc::new(images::ImageEngine::new(cfg, &sides, stats.clone()));
            Worker::for_images(engine, queue, ledger, stats)
        }
    };

    let shutdown = CancellationToken::new();
    // A stop asked by a signal (systemctl stop, docker stop, Ctrl-C), apart from one the group asked for.
    let stop_requested = CancellationToken::new();
    {
        // Installed before the first job is taken, so a stop never finds the default (fatal) disposition.
        use tokio::signal::unix::{signal, SignalKind};
        let watch = |kind| {
            signal(kind).map_err(|e| {
                dth_core::Error::with_source(
                    dth_core::ErrorKind::Other,
                    "installing a signal handler",
                    e,
                )
            })
        };
        let (mut term, mut int) = (
            watch(SignalKind::terminate())?,
            watch(SignalKind::interrupt())?,
        );
        let (shutdown, stop_requested) = (shutdown.clone(), stop_requested.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stop requested: taking no new jobs");
            stop_requested.cancel();
            shutdown.cancel();
        });
    }
    let lifecycle = fleet::Lifecycle::new();
    let picked = CancellationToken::new();
    if termination.is_some() {
        let (lifecycle, shutdown, picked) = (lifecycle.clone(), shutdown.clone(), picked.clone());
        tokio::spawn(async move {
            lifecycle.terminating(LIFECYCLE_POLL).await;
            tracing::info!("scale-in picked this instance: taking no new jobs");
            picked.cancel();
            shutdown.cancel();
        });
    }
    // Metrics: CloudWatch once a minute when the config names the transfer, Prometheus when asked. Both stop
    // after the worker does; the CloudWatch publisher sends what the last minute counted first.
    let metrics_stop = CancellationToken::new();
    let label = cfg_transfer.clone().unwrap_or_else(|| "unnamed".to_owned());
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            dth_core::Error::config("--metrics-addr", format!("cannot listen on {addr}: {e}"))
        })?;
        tracing::info!(%addr, "serving metrics at /metrics");
        tokio::spawn(metrics::serve(listener, label, metrics_stop.clone()));
    }
    let publisher = match (&cfg_transfer, args.no_cloudwatch_metrics) {
        (Some(t), false) => Some(tokio::spawn(metrics::publish_every_minute(
            cp.cloudwatch.clone(),
            t.clone(),
            metrics_stop.clone(),
        ))),
        _ => None,
    };
    let opts = RunOptions {
        exit_when_idle: args.exit_when_idle.map(Duration::from_secs),
    };
    let report = worker.run(shutdown, opts).await;
    metrics_stop.cancel();
    if let Some(p) = publisher {
        let _ = p.await;
    }
    // The bar finished and the last record out, failed or not.
    let t = totals.await.unwrap_or_default();
    let report = report?;
    if let Some(t) = &termination {
        // Jobs are finished or released: the group may take the instance. A signal may have come first
        // (the instance shutting down): the action is then completed if the group is waiting on it.
        let waiting = picked.is_cancelled()
            || lifecycle.target_state().await.ok().as_deref() == Some(fleet::TERMINATED);
        if waiting {
            fleet::complete_termination(&cp.autoscaling, &t.group, &t.hook, &t.instance).await?;
        }
        if !stop_requested.is_cancelled() {
            // Exiting would only have systemd start a worker on an instance about to go.
            tracing::info!("waiting for the instance to stop");
            stop_requested.cancelled().await;
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"report": report, "totals": t, "build": dth_core::build_info::json()})
        );
    } else {
        tracing::info!(
            messages = report.messages,
            copied = t.copied,
            bytes = t.copied_bytes,
            failed = t.failed,
            gone = t.gone,
            control_plane_calls = report.control_plane_calls,
            s3_requests = report.requests.s3,
            "worker finished"
        );
    }
    Ok(())
}
