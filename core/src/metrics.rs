//! The worker's metrics: what it copied, what failed, how often it retried, how long jobs and parts took.
//!
//! Counted in this process ([`record`]) and published two ways:
//! - to CloudWatch ([`publish_every_minute`]): one PutMetricData a minute at most, only for minutes with
//!   something to say, and a last one when the worker stops; namespace [`NAMESPACE`], dimension
//!   [`DIMENSION`] = the transfer's name. Latencies go as statistic sets (count, sum, min, max), so a minute
//!   of a thousand parts is one datum, not a thousand.
//! - in Prometheus text format ([`prometheus`], served by `worker --metrics-addr`): counters since the worker
//!   started, latencies as summaries (`_sum`, `_count`).
//!
//! [`PUBLISHED`] is the list both use, and what the provider's dashboard graphs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet};

use crate::error::{Error, Result};

/// The CloudWatch namespace every transfer's workers publish to (and the only one their role may).
pub const NAMESPACE: &str = "DataTransferHub";
/// The dimension naming the transfer.
pub const DIMENSION: &str = "TransferName";

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Objects (or images) copied.
    ObjectsCopied = 0,
    /// Bytes of the objects copied.
    BytesCopied = 1,
    /// Objects whose copy failed (each attempt that failed).
    ObjectsFailed = 2,
    /// Deliveries of a job after its first, and copies tried again within a delivery.
    Retries = 3,
    /// From receiving a job to settling it, milliseconds.
    JobLatency = 4,
    /// Copying one part of a multipart object, milliseconds.
    PartLatency = 5,
}

/// Every metric the worker publishes: (metric, CloudWatch name, unit, Prometheus name, help).
pub const PUBLISHED: [(Metric, &str, &str, &str, &str); 6] = [
    (
        Metric::ObjectsCopied,
        "ObjectsCopied",
        "Count",
        "dth_objects_copied_total",
        "Objects copied",
    ),
    (
        Metric::BytesCopied,
        "BytesCopied",
        "Bytes",
        "dth_bytes_copied_total",
        "Bytes of the objects copied",
    ),
    (
        Metric::ObjectsFailed,
        "ObjectsFailed",
        "Count",
        "dth_objects_failed_total",
        "Copies that failed",
    ),
    (
        Metric::Retries,
        "Retries",
        "Count",
        "dth_retries_total",
        "Jobs delivered again and copies tried again",
    ),
    (
        Metric::JobLatency,
        "JobLatency",
        "Milliseconds",
        "dth_job_latency_milliseconds",
        "From receiving a job to settling it",
    ),
    (
        Metric::PartLatency,
        "PartLatency",
        "Milliseconds",
        "dth_part_latency_milliseconds",
        "Copying one part of a multipart object",
    ),
];

/// The CloudWatch names of [`PUBLISHED`].
pub fn names() -> impl Iterator<Item = &'static str> {
    PUBLISHED.iter().map(|p| p.1)
}

fn is_latency(m: Metric) -> bool {
    matches!(m, Metric::JobLatency | Metric::PartLatency)
}

/// One metric's numbers: a sum and a count (for counters the count is unused), the least and the most.
struct Cell {
    sum: AtomicU64,
    count: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

impl Cell {
    const fn new() -> Self {
        Cell {
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }

    fn add(&self, v: u64) {
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.min.fetch_min(v, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    fn read(&self) -> Stat {
        Stat {
            sum: self.sum.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
            min: self.min.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
        }
    }

    fn take(&self) -> Stat {
        Stat {
            sum: self.sum.swap(0, Ordering::Relaxed),
            count: self.count.swap(0, Ordering::Relaxed),
            min: self.min.swap(u64::MAX, Ordering::Relaxed),
            max: self.max.swap(0, Ordering::Relaxed),
        }
    }
}

/// A reading of one metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    pub sum: u64,
    pub count: u64,
    pub min: u64,
    pub max: u64,
}

/// Since the process started (Prometheus), and since the last publication (CloudWatch).
static TOTAL: [Cell; 6] = [const { Cell::new() }; 6];
static WINDOW: [Cell; 6] = [const { Cell::new() }; 6];

/// Count `value` of `metric` (bytes, milliseconds, or 1 for an event).
pub fn record(metric: Metric, value: u64) {
    TOTAL[metric as usize].add(value);
    WINDOW[metric as usize].add(value);
}

/// An object (or image) of `bytes` copied.
pub fn copied(bytes: u64) {
    record(Metric::ObjectsCopied, 1);
    record(Metric::BytesCopied, bytes);
}

/// Count a duration of a latency metric.
pub fn record_latency(metric: Metric, d: Duration) {
    record(metric, d.as_millis() as u64);
}

/// Everything counted since the process started, per metric in [`PUBLISHED`] order.
pub fn totals() -> [Stat; 6] {
    std::array::from_fn(|i| TOTAL[i].read())
}

/// Take what was counted since the last call (or the start): the next publication's data.
fn take_window() -> [Stat; 6] {
    std::array::from_fn(|i| WINDOW[i].take())
}

/// Put back a window that could not be published, so the next publication carries it.
fn restore_window(w: &[Stat; 6]) {
    for (i, s) in w.iter().enumerate() {
        if s.count == 0 {
            continue;
        }
        let c = &WINDOW[i];
        c.sum.fetch_add(s.sum, Ordering::Relaxed);
        c.count.fetch_add(s.count, Ordering::Relaxed);
        c.min.fetch_min(s.min, Ordering::Relaxed);
        c.max.fetch_max(s.max, Ordering::Relaxed);
    }
}

/// The data of one publication: counters that moved, latencies that were measured. Empty when nothing did.
pub fn datums(transfer: &str, window: &[Stat; 6], at: SystemTime) -> Vec<MetricDatum> {
    let dim = Dimension::builder().name(DIMENSION).value(transfer).build();
    PUBLISHED
        .iter()
        .zip(window)
        .filter(|(_, s)| s.count > 0)
        .map(|((m, name, unit, ..), s)| {
            let b = MetricDatum::builder()
                .metric_name(*name)
                .dimensions(dim.clone())
                .unit(StandardUnit::from(*unit))
                .timestamp(at.into());
            if is_latency(*m) {
                b.statistic_values(
                    StatisticSet::builder()
                        .sample_count(s.count as f64)
                        .sum(s.sum as f64)
                        .minimum(s.min as f64)
                        .maximum(s.max as f64)
                        .build(),
                )
                .build()
            } else {
                b.value(s.sum as f64).build()
            }
        })
        .collect()
}

/// PutMetricData of what was counted since the last publication, if anything; on failure the data is kept
/// for the next one.
pub async fn publish(cw: &aws_sdk_cloudwatch::Client, transfer: &str) -> Result<()> {
    let window = take_window();
    let data = datums(transfer, &window, SystemTime::now());
    if data.is_empty() {
        return Ok(());
    }
    let sent = cw
        .put_metric_data()
        .namespace(NAMESPACE)
        .set_metric_data(Some(data))
        .send()
        .await;
    if let Err(e) = sent {
        restore_window(&window);
        return Err(Error::from_sdk(
            format!("publishing metrics to CloudWatch namespace {NAMESPACE}"),
            e,
        ));
    }
    Ok(())
}

/// Publish once a minute until `stop` is cancelled, then once more (what the last minute counted). A failed
/// publication is logged and its data carried to the next.
pub async fn publish_every_minute(
    cw: aws_sdk_cloudwatch::Client,
    transfer: String,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Err(e) = publish(&cw, &transfer).await {
            tracing::warn!("{e}");
        }
    }
    if let Err(e) = publish(&cw, &transfer).await {
        tracing::warn!("{e}");
    }
}

/// The counters since the process started, in Prometheus text format (0.0.4), labelled with the transfer.
pub fn prometheus(transfer: &str) -> String {
    let label = transfer.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::new();
    for ((m, _, _, prom, help), s) in PUBLISHED.iter().zip(totals()) {
        out.push_str(&format!("# HELP {prom} {help}.\n"));
        if is_latency(*m) {
            out.push_str(&format!("# TYPE {prom} summary\n"));
            out.push_str(&format!("{prom}_sum{{transfer=\"{label}\"}} {}\n", s.sum));
            out.push_str(&format!(
                "{prom}_count{{transfer=\"{label}\"}} {}\n",
                s.count
            ));
        } else {
            out.push_str(&format!("# TYPE {prom} counter\n"));
            out.push_str(&format!("{prom}{{transfer=\"{label}\"}} {}\n", s.sum));
        }
    }
    out
}

/// Serve [`prometheus`] on `addr` (`GET /metrics`; anything else 404) until `stop` is cancelled. HTTP/1.1 with
/// `Connection: close`: a scrape is one request.
pub async fn serve(
    listener: tokio::net::TcpListener,
    transfer: String,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut sock, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics endpoint: {e}");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let transfer = transfer.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // The request line and headers; a scraper sends no body.
            let read = tokio::time::timeout(Duration::from_secs(10), async {
                while len < buf.len() {
                    match sock.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let get = head.starts_with("GET ");
            let (status, body) = if get && (path == "/metrics" || path.starts_with("/metrics?")) {
                ("200 OK", prometheus(&transfer))
            } else {
                ("404 Not Found", "not found: GET /metrics\n".to_owned())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(reply.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Objects and bytes copied per second over the last `window`, from the published metrics (one
/// GetMetricData). `None` for a metric with no data in the window.
pub async fn copy_rate(
    cw: &aws_sdk_cloudwatch::Client,
    transfer: &str,
    window: Duration,
) -> Result<(Option<f64>, Option<f64>)> {
    use aws_sdk_cloudwatch::types::{Metric as CwMetric, MetricDataQuery, MetricStat};
    let secs = window.as_secs().max(60);
    let period = (secs / 60 * 60) as i32;
    let now = SystemTime::now();
    let query = |id: &str, name: &str| {
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(
                MetricStat::builder()
                    .metric(
                        CwMetric::builder()
                            .namespace(NAMESPACE)
                            .metric_name(name)
                            .dimensions(
                                Dimension::builder().name(DIMENSION).value(transfer).build(),
                            )
                            .build(),
                    )
                    .period(period)
                    .stat("Sum")
                    .build(),
            )
            .return_data(true)
            .build()
    };
    let out = cw
        .get_metric_data()
        .metric_data_queries(query("objects", "ObjectsCopied"))
        .metric_data_queries(query("bytes", "BytesCopied"))
        .start_time((now - Duration::from_secs(secs)).into())
        // A minute past now: timestamps travel at a second's precision, and the last publication may be from
        // this very second.
        .end_time((now + Duration::from_secs(60)).into())
        .send()
        .await
        .map_err(|e| Error::from_sdk(format!("reading the copy rate of {transfer}"), e))?;
    let rate = |id: &str| {
        out.metric_data_results()
            .iter()
            .find(|r| r.id() == Some(id))
            .filter(|r| !r.values().is_empty())
            .map(|r| r.values().iter().sum::<f64>() / secs as f64)
    };
    Ok((rate("objects"), rate("bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datums_carry_what_moved_and_latencies_as_statistic_sets() {
        let mut w = [Stat::default(); 6];
        w[Metric::BytesCopied as usize] = Stat {
            sum: 300,
            count: 2,
            min: 100,
            max: 200,
        };
        w[Metric::PartLatency as usize] = Stat {
            sum: 90,
            count: 3,
            min: 10,
            max: 50,
        };
        let d = datums("photos", &w, SystemTime::UNIX_EPOCH);
        assert_eq!(d.len(), 2, "only what moved: {d:?}");
        assert_eq!(d[0].metric_name(), Some("BytesCopied"));
        assert_eq!(d[0].value(), Some(300.0));
        assert_eq!(d[0].unit(), Some(&StandardUnit::Bytes));
        assert_eq!(d[0].dimensions()[0].value(), Some("photos"));
        let s = d[1].statistic_values().unwrap();
        assert_eq!(
            (s.sample_count(), s.sum(), s.minimum(), s.maximum()),
            (Some(3.0), Some(90.0), Some(10.0), Some(50.0))
        );
        assert!(datums("photos", &[Stat::default(); 6], SystemTime::now()).is_empty());
    }

    #[test]
    fn prometheus_text_names_every_metric() {
        record(Metric::ObjectsCopied, 1);
        let text = prometheus("a\"b");
        for (_, _, _, prom, _) in PUBLISHED {
            assert!(text.contains(&format!("# TYPE {prom} ")), "{text}");
        }
        assert!(
            text.contains("dth_objects_copied_total{transfer=\"a\\\"b\"} "),
            "{text}"
        );
        assert!(
            text.contains("dth_part_latency_milliseconds_count{"),
            "{text}"
        );
    }

    #[test]
    fn units_are_cloudwatch_units() {
        for (_, _, unit, ..) in PUBLISHED {
            assert!(StandardUnit::values().contains(&unit), "{unit}");
        }
    }
}
