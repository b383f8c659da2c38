//! The finder: list source and destination, decide what must move, pack it into jobs and enqueue them.
//!
//! Listing is split into shards: with `finder.depth = d`, the first `d` levels of common prefixes are listed
//! with a delimiter and every prefix found becomes a shard of its own, listed in parallel. The objects that
//! sit directly at those upper levels are merged as part of the level's own shard, so nothing above the depth
//! is lost. Within a shard the source and destination listings are merged page by page (both are sorted), so
//! memory stays at a page per side per shard, whatever the bucket holds.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::config::JobConfig;
use crate::diff::{compare, same_content, KeyFilter, Verdict};
use crate::error::{Error, ErrorKind, Result};
use crate::etag::{encrypted_without_md5, EtagModel};
use crate::job::{new_id, Job, JobObject, Packer};
use crate::ledger::DynamoLedger;
use crate::queue::SqsQueue;
use crate::stats::{StatEvent, Stats};
use crate::store::{etag_part_count, is_archive_class, ObjectInfo, ObjectStore, Pin};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shard {
    /// Objects directly under `prefix` (delimiter `/`); common prefixes become new shards.
    Level { prefix: String, depth: u32 },
    /// Everything under `prefix`.
    Flat { prefix: String },
}

/// Counts from one pass over the source.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FindCounts {
    pub scanned: u64,
    pub to_move: u64,
    pub bytes_to_move: u64,
    pub up_to_date: u64,
    pub filtered: u64,
    pub archived: u64,
}

impl FindCounts {
    fn add(&mut self, o: &FindCounts) {
        self.scanned += o.scanned;
        self.to_move += o.to_move;
        self.bytes_to_move += o.bytes_to_move;
        self.up_to_date += o.up_to_date;
        self.filtered += o.filtered;
        self.archived += o.archived;
    }
}

/// Pages through one listing, one page in memory.
struct Lister<'a> {
    store: &'a dyn ObjectStore,
    prefix: String,
    delimiter: Option<&'static str>,
    page: VecDeque<ObjectInfo>,
    prefixes: Vec<String>,
    token: Option<String>,
    done: bool,
}

impl<'a> Lister<'a> {
    fn new(store: &'a dyn ObjectStore, prefix: String, delimiter: Option<&'static str>) -> Self {
        Self {
            store,
            prefix,
            delimiter,
            page: VecDeque::new(),
            prefixes: vec![],
            token: None,
            done: false,
        }
    }

    async fn fill(&mut self) -> Result<()> {
        while self.page.is_empty() && !self.done {
            let p = self
                .store
                .list(&self.prefix, self.delimiter, self.token.take())
                .await?;
            self.page.extend(p.objects);
            self.prefixes.extend(p.common_prefixes);
            self.token = p.next_token;
            self.done = self.token.is_none();
        }
        Ok(())
    }

    async fn peek(&mut self) -> Result<Option<&ObjectInfo>> {
        self.fill().await?;
        Ok(self.page.front())
    }

    async fn next(&mut self) -> Result<Option<ObjectInfo>> {
        self.fill().await?;
        Ok(self.page.pop_front())
    }
}

struct Finder<'a> {
    cfg: &'a JobConfig,
    src: &'a dyn ObjectStore,
    dst: &'a dyn ObjectStore,
    filter: KeyFilter,
    out: mpsc::Sender<JobObject>,
    stats: Stats,
    model: EtagModel,
}

impl Finder<'_> {
    async fn shard(&self, shard: Shard) -> Result<(FindCounts, Vec<Shard>)> {
        let (prefix, delimiter, depth) = match &shard {
            Shard::Level { prefix, depth } => (prefix.clone(), Some("/"), *depth),
            Shard::Flat { prefix } => (prefix.clone(), None, 0),
        };
        let mut src = Lister::new(self.src, prefix.clone(), delimiter);
        let mut dst = (!self.cfg.skip_compare)
            .then(|| Lister::new(self.dst, self.cfg.destination_key(&prefix), delimiter));
        let mut counts = FindCounts::default();
        while let Some(s) = src.next().await? {
            counts.scanned += 1;
            self.stats.send(StatEvent::Scanned);
            if !self.filter.accepts(&s.key) {
                counts.filtered += 1;
                continue;
            }
            let want = self.cfg.destination_key(&s.key);
            let mut found = None;
            if let Some(d) = dst.as_mut() {
                while d.peek().await?.is_some_and(|o| o.key < want) {
                    d.next().await?;
                }
                if d.peek().await?.is_some_and(|o| o.key == want) {
                    found = d.next().await?;
                }
            }
            if is_archive_class(s.storage_class.as_deref()) {
                let head = self.src.head(&s.key, &Pin::Latest).await?;
                if head.is_archived_unrestored() {
                    counts.archived += 1;
                    continue;
                }
            }
            let verdict = if self.cfg.skip_compare {
                Verdict::Missing
            } else {
                match compare(self.cfg.compare, &self.model, &s, found.as_ref()) {
                    v @ (Verdict::NeedsChecksum | Verdict::NeedsHead) => {
                        let a = self.src.head(&s.key, &Pin::Latest).await?;
                        let b = self.dst.head(&want, &Pin::Latest).await?;
                        let same = if v == Verdict::NeedsHead {
                            self.model.same_after_head(&a, &b)
                        } else {
                            same_content(&a, &b)
                        };
                        if same {
                            Verdict::Same
                        } else {
                            Verdict::Differs
                        }
                    }
                    v => v,
                }
            };
            if !verdict.must_copy() {
                counts.up_to_date += 1;
                continue;
            }
            counts.to_move += 1;
            counts.bytes_to_move += s.size;
            self.stats.send(StatEvent::Pending { bytes: s.size });
            let job = JobObject {
                key: s.key,
                size: s.size,
                etag: s.etag,
                version_id: None,
                // The write is conditional on the destination as listed (nothing there: "").
                dest_etag: dst
                    .is_some()
                    .then(|| found.map(|d| d.etag).unwrap_or_default()),
            };
            self.out
                .send(job)
                .await
                .map_err(|_| Error::new(ErrorKind::Other, "job packer stopped"))?;
        }
        let children = std::mem::take(&mut src.prefixes)
            .into_iter()
            .map(|p| {
                if depth > 1 {
                    Shard::Level {
                        prefix: p,
                        depth: depth - 1,
                    }
                } else {
                    Shard::Flat { prefix: p }
                }
            })
            .collect();
        Ok((counts, children))
    }
}

/// Remove prefixes covered by another prefix in the list, so no key is listed twice.
pub fn normalize_roots(mut roots: Vec<String>) -> Vec<String> {
    roots.sort();
    roots.dedup();
    let mut kept: Vec<String> = Vec::new();
    for r in roots {
        if !kept.last().is_some_and(|k| r.starts_with(k.as_str())) {
            kept.push(r);
        }
    }
    kept
}

/// What the ETags of this run say: the job's model, and whether either bucket encrypts with KMS by default
/// (then its ETags are no MD5s). A bucket that will not say (no permission, a store without the API) is
/// taken as not: a pair of differing MD5-like ETags is then decided by HEAD of both.
async fn etag_model(cfg: &JobConfig, src: &dyn ObjectStore, dst: &dyn ObjectStore) -> EtagModel {
    let mut model = crate::copy::model_for(cfg);
    if cfg.skip_compare || cfg.compare != crate::config::CompareMode::SizeEtag {
        return model;
    }
    let kms = |side: &str, store: &dyn ObjectStore, r: Result<Option<String>>| match r {
        Ok(sse) => encrypted_without_md5(sse.as_deref()),
        Err(e) => {
            tracing::debug!(bucket = %store.bucket(), "{side} default encryption unknown: {e}");
            false
        }
    };
    if model.source_trusted() {
        model.source_md5 = !kms("source", src, src.default_encryption().await);
    }
    if model.dest_md5 {
        model.dest_md5 = !kms("destination", dst, dst.default_encryption().await);
    }
    model
}

/// List `roots` on both sides and send every object that must move to `out`.
pub async fn find(
    cfg: &JobConfig,
    roots: Vec<String>,
    src: &dyn ObjectStore,
    dst: &dyn ObjectStore,
    out: mpsc::Sender<JobObject>,
    stats: Stats,
) -> Result<FindCounts> {
    let finder = Finder {
        cfg,
        src,
        dst,
        filter: KeyFilter::new(&cfg.filters)?,
        out,
        stats,
        model: etag_model(cfg, src, dst).await,
    };
    let depth = cfg.finder.depth;
    let mut queue: VecDeque<Shard> = normalize_roots(roots)
        .into_iter()
        .map(|prefix| {
            if depth == 0 {
                Shard::Flat { prefix }
            } else {
                Shard::Level { prefix, depth }
            }
        })
        .collect();
    let mut running = FuturesUnordered::new();
    let mut totals = FindCounts::default();
    loop {
        while running.len() < cfg.finder.parallelism as usize {
            let Some(s) = queue.pop_front() else { break };
            running.push(finder.shard(s));
        }
        let Some(done) = running.next().await else {
            break;
        };
        let (counts, children) = done?;
        totals.add(&counts);
        queue.extend(children);
    }
    Ok(totals)
}

/// Turns objects to move into jobs: small ones packed together, giant ones split across the fleet.
pub struct JobBuilder {
    threshold: u64,
    giant: u64,
    run: String,
    packer: Packer,
}

impl JobBuilder {
    pub fn new(cfg: &JobConfig, run: &str) -> Self {
        Self {
            threshold: cfg.multipart.threshold,
            giant: cfg.multipart.giant_threshold,
            run: run.into(),
            packer: Packer::new(run, cfg.batch.max_objects, cfg.batch.max_bytes),
        }
    }

    pub fn push(&mut self, o: JobObject) -> Option<Job> {
        if o.size >= self.giant {
            Some(Job::Giant {
                id: new_id(),
                run: self.run.clone(),
                object: o,
            })
        } else if o.size >= self.threshold || etag_part_count(&o.etag).is_some() {
            Some(Job::Copy {
                id: new_id(),
                run: self.run.clone(),
                objects: vec![o],
            })
        } else {
            self.packer.push(o)
        }
    }

    pub fn finish(&mut self) -> Option<Job> {
        self.packer.flush()
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FinderReport {
    pub run: String,
    pub dry_run: bool,
    #[serde(flatten)]
    pub counts: FindCounts,
    pub jobs: u64,
    /// The first keys that would move (dry run).
    pub sample_keys: Vec<String>,
    /// SQS and DynamoDB requests: `requests.sqs + requests.dynamodb`.
    pub control_plane_calls: u64,
    /// Every request sent, per service (retries included).
    pub requests: crate::requests::Requests,
    pub seconds: f64,
}

/// Where jobs go: the queue (and the run into the ledger), or nowhere for a dry run.
pub enum Sink {
    Queue {
        queue: SqsQueue,
        ledger: DynamoLedger,
    },
    DryRun,
}

/// A whole finder run: roots → find → jobs → sink.
pub async fn run(
    cfg: &JobConfig,
    roots: Vec<String>,
    src: Arc<dyn ObjectStore>,
    dst: Arc<dyn ObjectStore>,
    sink: Sink,
    run_id: Option<String>,
    stats: Stats,
) -> Result<FinderReport> {
    let start = std::time::Instant::now();
    let sent_before = crate::requests::Requests::now();
    let run = run_id.unwrap_or_else(new_run_id);
    let dry_run = matches!(sink, Sink::DryRun);
    if let Sink::Queue { ledger, .. } = &sink {
        ledger.start_run(&run).await?;
    }
    let (tx, mut rx) = mpsc::channel::<JobObject>(1024);
    let sample_n = cfg.finder.dry_run_keys as usize;
    let consumer = {
        let run = run.clone();
        let cfg = cfg.clone();
        let queue = match &sink {
            Sink::Queue { queue, .. } => Some(queue.clone()),
            Sink::DryRun => None,
        };
        async move {
            let mut builder = JobBuilder::new(&cfg, &run);
            let mut bodies = Vec::with_capacity(10);
            let mut jobs = 0u64;
            let mut sample = Vec::new();
            let mut flush = |job: Option<Job>, bodies: &mut Vec<String>| {
                if let Some(j) = job {
                    jobs += 1;
                    bodies.push(j.to_body());
                }
            };
            while let Some(o) = rx.recv().await {
                if sample.len() < sample_n {
                    sample.push(o.key.clone());
                }
                let j = builder.push(o);
                flush(j, &mut bodies);
                if bodies.len() >= 10 {
                    if let Some(q) = &queue {
                        q.send_all(std::mem::take(&mut bodies)).await?;
                    } else {
                        bodies.clear();
                    }
                }
            }
            let j = builder.finish();
            flush(j, &mut bodies);
            if let Some(q) = &queue {
                q.send_all(bodies).await?;
            }
            Ok::<_, Error>((jobs, sample))
        }
    };
    let (found, consumed) = tokio::join!(
        find(cfg, roots, src.as_ref(), dst.as_ref(), tx, stats),
        consumer
    );
    let counts = found?;
    let (jobs, sample_keys) = consumed?;
    if let Sink::Queue { ledger, .. } = &sink {
        ledger
            .finish_run(&run, counts.to_move, counts.bytes_to_move)
            .await?;
    }
    let sent = crate::requests::Requests::since(sent_before);
    Ok(FinderReport {
        run,
        dry_run,
        counts,
        jobs,
        sample_keys,
        control_plane_calls: sent.control_plane(),
        requests: sent,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Run ids sort by time: `20261123T093400Z-1a2b`.
pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    format!(
        "{}-{:04x}",
        now.format(&f).unwrap_or_default(),
        fastrand::u16(..)
    )
}

/// The prefixes to transfer: the prefix list's lines, or the configured prefix.
pub async fn roots(cfg: &JobConfig, control_s3: &aws_sdk_s3::Client) -> Result<Vec<String>> {
    let Some(list) = &cfg.source.prefix_list else {
        return Ok(vec![cfg.source.prefix.clone()]);
    };
    let text = match &list.bucket {
        Some(bucket) => {
            let o = control_s3
                .get_object()
                .bucket(bucket)
                .key(&list.key)
                .send()
                .await
                .map_err(|e| {
                    Error::from_sdk(format!("reading prefix list s3://{bucket}/{}", list.key), e)
                })?;
            let bytes = o.body.collect().await.map_err(|e| {
                Error::with_source(ErrorKind::Transient, "reading prefix list body", e)
            })?;
            String::from_utf8(bytes.to_vec()).map_err(|_| {
                Error::config("source.prefix_list", "the prefix list is not UTF-8 text")
            })?
        }
        None => tokio::fs::read_to_string(&list.key).await.map_err(|e| {
            Error::config(
                "source.prefix_list.key",
                format!("reading {}: {e}", list.key),
            )
        })?,
    };
    let roots: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| crate::config::join_prefix(&cfg.source.prefix, l))
        .collect();
    if roots.is_empty() {
        return Err(Error::config(
            "source.prefix_list",
            "the prefix list names no prefixes",
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample;
    use crate::store::memory::MemoryStore;

    async fn pending(
        cfg: &JobConfig,
        roots: Vec<String>,
        src: &MemoryStore,
        dst: &MemoryStore,
    ) -> (FindCounts, Vec<String>) {
        let (tx, mut rx) = mpsc::channel(10_000);
        let counts = find(cfg, roots, src, dst, tx, Stats::discard())
            .await
            .unwrap();
        let mut keys = vec![];
        while let Ok(o) = rx.try_recv() {
            keys.push(o.key);
        }
        keys.sort();
        (counts, keys)
    }

    fn tree() -> MemoryStore {
        let s = MemoryStore::new("src").with_page_size(3);
        for k in [
            "top",
            "a/1",
            "a/b/2",
            "a/b/c/3",
            "a/b/c/d/4",
            "a-x",
            "z/9",
            "z/y/8",
            "ü/é",
            "sp ace/+%=",
        ] {
            s.insert(k, format!("body of {k}"));
        }
        s
    }

    #[tokio::test]
    async fn no_object_is_lost_at_any_depth() {
        let src = tree();
        let dst = MemoryStore::new("dst");
        let all = src.keys();
        for depth in 0..6 {
            let mut cfg = sample();
            cfg.finder.depth = depth;
            cfg.finder.parallelism = 3;
            let (counts, keys) = pending(&cfg, vec![String::new()], &src, &dst).await;
            assert_eq!(keys, all, "depth {depth}");
            assert_eq!(counts.scanned, all.len() as u64);
        }
    }

    #[tokio::test]
    async fn merge_skips_what_is_already_there_and_catches_changes() {
        let src = tree();
        let dst = MemoryStore::new("dst").with_page_size(2);
        let mut cfg = sample();
        cfg.destination.prefix = "backup".into();
        cfg.finder.depth = 2;
        for k in src.keys() {
            dst.insert(&format!("backup/{k}"), src.object(&k).unwrap().body);
        }
        dst.insert("backup/a/b/2", "changed, same size?");
        dst.insert("backup/zz-extra", "only at the destination");
        let (counts, keys) = pending(&cfg, vec![String::new()], &src, &dst).await;
        assert_eq!(keys, vec!["a/b/2"]);
        assert_eq!(counts.up_to_date, src.keys().len() as u64 - 1);

        // Same size, different content: size mode misses it, size-etag catches it.
        dst.insert("backup/a/b/2", "body of a/b/X");
        let (_, keys) = pending(&cfg, vec![String::new()], &src, &dst).await;
        assert_eq!(keys, vec!["a/b/2"]);
        cfg.compare = crate::config::CompareMode::Size;
        let (_, keys) = pending(&cfg, vec![String::new()], &src, &dst).await;
        assert!(keys.is_empty());
        cfg.skip_compare = true;
        let (_, keys) = pending(&cfg, vec![String::new()], &src, &dst).await;
        assert_eq!(keys.len(), src.keys().len());
    }

    #[tokio::test]
    async fn filters_archives_and_prefix_lists() {
        let src = tree();
        src.set_storage_class("z/9", "GLACIER");
        let dst = MemoryStore::new("dst");
        let mut cfg = sample();
        cfg.filters.exclude = vec!["**/c/**".into()];
        let (counts, keys) = pending(
            &cfg,
            vec!["a/".into(), "a/b/".into(), "z/".into()],
            &src,
            &dst,
        )
        .await;
        assert_eq!(keys, vec!["a/1", "a/b/2", "z/y/8"]);
        assert_eq!((counts.filtered, counts.archived), (2, 1));
    }

    #[test]
    fn roots_do_not_overlap() {
        assert_eq!(
            normalize_roots(vec!["a/b/".into(), "a/".into(), "b".into(), "a/".into()]),
            vec!["a/", "b"]
        );
        assert_eq!(normalize_roots(vec!["".into(), "x/".into()]), vec![""]);
    }

    #[test]
    fn jobs_by_size() {
        let mut cfg = sample();
        cfg.multipart.threshold = 10;
        cfg.multipart.giant_threshold = 100;
        cfg.batch.max_objects = 2;
        let mut b = JobBuilder::new(&cfg, "r");
        let o = |k: &str, size, etag: &str| JobObject {
            key: k.into(),
            size,
            etag: etag.into(),
            version_id: None,
            dest_etag: None,
        };
        assert!(b.push(o("s1", 1, "e")).is_none());
        assert!(
            matches!(b.push(o("mp", 5, "e-3")), Some(Job::Copy { objects, .. }) if objects.len() == 1)
        );
        assert!(
            matches!(b.push(o("big", 50, "e")), Some(Job::Copy { objects, .. }) if objects[0].key == "big")
        );
        assert!(matches!(
            b.push(o("giant", 100, "e")),
            Some(Job::Giant { .. })
        ));
        assert!(b.push(o("s2", 1, "e")).is_none());
        assert!(
            matches!(b.push(o("s3", 1, "e")), Some(Job::Copy { objects, .. }) if objects.len() == 2)
        );
        assert!(matches!(b.finish(), Some(Job::Copy { objects, .. }) if objects.len() == 1));
    }
}
