//! `ec2-standin`: play EC2 for the Auto Scaling groups in a local AWS stand-in (moto), which stores groups
//! and launch templates but runs nothing. See `dth_tests::ec2` for the rules it follows.
//!
//! ```sh
//! ec2-standin run --endpoint http://127.0.0.1:5000 --region us-east-1 --bin-dir target/debug --log-dir /tmp/ec2
//! ec2-standin fire-schedule --endpoint http://127.0.0.1:5000 --region us-east-1 --asg dth-xyz-finder
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dth_tests::ec2::{self, Options};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "ec2-standin",
    about = "Run finder/worker processes for the Auto Scaling groups of a local AWS stand-in"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Keep DesiredCapacity processes running for every tagged group, from its launch template's user data,
    /// until SIGTERM / SIGINT (which stop them all).
    Run {
        /// Auto Scaling and EC2 endpoint.
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        region: String,
        /// Directory with the `finder` and `worker` binaries.
        #[arg(long)]
        bin_dir: PathBuf,
        /// Where process logs (`<group>-<n>.log`) and job configs go.
        #[arg(long)]
        log_dir: PathBuf,
        /// Only groups with this tag key are run.
        #[arg(long, default_value = ec2::DEFAULT_TAG_KEY)]
        tag_key: String,
        /// Seconds between a SIGTERM and a SIGKILL.
        #[arg(long, default_value_t = 60)]
        grace_secs: u64,
    },
    /// Apply a group's scheduled action now (moto stores schedules but never fires them).
    FireSchedule {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        asg: String,
        /// The scheduled action's name (default: the group's first).
        #[arg(long)]
        action: Option<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let result = match Args::parse().command {
        Cmd::Run {
            endpoint,
            region,
            bin_dir,
            log_dir,
            tag_key,
            grace_secs,
        } => {
            let mut opts = Options::new(endpoint, region, bin_dir, log_dir);
            opts.tag_key = tag_key;
            opts.grace = Duration::from_secs(grace_secs);
            let stop = CancellationToken::new();
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    let cancel = stop.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = term.recv() => tracing::info!("SIGTERM: stopping every process"),
                            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping every process"),
                        }
                        cancel.cancel();
                    });
                    // The loop runs on this (the main) thread, so every child is forked from a thread that
                    // lives as long as the process: their parent-death signal fires only when we are gone.
                    ec2::run(opts, stop).await
                }
                Err(e) => Err(anyhow::anyhow!("installing the SIGTERM handler: {e}")),
            }
        }
        Cmd::FireSchedule {
            endpoint,
            region,
            asg,
            action,
        } => {
            let (client, _) = ec2::clients(&endpoint, &region, None).await;
            ec2::fire_schedule(&client, &asg, action.as_deref())
                .await
                .map(|f| {
                    println!(
                        "fired {} on {asg}: min {:?} max {:?} desired {:?}",
                        f.action, f.min, f.max, f.desired
                    );
                })
        }
    };
    if let Err(e) = result {
        tracing::error!("{e:#}");
        eprintln!("ec2-standin: {e:#}");
        std::process::exit(1);
    }
}
