//! [`TransferSpec`]: what a user writes in one `dth_s3_transfer`, with the Data Transfer Hub S3 plugin's defaults.
//!
//! **One model.** Every job setting is declared once, in core's [`JobConfig`] and its parts: the spec embeds
//! them rather than copying their fields. [`Source`] is core's [`SourceConfig`] (flattened) beside the two source
//! settings only the provider has (`events`, which core keeps at the top level, and `kms_key_id`, for the role's
//! policy); the destination is core's [`DestinationConfig`]; `filters`, `multipart`, `batch` and `worker` are
//! core's structs; [`Finder`] is core's [`FinderOptions`] (flattened) beside `instance_type`; the top-level
//! settings take core's types and defaults. The rest of the spec shapes the AWS resources around the instances
//! (fleet, schedule, alarms, logs, tags).
//!
//! [`TransferSpec::job_config`] then only fills in what the provider owns ([`PROVIDER_OWNED`]: the queue and ledger
//! it creates, the account it runs in) and derives ([`NOT_SETTABLE`]: path-style addressing and default endpoints
//! from the provider's configuration), and [`TransferSpec::apply_job_config`], its inverse, copies core's structs
//! back whole. Where a job setting's attribute is not at its job-config path, [`ATTRIBUTE_OF`] says where.
//!
//! Validation reuses [`JobConfig::validate`] so that a value the binaries would reject is rejected at plan time,
//! under the attribute path the user wrote.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

use dth_core::config::TransferConfig;
use dth_core::config::{
    default_include_metadata, default_max_attempts, AwsConfig, BatchOptions, CompareMode,
    DestinationConfig, Endpoints, EventsMode, Filters, FinderOptions, LedgerConfig,
    MultipartOptions, QueueConfig, SourceConfig, SourceType, WorkerOptions,
};
use dth_core::JobConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::infra::Infra;
use crate::aws::{tag_problem, ProviderConfig};

pub use dth_core::names::MAX_NAME_LEN;
/// Characters a create appends to `name_prefix`.
pub const NAME_SUFFIX_LEN: usize = 8;

/// A new name from `prefix`: the prefix and [`NAME_SUFFIX_LEN`] random lowercase hex digits.
pub fn generated_name(prefix: &str) -> String {
    let random = super::infra::new_creation_id();
    format!("{prefix}{}", &random[..NAME_SUFFIX_LEN])
}

/// What is wrong with a `name_prefix`, if anything: a name's characters, room for the suffix, and a first
/// character a name may start with (the prefix may end with `-`).
pub fn name_prefix_problem(prefix: &str) -> Option<String> {
    let max = MAX_NAME_LEN - NAME_SUFFIX_LEN;
    if prefix.is_empty() || prefix.len() > max {
        return Some(format!(
            "must be 1 to {max} characters ({NAME_SUFFIX_LEN} random ones follow it)"
        ));
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some(format!(
            "{prefix:?} may contain only lowercase letters, digits and '-'"
        ));
    }
    if prefix.starts_with('-') {
        return Some(format!("{prefix:?} must begin with a letter or digit"));
    }
    None
}

/// Job-config fields the provider fills in and the user never sets: the control plane it creates (`queue`,
/// `ledger`) and the account and endpoints it runs in (`aws`).
pub const PROVIDER_OWNED: [&str; 4] = ["queue", "ledger", "aws", "metrics"];

/// Job-config fields the spec's embedded structs carry but the resource does not offer; the spec holds core's
/// default there, and [`TransferSpec::job_config`] decides what the instances get.
/// - `source.path_style`, `destination.path_style`: derived, like the default endpoints, from the provider's
///   `s3_use_path_style` (and always on for an `S3_Compatible` source, as most self-hosted servers need it).
/// - `finder.dry_run_keys`: only shapes the output of `finder --dry-run`, a command-line check; the instances
///   never run a dry run.
pub const NOT_SETTABLE: [&str; 3] = [
    "source.path_style",
    "destination.path_style",
    "finder.dry_run_keys",
];

/// Job settings whose attribute is not at their job-config path: (job-config path, attribute path). `events` is
/// about the source bucket; a worker's concurrency is sized with the fleet's instance type.
pub const ATTRIBUTE_OF: [(&str, &str); 2] = [
    ("events", "source.events"),
    ("worker.concurrency", "fleet.worker_concurrency"),
];

/// What one kind of transfer moves, and what the provisioning of the two kinds does differently: objects
/// ([`Objects`], `dth_s3_transfer`) or container images ([`super::images::Images`], `dth_ecr_transfer`). Everything
/// else — queues, ledger, role, launch templates, groups, schedule, alarms, dashboard, logs — is provisioned the
/// same way for both from the rest of [`TransferSpec`].
pub trait Payload:
    Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The finder's job settings (core's options struct), beside its instance type in [`Finder`].
    type FinderOptions: Clone
        + PartialEq
        + fmt::Debug
        + Default
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// The resource type, for messages: `dth_s3_transfer`.
    const RESOURCE: &'static str;
    /// What a job moves, plural: `objects` or `images` (progress attributes, messages).
    const UNIT: &'static str;

    /// The job config the instances run.
    fn job_config(spec: &TransferSpec<Self>, infra: &Infra, cfg: &ProviderConfig)
        -> TransferConfig;
    /// Overwrite the spec's job settings with a job config's (launch templates read back, import, drift): the
    /// inverse of [`Payload::job_config`]. False when the config is another kind of transfer's.
    fn apply_job_config(
        spec: &mut TransferSpec<Self>,
        jc: &TransferConfig,
        cfg: &ProviderConfig,
    ) -> bool;
    /// A spec of defaults for a transfer named `name` (what an import starts from).
    fn default_spec(name: &str, image: &str) -> TransferSpec<Self>;
    /// The checks only this kind has, as (attribute path, message).
    fn validate(spec: &TransferSpec<Self>, bad: &mut dyn FnMut(&str, String));
    /// Attributes whose change replaces the transfer.
    fn requires_replace(old: &Self, new: &Self) -> Vec<&'static str>;
    /// The instance role's statements for the data the instances read and write (the rest of the policy is
    /// the same for every kind; see [`super::policy::access_policy`]).
    fn data_statements(
        spec: &TransferSpec<Self>,
        at: &super::policy::Account,
    ) -> Vec<serde_json::Value>;
    /// The source bucket whose S3 event notifications feed the job queue, if any.
    fn notifications(&self) -> Option<&Source> {
        None
    }
    /// The same, to write what a refresh finds.
    fn notifications_mut(&mut self) -> Option<&mut Source> {
        None
    }
    /// The destination whose multipart uploads the transfer records (and destroy aborts), if any.
    fn uploads_destination(&self) -> Option<&Destination> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound(serialize = "", deserialize = ""))]
pub struct TransferSpec<P: Payload = Objects> {
    /// Names every AWS resource of the transfer: `dth-<name>-<part>`.
    pub name: String,
    /// When set, `name` is this prefix and [`NAME_SUFFIX_LEN`] random characters, chosen at create (like the
    /// AWS provider's `name_prefix`): every create gets names of its own, so that `create_before_destroy` can
    /// make the new transfer while the old one still exists.
    #[serde(default)]
    pub name_prefix: Option<String>,
    /// What moves: reached through `Deref` (`spec.source.bucket` for objects).
    #[serde(flatten)]
    pub payload: P,
    /// A cron expression (5 fields, UTC) for the finder's Auto Scaling scheduled action, or "once".
    #[serde(default = "once")]
    pub schedule: String,
    #[serde(default)]
    pub finder: Finder<P::FinderOptions>,
    #[serde(default)]
    pub fleet: Fleet,
    /// Every worker's settings; `concurrency` is offered as `fleet.worker_concurrency` ([`ATTRIBUTE_OF`]).
    #[serde(default)]
    pub worker: WorkerOptions,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub alarm_email: Option<String>,
    /// Days the transfer's CloudWatch Logs group keeps the instances' logs; 0 keeps them forever.
    #[serde(default = "default_log_retention_days")]
    pub log_retention_days: u32,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl<P: Payload> Deref for TransferSpec<P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.payload
    }
}

impl<P: Payload> DerefMut for TransferSpec<P> {
    fn deref_mut(&mut self) -> &mut P {
        &mut self.payload
    }
}

/// An object transfer's payload (`dth_s3_transfer`): the S3 side of the job settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objects {
    pub source: Source,
    pub destination: Destination,
    #[serde(default)]
    pub compare: CompareMode,
    #[serde(default)]
    pub skip_compare: bool,
    #[serde(default = "default_include_metadata")]
    pub include_metadata: bool,
    #[serde(default)]
    pub filters: Filters,
    #[serde(default)]
    pub multipart: MultipartOptions,
    #[serde(default)]
    pub batch: BatchOptions,
}

/// The source: core's [`SourceConfig`] (reached through `Deref`: `spec.source.bucket`) and what only the provider
/// does with the source bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// What the instances read; its `path_style` is not the user's ([`NOT_SETTABLE`]).
    #[serde(flatten)]
    pub config: SourceConfig,
    /// S3 event notifications from the source bucket to the job queue (the job config's top-level `events`).
    #[serde(default)]
    pub events: EventsMode,
    /// The KMS key the source's objects are encrypted with (SSE-KMS): a key ARN, key id or alias, for the instance
    /// role's `kms:Decrypt`. Only the role's policy needs it; the job config does not carry it.
    #[serde(default)]
    pub kms_key_id: Option<String>,
}

impl Deref for Source {
    type Target = SourceConfig;
    fn deref(&self) -> &SourceConfig {
        &self.config
    }
}

impl DerefMut for Source {
    fn deref_mut(&mut self) -> &mut SourceConfig {
        &mut self.config
    }
}

/// The destination is core's own; its `path_style` is not the user's ([`NOT_SETTABLE`]).
pub type Destination = DestinationConfig;

/// The finder: its job settings (core's [`FinderOptions`] for objects, reached through `Deref`:
/// `spec.finder.depth`) and the instance it runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Finder<O = FinderOptions> {
    /// Its `dry_run_keys` is not the user's ([`NOT_SETTABLE`]).
    #[serde(flatten)]
    pub options: O,
    pub instance_type: String,
}

impl<O: Default> Default for Finder<O> {
    fn default() -> Self {
        Finder {
            options: O::default(),
            instance_type: default_instance_type(),
        }
    }
}

impl<O> Deref for Finder<O> {
    type Target = O;
    fn deref(&self) -> &O {
        &self.options
    }
}

impl<O> DerefMut for Finder<O> {
    fn deref_mut(&mut self) -> &mut O {
        &mut self.options
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    #[serde(default = "one")]
    pub min: u32,
    #[serde(default = "one")]
    pub desired: u32,
    #[serde(default = "default_max")]
    pub max: u32,
    /// Empty: the default VPC's default subnets.
    #[serde(default)]
    pub subnet_ids: Vec<String>,
    /// Empty: an egress-only security group created for the transfer.
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// The container image holding the `finder` and `worker` binaries ([`DEFAULT_IMAGE`] unless given).
    #[serde(default = "default_image")]
    pub image: String,
    /// Empty: the newest Amazon Linux 2023 arm64 AMI, resolved at create.
    #[serde(default)]
    pub ami_id: Option<String>,
}

fn once() -> String {
    "once".into()
}
fn one() -> u32 {
    1
}
fn default_max() -> u32 {
    20
}
fn default_log_retention_days() -> u32 {
    super::logs::DEFAULT_RETENTION_DAYS
}
/// The project's image for this provider's version: `public.ecr.aws/dth/dth:<version>`, pinned by digest
/// (`@sha256:…`) in a release build (see build.rs), so that a provider release launches the binaries built
/// with it.
pub const DEFAULT_IMAGE: &str = env!("DTH_DEFAULT_IMAGE");

fn default_image() -> String {
    DEFAULT_IMAGE.into()
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            instance_type: default_instance_type(),
            min: one(),
            desired: one(),
            max: default_max(),
            subnet_ids: Vec::new(),
            security_group_ids: Vec::new(),
            image: default_image(),
            ami_id: None,
        }
    }
}

fn default_instance_type() -> String {
    "t4g.micro".into()
}

/// Stand-ins for what only exists after create, so that [`JobConfig::validate`] can check the rest at plan time.
const PLACEHOLDER_QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/000000000000/placeholder";
const PLACEHOLDER_TABLE: &str = "placeholder";

/// Longest `worker.shutdown_grace_secs`: the drain hook waits for it plus its margins, and AWS caps a lifecycle
/// hook's timeout.
pub fn max_shutdown_grace_secs() -> u64 {
    super::fleet::MAX_DRAIN_TIMEOUT_SECS - super::fleet::DRAIN_MARGIN_SECS
}

impl<P: Payload> TransferSpec<P> {
    /// Every problem, as (attribute path, message); empty when the spec can be provisioned.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut bad = |path: &str, msg: String| out.push((path.to_owned(), msg));
        self.validate_shared(&mut bad);
        P::validate(self, &mut bad);

        // The engine's own rules; it stops at its first complaint, reported under the spec's attribute path.
        let placeholder = Infra {
            queue_url: PLACEHOLDER_QUEUE.into(),
            table: PLACEHOLDER_TABLE.into(),
            ..Infra::default()
        };
        if let Err(e) = P::job_config(self, &placeholder, &ProviderConfig::default()).validate() {
            let text = e.to_string();
            let (field, msg) = text.split_once(": ").unwrap_or(("", text.as_str()));
            let path = spec_path(field);
            if !out.iter().any(|(p, _)| p == &path) {
                out.push((path, msg.to_owned()));
            }
        }
        out
    }

    /// The job config the finder and worker instances run (it goes into the launch templates' user data).
    pub fn transfer_config(&self, infra: &Infra, cfg: &ProviderConfig) -> TransferConfig {
        P::job_config(self, infra, cfg)
    }

    /// What the instances' job config says, read back into the spec (see [`Payload::apply_job_config`]).
    pub fn apply_transfer_config(&mut self, jc: &TransferConfig, cfg: &ProviderConfig) -> bool {
        P::apply_job_config(self, jc, cfg)
    }

    /// The worker's settings the job config carries, shared by every kind (the inverse of what
    /// [`Payload::job_config`] puts there from the spec's shared fields).
    pub fn apply_shared(&mut self, worker: &WorkerOptions, max_attempts: u32) {
        self.worker = worker.clone();
        self.max_attempts = max_attempts;
    }

    /// The checks of what every kind of transfer has: names, fleet, schedule, alarms, logs, tags, workers.
    fn validate_shared(&self, bad: &mut dyn FnMut(&str, String)) {
        if let Some(m) = name_problem(&self.name) {
            bad("name", m);
        }
        if let Some(m) = self.name_prefix.as_deref().and_then(name_prefix_problem) {
            bad("name_prefix", m);
        }
        let f = &self.fleet;
        if f.max == 0 || f.max > 1000 {
            bad("fleet.max", "must be between 1 and 1000".into());
        }
        if f.min > f.max {
            bad(
                "fleet.min",
                format!("{} is above fleet.max ({})", f.min, f.max),
            );
        }
        if f.desired < f.min || f.desired > f.max {
            bad(
                "fleet.desired",
                format!(
                    "{} must be between fleet.min ({}) and fleet.max ({})",
                    f.desired, f.min, f.max
                ),
            );
        }
        if f.image.trim().is_empty() {
            bad(
                "fleet.image",
                "is required: the container image holding the finder and worker binaries".into(),
            );
        } else if f.image.contains(char::is_whitespace) {
            bad(
                "fleet.image",
                format!("{:?} is not an image reference", f.image),
            );
        }
        for (path, t) in [
            ("fleet.instance_type", &f.instance_type),
            ("finder.instance_type", &self.finder.instance_type),
        ] {
            if !is_instance_type(t) {
                bad(
                    path,
                    format!("{t:?} is not an EC2 instance type (like t4g.micro)"),
                );
            }
        }
        if let Some(a) = &f.ami_id {
            if !is_aws_id(a, "ami-") {
                bad("fleet.ami_id", format!("{a:?} is not an AMI id (ami-...)"));
            }
        }
        check_ids(bad, "fleet.subnet_ids", &f.subnet_ids, "subnet-");
        check_ids(
            bad,
            "fleet.security_group_ids",
            &f.security_group_ids,
            "sg-",
        );
        if let Err(m) = Schedule::parse(&self.schedule) {
            bad("schedule", m);
        }
        if let Some(e) = &self.alarm_email {
            if !is_email(e) {
                bad("alarm_email", format!("{e:?} is not an email address"));
            }
        }
        if let Some(m) = super::logs::retention_problem(self.log_retention_days) {
            bad("log_retention_days", m);
        }
        for (k, v) in &self.tags {
            if let Some(m) = tag_problem(k, v) {
                bad(&format!("tags[{k:?}]"), m);
            }
        }
        // The job queue holds a received job for its visibility timeout until the worker's first heartbeat.
        let queue_visibility: u64 = super::queues::VISIBILITY_SECS.parse().unwrap_or(900);
        if self.worker.heartbeat_secs >= queue_visibility {
            bad(
                "worker.heartbeat_secs",
                format!(
                    "must be below {queue_visibility} (the job queue's visibility timeout, which holds a job until \
                     its first heartbeat)"
                ),
            );
        }
        let max_grace = max_shutdown_grace_secs();
        if self.worker.shutdown_grace_secs > max_grace {
            bad(
                "worker.shutdown_grace_secs",
                format!(
                    "must be at most {max_grace}: the workers' drain lifecycle hook waits for it (plus {} s of \
                     margins), and Auto Scaling allows a hook {} s at most",
                    super::fleet::DRAIN_MARGIN_SECS,
                    super::fleet::MAX_DRAIN_TIMEOUT_SECS
                ),
            );
        }
    }
}

impl TransferSpec<Objects> {
    /// A spec with every default (serde's, which are core's for the job settings): copy `source_bucket` to
    /// `destination_bucket` with workers from `image`.
    pub fn new(name: &str, source_bucket: &str, destination_bucket: &str, image: &str) -> Self {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "source": {"bucket": source_bucket},
            "destination": {"bucket": destination_bucket},
            "fleet": {"image": image},
        }))
        .expect("a spec of defaults decodes")
    }

    /// The job config the finder and worker instances run (it goes into the launch templates' user data): the
    /// spec's job settings as they are, and what the provider owns or derives.
    ///
    /// A side of type Amazon_S3 without its own endpoint uses the provider's `endpoints.s3` (with
    /// `s3_use_path_style`); S3_Compatible sources always use path-style addressing, as most self-hosted servers
    /// need it. The control plane (queue, ledger, secrets) is the provider's region and endpoints.
    pub fn job_config(&self, infra: &Infra, cfg: &ProviderConfig) -> JobConfig {
        let (queue, ledger, aws) = control_plane(infra, cfg);
        let s3 = &cfg.endpoints.s3;
        let mut source = self.source.config.clone();
        if source.kind == SourceType::AmazonS3 && source.endpoint.is_none() {
            source.endpoint = s3.clone();
        }
        source.path_style = source.kind == SourceType::S3Compatible
            || (source.kind == SourceType::AmazonS3 && cfg.s3_use_path_style);
        let mut destination = self.destination.clone();
        destination.endpoint = destination.endpoint.or_else(|| s3.clone());
        destination.path_style = cfg.s3_use_path_style;
        JobConfig {
            source,
            destination,
            compare: self.compare,
            skip_compare: self.skip_compare,
            include_metadata: self.include_metadata,
            filters: self.filters.clone(),
            finder: self.finder.options.clone(),
            multipart: self.multipart.clone(),
            batch: self.batch.clone(),
            worker: self.worker.clone(),
            events: self.source.events,
            max_attempts: self.max_attempts,
            queue,
            ledger,
            aws,
            metrics: Some(metrics_of(&self.name)),
        }
    }

    /// Overwrite the job settings with a job config's: the inverse of [`TransferSpec::job_config`] (used to read a
    /// launch template's user data back, for import and drift). What `job_config` derives stays as the spec has
    /// it: path-style addressing, and an endpoint that is the provider's S3 endpoint filled in.
    pub fn apply_job_config(&mut self, jc: &JobConfig, cfg: &ProviderConfig) {
        // Destructured so that a field core adds cannot be forgotten here.
        let JobConfig {
            source,
            destination,
            compare,
            skip_compare,
            include_metadata,
            filters,
            finder,
            multipart,
            batch,
            worker,
            events,
            max_attempts,
            queue: _,
            ledger: _,
            aws: _,
            metrics: _,
        } = jc;
        let before = std::mem::replace(&mut self.source.config, source.clone());
        let s3 = cfg.endpoints.s3.as_deref();
        // An endpoint equal to the provider's S3 endpoint was filled in by job_config, unless the spec we start
        // from (the user's, when reading) says it was written that way.
        let strip = |e: &Option<String>, mine: &Option<String>| match e.as_deref() {
            Some(x) if Some(x) == s3 && mine.as_deref() != Some(x) => None,
            _ => e.clone(),
        };
        if source.kind == SourceType::AmazonS3 {
            self.source.endpoint = strip(&source.endpoint, &before.endpoint);
        }
        self.source.path_style = before.path_style;
        self.source.events = *events;
        let before = std::mem::replace(&mut self.destination, destination.clone());
        self.destination.endpoint = strip(&destination.endpoint, &before.endpoint);
        self.destination.path_style = before.path_style;
        self.compare = *compare;
        self.skip_compare = *skip_compare;
        self.include_metadata = *include_metadata;
        self.filters = filters.clone();
        let before = std::mem::replace(&mut self.finder.options, finder.clone());
        self.finder.dry_run_keys = before.dry_run_keys;
        self.multipart = multipart.clone();
        self.batch = batch.clone();
        self.worker = worker.clone();
        self.max_attempts = *max_attempts;
    }
}

impl Payload for Objects {
    type FinderOptions = FinderOptions;
    const RESOURCE: &'static str = "dth_s3_transfer";
    const UNIT: &'static str = "objects";

    fn job_config(
        spec: &TransferSpec<Self>,
        infra: &Infra,
        cfg: &ProviderConfig,
    ) -> TransferConfig {
        spec.job_config(infra, cfg).into()
    }

    fn apply_job_config(
        spec: &mut TransferSpec<Self>,
        jc: &TransferConfig,
        cfg: &ProviderConfig,
    ) -> bool {
        match jc {
            TransferConfig::Objects(jc) => {
                spec.apply_job_config(jc, cfg);
                true
            }
            TransferConfig::Images(_) => false,
        }
    }

    fn default_spec(name: &str, image: &str) -> TransferSpec<Self> {
        TransferSpec::new(name, "", "", image)
    }

    fn validate(spec: &TransferSpec<Self>, bad: &mut dyn FnMut(&str, String)) {
        if spec.source.events != EventsMode::None && spec.source.kind != SourceType::AmazonS3 {
            bad(
                "source.events",
                "S3 event notifications need source.type = \"Amazon_S3\"".into(),
            );
        }
        if let Some(key) = &spec.source.kms_key_id {
            if key.trim().is_empty() {
                bad("source.kms_key_id", "must not be empty".into());
            } else if spec.source.kind != SourceType::AmazonS3
                || spec.source.credentials_secret_arn.is_some()
                || spec.source.anonymous
            {
                bad(
                    "source.kms_key_id",
                    "is for an Amazon_S3 source read with the instance role (no credentials_secret_arn, not \
                     anonymous): it grants that role kms:Decrypt"
                        .into(),
                );
            }
        }
        if spec
            .source
            .prefix_list
            .as_ref()
            .is_some_and(|l| l.bucket.is_none())
        {
            bad(
                "source.prefix_list.bucket",
                "is required: the finder reads the list from S3 (without a bucket, `key` would be a file on the \
                 instance)"
                    .into(),
            );
        }
        if spec.source.events != EventsMode::None && spec.source.prefix_list.is_some() {
            bad(
                "source.events",
                "cannot be combined with source.prefix_list (notifications filter on one prefix)"
                    .into(),
            );
        }
    }

    /// Its identity (buckets, source type), the regions (a transfer between other regions is another transfer: its
    /// ledger, queue policy and notifications no longer apply) and the events mode (queue policy and bucket
    /// notification are made at create).
    fn requires_replace(old: &Self, new: &Self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if old.source.kind != new.source.kind {
            out.push("source.type");
        }
        if old.source.bucket != new.source.bucket {
            out.push("source.bucket");
        }
        if old.source.region != new.source.region {
            out.push("source.region");
        }
        if old.source.events != new.source.events {
            out.push("source.events");
        }
        if old.destination.bucket != new.destination.bucket {
            out.push("destination.bucket");
        }
        if old.destination.region != new.destination.region {
            out.push("destination.region");
        }
        out
    }

    fn data_statements(
        spec: &TransferSpec<Self>,
        at: &super::policy::Account,
    ) -> Vec<serde_json::Value> {
        super::policy::object_statements(spec, at)
    }

    fn notifications(&self) -> Option<&Source> {
        (self.source.events != EventsMode::None).then_some(&self.source)
    }

    fn notifications_mut(&mut self) -> Option<&mut Source> {
        Some(&mut self.source)
    }

    fn uploads_destination(&self) -> Option<&Destination> {
        Some(&self.destination)
    }
}

/// What the provider owns in every kind of job config ([`PROVIDER_OWNED`]): the queue and ledger it created, and
/// the region and endpoints of the control plane they are in.
pub(crate) fn control_plane(
    infra: &Infra,
    cfg: &ProviderConfig,
) -> (QueueConfig, LedgerConfig, AwsConfig) {
    (
        QueueConfig {
            url: infra.queue_url.clone(),
        },
        LedgerConfig {
            table: infra.table.clone(),
        },
        AwsConfig {
            region: (!infra.region.is_empty())
                .then(|| infra.region.clone())
                .or_else(|| cfg.region.clone()),
            endpoints: control_plane_endpoints(cfg),
            io_timeout_secs: None,
        },
    )
}

/// The control-plane endpoints of the job config, from the provider's.
fn control_plane_endpoints(cfg: &ProviderConfig) -> Endpoints {
    let e = &cfg.endpoints;
    Endpoints {
        s3: e.s3.clone(),
        sqs: e.sqs.clone(),
        dynamodb: e.dynamodb.clone(),
        secretsmanager: e.secretsmanager.clone(),
        autoscaling: e.autoscaling.clone(),
        ecr: e.ecr.clone(),
        cloudwatch: e.cloudwatch.clone(),
    }
}

/// Where the workers of transfer `name` publish their metrics (a provider-owned part of every job config).
pub(crate) fn metrics_of(name: &str) -> dth_core::config::MetricsConfig {
    dth_core::config::MetricsConfig {
        transfer: name.to_owned(),
    }
}

/// Every job setting a user of the binaries has, as its job-config path (`worker.bandwidth_limit`): the fields of
/// core's [`JobConfig`] and its parts as serde names them (whether or not their JSON shows them), less
/// [`PROVIDER_OWNED`] and [`NOT_SETTABLE`]. The resource offers each, at [`spec_path`] of it.
pub fn job_settings() -> Vec<String> {
    use dth_core::config::PrefixList;
    // The structs within the job config, by path.
    let parts: [(&str, &[&str]); 8] = [
        ("source", fields_of::<SourceConfig>()),
        ("source.prefix_list", fields_of::<PrefixList>()),
        ("destination", fields_of::<DestinationConfig>()),
        ("filters", fields_of::<Filters>()),
        ("finder", fields_of::<FinderOptions>()),
        ("multipart", fields_of::<MultipartOptions>()),
        ("batch", fields_of::<BatchOptions>()),
        ("worker", fields_of::<WorkerOptions>()),
    ];
    fn expand(at: &str, fields: &[&str], parts: &[(&str, &[&str])], out: &mut Vec<String>) {
        for f in fields {
            let path = if at.is_empty() {
                (*f).to_owned()
            } else {
                format!("{at}.{f}")
            };
            match parts.iter().find(|(p, _)| *p == path) {
                Some((_, inner)) => expand(&path, inner, parts, out),
                None => out.push(path),
            }
        }
    }
    let top: Vec<&str> = fields_of::<JobConfig>()
        .iter()
        .copied()
        .filter(|f| !PROVIDER_OWNED.contains(f))
        .collect();
    let mut out = Vec::new();
    expand("", &top, &parts, &mut out);
    out.retain(|path| !NOT_SETTABLE.contains(&path.as_str()));
    out
}

/// The fields of a struct as serde's derive declares them, read from what it asks a deserializer for.
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};

    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("only the field names were wanted")
        }
    }
    impl std::error::Error for Stop {}
    impl Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// The attribute for a job-config field named in a [`JobConfig::validate`] error: its own path unless
/// [`ATTRIBUTE_OF`] places it elsewhere.
pub fn spec_path(field: &str) -> String {
    if field.is_empty() {
        return "config".into();
    }
    ATTRIBUTE_OF
        .iter()
        .find(|(job, _)| *job == field)
        .map_or_else(
            || field.to_owned(),
            |(_, attribute)| (*attribute).to_owned(),
        )
}

fn name_problem(name: &str) -> Option<String> {
    dth_core::names::problem(name)
}

/// The resource names of a transfer (`dth-<name>-<part>`); also what `import` looks for.
pub fn validate_name(name: &str) -> Result<(), String> {
    name_problem(name).map_or(Ok(()), Err)
}

fn is_instance_type(t: &str) -> bool {
    match t.split_once('.') {
        Some((family, size)) => {
            !family.is_empty()
                && !size.is_empty()
                && family.starts_with(|c: char| c.is_ascii_lowercase())
                && family
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && size
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        }
        None => false,
    }
}

fn is_aws_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit()))
}

fn check_ids(bad: &mut dyn FnMut(&str, String), path: &str, ids: &[String], prefix: &str) {
    for (i, id) in ids.iter().enumerate() {
        if !is_aws_id(id, prefix) {
            bad(
                &format!("{path}[{i}]"),
                format!("{id:?} is not an id of the form {prefix}..."),
            );
        } else if ids[..i].contains(id) {
            bad(&format!("{path}[{i}]"), format!("{id:?} is listed twice"));
        }
    }
}

fn is_email(e: &str) -> bool {
    match e.split_once('@') {
        Some((user, domain)) => {
            !user.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !e.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// When the finder runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Once, right after create (and again whenever the schedule changes back to "once").
    Once,
    /// A recurring Auto Scaling scheduled action with this Unix cron expression (UTC).
    Cron(String),
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, String> {
        if s == "once" {
            return Ok(Schedule::Once);
        }
        let fields: Vec<&str> = s.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{s:?} must be \"once\" or a cron expression of 5 fields (minute hour day-of-month month \
                 day-of-week), like \"0 2 * * *\""
            ));
        }
        const MONTHS: &[&str] = &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ];
        const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
        let specs: [(&str, u32, u32, &[&str], u32); 5] = [
            ("minute", 0, 59, &[], 0),
            ("hour", 0, 23, &[], 0),
            ("day of month", 1, 31, &[], 0),
            ("month", 1, 12, MONTHS, 1),
            ("day of week", 0, 7, DAYS, 0),
        ];
        for (field, (what, lo, hi, names, base)) in fields.iter().zip(specs) {
            cron_field(field, lo, hi, names, base)
                .map_err(|m| format!("{s:?}: {what} field {field:?}: {m}"))?;
        }
        Ok(Schedule::Cron(fields.join(" ")))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Schedule::Once => "once",
            Schedule::Cron(c) => c,
        }
    }
}

fn cron_field(field: &str, lo: u32, hi: u32, names: &[&str], base: u32) -> Result<(), String> {
    let value = |v: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            return Ok(i as u32 + base);
        }
        match v.parse::<u32>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(format!("{v:?} is not between {lo} and {hi}")),
        }
    };
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        if let Some(s) = step {
            match s.parse::<u32>() {
                Ok(n) if n >= 1 && n <= hi.max(1) => {}
                _ => return Err(format!("step {s:?} is not a positive number")),
            }
        }
        if range == "*" {
            continue;
        }
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (value(a)?, value(b)?);
                if a > b {
                    return Err(format!("range {range:?} runs backwards"));
                }
            }
            None => {
                value(range)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> TransferSpec {
        TransferSpec::new("photos", "src-bucket", "dst-bucket", "ghcr.io/dth/dth:1")
    }

    fn patched(patch: serde_json::Value) -> TransferSpec {
        let mut v = serde_json::to_value(spec()).unwrap();
        merge(&mut v, patch);
        serde_json::from_value(v).unwrap()
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
        let s: TransferSpec = serde_json::from_value(json!({
            "name": "x",
            "source": {"bucket": "src-bucket"},
            "destination": {"bucket": "dst-bucket"},
            "fleet": {"image": "img:1"}
        }))
        .unwrap();
        assert_eq!(
            s,
            TransferSpec::new("x", "src-bucket", "dst-bucket", "img:1")
        );
        assert_eq!(s.destination.storage_class, "INTELLIGENT_TIERING");
        assert_eq!(s.destination.acl, "bucket-owner-full-control");
        assert_eq!(s.compare, CompareMode::SizeEtag);
        assert_eq!(s.schedule, "once");
        assert_eq!((s.fleet.min, s.fleet.desired, s.fleet.max), (1, 1, 20));
        assert_eq!(s.worker.concurrency, 4);
        assert_eq!(s.worker, WorkerOptions::default());
        assert_eq!(s.batch, BatchOptions::default());
        assert_eq!(*s.finder, FinderOptions::default());
        assert!(!s.source.anonymous);
        assert_eq!(s.fleet.instance_type, "t4g.micro");
        assert_eq!(s.finder.instance_type, "t4g.micro");
        assert_eq!(s.max_attempts, 5);
        assert_eq!(s.log_retention_days, 30);
        assert!(s.include_metadata);
        assert!(s.validate().is_empty(), "{:?}", s.validate());
    }

    #[test]
    fn the_image_defaults_to_the_projects_for_this_version() {
        for fleet in [json!({}), json!(null)] {
            let mut spec =
                json!({"name": "x", "source": {"bucket": "a-b"}, "destination": {"bucket": "c-d"}});
            if !fleet.is_null() {
                spec["fleet"] = fleet;
            }
            let s: TransferSpec = serde_json::from_value(spec).unwrap();
            assert_eq!(s.fleet.image, DEFAULT_IMAGE);
            assert_eq!(s.fleet.max, 20);
        }
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            DEFAULT_IMAGE.starts_with(&format!("public.ecr.aws/dth/dth:{version}"))
                || option_env!("DTH_IMAGE_REPOSITORY").is_some(),
            "{DEFAULT_IMAGE}"
        );
    }

    #[test]
    fn every_invalid_value_names_its_attribute() {
        let cases = [
            (json!({"name": ""}), "name"),
            (json!({"name": "Photos"}), "name"),
            (json!({"name": "a".repeat(41)}), "name"),
            (json!({"name": "-x"}), "name"),
            (json!({"fleet": {"min": 3, "desired": 2}}), "fleet.desired"),
            (json!({"fleet": {"min": 30}}), "fleet.min"),
            (
                json!({"fleet": {"max": 0, "min": 0, "desired": 0}}),
                "fleet.max",
            ),
            (json!({"fleet": {"image": " "}}), "fleet.image"),
            (
                json!({"fleet": {"instance_type": "big"}}),
                "fleet.instance_type",
            ),
            (
                json!({"finder": {"instance_type": "T4G.micro"}}),
                "finder.instance_type",
            ),
            (json!({"fleet": {"ami_id": "ubuntu"}}), "fleet.ami_id"),
            (
                json!({"fleet": {"subnet_ids": ["vpc-1"]}}),
                "fleet.subnet_ids[0]",
            ),
            (
                json!({"fleet": {"security_group_ids": ["sg-1", "sg-1"]}}),
                "fleet.security_group_ids[1]",
            ),
            (
                json!({"worker": {"concurrency": 0}}),
                "fleet.worker_concurrency",
            ),
            (
                json!({"worker": {"part_concurrency": 0}}),
                "worker.part_concurrency",
            ),
            (
                json!({"worker": {"heartbeat_secs": 900, "visibility_secs": 1800}}),
                "worker.heartbeat_secs",
            ),
            (
                json!({"worker": {"heartbeat_secs": 30, "visibility_secs": 10}}),
                "worker.visibility_secs",
            ),
            (
                json!({"worker": {"shutdown_grace_secs": 7200}}),
                "worker.shutdown_grace_secs",
            ),
            (json!({"batch": {"max_objects": 1001}}), "batch.max_objects"),
            (json!({"batch": {"max_bytes": 0}}), "batch.max_bytes"),
            (json!({"finder": {"depth": 17}}), "finder.depth"),
            (
                json!({"multipart": {"giant_threshold": 6291456}}),
                "multipart.giant_threshold",
            ),
            (
                json!({"source": {"anonymous": true, "credentials_secret_arn": "arn:aws:secretsmanager:us-east-1:1:secret:k"}}),
                "source.anonymous",
            ),
            (
                json!({"source": {"anonymous": true, "kms_key_id": "alias/k"}}),
                "source.kms_key_id",
            ),
            (
                json!({"source": {"prefix_list": {"key": "list.txt"}}}),
                "source.prefix_list.bucket",
            ),
            (json!({"schedule": "daily"}), "schedule"),
            (json!({"schedule": "0 25 * * *"}), "schedule"),
            (json!({"schedule": "* * * *"}), "schedule"),
            (json!({"schedule": "0 2 * FOO *"}), "schedule"),
            (json!({"alarm_email": "ops"}), "alarm_email"),
            (json!({"log_retention_days": 31}), "log_retention_days"),
            (json!({"tags": {"aws:owner": "x"}}), "tags[\"aws:owner\"]"),
            (
                json!({"destination": {"kms_key_id": "k"}}),
                "destination.kms_key_id",
            ),
            (
                json!({"source": {"type": "S3_Compatible"}}),
                "source.endpoint",
            ),
            (json!({"source": {"type": "Aliyun_OSS"}}), "source.region"),
            (
                json!({"source": {"type": "Aliyun_OSS", "region": "cn-hangzhou", "events": "create"}}),
                "source.events",
            ),
            (json!({"source": {"bucket": "Bad_Bucket"}}), "source.bucket"),
            (json!({"source": {"kms_key_id": " "}}), "source.kms_key_id"),
            (
                json!({"source": {"kms_key_id": "alias/k", "credentials_secret_arn": "arn:aws:secretsmanager:us-east-1:1:secret:k"}}),
                "source.kms_key_id",
            ),
            (
                json!({"destination": {"storage_class": "COLD"}}),
                "destination.storage_class",
            ),
            (
                json!({"multipart": {"chunk_size": 1}}),
                "multipart.chunk_size",
            ),
            (json!({"max_attempts": 0}), "max_attempts"),
            (json!({"finder": {"parallelism": 0}}), "finder.parallelism"),
            (
                json!({"filters": {"include": ["a[b"]}}),
                "filters.include[0]",
            ),
        ];
        for (patch, path) in cases {
            let s = patched(patch.clone());
            let errs = s.validate();
            assert!(
                errs.iter().any(|(p, _)| p == path),
                "{patch}: expected a complaint about {path}, got {errs:?}"
            );
        }
    }

    #[test]
    fn cron_expressions() {
        for ok in [
            "once",
            "0 2 * * *",
            "*/15 * * * MON-FRI",
            "0 0 1 JAN,jul *",
            "5 4 * * 0-6",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "0 2 * * * *",
            "60 * * * *",
            "0 2 * * MON-SUN-TUE",
            "0 2 */0 * *",
            "5-1 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Schedule::parse("0  2 * * *").unwrap().as_str(), "0 2 * * *");
    }

    /// Two transfers that, between them, set every job setting away from its default (some exclude each other:
    /// `anonymous` and `credentials_secret_arn`, `events` and `prefix_list` or another `type`), in the spec's JSON.
    pub(crate) fn every_setting() -> [serde_json::Value; 2] {
        const MIB: u64 = 1024 * 1024;
        [
            json!({
                "name": "every-a",
                "source": {
                    "type": "S3_Compatible", "bucket": "src-bucket", "prefix": "in/",
                    "prefix_list": {"bucket": "lists", "key": "prefixes.txt"}, "region": "eu-west-3",
                    "endpoint": "https://minio.example.com", "anonymous": true, "requester_pays": true
                },
                "destination": {
                    "bucket": "dst-bucket", "prefix": "out/", "region": "eu-west-1",
                    "endpoint": "https://s3.example.com",
                    "credentials_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:dst",
                    "storage_class": "STANDARD_IA", "acl": "private", "sse": "aws:kms", "kms_key_id": "alias/dst"
                },
                "compare": "checksum", "skip_compare": true, "include_metadata": false,
                "filters": {"include": ["**/*.jpg"], "exclude": ["**/tmp/**"]},
                "finder": {"depth": 3, "parallelism": 9},
                "multipart": {"threshold": 20 * MIB, "chunk_size": 8 * MIB, "giant_threshold": 2048 * MIB},
                "batch": {"max_objects": 50, "max_bytes": 16 * MIB},
                "worker": {
                    "concurrency": 6, "part_concurrency": 3, "bandwidth_limit": 10 * MIB,
                    "requests_per_second": 300, "heartbeat_secs": 30, "visibility_secs": 120,
                    "shutdown_grace_secs": 240, "ledger_retention_days": 7
                },
                "max_attempts": 7,
                "fleet": {"image": "img:1"}
            }),
            json!({
                "name": "every-b",
                "source": {
                    "bucket": "src-bucket", "events": "create_and_delete",
                    "credentials_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:src"
                },
                "destination": {"bucket": "dst-bucket"},
                "fleet": {"image": "img:1"}
            }),
        ]
    }

    #[test]
    fn every_job_setting_maps_onto_the_job_config_and_back() {
        let cfg = ProviderConfig {
            endpoints: crate::aws::ServiceEndpoints {
                s3: Some("http://127.0.0.1:5000".into()),
                sqs: Some("http://127.0.0.1:5000".into()),
                ..Default::default()
            },
            s3_use_path_style: true,
            ..Default::default()
        };
        let infra = Infra {
            region: "eu-west-1".into(),
            queue_url: "http://127.0.0.1:5000/123456789012/dth-photos-jobs".into(),
            table: "dth-photos-ledger".into(),
            ..Infra::default()
        };
        let specs: Vec<TransferSpec> = every_setting()
            .into_iter()
            .map(|j| serde_json::from_value(j).unwrap())
            .collect();
        let configs: Vec<JobConfig> = specs
            .iter()
            .map(|s| {
                assert!(s.validate().is_empty(), "{}: {:?}", s.name, s.validate());
                let jc = s.job_config(&infra, &cfg);
                jc.validate().unwrap();
                jc
            })
            .collect();

        // Every job setting is away from its default in one of them: none is left out of the spec, or dropped
        // on its way to the job config.
        let default = TransferSpec::new("d", "", "", "img:1").job_config(&infra, &cfg);
        let default = serde_json::to_value(&default).unwrap();
        let set: Vec<serde_json::Value> = configs
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        let settings = job_settings();
        for path in &settings {
            let pointer = format!("/{}", path.replace('.', "/"));
            let was = default.pointer(&pointer);
            assert!(
                set.iter().any(|c| c.pointer(&pointer) != was),
                "{path} stays at its default {was:?} in every test transfer: is it settable?"
            );
        }
        assert!(settings.len() >= 40, "{settings:?}");

        // What the provider derives.
        let (a, b) = (&configs[0], &configs[1]);
        assert!(a.source.anonymous && a.source.path_style);
        assert_eq!(
            a.source.endpoint.as_deref(),
            Some("https://minio.example.com")
        );
        assert_eq!(
            a.destination.endpoint.as_deref(),
            Some("https://s3.example.com")
        );
        assert!(a.destination.path_style);
        assert_eq!(a.worker.concurrency, 6);
        assert_eq!(b.events, EventsMode::CreateAndDelete);
        assert_eq!(b.source.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(b.source.path_style);
        assert_eq!(a.aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            a.aws.endpoints.sqs.as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(a.queue.url, infra.queue_url);
        assert_eq!(a.ledger.table, infra.table);

        // Read back (import, drift): a spec of defaults takes on every setting, and what was derived is not
        // mistaken for the user's.
        for (spec, jc) in specs.iter().zip(&configs) {
            let mut back = TransferSpec::new(&spec.name, "x", "y", &spec.fleet.image);
            back.apply_job_config(jc, &cfg);
            assert_eq!(&back, spec);
            // The user's spec read back changes nothing, whatever it held.
            let mut again = spec.clone();
            again.apply_job_config(jc, &cfg);
            assert_eq!(&again, spec);
        }
    }

    #[test]
    fn embedded_blocks_still_reject_unknown_fields() {
        for (block, patch) in [
            ("source", json!({"source": {"colour": "red"}})),
            ("finder", json!({"finder": {"colour": "red"}})),
            ("worker", json!({"worker": {"colour": "red"}})),
            ("destination", json!({"destination": {"colour": "red"}})),
        ] {
            let mut v = serde_json::to_value(spec()).unwrap();
            merge(&mut v, patch);
            let err = serde_json::from_value::<TransferSpec>(v).expect_err(block);
            assert!(err.to_string().contains("colour"), "{block}: {err}");
        }
    }

    #[test]
    fn an_endpoint_written_as_the_providers_is_kept() {
        let cfg = ProviderConfig {
            endpoints: crate::aws::ServiceEndpoints {
                s3: Some("http://127.0.0.1:5000".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut s = patched(json!({"destination": {"endpoint": "http://127.0.0.1:5000"}}));
        let jc = s.job_config(&Infra::default(), &cfg);
        let want = s.clone();
        s.apply_job_config(&jc, &cfg);
        assert_eq!(s, want);
        let mut fresh = spec();
        fresh.apply_job_config(&jc, &cfg);
        assert_eq!(fresh.destination.endpoint, None, "filled in by job_config");
    }
}
