//! What travels on the queue: jobs the finder (or a worker) enqueues, and S3 event notifications.

use serde::{Deserialize, Serialize};

use crate::config::MAX_MESSAGE_BYTES;
use crate::error::{Error, ErrorKind, Result};
use crate::events::EventRecord;

/// A source object as the finder saw it; the copy is pinned to this version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// A container image as the finder saw it (image transfers); the copy is pinned to `digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobImage {
    /// The source repository (the destination's is the prefix joined to it).
    pub repository: String,
    /// The tag to set at the destination, last; None: an untagged image, copied by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The digest of the source manifest the tag named when the finder looked.
    pub digest: String,
    /// Bytes of its blobs, as the finder counted them.
    #[serde(default)]
    pub size: u64,
}

impl JobImage {
    /// `repository:tag`, or `repository@digest` for an untagged image: the image's ledger key.
    pub fn key(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.repository),
            None => format!("{}@{}", self.repository, self.digest),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Job {
    /// Objects copied by one worker: one large object, or many small ones packed together.
    Copy {
        id: String,
        run: String,
        objects: Vec<JobObject>,
    },
    /// An object above the giant threshold: the worker that takes it starts the upload and fans it out.
    Giant {
        id: String,
        run: String,
        object: JobObject,
    },
    /// One part of a giant object; whichever worker records the last part completes the upload.
    Part {
        id: String,
        run: String,
        object: JobObject,
        upload_id: String,
        part: u32,
        parts: u32,
        part_size: u64,
    },
    /// One container image (an image transfer's job).
    Image {
        id: String,
        run: String,
        image: JobImage,
    },
}

impl Job {
    pub fn id(&self) -> &str {
        match self {
            Job::Copy { id, .. }
            | Job::Giant { id, .. }
            | Job::Part { id, .. }
            | Job::Image { id, .. } => id,
        }
    }

    pub fn run(&self) -> &str {
        match self {
            Job::Copy { run, .. }
            | Job::Giant { run, .. }
            | Job::Part { run, .. }
            | Job::Image { run, .. } => run,
        }
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("jobs serialise")
    }
}

/// A message as the worker understands it.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Job(Job),
    Events(Vec<EventRecord>),
    /// `s3:TestEvent`, sent when a notification is configured: nothing to do.
    TestEvent,
}

pub fn parse_message(body: &str) -> Result<Incoming> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| Error::with_source(ErrorKind::InvalidMessage, "message is not JSON", e))?;
    // S3 → SNS → SQS wraps the notification in an SNS envelope.
    if v.get("Type").and_then(|t| t.as_str()) == Some("Notification") {
        if let Some(inner) = v.get("Message").and_then(|m| m.as_str()) {
            return parse_message(inner);
        }
    }
    if v.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(Incoming::TestEvent);
    }
    if v.get("Records").is_some() {
        return crate::events::parse_records(&v).map(Incoming::Events);
    }
    if v.get("kind").is_some() {
        let job: Job = serde_json::from_value(v).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidMessage,
                "message is not a valid dth job",
                e,
            )
        })?;
        validate(&job)?;
        return Ok(Incoming::Job(job));
    }
    Err(Error::new(
        ErrorKind::InvalidMessage,
        "message is neither a dth job nor an S3 event notification",
    ))
}

fn validate(job: &Job) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::new(
            ErrorKind::InvalidMessage,
            format!("job {}: {why}", job.id()),
        ))
    };
    match job {
        Job::Copy { objects, .. } if objects.is_empty() => bad("no objects"),
        Job::Part {
            part,
            parts,
            part_size,
            object,
            ..
        } if *part == 0
            || part > parts
            || *part_size == 0
            || (*part as u64 - 1) * part_size >= object.size.max(1) =>
        {
            bad("part number out of range")
        }
        Job::Image { image, .. } => {
            let tag = image
                .tag
                .as_deref()
                .map_or(Ok(()), crate::image_config::check_tag);
            crate::image_config::check_repository(&image.repository)
                .and(tag)
                .and(crate::image_config::check_digest(&image.digest))
                .or_else(|m| bad(&m))
        }
        _ => Ok(()),
    }
}

/// A new job id: time-ordered and unique enough to guard the ledger's exactly-once counting.
pub fn new_id() -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    format!("{now:x}-{:016x}", fastrand::u64(..))
}

/// Packs small objects into [`Job::Copy`] batches within count, byte and message-size limits.
#[derive(Debug)]
pub struct Packer {
    run: String,
    max_objects: usize,
    max_bytes: u64,
    objects: Vec<JobObject>,
    bytes: u64,
    json_bytes: usize,
}

/// Headroom for the envelope and JSON escaping of a job beyond its keys.
const ENVELOPE: usize = 256;

impl Packer {
    pub fn new(run: &str, max_objects: u32, max_bytes: u64) -> Self {
        Self {
            run: run.into(),
            max_objects: max_objects as usize,
            max_bytes,
            objects: vec![],
            bytes: 0,
            json_bytes: 0,
        }
    }

    /// Add an object; returns a full job when this one does not fit in the current batch.
    pub fn push(&mut self, o: JobObject) -> Option<Job> {
        let json = serde_json::to_string(&o)
            .map(|s| s.len() + 1)
            .unwrap_or(2048);
        let full = !self.objects.is_empty()
            && (self.objects.len() >= self.max_objects
                || self.bytes + o.size > self.max_bytes
                || self.json_bytes + json + ENVELOPE > MAX_MESSAGE_BYTES);
        let out = if full { self.flush() } else { None };
        self.bytes += o.size;
        self.json_bytes += json;
        self.objects.push(o);
        out
    }

    pub fn flush(&mut self) -> Option<Job> {
        if self.objects.is_empty() {
            return None;
        }
        self.bytes = 0;
        self.json_bytes = 0;
        Some(Job::Copy {
            id: new_id(),
            run: self.run.clone(),
            objects: std::mem::take(&mut self.objects),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64) -> JobObject {
        JobObject {
            key: key.into(),
            size,
            etag: "e".into(),
            version_id: None,
        }
    }

    #[test]
    fn packer_respects_count_and_bytes() {
        let mut p = Packer::new("r", 3, 100);
        let mut jobs = vec![];
        for i in 0..7 {
            jobs.extend(p.push(obj(&format!("k{i}"), 10)));
        }
        jobs.extend(p.push(obj("big", 95)));
        jobs.extend(p.flush());
        let sizes: Vec<usize> = jobs
            .iter()
            .map(|j| match j {
                Job::Copy { objects, .. } => objects.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, vec![3, 3, 1, 1]);
    }

    #[test]
    fn packed_messages_stay_under_the_sqs_limit() {
        let mut p = Packer::new("r", 1000, u64::MAX);
        let long = "k".repeat(1000);
        let mut jobs = vec![];
        for i in 0..600 {
            jobs.extend(p.push(obj(&format!("{long}{i}"), 1)));
        }
        jobs.extend(p.flush());
        assert!(jobs.len() > 1);
        for j in &jobs {
            assert!(
                j.to_body().len() <= MAX_MESSAGE_BYTES,
                "{}",
                j.to_body().len()
            );
        }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_rejected() {
        let j = Job::Copy {
            id: "1".into(),
            run: "r".into(),
            objects: vec![obj("a b+c%=ü", 3)],
        };
        assert_eq!(parse_message(&j.to_body()).unwrap(), Incoming::Job(j));
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"kind":"copy"}"#,
            r#"{"kind":"copy","id":"1","run":"r","objects":[]}"#,
            r#"{"kind":"part","id":"1","run":"r","object":{"key":"k","size":10,"etag":"e"},"upload_id":"u","part":3,"parts":2,"part_size":5}"#,
        ] {
            let e = parse_message(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidMessage, "{bad}");
        }
        let image = Job::Image {
            id: "2".into(),
            run: "r".into(),
            image: JobImage {
                repository: "team/app".into(),
                tag: Some("1.0".into()),
                digest: format!("sha256:{}", "a".repeat(64)),
                size: 7,
            },
        };
        assert_eq!(
            parse_message(&image.to_body()).unwrap(),
            Incoming::Job(image)
        );
        for bad in [
            r#"{"kind":"image","id":"1","run":"r","image":{"repository":"App","digest":"sha256:00"}}"#,
            r#"{"kind":"image","id":"1","run":"r","image":{"repository":"app","tag":"-x","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}}"#,
        ] {
            let e = parse_message(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidMessage, "{bad}");
        }
        assert_eq!(
            parse_message(r#"{"Service":"Amazon S3","Event":"s3:TestEvent"}"#).unwrap(),
            Incoming::TestEvent
        );
    }
}
