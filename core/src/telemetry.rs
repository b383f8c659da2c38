//! Logging: tracing to stderr, human-readable or JSON, filtered by `RUST_LOG` (default `info`), with the AWS
//! SDK's credential-bearing trace lines dropped whatever `RUST_LOG` asks for. While a progress bar is shown,
//! lines are written above it.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, FilterExt, FilterFn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Crates of the AWS SDK whose debug and trace lines carry credentials or signed requests: canonical requests
/// with `x-amz-security-token`, `Authorization` headers, credentials as they are loaded, request and response
/// bodies (a Secrets Manager answer is a secret).
pub const SENSITIVE_TARGETS: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_smithy_http",
    "aws_sigv4",
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sdk_secretsmanager",
    "aws_sdk_sts",
    "aws_sdk_sso",
    "aws_sdk_ssooidc",
    "hyper",
    "hyper_util",
    "h2",
];

/// Whether `target` (a module path) is one of [`SENSITIVE_TARGETS`] or below one.
pub fn is_sensitive(target: &str) -> bool {
    SENSITIVE_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// A filter that lets the sensitive crates say no more than `info`, whatever the level asked for: the one filter
/// the finder, the worker, the `dth` tools and the provider all log through.
pub fn credential_safe() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(|m| !(is_sensitive(m.target()) && *m.level() > Level::INFO))
}

/// The progress bar on screen, if any.
static BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Write log lines above `bar` from now on (none: straight to stderr again).
pub fn show_bar(bar: Option<indicatif::ProgressBar>) {
    if let Ok(mut shown) = BAR.lock() {
        *shown = bar;
    }
}

/// Stderr, with the bar (if one is shown) taken off while a line is written and drawn again below it.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Log to stderr through `filter` and [`credential_safe`].
pub fn init_with(filter: EnvFilter, format: LogFormat, ansi: bool) {
    let safe = filter.and(credential_safe());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| Stderr)
        .with_ansi(ansi);
    let layer = match format {
        LogFormat::Text => fmt.with_filter(safe).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(safe).boxed(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    init_with(filter, format, std::io::stderr().is_terminal());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_targets_and_only_them() {
        assert!(is_sensitive("aws_sigv4"));
        assert!(is_sensitive("aws_sigv4::http_request::sign"));
        assert!(is_sensitive("aws_smithy_runtime::client::orchestrator"));
        assert!(!is_sensitive("aws_sigv4x"));
        assert!(!is_sensitive("dth_core::worker"));
        assert!(!is_sensitive("aws_sdk_s3::operation"));
    }

    #[test]
    fn lines_go_around_a_shown_bar() {
        let bar = indicatif::ProgressBar::hidden();
        show_bar(Some(bar.clone()));
        assert!(Stderr.write_all(b"").is_ok());
        show_bar(None);
        assert!(Stderr.write_all(b"").is_ok());
    }
}
