//! Copying one object: single PUT below the multipart threshold; multipart above it (or whenever the source
//! was uploaded in parts, keeping its part layout so the ETags match), resumable from the ledger; every read
//! pinned to one source version; every write carrying Content-MD5 and a CRC64NVME checksum (the whole
//! object's, for multipart uploads too), conditional on the destination being as the finder saw it; every
//! result verified as far as the source's and the destination's ETags allow ([`crate::etag`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use tokio::sync::OwnedSemaphorePermit;

use crate::config::{JobConfig, Sse};
use crate::error::{Error, ErrorKind, Result};
use crate::etag::{encrypted_without_md5, same_etag, EtagModel, EtagVerdict, Meaning};
use crate::job::JobObject;
use crate::ledger::{DynamoLedger, OpenUpload, UploadRecord};
use crate::limit::MemoryBudget;
use crate::stats::{StatEvent, Stats};
use crate::store::{
    crc64_b64, crc64_concat, etag_part_count, md5_of, multipart_etag, Head, ObjectInfo,
    ObjectStore, PartInfo, Pin, Sums, WriteIf, WriteOptions, Written,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Copied {
        bytes: u64,
        etag: String,
        millis: u64,
    },
    /// The source object no longer exists.
    Gone,
    /// The destination changed since the finder listed it (a newer copy is there): nothing written.
    Superseded,
}

/// A part plan: part size and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub part_size: u64,
    pub parts: u32,
}

impl Layout {
    /// The byte range `[start, end)` of `part` (from 1) of an object of `size` bytes; empty past its end. Never
    /// overflows, whatever a message said (jobs are validated, this holds even when they were not).
    pub fn range(&self, size: u64, part: u32) -> (u64, u64) {
        let start = u64::from(part.saturating_sub(1))
            .saturating_mul(self.part_size)
            .min(size);
        (start, start.saturating_add(self.part_size).min(size))
    }
}

pub struct Copier {
    pub cfg: Arc<JobConfig>,
    pub src: Arc<dyn ObjectStore>,
    pub dst: Arc<dyn ObjectStore>,
    pub ledger: DynamoLedger,
    pub stats: Stats,
    /// Object and part buffers in flight across the process.
    pub memory: MemoryBudget,
    /// What the source's and the destination's ETags say.
    pub model: EtagModel,
    /// Whether the destination was seen to check a part's CRC64NVME and to name the part by the MD5 of what
    /// it received (an answer that gave back our CRC64NVME, and our MD5 as the ETag). From then on parts are
    /// sent without an MD5 of ours: the CRC64NVME proves the bytes arrived whole, and the store's part ETags
    /// still make the multipart ETag that is checked against the source's before completing.
    pub dest_checks_parts: AtomicBool,
}

/// A part at the destination: the ETag S3 gave it (what the completion names) and its bytes' CRC64NVME.
#[derive(Debug, Clone)]
pub struct DonePart {
    pub etag: String,
    pub crc64: u64,
    pub len: u64,
}

/// The CRC64NVME its worker recorded for part `p` of upload `r`, when the destination's part is that one: the
/// same CRC64NVME, or, where the store keeps none, the same ETag.
fn record_crc(r: &UploadRecord, p: &PartInfo) -> Option<u64> {
    let c = *r.part_crcs.get(&p.number)?;
    let same = match &p.crc64 {
        Some(listed) => *listed == crc64_b64(c),
        None => r
            .part_etags
            .get(&p.number)
            .is_some_and(|e| same_etag(e, &p.etag)),
    };
    same.then_some(c)
}

/// The precondition of a job's destination write: the destination as the finder saw it.
pub fn write_condition(obj: &JobObject) -> WriteIf {
    match obj.dest_etag.as_deref() {
        None => WriteIf::Always,
        Some("") => WriteIf::Absent,
        Some(e) => WriteIf::Matches(e.to_owned()),
    }
}

/// The model a job config implies before anything is asked of the buckets.
pub fn model_for(cfg: &JobConfig) -> EtagModel {
    EtagModel {
        dest_md5: cfg.destination.sse != Sse::Kms,
        ..EtagModel::new(cfg.source.kind)
    }
}

/// A [`Head`] as a listing entry, for [`EtagModel::compare`].
pub fn info_of(key: &str, h: &Head) -> ObjectInfo {
    ObjectInfo {
        key: key.to_owned(),
        size: h.size,
        etag: h.etag.clone(),
        storage_class: h.storage_class.clone(),
        last_modified: h.last_modified,
    }
}

/// Bytes read from the source, with the share of the memory budget they occupy until dropped.
pub struct Reserved(pub bytes::Bytes, #[allow(dead_code)] OwnedSemaphorePermit);

fn hex_md5(etag: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(etag, &mut out).ok().map(|_| out)
}

fn is_source_missing(e: &Error) -> bool {
    e.is_not_found() && e.code() != Some("NoSuchBucket")
}

impl Copier {
    /// The largest object copied with one GET and one PUT, which buffer it whole: the multipart threshold, but
    /// never more than the memory budget (larger objects stream through in parts, each within the budget).
    pub fn single_put_limit(&self) -> u64 {
        self.cfg.multipart.threshold.min(self.memory.total_bytes())
    }

    /// Whether `obj` is copied as a multipart upload: a source of parts, or one too large for a single PUT.
    pub fn is_multipart(&self, obj: &JobObject) -> bool {
        self.in_parts(obj.size, &obj.etag)
    }

    /// Whether an object of `size` bytes with ETag `etag` (written in parts, or not) is copied in parts.
    pub fn in_parts(&self, size: u64, etag: &str) -> bool {
        size >= self.single_put_limit() || etag_part_count(etag).is_some()
    }

    /// Whether this write's ETag is MD5-based: not when KMS encrypted it (by the job's setting or the
    /// bucket's default, which the answer tells).
    fn dest_md5(&self, w: &Written) -> bool {
        self.model.dest_md5 && !encrypted_without_md5(w.sse.as_deref())
    }

    /// Check what a write's answer says against what was sent: the CRC64NVME S3 computed, and, where the ETag
    /// is an MD5, the ETag.
    fn check_written(
        &self,
        what: &str,
        w: &Written,
        etag: Option<&str>,
        crc: Option<u64>,
    ) -> Result<()> {
        if let (Some(got), Some(c)) = (&w.crc64, crc) {
            if *got != crc64_b64(c) {
                return Err(Error::integrity(format!(
                    "{what}: the destination computed CRC64NVME {got}, the bytes sent have {}",
                    crc64_b64(c)
                )));
            }
        }
        if let Some(e) = etag {
            if self.dest_md5(w) && !same_etag(&w.etag, e) {
                return Err(Error::integrity(format!(
                    "{what}: destination ETag {} is not the {e} the bytes sent imply",
                    w.etag
                )));
            }
        }
        Ok(())
    }

    /// Copy `obj` (as the finder saw it). If the source changed since, the current version is copied instead;
    /// one copy only ever reads one version.
    pub async fn copy(&self, run: &str, obj: &JobObject, final_attempt: bool) -> Result<Outcome> {
        let start = Instant::now();
        let mut pin = Pin::of(&obj.etag, obj.version_id.as_deref());
        let cond = write_condition(obj);
        let mut single = !self.is_multipart(obj);
        for _ in 0..3 {
            let res = if single {
                self.single(&obj.key, &pin, obj.size, &cond).await
            } else {
                self.multipart(run, &obj.key, &pin, final_attempt, &cond)
                    .await
            };
            match res {
                Ok(Some((bytes, etag))) => {
                    return Ok(Outcome::Copied {
                        bytes,
                        etag,
                        millis: start.elapsed().as_millis() as u64,
                    })
                }
                Ok(None) => return Ok(Outcome::Gone),
                Err(e) if e.kind() == ErrorKind::Superseded => {
                    tracing::info!(key = %obj.key, "{e}");
                    return Ok(Outcome::Superseded);
                }
                Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                    tracing::info!(key = %obj.key, "source changed during the copy: copying its current version");
                    let head = match self.src.head(&obj.key, &Pin::Latest).await {
                        Ok(h) => h,
                        Err(e) if is_source_missing(&e) => return Ok(Outcome::Gone),
                        Err(e) => return Err(e),
                    };
                    pin = Pin::of(&head.etag, head.version_id.as_deref());
                    single = head.size < self.single_put_limit()
                        && etag_part_count(&head.etag).is_none();
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorKind::Transient,
            format!("{}: the source kept changing during the copy", obj.key),
        ))
    }

    pub async fn write_options(&self, key: &str, head: &Head, pin: &Pin) -> Result<WriteOptions> {
        let d = &self.cfg.destination;
        let (meta, tags) = if self.cfg.include_metadata {
            let tags = if head.tag_count.is_none_or(|n| n > 0) {
                self.src.get_tags(key, pin).await?
            } else {
                vec![]
            };
            (head.meta.clone(), tags)
        } else {
            (Default::default(), vec![])
        };
        Ok(WriteOptions {
            meta,
            tags,
            storage_class: Some(d.storage_class.clone()),
            acl: (!d.acl.is_empty()).then(|| d.acl.clone()),
            sse: match d.sse {
                Sse::None => None,
                Sse::Aes256 => Some("AES256".into()),
                Sse::Kms => Some("aws:kms".into()),
            },
            kms_key_id: d.kms_key_id.clone(),
        })
    }

    async fn reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit> {
        self.memory
            .reserve(bytes)
            .await
            .ok_or_else(|| Error::new(ErrorKind::Other, "shutting down"))
    }

    /// Whole object in one GET and one PUT. None when the source is gone.
    async fn single(
        &self,
        key: &str,
        pin: &Pin,
        size: u64,
        cond: &WriteIf,
    ) -> Result<Option<(u64, String)>> {
        let _budget = self.reserve(size).await?;
        let f = match self.src.get(key, None, pin).await {
            Ok(f) => f,
            Err(e) if is_source_missing(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        // A single PUT is its own commit: the bytes are checked against the source's MD5 before it, not after.
        let md5 = md5_of(&f.body);
        let sums = Sums {
            md5: Some(md5),
            ..Sums::crc_only(&f.body)
        };
        let md5_hex = hex::encode(md5);
        if let Meaning::Md5(m) = self.model.source_head(&f.head) {
            if m != md5 {
                return Err(Error::integrity(format!(
                    "{key}: read bytes with MD5 {md5_hex}, source ETag is {}",
                    f.head.etag
                )));
            }
        }
        let opts = self
            .write_options(
                key,
                &f.head,
                &Pin::of(&f.head.etag, f.head.version_id.as_deref()),
            )
            .await?;
        let len = f.body.len() as u64;
        let dkey = self.cfg.destination_key(key);
        let w = match self.dst.put(&dkey, f.body, sums, &opts, cond).await {
            Ok(w) => w,
            // Superseded: by another job's newer copy, or by this very write, landed by an earlier attempt?
            Err(e) if e.kind() == ErrorKind::Superseded => {
                match self.landed(&dkey, Some(&md5_hex), Some(sums.crc64)).await? {
                    Some(etag) => {
                        self.stats.send(StatEvent::Bytes(len));
                        return Ok(Some((len, etag)));
                    }
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        self.check_written(&dkey, &w, Some(&md5_hex), Some(sums.crc64))?;
        self.stats.send(StatEvent::Bytes(len));
        Ok(Some((len, w.etag)))
    }

    /// The source's own part layout when it was uploaded in parts (so ETags match), else max(chunk, size/10,000).
    pub async fn layout(&self, key: &str, head: &Head, pin: &Pin) -> Result<Layout> {
        let size = head.size;
        if let Some(n) = etag_part_count(&head.etag) {
            if let Some(p) = self.src.part_size(key, pin, 1).await? {
                if p > 0 && size.div_ceil(p).max(1) == n as u64 {
                    return Ok(Layout {
                        part_size: p,
                        parts: n,
                    });
                }
            }
        }
        let part_size = self.cfg.part_size_for(size);
        Ok(Layout {
            part_size,
            parts: size.div_ceil(part_size).max(1) as u32,
        })
    }

    /// Copy one part: pinned ranged GET, MD5 and CRC64NVME, UploadPart with both, check the answer.
    pub async fn copy_part(
        &self,
        key: &str,
        pin: &Pin,
        size: u64,
        layout: Layout,
        upload_id: &str,
        part: u32,
    ) -> Result<(Reserved, Sums, String)> {
        let (a, b) = layout.range(size, part);
        let permit = self.reserve(b - a).await?;
        // From the part's memory being granted to the destination's answer.
        let started = std::time::Instant::now();
        let f = self.src.get(key, Some((a, b)), pin).await?;
        if f.body.len() as u64 != b - a {
            return Err(Error::integrity(format!(
                "{key}: part {part} read {} bytes, expected {}",
                f.body.len(),
                b - a
            )));
        }
        let trusted = self.dest_checks_parts.load(Ordering::Relaxed);
        let sums = if trusted {
            Sums::crc_only(&f.body)
        } else {
            Sums::of(&f.body)
        };
        let dkey = self.cfg.destination_key(key);
        let w = self
            .dst
            .upload_part(&dkey, upload_id, part, f.body.clone(), sums)
            .await?;
        let what = format!("{dkey} part {part}");
        let md5 = sums.md5.map(hex::encode);
        self.check_written(&what, &w, md5.as_deref(), Some(sums.crc64))?;
        match (&w.crc64, md5) {
            (None, None) => {
                return Err(Error::integrity(format!(
                    "{what}: the destination no longer confirms the CRC64NVME it was sent"
                )))
            }
            (Some(_), Some(m)) if !trusted && same_etag(&w.etag, &m) => {
                self.dest_checks_parts.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        self.stats.send(StatEvent::Bytes(b - a));
        crate::metrics::record_latency(crate::metrics::Metric::PartLatency, started.elapsed());
        Ok((Reserved(f.body, permit), sums, w.etag))
    }

    /// Create the destination upload and record it in the ledger: first as one of the transfer's open uploads
    /// (before anything else, so that whatever happens next it is known to be ours, to resume or abort), then as
    /// the key's upload in progress, STARTED (for resume and fleet completion).
    ///
    /// S3 names the upload only in its answer to CreateMultipartUpload, so one window remains in which an
    /// upload exists and is not recorded: between that answer and the ledger's acknowledgement of the record (a
    /// single PutItem), plus a create whose answer was lost on the way back. An upload left there is never
    /// aborted by the transfer, since it cannot be told from another application's; a lifecycle rule
    /// (AbortIncompleteMultipartUpload) on the destination bucket is what removes it. When the record itself
    /// fails, the upload is aborted at once.
    pub async fn start_upload(
        &self,
        run: &str,
        key: &str,
        head: &Head,
        pin: &Pin,
        layout: Layout,
    ) -> Result<String> {
        let opts = self.write_options(key, head, pin).await?;
        let dkey = self.cfg.destination_key(key);
        let id = self.dst.create_multipart(&dkey, &opts).await?;
        let open = OpenUpload {
            upload_id: id.clone(),
            bucket: self.cfg.destination.bucket.clone(),
            key: dkey.clone(),
            run: run.to_owned(),
            created_at: None,
        };
        if let Err(e) = self.ledger.record_open_upload(&open).await {
            if let Err(abort) = self.dst.abort_multipart(&dkey, &id).await {
                tracing::warn!(key = %dkey, upload_id = %id, "aborting an upload the ledger could not record: {abort}");
            }
            return Err(e);
        }
        let rec = UploadRecord {
            upload_id: id.clone(),
            source_etag: head.etag.clone(),
            part_size: layout.part_size,
            parts: layout.parts,
            ..Default::default()
        };
        self.ledger.put_upload(run, key, &rec).await?;
        Ok(id)
    }

    /// Abort one of the transfer's own uploads and forget it. An upload already gone (NoSuchUpload) counts as
    /// aborted; any other failure leaves it recorded, for a later resume or destroy to abort.
    pub async fn abort_upload(&self, dkey: &str, upload_id: &str) -> Result<()> {
        match self.dst.abort_multipart(dkey, upload_id).await {
            Ok(()) => {}
            Err(e) if e.code() == Some("NoSuchUpload") => {}
            Err(e) => return Err(e),
        }
        self.forget_upload(upload_id).await;
        Ok(())
    }

    /// After a redelivered job found its object copied already: close the upload the ledger still lists for
    /// `key` (its completer died between completing it and forgetting it, or a spare): aborted if S3 still
    /// has it, forgotten either way.
    pub async fn close_listed_upload(&self, run: &str, key: &str) -> Result<()> {
        match self.ledger.upload(run, key).await? {
            Some(r) if r.status == "STARTED" => {
                self.abort_upload(&self.cfg.destination_key(key), &r.upload_id)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Take a completed or aborted upload off the open ones. A failure only warns: the upload is closed
    /// either way, and destroy finds it gone (NoSuchUpload) and forgets it then.
    pub async fn forget_upload(&self, upload_id: &str) {
        if let Err(e) = self.ledger.close_upload(upload_id).await {
            tracing::warn!(upload_id, "forgetting a closed upload: {e}");
        }
    }

    /// Incomplete uploads of exactly `dkey`, or None when the store cannot list them (some S3-compatible ones).
    /// Other applications' uploads are among them: see [`Copier::ours`].
    pub async fn live_uploads(&self, dkey: &str) -> Result<Option<Vec<crate::store::UploadInfo>>> {
        match self.dst.list_multipart_uploads(dkey).await {
            Ok(v) => Ok(Some(v.into_iter().filter(|u| u.key == dkey).collect())),
            Err(e) if e.code() == Some("NotImplemented") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the transfer created `upload_id` (of `dkey`): recorded as open, or named by the key's row in
    /// the ledger (`named`, which is also how uploads started before open uploads were recorded are known; such
    /// an upload is recorded now, so that destroy finds it too).
    async fn ours(&self, run: &str, dkey: &str, upload_id: &str, named: bool) -> Result<bool> {
        if self.ledger.open_upload(upload_id).await?.is_some() {
            return Ok(true);
        }
        if named {
            self.ledger
                .record_open_upload(&OpenUpload {
                    upload_id: upload_id.to_owned(),
                    bucket: self.cfg.destination.bucket.clone(),
                    key: dkey.to_owned(),
                    run: run.to_owned(),
                    created_at: None,
                })
                .await?;
        }
        Ok(named)
    }

    /// Find the upload to continue: the one the ledger recorded for this source version, with its parts
    /// re-verified against the source. The transfer's other incomplete uploads of the key are aborted; uploads
    /// it did not record (another application's) are left alone.
    async fn resume(
        &self,
        run: &str,
        key: &str,
        head: &Head,
        pin: &Pin,
        layout: Layout,
    ) -> Result<Option<(String, BTreeMap<u32, DonePart>)>> {
        let dkey = self.cfg.destination_key(key);
        let record = self.ledger.upload(run, key).await?;
        let Some(uploads) = self.live_uploads(&dkey).await? else {
            // Without ListMultipartUploads nothing can be checked: abort the upload we know of, start afresh.
            if let Some(r) = record.filter(|r| r.status == "STARTED") {
                let _ = self.abort_upload(&dkey, &r.upload_id).await;
            }
            return Ok(None);
        };
        let named = |id: &str| record.as_ref().is_some_and(|r| r.upload_id == id);
        if let Some(r) = &record {
            if r.status == "STARTED" && !uploads.iter().any(|u| u.upload_id == r.upload_id) {
                // Completed, or aborted by someone else: nothing left to abort.
                self.forget_upload(&r.upload_id).await;
            }
        }
        let usable = record.clone().filter(|r| {
            r.source_etag == head.etag
                && r.part_size == layout.part_size
                && r.status == "STARTED"
                && uploads.iter().any(|u| u.upload_id == r.upload_id)
        });
        for u in &uploads {
            if !self
                .ours(run, &dkey, &u.upload_id, named(&u.upload_id))
                .await?
            {
                tracing::debug!(key = %dkey, upload_id = %u.upload_id, "leaving an incomplete upload the transfer did not start");
                continue;
            }
            if usable.as_ref().is_none_or(|r| r.upload_id != u.upload_id) {
                tracing::info!(key = %dkey, upload_id = %u.upload_id, "aborting a stale incomplete upload");
                self.abort_upload(&dkey, &u.upload_id).await?;
            }
        }
        let Some(r) = usable else { return Ok(None) };
        // What the destination holds, from ListParts; failing that, the parts this upload recorded in the ledger
        // as they finished. Either way each part is re-verified against the source below.
        let listed = match self.dst.list_parts(&dkey, &r.upload_id).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(key = %dkey, upload_id = %r.upload_id, "cannot list kept parts ({e}): using the ledger's record");
                r.part_etags
                    .iter()
                    .map(|(n, etag)| {
                        let (a, b) = layout.range(head.size, (*n).max(1));
                        PartInfo {
                            number: *n,
                            size: b - a,
                            etag: etag.clone(),
                            crc64: r.part_crcs.get(n).map(|c| crc64_b64(*c)),
                        }
                    })
                    .collect()
            }
        };
        let mut kept = BTreeMap::new();
        let mut reread = 0;
        for p in listed {
            if p.number == 0 || p.number > layout.parts {
                continue;
            }
            let (a, b) = layout.range(head.size, p.number);
            if p.size != b - a {
                continue;
            }
            // A part its worker recorded holds the bytes that worker read from this very source version
            // (pinned), checked by S3 on arrival: the same CRC64NVME (else, where the store keeps none, the
            // same ETag) at the destination is that part, kept without reading it again.
            if let Some(c) = record_crc(&r, &p) {
                kept.insert(
                    p.number,
                    DonePart {
                        etag: p.etag,
                        crc64: c,
                        len: b - a,
                    },
                );
                continue;
            }
            // Not recorded (its worker died between uploading and recording it): read again and compared, by
            // its CRC64NVME where the upload has one (whatever encrypts it), else by its ETag where that is
            // an MD5.
            reread += 1;
            let f = self.src.get(key, Some((a, b)), pin).await?;
            let sums = Sums::of(&f.body);
            let same = match &p.crc64 {
                Some(c) => *c == crc64_b64(sums.crc64),
                None => {
                    self.model.dest_md5
                        && sums
                            .md5
                            .is_some_and(|m| same_etag(&p.etag, &hex::encode(m)))
                }
            };
            if same {
                kept.insert(
                    p.number,
                    DonePart {
                        etag: p.etag,
                        crc64: sums.crc64,
                        len: sums.len,
                    },
                );
            }
        }
        tracing::info!(key = %dkey, upload_id = %r.upload_id, kept = kept.len(), reread, parts = layout.parts, "resuming multipart upload");
        Ok(Some((r.upload_id, kept)))
    }

    async fn multipart(
        &self,
        run: &str,
        key: &str,
        pin: &Pin,
        final_attempt: bool,
        cond: &WriteIf,
    ) -> Result<Option<(u64, String)>> {
        let head = match self.src.head(key, pin).await {
            Ok(h) => h,
            Err(e) if is_source_missing(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let pin = Pin::of(&head.etag, head.version_id.as_deref());
        let layout = self.layout(key, &head, &pin).await?;
        let dkey = self.cfg.destination_key(key);
        let (upload_id, kept) = match self.resume(run, key, &head, &pin, layout).await? {
            Some(r) => r,
            None => (
                self.start_upload(run, key, &head, &pin, layout).await?,
                BTreeMap::new(),
            ),
        };
        let result = self
            .upload_and_complete(run, key, &head, &pin, layout, &upload_id, kept, cond)
            .await;
        match &result {
            // The source changed: these parts are of an old version; never complete them. Superseded: a newer
            // copy is at the destination, this one is not wanted.
            Err(e)
                if e.kind() == ErrorKind::PreconditionFailed
                    || e.kind() == ErrorKind::Integrity
                    || e.kind() == ErrorKind::Superseded
                    || final_attempt =>
            {
                if let Err(abort) = self.abort_upload(&dkey, &upload_id).await {
                    tracing::warn!(key = %dkey, "aborting upload after failure: {abort}");
                }
            }
            _ => {}
        }
        result.map(Some)
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_and_complete(
        &self,
        run: &str,
        key: &str,
        head: &Head,
        pin: &Pin,
        layout: Layout,
        upload_id: &str,
        kept: BTreeMap<u32, DonePart>,
        cond: &WriteIf,
    ) -> Result<(u64, String)> {
        let dkey = self.cfg.destination_key(key);
        let whole_md5 = match self.model.source_head(head) {
            Meaning::Md5(m) => Some(m),
            _ => None,
        };
        let mut full = Md5::new();
        let mut done = Vec::with_capacity(layout.parts as usize);
        // Parts upload concurrently but are yielded in order, so the whole-object MD5 can be computed on the way
        // (kept parts are re-read for it only when the source has a plain MD5 ETag to check against).
        let mut parts = stream::iter(1..=layout.parts)
            .map(|n| {
                let kept = kept.get(&n).cloned();
                async move {
                    match kept {
                        Some(k) if whole_md5.is_none() => Ok((None, k)),
                        Some(k) => {
                            let (a, b) = layout.range(head.size, n);
                            let permit = self.reserve(b - a).await?;
                            let f = self.src.get(key, Some((a, b)), pin).await?;
                            Ok((Some(Reserved(f.body, permit)), k))
                        }
                        None => {
                            let (body, s, etag) = self
                                .copy_part(key, pin, head.size, layout, upload_id, n)
                                .await?;
                            // Remembered for resume: what it holds, and its ETag where the destination
                            // cannot list its parts.
                            self.ledger
                                .record_part(run, key, upload_id, n, &etag, s.crc64)
                                .await?;
                            let part = DonePart {
                                etag,
                                crc64: s.crc64,
                                len: s.len,
                            };
                            Ok::<_, Error>((Some(body), part))
                        }
                    }
                }
            })
            .buffered(self.cfg.worker.part_concurrency as usize);
        while let Some((body, part)) = parts.try_next().await? {
            if let (true, Some(b)) = (whole_md5.is_some(), body) {
                full.update(&b.0);
            }
            done.push(part);
        }
        drop(parts);
        if let Some(m) = whole_md5 {
            let got: [u8; 16] = full.finalize().into();
            if got != m {
                return Err(Error::integrity(format!(
                    "{key}: bytes read have MD5 {}, source ETag is {}",
                    hex::encode(got),
                    head.etag
                )));
            }
        }
        // The ETags S3 gave the parts (MD5s, unless KMS encrypts them), as CompleteMultipartUpload must name them.
        let list: Vec<(u32, String)> = done
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, p.etag.clone()))
            .collect();
        let crc = done.iter().fold(None, |acc: Option<u64>, p| {
            Some(acc.map_or(p.crc64, |a| crc64_concat(a, p.crc64, p.len)))
        });
        let etag = self
            .complete(&dkey, upload_id, &list, crc, head, cond)
            .await?;
        Ok((head.size, etag))
    }

    /// Complete and verify: S3 checks the whole object's CRC64NVME against the one sent; the ETag must be the
    /// one the parts imply, and equal the source's when the layout was kept (where both are MD5-based).
    pub async fn complete(
        &self,
        dkey: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        crc: Option<u64>,
        head: &Head,
        cond: &WriteIf,
    ) -> Result<String> {
        let md5s: Option<Vec<[u8; 16]>> = parts.iter().map(|(_, e)| hex_md5(e)).collect();
        let expected = md5s.map(|m| multipart_etag(&m));
        // Where the parts' ETags are known to be the destination's MD5s of what it received, they make the
        // source's ETag (its part layout kept): checked before the completion makes the object, not after.
        if let (Some(e), Meaning::Multipart(_), true) = (
            &expected,
            self.model.source_head(head),
            self.dest_checks_parts.load(Ordering::Relaxed),
        ) {
            if !same_etag(e, &head.etag) {
                return Err(Error::integrity(format!(
                    "{dkey}: the parts received make ETag {e}, the source's is {}",
                    head.etag
                )));
            }
        }
        let w = match self
            .dst
            .complete_multipart(dkey, upload_id, parts, crc, cond)
            .await
        {
            Ok(w) => w,
            // Superseded: by another job's newer copy, or by these very bytes, completed by an earlier attempt
            // (then this upload is a spare, aborted).
            Err(e) if e.kind() == ErrorKind::Superseded => {
                match self.landed(dkey, expected.as_deref(), crc).await? {
                    Some(etag) => {
                        if let Err(x) = self.abort_upload(dkey, upload_id).await {
                            tracing::warn!(key = %dkey, upload_id, "aborting a spare upload: {x}");
                        }
                        return Ok(etag);
                    }
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        // Completed: the upload is an object now (whatever the checks below find), nothing to abort.
        self.forget_upload(upload_id).await;
        self.check_written(dkey, &w, expected.as_deref(), crc)?;
        if let (None, Some(c)) = (&w.crc64, crc) {
            // The answer did not say: ask for the checksum the object now carries (this very object: pinned
            // to the ETag just returned), so that the check holds whatever the store enforces.
            match self.dst.head(dkey, &Pin::ETag(w.etag.clone())).await {
                Ok(h) => {
                    if let Some(got) = h.checksums.get("CRC64NVME") {
                        if *got != crc64_b64(c) {
                            return Err(Error::integrity(format!(
                                "{dkey}: the destination keeps CRC64NVME {got}, the parts sent make {}",
                                crc64_b64(c)
                            )));
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::PreconditionFailed || e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        if self.dest_md5(&w) {
            if let Meaning::Multipart(_) = self.model.source_head(head) {
                if !same_etag(&w.etag, &head.etag) {
                    return Err(Error::integrity(format!(
                        "{dkey}: ETag {} differs from the source's {}",
                        w.etag, head.etag
                    )));
                }
            }
        }
        Ok(w.etag)
    }

    /// After a conditional write found the destination changed: whether what is there now is what this write
    /// carried (an earlier attempt's write landed: its ETag, checked), or another object (None). Same ETag but
    /// another CRC64NVME than the bytes sent: an integrity failure, not a newer copy.
    async fn landed(
        &self,
        dkey: &str,
        etag: Option<&str>,
        crc: Option<u64>,
    ) -> Result<Option<String>> {
        let h = match self.dst.head(dkey, &Pin::Latest).await {
            Ok(h) => h,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let same_etag = etag
            .is_some_and(|e| self.model.destination_head(&h).is_hash() && same_etag(&h.etag, e));
        match (h.checksums.get("CRC64NVME"), crc) {
            (Some(got), Some(c)) if *got == crc64_b64(c) => Ok(Some(h.etag)),
            (Some(got), Some(c)) if same_etag => Err(Error::integrity(format!(
                "{dkey}: the destination keeps CRC64NVME {got}, the bytes sent make {}",
                crc64_b64(c)
            ))),
            _ if same_etag => Ok(Some(h.etag)),
            _ => Ok(None),
        }
    }

    /// After `NoSuchUpload` from a completion: whether the destination holds the object that these parts
    /// make (an earlier completion whose answer was lost), and its ETag: by its CRC64NVME where both are known,
    /// else by the ETag the parts imply where the destination's is MD5-based, else by size.
    pub async fn completed_as(
        &self,
        dkey: &str,
        parts: &[(u32, String)],
        crc: Option<u64>,
        size: u64,
    ) -> Result<Option<String>> {
        let h = match self.dst.head(dkey, &Pin::Latest).await {
            Ok(h) => h,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let md5s: Option<Vec<[u8; 16]>> = parts.iter().map(|(_, e)| hex_md5(e)).collect();
        let same = h.size == size
            && match (h.checksums.get("CRC64NVME"), crc, md5s) {
                (Some(got), Some(c), _) => *got == crc64_b64(c),
                (_, _, Some(m)) if self.model.destination_head(&h).is_hash() => {
                    same_etag(&h.etag, &multipart_etag(&m))
                }
                _ => true,
            };
        Ok(same.then_some(h.etag))
    }

    /// On redelivery: is this object already at the destination, as this job wanted it? Same size and ETag,
    /// or, where the ETags cannot be compared, a copy no older than the source's last change.
    pub async fn already_copied(&self, obj: &JobObject) -> Result<bool> {
        let dst = match self
            .dst
            .head(&self.cfg.destination_key(&obj.key), &Pin::Latest)
            .await
        {
            Ok(h) => h,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        };
        if dst.size != obj.size {
            return Ok(false);
        }
        if same_etag(&dst.etag, &obj.etag) {
            return Ok(true);
        }
        let src = match self.src.head(&obj.key, &Pin::Latest).await {
            Ok(h) => h,
            Err(e) if is_source_missing(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(
            match self
                .model
                .compare(&info_of(&obj.key, &src), &info_of(&obj.key, &dst))
            {
                EtagVerdict::Same => true,
                EtagVerdict::Differs => false,
                EtagVerdict::NeedsHead => self.model.same_after_head(&src, &dst),
            },
        )
    }
}
