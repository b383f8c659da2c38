//! What ran: the version, git revision and target of this binary, for `--version`, the JSON reports and the
//! first log line, so that tests and operators can tell which build an instance is running.

/// The workspace version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The full git commit the binary was built from (`unknown` outside a git checkout).
pub const REVISION: &str = env!("DTH_REVISION");
/// The target triple, e.g. `aarch64-unknown-linux-musl`.
pub const TARGET: &str = env!("DTH_TARGET");
/// `--version` text after the binary's name: `0.1.0 (rev 0123abcd…, aarch64-unknown-linux-musl)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("DTH_REVISION"),
    ", ",
    env!("DTH_TARGET"),
    ")"
);

/// The CPU architecture the binary runs as (`x86_64`, `aarch64`).
pub fn arch() -> &'static str {
    std::env::consts::ARCH
}

/// `{"version", "revision", "target", "arch"}` for a JSON report.
pub fn json() -> serde_json::Value {
    serde_json::json!({
        "version": VERSION,
        "revision": REVISION,
        "target": TARGET,
        "arch": arch(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn describes_this_build() {
        assert!(super::LONG_VERSION.starts_with(super::VERSION));
        assert!(super::TARGET.contains(super::arch()), "{}", super::TARGET);
        assert!(!super::REVISION.is_empty());
    }
}
