//! The chaos scenario: a mixed transfer — thousands of small objects, multipart objects (some uploaded to the
//! source in parts), giant objects split into part jobs across the fleet — copied by a fleet of real `worker`
//! processes of which one is SIGKILLed at random every few seconds and started again; optionally every AWS call
//! of the finder and the workers goes through the [fault proxy](crate::fault), which fails a share of them.
//! Then everything a correct transfer promises is checked:
//! - every object at the destination, byte for byte (MD5 and size of the bodies), and nothing else there;
//! - no multipart upload left open at the destination, none left in the ledger;
//! - the run summary's counts exact: found = done = the objects, bytes done = their bytes, none failed or gone;
//! - nothing on the job queue or the dead-letter queue, visible or in flight;
//! - every ledger row DONE, the transfer `in_sync` by the provider's own status rule
//!   ([`dth_provider::transfer::Progress::status_of`]), and a second finder pass finds nothing to move.
//!
//! [`run`] never panics on a failed check: each finding goes into [`Figures::problems`] with what the ledger,
//! the queues and the workers' logs say about it, and the world's directory (configs, moto's and every worker's
//! log) is kept. It serves `tests/tests/chaos.rs` (CI sizes) and `src/bin/chaos.rs` (`scripts/chaos`, 2 GB+).
//!
//! Reproducible from [`Plan::seed`]: object sizes and bodies, kill intervals and victims, the proxy's fault
//! draws. Not reproducible: which job a worker holds when it dies, and in what order concurrent calls reach the
//! proxy — real processes on a real scheduler. A failed check is a product defect either way: the harness makes
//! no timing assumption but its (generous) deadline, and the deadline's report says what was still pending.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue as Av;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use dth_core::ledger::{DynamoLedger, Status};
use dth_provider::transfer::{Progress, Status as TransferStatus};
use futures::stream::{self, StreamExt};
use md5::{Digest, Md5};
use serde_json::json;

use crate::fault::{Fault, FaultProxy, Rule};
use crate::{Proc, Queues, World};

pub const MIB: u64 = 1024 * 1024;
/// The config's `multipart.threshold`: objects this size or larger are copied in parts.
const MULTIPART_THRESHOLD: u64 = 10 * MIB;
const SRC: &str = "chaos-src";
const DST: &str = "chaos-dst";
const TABLE: &str = "chaos-ledger";
const QUEUE: &str = "chaos-jobs";
/// The queue's visibility timeout and the workers' heartbeat extension: a killed worker's jobs come back
/// within this, and so does a message moto's long poll lost.
const VISIBILITY_SECS: u64 = 20;
/// A worker exits once the queue has been drained (nothing visible, nothing in flight) and it idled this long.
const EXIT_WHEN_IDLE_SECS: &str = "5";
/// Source uploads and destination reads in flight.
const SMALL_IN_FLIGHT: usize = 16;
const LARGE_IN_FLIGHT: usize = 3;

/// What to transfer, and how to torment the fleet meanwhile.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The world's name (its directory under `target/e2e`).
    pub name: String,
    pub seed: u64,
    /// Small objects and their sizes in bytes (inclusive range).
    pub small: usize,
    pub small_bytes: (u64, u64),
    /// Multipart objects (every other one uploaded to the source in parts, whose layout the copy keeps).
    pub multipart: usize,
    pub multipart_bytes: (u64, u64),
    /// Giant objects (uploaded in parts): each one job that splits into a job per part across the fleet.
    pub giants: usize,
    pub giant_bytes: (u64, u64),
    /// The config's `multipart.giant_threshold`: at most the smallest giant, above the largest multipart object.
    pub giant_threshold: u64,
    /// Part size of the sources uploaded in parts, and the config's `multipart.chunk_size`.
    pub part_bytes: u64,
    pub workers: usize,
    /// Every this long (drawn uniformly from the range) a random worker is SIGKILLed and started again, as long
    /// as work is left on the queue. `None`: the fleet is left alone.
    pub kill_every: Option<(Duration, Duration)>,
    /// Every AWS call of the finder and the workers through a fault proxy failing a share of them.
    pub faults: Option<Faults>,
    /// Deliveries of a job before it is dead-lettered: the config's `max_attempts` and the queue's
    /// maxReceiveCount. A kill costs the jobs its worker held one delivery each, so it is set well above
    /// the kills a job can plausibly meet in a row.
    pub max_attempts: u32,
    /// The most the transfer (first worker started to queue drained and every worker gone) may take.
    pub deadline: Duration,
}

/// Faults of the proxy, per service (S3, SQS, DynamoDB).
#[derive(Debug, Clone)]
pub struct Faults {
    /// Share of each service's calls that fail, split evenly over the kinds: 500 InternalError, the service's
    /// throttling (S3: 503 SlowDown), a truncated answer, an answer reset mid-body (and for S3 an upload reset
    /// midway).
    pub ratio: f64,
    /// Share of the calls (of those not failed) delayed by `delay`.
    pub delay_ratio: f64,
    pub delay: Duration,
}

impl Plan {
    /// The CI chaos run: 2,400 small objects, 6 multipart objects of 20–40 MiB and 2 giants of 64–80 MiB
    /// (~380 MB), 3 workers, a kill every 2–6 s.
    pub fn chaos(name: &str, seed: u64) -> Plan {
        Plan {
            name: name.into(),
            seed,
            small: 2400,
            small_bytes: (1024, 64 * 1024),
            multipart: 6,
            multipart_bytes: (20 * MIB, 40 * MIB),
            giants: 2,
            giant_bytes: (64 * MIB, 80 * MIB),
            giant_threshold: 64 * MIB,
            part_bytes: 8 * MIB,
            workers: 3,
            kill_every: Some((Duration::from_secs(2), Duration::from_secs(6))),
            faults: None,
            max_attempts: 25,
            deadline: Duration::from_secs(900),
        }
    }

    /// The CI fault run: 300 small objects, 3 multipart objects of 12–20 MiB, 1 giant of 30 MiB (~80 MB), 3
    /// workers left alone, 5 % of every service's calls failing and 10 % delayed by 5 ms.
    pub fn faults(name: &str, seed: u64) -> Plan {
        Plan {
            name: name.into(),
            seed,
            small: 300,
            small_bytes: (1024, 64 * 1024),
            multipart: 3,
            multipart_bytes: (12 * MIB, 20 * MIB),
            giants: 1,
            giant_bytes: (30 * MIB, 30 * MIB),
            giant_threshold: 24 * MIB,
            part_bytes: 5 * MIB,
            workers: 3,
            kill_every: None,
            faults: Some(Faults {
                ratio: 0.05,
                delay_ratio: 0.10,
                delay: Duration::from_millis(5),
            }),
            max_attempts: 25,
            deadline: Duration::from_secs(900),
        }
    }
}

impl Plan {
    /// Whether the sizes make the objects what they are meant to be: small ones below the multipart threshold,
    /// multipart ones between it and the giant threshold, giants at or above it.
    pub fn check(&self) -> Result<(), String> {
        let threshold = MULTIPART_THRESHOLD;
        if self.small > 0 && self.small_bytes.1 >= threshold {
            return Err(format!("small objects must stay below {threshold} bytes"));
        }
        if self.multipart > 0
            && (self.multipart_bytes.0 < threshold
                || self.multipart_bytes.1 >= self.giant_threshold)
        {
            return Err(format!(
                "multipart objects must be {threshold} bytes or more and below the giant threshold"
            ));
        }
        if self.giants > 0 && self.giant_bytes.0 < self.giant_threshold {
            return Err("giants must be at least the giant threshold".into());
        }
        if self.part_bytes < 5 * MIB {
            return Err("parts are at least 5 MiB (S3's minimum)".into());
        }
        if self.workers == 0 {
            return Err("a fleet has at least one worker".into());
        }
        Ok(())
    }
}

/// What a run did, and what its checks found.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub seed: u64,
    pub objects: u64,
    pub bytes: u64,
    pub small: usize,
    pub multipart: usize,
    pub giants: usize,
    /// Writing the source bucket.
    pub upload: Duration,
    /// The finder's run.
    pub find: Duration,
    /// First worker started to queue drained and every worker gone.
    pub transfer: Duration,
    /// Reading the destination back.
    pub verify: Duration,
    /// Jobs the finder enqueued.
    pub jobs: u64,
    pub kills: usize,
    pub worker_starts: usize,
    /// Workers that exited by themselves with a failure.
    pub worker_failures: usize,
    /// Objects copied on a later delivery than their first (ledger rows with `attempt` > 1), and the highest
    /// attempt recorded.
    pub redelivered_objects: usize,
    pub max_attempt: u32,
    /// Per service: calls through the proxy, and faults injected.
    pub calls: BTreeMap<String, (usize, usize)>,
    /// Per service and fault kind: faults injected.
    pub faults: BTreeMap<String, usize>,
    /// Every failed check, with its diagnosis. Empty: the transfer is exact.
    pub problems: Vec<String>,
    /// What helps read the problems (the workers' own warnings and errors).
    pub context: Vec<String>,
    /// The world's directory: kept when there are problems.
    pub dir: PathBuf,
}

impl Figures {
    /// The figures as a table, then the problems.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mb = |b: u64| b as f64 / 1e6;
        let rate = |b: u64, d: Duration| mb(b) / d.as_secs_f64().max(0.001);
        let _ = writeln!(t, "| figure | value |\n|---|---|");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "| {k} | {v} |");
        };
        row("seed", self.seed.to_string());
        row(
            "objects",
            format!(
                "{} ({} small, {} multipart, {} giant)",
                self.objects, self.small, self.multipart, self.giants
            ),
        );
        row(
            "bytes",
            format!("{} ({:.1} MB)", self.bytes, mb(self.bytes)),
        );
        row("jobs enqueued by the finder", self.jobs.to_string());
        row(
            "source upload",
            format!(
                "{:.1} s ({:.1} MB/s)",
                self.upload.as_secs_f64(),
                rate(self.bytes, self.upload)
            ),
        );
        row("finder", format!("{:.1} s", self.find.as_secs_f64()));
        row(
            "transfer",
            format!(
                "{:.1} s ({:.1} MB/s, {:.0} objects/s)",
                self.transfer.as_secs_f64(),
                rate(self.bytes, self.transfer),
                self.objects as f64 / self.transfer.as_secs_f64().max(0.001)
            ),
        );
        row("verify", format!("{:.1} s", self.verify.as_secs_f64()));
        row("workers SIGKILLed", self.kills.to_string());
        row("worker starts", self.worker_starts.to_string());
        row(
            "workers that exited failing",
            self.worker_failures.to_string(),
        );
        row(
            "objects copied on a redelivery",
            format!(
                "{} (highest attempt {})",
                self.redelivered_objects, self.max_attempt
            ),
        );
        for (svc, (calls, injected)) in &self.calls {
            row(
                &format!("{svc} calls / faults injected"),
                format!("{calls} / {injected}"),
            );
        }
        for (kind, n) in &self.faults {
            row(&format!("  {kind}"), n.to_string());
        }
        row("problems", self.problems.len().to_string());
        for (i, p) in self.problems.iter().enumerate() {
            let _ = writeln!(t, "\nproblem {}: {p}", i + 1);
        }
        for c in &self.context {
            let _ = writeln!(t, "\n{c}");
        }
        if !self.problems.is_empty() {
            let _ = writeln!(t, "\nlogs and configs kept in {}", self.dir.display());
        }
        t
    }
}

/// One source object: where, how big, how uploaded, and the seed of its bytes.
#[derive(Debug, Clone)]
struct Spec {
    key: String,
    size: u64,
    in_parts: bool,
    seed: u64,
}

/// What the destination must hold for a key.
#[derive(Debug, Clone, PartialEq)]
struct Body {
    size: u64,
    md5: String,
}

fn specs(plan: &Plan) -> Vec<Spec> {
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let mut v = Vec::new();
    let mut add = |key: String, (lo, hi): (u64, u64), in_parts: bool, rng: &mut fastrand::Rng| {
        v.push(Spec {
            key,
            size: rng.u64(lo..=hi),
            in_parts,
            seed: rng.u64(..),
        })
    };
    // Two levels of prefixes, so that the finder lists shards in parallel.
    for i in 0..plan.small {
        add(
            format!("small/{:02}/{i:05}.bin", i % 16),
            plan.small_bytes,
            false,
            &mut rng,
        );
    }
    for i in 0..plan.multipart {
        add(
            format!("multipart/{i:02}.bin"),
            plan.multipart_bytes,
            i % 2 == 0,
            &mut rng,
        );
    }
    for i in 0..plan.giants {
        add(format!("giant/{i}.bin"), plan.giant_bytes, true, &mut rng);
    }
    v
}

/// Bytes from a seeded generator (fastrand's wyrand: fast even unoptimised, since dependencies are built with
/// opt-level 1).
fn bytes(rng: &mut fastrand::Rng, n: u64) -> Vec<u8> {
    let mut v = vec![0u8; n as usize];
    rng.fill(&mut v);
    v
}

/// Write one source object; its size and MD5.
async fn upload(w: &World, s: &Spec, part: u64) -> Body {
    let mut rng = fastrand::Rng::with_seed(s.seed);
    let mut md5 = Md5::new();
    if !s.in_parts {
        let body = bytes(&mut rng, s.size);
        md5.update(&body);
        w.s3.put_object()
            .bucket(SRC)
            .key(&s.key)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap_or_else(|e| panic!("writing source {}: {e:?}", s.key));
    } else {
        // Part by part, so that a giant is never whole in memory.
        let up =
            w.s3.create_multipart_upload()
                .bucket(SRC)
                .key(&s.key)
                .send()
                .await
                .unwrap();
        let id = up.upload_id().unwrap();
        let (mut done, mut n) = (Vec::new(), 0);
        while done.len() as u64 * part < s.size {
            n += 1;
            let chunk = bytes(&mut rng, part.min(s.size - (n as u64 - 1) * part));
            md5.update(&chunk);
            let p =
                w.s3.upload_part()
                    .bucket(SRC)
                    .key(&s.key)
                    .upload_id(id)
                    .part_number(n)
                    .body(ByteStream::from(chunk))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("writing source {} part {n}: {e:?}", s.key));
            done.push(
                CompletedPart::builder()
                    .part_number(n)
                    .e_tag(p.e_tag().unwrap())
                    .build(),
            );
        }
        w.s3.complete_multipart_upload()
            .bucket(SRC)
            .key(&s.key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    Body {
        size: s.size,
        md5: hex::encode(md5.finalize()),
    }
}

/// Size and MD5 of an object at the destination, its body streamed; `None` if it is not there.
async fn read_back(w: &World, key: &str) -> Result<Body, String> {
    let o =
        w.s3.get_object()
            .bucket(DST)
            .key(key)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
    let mut body = o.body;
    let (mut md5, mut size) = (Md5::new(), 0u64);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("reading the body: {e:?}"))?;
        size += chunk.len() as u64;
        md5.update(&chunk);
    }
    Ok(Body {
        size,
        md5: hex::encode(md5.finalize()),
    })
}

/// What the harness saw of the fleet: every worker's log, the kills, and every call through the proxy.
struct Seen<'a> {
    logs: &'a [PathBuf],
    kills: &'a [Kill],
    proxy: &'a FaultProxy,
}

/// A SIGKILL: when, and the victim's log.
struct Kill {
    at: time::OffsetDateTime,
    log: PathBuf,
}

/// A worker of the fleet: its process (none once it exited by itself), its current log, how often it started.
struct Slot {
    proc: Option<Proc>,
    log: PathBuf,
}

fn start(w: &World, cfg: &std::path::Path, figures: &mut Figures) -> Slot {
    let (proc, log) = w.spawn_worker(cfg, &["--exit-when-idle", EXIT_WHEN_IDLE_SECS]);
    figures.worker_starts += 1;
    Slot {
        proc: Some(proc),
        log,
    }
}

/// The last `n` lines of a log.
fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run the scenario. Panics only when the world cannot be set up (moto missing, the source not writable).
pub async fn run(plan: Plan) -> Figures {
    if let Err(e) = plan.check() {
        panic!("chaos plan {}: {e}", plan.name);
    }
    let w = World::start(&plan.name).await;
    let mut f = Figures {
        seed: plan.seed,
        small: plan.small,
        multipart: plan.multipart,
        giants: plan.giants,
        dir: w.dir.clone(),
        ..Figures::default()
    };
    w.bucket(SRC).await;
    w.bucket(DST).await;
    w.table(TABLE).await;
    let q = w
        .queues(QUEUE, plan.max_attempts, VISIBILITY_SECS as u32)
        .await;

    // The source, from the seed.
    let t = Instant::now();
    let specs = specs(&plan);
    let (large, small): (Vec<&Spec>, Vec<&Spec>) =
        specs.iter().partition(|s| s.size >= plan.part_bytes);
    let mut expected: BTreeMap<String, Body> = BTreeMap::new();
    for (set, in_flight) in [(small, SMALL_IN_FLIGHT), (large, LARGE_IN_FLIGHT)] {
        let written: Vec<(String, Body)> = stream::iter(set)
            .map(|s| {
                let w = &w;
                async move { (s.key.clone(), upload(w, s, plan.part_bytes).await) }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        expected.extend(written);
    }
    f.upload = t.elapsed();
    f.objects = expected.len() as u64;
    f.bytes = expected.values().map(|b| b.size).sum();
    eprintln!(
        "chaos {}: source written: {} objects, {} bytes in {:.1} s",
        plan.name,
        f.objects,
        f.bytes,
        f.upload.as_secs_f64()
    );

    // Every call of the finder and the workers goes through a proxy: it corrects where moto's S3 answers
    // differ from S3's (see `FaultProxy::answer_s3_as_aws`), after the faults of the plan if it has any.
    let proxy = w.fault_proxy().await;
    if let Some(faults) = &plan.faults {
        inject_faults(&proxy, faults, plan.seed);
    }
    proxy.answer_s3_as_aws();
    let patch = json!({
        "finder": {"depth": 2, "parallelism": 4},
        "multipart": {"threshold": MULTIPART_THRESHOLD, "chunk_size": plan.part_bytes, "giant_threshold": plan.giant_threshold},
        "batch": {"max_objects": 50},
        "max_attempts": plan.max_attempts,
        "worker": {"concurrency": 4, "part_concurrency": 2, "heartbeat_secs": 5, "visibility_secs": VISIBILITY_SECS}
    });
    let direct = w.config(SRC, DST, &q, TABLE, patch.clone());
    let cfg = {
        let mut patch = patch.clone();
        crate::merge(&mut patch, proxy.config_patch());
        w.config(SRC, DST, &q, TABLE, patch)
    };

    // The finder, once (the binaries built first, outside its time).
    crate::bin("finder");
    let t = Instant::now();
    let found = w.run("finder", &cfg, &["--json"]);
    f.find = t.elapsed();
    if !found.status.success() {
        f.problems.push(format!(
            "the finder failed ({}):\n{}",
            found.status,
            crate::stderr(&found)
        ));
        return finish(w, f, proxy);
    }
    let report: serde_json::Value =
        serde_json::from_str(&crate::stdout(&found)).unwrap_or_default();
    let run = report["run"].as_str().unwrap_or_default().to_owned();
    f.jobs = report["jobs"].as_u64().unwrap_or_default();
    if report["to_move"].as_u64() != Some(f.objects) {
        f.problems.push(format!(
            "the finder found {} objects to move, not {}: {report}",
            report["to_move"], f.objects
        ));
    }
    eprintln!(
        "chaos {}: finder: run {run}, {} jobs in {:.1} s",
        plan.name,
        f.jobs,
        f.find.as_secs_f64()
    );

    // The fleet, killed at random until the queue is drained.
    let t = Instant::now();
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ 0x6b69_6c6c);
    let draw = |rng: &mut fastrand::Rng| {
        plan.kill_every.map(|(lo, hi)| {
            let ms = rng.u64(lo.as_millis() as u64..=hi.as_millis() as u64);
            Instant::now() + Duration::from_millis(ms)
        })
    };
    let mut kills: Vec<Kill> = Vec::new();
    let mut slots: Vec<Slot> = (0..plan.workers).map(|_| start(&w, &cfg, &mut f)).collect();
    let mut logs: Vec<PathBuf> = slots.iter().map(|s| s.log.clone()).collect();
    let mut next_kill = draw(&mut rng);
    let mut timed_out = false;
    loop {
        for slot in slots.iter_mut() {
            let Some(p) = slot.proc.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = p.try_wait() else {
                continue;
            };
            slot.proc = None;
            if !status.success() {
                // Not by our hand (a kill is reaped where it is made): a defect. Started again, so that the
                // transfer goes on and the other checks still say what they find.
                f.worker_failures += 1;
                f.problems.push(format!(
                    "a worker exited by itself with {status}; the end of its log ({}):\n{}",
                    slot.log.display(),
                    tail(&slot.log, 30)
                ));
                *slot = start(&w, &cfg, &mut f);
                logs.push(slot.log.clone());
            }
        }
        if slots.iter().all(|s| s.proc.is_none()) {
            break;
        }
        if t.elapsed() > plan.deadline {
            timed_out = true;
            break;
        }
        if next_kill.is_some_and(|at| Instant::now() >= at) {
            next_kill = draw(&mut rng);
            // Only while work is left: once the queue is drained the workers are let go.
            if w.depth(&q.url).await != (0, 0) {
                let live: Vec<usize> = (0..slots.len())
                    .filter(|&i| slots[i].proc.is_some())
                    .collect();
                if !live.is_empty() {
                    let i = live[rng.usize(..live.len())];
                    let mut p = slots[i].proc.take().unwrap();
                    let _ = p.kill(); // SIGKILL
                    kills.push(Kill {
                        at: time::OffsetDateTime::now_utc(),
                        log: slots[i].log.clone(),
                    });
                    let _ = p.wait();
                    f.kills += 1;
                    slots[i] = start(&w, &cfg, &mut f);
                    logs.push(slots[i].log.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    f.transfer = t.elapsed();
    if timed_out {
        let pending = pending_report(&w, &q, &run, &expected).await;
        f.problems.push(format!(
            "the transfer did not finish within {:?} ({} workers still running): {pending}",
            plan.deadline,
            slots.iter().filter(|s| s.proc.is_some()).count()
        ));
    }
    drop(slots); // kills whatever is left
    eprintln!(
        "chaos {}: fleet done in {:.1} s: {} kills, {} worker starts",
        plan.name,
        f.transfer.as_secs_f64(),
        f.kills,
        f.worker_starts
    );

    let t = Instant::now();
    let seen = Seen {
        logs: &logs,
        kills: &kills,
        proxy: &proxy,
    };
    check(&w, &q, &run, &expected, &direct, &seen, &mut f).await;
    f.verify = t.elapsed();
    finish(w, f, proxy)
}

/// Rules failing `faults.ratio` of every service's calls (split over the fault kinds) and delaying some.
fn inject_faults(proxy: &FaultProxy, faults: &Faults, seed: u64) {
    let mut n = 0u64;
    for service in ["s3", "sqs", "dynamodb"] {
        let mut kinds = vec![
            Fault::InternalError,
            Fault::Throttling,
            Fault::TruncatedBody,
            Fault::ResetMidBody,
        ];
        if service == "s3" {
            kinds.push(Fault::ResetMidRequest);
        }
        // Rules are tried in order and each draws only for the calls that reach it: an even split of the ratio
        // over k rules is (nearly) ratio / k for each.
        let each = faults.ratio / kinds.len() as f64;
        for kind in kinds {
            n += 1;
            proxy.inject(Rule::on(service, "*", kind).share(each, seed.wrapping_add(n)));
        }
        n += 1;
        proxy.inject(
            Rule::on(service, "*", Fault::Delay(faults.delay))
                .share(faults.delay_ratio, seed.wrapping_add(n)),
        );
    }
}

/// The figures of the proxy, then the world dropped (its directory kept if anything went wrong).
fn finish(w: World, mut f: Figures, proxy: FaultProxy) -> Figures {
    let mut injected: BTreeMap<String, usize> = BTreeMap::new();
    for c in proxy.journal() {
        let Some(label) = c.fault else {
            continue;
        };
        // A call the proxy could not finish carries the error after its fault's label (none: no fault): a
        // client gone mid-call, as a SIGKILLed worker is.
        let (kind, lost) = match label.split_once(" proxy error: ") {
            Some((kind, _)) => (kind.to_owned(), true),
            None => (label, false),
        };
        let key = match kind.as_str() {
            "Rewrite" if lost => "calls cut by their client".to_owned(),
            "Rewrite" => continue, // moto's answer made S3's: not a fault
            "" => "calls cut by their client".to_owned(),
            k if k.starts_with("Delay") => "Delay".to_owned(),
            k => {
                *injected.entry(c.service.clone()).or_default() += 1;
                k.to_owned()
            }
        };
        *f.faults.entry(format!("{} {key}", c.service)).or_default() += 1;
    }
    for svc in ["s3", "sqs", "dynamodb"] {
        f.calls.insert(
            svc.into(),
            (
                proxy.calls(svc, "*"),
                injected.get(svc).copied().unwrap_or(0),
            ),
        );
    }
    if !f.problems.is_empty() {
        w.keep_dir();
    }
    f
}

/// What is still pending: the queues, and the objects whose ledger rows are not DONE.
async fn pending_report(
    w: &World,
    q: &Queues,
    run: &str,
    expected: &BTreeMap<String, Body>,
) -> String {
    let rows = w.ledger_rows(TABLE, run).await;
    let not_done: Vec<String> = expected
        .keys()
        .filter(|k| rows.get(*k).map(String::as_str) != Some("DONE"))
        .map(|k| format!("{k}: {}", rows.get(k).map_or("no row", String::as_str)))
        .collect();
    format!(
        "job queue (visible, in flight) {:?}, dead-letter queue {:?}; {} objects not DONE in the ledger{}",
        w.depth(&q.url).await,
        w.depth(&q.dlq_url).await,
        not_done.len(),
        list(&not_done, 20)
    )
}

/// Up to `n` items, one a line.
fn list(items: &[String], n: usize) -> String {
    let mut s: String = items.iter().take(n).map(|i| format!("\n  {i}")).collect();
    if items.len() > n {
        let _ = write!(s, "\n  … and {} more", items.len() - n);
    }
    s
}

/// Every check; each failure into `f.problems`, with its diagnosis.
async fn check(
    w: &World,
    q: &Queues,
    run: &str,
    expected: &BTreeMap<String, Body>,
    direct: &std::path::Path,
    seen: &Seen<'_>,
    f: &mut Figures,
) {
    let (logs, kills) = (seen.logs, seen.kills);
    let ledger = DynamoLedger::new(w.ddb.clone(), TABLE);
    let rows: BTreeMap<String, dth_core::ledger::ObjectRecord> = ledger
        .objects(run)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect();
    let row_of = |k: &str| match rows.get(k) {
        Some(r) => format!(
            "ledger: {} attempt {} size {} etag {:?}{}",
            r.status.as_str(),
            r.attempt,
            r.size,
            r.etag,
            r.error
                .as_deref()
                .map(|e| format!(" error {e:?}"))
                .unwrap_or_default()
        ),
        None => "ledger: no row".into(),
    };
    f.redelivered_objects = rows.values().filter(|r| r.attempt > 1).count();
    f.max_attempt = rows.values().map(|r| r.attempt).max().unwrap_or(0);

    // 1. Every object, byte for byte; nothing else.
    let at_dst: BTreeSet<String> = w.keys(DST).await.into_iter().collect();
    let extra: Vec<String> = at_dst
        .iter()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    if !extra.is_empty() {
        f.problems.push(format!(
            "{} objects at the destination that the source does not have:{}",
            extra.len(),
            list(&extra, 20)
        ));
    }
    let read: Vec<(String, Result<Body, String>)> = stream::iter(expected.iter())
        // Bodies are streamed: memory stays at a few chunks per read, whatever the objects' sizes.
        .map(|(k, _)| async move { (k.clone(), read_back(w, k).await) })
        .buffer_unordered(SMALL_IN_FLIGHT)
        .collect()
        .await;
    let mut wrong = Vec::new();
    for (k, got) in read {
        let want = &expected[&k];
        match got {
            Ok(b) if &b == want => {}
            Ok(b) => wrong.push(format!(
                "{k}: {} bytes MD5 {} at the destination, {} bytes MD5 {} at the source; {}",
                b.size,
                b.md5,
                want.size,
                want.md5,
                row_of(&k)
            )),
            Err(e) if !at_dst.contains(&k) => wrong.push(format!(
                "{k}: missing at the destination ({}); {}",
                e.chars().take(120).collect::<String>(),
                row_of(&k)
            )),
            Err(e) => wrong.push(format!("{k}: unreadable: {e}; {}", row_of(&k))),
        }
    }
    if !wrong.is_empty() {
        f.problems.push(format!(
            "{} of {} objects missing or different at the destination:{}",
            wrong.len(),
            expected.len(),
            list(&wrong, 30)
        ));
    }

    // 2. No multipart upload left open, at the destination or in the ledger.
    let open =
        w.s3.list_multipart_uploads()
            .bucket(DST)
            .send()
            .await
            .map(|o| o.uploads().to_vec())
            .unwrap_or_default();
    if !open.is_empty() {
        let mut lines = Vec::new();
        for u in &open {
            let key = u.key().unwrap_or_default();
            let rec = ledger.upload(run, key).await.ok().flatten();
            lines.push(format!(
                "{key} upload {} started {:?}; the ledger's upload for the key: {}",
                u.upload_id().unwrap_or_default(),
                u.initiated(),
                rec.map_or("none".into(), |r| format!(
                    "{} status {} parts {}/{}",
                    r.upload_id,
                    r.status,
                    r.part_etags.len(),
                    r.parts
                ))
            ));
        }
        f.problems.push(format!(
            "{} multipart uploads left open at the destination:{}",
            open.len(),
            list(&lines, 20)
        ));
    }
    match ledger.open_uploads().await {
        Ok(u) if u.is_empty() => {}
        Ok(u) => f.problems.push(format!(
            "the ledger still records {} uploads as open:{}",
            u.len(),
            list(
                &u.iter()
                    .map(|u| format!("{} {} (run {})", u.key, u.upload_id, u.run))
                    .collect::<Vec<_>>(),
                20
            )
        )),
        Err(e) => f
            .problems
            .push(format!("reading the ledger's open uploads: {e}")),
    }

    // 3. The run summary's counts, exact.
    let summary = ledger.summary(run).await.ok().flatten().unwrap_or_default();
    let want = (f.objects, f.bytes, f.objects, f.bytes, 0, 0);
    let got = (
        summary.objects_found,
        summary.bytes_found,
        summary.objects_done,
        summary.bytes_done,
        summary.objects_failed,
        summary.objects_gone,
    );
    if got != want {
        let done_rows: Vec<&dth_core::ledger::ObjectRecord> =
            rows.values().filter(|r| r.status == Status::Done).collect();
        let (rows_done, rows_bytes) = (
            done_rows.len() as u64,
            done_rows.iter().map(|r| r.size).sum::<u64>(),
        );
        let markers = job_markers(w, run).await;
        let mut why = format!(
            "the run summary says found {} ({} bytes), done {} ({} bytes), failed {}, gone {}; the transfer is \
             {} objects ({} bytes). The ledger's rows say {rows_done} DONE ({rows_bytes} bytes) of {} rows; {} \
             jobs are marked counted ({} of them giant uploads).",
            got.0,
            got.1,
            got.2,
            got.3,
            got.4,
            got.5,
            f.objects,
            f.bytes,
            rows.len(),
            markers.len(),
            markers.iter().filter(|m| m.id.starts_with("upload-")).count(),
        );
        if summary.objects_done < rows_done {
            let missing = (
                rows_done - summary.objects_done,
                rows_bytes - summary.bytes_done.min(rows_bytes),
            );
            let _ = write!(
                why,
                " {} objects ({} bytes) are DONE but not counted: a job marked counted (its marker written) whose \
                 ADD to the summary never landed — count_job's two calls, the process killed between them — or an \
                 object recorded DONE whose job was never counted.",
                missing.0, missing.1
            );
            for m in markers.iter().filter(|m| m.packed == missing) {
                let _ = write!(
                    why,
                    "\n  job marker job#{} (written {}) packs exactly that: {} objects, {} bytes{}",
                    m.id,
                    m.at.map_or("?".into(), |t| t.to_string()),
                    m.packed.0,
                    m.packed.1,
                    nearest_kill(kills, m.at)
                );
            }
            let close: Vec<String> = markers
                .iter()
                .filter(|m| {
                    m.at.is_some_and(|at| {
                        kills.iter().any(|k| {
                            let d = k.at - at;
                            d >= time::Duration::ZERO && d < time::Duration::milliseconds(500)
                        })
                    })
                })
                .map(|m| {
                    format!(
                        "job#{} written {} ({} packed objects, {} bytes){}",
                        m.id,
                        m.at.map_or("?".into(), |t| t.to_string()),
                        m.packed.0,
                        m.packed.1,
                        nearest_kill(kills, m.at)
                    )
                })
                .collect();
            if !close.is_empty() {
                let _ = write!(
                    why,
                    "\n  job markers written less than 500 ms before a SIGKILL:{}",
                    list(&close, 10)
                );
            }
        } else if summary.objects_done > rows_done {
            let _ = write!(
                why,
                " {} objects ({} bytes) more are counted than DONE: a job counted twice — an ADD the SDK sent again \
                 after its first attempt had taken effect, two markers for one job, or two uploads of one giant \
                 both counted.",
                summary.objects_done - rows_done,
                summary.bytes_done.saturating_sub(rows_bytes)
            );
        }
        why.push_str(&counting_calls(seen.proxy, &markers, &rows));
        f.problems.push(why);
    }

    // 4. Every ledger row DONE.
    let mut not_done: Vec<String> = Vec::new();
    for k in expected
        .keys()
        .filter(|k| rows.get(*k).map(|r| r.status) != Some(Status::Done))
    {
        // A multipart object's row is its upload's record until the copy is recorded: say where it stopped, and
        // what the destination holds.
        let upload = match ledger.upload(run, k).await {
            Ok(Some(u)) => format!(
                "; its upload {} is {} with {}/{} parts recorded",
                u.upload_id,
                u.status,
                u.part_etags.len(),
                u.parts
            ),
            _ => String::new(),
        };
        let at_dst = match w.s3.head_object().bucket(DST).key(k).send().await {
            Ok(h) => format!(
                "; the destination holds {} bytes, ETag {}{}",
                h.content_length().unwrap_or(-1),
                h.e_tag().unwrap_or_default(),
                if at_dst.contains(k) && !wrong.iter().any(|l| l.starts_with(&format!("{k}:"))) {
                    " (byte-identical to the source)"
                } else {
                    ""
                }
            ),
            Err(_) => "; nothing at the destination".into(),
        };
        not_done.push(format!("{k}: {}{upload}{at_dst}", row_of(k)));
    }
    if !not_done.is_empty() {
        f.problems.push(format!(
            "{} objects not DONE in the ledger:{}",
            not_done.len(),
            list(&not_done, 30)
        ));
    }

    // 5. Nothing left on the queues.
    let jobs = w.depth(&q.url).await;
    let dead = w.depth(&q.dlq_url).await;
    if jobs != (0, 0) {
        f.problems.push(format!(
            "the job queue still holds {} visible and {} in flight",
            jobs.0, jobs.1
        ));
    }
    if dead != (0, 0) {
        f.problems.push(format!(
            "the dead-letter queue holds {} visible and {} in flight:{}",
            dead.0,
            dead.1,
            list(&dead_letters(w, &q.dlq_url).await, 20)
        ));
    }

    // 6. In sync, by the provider's status rule.
    let runs = ledger.latest_runs().await.unwrap_or_default();
    let progress = Progress {
        objects_found: summary.objects_found,
        bytes_found: summary.bytes_found,
        objects_done: summary.objects_done,
        bytes_done: summary.bytes_done,
        objects_failed: summary.objects_failed,
        objects_gone: summary.objects_gone,
        queue_visible: jobs.0,
        queue_in_flight: jobs.1,
        dead_letters: dead.0 + dead.1,
        last_finder_run: summary.started_at.clone(),
        finder_finished: summary.finished_at.is_some(),
        finder_error: runs.failed.map(|r| r.error),
        ..Progress::default()
    };
    let status = progress.status_of();
    if runs.good.as_deref() != Some(run) || status != TransferStatus::InSync {
        f.problems.push(format!(
            "the transfer is {} (latest run {:?}, this run {run}), not in_sync: {progress:?}",
            status.as_str(),
            runs.good
        ));
    }

    // 7. A second pass of the finder finds nothing to move.
    let again = w.run("finder", direct, &["--dry-run", "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(&crate::stdout(&again)).unwrap_or_default();
    if !again.status.success() || report["to_move"].as_u64() != Some(0) {
        f.problems.push(format!(
            "a second finder pass would move {} objects: {}{}",
            report["to_move"],
            crate::stdout(&again),
            crate::stderr(&again)
        ));
    }

    if !f.problems.is_empty() {
        f.context.push(worker_complaints(logs));
    }
}

/// A job marker of the ledger (`job#<id>`): the job counted, when, and the objects packed into it (count,
/// bytes of those DONE).
struct Marker {
    id: String,
    at: Option<time::OffsetDateTime>,
    packed: (u64, u64),
}

async fn job_markers(w: &World, run: &str) -> Vec<Marker> {
    let mut markers = Vec::new();
    let mut start = None;
    loop {
        let Ok(out) = w
            .ddb
            .query()
            .table_name(TABLE)
            .key_condition_expression("pk = :pk AND begins_with(sk, :job)")
            .expression_attribute_values(":pk", Av::S(format!("run#{run}")))
            .expression_attribute_values(":job", Av::S("job#".into()))
            .set_exclusive_start_key(start)
            .send()
            .await
        else {
            break;
        };
        for i in out.items() {
            let s = |k: &str| i.get(k).and_then(|v| v.as_s().ok()).cloned();
            let packed: Vec<(String, String, u64, String, u64)> = s("objects")
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default();
            markers.push(Marker {
                id: s("sk")
                    .unwrap_or_default()
                    .trim_start_matches("job#")
                    .to_owned(),
                at: s("at").and_then(|t| {
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .ok()
                }),
                packed: (
                    packed.len() as u64,
                    packed.iter().filter(|o| o.1 == "DONE").map(|o| o.2).sum(),
                ),
            });
        }
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    markers
}

/// How the proxy saw the counting of jobs: the marker writes (a conditional PutItem of `job#<id>`) that did not
/// simply succeed once, and the summary ADDs (UpdateItem) against the markers.
fn counting_calls(
    proxy: &FaultProxy,
    markers: &[Marker],
    rows: &BTreeMap<String, dth_core::ledger::ObjectRecord>,
) -> String {
    let journal = proxy.journal();
    let answer = |c: &crate::fault::Call| {
        let status = c
            .status
            .map_or("no answer (reset or cut)".into(), |s| s.to_string());
        match &c.fault {
            Some(f) => format!("{status} [{f}]"),
            None => status,
        }
    };
    let mut odd = Vec::new();
    for m in markers {
        let needle = format!("\"job#{}\"", m.id);
        let calls: Vec<&crate::fault::Call> = journal
            .iter()
            .filter(|c| c.operation == "PutItem" && c.subject.contains(&needle))
            .collect();
        let puts: Vec<String> = calls.iter().map(|c| answer(c)).collect();
        if calls.is_empty() {
            odd.push(format!(
                "job#{}: its marker PutItem never went through the proxy",
                m.id
            ));
        } else if calls.len() != 1 || calls[0].status != Some(200) {
            odd.push(format!(
                "job#{} ({} packed objects, {} bytes): its marker PutItem answered {}",
                m.id,
                m.packed.0,
                m.packed.1,
                puts.join(", then ")
            ));
        }
    }
    let adds: Vec<&crate::fault::Call> = journal
        .iter()
        .filter(|c| c.operation == "UpdateItem" && c.subject.contains("ADD objects_done"))
        .collect();
    let mut s = format!(
        "\n  through the proxy: {} summary ADDs answered 200 (of {} sent) for {} job markers",
        adds.iter().filter(|c| c.status == Some(200)).count(),
        adds.len(),
        markers.len()
    );
    // An ADD whose answer never came whole may have taken effect: its values, and the marker they match.
    let broken: Vec<String> = adds
        .iter()
        .filter(|c| c.status != Some(200))
        .map(|c| {
            let v: serde_json::Value = serde_json::from_str(&c.subject).unwrap_or_default();
            let n = |k: &str| {
                v["ExpressionAttributeValues"][k]["N"]
                    .as_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let (d, b) = (n(":d"), n(":b"));
            let mut of: Vec<String> = markers
                .iter()
                .filter(|m| m.packed == (d, b))
                .map(|m| format!("job#{}", m.id))
                .collect();
            if of.is_empty() && d == 1 {
                // A job of one large object: its row is its own, not packed into the marker.
                of.extend(
                    rows.values()
                        .filter(|r| r.size == b && r.status == Status::Done)
                        .map(|r| format!("the job of {}", r.key)),
                );
            }
            format!(
                "ADD objects_done {d}, bytes_done {b} answered {}{}",
                answer(c),
                if of.is_empty() {
                    String::new()
                } else {
                    format!(" — the totals of {}", of.join(", "))
                }
            )
        })
        .collect();
    if !broken.is_empty() {
        let _ = write!(
            s,
            ". Summary ADDs without a whole answer (one that reached moto took effect; the SDK sends it again):{}",
            list(&broken, 10)
        );
    }
    if !odd.is_empty() {
        let _ = write!(
            s,
            ". Marker writes that did not succeed at once (a 400 after a call that reached moto is the conditional \
             put finding the marker its own earlier attempt wrote: count_job then takes the job as counted before \
             and never sends its ADD):{}",
            list(&odd, 10)
        );
    }
    s
}

/// The first SIGKILL after `at`, as a clause.
fn nearest_kill(kills: &[Kill], at: Option<time::OffsetDateTime>) -> String {
    let Some(at) = at else {
        return String::new();
    };
    kills
        .iter()
        .filter(|k| k.at >= at)
        .min_by_key(|k| k.at - at)
        .map(|k| {
            format!(
                "; {} ms later the harness SIGKILLed the worker logging to {}",
                (k.at - at).whole_milliseconds(),
                k.log.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .unwrap_or_default()
}

/// The dead letters, summarised: kind, delivery count and the keys (or key and part) of each.
async fn dead_letters(w: &World, url: &str) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..20 {
        let Ok(r) = w
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(300)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
        else {
            break;
        };
        if r.messages().is_empty() {
            break;
        }
        for m in r.messages() {
            let body: serde_json::Value =
                serde_json::from_str(m.body().unwrap_or_default()).unwrap_or_default();
            let what = match body["kind"].as_str() {
                Some("copy") => format!(
                    "copy job {} of {} objects (first {})",
                    body["id"],
                    body["objects"].as_array().map_or(0, Vec::len),
                    body["objects"][0]["key"]
                ),
                Some("part") => format!(
                    "part job {} of {} part {}/{} upload {}",
                    body["id"],
                    body["object"]["key"],
                    body["part"],
                    body["parts"],
                    body["upload_id"]
                ),
                Some(kind) => format!("{kind} job {}: {}", body["id"], body["object"]["key"]),
                None => m.body().unwrap_or_default().chars().take(200).collect(),
            };
            out.push(what);
        }
    }
    out
}

/// The warnings and errors of every worker, counted by message, a few of each quoted: what the workers
/// themselves said went wrong.
fn worker_complaints(logs: &[PathBuf]) -> String {
    let mut by_kind: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            if !(line.contains(" WARN ") || line.contains(" ERROR ")) {
                continue;
            }
            // The message without its fields' values: the text after the last `: ` of the target, cut short.
            let msg = line
                .split_once(": ")
                .map_or(line, |(_, m)| m)
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .take(60)
                .collect::<String>();
            let e = by_kind.entry(msg).or_default();
            e.0 += 1;
            if e.1.len() < 2 {
                e.1.push(format!(
                    "{}: {}",
                    log.file_name().unwrap_or_default().to_string_lossy(),
                    line.chars().take(400).collect::<String>()
                ));
            }
        }
    }
    if by_kind.is_empty() {
        return format!(
            "the workers logged no warning or error ({} logs)",
            logs.len()
        );
    }
    let mut s = format!(
        "what the workers logged as warnings and errors ({} logs):",
        logs.len()
    );
    for (n, quotes) in by_kind.values() {
        let _ = write!(s, "\n  {n} ×");
        for q in quotes {
            let _ = write!(s, "\n    {q}");
        }
    }
    s
}
