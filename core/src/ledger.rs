//! The DynamoDB ledger: one table (`pk`, `sk` strings) holding, per run, a summary kept current with atomic
//! ADDs, the outcome of every object, the in-progress multipart uploads, and, per key, the last applied event
//! sequencer; and, for the whole transfer, every multipart upload still open at the destination.
//!
//! | item                 | pk               | sk              | expires |
//! |----------------------|------------------|-----------------|---------|
//! | run pointer          | `transfer`       | `latest`        | never   |
//! | run summary          | `run#<run>`      | `summary`       | never   |
//! | object               | `run#<run>`      | `obj#<key>`     | [`EXPIRES_AT`] |
//! | finished job         | `run#<run>`      | `job#<job id>`  | [`EXPIRES_AT`] |
//! | open upload          | `uploads`        | `<upload id>`   | never (deleted when closed) |
//!
//! | event order per key  | `seq#<key>`      | `seq`           | never   |
//!
//! A finished job's row is written once (a conditional put, which is also what keeps the run counts exact when
//! a message is redelivered) and carries the outcomes of its objects that went right the first time, in one
//! compact `objects` attribute: a batch of small objects costs one ledger row, not one per object. Every other
//! outcome — failed, retried, or of a multipart object whose upload row exists already — gets its own `obj#`
//! row. [`DynamoLedger::objects`] reads both back as one list.
//!
//! Object and job rows carry [`EXPIRES_AT`] (epoch seconds, the retention after their last write) for the
//! table's TTL to remove: a transfer that runs for years would otherwise keep every outcome it ever had. The run
//! summaries and the pointer stay, so the history of runs and their totals is never lost.
//!
//! The run pointer names the latest run that has not failed (`run`: in progress or finished), the one before it
//! (`previous_run`, put back when the latest fails), and the last failure since a run last succeeded
//! (`failed_run`, `failed_error`, `failed_at`): a failed finder run never hides the progress of the good one.
//!
//! Every multipart upload a worker creates is recorded under `uploads` before any part is uploaded, and its row
//! deleted once the upload is completed or aborted. Those rows are what the transfer may abort — when resuming
//! and at destroy ([`crate::uploads::abort_open_uploads`]); any other incomplete upload at the destination
//! belongs to someone else and is never touched.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::{AttributeValue as Av, PutRequest, ReturnValue, WriteRequest};
use aws_sdk_dynamodb::Client;

use crate::error::{Error, ErrorKind, Result};

/// The attribute holding when a row may go (epoch seconds): the name to give DynamoDB's UpdateTimeToLive.
pub const EXPIRES_AT: &str = "expires_at";

/// How long object and job rows are kept when the job config says nothing else.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;

/// The partition holding the transfer's open multipart uploads, one row per upload id.
pub const UPLOADS_PK: &str = "uploads";

/// When a row written at `now_unix` (epoch seconds) expires after `retention_days`; None keeps it forever
/// (retention 0). Saturates rather than overflowing on absurd clocks.
pub fn expiry(now_unix: i64, retention_days: u32) -> Option<i64> {
    (retention_days > 0).then(|| now_unix.saturating_add(i64::from(retention_days) * 86_400))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Started,
    Done,
    Failed,
    Gone,
    Deleted,
}

impl Status {
    /// The inverse of [`Status::as_str`]; anything unknown reads as FAILED.
    pub fn parse(s: &str) -> Self {
        match s {
            "STARTED" => Status::Started,
            "DONE" => Status::Done,
            "GONE" => Status::Gone,
            "DELETED" => Status::Deleted,
            _ => Status::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Started => "STARTED",
            Status::Done => "DONE",
            Status::Failed => "FAILED",
            Status::Gone => "GONE",
            Status::Deleted => "DELETED",
        }
    }
}

/// The outcome of one object, written as its ledger row.
#[derive(Debug, Clone)]
pub struct ObjectRecord {
    pub key: String,
    pub status: Status,
    pub size: u64,
    pub etag: String,
    pub duration_ms: u64,
    pub attempt: u32,
    pub error: Option<String>,
    /// An image transfer's row (its key is `repository:tag` or `repository@digest`): written as the
    /// attributes `image`, `tag` and `digest` besides the others.
    pub image: Option<ImageRow>,
}

/// What an image's ledger row says besides an object's: the source repository, the tag, the digest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageRow {
    pub repository: String,
    pub tag: Option<String>,
    /// The digest the destination's tag names after the copy (before it, the source's as the finder saw it).
    pub digest: String,
}

impl ObjectRecord {
    /// A row with no ETag, duration or error yet.
    pub fn new(key: &str, status: Status, size: u64, attempt: u32) -> Self {
        Self {
            key: key.to_owned(),
            status,
            size,
            etag: String::new(),
            duration_ms: 0,
            attempt,
            error: None,
            image: None,
        }
    }
}

/// What a finished job adds to its run's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTotals {
    pub done: u64,
    pub bytes: u64,
    pub failed: u64,
    pub gone: u64,
}

impl JobTotals {
    pub fn of(records: &[ObjectRecord]) -> Self {
        let count = |st: Status| records.iter().filter(|r| r.status == st).count() as u64;
        JobTotals {
            done: count(Status::Done),
            bytes: records
                .iter()
                .filter(|r| r.status == Status::Done)
                .map(|r| r.size)
                .sum(),
            failed: count(Status::Failed),
            gone: count(Status::Gone),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    pub run: String,
    pub status: RunStatus,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub objects_found: u64,
    pub bytes_found: u64,
    pub objects_done: u64,
    pub bytes_done: u64,
    pub objects_failed: u64,
    pub objects_gone: u64,
    /// Why the run failed, when it did (see [`DynamoLedger::fail_run`]).
    pub error: Option<String>,
}

/// How a run stands, from its summary row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Started, not finished: the finder is listing (or died without a word).
    #[default]
    Running,
    /// The finder listed everything and enqueued it.
    Done,
    /// The finder failed; the summary's `error` says why.
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Done => "DONE",
            RunStatus::Failed => "FAILED",
        }
    }

    /// The `status` attribute, or, on rows written before it existed, what the other attributes imply.
    fn of(item: &HashMap<String, Av>) -> Self {
        match get_s(item, "status").as_deref() {
            Some("FAILED") => RunStatus::Failed,
            Some("DONE") => RunStatus::Done,
            Some(_) => RunStatus::Running,
            None if item.contains_key("error") => RunStatus::Failed,
            None if item.contains_key("finished_at") => RunStatus::Done,
            None => RunStatus::Running,
        }
    }
}

/// The last failed finder run since a run last succeeded, as the run pointer records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FailedRun {
    pub run: String,
    pub error: String,
    /// When it failed (RFC 3339).
    pub at: Option<String>,
}

/// What a refresh shows: the latest run that has not failed (its summary has the progress), and the last
/// failure since a run last succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LatestRuns {
    /// The latest run that has not failed: in progress or finished. None before the first one.
    pub good: Option<String>,
    /// The last failed run, until a later run finishes.
    pub failed: Option<FailedRun>,
}

/// A multipart upload the transfer created and has not yet completed or aborted (a row under [`UPLOADS_PK`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OpenUpload {
    pub upload_id: String,
    /// The destination bucket and key the upload writes.
    pub bucket: String,
    pub key: String,
    /// The run that created it.
    pub run: String,
    /// When it was created (RFC 3339).
    pub created_at: Option<String>,
}

/// A multipart upload in progress, as the ledger remembers it (for resume and for fleet-split completion).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadRecord {
    pub upload_id: String,
    pub source_etag: String,
    pub part_size: u64,
    pub parts: u32,
    pub part_etags: BTreeMap<u32, String>,
    /// Each finished part's CRC64NVME (attributes `crc_<n>`), for the whole object's.
    pub part_crcs: BTreeMap<u32, u64>,
    pub status: String,
}

/// The status of a fleet-split upload while one worker completes it (see [`DynamoLedger::claim_completion`]).
pub const COMPLETING: &str = "COMPLETING";
/// The status of a fleet-split upload abandoned for a new one (the source changed, or the upload vanished).
pub const RESTARTED: &str = "RESTARTED";

/// Who completes a fleet-split upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// This caller.
    Won,
    /// Another completer, or nobody any more (the upload was completed, failed or replaced).
    Lost,
}

#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: Client,
    table: String,
    /// Days object and job rows are kept after their last write; 0: forever.
    retention_days: u32,
}

fn s(v: impl Into<String>) -> Av {
    Av::S(v.into())
}
fn n(v: u64) -> Av {
    Av::N(v.to_string())
}
fn run_pk(run: &str) -> String {
    format!("run#{run}")
}
const POINTER_PK: &str = "transfer";
const POINTER_SK: &str = "latest";
/// Attempts at moving the run pointer while another writer moves it too (two finder runs at once).
const POINTER_TRIES: u32 = 5;

/// Sort keys are limited to 1024 bytes; S3 keys may be that long themselves.
pub fn object_sk(key: &str) -> String {
    if key.len() <= 1000 {
        return format!("obj#{key}");
    }
    let mut cut = 900;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "obj#{}#{}",
        &key[..cut],
        hex::encode(crate::store::md5_of(key.as_bytes()))
    )
}

fn get_s(item: &HashMap<String, Av>, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}
fn get_n(item: &HashMap<String, Av>, k: &str) -> u64 {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// An `obj#` row as an [`ObjectRecord`]; None without a key.
fn object_row(item: &HashMap<String, Av>) -> Option<ObjectRecord> {
    Some(ObjectRecord {
        key: get_s(item, "key")?,
        status: Status::parse(&get_s(item, "status").unwrap_or_default()),
        size: get_n(item, "size"),
        etag: get_s(item, "etag").unwrap_or_default(),
        duration_ms: get_n(item, "duration_ms"),
        attempt: get_n(item, "attempt") as u32,
        error: get_s(item, "error"),
        image: get_s(item, "image").map(|repository| ImageRow {
            repository,
            tag: get_s(item, "tag"),
            digest: get_s(item, "digest").unwrap_or_default(),
        }),
    })
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Right-pad to a common width so that S3 sequencers (hex of varying length) compare as strings.
pub fn pad_sequencer(seq: &str) -> String {
    format!("{:0<64}", seq.to_ascii_uppercase())
}

fn is_condition_failure(e: &Error) -> bool {
    e.kind() == ErrorKind::PreconditionFailed
}

impl DynamoLedger {
    /// A ledger keeping object and job rows [`DEFAULT_RETENTION_DAYS`]; see [`DynamoLedger::with_retention_days`].
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            retention_days: DEFAULT_RETENTION_DAYS,
        }
    }

    /// Keep the object and job rows this ledger writes `days` after their last write (0: forever). Only what
    /// is written from now on is affected; the table's TTL must be enabled on [`EXPIRES_AT`] for rows to go.
    pub fn with_retention_days(mut self, days: u32) -> Self {
        self.retention_days = days;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The [`EXPIRES_AT`] value for a row written now, if rows expire.
    fn expires(&self) -> Option<Av> {
        expiry(unix_now(), self.retention_days).map(|t| Av::N(t.to_string()))
    }

    fn err<E>(
        &self,
        what: &str,
    ) -> impl FnOnce(
        aws_sdk_dynamodb::error::SdkError<
            E,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    ) -> Error
           + '_
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        let ctx = format!("{what} in ledger table {}", self.table);
        move |e| Error::from_sdk(ctx, e)
    }

    /// Check that the table is there and reachable: a clear error before any work starts.
    pub async fn check(&self) -> Result<()> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(self.err("describing"))?;
        Ok(())
    }

    /// The item at (`pk`, `sk`), read consistently; `what` names the read in errors.
    async fn get(&self, pk: Av, sk: Av, what: &'static str) -> Result<Option<HashMap<String, Av>>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .consistent_read(true)
            .send()
            .await
            .map_err(self.err(what))?;
        Ok(out.item)
    }

    /// The run pointer as it stands (consistent read).
    async fn pointer(&self) -> Result<Option<HashMap<String, Av>>> {
        let item = self
            .get(s(POINTER_PK), s(POINTER_SK), "reading the run pointer")
            .await?;
        Ok(item)
    }

    /// Write the run pointer with `update` if its `run` is still `seen` (absent when None). `#r` stands for
    /// `run`; `names` are the other attribute names the update uses. False when another writer moved the
    /// pointer first: read it again and retry.
    async fn move_pointer(
        &self,
        seen: Option<&str>,
        update: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, Av)>,
    ) -> Result<bool> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(POINTER_PK))
            .key("sk", s(POINTER_SK))
            .update_expression(update)
            .expression_attribute_names("#r", "run");
        req = match seen {
            Some(run) => req
                .condition_expression("#r = :seen")
                .expression_attribute_values(":seen", s(run)),
            None => req.condition_expression("attribute_not_exists(#r)"),
        };
        for (alias, name) in names {
            req = req.expression_attribute_names(*alias, *name);
        }
        for (alias, v) in values {
            req = req.expression_attribute_values(alias, v);
        }
        match req.send().await.map_err(self.err("moving the run pointer")) {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn pointer_contended(&self) -> Error {
        Error::new(
            ErrorKind::Transient,
            format!(
                "the run pointer in ledger table {} kept moving under us",
                self.table
            ),
        )
    }

    /// Record `run` as started and make it the latest run, remembering the one it replaces so that a failure
    /// can put that one back. A failure recorded earlier stays on the pointer until a run finishes.
    pub async fn start_run(&self, run: &str) -> Result<()> {
        let at = now();
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(run_pk(run)))
            .item("sk", s("summary"))
            .item("run", s(run))
            .item("status", s(RunStatus::Running.as_str()))
            .item("started_at", s(&at))
            .send()
            .await
            .map_err(self.err("starting run"))?;
        // What the pointer carried before it only pointed (a copy of the summary; a failed run as the latest
        // one, with its `error`) is dropped: the summary row is the one place for it.
        let legacy = "started_at, finished_at, objects_found, bytes_found, #e";
        for _ in 0..POINTER_TRIES {
            let pointer = self.pointer().await?.unwrap_or_default();
            let seen = get_s(&pointer, "run");
            if seen.as_deref() == Some(run) {
                return Ok(()); // started twice (a retried call): the pointer is right already
            }
            let mut values = vec![(":run", s(run))];
            let update = match (&seen, get_s(&pointer, "error")) {
                // An earlier version made a failed run the latest one: it is the last failure, not a run to
                // go back to.
                (Some(prev), Some(error)) if !pointer.contains_key("failed_run") => {
                    values.push((":frun", s(prev)));
                    values.push((":ferr", s(error)));
                    format!(
                        "SET #r = :run, failed_run = :frun, failed_error = :ferr REMOVE {legacy}, previous_run"
                    )
                }
                (Some(prev), _) => {
                    values.push((":prev", s(prev)));
                    format!("SET #r = :run, previous_run = :prev REMOVE {legacy}")
                }
                (None, _) => format!("SET #r = :run REMOVE {legacy}, previous_run"),
            };
            if self
                .move_pointer(seen.as_deref(), &update, &[("#e", "error")], values)
                .await?
            {
                return Ok(());
            }
        }
        Err(self.pointer_contended())
    }

    /// Record that `run` finished listing, and clear the last failure from the pointer if `run` is still the
    /// latest run (a newer run that started meanwhile decides for itself). With overlapping finder runs (not
    /// how a transfer runs them: one scheduled finder at a time) the latest run finishing clears a failure of
    /// a run that started after it and failed first.
    pub async fn finish_run(&self, run: &str, objects_found: u64, bytes_found: u64) -> Result<()> {
        let at = now();
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(run)))
            .key("sk", s("summary"))
            .update_expression(
                "SET finished_at = :at, objects_found = :f, bytes_found = :b, #s = :done",
            )
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":at", s(&at))
            .expression_attribute_values(":f", n(objects_found))
            .expression_attribute_values(":b", n(bytes_found))
            .expression_attribute_values(":done", s(RunStatus::Done.as_str()))
            .send()
            .await
            .map_err(self.err("finishing run"))?;
        // Not the latest run any more (a newer one started meanwhile): that one decides.
        self.move_pointer(
            Some(run),
            "REMOVE failed_run, failed_error, failed_at, previous_run",
            &[],
            vec![],
        )
        .await?;
        Ok(())
    }

    /// Record that `run` failed with `error`: its summary (created when it failed before it started) says
    /// FAILED and why, and the pointer records the failure. If `run` was the latest run, the run before it
    /// becomes the latest again, so a refresh shows both "the last run failed: <error>" and the progress of the
    /// last good run, until a later run finishes.
    pub async fn fail_run(&self, run: &str, error: &str) -> Result<()> {
        let at = now();
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(run)))
            .key("sk", s("summary"))
            .update_expression(
                "SET #r = :run, started_at = if_not_exists(started_at, :at), failed_at = :at, #e = :e, \
                 #s = :failed",
            )
            .expression_attribute_names("#r", "run")
            .expression_attribute_names("#e", "error")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":run", s(run))
            .expression_attribute_values(":at", s(&at))
            .expression_attribute_values(":e", s(error))
            .expression_attribute_values(":failed", s(RunStatus::Failed.as_str()))
            .send()
            .await
            .map_err(self.err("recording a failed run"))?;
        let failure = "failed_run = :run, failed_error = :e, failed_at = :at";
        let values = || vec![(":run", s(run)), (":e", s(error)), (":at", s(&at))];
        for _ in 0..POINTER_TRIES {
            let pointer = self.pointer().await?;
            let seen = pointer.as_ref().and_then(|p| get_s(p, "run"));
            let moved = if seen.as_deref() == Some(run) {
                // The failed run was the latest: put the one before it back.
                match pointer.as_ref().and_then(|p| get_s(p, "previous_run")) {
                    Some(prev) => {
                        let mut v = values();
                        v.push((":prev", s(prev)));
                        self.move_pointer(
                            Some(run),
                            &format!("SET #r = :prev, {failure} REMOVE previous_run"),
                            &[],
                            v,
                        )
                        .await?
                    }
                    None => {
                        self.move_pointer(
                            Some(run),
                            &format!("SET {failure} REMOVE #r, previous_run"),
                            &[],
                            values(),
                        )
                        .await?
                    }
                }
            } else {
                // Failed before it became the latest run (or a newer one started since): only the failure.
                self.move_pointer(seen.as_deref(), &format!("SET {failure}"), &[], values())
                    .await?
            };
            if moved {
                return Ok(());
            }
        }
        Err(self.pointer_contended())
    }

    /// The latest run that has not failed (in progress or finished): the one whose summary shows the
    /// transfer's progress. See [`DynamoLedger::latest_runs`] for the last failure too.
    pub async fn latest_run(&self) -> Result<Option<String>> {
        Ok(self.latest_runs().await?.good)
    }

    /// The latest run that has not failed, and the last failed run since a run last finished.
    pub async fn latest_runs(&self) -> Result<LatestRuns> {
        let Some(p) = self.pointer().await? else {
            return Ok(LatestRuns::default());
        };
        if let (Some(run), Some(error), None) = (
            get_s(&p, "run"),
            get_s(&p, "error"),
            get_s(&p, "failed_run"),
        ) {
            // Written by an earlier version, which made a failed run the latest one: the good run before it
            // is not known.
            return Ok(LatestRuns {
                good: None,
                failed: Some(FailedRun {
                    run,
                    error,
                    at: get_s(&p, "failed_at"),
                }),
            });
        }
        Ok(LatestRuns {
            good: get_s(&p, "run"),
            failed: get_s(&p, "failed_run").map(|run| FailedRun {
                run,
                error: get_s(&p, "failed_error").unwrap_or_default(),
                at: get_s(&p, "failed_at"),
            }),
        })
    }

    pub async fn summary(&self, run: &str) -> Result<Option<RunSummary>> {
        let item = self
            .get(s(run_pk(run)), s("summary"), "reading run summary")
            .await?;
        Ok(item.as_ref().map(|i| RunSummary {
            run: run.to_owned(),
            status: RunStatus::of(i),
            started_at: get_s(i, "started_at"),
            finished_at: get_s(i, "finished_at"),
            objects_found: get_n(i, "objects_found"),
            bytes_found: get_n(i, "bytes_found"),
            objects_done: get_n(i, "objects_done"),
            bytes_done: get_n(i, "bytes_done"),
            objects_failed: get_n(i, "objects_failed"),
            objects_gone: get_n(i, "objects_gone"),
            error: get_s(i, "error"),
        }))
    }

    /// Write object rows, 25 to a BatchWriteItem, retrying what DynamoDB leaves unprocessed.
    pub async fn record_objects(&self, run: &str, records: &[ObjectRecord]) -> Result<()> {
        let at = now();
        let expires = self.expires();
        // A key twice in one batch is an error to DynamoDB: the last outcome wins.
        let mut latest: BTreeMap<String, &ObjectRecord> = BTreeMap::new();
        for r in records {
            latest.insert(object_sk(&r.key), r);
        }
        let requests: Vec<WriteRequest> = latest
            .into_iter()
            .map(|(sk, r)| {
                let mut item = HashMap::from([
                    ("pk".to_owned(), s(run_pk(run))),
                    ("sk".to_owned(), s(sk)),
                    ("key".to_owned(), s(&r.key)),
                    ("status".to_owned(), s(r.status.as_str())),
                    ("size".to_owned(), n(r.size)),
                    ("duration_ms".to_owned(), n(r.duration_ms)),
                    ("attempt".to_owned(), n(r.attempt.into())),
                    ("updated_at".to_owned(), s(&at)),
                ]);
                if !r.etag.is_empty() {
                    item.insert("etag".into(), s(&r.etag));
                }
                if let Some(e) = &r.error {
                    item.insert("error".into(), s(e.chars().take(2000).collect::<String>()));
                }
                if let Some(i) = &r.image {
                    item.insert("image".into(), s(&i.repository));
                    if let Some(t) = &i.tag {
                        item.insert("tag".into(), s(t));
                    }
                    if !i.digest.is_empty() {
                        item.insert("digest".into(), s(&i.digest));
                    }
                }
                if let Some(x) = &expires {
                    item.insert(EXPIRES_AT.into(), x.clone());
                }
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .expect("item set"),
                    )
                    .build()
            })
            .collect();
        for chunk in requests.chunks(25) {
            let mut pending = chunk.to_vec();
            for attempt in 0..10u32 {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(self.err("recording objects"))?;
                pending = out
                    .unprocessed_items()
                    .and_then(|u| u.get(&self.table))
                    .cloned()
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                if attempt == 9 {
                    return Err(Error::new(
                        ErrorKind::Throttled,
                        "DynamoDB kept leaving ledger rows unprocessed",
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt.min(6))).await;
            }
        }
        Ok(())
    }

    /// Record a finished job (all objects settled, or its last attempt) and add it to the run summary, once per
    /// job id. `individual` picks the outcomes that need their own row besides failures and retries (e.g.
    /// objects that already have one). Returns false when the job had been recorded before (a redelivery).
    pub async fn finish_job(
        &self,
        run: &str,
        job_id: &str,
        records: &[ObjectRecord],
        individual: impl Fn(&ObjectRecord) -> bool,
    ) -> Result<bool> {
        let (mut own, compact): (Vec<&ObjectRecord>, Vec<&ObjectRecord>) =
            records.iter().partition(|r| {
                !matches!(r.status, Status::Done | Status::Gone) || r.attempt > 1 || individual(r)
            });
        let mut packed = serde_json::to_string(
            &compact
                .iter()
                .map(|r| (&r.key, r.status.as_str(), r.size, &r.etag, r.duration_ms))
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        // DynamoDB items stop at 400 KB; a job too big for one row falls back to a row per object.
        if packed.len() > 350_000 {
            own.extend(compact);
            packed.clear();
        }
        let own: Vec<ObjectRecord> = own.into_iter().cloned().collect();
        self.record_objects(run, &own).await?;
        let t = JobTotals::of(records);
        // Counted before with other outcomes (a job dead-lettered with failures, retried): every outcome then
        // gets its own row, over the failed rows of before, since the job's packed row is not rewritten.
        self.count_job_with(
            run,
            job_id,
            t,
            (!packed.is_empty()).then_some(packed),
            records,
        )
        .await
    }

    /// Every object outcome recorded for `run`: `obj#` rows and the objects packed into finished-job rows
    /// (an `obj#` row wins over a packed entry: it is the later word on that key).
    pub async fn objects(&self, run: &str) -> Result<Vec<ObjectRecord>> {
        let mut own: BTreeMap<String, ObjectRecord> = BTreeMap::new();
        let mut packed: Vec<ObjectRecord> = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(run_pk(run)))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(self.err("reading object outcomes"))?;
            for item in out.items() {
                let sk = get_s(item, "sk").unwrap_or_default();
                if sk.starts_with("obj#") {
                    if let Some(r) = object_row(item) {
                        own.insert(r.key.clone(), r);
                    }
                } else if sk.starts_with("job#") {
                    let list: Vec<(String, String, u64, String, u64)> = get_s(item, "objects")
                        .and_then(|j| serde_json::from_str(&j).ok())
                        .unwrap_or_default();
                    packed.extend(list.into_iter().map(|(key, status, size, etag, ms)| {
                        ObjectRecord {
                            key,
                            status: Status::parse(&status),
                            size,
                            etag,
                            duration_ms: ms,
                            attempt: 1,
                            error: None,
                            image: None,
                        }
                    }));
                }
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        for r in packed {
            own.entry(r.key.clone()).or_insert(r);
        }
        Ok(own.into_values().collect())
    }

    /// One page of the objects of `run` whose latest outcome is FAILED (a failure always has a row of its own),
    /// from `start` (None: the first page); with the key to pass for the next page, None after the last. A page
    /// is what DynamoDB reads at once (up to 1 MB of rows), failed or not: a page may hold no failure and still
    /// not be the last.
    pub async fn failures_page(
        &self,
        run: &str,
        start: Option<HashMap<String, Av>>,
    ) -> Result<(Vec<ObjectRecord>, Option<HashMap<String, Av>>)> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :obj)")
            .filter_expression("#status = :failed")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pk", s(run_pk(run)))
            .expression_attribute_values(":obj", s("obj#"))
            .expression_attribute_values(":failed", s(Status::Failed.as_str()))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(self.err("reading failed objects"))?;
        let rows = out.items().iter().filter_map(object_row).collect();
        Ok((rows, out.last_evaluated_key().cloned()))
    }

    /// Add a finished job's totals to its run summary, once per job id. Returns false when the job had already
    /// been counted (a redelivered message).
    pub async fn count_job(&self, run: &str, job_id: &str, t: JobTotals) -> Result<bool> {
        self.count_job_with(run, job_id, t, None, &[]).await
    }

    /// The job marker (a put conditional on its absence) and the summary's ADD in one transaction: a job is
    /// counted exactly once or not at all, whatever fails between or around them. IAM authorises each action
    /// of a transaction as its own operation (PutItem, UpdateItem): the role needs no more than before.
    ///
    /// Every job of a run adds to the one summary item, and DynamoDB cancels a transaction on an item another
    /// transaction is writing (`TransactionConflict`), so those are retried with jittered backoff, as are
    /// throttling and the service's transient errors. A lost answer of a transaction that took effect
    /// surfaces on the retry as the marker's condition failing: counted, once.
    ///
    /// The marker keeps the totals it added. A job counted before with other totals — one that failed on its
    /// last attempt, was dead-lettered, and now, retried (`dth retry`), went through — is recounted
    /// ([`DynamoLedger::recount_job`]): its rows (`rewrite`) are written again and the summary moves by the
    /// difference, so that the run's counts say what the objects' latest outcomes are.
    async fn count_job_with(
        &self,
        run: &str,
        job_id: &str,
        t: JobTotals,
        objects: Option<String>,
        rewrite: &[ObjectRecord],
    ) -> Result<bool> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
        let mut item = HashMap::from([
            ("pk".to_owned(), s(run_pk(run))),
            ("sk".to_owned(), s(format!("job#{job_id}"))),
            ("at".to_owned(), s(now())),
            ("t_done".to_owned(), n(t.done)),
            ("t_bytes".to_owned(), n(t.bytes)),
            ("t_failed".to_owned(), n(t.failed)),
            ("t_gone".to_owned(), n(t.gone)),
        ]);
        if let Some(o) = objects {
            item.insert("objects".into(), s(o));
        }
        if let Some(x) = self.expires() {
            item.insert(EXPIRES_AT.into(), x);
        }
        let marker = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| Error::new(ErrorKind::Other, format!("building a job marker: {e}")))?;
        let add = self.summary_add(run, [n(t.done), n(t.bytes), n(t.failed), n(t.gone)])?;
        let items = vec![
            TransactWriteItem::builder().put(marker).build(),
            TransactWriteItem::builder().update(add).build(),
        ];
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let err = match res {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            // Why a transaction was cancelled: one reason per action, in order (marker, summary).
            let reasons: Vec<String> = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None").to_owned())
                    .collect(),
                _ => vec![],
            };
            if reasons.first().map(String::as_str) == Some("ConditionalCheckFailed") {
                return self.recount_job(run, job_id, t, rewrite).await;
            }
            let conflict = reasons
                .iter()
                .any(|r| matches!(r.as_str(), "TransactionConflict" | "ThrottlingError"))
                || matches!(
                    err.as_service_error(),
                    Some(TransactWriteItemsError::TransactionInProgressException(_))
                );
            let e = self.err("counting a job")(err);
            let again = conflict || e.is_retryable();
            if !again || attempt >= 12 {
                return Err(e);
            }
            let base = 25u64 << attempt.min(7);
            tokio::time::sleep(std::time::Duration::from_millis(
                base / 2 + fastrand::u64(..=base / 2),
            ))
            .await;
        }
    }

    /// The run summary's ADD of a job's totals (objects done, bytes done, failed, gone), or of what a recount
    /// changes: one action of a transaction.
    fn summary_add(
        &self,
        run: &str,
        [d, b, f, g]: [Av; 4],
    ) -> Result<aws_sdk_dynamodb::types::Update> {
        aws_sdk_dynamodb::types::Update::builder()
            .table_name(&self.table)
            .key("pk", s(run_pk(run)))
            .key("sk", s("summary"))
            .update_expression(
                "ADD objects_done :d, bytes_done :b, objects_failed :f, objects_gone :g",
            )
            .expression_attribute_values(":d", d)
            .expression_attribute_values(":b", b)
            .expression_attribute_values(":f", f)
            .expression_attribute_values(":g", g)
            .build()
            .map_err(|e| Error::new(ErrorKind::Other, format!("building a summary update: {e}")))
    }

    /// A job whose marker exists: `false` when it was counted with these totals (a redelivery), or with totals
    /// the marker does not keep (written before markers kept them); otherwise its rows are rewritten and the
    /// marker and the summary move to `t` in one transaction, conditional on the marker's totals being the ones
    /// read (two workers recounting at once: one wins, the other reads again and finds nothing to do).
    async fn recount_job(
        &self,
        run: &str,
        job_id: &str,
        t: JobTotals,
        rewrite: &[ObjectRecord],
    ) -> Result<bool> {
        use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
        let (pk, sk) = (run_pk(run), format!("job#{job_id}"));
        for _ in 0..POINTER_TRIES {
            let Some(m) = self.get(s(&pk), s(&sk), "reading a finished job").await? else {
                return Ok(false);
            };
            if !m.contains_key("t_done") {
                return Ok(false);
            }
            let was = JobTotals {
                done: get_n(&m, "t_done"),
                bytes: get_n(&m, "t_bytes"),
                failed: get_n(&m, "t_failed"),
                gone: get_n(&m, "t_gone"),
            };
            if was == t {
                return Ok(false);
            }
            self.record_objects(run, rewrite).await?;
            let delta = |a: u64, b: u64| Av::N((a as i128 - b as i128).to_string());
            let marker = Update::builder()
                .table_name(&self.table)
                .key("pk", s(&pk))
                .key("sk", s(&sk))
                .update_expression(
                    "SET t_done = :d, t_bytes = :b, t_failed = :f, t_gone = :g, recounted_at = :at",
                )
                .condition_expression(
                    "t_done = :od AND t_bytes = :ob AND t_failed = :of AND t_gone = :og",
                )
                .expression_attribute_values(":d", n(t.done))
                .expression_attribute_values(":b", n(t.bytes))
                .expression_attribute_values(":f", n(t.failed))
                .expression_attribute_values(":g", n(t.gone))
                .expression_attribute_values(":at", s(now()))
                .expression_attribute_values(":od", n(was.done))
                .expression_attribute_values(":ob", n(was.bytes))
                .expression_attribute_values(":of", n(was.failed))
                .expression_attribute_values(":og", n(was.gone))
                .build()
                .map_err(|e| Error::new(ErrorKind::Other, format!("building a recount: {e}")))?;
            let add = self.summary_add(
                run,
                [
                    delta(t.done, was.done),
                    delta(t.bytes, was.bytes),
                    delta(t.failed, was.failed),
                    delta(t.gone, was.gone),
                ],
            )?;
            let res = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(marker).build())
                .transact_items(TransactWriteItem::builder().update(add).build())
                .send()
                .await;
            match res {
                Ok(_) => {
                    tracing::info!(run, job = job_id, was = ?was, now = ?t, "job counted again with new outcomes");
                    return Ok(true);
                }
                Err(e) => {
                    let e = self.err("recounting a job")(e);
                    if !(is_condition_failure(&e) || e.is_retryable()) {
                        return Err(e);
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50 + fastrand::u64(..100))).await;
        }
        Err(Error::new(
            ErrorKind::Transient,
            format!("recounting job {job_id}: its marker kept changing"),
        ))
    }

    pub async fn upload(&self, run: &str, key: &str) -> Result<Option<UploadRecord>> {
        let item = self
            .get(s(run_pk(run)), s(object_sk(key)), "reading upload state")
            .await?;
        Ok(item.as_ref().and_then(upload_from_item))
    }

    /// Record a multipart upload as STARTED (replacing an earlier row for the key).
    pub async fn put_upload(&self, run: &str, key: &str, u: &UploadRecord) -> Result<()> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(run_pk(run)))
            .item("sk", s(object_sk(key)))
            .item("key", s(key))
            .item("status", s(Status::Started.as_str()))
            .item("upload_id", s(&u.upload_id))
            .item("source_etag", s(&u.source_etag))
            .item("part_size", n(u.part_size))
            .item("parts", n(u.parts.into()))
            .item("part_etags", Av::M(HashMap::new()))
            .item("updated_at", s(now()));
        if let Some(x) = self.expires() {
            req = req.item(EXPIRES_AT, x);
        }
        req.send().await.map_err(self.err("recording an upload"))?;
        Ok(())
    }

    /// Record an upload the transfer just created, before any part of it is uploaded: from now on it is
    /// the transfer's to resume, complete or abort. Kept until [`DynamoLedger::close_upload`], never expired:
    /// an open upload costs storage until someone aborts it.
    pub async fn record_open_upload(&self, u: &OpenUpload) -> Result<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(UPLOADS_PK))
            .item("sk", s(&u.upload_id))
            .item("bucket", s(&u.bucket))
            .item("key", s(&u.key))
            .item("run", s(&u.run))
            .item("created_at", s(u.created_at.clone().unwrap_or_else(now)))
            .send()
            .await
            .map_err(self.err("recording an open upload"))?;
        Ok(())
    }

    /// The recorded open upload `upload_id`, if the transfer created it and has not closed it.
    pub async fn open_upload(&self, upload_id: &str) -> Result<Option<OpenUpload>> {
        let item = self
            .get(s(UPLOADS_PK), s(upload_id), "reading an open upload")
            .await?;
        Ok(item.as_ref().and_then(open_upload_from_item))
    }

    /// Forget an upload that was completed or aborted (or is gone): there is nothing left of it to abort.
    pub async fn close_upload(&self, upload_id: &str) -> Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(UPLOADS_PK))
            .key("sk", s(upload_id))
            .send()
            .await
            .map_err(self.err("closing an upload"))?;
        Ok(())
    }

    /// Every upload the transfer created and has not closed: what destroy aborts. A paged Query of one
    /// partition (no Scan), consistent, oldest id first.
    pub async fn open_uploads(&self) -> Result<Vec<OpenUpload>> {
        let mut uploads = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(UPLOADS_PK))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(self.err("listing open uploads"))?;
            uploads.extend(out.items().iter().filter_map(open_upload_from_item));
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(uploads);
            }
        }
    }

    /// Record a finished part of a fleet-split upload. Returns the upload as it now stands, or None when the
    /// upload was replaced (the source changed and the object restarted): the part is then stale.
    pub async fn record_part(
        &self,
        run: &str,
        key: &str,
        upload_id: &str,
        part: u32,
        etag: &str,
        crc64: u64,
    ) -> Result<Option<UploadRecord>> {
        let mut set = "SET part_etags.#p = :e, #c = :c".to_owned();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(run)))
            .key("sk", s(object_sk(key)))
            .condition_expression("upload_id = :u")
            .expression_attribute_names("#p", part.to_string())
            .expression_attribute_names("#c", format!("crc_{part}"))
            .expression_attribute_values(":e", s(etag))
            .expression_attribute_values(":c", n(crc64))
            .expression_attribute_values(":u", s(upload_id))
            .return_values(ReturnValue::AllNew);
        if let Some(x) = self.expires() {
            // The row lives as long as its upload is being written, however long a giant object takes.
            set.push_str(", #x = :x");
            req = req
                .expression_attribute_names("#x", EXPIRES_AT)
                .expression_attribute_values(":x", x);
        }
        let res = req
            .update_expression(set)
            .send()
            .await
            .map_err(self.err("recording a part"));
        match res {
            Ok(out) => Ok(out.attributes().and_then(upload_from_item)),
            Err(e) if is_condition_failure(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One conditional update of a key's row in `run`: true when it applied, false when `condition` did not
    /// hold. `#s` names the status attribute.
    async fn update_if(
        &self,
        run: &str,
        key: &str,
        what: &str,
        update: &str,
        condition: &str,
        values: &[(&str, &str)],
    ) -> Result<bool> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(run)))
            .key("sk", s(object_sk(key)))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#s", "status");
        for (name, v) in values {
            req = req.expression_attribute_values(*name, s(*v));
        }
        match req.send().await.map_err(self.err(what)) {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Move an upload from `from` to `to` status if it is still `upload_id`; true for the one caller that wins.
    pub async fn claim_upload(
        &self,
        run: &str,
        key: &str,
        upload_id: &str,
        from: &str,
        to: &str,
    ) -> Result<bool> {
        self.update_if(
            run,
            key,
            "claiming an upload",
            "SET #s = :to",
            "upload_id = :u AND #s = :from",
            &[(":u", upload_id), (":from", from), (":to", to)],
        )
        .await
    }

    /// Become the one completer of a fleet-split upload whose parts are all recorded: the upload must still be
    /// `upload_id` and STARTED, or COMPLETING by `me` (a message id) already. A completer's message stays
    /// invisible while it lives (its heartbeat), so a COMPLETING upload is taken over only by that very
    /// message's redelivery, after its worker died; no other part ever completes it.
    pub async fn claim_completion(
        &self,
        run: &str,
        key: &str,
        upload_id: &str,
        me: &str,
    ) -> Result<Completion> {
        let won = self
            .update_if(
                run,
                key,
                "claiming an upload's completion",
                "SET #s = :completing, completer = :me",
                "upload_id = :u AND (#s = :started OR (#s = :completing AND \
                 (completer = :me OR attribute_not_exists(completer))))",
                &[
                    (":u", upload_id),
                    (":started", Status::Started.as_str()),
                    (":completing", COMPLETING),
                    (":me", me),
                ],
            )
            .await?;
        Ok(if won {
            Completion::Won
        } else {
            Completion::Lost
        })
    }

    /// Give back a completion claimed with [`DynamoLedger::claim_completion`] that failed in a way a retry may
    /// fix: the upload is STARTED again, for the retry to claim at once.
    pub async fn release_completion(
        &self,
        run: &str,
        key: &str,
        upload_id: &str,
        me: &str,
    ) -> Result<()> {
        self.update_if(
            run,
            key,
            "releasing an upload's completion",
            "SET #s = :started REMOVE completer",
            "upload_id = :u AND #s = :completing AND completer = :me",
            &[
                (":u", upload_id),
                (":started", Status::Started.as_str()),
                (":completing", COMPLETING),
                (":me", me),
            ],
        )
        .await
        .map(|_| ())
    }

    /// Record `seq` as the newest event applied to `key`; false when a newer (or the same) one already was.
    pub async fn advance_sequencer(&self, key: &str, seq: &str) -> Result<bool> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("seq#{key}")))
            .key("sk", s("seq"))
            .update_expression("SET seq = :s, updated_at = :at")
            .condition_expression("attribute_not_exists(seq) OR seq < :s")
            .expression_attribute_values(":s", s(pad_sequencer(seq)))
            .expression_attribute_values(":at", s(now()))
            .send()
            .await
            .map_err(self.err("ordering an event"));
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn sequencer(&self, key: &str) -> Result<Option<String>> {
        let item = self
            .get(
                s(format!("seq#{key}")),
                s("seq"),
                "reading an event sequencer",
            )
            .await?;
        Ok(item.as_ref().and_then(|i| get_s(i, "seq")))
    }
}

fn open_upload_from_item(i: &HashMap<String, Av>) -> Option<OpenUpload> {
    Some(OpenUpload {
        upload_id: get_s(i, "sk")?,
        bucket: get_s(i, "bucket")?,
        key: get_s(i, "key")?,
        run: get_s(i, "run").unwrap_or_default(),
        created_at: get_s(i, "created_at"),
    })
}

fn upload_from_item(i: &HashMap<String, Av>) -> Option<UploadRecord> {
    let upload_id = get_s(i, "upload_id")?;
    let part_etags = i
        .get("part_etags")
        .and_then(|m| m.as_m().ok())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_s().ok()?.clone())))
                .collect()
        })
        .unwrap_or_default();
    let part_crcs = i
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix("crc_")?.parse().ok()?;
            Some((n, v.as_n().ok()?.parse().ok()?))
        })
        .collect();
    Some(UploadRecord {
        upload_id,
        part_crcs,
        source_etag: get_s(i, "source_etag").unwrap_or_default(),
        part_size: get_n(i, "part_size"),
        // A row no worker wrote (parts beyond u32) reads as no layout: it is never resumed.
        parts: u32::try_from(get_n(i, "parts")).unwrap_or(0),
        part_etags,
        status: get_s(i, "status").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequencers_compare_after_right_padding() {
        assert!(pad_sequencer("0055AED6DCD90281E5") < pad_sequencer("0055AED6DCD90281E6"));
        // A longer sequencer extending a shorter one is later.
        assert!(pad_sequencer("00AB") < pad_sequencer("00AB01"));
        assert!(pad_sequencer("00AC") > pad_sequencer("00AB01"));
    }

    #[test]
    fn rows_expire_after_the_retention_in_epoch_seconds() {
        // 2024-01-01T00:00:00Z + 30 days = 2024-01-31T00:00:00Z.
        assert_eq!(expiry(1_704_067_200, 30), Some(1_706_659_200));
        assert_eq!(expiry(1_704_067_200, 1), Some(1_704_067_200 + 86_400));
        assert_eq!(expiry(1_704_067_200, 0), None, "0 keeps rows forever");
        assert_eq!(expiry(i64::MAX - 10, 3650), Some(i64::MAX), "saturates");
        assert_eq!(DEFAULT_RETENTION_DAYS, 30);
        assert_eq!(EXPIRES_AT, "expires_at");
    }

    #[test]
    fn a_new_ledger_expires_rows_after_the_default_retention() {
        let client = Client::from_conf(
            aws_sdk_dynamodb::Config::builder()
                .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
                .build(),
        );
        let before = unix_now();
        let x = |l: &DynamoLedger| {
            l.expires()
                .map(|v| v.as_n().unwrap().parse::<i64>().unwrap())
        };
        let l = DynamoLedger::new(client, "t");
        let at = x(&l).unwrap();
        assert!((before + 30 * 86_400..=unix_now() + 30 * 86_400).contains(&at));
        assert_eq!(x(&l.clone().with_retention_days(0)), None);
        let at = x(&l.with_retention_days(7)).unwrap();
        assert!((before + 7 * 86_400..=unix_now() + 7 * 86_400).contains(&at));
    }

    #[test]
    fn run_status_reads_rows_written_before_it_existed() {
        let row = |attrs: &[(&str, &str)]| -> HashMap<String, Av> {
            attrs.iter().map(|(k, v)| (k.to_string(), s(*v))).collect()
        };
        assert_eq!(
            RunStatus::of(&row(&[("status", "FAILED")])),
            RunStatus::Failed
        );
        assert_eq!(RunStatus::of(&row(&[("status", "DONE")])), RunStatus::Done);
        assert_eq!(
            RunStatus::of(&row(&[("status", "RUNNING")])),
            RunStatus::Running
        );
        assert_eq!(RunStatus::of(&row(&[("error", "boom")])), RunStatus::Failed);
        assert_eq!(
            RunStatus::of(&row(&[("finished_at", "t")])),
            RunStatus::Done
        );
        assert_eq!(
            RunStatus::of(&row(&[("started_at", "t")])),
            RunStatus::Running
        );
    }

    #[test]
    fn long_keys_fit_a_sort_key() {
        let k = "é".repeat(600);
        let sk = object_sk(&k);
        assert!(sk.len() <= 1024);
        assert_ne!(object_sk(&format!("{k}a")), object_sk(&format!("{k}b")));
    }
}
