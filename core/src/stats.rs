//! Progress counters. Components send [`StatEvent`]s through a channel; one aggregator owns the totals and shows
//! them as [`Progress`] asks: a bar on a terminal, or a `dth::progress` record now and then through the log.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

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
    /// What there is to copy in all, from a caller that knows: the bar's length and the ETA.
    Total {
        objects: u64,
        bytes: u64,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
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
            StatEvent::Total { .. } => {}
        }
    }

    /// Objects that need no more copying.
    fn done(&self) -> u64 {
        self.copied + self.gone
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

/// Whose counters: what the bar and the records' messages speak of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Objects listed and found to move.
    Finder,
    /// Objects copied, failed and gone, bytes and their rate.
    Worker,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Finder => "finder",
            Role::Worker => "worker",
        }
    }
}

/// How the aggregator shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar on stderr, with log lines written above it.
    Bar,
    /// A `dth::progress` record this often (zero: never), and one when the counting ends.
    Records(Duration),
    Off,
}

/// How often the aggregator samples the counters (and redraws the bar).
const TICK: Duration = Duration::from_millis(500);
/// The span rates are measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Start the aggregator; it returns the totals once every [`Stats`] clone is dropped.
pub fn spawn(role: Role, progress: Progress) -> (Stats, tokio::task::JoinHandle<Totals>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        let mut m = Meter::new(Instant::now());
        let bar = (progress == Progress::Bar).then(|| Bar::new(role, &m.snapshot(m.start)));
        let every = match progress {
            Progress::Records(every) if !every.is_zero() => Some(every),
            _ => None,
        };
        let mut last_record = m.start;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => m.apply(e),
                    None => break,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    m.sample(now);
                    if let Some(b) = &bar {
                        b.draw(role, &m.snapshot(now));
                    }
                    if every.is_some_and(|e| now.saturating_duration_since(last_record) >= e) {
                        m.snapshot(now).record(role, false);
                        last_record = now;
                    }
                }
            }
        }
        let now = Instant::now();
        m.sample(now);
        let last = m.snapshot(now);
        if let Some(b) = &bar {
            b.draw(role, &last);
        }
        if every.is_some() {
            last.record(role, true);
        }
        m.totals
    });
    (Stats(tx), handle)
}

/// What the whole run holds (see [`StatEvent::Total`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Total {
    pub objects: u64,
    pub bytes: u64,
}

/// The aggregator's state: the totals, the known total if any, and recent samples for the rates.
struct Meter {
    totals: Totals,
    total: Option<Total>,
    start: Instant,
    /// Samples, oldest first, spanning at least [`RATE_WINDOW`] once there is that much history.
    window: VecDeque<(Instant, Totals)>,
}

impl Meter {
    fn new(start: Instant) -> Self {
        Meter {
            totals: Totals::default(),
            total: None,
            start,
            window: VecDeque::from([(start, Totals::default())]),
        }
    }

    fn apply(&mut self, e: StatEvent) {
        if let StatEvent::Total { objects, bytes } = e {
            self.total = Some(Total { objects, bytes });
        }
        self.totals.apply(e);
    }

    /// Take a sample, and drop those no longer needed to span the window.
    fn sample(&mut self, now: Instant) {
        self.window.push_back((now, self.totals));
        while let Some((second, _)) = self.window.get(1) {
            if now.saturating_duration_since(*second) < RATE_WINDOW {
                break;
            }
            self.window.pop_front();
        }
    }

    /// Per second, over the samples' span.
    fn rate(&self, count: fn(&Totals) -> u64) -> f64 {
        match (self.window.front(), self.window.back()) {
            (Some((a, first)), Some((b, last))) if b > a => {
                count(last).saturating_sub(count(first)) as f64
                    / b.saturating_duration_since(*a).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        let bytes_per_sec = self.rate(|t| t.bytes_moved);
        let eta_secs = self.total.and_then(|total| {
            // Bytes when the total has them (a large object's bytes move long before it counts as copied).
            let (left, rate) = if total.bytes > 0 {
                let left = total.bytes.saturating_sub(self.totals.copied_bytes);
                (left, bytes_per_sec)
            } else {
                let left = total.objects.saturating_sub(self.totals.done());
                (left, self.rate(Totals::done))
            };
            match left {
                0 => Some(0),
                _ if rate > 0.0 => Some((left as f64 / rate).ceil() as u64),
                _ => None,
            }
        });
        Snapshot {
            totals: self.totals,
            total: self.total,
            bytes_per_sec: bytes_per_sec as u64,
            scanned_per_sec: self.rate(|t| t.scanned) as u64,
            elapsed_secs: now.saturating_duration_since(self.start).as_secs(),
            eta_secs,
        }
    }
}

/// The counters at one moment with their rates over the last [`RATE_WINDOW`]: what the bar draws and a
/// progress record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub totals: Totals,
    pub total: Option<Total>,
    pub bytes_per_sec: u64,
    pub scanned_per_sec: u64,
    pub elapsed_secs: u64,
    /// Until the known total is copied at the current rate; none without a total or a rate.
    pub eta_secs: Option<u64>,
}

impl Snapshot {
    /// One line for people: the bar's message, a record's message.
    pub fn summary(&self, role: Role) -> String {
        let t = &self.totals;
        match role {
            Role::Finder => format!(
                "listed {} ({}/s) | to move {} ({})",
                t.scanned,
                self.scanned_per_sec,
                t.pending,
                human_bytes(t.pending_bytes)
            ),
            Role::Worker => {
                let (of_objects, of_bytes) = match self.total {
                    Some(total) => (
                        format!("/{}", total.objects),
                        format!(" of {}", human_bytes(total.bytes)),
                    ),
                    None => Default::default(),
                };
                let eta = match self.eta_secs {
                    Some(s) => format!(
                        " | eta {}",
                        indicatif::HumanDuration(Duration::from_secs(s))
                    ),
                    None => String::new(),
                };
                format!(
                    "copied {}{of_objects} ({}{of_bytes}) | failed {} | gone {} | {}/s{eta}",
                    t.copied,
                    human_bytes(t.copied_bytes),
                    t.failed,
                    t.gone,
                    human_bytes(self.bytes_per_sec)
                )
            }
        }
    }

    /// Log this as a `dth::progress` record: the counters as fields, the summary as the message.
    fn record(&self, role: Role, last: bool) {
        let t = &self.totals;
        let what = if last { "totals" } else { "progress" };
        tracing::info!(
            target: "dth::progress",
            scanned = t.scanned,
            pending = t.pending,
            pending_bytes = t.pending_bytes,
            copied = t.copied,
            copied_bytes = t.copied_bytes,
            failed = t.failed,
            gone = t.gone,
            bytes_per_sec = self.bytes_per_sec,
            scanned_per_sec = self.scanned_per_sec,
            elapsed_secs = self.elapsed_secs,
            eta_secs = self.eta_secs,
            total_objects = self.total.map(|t| t.objects),
            total_bytes = self.total.map(|t| t.bytes),
            last,
            "{} {what}: {}",
            role.label(),
            self.summary(role)
        );
    }
}

/// The bar on screen: log lines go around it while it lives (see [`crate::telemetry::show_bar`]), and it is
/// left with its last state however the aggregator ends.
struct Bar(indicatif::ProgressBar);

/// The bar without a known total, and with one.
const SPINNER: &str = "{spinner:.green} {prefix:.bold} {elapsed:>4} {wide_msg}";
const BAR: &str =
    "{spinner:.green} {prefix:.bold} {elapsed:>4} [{bar:24.cyan/blue}] {percent:>3}% {wide_msg}";

fn style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

impl Bar {
    fn new(role: Role, first: &Snapshot) -> Self {
        let b = Bar(indicatif::ProgressBar::new_spinner().with_prefix(role.label()));
        b.0.set_style(style(SPINNER));
        b.draw(role, first);
        b.0.enable_steady_tick(Duration::from_millis(120));
        crate::telemetry::show_bar(Some(b.0.clone()));
        b
    }

    fn draw(&self, role: Role, s: &Snapshot) {
        if let Some(total) = s.total {
            if self.0.length().is_none() {
                self.0.set_style(style(BAR));
            }
            // Bytes when the total has them, else objects.
            let (done, len) = match total.bytes {
                0 => (s.totals.done(), total.objects),
                bytes => (s.totals.copied_bytes, bytes),
            };
            self.0.set_length(len);
            self.0.set_position(done.min(len));
        }
        self.0.set_message(s.summary(role));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        crate::telemetry::show_bar(None);
        self.0.finish();
        // Its line is left full width, the cursor at the margin: a line break keeps what follows below it.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\n");
    }
}

pub fn human_bytes(b: u64) -> String {
    bytes_in(b, ["B", "KiB", "MiB", "GiB", "TiB", "PiB"])
}

/// `b` in the largest of `units` (each 1024 times the one before) that keeps it at least 1, to one decimal.
pub fn bytes_in(b: u64, units: [&str; 6]) -> String {
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} {}", units[0])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn rates_cover_the_recent_window_only() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0);
        // 100 MB/s for a minute, then 1 MB/s.
        for s in 1..=60 {
            m.apply(StatEvent::Bytes(100_000_000));
            m.sample(t0 + secs(s));
        }
        assert_eq!(m.snapshot(t0 + secs(60)).bytes_per_sec, 100_000_000);
        for s in 61..=80 {
            m.apply(StatEvent::Bytes(1_000_000));
            m.sample(t0 + secs(s));
        }
        let s = m.snapshot(t0 + secs(80));
        assert_eq!(s.bytes_per_sec, 1_000_000);
        assert_eq!(s.elapsed_secs, 80);
        assert!(m.window.len() <= 12, "{} samples kept", m.window.len());
        let first = m.window.front().map(|(at, _)| *at);
        assert_eq!(first, Some(t0 + secs(70)));
    }

    #[test]
    fn no_rate_before_time_passes() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0);
        m.apply(StatEvent::Scanned);
        m.sample(t0);
        let s = m.snapshot(t0);
        assert_eq!(
            (s.bytes_per_sec, s.scanned_per_sec, s.eta_secs),
            (0, 0, None)
        );
    }

    #[test]
    fn eta_only_with_a_total_and_a_rate() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0);
        m.apply(StatEvent::Bytes(1000));
        m.apply(StatEvent::Copied { bytes: 1000 });
        m.sample(t0 + secs(1));
        assert_eq!(m.snapshot(t0 + secs(1)).eta_secs, None);

        m.apply(StatEvent::Total {
            objects: 10,
            bytes: 10_000,
        });
        let s = m.snapshot(t0 + secs(1));
        assert_eq!(s.eta_secs, Some(9));
        assert!(
            s.summary(Role::Worker).contains("eta 9 seconds"),
            "{}",
            s.summary(Role::Worker)
        );

        // Objects only: their rate.
        m.apply(StatEvent::Total {
            objects: 4,
            bytes: 0,
        });
        m.apply(StatEvent::Gone);
        m.sample(t0 + secs(2));
        assert_eq!(m.snapshot(t0 + secs(2)).eta_secs, Some(2));

        // Nothing moving: no estimate, until nothing is left.
        let mut idle = Meter::new(t0);
        idle.apply(StatEvent::Total {
            objects: 1,
            bytes: 5,
        });
        idle.sample(t0 + secs(5));
        assert_eq!(idle.snapshot(t0 + secs(5)).eta_secs, None);
        idle.apply(StatEvent::Copied { bytes: 5 });
        assert_eq!(idle.snapshot(t0 + secs(5)).eta_secs, Some(0));
    }

    #[test]
    fn summaries_speak_of_each_role() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0);
        for _ in 0..30 {
            m.apply(StatEvent::Scanned);
        }
        m.apply(StatEvent::Pending { bytes: 3 * 1024 });
        m.sample(t0 + secs(3));
        assert_eq!(
            m.snapshot(t0 + secs(3)).summary(Role::Finder),
            "listed 30 (10/s) | to move 1 (3.0 KiB)"
        );

        let mut m = Meter::new(t0);
        m.apply(StatEvent::Copied { bytes: 2048 });
        m.apply(StatEvent::Bytes(2048));
        m.apply(StatEvent::Failed);
        m.sample(t0 + secs(2));
        let s = m.snapshot(t0 + secs(2));
        assert_eq!(
            s.summary(Role::Worker),
            "copied 1 (2.0 KiB) | failed 1 | gone 0 | 1.0 KiB/s"
        );
        m.apply(StatEvent::Total {
            objects: 4,
            bytes: 8192,
        });
        assert!(m
            .snapshot(t0 + secs(2))
            .summary(Role::Worker)
            .starts_with("copied 1/4 (2.0 KiB of 8.0 KiB) | failed 1 | gone 0 | 1.0 KiB/s | eta"));
    }

    #[test]
    fn bar_templates_parse() {
        for t in [SPINNER, BAR] {
            assert!(indicatif::ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The aggregator's records as JSON objects, run on a paused clock for `run` after `events`.
    async fn records(
        progress: Progress,
        events: &[StatEvent],
        run: Duration,
    ) -> Vec<serde_json::Value> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let (stats, totals) = spawn(Role::Worker, progress);
        for e in events {
            stats.send(*e);
        }
        tokio::time::sleep(run).await;
        drop(stats);
        let t = totals.await.unwrap();
        assert_eq!(
            t.copied,
            events
                .iter()
                .filter(|e| matches!(e, StatEvent::Copied { .. }))
                .count() as u64
        );
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn records_every_interval_and_at_the_end() {
        let events = [
            StatEvent::Bytes(4096),
            StatEvent::Copied { bytes: 4096 },
            StatEvent::Gone,
            StatEvent::Failed,
        ];
        let got = records(Progress::Records(secs(30)), &events, secs(65)).await;
        assert_eq!(got.len(), 3, "{got:?}");
        for r in &got {
            assert_eq!(r["target"], "dth::progress");
            assert_eq!(r["level"], "INFO");
            for (field, value) in [
                ("scanned", 0),
                ("pending", 0),
                ("pending_bytes", 0),
                ("copied", 1),
                ("copied_bytes", 4096),
                ("failed", 1),
                ("gone", 1),
            ] {
                assert_eq!(r[field].as_u64(), Some(value), "{field} in {r}");
            }
            assert!(r["bytes_per_sec"].is_u64(), "{r}");
            assert!(r.get("eta_secs").is_none(), "{r}");
        }
        let elapsed: Vec<_> = got.iter().map(|r| r["elapsed_secs"].as_u64()).collect();
        assert_eq!(elapsed, [Some(30), Some(60), Some(65)]);
        let last: Vec<_> = got.iter().map(|r| r["last"].as_bool()).collect();
        assert_eq!(last, [Some(false), Some(false), Some(true)]);
        assert!(got[0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("worker progress: copied 1 (4.0 KiB)")));
        assert!(got[2]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("worker totals: ")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_total_gives_an_eta() {
        let events = [
            StatEvent::Total {
                objects: 2,
                bytes: 1000,
            },
            StatEvent::Bytes(100),
        ];
        let got = records(Progress::Records(secs(1)), &events, secs(2)).await;
        let r = got.first().unwrap();
        assert_eq!(r["total_bytes"].as_u64(), Some(1000));
        assert!(r["eta_secs"].is_u64(), "{r}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_records_when_off_or_zero() {
        let events = [StatEvent::Copied { bytes: 1 }];
        assert!(records(Progress::Off, &events, secs(100)).await.is_empty());
        assert!(
            records(Progress::Records(Duration::ZERO), &events, secs(100))
                .await
                .is_empty()
        );
    }
}
