//! `worker`: take jobs from the queue and copy them until stopped (SIGTERM / SIGINT) or, if asked, idle.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dth_core::cli::{exit_code, CommonArgs};
use dth_core::limit::Limits;
use dth_core::worker::{RunOptions, Worker};
use dth_core::{aws, ledger::DynamoLedger, queue::SqsQueue, stats, store::ObjectStore};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "worker", version, about = "Copy objects from the job queue")]
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
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        tracing::error!("{e}");
        eprintln!("worker: {e}");
        std::process::exit(exit_code(&e));
    }
}

async fn run(args: Args) -> dth_core::Result<()> {
    let mut cfg = args.common.load()?;
    if let Some(c) = args.concurrency {
        cfg.worker.concurrency = c;
    }
    if let Some(c) = args.part_concurrency {
        cfg.worker.part_concurrency = c;
    }
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let cp = aws::ControlPlane::new(&cfg.aws).await;
    let limits = Arc::new(Limits::new(
        cfg.worker.bandwidth_limit,
        cfg.worker.requests_per_second,
    ));
    let src: Arc<dyn ObjectStore> = Arc::new(aws::source_store(&cfg, &cp, limits.clone()).await);
    let dst: Arc<dyn ObjectStore> = Arc::new(aws::destination_store(&cfg, &cp, limits).await);
    let ledger = DynamoLedger::new(cp.dynamodb.clone(), &cfg.ledger.table);
    ledger.check().await?;
    let queue = SqsQueue::new(cp.sqs.clone(), &cfg.queue.url);
    let (stats, totals) = stats::spawn("worker");
    let worker = Worker::new(cfg, src, dst, queue, ledger, stats)?;

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stop requested: taking no new jobs");
            shutdown.cancel();
        });
    }
    let opts = RunOptions {
        exit_when_idle: args.exit_when_idle.map(Duration::from_secs),
    };
    let report = worker.run(shutdown, opts).await?;
    let t = totals.await.unwrap_or_default();
    if args.json {
        println!("{}", serde_json::json!({"report": report, "totals": t}));
    } else {
        tracing::info!(
            messages = report.messages,
            copied = t.copied,
            bytes = t.copied_bytes,
            failed = t.failed,
            gone = t.gone,
            control_plane_calls = report.control_plane_calls,
            "worker finished"
        );
    }
    Ok(())
}
