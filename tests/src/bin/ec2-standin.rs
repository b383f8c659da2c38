//! `ec2-standin`: play EC2 for the Auto Scaling groups in a local AWS stand-in (moto), which stores groups
//! and launch templates but runs nothing. See `dth_tests::ec2` for the rules it follows. Needs root (each
//! instance is a chroot in its own mount and PID namespaces).
//!
//! ```sh
//! ec2-standin run --endpoint http://127.0.0.1:5000 --region us-east-1 --log-dir /tmp/ec2 \
//!     --autoscaling-listen 127.0.0.1:5001
//! ec2-standin fire-schedule --endpoint http://127.0.0.1:5000 --region us-east-1 --asg dth-xyz-finder
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dth_tests::ec2::{self, Options};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "ec2-standin",
    about = "Run the instances of the Auto Scaling groups of a local AWS stand-in from their launch templates"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Keep DesiredCapacity instances running for every tagged group, booted from its launch template, until
    /// SIGTERM / SIGINT (which power them all off).
    Run {
        /// Auto Scaling and EC2 endpoint.
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        region: String,
        /// Where instance consoles (`<group>-<n>.log`) and roots go.
        #[arg(long)]
        log_dir: PathBuf,
        /// Where the stand-in's Auto Scaling API listens (moto's, plus the lifecycle and health calls moto
        /// lacks): point the provider's `autoscaling` endpoint here.
        #[arg(long, default_value = "127.0.0.1:0")]
        autoscaling_listen: SocketAddr,
        /// Only groups with this tag key are run.
        #[arg(long, default_value = ec2::DEFAULT_TAG_KEY)]
        tag_key: String,
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
            log_dir,
            autoscaling_listen,
            tag_key,
        } => {
            let mut opts = Options::new(endpoint, region, log_dir);
            opts.tag_key = tag_key;
            let stop = CancellationToken::new();
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    let cancel = stop.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = term.recv() => tracing::info!("SIGTERM: powering every instance off"),
                            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: powering every instance off"),
                        }
                        cancel.cancel();
                    });
                    // The loop runs on this (the main) thread, so every instance is forked from a thread that
                    // lives as long as the process: their parent-death signal fires only when we are gone.
                    match tokio::net::TcpListener::bind(autoscaling_listen).await {
                        Ok(listener) => {
                            if let Ok(a) = listener.local_addr() {
                                println!("autoscaling endpoint http://{a}");
                            }
                            ec2::run(opts, listener, stop).await
                        }
                        Err(e) => Err(anyhow::anyhow!("listening on {autoscaling_listen}: {e}")),
                    }
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
