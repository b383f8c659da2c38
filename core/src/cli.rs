//! What both binaries share on the command line: where the config comes from, logging, progress, exit codes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::TransferConfig;
use crate::error::{Error, ErrorKind};
use crate::stats::Progress;
use crate::telemetry::LogFormat;

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Job configuration file (JSON).
    #[arg(long, short = 'c', env = "DTH_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    /// Job configuration as inline JSON (used when --config is not given).
    #[arg(long = "config-json", env = "DTH_CONFIG", hide_env_values = true)]
    pub config_json: Option<String>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "DTH_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// No progress bar and no progress records (the log otherwise stays as RUST_LOG sets it).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Seconds between progress records, logged when no bar is drawn (stderr not a terminal, or JSON logs);
    /// 0: none.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        env = "DTH_PROGRESS_SECS"
    )]
    pub progress_interval: u64,
}

impl CommonArgs {
    pub fn load(&self) -> crate::Result<TransferConfig> {
        crate::telemetry::init(self.log_format);
        tracing::info!(
            version = crate::build_info::VERSION,
            revision = crate::build_info::REVISION,
            target = crate::build_info::TARGET,
            "dth starting"
        );
        TransferConfig::load(self.config.as_deref(), self.config_json.as_deref())
    }

    /// How progress is shown: a bar when stderr is a terminal and the log is text, else records.
    pub fn progress(&self) -> Progress {
        if self.quiet {
            Progress::Off
        } else if self.log_format == LogFormat::Text && std::io::stderr().is_terminal() {
            Progress::Bar
        } else if self.progress_interval == 0 {
            Progress::Off
        } else {
            Progress::Records(Duration::from_secs(self.progress_interval))
        }
    }
}

/// Exit codes: 0 done, 1 failed, 2 invalid configuration.
pub fn exit_code(e: &Error) -> i32 {
    if e.kind() == ErrorKind::Config {
        2
    } else {
        1
    }
}

/// Run a command's `future` on a multi-threaded runtime and exit the process: 0 when it succeeds, otherwise
/// the error on stderr (and in the log) with [`exit_code`]. What `finder` and `worker` (and the image's
/// multi-call `dth`) do after parsing their arguments.
pub fn exit_with<F>(command: &str, future: F) -> !
where
    F: std::future::Future<Output = crate::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{command}: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome = runtime.block_on(future);
    drop(runtime);
    if let Err(e) = outcome {
        tracing::error!("{e}");
        eprintln!("{command}: {e}");
        std::process::exit(exit_code(&e));
    }
    std::process::exit(0)
}
