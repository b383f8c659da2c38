//! The worker: take jobs from the queue, copy, verify, record, and delete the message only on success.
//!
//! Failed jobs stay on the queue for redelivery (the queue's redrive moves them to the dead-letter queue after
//! `max_attempts` receives). A heartbeat keeps in-flight jobs invisible. On SIGTERM the worker takes no new
//! jobs, finishes the ones in flight within the grace period, and releases the rest.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{EventsMode, JobConfig, WorkerOptions};
use crate::copy::{Copier, Outcome};
use crate::diff::KeyFilter;
use crate::error::{Error, ErrorKind, Result};
use crate::events::EventRecord;
use crate::images::{ImageEngine, ImageOutcome};
use crate::job::{new_id, parse_message, Incoming, Job, JobImage, JobObject};
use crate::ledger::{
    pad_sequencer, Completion, DynamoLedger, ImageRow, JobTotals, ObjectRecord, Status, COMPLETING,
    RESTARTED,
};
use crate::limit::MemoryBudget;
use crate::metrics::{self, Metric};
use crate::queue::{Received, SqsQueue};
use crate::stats::{StatEvent, Stats};
use crate::store::{ObjectStore, Pin};

/// The run that event-driven copies are recorded under.
pub const EVENTS_RUN: &str = "events";

/// The id a giant object is counted under in its run: one count per key, whichever upload (a restart makes a
/// new one) or delivery completes it. Hashed: keys run to 1,024 bytes, sort keys stop there.
fn giant_count_id(key: &str) -> String {
    format!(
        "giant-{}",
        hex::encode(crate::store::md5_of(key.as_bytes()))
    )
}

/// What jobs ask of a worker: object slots and bytes of buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Demand {
    slots: u64,
    bytes: u64,
}

impl Demand {
    fn plus(self, o: Demand) -> Demand {
        Demand {
            slots: self.slots.saturating_add(o.slots),
            bytes: self.bytes.saturating_add(o.bytes),
        }
    }
    fn minus(self, o: Demand) -> Demand {
        Demand {
            slots: self.slots.saturating_sub(o.slots),
            bytes: self.bytes.saturating_sub(o.bytes),
        }
    }
    /// A job bigger than the whole capacity still runs (alone).
    fn capped(self, cap: Demand) -> Demand {
        Demand {
            slots: self.slots.min(cap.slots),
            bytes: self.bytes.min(cap.bytes),
        }
    }
    /// How many more jobs like `typical` fit beside what is held (one when nothing is known yet).
    fn room(self, cap: Demand, typical: Option<Demand>) -> u64 {
        if self.slots >= cap.slots || self.bytes >= cap.bytes {
            return 0;
        }
        let Some(t) = typical else {
            return 1;
        };
        let by_slots = (cap.slots - self.slots) / t.slots.max(1);
        let by_bytes = (cap.bytes - self.bytes)
            .checked_div(t.bytes)
            .unwrap_or(u64::MAX);
        by_slots.min(by_bytes).max(1)
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit once the queue is drained (nothing visible, nothing in flight) after doing some work, or after
    /// idling this long with it drained.
    pub exit_when_idle: Option<Duration>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerReport {
    pub messages: u64,
    /// SQS and DynamoDB requests: `requests.sqs + requests.dynamodb`.
    pub control_plane_calls: u64,
    /// Every request sent, per service (retries included).
    pub requests: crate::requests::Requests,
    pub seconds: f64,
}

/// One worker loop serves both kinds of transfer: what differs is the engine its jobs go to.
pub struct Worker {
    opts: WorkerOptions,
    max_attempts: u32,
    queue: SqsQueue,
    ledger: DynamoLedger,
    engine: Engine,
    stats: Stats,
    /// Object (or image) copies in flight.
    slots: Arc<Semaphore>,
}

/// What a worker copies.
enum Engine {
    Objects(ObjectEngine),
    Images(Arc<ImageEngine>),
}

/// An object transfer's side of a worker.
struct ObjectEngine {
    cfg: Arc<JobConfig>,
    copier: Arc<Copier>,
    filter: KeyFilter,
}

/// A task aborted when this is dropped (on every path out of a scope, unwinding included).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
enum Disposition {
    /// Done: delete the message.
    Delete,
    /// Leave it for redelivery after this many seconds.
    Retry(u32),
}

impl Worker {
    pub fn new(
        cfg: Arc<JobConfig>,
        src: Arc<dyn ObjectStore>,
        dst: Arc<dyn ObjectStore>,
        queue: SqsQueue,
        ledger: DynamoLedger,
        stats: Stats,
    ) -> Result<Arc<Self>> {
        let w = &cfg.worker;
        // The rows a worker writes expire as its config says, however the ledger was opened.
        let ledger = ledger.with_retention_days(w.ledger_retention_days);
        let copier = Arc::new(Copier {
            cfg: cfg.clone(),
            src,
            dst,
            ledger: ledger.clone(),
            stats: stats.clone(),
            memory: MemoryBudget::new(w.concurrency as u64 * cfg.multipart.chunk_size),
            model: crate::copy::model_for(&cfg),
            dest_checks_parts: Default::default(),
        });
        Ok(Arc::new(Self {
            slots: Arc::new(Semaphore::new(w.concurrency as usize)),
            opts: w.clone(),
            max_attempts: cfg.max_attempts,
            engine: Engine::Objects(ObjectEngine {
                filter: KeyFilter::new(&cfg.filters)?,
                cfg,
                copier,
            }),
            queue,
            ledger,
            stats,
        }))
    }

    /// A worker of an image transfer: image jobs from `queue` go to `images`.
    pub fn for_images(
        images: Arc<ImageEngine>,
        queue: SqsQueue,
        ledger: DynamoLedger,
        stats: Stats,
    ) -> Arc<Self> {
        let w = images.cfg.worker.clone();
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(w.concurrency as usize)),
            ledger: ledger.with_retention_days(w.ledger_retention_days),
            max_attempts: images.cfg.max_attempts,
            opts: w,
            engine: Engine::Images(images),
            queue,
            stats,
        })
    }

    /// Receive and process until `shutdown` (or idleness, if asked).
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        opts: RunOptions,
    ) -> Result<WorkerReport> {
        let start = Instant::now();
        let sent_before = crate::requests::Requests::now();
        let in_flight: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let mut tasks: JoinSet<Demand> = JoinSet::new();
        let mut messages = 0u64;
        let mut idle_since = Instant::now();
        let mut failures = 0u32;
        let capacity = self.capacity();
        let mut held = Demand::default();
        // What a job asked of this worker lately; None until the first one is seen, so the first receive takes
        // one message: a worker never hoards jobs it cannot start while another worker sits idle.
        let mut typical: Option<Demand> = None;
        while !shutdown.is_cancelled() {
            while let Some(Ok(d)) = tasks.try_join_next() {
                held = held.minus(d);
            }
            let want = held.room(capacity, typical);
            if want == 0 {
                tokio::select! {
                    d = tasks.join_next() => if let Some(Ok(d)) = d { held = held.minus(d) },
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let wait = if opts.exit_when_idle.is_some() { 1 } else { 20 };
            let received = tokio::select! {
                r = self.queue.receive(want.min(10) as u32, wait) => r,
                _ = shutdown.cancelled() => break,
            };
            let batch = match received {
                Ok(b) => {
                    failures = 0;
                    b
                }
                Err(e)
                    if e.is_not_found()
                        || e.kind() == ErrorKind::AccessDenied
                        || e.kind() == ErrorKind::Config =>
                {
                    return Err(e.context("the job queue"));
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!("receiving jobs failed ({failures} in a row): {e}");
                    tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(failures.min(6))))
                        .await;
                    continue;
                }
            };
            if batch.is_empty() {
                if let Some(idle) = opts.exit_when_idle {
                    if tasks.is_empty() && (messages > 0 || idle_since.elapsed() >= idle) {
                        // Drained means nothing visible AND nothing in flight: a failed job waiting for its
                        // redelivery (or another worker's job that may yet fail) is still work.
                        match self.queue.depth().await {
                            Ok((0, 0)) => {
                                tracing::info!("queue drained: exiting");
                                break;
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!("reading queue depth: {e}"),
                        }
                    }
                }
                continue;
            }
            for m in batch {
                messages += 1;
                let parsed = parse_message(&m.body);
                let d = self.demand(&parsed);
                typical = Some(d);
                held = held.plus(d);
                in_flight
                    .lock()
                    .unwrap()
                    .insert(m.message_id.clone(), m.receipt.clone());
                let me = self.clone();
                let in_flight = in_flight.clone();
                tasks.spawn(async move {
                    let id = m.message_id.clone();
                    // `handle` contains a job's panic; this holds whatever else might unwind, so that the
                    // job's share of the capacity always comes back.
                    let _ = std::panic::AssertUnwindSafe(me.handle(m, parsed))
                        .catch_unwind()
                        .await;
                    in_flight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    d
                });
            }
            idle_since = Instant::now();
        }
        if !tasks.is_empty() {
            let grace = Duration::from_secs(self.opts.shutdown_grace_secs);
            tracing::info!(
                jobs = tasks.len(),
                "stopping: finishing jobs in flight (up to {grace:?})"
            );
            let drained =
                tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                let left: Vec<String> = in_flight.lock().unwrap().values().cloned().collect();
                tracing::info!(
                    jobs = left.len(),
                    "releasing unfinished jobs for redelivery"
                );
                for receipt in left {
                    if let Err(e) = self.queue.set_visibility(&receipt, 0).await {
                        tracing::warn!("releasing an unfinished job: {e}");
                    }
                }
            }
        }
        let sent = crate::requests::Requests::since(sent_before);
        Ok(WorkerReport {
            messages,
            control_plane_calls: sent.control_plane(),
            requests: sent,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// How much a worker may hold: object copies running plus as many again waiting (so the next job is at
    /// hand when one ends), and its memory budget.
    fn capacity(&self) -> Demand {
        Demand {
            slots: 2 * self.opts.concurrency as u64,
            bytes: match &self.engine {
                Engine::Objects(o) => o.copier.memory.total_bytes(),
                Engine::Images(i) => i.memory_bytes(),
            },
        }
    }

    /// What a job will ask of this worker at its busiest: object slots, and bytes of buffers.
    fn demand(&self, parsed: &Result<Incoming>) -> Demand {
        let w = &self.opts;
        let o = match &self.engine {
            Engine::Objects(o) => o,
            Engine::Images(i) => {
                return Demand {
                    slots: 1,
                    bytes: i.job_bytes(),
                }
                .capped(self.capacity())
            }
        };
        let per_object = |size: u64| {
            if size < o.copier.single_put_limit() {
                size
            } else {
                (w.part_concurrency as u64).saturating_mul(o.cfg.part_size_for(size))
            }
        };
        match parsed {
            Ok(Incoming::Job(Job::Copy { objects, .. })) => {
                let mut sizes: Vec<u64> = objects.iter().map(|o| per_object(o.size)).collect();
                sizes.sort_unstable_by(|a, b| b.cmp(a));
                let at_once = (w.concurrency as usize).min(sizes.len()).max(1);
                Demand {
                    slots: at_once as u64,
                    bytes: sizes
                        .iter()
                        .take(at_once)
                        .fold(0, |a: u64, b| a.saturating_add(*b)),
                }
            }
            Ok(Incoming::Job(Job::Part { part_size, .. })) => Demand {
                slots: 1,
                bytes: *part_size,
            },
            _ => Demand { slots: 1, bytes: 0 },
        }
        .capped(self.capacity())
    }

    async fn handle(self: &Arc<Self>, m: Received, parsed: Result<Incoming>) {
        // Stopped however this ends, a panic included: a heartbeat left running would keep the message
        // invisible for ever.
        let _heartbeat = AbortOnDrop({
            let queue = self.queue.clone();
            let receipt = m.receipt.clone();
            let (every, extend) = (self.opts.heartbeat_secs, self.opts.visibility_secs as u32);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(every)).await;
                    if let Err(e) = queue.set_visibility(&receipt, extend).await {
                        tracing::warn!("heartbeat: {e}");
                    }
                }
            })
        });
        let work = async {
            match parsed {
                Err(e) => {
                    // Retrying will not help; release it at once so the redrive policy dead-letters it quickly.
                    tracing::error!(message_id = %m.message_id, receive_count = m.receive_count, "malformed message: {e}");
                    Disposition::Retry(0)
                }
                Ok(Incoming::TestEvent) => Disposition::Delete,
                Ok(Incoming::Job(job)) => self.job(job, &m).await,
                Ok(Incoming::Events(records)) => match &self.engine {
                    Engine::Objects(o) => self.events(o, records, &m).await,
                    Engine::Images(_) => {
                        tracing::warn!(message_id = %m.message_id, "S3 event received by an image transfer: ignoring it");
                        Disposition::Delete
                    }
                },
            }
        };
        // A job that panics is contained: its message goes back for redelivery like any failed job's, and the
        // worker carries on.
        let disposition = match std::panic::AssertUnwindSafe(work).catch_unwind().await {
            Ok(d) => d,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(message_id = %m.message_id, receive_count = m.receive_count, "job panicked, leaving it for redelivery: {what}");
                self.stats.send(StatEvent::Failed);
                metrics::record(Metric::ObjectsFailed, 1);
                let final_attempt = m.receive_count >= self.max_attempts;
                Disposition::Retry(self.retry_delay(m.receive_count, final_attempt))
            }
        };
        drop(_heartbeat);
        tracing::debug!(message_id = %m.message_id, receive_count = m.receive_count, ?disposition, "message settled");
        let res = match disposition {
            Disposition::Delete => self.queue.delete(&m.receipt).await,
            Disposition::Retry(secs) => self.queue.set_visibility(&m.receipt, secs).await,
        };
        if let Err(e) = res {
            tracing::warn!(message_id = %m.message_id, "{e}");
        }
    }

    fn retry_delay(&self, receive_count: u32, final_attempt: bool) -> u32 {
        if final_attempt {
            0
        } else {
            (5u32 << receive_count.min(7)).min(900)
        }
    }

    async fn job(self: &Arc<Self>, job: Job, m: &Received) -> Disposition {
        tracing::debug!(job = %job.id(), message_id = %m.message_id, receive_count = m.receive_count, "job received");
        let final_attempt = m.receive_count >= self.max_attempts;
        if m.receive_count > 1 {
            metrics::record(Metric::Retries, 1);
        }
        let started = Instant::now();
        let res = match (&self.engine, &job) {
            (Engine::Objects(o), Job::Copy { id, run, objects }) => {
                self.copy_job(o, id, run, objects, m.receive_count).await
            }
            (Engine::Objects(o), Job::Giant { run, object, .. }) => {
                let res = self.giant(o, run, object, m.receive_count).await;
                match res {
                    Err(e) if final_attempt => Err(self.giant_failed(o, run, object, e).await),
                    res => res,
                }
            }
            (Engine::Images(i), Job::Image { id, run, image }) => {
                self.image_job(i, id, run, image, m.receive_count).await
            }
            (Engine::Images(_), _) | (Engine::Objects(_), Job::Image { .. }) => {
                // A job of the other kind of transfer: not this worker's queue. Dead-lettered quickly.
                tracing::error!(job = %job.id(), "a job of another kind of transfer on this worker's queue");
                return Disposition::Retry(0);
            }
            (
                Engine::Objects(o),
                Job::Part {
                    run,
                    object,
                    upload_id,
                    part,
                    parts,
                    part_size,
                    ..
                },
            ) => {
                self.part(o, run, object, upload_id, *part, *parts, *part_size, m)
                    .await
            }
        };
        metrics::record_latency(Metric::JobLatency, started.elapsed());
        match res {
            Ok(true) => Disposition::Delete,
            Ok(false) => Disposition::Retry(self.retry_delay(m.receive_count, final_attempt)),
            Err(e) => {
                tracing::error!(job = %job.id(), attempt = m.receive_count, "job failed: {e}");
                Disposition::Retry(self.retry_delay(m.receive_count, final_attempt))
            }
        }
    }

    /// Copy one object with one outer retry for retryable errors; on the last attempt a failure is final.
    async fn copy_one(
        &self,
        e: &ObjectEngine,
        run: &str,
        o: &JobObject,
        attempt: u32,
    ) -> ObjectRecord {
        let _slot = self.slots.acquire().await;
        let final_attempt = attempt >= self.max_attempts;
        let mut res = e.copier.copy(run, o, final_attempt).await;
        if matches!(&res, Err(e) if e.is_retryable()) {
            metrics::record(Metric::Retries, 1);
            tokio::time::sleep(Duration::from_millis(500)).await;
            res = e.copier.copy(run, o, final_attempt).await;
        }
        let base = ObjectRecord::new(&o.key, Status::Done, o.size, attempt);
        match res {
            Ok(Outcome::Copied {
                bytes,
                etag,
                millis,
            }) => {
                self.stats.send(StatEvent::Copied { bytes });
                metrics::copied(bytes);
                ObjectRecord {
                    size: bytes,
                    etag,
                    duration_ms: millis,
                    ..base
                }
            }
            Ok(Outcome::Gone) => {
                self.stats.send(StatEvent::Gone);
                ObjectRecord {
                    status: Status::Gone,
                    ..base
                }
            }
            // A newer copy is at the destination: this job's object is as up to date as it gets.
            Ok(Outcome::Superseded) => base,
            Err(e) => {
                tracing::warn!(key = %o.key, attempt, "copy failed: {e}");
                self.stats.send(StatEvent::Failed);
                metrics::record(Metric::ObjectsFailed, 1);
                ObjectRecord {
                    status: Status::Failed,
                    error: Some(e.to_string()),
                    ..base
                }
            }
        }
    }

    /// Returns Ok(true) when the job is finished (delete it), Ok(false) to retry it.
    async fn copy_job(
        &self,
        e: &ObjectEngine,
        id: &str,
        run: &str,
        objects: &[JobObject],
        attempt: u32,
    ) -> Result<bool> {
        let concurrency = self.opts.concurrency as usize;
        // Futures built first, then driven: keeps the spawned task's future free of higher-ranked lifetimes.
        let futures: Vec<_> = objects
            .iter()
            .map(|o| self.copy_or_skip(e, run, o, attempt))
            .collect();
        let records: Vec<ObjectRecord> = stream::iter(futures)
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let multipart: HashSet<&str> = objects
            .iter()
            .filter(|o| e.copier.is_multipart(o))
            .map(|o| o.key.as_str())
            .collect();
        self.settle(id, run, &records, attempt, false, &|r| {
            multipart.contains(r.key.as_str())
        })
        .await
    }

    async fn copy_or_skip(
        &self,
        e: &ObjectEngine,
        run: &str,
        o: &JobObject,
        attempt: u32,
    ) -> ObjectRecord {
        if attempt > 1 {
            if let Ok(true) = e.copier.already_copied(o).await {
                if e.copier.is_multipart(o) {
                    if let Err(x) = e.copier.close_listed_upload(run, &o.key).await {
                        tracing::warn!(key = %o.key, "closing the upload of an object already copied: {x}");
                    }
                }
                return ObjectRecord {
                    key: o.key.clone(),
                    status: Status::Done,
                    size: o.size,
                    etag: o.etag.clone(),
                    duration_ms: 0,
                    attempt,
                    error: None,
                    image: None,
                };
            }
        }
        self.copy_one(e, run, o, attempt).await
    }

    /// Record the rows; count the job once it is over (all good, `over` already, or its last attempt).
    /// Outcomes `own_row` picks get a row of their own even when they went well: those of multipart objects,
    /// whose upload's row exists already and must end up saying how it went.
    async fn settle(
        &self,
        id: &str,
        run: &str,
        records: &[ObjectRecord],
        attempt: u32,
        over: bool,
        own_row: &(dyn Fn(&ObjectRecord) -> bool + Sync),
    ) -> Result<bool> {
        let failed = records
            .iter()
            .filter(|r| r.status == Status::Failed)
            .count();
        if failed == 0 || over || attempt >= self.max_attempts {
            self.ledger.finish_job(run, id, records, own_row).await?;
        } else {
            // Not over: name the failures (and settle the rows that exist) now; the rest waits for the retry.
            let now: Vec<ObjectRecord> = records
                .iter()
                .filter(|r| r.status == Status::Failed || own_row(r))
                .cloned()
                .collect();
            self.ledger.record_objects(run, &now).await?;
        }
        // A job that failed on its last attempt stays on the queue, to be dead-lettered by the redrive policy.
        Ok(failed == 0)
    }

    /// Copy one image. Ok(true) when the job is over: copied, gone from the source, or failed in a way another
    /// delivery cannot fix (a missing tag or repository, credentials refused, a manifest the copy cannot
    /// read) — recorded FAILED and counted at once; Ok(false) to have it delivered again.
    async fn image_job(
        &self,
        e: &ImageEngine,
        id: &str,
        run: &str,
        image: &JobImage,
        attempt: u32,
    ) -> Result<bool> {
        let _slot = self.slots.acquire().await;
        let start = Instant::now();
        let mut res = e.copy(image).await;
        if matches!(&res, Err(err) if err.is_retryable()) {
            metrics::record(Metric::Retries, 1);
            tokio::time::sleep(Duration::from_millis(500)).await;
            res = e.copy(image).await;
        }
        let mut rec = ObjectRecord {
            etag: image.digest.clone(),
            image: Some(ImageRow {
                repository: image.repository.clone(),
                tag: image.tag.clone(),
                digest: image.digest.clone(),
            }),
            ..ObjectRecord::new(&image.key(), Status::Done, image.size, attempt)
        };
        let mut permanent = false;
        match res {
            Ok(ImageOutcome::Copied(r)) => {
                tracing::info!(
                    image = %image.key(),
                    digest = %r.digest,
                    bytes = r.bytes,
                    uploaded = r.bytes_uploaded,
                    blobs_uploaded = r.blobs_uploaded,
                    blobs_mounted = r.blobs_mounted,
                    blobs_present = r.blobs_present,
                    "image copied"
                );
                self.stats.send(StatEvent::Copied { bytes: r.bytes });
                metrics::copied(r.bytes);
                rec.size = r.bytes;
                rec.duration_ms = start.elapsed().as_millis() as u64;
                rec.etag = r.digest.clone();
                if let Some(i) = rec.image.as_mut() {
                    i.digest = r.digest;
                }
            }
            Ok(ImageOutcome::Gone) => {
                tracing::info!(image = %image.key(), digest = %image.digest, "gone from the source");
                self.stats.send(StatEvent::Gone);
                rec.status = Status::Gone;
            }
            Err(err) => {
                permanent = !err.is_retryable();
                tracing::warn!(image = %image.key(), attempt, "image copy failed: {err}");
                self.stats.send(StatEvent::Failed);
                metrics::record(Metric::ObjectsFailed, 1);
                rec.status = Status::Failed;
                rec.error = Some(err.to_string());
            }
        }
        let done = self
            .settle(id, run, &[rec], attempt, permanent, &|_| true)
            .await?;
        Ok(done || permanent)
    }

    /// Start the fleet-split upload of a giant object and enqueue a job per part still missing.
    async fn giant(
        &self,
        e: &ObjectEngine,
        run: &str,
        o: &JobObject,
        attempt: u32,
    ) -> Result<bool> {
        let c = &e.copier;
        let count_id = giant_count_id(&o.key);
        let head = match c.src.head(&o.key, &Pin::Latest).await {
            Ok(h) => h,
            Err(err) if err.is_not_found() => {
                let rec = ObjectRecord::new(&o.key, Status::Gone, o.size, 1);
                return self
                    .settle(&count_id, run, &[rec], 1, false, &|_| true)
                    .await;
            }
            Err(err) => return Err(err),
        };
        let pin = Pin::of(&head.etag, head.version_id.as_deref());
        let layout = c.layout(&o.key, &head, &pin).await?;
        let dkey = e.cfg.destination_key(&o.key);
        let prior = self.ledger.upload(run, &o.key).await?;
        if prior
            .as_ref()
            .is_some_and(|p| p.source_etag == head.etag && p.status == COMPLETING)
        {
            return Ok(true); // a redelivery: the object's parts are all in and one worker is completing it
        }
        if attempt > 1 && prior.is_none() {
            let now = JobObject {
                key: o.key.clone(),
                size: head.size,
                etag: head.etag.clone(),
                version_id: head.version_id.clone(),
                dest_etag: None,
            };
            if c.already_copied(&now).await? {
                // A redelivery after the object was completed (and counted, under the same id).
                let rec = ObjectRecord {
                    etag: head.etag.clone(),
                    ..ObjectRecord::new(&o.key, Status::Done, head.size, attempt)
                };
                return self
                    .settle(&count_id, run, &[rec], attempt, false, &|_| true)
                    .await;
            }
        }
        let live = c.live_uploads(&dkey).await?.unwrap_or_default();
        let reuse = prior.filter(|p| {
            p.source_etag == head.etag
                && p.status == Status::Started.as_str()
                && live
                    .iter()
                    .any(|u| u.key == dkey && u.upload_id == p.upload_id)
        });
        let (upload_id, done) = match reuse {
            Some(p) => (p.upload_id, p.part_etags),
            None => (
                c.start_upload(run, &o.key, &head, &pin, layout).await?,
                Default::default(),
            ),
        };
        let object = JobObject {
            key: o.key.clone(),
            size: head.size,
            etag: head.etag.clone(),
            version_id: head.version_id.clone(),
            dest_etag: o.dest_etag.clone(),
        };
        let bodies: Vec<String> = (1..=layout.parts)
            .filter(|p| !done.contains_key(p))
            .map(|part| {
                Job::Part {
                    id: new_id(),
                    run: run.into(),
                    object: object.clone(),
                    upload_id: upload_id.clone(),
                    part,
                    parts: layout.parts,
                    part_size: layout.part_size,
                }
                .to_body()
            })
            .collect();
        tracing::info!(key = %o.key, parts = layout.parts, enqueued = bodies.len(), "split giant object across the fleet");
        self.queue.send_all(bodies).await?;
        Ok(true)
    }

    /// The last attempt at splitting a giant object failed: the object fails (a FAILED row, counted once under
    /// the object's key) and an upload the ledger lists for it is aborted. Returns `e`: the message stays, for the
    /// redrive policy to dead-letter.
    async fn giant_failed(&self, e: &ObjectEngine, run: &str, o: &JobObject, err: Error) -> Error {
        let failed = async {
            if let Some(u) = self.ledger.upload(run, &o.key).await? {
                if u.status == Status::Started.as_str() {
                    self.abandon_upload(e, run, o, &u.upload_id, Status::Started.as_str())
                        .await?;
                }
            }
            self.record_giant(
                run,
                &giant_count_id(&o.key),
                o,
                Status::Failed,
                String::new(),
                Some(&err),
                0,
                self.max_attempts,
            )
            .await
        };
        if let Err(x) = failed.await {
            tracing::warn!(key = %o.key, "recording the failure of a giant object: {x}");
        }
        err
    }

    /// Mark a fleet-split upload FAILED if it still is `upload_id` in status `from`, and abort it; false when
    /// another worker got there first (or the upload moved on).
    async fn abandon_upload(
        &self,
        e: &ObjectEngine,
        run: &str,
        o: &JobObject,
        upload_id: &str,
        from: &str,
    ) -> Result<bool> {
        let failed = Status::Failed.as_str();
        if !self
            .ledger
            .claim_upload(run, &o.key, upload_id, from, failed)
            .await?
        {
            return Ok(false);
        }
        let dkey = e.cfg.destination_key(&o.key);
        if let Err(x) = e.copier.abort_upload(&dkey, upload_id).await {
            tracing::warn!(key = %dkey, upload_id, "aborting a failed upload: {x}");
        }
        Ok(true)
    }

    /// Write a giant object's outcome row and count it once, under `count_id`.
    #[allow(clippy::too_many_arguments)]
    async fn record_giant(
        &self,
        run: &str,
        count_id: &str,
        o: &JobObject,
        status: Status,
        etag: String,
        error: Option<&Error>,
        duration_ms: u64,
        attempt: u32,
    ) -> Result<()> {
        let rec = ObjectRecord {
            key: o.key.clone(),
            status,
            size: o.size,
            etag,
            duration_ms,
            attempt,
            error: error.map(|e| e.to_string()),
            image: None,
        };
        self.ledger
            .record_objects(run, std::slice::from_ref(&rec))
            .await?;
        let t = JobTotals::of(std::slice::from_ref(&rec));
        self.ledger.count_job(run, count_id, t).await?;
        Ok(())
    }

    /// Start a giant object over with a new upload, if `upload_id` is still its upload in status `from`: the
    /// first caller to claim it enqueues a new split of the object's current version, then aborts the old upload.
    async fn restart_giant(
        &self,
        e: &ObjectEngine,
        run: &str,
        o: &JobObject,
        upload_id: &str,
        from: &str,
    ) -> Result<()> {
        if !self
            .ledger
            .claim_upload(run, &o.key, upload_id, from, RESTARTED)
            .await?
        {
            return Ok(());
        }
        let job = Job::Giant {
            id: new_id(),
            run: run.into(),
            object: JobObject {
                version_id: None,
                ..o.clone()
            },
        };
        if let Err(x) = self.queue.send_all(vec![job.to_body()]).await {
            // Put the claim back, so that this message's redelivery restarts the object.
            self.ledger
                .claim_upload(run, &o.key, upload_id, RESTARTED, from)
                .await?;
            return Err(x);
        }
        let dkey = e.cfg.destination_key(&o.key);
        if let Err(x) = e.copier.abort_upload(&dkey, upload_id).await {
            tracing::warn!(key = %dkey, upload_id, "aborting a restarted upload: {x}");
        }
        Ok(())
    }

    /// Upload one part and record it; None when the part turned out stale (the upload was completed, failed,
    /// replaced, or restarted here because the source changed or the upload vanished).
    #[allow(clippy::too_many_arguments)]
    async fn upload_part_job(
        &self,
        e: &ObjectEngine,
        run: &str,
        o: &JobObject,
        upload_id: &str,
        part: u32,
        layout: crate::copy::Layout,
        m: &Received,
    ) -> Result<Option<crate::ledger::UploadRecord>> {
        let c = &e.copier;
        let started = Status::Started.as_str();
        let pin = Pin::of(&o.etag, o.version_id.as_deref());
        let dkey = e.cfg.destination_key(&o.key);
        let (etag, crc) = match c
            .copy_part(&o.key, &pin, o.size, layout, upload_id, part)
            .await
        {
            Ok((_, sums, etag)) => (etag, sums.crc64),
            Err(err)
                if err.kind() == ErrorKind::PreconditionFailed
                    || (err.is_not_found()
                        && err.code() != Some("NoSuchBucket")
                        && err.code() != Some("NoSuchUpload")) =>
            {
                self.restart_giant(e, run, o, upload_id, started).await?;
                return Ok(None);
            }
            Err(err) if err.code() == Some("NoSuchUpload") => {
                let listed = self
                    .ledger
                    .upload(run, &o.key)
                    .await?
                    .is_some_and(|u| u.upload_id == upload_id && u.status == started);
                if listed {
                    tracing::warn!(key = %dkey, upload_id, "the upload is gone though the ledger lists it (aborted outside the transfer): starting the object over");
                    self.restart_giant(e, run, o, upload_id, started).await?;
                } else {
                    // Completed, failed or replaced: this part is stale.
                    tracing::info!(key = %dkey, upload_id, part, "part of an upload that is over: dropped");
                }
                return Ok(None);
            }
            Err(err) => {
                return Err(self
                    .part_failed(e, run, o, upload_id, started, m, err)
                    .await)
            }
        };
        let Some(rec) = self
            .ledger
            .record_part(run, &o.key, upload_id, part, &etag, crc)
            .await?
        else {
            // The upload was replaced: this part is stale.
            tracing::info!(key = %dkey, upload_id, part, "part of a replaced upload: dropped");
            return Ok(None);
        };
        tracing::info!(key = %dkey, upload_id, part, parts = rec.part_etags.len(), "part recorded");
        Ok(Some(rec))
    }

    /// Copy one part of a fleet-split upload; whoever records the last part completes the upload. The source
    /// changed or gone, or the upload aborted from outside while the ledger still lists it: the object starts
    /// over. A last attempt that fails fails the object: FAILED, its upload aborted.
    #[allow(clippy::too_many_arguments)]
    async fn part(
        &self,
        e: &ObjectEngine,
        run: &str,
        o: &JobObject,
        upload_id: &str,
        part: u32,
        parts: u32,
        part_size: u64,
        m: &Received,
    ) -> Result<bool> {
        let c = &e.copier;
        let attempt = m.receive_count;
        let _slot = self.slots.acquire().await;
        let layout = crate::copy::Layout { part_size, parts };
        let dkey = e.cfg.destination_key(&o.key);
        // A redelivery whose part is already recorded (its worker died after recording it, or while completing
        // the upload) goes straight on: uploading it again could find the upload completed (NoSuchUpload).
        let recorded = if m.receive_count > 1 {
            self.ledger
                .upload(run, &o.key)
                .await?
                .filter(|u| u.upload_id == upload_id && u.part_etags.contains_key(&part))
        } else {
            None
        };
        let rec = match recorded {
            Some(rec) => rec,
            None => match self
                .upload_part_job(e, run, o, upload_id, part, layout, m)
                .await?
            {
                Some(rec) => rec,
                None => return Ok(true),
            },
        };
        if rec.part_etags.len() < parts as usize {
            return Ok(true);
        }
        // Exactly one completer (a conditional claim), replaced only by its own message's redelivery.
        if self
            .ledger
            .claim_completion(run, &o.key, upload_id, &m.message_id)
            .await?
            == Completion::Lost
        {
            return Ok(true);
        }
        let list: Vec<(u32, String)> = (1..=parts)
            .map(|p| (p, rec.part_etags.get(&p).cloned().unwrap_or_default()))
            .collect();
        // The whole object's CRC64NVME from the parts' (all of them recorded by this version).
        let crc = (1..=parts).try_fold(None, |acc: Option<u64>, p| {
            let c = *rec.part_crcs.get(&p)?;
            let (a, b) = layout.range(o.size, p);
            Some(Some(
                acc.map_or(c, |x| crate::store::crc64_concat(x, c, b - a)),
            ))
        });
        let crc = crc.flatten();
        let head = crate::store::Head {
            size: o.size,
            etag: o.etag.clone(),
            ..Default::default()
        };
        let cond = crate::copy::write_condition(o);
        let start = Instant::now();
        let (status, etag, error) = match c
            .complete(&dkey, upload_id, &list, crc, &head, &cond)
            .await
        {
            Ok(etag) => (Status::Done, etag, None),
            Err(err) if err.kind() == ErrorKind::Integrity => {
                // Refused before completing (the parts do not make the source's ETag): the upload is not
                // wanted; after completing there is none left, which counts as aborted.
                if let Err(x) = c.abort_upload(&dkey, upload_id).await {
                    tracing::warn!(key = %dkey, upload_id, "aborting an upload that failed verification: {x}");
                }
                (Status::Failed, String::new(), Some(err))
            }
            Err(err) if err.kind() == ErrorKind::Superseded => {
                // A newer copy is at the destination: this upload is not wanted.
                tracing::info!(key = %dkey, "{err}");
                if let Err(x) = c.abort_upload(&dkey, upload_id).await {
                    tracing::warn!(key = %dkey, upload_id, "aborting a superseded upload: {x}");
                }
                (Status::Done, String::new(), None)
            }
            Err(err) if err.code() == Some("NoSuchUpload") => {
                // Completed by an earlier completer whose answer was lost, or aborted from outside.
                match c.completed_as(&dkey, &list, crc, o.size).await? {
                    Some(etag) => {
                        // Its completer died before forgetting it.
                        c.forget_upload(upload_id).await;
                        (Status::Done, etag, None)
                    }
                    None => {
                        tracing::warn!(key = %dkey, upload_id, "the upload is gone before its completion: starting the object over");
                        self.restart_giant(e, run, o, upload_id, COMPLETING).await?;
                        return Ok(true);
                    }
                }
            }
            Err(err) => {
                return Err(self
                    .part_failed(e, run, o, upload_id, COMPLETING, m, err)
                    .await)
            }
        };
        if status == Status::Done {
            self.stats.send(StatEvent::Copied { bytes: o.size });
            metrics::copied(o.size);
        }
        self.record_giant(
            run,
            &giant_count_id(&o.key),
            o,
            status,
            etag,
            error.as_ref(),
            start.elapsed().as_millis() as u64,
            attempt,
        )
        .await?;
        Ok(true)
    }

    /// A part (or its completion) failed with `err`. Before the last attempt: a completion is given back for
    /// the retry to claim again. On the last: the object fails, its upload aborted, once.
    #[allow(clippy::too_many_arguments)]
    async fn part_failed(
        &self,
        e: &ObjectEngine,
        run: &str,
        o: &JobObject,
        upload_id: &str,
        from: &str,
        m: &Received,
        err: Error,
    ) -> Error {
        let res = async {
            if m.receive_count < self.max_attempts {
                if from == COMPLETING {
                    self.ledger
                        .release_completion(run, &o.key, upload_id, &m.message_id)
                        .await?;
                }
                return Ok(());
            }
            if self.abandon_upload(e, run, o, upload_id, from).await? {
                self.record_giant(
                    run,
                    &giant_count_id(&o.key),
                    o,
                    Status::Failed,
                    String::new(),
                    Some(&err),
                    0,
                    m.receive_count,
                )
                .await?;
            }
            Ok::<_, Error>(())
        };
        if let Err(x) = res.await {
            tracing::warn!(key = %o.key, upload_id, "settling a failed part: {x}");
        }
        err
    }

    /// S3 event notifications: created → copy, removed → delete at the destination (when enabled); an event
    /// older than one already applied to the key is skipped.
    async fn events(
        &self,
        e: &ObjectEngine,
        records: Vec<EventRecord>,
        m: &Received,
    ) -> Disposition {
        if e.cfg.events == EventsMode::None {
            tracing::warn!(message_id = %m.message_id, "S3 event received but events are disabled: ignoring it");
            return Disposition::Delete;
        }
        let mut rows = Vec::new();
        for r in records {
            match self.event(e, &r, m.receive_count).await {
                Ok(Some(row)) => rows.push(row),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(key = %r.key, "event {}: {err}", r.name);
                    rows.push(ObjectRecord {
                        key: r.key.clone(),
                        status: Status::Failed,
                        size: r.size,
                        etag: r.etag.clone(),
                        duration_ms: 0,
                        attempt: m.receive_count,
                        error: Some(err.to_string()),
                        image: None,
                    });
                }
            }
        }
        // Objects copied in parts (too large for one PUT, or written so at the destination) have their upload's row.
        let in_parts = |r: &ObjectRecord| e.copier.in_parts(r.size, &r.etag);
        match self
            .settle(
                &format!("msg-{}", m.message_id),
                EVENTS_RUN,
                &rows,
                m.receive_count,
                false,
                &in_parts,
            )
            .await
        {
            Ok(true) => Disposition::Delete,
            Ok(false) => Disposition::Retry(
                self.retry_delay(m.receive_count, m.receive_count >= self.max_attempts),
            ),
            Err(err) => {
                tracing::error!("recording events: {err}");
                Disposition::Retry(self.retry_delay(m.receive_count, false))
            }
        }
    }

    async fn event(
        &self,
        e: &ObjectEngine,
        r: &EventRecord,
        attempt: u32,
    ) -> Result<Option<ObjectRecord>> {
        if !r.bucket.is_empty() && r.bucket != e.cfg.source.bucket {
            tracing::warn!(bucket = %r.bucket, "event for another bucket: ignoring it");
            return Ok(None);
        }
        if !r.key.starts_with(&e.cfg.source.prefix) || !e.filter.accepts(&r.key) {
            return Ok(None);
        }
        let deletes = e.cfg.events == EventsMode::CreateAndDelete;
        if !(r.is_created() || (r.is_removed() && deletes)) {
            return Ok(None);
        }
        if let Some(seq) = &r.sequencer {
            if !self.ledger.advance_sequencer(&r.key, seq).await? && attempt == 1 {
                tracing::info!(key = %r.key, sequencer = %seq, "stale event: a newer one was already applied");
                return Ok(None);
            }
        }
        let mut row = self.apply_event(e, r, attempt).await?;
        // A newer event may have been applied while this one ran, and this one's write may have landed last:
        // then bring the destination to the source's current state.
        if let Some(seq) = &r.sequencer {
            if self.ledger.sequencer(&r.key).await?.as_deref() != Some(pad_sequencer(seq).as_str())
            {
                tracing::info!(key = %r.key, "a newer event arrived during this one: re-syncing the key");
                row = self.resync(e, &r.key, attempt).await?;
            }
        }
        Ok(Some(row))
    }

    async fn apply_event(
        &self,
        e: &ObjectEngine,
        r: &EventRecord,
        attempt: u32,
    ) -> Result<ObjectRecord> {
        if r.is_removed() {
            return self.delete_at_destination(e, &r.key, attempt).await;
        }
        let o = JobObject {
            key: r.key.clone(),
            size: r.size,
            etag: r.etag.clone(),
            version_id: r.version_id.clone(),
            dest_etag: None,
        };
        let row = self.copy_one(e, EVENTS_RUN, &o, attempt).await;
        match row.status {
            Status::Failed => Err(Error::new(
                ErrorKind::Transient,
                row.error.unwrap_or_default(),
            )),
            _ => Ok(row),
        }
    }

    async fn delete_at_destination(
        &self,
        e: &ObjectEngine,
        key: &str,
        attempt: u32,
    ) -> Result<ObjectRecord> {
        e.copier.dst.delete(&e.cfg.destination_key(key)).await?;
        Ok(ObjectRecord::new(key, Status::Deleted, 0, attempt))
    }

    async fn resync(&self, e: &ObjectEngine, key: &str, attempt: u32) -> Result<ObjectRecord> {
        match e.copier.src.head(key, &Pin::Latest).await {
            Ok(h) => {
                let o = JobObject {
                    key: key.into(),
                    size: h.size,
                    etag: h.etag,
                    version_id: h.version_id,
                    dest_etag: None,
                };
                Ok(self.copy_one(e, EVENTS_RUN, &o, attempt).await)
            }
            Err(err) if err.is_not_found() && e.cfg.events == EventsMode::CreateAndDelete => {
                self.delete_at_destination(e, key, attempt).await
            }
            Err(err) if err.is_not_found() => Ok(ObjectRecord::new(key, Status::Gone, 0, attempt)),
            Err(err) => Err(err),
        }
    }
}
