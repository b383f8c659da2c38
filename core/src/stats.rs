//! Progress counters. Components send [`StatEvent`]s through a channel; one aggregator owns the totals,
//! draws a progress bar when stderr is a terminal, and logs a progress line now and then otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy)]
pub enum StatEvent {
    /// The finder listed a source object.
    Scanned,
    /// The finder decided an object must move.
    Pending {
        bytes: u64,
    },
    /// A worker copied an object.
    Copied {
        bytes: u64,
    },
    /// Bytes moved (parts included), for the rate.
    Bytes(u64),
    Failed,
    Gone,
    Skipped,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Totals {
    pub scanned: u64,
    pub pending: u64,
    pub pending_bytes: u64,
    pub copied: u64,
    pub copied_bytes: u64,
    pub bytes_moved: u64,
    pub failed: u64,
    pub gone: u64,
    pub skipped: u64,
}

impl Totals {
    fn apply(&mut self, e: StatEvent) {
        match e {
            StatEvent::Scanned => self.scanned += 1,
            StatEvent::Pending { bytes } => {
                self.pending += 1;
                self.pending_bytes += bytes;
            }
            StatEvent::Copied { bytes } => {
                self.copied += 1;
                self.copied_bytes += bytes;
            }
            StatEvent::Bytes(n) => self.bytes_moved += n,
            StatEvent::Failed => self.failed += 1,
            StatEvent::Gone => self.gone += 1,
            StatEvent::Skipped => self.skipped += 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Stats(mpsc::UnboundedSender<StatEvent>);

impl Stats {
    pub fn send(&self, e: StatEvent) {
        let _ = self.0.send(e);
    }

    /// A sink that goes nowhere (tests).
    pub fn discard() -> Self {
        let (tx, _rx) = mpsc::unbounded_channel();
        Stats(tx)
    }
}

/// Start the aggregator; it returns the totals once every [`Stats`] clone is dropped.
pub fn spawn(label: &'static str) -> (Stats, tokio::task::JoinHandle<Totals>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        let mut t = Totals::default();
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let start = Instant::now();
        let mut last_log = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => t.apply(e),
                    None => break,
                },
                _ = tick.tick() => {
                    let line = render(label, &t, start.elapsed());
                    if let Some(b) = &bar {
                        b.set_message(line);
                    } else if last_log.elapsed() >= Duration::from_secs(30) {
                        tracing::info!(target: "dth::progress", "{line}");
                        last_log = Instant::now();
                    }
                }
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        t
    });
    (Stats(tx), handle)
}

fn render(label: &str, t: &Totals, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    format!(
        "{label}: scanned {} | pending {} ({}) | copied {} ({}, {}/s) | failed {} | gone {}",
        t.scanned,
        t.pending,
        human_bytes(t.pending_bytes),
        t.copied,
        human_bytes(t.copied_bytes),
        human_bytes((t.bytes_moved as f64 / secs) as u64),
        t.failed,
        t.gone
    )
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
