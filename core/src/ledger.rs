//! The DynamoDB ledger: one table (`pk`, `sk` strings) holding, per run, a summary kept current with atomic
//! ADDs, the outcome of every object, the in-progress multipart uploads, and, per key, the last applied event
//! sequencer.
//!
//! | item                 | pk               | sk              |
//! |----------------------|------------------|-----------------|
//! | latest run pointer   | `transfer`       | `latest`        |
//! | run summary          | `run#<run>`      | `summary`       |
//! | object               | `run#<run>`      | `obj#<key>`     |
//! | finished job         | `run#<run>`      | `job#<job id>`  |
//!
//! | event order per key  | `seq#<key>`      | `seq`           |
//!
//! A finished job's row is written once (a conditional put, which is also what keeps the run counts exact when
//! a message is redelivered) and carries the outcomes of its objects that went right the first time, in one
//! compact `objects` attribute: a batch of small objects costs one ledger row, not one per object. Every other
//! outcome — failed, retried, or of a multipart object whose upload row exists already — gets its own `obj#`
//! row. [`DynamoLedger::objects`] reads both back as one list.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::{AttributeValue as Av, PutRequest, ReturnValue, WriteRequest};
use aws_sdk_dynamodb::Client;

use crate::error::{Error, ErrorKind, Result};
use crate::queue::count_call;

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

/// A multipart upload in progress, as the ledger remembers it (for resume and for fleet-split completion).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadRecord {
    pub upload_id: String,
    pub source_etag: String,
    pub part_size: u64,
    pub parts: u32,
    pub part_etags: BTreeMap<u32, String>,
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: Client,
    table: String,
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
/// The two rows a run's state is written to: its own summary, and the transfer's latest-run pointer.
fn run_rows(run: &str) -> [(String, &'static str); 2] {
    [(run_pk(run), "summary"), ("transfer".to_owned(), "latest")]
}

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
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
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
        count_call();
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(self.err("describing"))?;
        Ok(())
    }

    pub async fn start_run(&self, run: &str) -> Result<()> {
        let at = now();
        for (pk, sk) in run_rows(run) {
            count_call();
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(pk))
                .item("sk", s(sk))
                .item("run", s(run))
                .item("started_at", s(&at))
                .send()
                .await
                .map_err(self.err("starting run"))?;
        }
        Ok(())
    }

    pub async fn finish_run(&self, run: &str, objects_found: u64, bytes_found: u64) -> Result<()> {
        let at = now();
        for (pk, sk) in run_rows(run) {
            count_call();
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(pk))
                .key("sk", s(sk))
                .update_expression("SET finished_at = :at, objects_found = :f, bytes_found = :b")
                .expression_attribute_values(":at", s(&at))
                .expression_attribute_values(":f", n(objects_found))
                .expression_attribute_values(":b", n(bytes_found))
                .send()
                .await
                .map_err(self.err("finishing run"))?;
        }
        Ok(())
    }

    /// Record that `run` failed with `error`, creating its summary when it failed before it started, and
    /// make it the latest run: a refresh then reports the failure (`terraform plan` shows it) until the next
    /// run replaces it.
    pub async fn fail_run(&self, run: &str, error: &str) -> Result<()> {
        let at = now();
        for (pk, sk) in run_rows(run) {
            count_call();
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(pk))
                .key("sk", s(sk))
                .update_expression(
                    "SET #r = :run, started_at = if_not_exists(started_at, :at), failed_at = :at, #e = :e",
                )
                .expression_attribute_names("#r", "run")
                .expression_attribute_names("#e", "error")
                .expression_attribute_values(":run", s(run))
                .expression_attribute_values(":at", s(&at))
                .expression_attribute_values(":e", s(error))
                .send()
                .await
                .map_err(self.err("recording a failed run"))?;
        }
        Ok(())
    }

    pub async fn latest_run(&self) -> Result<Option<String>> {
        count_call();
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s("transfer"))
            .key("sk", s("latest"))
            .consistent_read(true)
            .send()
            .await
            .map_err(self.err("reading latest run"))?;
        Ok(out.item().and_then(|i| get_s(i, "run")))
    }

    pub async fn summary(&self, run: &str) -> Result<Option<RunSummary>> {
        count_call();
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(run)))
            .key("sk", s("summary"))
            .consistent_read(true)
            .send()
            .await
            .map_err(self.err("reading run summary"))?;
        Ok(out.item().map(|i| RunSummary {
            run: run.to_owned(),
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
                count_call();
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
        self.count_job_with(run, job_id, t, (!packed.is_empty()).then_some(packed))
            .await
    }

    /// Every object outcome recorded for `run`: `obj#` rows and the objects packed into finished-job rows
    /// (an `obj#` row wins over a packed entry: it is the later word on that key).
    pub async fn objects(&self, run: &str) -> Result<Vec<ObjectRecord>> {
        let mut own: BTreeMap<String, ObjectRecord> = BTreeMap::new();
        let mut packed: Vec<ObjectRecord> = Vec::new();
        let mut start = None;
        loop {
            count_call();
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
                    let Some(key) = get_s(item, "key") else {
                        continue;
                    };
                    own.insert(
                        key.clone(),
                        ObjectRecord {
                            key,
                            status: Status::parse(&get_s(item, "status").unwrap_or_default()),
                            size: get_n(item, "size"),
                            etag: get_s(item, "etag").unwrap_or_default(),
                            duration_ms: get_n(item, "duration_ms"),
                            attempt: get_n(item, "attempt") as u32,
                            error: get_s(item, "error"),
                        },
                    );
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

    /// Add a finished job's totals to its run summary, once per job id: a conditional put of a job marker,
    /// then an atomic ADD. Returns false when the job had already been counted (a redelivered message).
    /// (Two calls rather than one transaction: transactions cost more and serialise on the table.)
    pub async fn count_job(&self, run: &str, job_id: &str, t: JobTotals) -> Result<bool> {
        self.count_job_with(run, job_id, t, None).await
    }

    async fn count_job_with(
        &self,
        run: &str,
        job_id: &str,
        t: JobTotals,
        objects: Option<String>,
    ) -> Result<bool> {
        let mut item = HashMap::from([
            ("pk".to_owned(), s(run_pk(run))),
            ("sk".to_owned(), s(format!("job#{job_id}"))),
            ("at".to_owned(), s(now())),
        ]);
        if let Some(o) = objects {
            item.insert("objects".into(), s(o));
        }
        count_call();
        let marked = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(self.err("marking a job counted"));
        match marked {
            Ok(_) => {}
            Err(e) if is_condition_failure(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
        count_call();
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(run)))
            .key("sk", s("summary"))
            .update_expression(
                "ADD objects_done :d, bytes_done :b, objects_failed :f, objects_gone :g",
            )
            .expression_attribute_values(":d", n(t.done))
            .expression_attribute_values(":b", n(t.bytes))
            .expression_attribute_values(":f", n(t.failed))
            .expression_attribute_values(":g", n(t.gone))
            .send()
            .await
            .map_err(self.err("counting a job"))?;
        Ok(true)
    }

    pub async fn upload(&self, run: &str, key: &str) -> Result<Option<UploadRecord>> {
        count_call();
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(run)))
            .key("sk", s(object_sk(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(self.err("reading upload state"))?;
        Ok(out.item().and_then(upload_from_item))
    }

    /// Record a multipart upload as STARTED (replacing an earlier row for the key).
    pub async fn put_upload(&self, run: &str, key: &str, u: &UploadRecord) -> Result<()> {
        count_call();
        self.client
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
            .item("updated_at", s(now()))
            .send()
            .await
            .map_err(self.err("recording an upload"))?;
        Ok(())
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
    ) -> Result<Option<UploadRecord>> {
        count_call();
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(run)))
            .key("sk", s(object_sk(key)))
            .update_expression("SET part_etags.#p = :e")
            .condition_expression("upload_id = :u")
            .expression_attribute_names("#p", part.to_string())
            .expression_attribute_values(":e", s(etag))
            .expression_attribute_values(":u", s(upload_id))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(self.err("recording a part"));
        match res {
            Ok(out) => Ok(out.attributes().and_then(upload_from_item)),
            Err(e) if is_condition_failure(&e) => Ok(None),
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
        count_call();
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(run)))
            .key("sk", s(object_sk(key)))
            .update_expression("SET #s = :to")
            .condition_expression("upload_id = :u AND #s = :from")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":u", s(upload_id))
            .expression_attribute_values(":from", s(from))
            .expression_attribute_values(":to", s(to))
            .send()
            .await
            .map_err(self.err("claiming an upload"));
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Record `seq` as the newest event applied to `key`; false when a newer (or the same) one already was.
    pub async fn advance_sequencer(&self, key: &str, seq: &str) -> Result<bool> {
        count_call();
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
        count_call();
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("seq#{key}")))
            .key("sk", s("seq"))
            .consistent_read(true)
            .send()
            .await
            .map_err(self.err("reading an event sequencer"))?;
        Ok(out.item().and_then(|i| get_s(i, "seq")))
    }
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
    Some(UploadRecord {
        upload_id,
        source_etag: get_s(i, "source_etag").unwrap_or_default(),
        part_size: get_n(i, "part_size"),
        parts: get_n(i, "parts") as u32,
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
    fn long_keys_fit_a_sort_key() {
        let k = "é".repeat(600);
        let sk = object_sk(&k);
        assert!(sk.len() <= 1024);
        assert_ne!(object_sk(&format!("{k}a")), object_sk(&format!("{k}b")));
    }
}
