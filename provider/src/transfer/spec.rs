//! [`TransferSpec`]: what a user writes in one `dth_s3_transfer`, with the Data Transfer Hub S3 plugin's defaults.
//!
//! Most of it is the job config the instances run ([`TransferSpec::job_config`]); the rest shapes the AWS
//! resources around them (fleet, schedule, alarms, tags). Validation reuses [`JobConfig::validate`] so that a
//! value the binaries would reject is rejected at plan time, under the attribute path the user wrote.

use std::collections::BTreeMap;

use dth_core::config::{
    AwsConfig, BatchOptions, CompareMode, DestinationConfig, Endpoints, EventsMode, Filters,
    FinderOptions, LedgerConfig, MultipartOptions, PrefixList, QueueConfig, SourceConfig,
    SourceType, Sse, WorkerOptions,
};
use dth_core::JobConfig;
use serde::{Deserialize, Serialize};

use super::infra::Infra;
use crate::aws::{tag_problem, ProviderConfig};

/// Longest transfer name: `dth-<name>-profile` etc. must fit IAM's 64-character role name limit with room to
/// spare, and alarm/ASG names stay readable.
pub const MAX_NAME_LEN: usize = 40;
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSpec {
    /// Names every AWS resource of the transfer: `dth-<name>-<part>`.
    pub name: String,
    /// When set, `name` is this prefix and [`NAME_SUFFIX_LEN`] random characters, chosen at create (like the
    /// AWS provider's `name_prefix`): every create gets names of its own, so that `create_before_destroy` can
    /// make the new transfer while the old one still exists.
    #[serde(default)]
    pub name_prefix: Option<String>,
    pub source: Source,
    pub destination: Destination,
    #[serde(default)]
    pub compare: CompareMode,
    #[serde(default)]
    pub skip_compare: bool,
    #[serde(default = "yes")]
    pub include_metadata: bool,
    #[serde(default)]
    pub filters: Filters,
    /// A cron expression (5 fields, UTC) for the finder's Auto Scaling scheduled action, or "once".
    #[serde(default = "once")]
    pub schedule: String,
    #[serde(default)]
    pub finder: Finder,
    #[serde(default)]
    pub fleet: Fleet,
    #[serde(default)]
    pub multipart: MultipartOptions,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(rename = "type", default)]
    pub kind: SourceType,
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub prefix_list: Option<PrefixList>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub credentials_secret_arn: Option<String>,
    #[serde(default)]
    pub requester_pays: bool,
    #[serde(default)]
    pub events: EventsMode,
    /// The KMS key the source's objects are encrypted with (SSE-KMS): a key ARN, key id or alias, for the instance
    /// role's `kms:Decrypt`. Only the role's policy needs it; the job config does not carry it.
    #[serde(default)]
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub credentials_secret_arn: Option<String>,
    #[serde(default = "default_storage_class")]
    pub storage_class: String,
    #[serde(default = "default_acl")]
    pub acl: String,
    #[serde(default)]
    pub sse: Sse,
    #[serde(default)]
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Finder {
    pub depth: u32,
    pub parallelism: u32,
    pub instance_type: String,
}

impl Default for Finder {
    fn default() -> Self {
        let core = FinderOptions::default();
        Finder {
            depth: core.depth,
            parallelism: core.parallelism,
            instance_type: default_instance_type(),
        }
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
    #[serde(default = "default_concurrency")]
    pub worker_concurrency: u32,
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

fn yes() -> bool {
    true
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
fn default_max_attempts() -> u32 {
    5
}
fn default_log_retention_days() -> u32 {
    super::logs::DEFAULT_RETENTION_DAYS
}
fn default_concurrency() -> u32 {
    WorkerOptions::default().concurrency
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
            worker_concurrency: default_concurrency(),
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
fn default_storage_class() -> String {
    "INTELLIGENT_TIERING".into()
}
fn default_acl() -> String {
    "bucket-owner-full-control".into()
}

/// Stand-ins for what only exists after create, so that [`JobConfig::validate`] can check the rest at plan time.
const PLACEHOLDER_QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/000000000000/placeholder";
const PLACEHOLDER_TABLE: &str = "placeholder";

impl TransferSpec {
    /// A spec with every default: copy `source_bucket` to `destination_bucket` with workers from `image`.
    pub fn new(name: &str, source_bucket: &str, destination_bucket: &str, image: &str) -> Self {
        TransferSpec {
            name: name.into(),
            name_prefix: None,
            source: Source {
                kind: SourceType::AmazonS3,
                bucket: source_bucket.into(),
                prefix: String::new(),
                prefix_list: None,
                region: None,
                endpoint: None,
                credentials_secret_arn: None,
                requester_pays: false,
                events: EventsMode::None,
                kms_key_id: None,
            },
            destination: Destination {
                bucket: destination_bucket.into(),
                prefix: String::new(),
                region: None,
                endpoint: None,
                credentials_secret_arn: None,
                storage_class: default_storage_class(),
                acl: default_acl(),
                sse: Sse::None,
                kms_key_id: None,
            },
            compare: CompareMode::default(),
            skip_compare: false,
            include_metadata: true,
            filters: Filters::default(),
            schedule: once(),
            finder: Finder::default(),
            fleet: Fleet {
                instance_type: default_instance_type(),
                min: 1,
                desired: 1,
                max: default_max(),
                worker_concurrency: default_concurrency(),
                subnet_ids: Vec::new(),
                security_group_ids: Vec::new(),
                image: image.into(),
                ami_id: None,
            },
            multipart: MultipartOptions::default(),
            max_attempts: default_max_attempts(),
            alarm_email: None,
            log_retention_days: default_log_retention_days(),
            tags: BTreeMap::new(),
        }
    }

    /// Every problem, as (attribute path, message); empty when the spec can be provisioned.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut bad = |path: &str, msg: String| out.push((path.to_owned(), msg));

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
        check_ids(&mut bad, "fleet.subnet_ids", &f.subnet_ids, "subnet-");
        check_ids(
            &mut bad,
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
        if self.source.events != EventsMode::None && self.source.kind != SourceType::AmazonS3 {
            bad(
                "source.events",
                "S3 event notifications need source.type = \"Amazon_S3\"".into(),
            );
        }
        if let Some(key) = &self.source.kms_key_id {
            if key.trim().is_empty() {
                bad("source.kms_key_id", "must not be empty".into());
            } else if self.source.kind != SourceType::AmazonS3
                || self.source.credentials_secret_arn.is_some()
            {
                bad(
                    "source.kms_key_id",
                    "is for an Amazon_S3 source read with the instance role (no credentials_secret_arn): it \
                     grants that role kms:Decrypt"
                        .into(),
                );
            }
        }
        if self.source.events != EventsMode::None && self.source.prefix_list.is_some() {
            bad(
                "source.events",
                "cannot be combined with source.prefix_list (notifications filter on one prefix)"
                    .into(),
            );
        }

        // The engine's own rules; it stops at its first complaint, reported under the spec's attribute path.
        let placeholder = Infra {
            queue_url: PLACEHOLDER_QUEUE.into(),
            table: PLACEHOLDER_TABLE.into(),
            ..Infra::default()
        };
        if let Err(e) = self
            .job_config(&placeholder, &ProviderConfig::default())
            .validate()
        {
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
    ///
    /// A side of type Amazon_S3 without its own endpoint uses the provider's `endpoints.s3` (with
    /// `s3_use_path_style`); S3_Compatible sources always use path-style addressing, as most self-hosted servers
    /// need it. The control plane (queue, ledger, secrets) is the provider's region and endpoints.
    pub fn job_config(&self, infra: &Infra, cfg: &ProviderConfig) -> JobConfig {
        let s3 = cfg.endpoints.s3.clone();
        let s = &self.source;
        let source_default = s.kind == SourceType::AmazonS3 && s.endpoint.is_none();
        let d = &self.destination;
        JobConfig {
            source: SourceConfig {
                kind: s.kind,
                bucket: s.bucket.clone(),
                prefix: s.prefix.clone(),
                prefix_list: s.prefix_list.clone(),
                region: s.region.clone(),
                endpoint: if source_default {
                    s3.clone()
                } else {
                    s.endpoint.clone()
                },
                path_style: s.kind == SourceType::S3Compatible
                    || (s.kind == SourceType::AmazonS3 && cfg.s3_use_path_style),
                credentials_secret_arn: s.credentials_secret_arn.clone(),
                anonymous: false,
                requester_pays: s.requester_pays,
            },
            destination: DestinationConfig {
                bucket: d.bucket.clone(),
                prefix: d.prefix.clone(),
                region: d.region.clone(),
                endpoint: d.endpoint.clone().or(s3.clone()),
                path_style: cfg.s3_use_path_style,
                credentials_secret_arn: d.credentials_secret_arn.clone(),
                storage_class: d.storage_class.clone(),
                acl: d.acl.clone(),
                sse: d.sse,
                kms_key_id: d.kms_key_id.clone(),
            },
            compare: self.compare,
            skip_compare: self.skip_compare,
            include_metadata: self.include_metadata,
            filters: self.filters.clone(),
            finder: FinderOptions {
                depth: self.finder.depth,
                parallelism: self.finder.parallelism,
                ..FinderOptions::default()
            },
            multipart: self.multipart.clone(),
            batch: BatchOptions::default(),
            worker: WorkerOptions {
                concurrency: self.fleet.worker_concurrency,
                ..WorkerOptions::default()
            },
            events: s.events,
            max_attempts: self.max_attempts,
            queue: QueueConfig {
                url: infra.queue_url.clone(),
            },
            ledger: LedgerConfig {
                table: infra.table.clone(),
            },
            aws: AwsConfig {
                region: (!infra.region.is_empty())
                    .then(|| infra.region.clone())
                    .or_else(|| cfg.region.clone()),
                endpoints: control_plane_endpoints(cfg),
            },
        }
    }

    /// Overwrite the fields a job config carries with its values: the inverse of [`TransferSpec::job_config`]
    /// (used to read a launch template's user data back). `worker_concurrency` comes from the worker's
    /// arguments, not from here.
    pub fn apply_job_config(&mut self, jc: &JobConfig, cfg: &ProviderConfig) {
        let s3 = cfg.endpoints.s3.as_deref();
        // An endpoint equal to the provider's S3 endpoint was filled in by job_config, unless the spec we start
        // from (the user's, when reading) says it was written that way.
        let strip = |e: &Option<String>, mine: &Option<String>| match e.as_deref() {
            Some(x) if Some(x) == s3 && mine.as_deref() != Some(x) => None,
            _ => e.clone(),
        };
        let s = &jc.source;
        self.source.kind = s.kind;
        self.source.bucket = s.bucket.clone();
        self.source.prefix = s.prefix.clone();
        self.source.prefix_list = s.prefix_list.clone();
        self.source.region = s.region.clone();
        self.source.endpoint = if s.kind == SourceType::AmazonS3 {
            strip(&s.endpoint, &self.source.endpoint)
        } else {
            s.endpoint.clone()
        };
        self.source.credentials_secret_arn = s.credentials_secret_arn.clone();
        self.source.requester_pays = s.requester_pays;
        self.source.events = jc.events;
        let d = &jc.destination;
        self.destination.bucket = d.bucket.clone();
        self.destination.prefix = d.prefix.clone();
        self.destination.region = d.region.clone();
        self.destination.endpoint = strip(&d.endpoint, &self.destination.endpoint);
        self.destination.credentials_secret_arn = d.credentials_secret_arn.clone();
        self.destination.storage_class = d.storage_class.clone();
        self.destination.acl = d.acl.clone();
        self.destination.sse = d.sse;
        self.destination.kms_key_id = d.kms_key_id.clone();
        self.compare = jc.compare;
        self.skip_compare = jc.skip_compare;
        self.include_metadata = jc.include_metadata;
        self.filters = jc.filters.clone();
        self.finder.depth = jc.finder.depth;
        self.finder.parallelism = jc.finder.parallelism;
        self.multipart = jc.multipart.clone();
        self.max_attempts = jc.max_attempts;
    }
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
    }
}

/// The spec attribute for a job-config field named in a [`JobConfig::validate`] error.
fn spec_path(field: &str) -> String {
    match field {
        "worker.concurrency" => "fleet.worker_concurrency".into(),
        "" => "config".into(),
        f => f.into(),
    }
}

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Some(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some(format!(
            "{name:?} may contain only lowercase letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!(
            "{name:?} must begin and end with a letter or digit"
        ));
    }
    None
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

fn check_ids(bad: &mut impl FnMut(&str, String), path: &str, ids: &[String], prefix: &str) {
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
mod tests {
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
        assert_eq!(s.fleet.worker_concurrency, 4);
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
                json!({"fleet": {"worker_concurrency": 0}}),
                "fleet.worker_concurrency",
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
            (json!({"destination": {"sse": "aws:kms"}}), "compare"),
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

    #[test]
    fn job_config_round_trips_through_the_spec() {
        let mut s = patched(json!({
            "source": {"prefix": "in/", "region": "us-west-2", "events": "create"},
            "destination": {"prefix": "out", "endpoint": "https://s3.example.com"},
            "compare": "checksum", "filters": {"exclude": ["**/*.tmp"]},
            "finder": {"depth": 2}, "max_attempts": 7
        }));
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
        let jc = s.job_config(&infra, &cfg);
        jc.validate().unwrap();
        assert_eq!(jc.source.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(jc.source.path_style);
        assert_eq!(
            jc.destination.endpoint.as_deref(),
            Some("https://s3.example.com")
        );
        assert_eq!(jc.aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            jc.aws.endpoints.sqs.as_deref(),
            Some("http://127.0.0.1:5000")
        );
        let want = s.clone();
        // Scramble what the job config carries, then read it back.
        s.source.prefix = "zzz".into();
        s.destination.endpoint = None;
        s.source.endpoint = Some("http://elsewhere".into());
        s.max_attempts = 1;
        s.apply_job_config(&jc, &cfg);
        assert_eq!(s, want);
    }
}
