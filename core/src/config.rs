//! The job configuration shared by finder, worker and (later) the provider's user data.
//!
//! It is JSON on the wire (`--config file.json` or `DTH_CONFIG`), deserialised with unknown fields rejected,
//! then [`JobConfig::validate`]d once; every error names the field it is about.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::image_config::ImageJobConfig;

pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * MIB;
/// S3's limits on multipart uploads.
pub const MIN_PART_SIZE: u64 = 5 * MIB;
pub const MAX_PART_SIZE: u64 = 5 * GIB;
pub const MAX_PARTS: u64 = 10_000;
/// The largest object a multipart upload can make: 10,000 parts of 5 GiB. No S3 object is larger.
pub const MAX_OBJECT_SIZE: u64 = MAX_PARTS * MAX_PART_SIZE;
/// S3's limit on a key: 1,024 bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;
/// SQS's limit on a message (and on a SendMessageBatch request).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub source: SourceConfig,
    pub destination: DestinationConfig,
    /// How the finder decides that an object at the destination is already up to date.
    #[serde(default)]
    pub compare: CompareMode,
    /// Copy every listed object without looking at the destination.
    #[serde(default)]
    pub skip_compare: bool,
    /// Copy system headers, user metadata and tags.
    #[serde(default = "default_include_metadata")]
    pub include_metadata: bool,
    #[serde(default)]
    pub filters: Filters,
    #[serde(default)]
    pub finder: FinderOptions,
    #[serde(default)]
    pub multipart: MultipartOptions,
    #[serde(default)]
    pub batch: BatchOptions,
    #[serde(default)]
    pub worker: WorkerOptions,
    /// S3 event notifications arriving on the job queue.
    #[serde(default)]
    pub events: EventsMode,
    /// Deliveries of a job before it is dead-lettered (the queue's redrive maxReceiveCount).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    pub queue: QueueConfig,
    pub ledger: LedgerConfig,
    /// Where the control plane (SQS, DynamoDB, Secrets Manager) lives: the account running the transfer.
    #[serde(default)]
    pub aws: AwsConfig,
    /// Publish the worker's metrics to CloudWatch under this transfer's name ([`crate::metrics`]). Left out of
    /// the JSON when unset, so that binaries older than metrics still read a config without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// Where the worker's metrics go: namespace [`crate::metrics::NAMESPACE`], dimension
/// [`crate::metrics::DIMENSION`] = `transfer`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The transfer's name, as the provider gave it.
    pub transfer: String,
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<()> {
        let t = &self.transfer;
        if t.trim().is_empty() {
            return Err(Error::config("metrics.transfer", "must not be empty"));
        }
        // CloudWatch's limit on a dimension value.
        if t.len() > 1024 {
            return Err(Error::config(
                "metrics.transfer",
                format!("is {} bytes; CloudWatch allows 1024", t.len()),
            ));
        }
        Ok(())
    }
}

/// The defaults of the top-level job settings, public for the provider's spec, which embeds them.
pub fn default_include_metadata() -> bool {
    true
}
pub fn default_max_attempts() -> u32 {
    5
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum SourceType {
    #[default]
    #[serde(rename = "Amazon_S3")]
    AmazonS3,
    #[serde(rename = "Aliyun_OSS")]
    AliyunOss,
    #[serde(rename = "Tencent_COS")]
    TencentCos,
    #[serde(rename = "Qiniu_Kodo")]
    QiniuKodo,
    /// Any other S3-compatible endpoint (MinIO, Ceph, Garage, ...): `endpoint` is required.
    #[serde(rename = "S3_Compatible")]
    S3Compatible,
}

impl SourceType {
    /// The endpoint implied by the type and region, as DTH derives it.
    pub fn endpoint_for(self, region: &str) -> Option<String> {
        match self {
            SourceType::AmazonS3 | SourceType::S3Compatible => None,
            SourceType::AliyunOss => Some(format!("https://oss-{region}.aliyuncs.com")),
            SourceType::TencentCos => Some(format!("https://cos.{region}.myqcloud.com")),
            SourceType::QiniuKodo => Some(format!("https://s3.{region}.qiniucs.com")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(rename = "type", default)]
    pub kind: SourceType,
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    /// A file listing one prefix per line; each is transferred as if it were `prefix`.
    #[serde(default)]
    pub prefix_list: Option<PrefixList>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); needed by most self-hosted servers.
    #[serde(default)]
    pub path_style: bool,
    /// A Secrets Manager secret holding `{"access_key_id": ..., "secret_access_key": ...}`.
    #[serde(default)]
    pub credentials_secret_arn: Option<String>,
    /// Public buckets: send unsigned requests.
    #[serde(default)]
    pub anonymous: bool,
    #[serde(default)]
    pub requester_pays: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrefixList {
    /// Bucket holding the list, read with the control-plane account's credentials; absent: `key` is a local path.
    #[serde(default)]
    pub bucket: Option<String>,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub credentials_secret_arn: Option<String>,
    #[serde(default = "default_storage_class")]
    pub storage_class: String,
    /// Canned ACL; empty for none (buckets with ACLs disabled).
    #[serde(default = "default_acl")]
    pub acl: String,
    #[serde(default)]
    pub sse: Sse,
    #[serde(default)]
    pub kms_key_id: Option<String>,
}

fn default_storage_class() -> String {
    "INTELLIGENT_TIERING".into()
}
fn default_acl() -> String {
    "bucket-owner-full-control".into()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum Sse {
    #[default]
    #[serde(rename = "none")]
    None,
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    Kms,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum CompareMode {
    #[serde(rename = "size")]
    Size,
    #[default]
    #[serde(rename = "size-etag")]
    SizeEtag,
    #[serde(rename = "checksum")]
    Checksum,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum EventsMode {
    #[default]
    #[serde(rename = "none")]
    None,
    #[serde(rename = "create")]
    Create,
    #[serde(rename = "create_and_delete")]
    CreateAndDelete,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Globs over the source key (`*` stays within one path segment, `**` crosses them); empty: everything.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinderOptions {
    /// Levels of common prefixes listed in parallel before listing flat. 0: list each prefix flat.
    pub depth: u32,
    /// Prefixes listed at once.
    pub parallelism: u32,
    /// Keys shown by `--dry-run`.
    pub dry_run_keys: u32,
}

impl Default for FinderOptions {
    fn default() -> Self {
        Self {
            depth: 0,
            parallelism: 4,
            dry_run_keys: 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MultipartOptions {
    /// Objects this size or larger are copied in parts.
    pub threshold: u64,
    /// Part size (raised when an object would need more than 10,000 parts).
    pub chunk_size: u64,
    /// Objects this size or larger are split into per-part jobs copied by the whole fleet.
    pub giant_threshold: u64,
}

impl Default for MultipartOptions {
    fn default() -> Self {
        Self {
            threshold: 10 * MIB,
            chunk_size: 5 * MIB,
            giant_threshold: GIB,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchOptions {
    /// Most objects packed into one job.
    pub max_objects: u32,
    /// Most bytes packed into one job.
    pub max_bytes: u64,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_objects: 200,
            max_bytes: 64 * MIB,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerOptions {
    /// Objects (or parts) copied at once; also sets the worker's memory budget: concurrency × chunk_size bytes
    /// of object data held at once, however they split between objects and parts.
    pub concurrency: u32,
    /// Parts of one multipart object copied at once.
    pub part_concurrency: u32,
    /// Bytes per second read from the source, summed over all transfers; 0: unlimited.
    pub bandwidth_limit: u64,
    /// S3 requests per second, both sides together; 0: unlimited.
    pub requests_per_second: u32,
    /// Seconds between visibility extensions of an in-flight job.
    pub heartbeat_secs: u64,
    /// Visibility granted at each heartbeat.
    pub visibility_secs: u64,
    /// Seconds a stopping worker waits for jobs in flight before releasing them.
    pub shutdown_grace_secs: u64,
    /// Days the ledger keeps the rows of object outcomes and finished jobs the workers write, after their
    /// last write (the table's TTL removes them then; run summaries are kept forever). 0: keep them forever.
    /// Here rather than under `ledger`, which the provider builds field by field: the workers are the only
    /// writers of those rows. Left out of the JSON at its default, so older workers still read the config.
    #[serde(skip_serializing_if = "is_default_retention")]
    pub ledger_retention_days: u32,
}

fn is_default_retention(days: &u32) -> bool {
    *days == crate::ledger::DEFAULT_RETENTION_DAYS
}

/// Longest ledger retention: ten years. Longer is a unit mistake (seconds or hours given as days); to keep
/// rows forever, say 0.
pub const MAX_RETENTION_DAYS: u32 = 3650;

/// Longest `worker.shutdown_grace_secs` the engine accepts: a day (the provider holds it lower, to what a drain
/// lifecycle hook can wait). Bounded so that the waits built on it (`docker stop`, systemd's stop timeout) are.
pub const MAX_SHUTDOWN_GRACE_SECS: u64 = 86_400;

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            part_concurrency: 4,
            bandwidth_limit: 0,
            requests_per_second: 0,
            heartbeat_secs: 60,
            visibility_secs: 300,
            shutdown_grace_secs: 90,
            ledger_retention_days: crate::ledger::DEFAULT_RETENTION_DAYS,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    pub table: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoints: Endpoints,
    /// The longest a request may go without progress, in seconds: to connect, to answer, between two chunks of
    /// a body; requests carrying data get one more second per 256 KiB of it. Default 60 (1-3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_timeout_secs: Option<u64>,
}

/// [`AwsConfig::io_timeout_secs`] when not set.
pub const DEFAULT_IO_TIMEOUT_SECS: u64 = 60;

impl AwsConfig {
    pub fn io_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.io_timeout_secs.unwrap_or(DEFAULT_IO_TIMEOUT_SECS))
    }
}

/// Endpoint overrides, like the AWS provider's `endpoints {}` block.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    #[serde(default)]
    pub s3: Option<String>,
    #[serde(default)]
    pub sqs: Option<String>,
    #[serde(default)]
    pub dynamodb: Option<String>,
    #[serde(default)]
    pub secretsmanager: Option<String>,
    /// Auto Scaling: the finder sets its own group back to 0 when a scheduled run is done.
    #[serde(default)]
    pub autoscaling: Option<String>,
    /// ECR's API (image transfers: authorization tokens, repositories, image lists). Left out of the JSON when
    /// unset, so that binaries older than image transfers still read an object transfer's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecr: Option<String>,
    /// CloudWatch (the worker's metrics). Left out of the JSON when unset, like `ecr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudwatch: Option<String>,
}

impl JobConfig {
    /// Parse JSON and validate. Unknown or mistyped fields are reported with their path.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: JobConfig = decode(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Load an object transfer's config from a file or an inline JSON string.
    pub fn load(path: Option<&std::path::Path>, inline: Option<&str>) -> Result<Self> {
        match TransferConfig::load(path, inline)? {
            TransferConfig::Objects(c) => Ok(c),
            TransferConfig::Images(_) => Err(Error::config(
                "transfer",
                "this is an image transfer's config, not an object transfer's",
            )),
        }
    }

    /// Every check in one place; the first failure names its field.
    pub fn validate(&self) -> Result<()> {
        let s = &self.source;
        check_bucket("source.bucket", &s.bucket, s.kind == SourceType::AmazonS3)?;
        check_prefix("source.prefix", &s.prefix)?;
        if let Some(list) = &s.prefix_list {
            if list.key.trim().is_empty() {
                return Err(Error::config("source.prefix_list.key", "must not be empty"));
            }
            if let Some(b) = &list.bucket {
                check_bucket("source.prefix_list.bucket", b, true)?;
            }
        }
        if s.anonymous && s.credentials_secret_arn.is_some() {
            return Err(Error::config(
                "source.anonymous",
                "cannot be combined with source.credentials_secret_arn",
            ));
        }
        if let Some(arn) = &s.credentials_secret_arn {
            check_nonempty("source.credentials_secret_arn", arn)?;
        }
        if let Some(e) = &s.endpoint {
            check_endpoint("source.endpoint", e)?;
        }
        match s.kind {
            SourceType::S3Compatible if s.endpoint.is_none() => {
                return Err(Error::config("source.endpoint", "is required when source.type is S3_Compatible"))
            }
            SourceType::AliyunOss | SourceType::TencentCos | SourceType::QiniuKodo
                if s.endpoint.is_none() && s.region.as_deref().unwrap_or("").is_empty() =>
            {
                return Err(Error::config(
                    "source.region",
                    "is required to derive the endpoint of this source.type (or give source.endpoint)",
                ))
            }
            _ => {}
        }
        if let Some(r) = &s.region {
            check_region("source.region", r)?;
        }

        let d = &self.destination;
        check_bucket("destination.bucket", &d.bucket, true)?;
        check_prefix("destination.prefix", &d.prefix)?;
        if let Some(e) = &d.endpoint {
            check_endpoint("destination.endpoint", e)?;
        }
        if let Some(r) = &d.region {
            check_region("destination.region", r)?;
        }
        const CLASSES: &[&str] = &[
            "STANDARD",
            "STANDARD_IA",
            "ONEZONE_IA",
            "INTELLIGENT_TIERING",
            "GLACIER",
            "GLACIER_IR",
            "DEEP_ARCHIVE",
            "REDUCED_REDUNDANCY",
        ];
        if !CLASSES.contains(&d.storage_class.as_str()) {
            return Err(Error::config(
                "destination.storage_class",
                format!("{:?} is not one of {}", d.storage_class, CLASSES.join(", ")),
            ));
        }
        const ACLS: &[&str] = &[
            "",
            "private",
            "public-read",
            "public-read-write",
            "authenticated-read",
            "aws-exec-read",
            "bucket-owner-read",
            "bucket-owner-full-control",
        ];
        if !ACLS.contains(&d.acl.as_str()) {
            return Err(Error::config(
                "destination.acl",
                format!("{:?} is not a canned ACL ({})", d.acl, ACLS[1..].join(", ")),
            ));
        }
        if d.kms_key_id.is_some() && d.sse != Sse::Kms {
            return Err(Error::config(
                "destination.kms_key_id",
                "is only valid with destination.sse = \"aws:kms\"",
            ));
        }
        if s.bucket == d.bucket
            && s.endpoint == d.endpoint
            && key_ranges_overlap(&s.prefix, &d.prefix)
            && s.prefix_list.is_none()
        {
            return Err(Error::config(
                "destination.prefix",
                "the destination overlaps the source (same bucket and endpoint, nested prefixes): the copy would \
                 copy itself",
            ));
        }

        for (i, g) in self.filters.include.iter().enumerate() {
            check_glob(&format!("filters.include[{i}]"), g)?;
        }
        for (i, g) in self.filters.exclude.iter().enumerate() {
            check_glob(&format!("filters.exclude[{i}]"), g)?;
        }

        if self.finder.parallelism == 0 || self.finder.parallelism > 256 {
            return Err(Error::config(
                "finder.parallelism",
                "must be between 1 and 256",
            ));
        }
        if self.finder.depth > 16 {
            return Err(Error::config("finder.depth", "must be between 0 and 16"));
        }

        let m = &self.multipart;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&m.chunk_size) {
            return Err(Error::config(
                "multipart.chunk_size",
                "must be between 5 MiB and 5 GiB (S3's part limits)",
            ));
        }
        if m.threshold < MIN_PART_SIZE {
            return Err(Error::config(
                "multipart.threshold",
                "must be at least 5 MiB",
            ));
        }
        if m.threshold > MAX_PART_SIZE {
            return Err(Error::config(
                "multipart.threshold",
                "must be at most 5 GiB (S3's single PUT limit)",
            ));
        }
        if m.giant_threshold < m.threshold {
            return Err(Error::config(
                "multipart.giant_threshold",
                "must not be below multipart.threshold",
            ));
        }

        if self.batch.max_objects == 0 || self.batch.max_objects > 1000 {
            return Err(Error::config(
                "batch.max_objects",
                "must be between 1 and 1000",
            ));
        }
        if self.batch.max_bytes == 0 {
            return Err(Error::config("batch.max_bytes", "must be greater than 0"));
        }

        check_shared(
            &self.worker,
            self.max_attempts,
            &self.queue,
            &self.ledger,
            &self.aws,
        )?;
        self.metrics
            .as_ref()
            .map_or(Ok(()), MetricsConfig::validate)
    }

    /// The destination key for a source key: DTH's rule, `<destination prefix>/<source key>`.
    pub fn destination_key(&self, source_key: &str) -> String {
        join_prefix(&self.destination.prefix, source_key)
    }

    /// Part size for an object of `size` bytes with no layout to preserve.
    pub fn part_size_for(&self, size: u64) -> u64 {
        part_size(self.multipart.chunk_size, size)
    }
}

/// A job config of either kind: objects ([`JobConfig`]) or images ([`ImageJobConfig`], which says
/// `"transfer": "images"`). What the binaries load, and what the provider writes into user data.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum TransferConfig {
    Objects(JobConfig),
    Images(ImageJobConfig),
}

impl From<JobConfig> for TransferConfig {
    fn from(c: JobConfig) -> Self {
        TransferConfig::Objects(c)
    }
}

impl From<ImageJobConfig> for TransferConfig {
    fn from(c: ImageJobConfig) -> Self {
        TransferConfig::Images(c)
    }
}

impl TransferConfig {
    /// Parse JSON of either kind and validate it.
    pub fn from_json(text: &str) -> Result<Self> {
        let marker: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::config("config", format!("not JSON: {e}")))?;
        if marker.get("transfer").is_some() {
            let cfg: ImageJobConfig = decode(text)?;
            cfg.validate()?;
            Ok(TransferConfig::Images(cfg))
        } else {
            JobConfig::from_json(text).map(TransferConfig::Objects)
        }
    }

    /// Load from a file or an inline JSON string (the `DTH_CONFIG` environment variable on instances).
    pub fn load(path: Option<&std::path::Path>, inline: Option<&str>) -> Result<Self> {
        match (path, inline) {
            (Some(p), _) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Error::config("--config", format!("reading {}: {e}", p.display()))
                })?;
                Self::from_json(&text)
            }
            (None, Some(text)) => Self::from_json(text),
            (None, None) => Err(Error::config(
                "--config",
                "give a config file (--config FILE) or DTH_CONFIG",
            )),
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            TransferConfig::Objects(c) => c.validate(),
            TransferConfig::Images(c) => c.validate(),
        }
    }

    pub fn worker(&self) -> &WorkerOptions {
        match self {
            TransferConfig::Objects(c) => &c.worker,
            TransferConfig::Images(c) => &c.worker,
        }
    }

    pub fn worker_mut(&mut self) -> &mut WorkerOptions {
        match self {
            TransferConfig::Objects(c) => &mut c.worker,
            TransferConfig::Images(c) => &mut c.worker,
        }
    }

    pub fn queue(&self) -> &QueueConfig {
        match self {
            TransferConfig::Objects(c) => &c.queue,
            TransferConfig::Images(c) => &c.queue,
        }
    }

    pub fn ledger(&self) -> &LedgerConfig {
        match self {
            TransferConfig::Objects(c) => &c.ledger,
            TransferConfig::Images(c) => &c.ledger,
        }
    }

    pub fn aws(&self) -> &AwsConfig {
        match self {
            TransferConfig::Objects(c) => &c.aws,
            TransferConfig::Images(c) => &c.aws,
        }
    }

    pub fn metrics(&self) -> Option<&MetricsConfig> {
        match self {
            TransferConfig::Objects(c) => c.metrics.as_ref(),
            TransferConfig::Images(c) => c.metrics.as_ref(),
        }
    }

    pub fn max_attempts(&self) -> u32 {
        match self {
            TransferConfig::Objects(c) => c.max_attempts,
            TransferConfig::Images(c) => c.max_attempts,
        }
    }
}

/// JSON into a config struct; an unknown or mistyped field is reported with its path.
fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        Error::config(
            if path.is_empty() || path == "." {
                "config"
            } else {
                &path
            },
            e.into_inner(),
        )
    })
}

/// The checks of what every transfer's config shares (object or image): the workers' settings, the queue, the
/// ledger and the control plane.
pub(crate) fn check_shared(
    w: &WorkerOptions,
    max_attempts: u32,
    queue: &QueueConfig,
    ledger: &LedgerConfig,
    aws: &AwsConfig,
) -> Result<()> {
    if w.concurrency == 0 || w.concurrency > 1024 {
        return Err(Error::config(
            "worker.concurrency",
            "must be between 1 and 1024",
        ));
    }
    if w.part_concurrency == 0 || w.part_concurrency > 256 {
        return Err(Error::config(
            "worker.part_concurrency",
            "must be between 1 and 256",
        ));
    }
    if w.heartbeat_secs == 0 {
        return Err(Error::config(
            "worker.heartbeat_secs",
            "must be greater than 0",
        ));
    }
    if w.visibility_secs <= w.heartbeat_secs || w.visibility_secs > 43_200 {
        return Err(Error::config(
            "worker.visibility_secs",
            "must be greater than worker.heartbeat_secs and at most 43200 (12 hours, SQS's limit)",
        ));
    }
    if w.shutdown_grace_secs > MAX_SHUTDOWN_GRACE_SECS {
        return Err(Error::config(
            "worker.shutdown_grace_secs",
            format!("must be at most {MAX_SHUTDOWN_GRACE_SECS} (a day)"),
        ));
    }
    if w.ledger_retention_days > MAX_RETENTION_DAYS {
        return Err(Error::config(
            "worker.ledger_retention_days",
            format!(
                "{} is more than {MAX_RETENTION_DAYS} days (ten years); give days, or 0 to keep ledger rows forever",
                w.ledger_retention_days
            ),
        ));
    }
    if max_attempts == 0 || max_attempts > 1000 {
        return Err(Error::config("max_attempts", "must be between 1 and 1000"));
    }

    check_nonempty("queue.url", &queue.url)?;
    if !queue.url.starts_with("http://") && !queue.url.starts_with("https://") {
        return Err(Error::config(
            "queue.url",
            "must be an SQS queue URL (http:// or https://)",
        ));
    }
    let t = &ledger.table;
    if t.len() < 3
        || t.len() > 255
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(Error::config(
            "ledger.table",
            "must be 3-255 characters of [A-Za-z0-9_.-]",
        ));
    }
    if let Some(r) = &aws.region {
        check_region("aws.region", r)?;
    }
    if aws
        .io_timeout_secs
        .is_some_and(|t| !(1..=3600).contains(&t))
    {
        return Err(Error::config(
            "aws.io_timeout_secs",
            "must be between 1 and 3600",
        ));
    }
    let e = &aws.endpoints;
    for (name, v) in [
        ("aws.endpoints.s3", &e.s3),
        ("aws.endpoints.sqs", &e.sqs),
        ("aws.endpoints.dynamodb", &e.dynamodb),
        ("aws.endpoints.secretsmanager", &e.secretsmanager),
        ("aws.endpoints.autoscaling", &e.autoscaling),
        ("aws.endpoints.ecr", &e.ecr),
        ("aws.endpoints.cloudwatch", &e.cloudwatch),
    ] {
        if let Some(v) = v {
            check_endpoint(name, v)?;
        }
    }
    Ok(())
}

/// max(chunk, ceil(size / 10,000)): never more than S3's 10,000 parts.
pub fn part_size(chunk: u64, size: u64) -> u64 {
    chunk.max(size.div_ceil(MAX_PARTS))
}

/// Prefix joined to a key, adding a `/` unless the prefix already ends with one.
pub fn join_prefix(prefix: &str, key: &str) -> String {
    if prefix.is_empty() || prefix == "/" {
        key.to_owned()
    } else if prefix.ends_with('/') {
        format!("{prefix}{key}")
    } else {
        format!("{prefix}/{key}")
    }
}

fn key_ranges_overlap(src_prefix: &str, dst_prefix: &str) -> bool {
    // Destination keys are `dst_prefix/<source key>`: every one of them is also under the source prefix
    // when the destination prefix lies under the source prefix.
    let dst_keys = join_prefix(dst_prefix, "");
    dst_keys.starts_with(src_prefix)
}

pub(crate) fn check_nonempty(field: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() {
        return Err(Error::config(field, "must not be empty"));
    }
    Ok(())
}

fn check_bucket(field: &str, b: &str, aws_rules: bool) -> Result<()> {
    check_nonempty(field, b)?;
    if aws_rules {
        if !(3..=63).contains(&b.len()) {
            return Err(Error::config(
                field,
                format!("{b:?} must be 3 to 63 characters"),
            ));
        }
        if !b
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(Error::config(
                field,
                format!("{b:?} may contain only lowercase letters, digits, '-' and '.'"),
            ));
        }
        let first = b.as_bytes()[0];
        let last = b.as_bytes()[b.len() - 1];
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return Err(Error::config(
                field,
                format!("{b:?} must begin and end with a letter or digit"),
            ));
        }
    } else if b.len() > 255 || b.contains('/') {
        return Err(Error::config(field, format!("{b:?} is not a bucket name")));
    }
    Ok(())
}

pub(crate) fn check_prefix(field: &str, p: &str) -> Result<()> {
    if p.len() > 1024 {
        return Err(Error::config(field, "must be at most 1024 bytes"));
    }
    if p.starts_with('/') && p != "/" {
        return Err(Error::config(
            field,
            "must not start with '/' (S3 keys have no leading slash)",
        ));
    }
    Ok(())
}

pub(crate) fn check_endpoint(field: &str, e: &str) -> Result<()> {
    let rest = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(()),
        _ => Err(Error::config(
            field,
            format!("{e:?} must be a URL starting with http:// or https://"),
        )),
    }
}

pub(crate) fn check_region(field: &str, r: &str) -> Result<()> {
    if r.is_empty()
        || !r
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(Error::config(
            field,
            format!("{r:?} is not a region name (like us-east-1 or cn-north-1)"),
        ));
    }
    Ok(())
}

fn check_glob(field: &str, g: &str) -> Result<()> {
    globset::GlobBuilder::new(g)
        .literal_separator(true)
        .build()
        .map(|_| ())
        .map_err(|e| Error::config(field, format!("invalid glob {g:?}: {}", e.kind())))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> JobConfig {
        JobConfig::from_json(
            r#"{
            "source": {"bucket": "src-bucket", "endpoint": "http://127.0.0.1:1", "path_style": true},
            "destination": {"bucket": "dst-bucket", "endpoint": "http://127.0.0.1:1", "path_style": true},
            "queue": {"url": "http://127.0.0.1:1/123456789012/jobs"},
            "ledger": {"table": "ledger"}
        }"#,
        )
        .unwrap()
    }

    fn with(patch: serde_json::Value) -> Result<JobConfig> {
        let mut v = serde_json::to_value(sample()).unwrap();
        merge(&mut v, patch);
        JobConfig::from_json(&v.to_string())
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn defaults_follow_dth() {
        let c = sample();
        assert_eq!(c.destination.storage_class, "INTELLIGENT_TIERING");
        assert_eq!(c.destination.acl, "bucket-owner-full-control");
        assert_eq!(c.multipart.threshold, 10 * MIB);
        assert_eq!(c.multipart.chunk_size, 5 * MIB);
        assert_eq!(c.max_attempts, 5);
        assert!(c.include_metadata);
        assert_eq!(c.worker.ledger_retention_days, 30);
    }

    #[test]
    fn ledger_retention_is_written_only_when_it_is_not_the_default() {
        let c = sample();
        let v = serde_json::to_value(&c).unwrap();
        assert!(v["worker"].get("ledger_retention_days").is_none(), "{v}");
        assert_eq!(JobConfig::from_json(&v.to_string()).unwrap(), c);
        for days in [0, 7, MAX_RETENTION_DAYS] {
            let c = with(serde_json::json!({"worker": {"ledger_retention_days": days}})).unwrap();
            assert_eq!(c.worker.ledger_retention_days, days);
            let v = serde_json::to_value(&c).unwrap();
            assert_eq!(v["worker"]["ledger_retention_days"], days);
            assert_eq!(JobConfig::from_json(&v.to_string()).unwrap(), c);
        }
    }

    #[test]
    fn every_bad_value_names_its_field() {
        use serde_json::json;
        let cases = [
            (json!({"source": {"bucket": ""}}), "source.bucket"),
            (
                json!({"destination": {"bucket": "Bad_Bucket"}}),
                "destination.bucket",
            ),
            (
                json!({"destination": {"bucket": "ab"}}),
                "destination.bucket",
            ),
            (
                json!({"destination": {"storage_class": "COLD"}}),
                "destination.storage_class",
            ),
            (
                json!({"destination": {"acl": "everyone"}}),
                "destination.acl",
            ),
            (
                json!({"destination": {"kms_key_id": "k"}}),
                "destination.kms_key_id",
            ),
            (json!({"destination": {"sse": "rot13"}}), "destination.sse"),
            (json!({"compare": "mtime"}), "compare"),
            (json!({"source": {"type": "Dropbox"}}), "source.type"),
            (
                json!({"source": {"type": "S3_Compatible", "endpoint": null}}),
                "source.endpoint",
            ),
            (
                json!({"source": {"type": "Aliyun_OSS", "endpoint": null}}),
                "source.region",
            ),
            (
                json!({"source": {"endpoint": "ftp://x"}}),
                "source.endpoint",
            ),
            (
                json!({"source": {"anonymous": true, "credentials_secret_arn": "arn:x"}}),
                "source.anonymous",
            ),
            (
                json!({"multipart": {"chunk_size": 1024}}),
                "multipart.chunk_size",
            ),
            (
                json!({"multipart": {"threshold": 6291456, "giant_threshold": 5242880}}),
                "multipart.giant_threshold",
            ),
            (json!({"worker": {"concurrency": 0}}), "worker.concurrency"),
            (json!({"worker": {"concurrency": -1}}), "worker.concurrency"),
            (
                json!({"worker": {"visibility_secs": 10, "heartbeat_secs": 30}}),
                "worker.visibility_secs",
            ),
            (
                json!({"filters": {"include": ["a[b"]}}),
                "filters.include[0]",
            ),
            (json!({"queue": {"url": "jobs"}}), "queue.url"),
            (json!({"ledger": {"table": "a b"}}), "ledger.table"),
            (json!({"max_attempts": 0}), "max_attempts"),
            (
                json!({"worker": {"ledger_retention_days": 2_592_000}}),
                "worker.ledger_retention_days",
            ),
            (
                json!({"worker": {"ledger_retention_days": -1}}),
                "worker.ledger_retention_days",
            ),
            (json!({"batch": {"max_objects": 0}}), "batch.max_objects"),
            (json!({"finder": {"parallelism": 0}}), "finder.parallelism"),
            (json!({"source": {"colour": "red"}}), "source"),
            (
                json!({"destination": {"bucket": "src-bucket", "endpoint": "http://127.0.0.1:1"}}),
                "destination.prefix",
            ),
        ];
        for (patch, field) in cases {
            let err = with(patch.clone()).expect_err(&format!("{patch} should be rejected"));
            assert_eq!(err.kind(), crate::ErrorKind::Config);
            assert!(
                err.to_string().starts_with(field),
                "{patch}: {err} should name {field}"
            );
        }
    }

    #[test]
    fn part_size_never_exceeds_ten_thousand_parts() {
        assert_eq!(part_size(5 * MIB, 0), 5 * MIB);
        assert_eq!(part_size(5 * MIB, 100 * MIB), 5 * MIB);
        let size = 5 * 1024 * GIB; // 5 TiB, S3's largest object
        let p = part_size(5 * MIB, size);
        assert!(size.div_ceil(p) <= MAX_PARTS);
        assert_eq!(p, size.div_ceil(10_000));
    }

    #[test]
    fn destination_keys_follow_dth() {
        let mut c = sample();
        assert_eq!(c.destination_key("a/b"), "a/b");
        c.destination.prefix = "backup".into();
        assert_eq!(c.destination_key("a/b"), "backup/a/b");
        c.destination.prefix = "backup/".into();
        assert_eq!(c.destination_key("a/b"), "backup/a/b");
    }
}

/// Issue 12's fuzzing of job configs, object and image: no input panics in parsing or validation, and a
/// refusal starts with the path of a field (`source.bucket: ...`).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{apply, config, json, mutation, Mutation, STRAY};

    fn objects() -> serde_json::Value {
        let mut v = serde_json::to_value(tests::sample()).unwrap();
        v["source"]["prefix_list"] =
            serde_json::json!({"bucket": "list-bucket", "key": "prefixes.txt"});
        v["filters"] = serde_json::json!({"include": ["**/*.csv"], "exclude": ["tmp/**"]});
        v
    }

    fn images() -> serde_json::Value {
        serde_json::json!({
            "transfer": "images",
            "source": {"type": "registry", "registry": "http://127.0.0.1:5000", "images": ["app:1.0", "base:ALL_TAGS"]},
            "destination": {"prefix": "mirror"},
            "queue": {"url": "http://127.0.0.1:1/123456789012/jobs"},
            "ledger": {"table": "ledger"}
        })
    }

    /// Every leaf and object of a document, as `/`-paths (array elements included).
    fn paths(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    let p = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}/{k}")
                    };
                    out.push(p.clone());
                    paths(child, &p, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    paths(child, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    /// The field a refusal names: the text before its first `: `, a dotted path with `[i]` indices.
    fn named_field(e: &Error) -> String {
        let text = e.to_string();
        text.split(": ").next().unwrap_or_default().to_owned()
    }

    /// Whether `field` is a path of the document (or of the valid one it was made from), a stray field, or
    /// the document itself.
    fn is_a_field(field: &str, docs: &[&serde_json::Value]) -> bool {
        let pointer = format!(
            "/{}",
            field.replace("[", ".").replace("]", "").replace('.', "/")
        );
        field == "config"
            || field.ends_with(STRAY)
            || docs.iter().any(|d| d.pointer(&pointer).is_some())
            // Optional fields left out of the sample: a top-level section's own field.
            || field.split('.').count() >= 2
                && field
                    .split('.')
                    .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit() || "[]".contains(c)))
    }

    fn mutated(
        base: serde_json::Value,
        picks: &[(prop::sample::Index, Mutation)],
    ) -> serde_json::Value {
        let mut all = vec![];
        paths(&base, "", &mut all);
        let mut v = base;
        for (pick, m) in picks {
            let path = pick.get(&all).clone();
            match path.rsplit_once('/') {
                Some((parent, name)) => {
                    if let Some(p) = v.pointer_mut(&format!("/{parent}")) {
                        apply(p, name, m);
                    }
                }
                None => {
                    apply(&mut v, &path, m);
                }
            }
        }
        v
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn any_json_is_a_config_or_a_refusal_naming_a_field(v in json()) {
            if let Err(e) = TransferConfig::from_json(&v.to_string()) {
                prop_assert_eq!(e.kind(), crate::ErrorKind::Config);
                prop_assert!(!named_field(&e).is_empty());
            }
        }

        #[test]
        fn any_text_is_a_config_or_a_refusal(text in any::<String>()) {
            let _ = TransferConfig::from_json(&text);
        }

        #[test]
        fn a_mutated_config_is_valid_or_refused_naming_a_field(
            image in any::<bool>(),
            picks in prop::collection::vec((any::<prop::sample::Index>(), mutation()), 1..4),
        ) {
            let base = if image { images() } else { objects() };
            let v = mutated(base.clone(), &picks);
            match TransferConfig::from_json(&v.to_string()) {
                Ok(c) => {
                    // What validation let through survives a round trip and validates again.
                    let again = TransferConfig::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
                    prop_assert_eq!(again, c);
                }
                Err(e) => {
                    let field = named_field(&e);
                    let text = e.to_string();
                    // serde names an unknown or missing field itself (a key may hold any character).
                    let by_serde = text.contains("unknown field `") || text.contains("missing field `");
                    prop_assert!(by_serde || is_a_field(&field, &[&v, &base]), "{e} names no field");
                }
            }
        }
    }
}

/// Defects the fuzzing of job configs found; each test failed before its fix.
#[cfg(test)]
mod regressions {
    use super::*;

    /// An unbounded grace overflowed `grace + margin` when the user data was rendered from the config.
    #[test]
    fn a_shutdown_grace_beyond_a_day_is_refused() {
        let mut c = tests::sample();
        c.worker.shutdown_grace_secs = u64::MAX;
        let e = c.validate().unwrap_err();
        assert!(
            e.to_string().starts_with("worker.shutdown_grace_secs: "),
            "{e}"
        );
        c.worker.shutdown_grace_secs = MAX_SHUTDOWN_GRACE_SECS;
        c.validate().unwrap();
    }
}
