//! `dth_s3_transfer`: one Data Transfer Hub S3 transfer — its queue, ledger, role, fleet, schedule, alarms and
//! dashboard — with its progress read back into state.
//!
//! The user's attributes map one to one onto [`TransferSpec`] through serde (a spec field whose attribute sits
//! elsewhere is moved by [`RELOCATED`]), and each optional one takes its type and default from the default spec
//! ([`setting`]), whose job settings are core's own: no default is written twice, and plans and docs show them.
//! The computed attributes come from [`Infra`] (what was created) and [`Progress`] (the ledger's run summary and
//! the queues' depths).

use std::time::Duration;

use async_trait::async_trait;

use super::{config_json, decode, problems_to_diagnostics};
use crate::provider::Client;
use crate::tfplugin::{
    AttrPath, Attribute, Block, Ctx, Diagnostic, Diagnostics, NestedBlock, PlanChange, Resource,
    Schema, Type, Value,
};
use crate::transfer::{self, cost, Infra, Observed, Progress, TransferSpec};

pub const TYPE_NAME: &str = "dth_s3_transfer";

pub struct S3Transfer;

/// Optional blocks: absent from configuration means "all defaults", and state keeps them absent while the cloud
/// agrees, so that a configuration without them plans no changes.
const OPTIONAL_BLOCKS: [&str; 6] = ["filters", "finder", "fleet", "multipart", "batch", "worker"];

/// Computed attributes that report progress. They change as the transfer runs, never because of a plan.
const PROGRESS: [(&str, &str); 9] = [
    (
        "objects_found",
        "Objects the latest finder run found to move.",
    ),
    ("bytes_found", "Bytes the latest finder run found to move."),
    (
        "objects_done",
        "Objects of the latest run copied and verified.",
    ),
    ("bytes_done", "Bytes of the latest run copied and verified."),
    (
        "objects_failed",
        "Objects of the latest run that failed on their last attempt.",
    ),
    (
        "objects_gone",
        "Objects found, then deleted from the source before they were copied.",
    ),
    ("queue_visible", "Jobs waiting on the queue."),
    ("queue_in_flight", "Jobs being worked on."),
    (
        "dead_letters",
        "Jobs on the dead-letter queue (failed `max_attempts` times).",
    ),
];

/// `timeouts { create, update, delete }`, like the AWS provider's: (operation, default). The block lives only in
/// this layer: it is not part of [`TransferSpec`], so changing it never changes a transfer, and state keeps it
/// exactly as written (null when absent, and after import).
pub const TIMEOUTS: [(&str, &str); 3] = [("create", "30m"), ("update", "30m"), ("delete", "30m")];

/// How long each operation may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timeouts {
    create: Duration,
    update: Duration,
    delete: Duration,
}

/// A duration as Terraform providers write them (Go's `time.ParseDuration`): numbers with units, combined, like
/// `30m`, `1h`, `90s`, `1h30m` or `1.5h`. Units: `h`, `m`, `s`, `ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXAMPLES: &str = "a duration like \"30m\", \"1h\", \"90s\" or \"1h30m\"";
    if text.is_empty() {
        return Err(format!("must not be empty: {EXAMPLES}"));
    }
    let mut rest = text;
    let mut seconds = 0.0_f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not {EXAMPLES}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "" => {
                return Err(format!(
                    "{text:?} has a number without a unit (h, m, s or ms): {EXAMPLES}"
                ))
            }
            other => {
                return Err(format!(
                    "{text:?} has an unknown unit {other:?} (use h, m, s or ms): {EXAMPLES}"
                ))
            }
        };
        seconds += value * scale;
        rest = tail;
    }
    let duration =
        Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is too long"))?;
    if duration.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(duration)
}

/// `duration` the way it would be written: `30m`, `1h30m`, `1m30s`, `500ms`.
fn format_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    let ms = duration.subsec_millis();
    if ms > 0 || out.is_empty() {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// The `timeouts` of a configuration, plan or state, defaults filled in; unknown values count as defaults
/// (validation sees them again once known). Problems come as (attribute path, message).
fn timeouts_of(v: &Value) -> Result<Timeouts, Vec<(String, String)>> {
    let block = v.get("timeouts");
    let mut problems = Vec::new();
    let mut get = |operation: &str, default: &str| {
        let text = match block.get(operation) {
            Value::Null | Value::Unknown => default,
            other => other.as_str().unwrap_or(default),
        };
        parse_duration(text).unwrap_or_else(|message| {
            problems.push((format!("timeouts.{operation}"), message));
            Duration::ZERO
        })
    };
    let t = Timeouts {
        create: get(TIMEOUTS[0].0, TIMEOUTS[0].1),
        update: get(TIMEOUTS[1].0, TIMEOUTS[1].1),
        delete: get(TIMEOUTS[2].0, TIMEOUTS[2].1),
    };
    if problems.is_empty() {
        Ok(t)
    } else {
        Err(problems)
    }
}

fn s(name: &str, md: &str) -> Attribute {
    Attribute::string(name).optional().description(md)
}

/// Spec fields whose attribute sits elsewhere in the schema: (attribute path, spec path). The spec keeps core's
/// shape ([`transfer::spec::ATTRIBUTE_OF`]); [`spec_of`] and [`state_of`] move the value.
const RELOCATED: [(&str, &str); 1] = [("fleet.worker_concurrency", "worker.concurrency")];

/// The value at a dotted path of a JSON object, taken out of it.
fn take(j: &mut serde_json::Value, path: &str) -> Option<serde_json::Value> {
    let (parent, name) = match path.rsplit_once('.') {
        Some((parent, name)) => (
            j.pointer_mut(&format!("/{}", parent.replace('.', "/")))?,
            name,
        ),
        None => (j, path),
    };
    parent.as_object_mut()?.remove(name)
}

/// Put `value` at a dotted path of a JSON object, making the objects on the way.
fn put(j: &mut serde_json::Value, path: &str, value: serde_json::Value) {
    let mut at = j;
    let mut names = path.split('.').peekable();
    while let Some(name) = names.next() {
        let serde_json::Value::Object(m) = at else {
            return;
        };
        if names.peek().is_none() {
            m.insert(name.into(), value);
            return;
        }
        at = m
            .entry(name)
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
}

/// A spec as the schema shapes it: relocated fields moved to their attributes, and the fields the resource does not
/// offer ([`transfer::spec::NOT_SETTABLE`], which sit at the same paths in the spec as in the job config) left out.
fn schema_json(spec: &TransferSpec) -> Result<serde_json::Value, Diagnostics> {
    let mut j = serde_json::to_value(spec)
        .map_err(|e| Diagnostic::error("Internal error", format!("encoding the transfer: {e}")))?;
    for (attribute, field) in RELOCATED {
        if let Some(v) = take(&mut j, field) {
            put(&mut j, attribute, v);
        }
    }
    for field in transfer::spec::NOT_SETTABLE {
        take(&mut j, field);
    }
    for (field, value) in OMITTED_AT_DEFAULT {
        put(&mut j, field, value(spec));
    }
    Ok(j)
}

/// Job settings core's JSON leaves out at their default (so that older binaries, which refuse unknown fields,
/// still read a job config that does not change them), with the spec's value: state and schema show them all.
type Field = fn(&TransferSpec) -> serde_json::Value;
const OMITTED_AT_DEFAULT: [(&str, Field); 1] = [("worker.ledger_retention_days", |s| {
    s.worker.ledger_retention_days.into()
})];

/// The default spec as the schema shapes it: where the schema's defaults come from (core's, for every job
/// setting), so that none is written twice.
fn defaults() -> serde_json::Value {
    let spec = TransferSpec::new("", "", "", transfer::spec::DEFAULT_IMAGE);
    schema_json(&spec).unwrap_or_default()
}

/// An optional attribute whose type and default are the default spec's value at `path` (dotted): a string,
/// number (a whole number of 0 or more) or bool with that default; a list of strings (no default: empty); or a
/// string without a default (null: an optional value).
fn setting(defaults: &serde_json::Value, path: &str, md: &str) -> Attribute {
    use serde_json::Value as J;
    let name = path.rsplit('.').next().unwrap_or(path);
    let default = defaults
        .pointer(&format!("/{}", path.replace('.', "/")))
        .unwrap_or_else(|| panic!("{path} is not a field of the spec"));
    let attribute = match default {
        J::String(text) => Attribute::string(name).default(text.as_str()),
        J::Bool(b) => Attribute::bool(name).default(*b),
        J::Number(n) => Attribute::number(name)
            .default(Value::Number(n.clone()))
            .validator(whole_number),
        J::Array(_) => Attribute::list(name, Type::String),
        J::Null => Attribute::string(name),
        J::Object(_) => panic!("{path} is a block, not an attribute"),
    };
    attribute.optional().description(md)
}

/// The spec's numbers are counts, sizes and seconds.
fn whole_number(v: &Value) -> Result<(), String> {
    match v.as_number() {
        Some(n) if n.as_u64().is_none() => Err(format!("{n} is not a whole number of 0 or more")),
        _ => Ok(()),
    }
}

/// The resource's schema (what [`Resource::schema`] serves, and what the docs are generated from). Every optional
/// attribute of the spec is a [`setting`]: its type and default are the spec's (core's, for a job setting).
pub fn schema() -> Schema {
    let d = &defaults();
    let source = Block::new()
        .description("Where objects come from.")
        .attribute(
            setting(d, "source.type", "Kind of store: `Amazon_S3`, `Aliyun_OSS`, `Tencent_COS`, `Qiniu_Kodo` or `S3_Compatible` (needs `endpoint`).")
                .one_of(&["Amazon_S3", "Aliyun_OSS", "Tencent_COS", "Qiniu_Kodo", "S3_Compatible"])
                .requires_replace(),
        )
        .attribute(Attribute::string("bucket").required().requires_replace().description("Source bucket."))
        .attribute(setting(d, "source.prefix", "Only keys under this prefix."))
        .attribute(setting(d, "source.region", "Region of the source bucket. Default: the provider's region.").requires_replace())
        .attribute(setting(d, "source.endpoint", "Endpoint URL. Default: derived from `type` and `region` (Amazon S3's own, or the provider's `endpoints.s3`, for `Amazon_S3`). Addressing is path-style for `S3_Compatible`, and for `Amazon_S3` when the provider sets `s3_use_path_style`."))
        .attribute(setting(d, "source.credentials_secret_arn", "Secrets Manager secret holding `{\"access_key_id\",\"secret_access_key\"}` for the source; re-read on 403. Default: the instance role (same account) — only the ARN is stored, never the secret."))
        .attribute(setting(d, "source.anonymous", "Send unsigned requests: a public bucket, read without credentials. Not with `credentials_secret_arn`."))
        .attribute(setting(d, "source.requester_pays", "Send `x-amz-request-payer: requester`."))
        .attribute(setting(d, "source.kms_key_id", "KMS key the source objects are encrypted with (SSE-KMS): key ARN, key id or alias (`alias/name`). The instance role gets `kms:Decrypt` on it; for an alias, on the keys that carry it. Only for an `Amazon_S3` source read with the instance role."))
        .attribute(
            setting(d, "source.events", "S3 event notifications from the source bucket to the job queue: `none`, `create` (copy new objects as they arrive) or `create_and_delete` (also delete at the destination).")
                .one_of(&["none", "create", "create_and_delete"])
                .requires_replace(),
        )
        .block(
            NestedBlock::single(
                "prefix_list",
                Block::new()
                    .description("A file listing the prefixes to transfer, one per line.")
                    .attribute(Attribute::string("bucket").required().description("Bucket of the list, read with the instance role (whatever credentials the source uses)."))
                    .attribute(Attribute::string("key").required().description("Key of the list.")),
            ).description("Transfer only the prefixes listed in an object."),
        );
    let destination = Block::new()
        .description("Where objects go (Amazon S3).")
        .attribute(Attribute::string("bucket").required().requires_replace().description("Destination bucket."))
        .attribute(setting(d, "destination.prefix", "Prepended to every key."))
        .attribute(setting(d, "destination.region", "Region of the destination bucket. Default: the provider's region.").requires_replace())
        .attribute(setting(d, "destination.endpoint", "Endpoint URL. Default: Amazon S3's (or the provider's `endpoints.s3`). Addressing is path-style when the provider sets `s3_use_path_style`."))
        .attribute(setting(d, "destination.credentials_secret_arn", "Secrets Manager secret with credentials for the destination (another account). Default: the instance role."))
        .attribute(setting(d, "destination.storage_class", "Storage class of the copies."))
        .attribute(setting(d, "destination.acl", "Canned ACL of the copies; empty for none."))
        .attribute(setting(d, "destination.sse", "Server-side encryption: `none`, `AES256` or `aws:kms`.").one_of(&["none", "AES256", "aws:kms"]))
        .attribute(setting(d, "destination.kms_key_id", "KMS key for `sse = \"aws:kms\"`."));
    let filters = Block::new()
        .description("Key globs (`*` within one path segment, `**` across them).")
        .attribute(setting(
            d,
            "filters.include",
            "Copy only keys matching one of these. Empty: every key.",
        ))
        .attribute(setting(
            d,
            "filters.exclude",
            "Never copy keys matching one of these.",
        ));
    let finder = Block::new()
        .description("The finder: lists both sides and enqueues what must move.")
        .attribute(setting(d, "finder.depth", "Levels of common prefixes listed in parallel (objects above that depth are never lost); 0 lists each prefix flat."))
        .attribute(setting(d, "finder.parallelism", "Prefixes listed at once."))
        .attribute(setting(d, "finder.instance_type", "Instance type of the finder."));
    let fleet = Block::new()
        .description("The worker fleet: an Auto Scaling group scaled on queue depth (DTH's steps).")
        .attribute(setting(d, "fleet.instance_type", "Worker instance type (Graviton by default)."))
        .attribute(setting(d, "fleet.min", "Fewest workers (when the queue is empty)."))
        .attribute(setting(d, "fleet.desired", "Workers at creation."))
        .attribute(setting(d, "fleet.max", "Most workers."))
        .attribute(setting(d, "fleet.worker_concurrency", "Objects (or parts) each worker copies at once; its memory holds `worker_concurrency × multipart.chunk_size` bytes of data. The job config's `worker.concurrency`."))
        .attribute(setting(d, "fleet.subnet_ids", "Subnets of the fleet. Default: the default VPC's."))
        .attribute(setting(d, "fleet.security_group_ids", "Security groups of the fleet. Default: an egress-only group made for the transfer."))
        .attribute(setting(d, "fleet.image", "Container image with the `finder` and `worker` binaries. Default: the project's image for this provider version (pinned by digest in a release). To run from your own registry, copy it there (`scripts/publish-image`, or `skopeo copy --all`) and set this; an image in ECR is pulled with the instances' role, which may pull from that one repository."))
        .attribute(setting(d, "fleet.ami_id", "AMI of the instances. Default: the newest Amazon Linux 2023 for the instance type's architecture."));
    let multipart = Block::new()
        .description("How large objects are copied.")
        .attribute(setting(d, "multipart.threshold", "Objects this size or larger (bytes) are copied in parts."))
        .attribute(setting(d, "multipart.chunk_size", "Part size in bytes (raised when an object would need more than 10,000 parts)."))
        .attribute(setting(d, "multipart.giant_threshold", "Objects this size or larger (bytes) are split into per-part jobs across the whole fleet."));
    let batch = Block::new()
        .description("How the finder packs objects into jobs.")
        .attribute(setting(
            d,
            "batch.max_objects",
            "Most objects in one job (1 to 1000).",
        ))
        .attribute(setting(d, "batch.max_bytes", "Most bytes in one job."));
    let worker = Block::new()
        .description("How each worker copies (its concurrency is `fleet.worker_concurrency`).")
        .attribute(setting(d, "worker.part_concurrency", "Parts of one multipart object copied at once."))
        .attribute(setting(d, "worker.bandwidth_limit", "Bytes per second each worker reads from the source, over all its copies; 0: unlimited."))
        .attribute(setting(d, "worker.requests_per_second", "S3 requests per second each worker sends, source and destination together; 0: unlimited."))
        .attribute(setting(d, "worker.heartbeat_secs", "Seconds between extensions of a job's visibility while a worker copies it. Below the job queue's visibility timeout (900), which holds a job until its first heartbeat."))
        .attribute(setting(d, "worker.visibility_secs", "Seconds each extension hides the job from other workers: more than `heartbeat_secs`, at most 43200."))
        .attribute(setting(d, "worker.ledger_retention_days", &format!("Days the ledger keeps the rows of copied objects and finished jobs after their last write (DynamoDB's TTL removes them; run summaries are kept). 0: forever. At most {}.", dth_core::config::MAX_RETENTION_DAYS)))
        .attribute(setting(d, "worker.shutdown_grace_secs", &format!("Seconds a stopping worker (scale-in, instance refresh) waits for its jobs in flight before releasing them to the queue; the workers' drain lifecycle hook waits that long plus margins. At most {}.", transfer::spec::max_shutdown_grace_secs())));

    let mut timeouts = Block::new();
    for (operation, default) in TIMEOUTS {
        let verb = match operation {
            "create" => "Creating the transfer",
            "update" => "Updating the transfer in place",
            _ => "Deleting the transfer",
        };
        timeouts = timeouts.attribute(s(
            operation,
            &format!("{verb} may take this long. Default: `{default}`."),
        ));
    }

    let retention_periods = transfer::logs::RETENTION_DAYS
        .map(|d| d.to_string())
        .join(", ");
    let mut root = Block::new()
        .description("A Data Transfer Hub S3 transfer: the job queue and dead-letter queue, the DynamoDB ledger, a CloudWatch Logs group, an IAM role, launch templates and Auto Scaling groups running the `finder` and `worker`, the finder's schedule, alarms and a dashboard — with the transfer's progress read back on every refresh.")
        .attribute(Attribute::string("id").computed().description("The transfer's name."))
        .attribute(Attribute::string("name").optional().computed().requires_replace().description("Names every AWS resource of the transfer (`dth-<name>-…`): 1–40 of `a-z 0-9 -`. Exactly one of `name` and `name_prefix`. Two transfers cannot share a name: a create that finds the name's resources made by someone else fails and leaves them alone."))
        .attribute(Attribute::string("name_prefix").optional().requires_replace().description(format!("Instead of `name`: the name is this prefix and {} random characters, chosen at create — a new name for every create, so that `lifecycle {{ create_before_destroy = true }}` works (the new transfer is made while the old one still exists). 1–{} of `a-z 0-9 -`.", transfer::spec::NAME_SUFFIX_LEN, transfer::spec::MAX_NAME_LEN - transfer::spec::NAME_SUFFIX_LEN)))
        .attribute(setting(d, "compare", "How an object already at the destination counts as up to date: `size`, `size-etag` or `checksum`.").one_of(&["size", "size-etag", "checksum"]))
        .attribute(setting(d, "skip_compare", "Copy every listed object without looking at the destination."))
        .attribute(setting(d, "include_metadata", "Copy system headers, user metadata and tags."))
        .attribute(setting(d, "schedule", "When the finder runs: a 5-field cron expression (UTC) or `once` (right after creation)."))
        .attribute(setting(d, "max_attempts", "Deliveries of a job before it goes to the dead-letter queue."))
        .attribute(setting(d, "alarm_email", "Email notified (through SNS) when jobs are dead-lettered."))
        .attribute(setting(d, "log_retention_days", &format!("Days the transfer's CloudWatch Logs group (`/dth/<name>`, one stream per instance and role) keeps the finder's and workers' output: one of CloudWatch Logs' periods ({}), or 0 to keep them forever. Changes in place.", retention_periods)))
        .attribute(Attribute::map("tags", Type::String).optional().description("Tags of every taggable resource, on top of the provider's `default_tags`."))
        .attribute(Attribute::string("status").computed().description("`idle` (nothing run yet), `syncing`, `in_sync` or `failed`."))
        .attribute(Attribute::string("last_finder_run").computed().description("When the latest finder run started (RFC 3339)."))
        .attribute(Attribute::string("last_finder_error").computed().description("Why the latest finder run failed, when it did (the transfer is then `failed`; the next scheduled run tries again)."))
        .attribute(Attribute::list("missing_components", Type::String).computed().description("Pieces of the transfer deleted outside Terraform; any forces a replacement."))
        .attribute(Attribute::list("drift", Type::String).computed().description("Settings of the transfer's AWS resources changed outside Terraform that no other attribute shows (a queue's visibility timeout, an alarm's threshold, a scaling step, the dashboard, the role's policy, the drain hook, the ledger's time to live, the launch templates' content), one line each: `<component>: <what differs>`. A plan shows them going away, and applying it puts the settings back in place."))
        .attribute(Attribute::string("queue_arn").computed().description("ARN of the job queue."))
        .attribute(Attribute::string("dead_letter_queue_arn").computed().description("ARN of the dead-letter queue."))
        .attribute(Attribute::string("instance_profile_arn").computed().description("The instances' IAM instance profile."))
        .attribute(Attribute::string("queue_url").computed().description("The job queue."))
        .attribute(Attribute::string("dead_letter_queue_url").computed().description("The dead-letter queue."))
        .attribute(Attribute::string("ledger_table").computed().description("The DynamoDB ledger."))
        .attribute(Attribute::string("worker_asg_name").computed().description("The workers' Auto Scaling group."))
        .attribute(Attribute::string("finder_asg_name").computed().description("The finder's Auto Scaling group."))
        .attribute(Attribute::string("role_arn").computed().description("The instances' IAM role."))
        .attribute(Attribute::string("dashboard_name").computed().description("The CloudWatch dashboard."))
        .attribute(Attribute::string("log_group_name").computed().description("The CloudWatch Logs group of the instances' output (empty for a transfer created before the provider made one)."))
        .attribute(Attribute::string("infrastructure").computed().description("Every id the transfer created, as JSON (what read, update and delete work from)."));
    for (name, md) in PROGRESS {
        root = root.attribute(Attribute::number(name).computed().description(md));
    }
    root = root
        .block(
            NestedBlock::single("source", source)
                .min_items(1)
                .max_items(1)
                .description("Where objects come from."),
        )
        .block(
            NestedBlock::single("destination", destination)
                .min_items(1)
                .max_items(1)
                .description("Where objects go."),
        )
        .block(NestedBlock::single("filters", filters).description("Which keys move."))
        .block(NestedBlock::single("finder", finder).description("The finder's settings."))
        .block(
            NestedBlock::single("fleet", fleet).description("The worker fleet."),
        )
        .block(NestedBlock::single("multipart", multipart).description("Multipart settings."))
        .block(NestedBlock::single("batch", batch).description("How objects are packed into jobs."))
        .block(NestedBlock::single("worker", worker).description("Each worker's copy settings."))
        .block(
            NestedBlock::single("timeouts", timeouts).description(
                "How long create, update and delete may take.\n\n\
                 Durations are numbers with units (`h`, `m`, `s`, `ms`), combined as in `1h30m`. An operation that \
                 takes longer fails with an error naming it; a create that times out first deletes what it made. \
                 Changing these never changes the transfer itself, and import leaves them unset.",
            ),
        );
    Schema::new(0, root)
}

/// `v` with its `name` chosen when only `name_prefix` is given (at create: a new random suffix; for validation the
/// suffix's characters do not matter).
fn with_name(v: &Value) -> Value {
    let mut v = v.clone();
    if matches!(v.get("name"), Value::Null | Value::Unknown) {
        if let Some(prefix) = v.get("name_prefix").as_str() {
            let name = transfer::spec::generated_name(prefix);
            v.set("name", Value::string(name));
        }
    }
    v
}

/// The user's part of a state or plan value.
fn spec_of(v: &Value) -> Result<TransferSpec, Diagnostics> {
    let mut j = config_json(v);
    if let serde_json::Value::Object(m) = &mut j {
        let user: Vec<String> = spec_fields();
        m.retain(|k, _| user.contains(k));
    }
    for (attribute, field) in RELOCATED {
        if let Some(v) = take(&mut j, attribute) {
            put(&mut j, field, v);
        }
    }
    decode("dth_s3_transfer", j)
}

/// The attributes and blocks that make up the spec.
fn spec_fields() -> Vec<String> {
    match defaults() {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// The `drift` lines of a state.
fn drift_of(v: &Value) -> Vec<String> {
    v.get("drift")
        .items()
        .iter()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect()
}

fn infra_of(v: &Value) -> Result<Infra, Diagnostics> {
    let text = v.get("infrastructure").as_str().unwrap_or("{}");
    serde_json::from_str(text).map_err(|e| {
        Diagnostic::error(
            "Unreadable state",
            format!("infrastructure: not the JSON this provider writes: {e}"),
        )
        .into()
    })
}

/// The state for `spec`, keeping the shape of `shape` (the prior state or plan): an optional block the user
/// left out stays null as long as it holds its defaults.
fn state_of(
    spec: &TransferSpec,
    infra: &Infra,
    progress: &Progress,
    missing: &[String],
    shape: Option<&Value>,
) -> Result<Value, Diagnostics> {
    let mut j = schema_json(spec)?;
    let defaults = defaults();
    if let serde_json::Value::Object(m) = &mut j {
        for block in OPTIONAL_BLOCKS {
            let absent = shape.is_none_or(|s| s.get(block).is_null());
            if absent && m.get(block) == defaults.get(block) {
                m.insert(block.into(), serde_json::Value::Null);
            }
        }
        // Empty lists and maps the user did not write stay null rather than showing as a change to [].
        for (block, list) in [
            ("filters", "include"),
            ("filters", "exclude"),
            ("fleet", "subnet_ids"),
            ("fleet", "security_group_ids"),
        ] {
            let written = shape.is_some_and(|s| !s.get(block).get(list).is_null());
            if let Some(serde_json::Value::Object(b)) = m.get_mut(block) {
                if !written
                    && b.get(list)
                        .is_some_and(|l| l.as_array().is_some_and(Vec::is_empty))
                {
                    b.insert(list.into(), serde_json::Value::Null);
                }
            }
        }
        let tags_written = shape.is_some_and(|s| !s.get("tags").is_null());
        if !tags_written && spec.tags.is_empty() {
            m.insert("tags".into(), serde_json::Value::Null);
        }
    }
    let ty = schema().value_type();
    let mut v = Value::from_json(&j, &ty)
        .map_err(|e| Diagnostic::error("Internal error", format!("building state: {e}")))?;
    v.set("id", Value::string(&spec.name));
    // Not part of the spec: kept exactly as the configuration (or prior state) has it; null after import.
    v.set(
        "timeouts",
        shape.map_or(Value::Null, |s| s.get("timeouts").clone()),
    );
    set_infra(&mut v, infra)?;
    set_progress(&mut v, progress);
    v.set(
        "missing_components",
        Value::list(missing.iter().map(Value::string)),
    );
    v.set("drift", Value::list(Vec::<Value>::new()));
    Ok(v)
}

fn set_infra(v: &mut Value, infra: &Infra) -> Result<(), Diagnostics> {
    let json = serde_json::to_string(infra).map_err(|e| {
        Diagnostic::error("Internal error", format!("encoding infrastructure: {e}"))
    })?;
    v.set("infrastructure", Value::string(json));
    v.set("queue_url", Value::string(&infra.queue_url));
    v.set("queue_arn", Value::string(&infra.queue_arn));
    v.set("dead_letter_queue_arn", Value::string(&infra.dlq_arn));
    v.set(
        "instance_profile_arn",
        Value::string(&infra.instance_profile_arn),
    );
    v.set("dead_letter_queue_url", Value::string(&infra.dlq_url));
    v.set("ledger_table", Value::string(&infra.table));
    v.set("worker_asg_name", Value::string(&infra.worker_asg));
    v.set("finder_asg_name", Value::string(&infra.finder_asg));
    v.set("role_arn", Value::string(&infra.role_arn));
    v.set("dashboard_name", Value::string(&infra.dashboard));
    v.set("log_group_name", Value::string(&infra.log_group));
    Ok(())
}

fn set_progress(v: &mut Value, p: &Progress) {
    v.set("status", Value::string(p.status_of().as_str()));
    for (name, text) in [
        ("last_finder_run", &p.last_finder_run),
        ("last_finder_error", &p.finder_error),
    ] {
        v.set(
            name,
            text.as_ref().map(Value::string).unwrap_or(Value::Null),
        );
    }
    for (name, n) in [
        ("objects_found", p.objects_found),
        ("bytes_found", p.bytes_found),
        ("objects_done", p.objects_done),
        ("bytes_done", p.bytes_done),
        ("objects_failed", p.objects_failed),
        ("objects_gone", p.objects_gone),
        ("queue_visible", p.queue_visible),
        ("queue_in_flight", p.queue_in_flight),
        ("dead_letters", p.dead_letters),
    ] {
        v.set(name, Value::from(n));
    }
}

fn progress_of(v: &Value) -> Progress {
    let n = |k: &str| v.get(k).as_u64().unwrap_or(0);
    Progress {
        objects_found: n("objects_found"),
        bytes_found: n("bytes_found"),
        objects_done: n("objects_done"),
        bytes_done: n("bytes_done"),
        objects_failed: n("objects_failed"),
        objects_gone: n("objects_gone"),
        queue_visible: n("queue_visible"),
        queue_in_flight: n("queue_in_flight"),
        dead_letters: n("dead_letters"),
        last_finder_run: v.get("last_finder_run").as_str().map(str::to_owned),
        finder_error: v.get("last_finder_error").as_str().map(str::to_owned),
        finder_finished: v.get("status").as_str() != Some("syncing"),
        ..Default::default()
    }
}

fn failed(action: &str, e: impl std::fmt::Display) -> Diagnostics {
    Diagnostic::error(format!("{action} dth_s3_transfer failed"), e.to_string()).into()
}

/// The time limits of a plan or state; a bad value (which validation normally stops first) as diagnostics
/// naming its attribute.
fn limits_of(v: &Value) -> Result<Timeouts, Diagnostics> {
    timeouts_of(v).map_err(|problems| {
        let mut diags = Diagnostics::new();
        problems_to_diagnostics("Invalid dth_s3_transfer", problems, &mut diags);
        diags
    })
}

/// An operation that ran out of its `timeouts.<operation>`; `outcome` says what was left behind.
fn timed_out(operation: &str, name: &str, limit: Duration, outcome: &str) -> Diagnostics {
    let (gerund, capitalised) = match operation {
        "create" => ("creating", "Creating"),
        "update" => ("updating", "Updating"),
        _ => ("deleting", "Deleting"),
    };
    Diagnostic::error(
        format!("{capitalised} dth_s3_transfer timed out"),
        format!(
            "{gerund} transfer {name} timed out after {} (timeouts.{operation}). {outcome} To allow more time, \
             raise timeouts.{operation}.",
            format_duration(limit)
        ),
    )
    .into()
}

/// The plan-time report on a transfer that is not in sync: what is still to move, what died, and its price.
fn drift_warning(spec: &TransferSpec, default_region: &str, prior: &Value) -> Option<Diagnostic> {
    let status = prior.get("status").as_str()?;
    if status == "in_sync" || status == "idle" {
        return None;
    }
    let p = progress_of(prior);
    let objects = p.pending_objects();
    let bytes = p.pending_bytes();
    let from = spec.source.region.as_deref().unwrap_or(default_region);
    let to = spec.destination.region.as_deref().unwrap_or(default_region);
    let estimate = cost::estimate(from, spec.source.kind, to, objects, bytes);
    let mut detail = format!(
        "Transfer {} is {status}: {objects} objects ({} bytes) of the latest run still to move, {} jobs queued, \
         {} in flight, {} dead-lettered, {} objects failed.",
        spec.name, bytes, p.queue_visible, p.queue_in_flight, p.dead_letters, p.objects_failed
    );
    if objects > 0 {
        detail.push(' ');
        detail.push_str(&estimate.describe(objects, bytes, from, to));
        detail.push('.');
    }
    if let Some(e) = &p.finder_error {
        detail.push_str(&format!(
            " The latest finder run failed: {e}. The next scheduled run starts afresh; fix the cause or run the \
             finder again."
        ));
    }
    if p.dead_letters > 0 {
        detail.push_str(
            " Dead-lettered jobs are not retried by themselves: inspect the dead-letter queue, then move its \
             messages back to the job queue (SQS redrive) or run the finder again.",
        );
    }
    Some(Diagnostic::warning(
        format!("dth_s3_transfer.{}: not in sync", spec.name),
        detail,
    ))
}

#[async_trait]
impl Resource<Client> for S3Transfer {
    fn type_name(&self) -> &'static str {
        TYPE_NAME
    }

    fn schema(&self) -> Schema {
        schema()
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        // Each timeout stands alone: checked as soon as it is known.
        if let Err(problems) = timeouts_of(config) {
            problems_to_diagnostics("Invalid dth_s3_transfer", problems, diags);
        }
        // Cross-field rules need the whole configuration; unknown values (from other resources) wait for apply.
        if !config.is_fully_known() {
            return;
        }
        let (name, prefix) = (config.get("name"), config.get("name_prefix"));
        if name.is_null() == prefix.is_null() {
            diags.push(Diagnostic::error(
                "Invalid dth_s3_transfer",
                "exactly one of name and name_prefix must be set",
            ));
            return;
        }
        match spec_of(&with_name(config)) {
            Ok(spec) => problems_to_diagnostics("Invalid dth_s3_transfer", spec.validate(), diags),
            Err(d) => diags.extend(d.0),
        }
    }

    async fn modify_plan(
        &self,
        ctx: &Ctx<Client>,
        plan: &mut PlanChange,
    ) -> Result<(), Diagnostics> {
        if plan.planned.is_null() {
            return Ok(());
        }
        let Some(prior) = plan.prior.clone() else {
            return Ok(());
        };
        if !prior.get("missing_components").items().is_empty() {
            plan.planned
                .set("missing_components", Value::list(Vec::<Value>::new()));
            plan.requires_replace
                .push(AttrPath::root("missing_components"));
        }
        let old = spec_of(&prior)?;
        if let Some(w) = drift_warning(&old, ctx.client.aws.region(), &prior) {
            plan.diagnostics.push(w);
        }
        if !plan.planned.is_fully_known() {
            plan.planned.set("infrastructure", Value::Unknown);
            return Ok(());
        }
        let new = spec_of(&plan.planned)?;
        for path in transfer::requires_replace(&old, &new) {
            plan.requires_replace.push(super::path_of(path));
        }
        // Settings changed by hand go back in place: the plan shows the drift going away.
        let drifted = drift_of(&prior);
        if !drifted.is_empty() {
            plan.planned.set("drift", Value::list(Vec::<Value>::new()));
        }
        let repair = transfer::drift::components_of(drifted.iter().map(String::as_str));
        let infra = infra_of(&prior)?;
        if !transfer::infra_unchanged(&ctx.client.config, (&old, &infra), &new, &repair) {
            // A new launch template version, subscription or schedule action: ids to be learnt at apply. Any
            // other update leaves them as they are, and the plan says so (no "known after apply").
            plan.planned.set("infrastructure", Value::Unknown);
        }
        Ok(())
    }

    async fn create(&self, ctx: &Ctx<Client>, planned: &Value) -> Result<Value, Diagnostics> {
        let spec = spec_of(&with_name(planned))?;
        let limit = limits_of(planned)?.create;
        let c = &ctx.client;
        // The limit bounds the creation steps only: the rollback of a create that timed out runs to its end.
        // Ctrl-C (StopProvider) abandons the creation steps like the limit does: what was made is deleted again
        // before the error returns.
        let created = transfer::create_within(&c.aws, &c.config, &spec, limit, &ctx.cancel).await;
        let infra = match created {
            Ok(created) => created.map_err(|e| failed("Creating", e))?,
            Err(a) => {
                let outcome = if a.cleanup.is_empty() {
                    "What was made has been deleted again.".to_owned()
                } else {
                    format!(
                        "Deleting what was made also failed, left behind: {}.",
                        a.cleanup.join("; ")
                    )
                };
                return Err(match a.reason {
                    transfer::Abandon::TimedOut(limit) => {
                        timed_out("create", &spec.name, limit, &outcome)
                    }
                    transfer::Abandon::Stopped => failed(
                        "Creating",
                        format!("interrupted: terraform asked the provider to stop. {outcome}"),
                    ),
                });
            }
        };
        state_of(&spec, &infra, &Progress::default(), &[], Some(planned))
    }

    async fn read(&self, ctx: &Ctx<Client>, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let spec = spec_of(state)?;
        let infra = infra_of(state)?;
        let c = &ctx.client;
        let observed: Option<Observed> = transfer::observe(&c.aws, &c.config, &spec, &infra)
            .await
            .map_err(|e| failed("Reading", e))?;
        let Some(o) = observed else {
            return Ok(None);
        };
        let missing: Vec<String> = o
            .missing
            .iter()
            .map(|m| {
                serde_json::to_value(m)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{m:?}"))
            })
            .collect();
        let mut v = state_of(&o.spec, &o.infra, &o.progress, &missing, Some(state))?;
        v.set(
            "drift",
            Value::list(o.drift.iter().map(|d| Value::string(d.to_string()))),
        );
        Ok(Some(v))
    }

    async fn update(
        &self,
        ctx: &Ctx<Client>,
        prior: &Value,
        planned: &Value,
    ) -> Result<Value, Diagnostics> {
        let old = spec_of(prior)?;
        let infra = infra_of(prior)?;
        let new = spec_of(planned)?;
        let limit = limits_of(planned)?.update;
        let c = &ctx.client;
        let repair = transfer::drift::components_of(drift_of(prior).iter().map(String::as_str));
        let (infra, warnings) = if old == new && repair.is_empty() {
            // Only what the spec does not hold changed (`timeouts`): nothing to do in AWS, and the plan promised
            // the infrastructure unchanged.
            (infra, Vec::new())
        } else {
            let update = Box::pin(transfer::update_repairing(
                &c.aws,
                &c.config,
                (&old, &infra),
                &new,
                &repair,
            ));
            match tokio::time::timeout(limit, update).await {
                Ok(r) => r.map_err(|e| failed("Updating", e))?,
                Err(_) => {
                    return Err(timed_out(
                        "update",
                        &new.name,
                        limit,
                        "The prior state is kept; what was changed so far stays changed, and the next plan \
                         shows what is still to do.",
                    ))
                }
            }
        };
        for w in warnings {
            tracing::warn!(transfer = %new.name, "{w}");
        }
        let mut v = state_of(&new, &infra, &progress_of(prior), &[], Some(planned))?;
        // Progress is what the last refresh saw; the plan promised it unchanged.
        for (name, _) in PROGRESS {
            v.set(name, prior.get(name).clone());
        }
        for name in ["status", "last_finder_run", "last_finder_error"] {
            v.set(name, prior.get(name).clone());
        }
        Ok(v)
    }

    async fn delete(&self, ctx: &Ctx<Client>, prior: &Value) -> Result<(), Diagnostics> {
        let spec = spec_of(prior)?;
        let infra = infra_of(prior)?;
        let limit = limits_of(prior)?.delete;
        let c = &ctx.client;
        let delete = Box::pin(transfer::delete(&c.aws, &infra, &spec));
        let notes = match tokio::time::timeout(limit, delete).await {
            Ok(r) => r.map_err(|e| failed("Deleting", e))?,
            Err(_) => {
                return Err(timed_out(
                    "delete",
                    &spec.name,
                    limit,
                    "What was deleted so far stays deleted and the transfer stays in state: destroy again to \
                     finish.",
                ))
            }
        };
        for n in notes {
            tracing::info!(transfer = %spec.name, "{n}");
        }
        Ok(())
    }

    async fn import(&self, ctx: &Ctx<Client>, id: &str) -> Result<Value, Diagnostics> {
        let c = &ctx.client;
        let (spec, infra) = transfer::import(&c.aws, &c.config, id)
            .await
            .map_err(|e| failed("Importing", e))?;
        state_of(&spec, &infra, &Progress::default(), &[], None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_defaults_equal_the_spec_defaults() {
        // A state built from a default spec reads back as the same spec, its optional blocks null.
        let spec = TransferSpec::new("t", "src", "dst", "img");
        let v = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
        assert_eq!(spec_of(&v).unwrap(), spec);
        assert!(v.get("finder").is_null(), "{v:?}");
        assert_eq!(v.get("fleet").get("max").as_u64(), Some(20));
        assert_eq!(v.get("source").get("type").as_str(), Some("Amazon_S3"));

        // Every default the schema plans is the default spec's, at every depth.
        let spec = TransferSpec::new("t", "src", "dst", transfer::spec::DEFAULT_IMAGE);
        let j = schema_json(&spec).unwrap();
        fn check(block: &Block, at: &str, j: &serde_json::Value, seen: &mut usize) {
            for a in &block.attributes {
                if let Some(default) = &a.default {
                    let path = format!("{at}/{}", a.name);
                    let have = j.pointer(&path).cloned().unwrap_or_default();
                    assert_eq!(&Value::from_json(&have, &a.ty).unwrap(), default, "{path}");
                    *seen += 1;
                }
            }
            for b in &block.blocks {
                check(&b.block, &format!("{at}/{}", b.name), j, seen);
            }
        }
        let mut seen = 0;
        check(&schema().block, "", &j, &mut seen);
        assert!(seen >= 36, "{seen} defaults");
    }

    /// A configuration of the default transfer with `timeouts` as given (JSON; null for no block).
    fn config_with_timeouts(timeouts: serde_json::Value) -> Value {
        let mut j = serde_json::to_value(TransferSpec::new("t", "src", "dst", "img")).unwrap();
        j["timeouts"] = timeouts;
        Value::from_json(&j, &schema().value_type()).unwrap()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn durations_parse_as_terraform_providers_write_them() {
        for (text, seconds) in [
            ("30m", 1800.0),
            ("1h", 3600.0),
            ("90s", 90.0),
            ("1h30m", 5400.0),
            ("1.5h", 5400.0),
            ("2h45m30s", 9930.0),
            ("500ms", 0.5),
            (".5h", 1800.0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs_f64(seconds)),
                "{text}"
            );
        }
        for (text, complaint) in [
            ("", "must not be empty"),
            ("30", "without a unit"),
            ("30x", "unknown unit \"x\""),
            ("1h 30m", "unknown unit \"h \""),
            ("-5m", "is not a duration"),
            ("m", "is not a duration"),
            ("1..5h", "is not a duration"),
            ("0s", "longer than zero"),
            ("0h0m", "longer than zero"),
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(complaint), "{text}: {err}");
        }
        for (seconds, text) in [
            (1800.0, "30m"),
            (5400.0, "1h30m"),
            (90.0, "1m30s"),
            (3600.0, "1h"),
            (0.5, "500ms"),
        ] {
            assert_eq!(format_duration(Duration::from_secs_f64(seconds)), text);
        }
    }

    #[test]
    fn a_bad_timeout_is_reported_under_its_attribute() {
        let config = config_with_timeouts(serde_json::json!({"create": "soon", "delete": "1h"}));
        let mut diags = Diagnostics::new();
        S3Transfer.validate(&config, &mut diags);
        let found: Vec<&Diagnostic> = diags.iter().collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].is_error());
        assert_eq!(
            found[0].path,
            Some(AttrPath::root("timeouts").attr("create"))
        );
        assert!(
            found[0]
                .detail
                .starts_with("timeouts.create: \"soon\" is not a duration"),
            "{}",
            found[0].detail
        );

        // Checked while the rest of the configuration is still unknown; an unknown timeout waits.
        let mut partly_unknown = config_with_timeouts(serde_json::json!({"update": "5 minutes"}));
        partly_unknown.set("schedule", Value::Unknown);
        let mut diags = Diagnostics::new();
        S3Transfer.validate(&partly_unknown, &mut diags);
        let paths: Vec<_> = diags.iter().map(|d| d.path.clone()).collect();
        assert_eq!(paths, [Some(AttrPath::root("timeouts").attr("update"))]);

        let mut unknown = config_with_timeouts(serde_json::Value::Null);
        unknown.set(
            "timeouts",
            Value::object([("create", Value::Unknown), ("delete", Value::string("1h"))]),
        );
        let mut diags = Diagnostics::new();
        S3Transfer.validate(&unknown, &mut diags);
        assert!(diags.is_empty(), "{diags:?}");
    }

    #[test]
    fn timeouts_stay_out_of_the_spec_and_state_keeps_them_as_written() {
        let spec = TransferSpec::new("t", "src", "dst", "img");
        let config = config_with_timeouts(serde_json::json!({"create": "45m"}));
        assert_eq!(
            timeouts_of(&config).unwrap(),
            Timeouts {
                create: 45 * MINUTE,
                update: 30 * MINUTE,
                delete: 30 * MINUTE,
            }
        );
        // The spec never sees them: changing them alone changes no transfer.
        assert_eq!(spec_of(&config).unwrap(), spec);
        let state = state_of(
            &spec,
            &Infra::default(),
            &Progress::default(),
            &[],
            Some(&config),
        )
        .unwrap();
        assert_eq!(state.get("timeouts"), config.get("timeouts"));
        assert!(state.get("timeouts").get("update").is_null());

        // Absent stays absent; import leaves them null, which means the defaults.
        let without = config_with_timeouts(serde_json::Value::Null);
        let state = state_of(
            &spec,
            &Infra::default(),
            &Progress::default(),
            &[],
            Some(&without),
        )
        .unwrap();
        assert!(state.get("timeouts").is_null());
        let imported = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
        assert!(imported.get("timeouts").is_null());
        assert_eq!(timeouts_of(&imported).unwrap().delete, 30 * MINUTE);
    }

    /// Clients whose every endpoint accepts connections and never answers: each AWS call hangs.
    async fn silent_aws() -> (Ctx<Client>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let e = || Some(url.clone());
        let config = crate::aws::ProviderConfig {
            region: Some("us-east-1".into()),
            access_key: Some("AKIDEXAMPLE".into()),
            secret_key: Some("secret".into()),
            endpoints: crate::aws::ServiceEndpoints {
                s3: e(),
                sqs: e(),
                dynamodb: e(),
                autoscaling: e(),
                ec2: e(),
                iam: e(),
                secretsmanager: e(),
                cloudwatch: e(),
                sns: e(),
                sts: e(),
                logs: e(),
                ecr: e(),
            },
            ..Default::default()
        };
        let aws = crate::aws::AwsClients::new(&config).await.unwrap();
        let ctx = Ctx {
            client: std::sync::Arc::new(Client { aws, config }),
            cancel: tokio_util::sync::CancellationToken::new(),
        };
        (ctx, server)
    }

    #[tokio::test]
    async fn create_and_delete_stop_at_their_timeouts() {
        let (ctx, server) = silent_aws().await;
        let planned = config_with_timeouts(serde_json::json!({"create": "300ms"}));
        let started = std::time::Instant::now();
        let err = S3Transfer
            .create(&ctx, &planned)
            .await
            .expect_err("timed out");
        assert!(started.elapsed() < Duration::from_secs(20));
        let d = err.iter().next().unwrap();
        assert_eq!(d.summary, "Creating dth_s3_transfer timed out");
        assert!(
            d.detail.starts_with("creating transfer t timed out after 300ms (timeouts.create). What was made has been deleted again."),
            "{}",
            d.detail
        );

        // A transfer whose worker group exists: deleting it waits on Auto Scaling, which never answers.
        let spec = TransferSpec::new("t", "src", "dst", "img");
        let infra = Infra {
            worker_asg: "dth-t-worker".into(),
            ..Infra::default()
        };
        let mut prior = state_of(&spec, &infra, &Progress::default(), &[], None).unwrap();
        prior.set("timeouts", Value::object([("delete", Value::string("1s"))]));
        let err = S3Transfer
            .delete(&ctx, &prior)
            .await
            .expect_err("timed out");
        let d = err.iter().next().unwrap();
        assert_eq!(d.summary, "Deleting dth_s3_transfer timed out");
        assert!(
            d.detail.contains("timed out after 1s (timeouts.delete)"),
            "{}",
            d.detail
        );
        server.abort();
    }

    /// Whether the schema has an attribute or a nested block at a dotted path.
    fn in_schema(path: &str) -> bool {
        let mut block = &schema().block;
        let mut names = path.split('.').peekable();
        while let Some(name) = names.next() {
            let last = names.peek().is_none();
            if last && block.attributes.iter().any(|a| a.name == name) {
                return true;
            }
            match block.blocks.iter().find(|b| b.name == name) {
                Some(nested) => block = &nested.block,
                None => return false,
            }
        }
        true
    }

    #[test]
    fn every_job_setting_has_an_attribute() {
        use crate::transfer::spec::{job_settings, spec_path, NOT_SETTABLE};
        let settings = job_settings();
        for path in &settings {
            let attribute = spec_path(path);
            assert!(
                in_schema(&attribute),
                "the job setting {path} has no attribute ({attribute})"
            );
        }
        assert!(settings.len() >= 40, "{settings:?}");
        for path in [
            "worker.ledger_retention_days",
            "source.anonymous",
            "batch.max_bytes",
            "events",
        ] {
            assert!(settings.iter().any(|s| s == path), "{path}");
        }
        for path in NOT_SETTABLE {
            assert!(
                !settings.iter().any(|s| s == path) && !in_schema(path),
                "{path} is derived, yet offered"
            );
        }
        // Where a setting is offered elsewhere, its own path is not offered too.
        assert!(!in_schema("worker.concurrency") && !in_schema("events"));
        assert!(!in_schema("queue") && !in_schema("ledger") && !in_schema("aws"));
    }

    #[test]
    fn enumerations_offer_cores_values() {
        use dth_core::config::{CompareMode, EventsMode, SourceType, Sse};
        fn check<T: serde::de::DeserializeOwned>(path: &str) {
            let attribute = schema()
                .attribute(&crate::resources::path_of(path))
                .cloned()
                .unwrap_or_else(|| panic!("{path}"));
            let allowed = attribute.one_of.clone().unwrap_or_default();
            for v in &allowed {
                serde_json::from_value::<T>(serde_json::json!(v))
                    .unwrap_or_else(|e| panic!("{path}: {v:?}: {e}"));
            }
            let default = attribute.default.as_ref().and_then(|d| d.as_str()).unwrap();
            assert!(allowed.iter().any(|a| a == default), "{path}");
        }
        check::<SourceType>("source.type");
        check::<EventsMode>("source.events");
        check::<Sse>("destination.sse");
        check::<CompareMode>("compare");
    }

    #[test]
    fn defaults_in_the_schema_are_cores() {
        let core = dth_core::config::WorkerOptions::default();
        let at = |path: &str| {
            schema()
                .attribute(&crate::resources::path_of(path))
                .and_then(|a| a.default.clone())
                .unwrap_or_else(|| panic!("{path} has no default"))
        };
        assert_eq!(
            at("fleet.worker_concurrency").as_u64(),
            Some(core.concurrency.into())
        );
        assert_eq!(
            at("worker.shutdown_grace_secs").as_u64(),
            Some(core.shutdown_grace_secs)
        );
        assert_eq!(at("multipart.chunk_size").as_u64(), Some(5 * 1024 * 1024));
        assert_eq!(at("batch.max_objects").as_u64(), Some(200));
        assert_eq!(
            at("destination.storage_class").as_str(),
            Some("INTELLIGENT_TIERING")
        );
        assert_eq!(at("include_metadata"), Value::Bool(true));
        assert_eq!(at("max_attempts").as_u64(), Some(5));
        assert_eq!(
            at("fleet.image").as_str(),
            Some(transfer::spec::DEFAULT_IMAGE)
        );
    }

    #[test]
    fn every_setting_survives_the_state() {
        for j in crate::transfer::spec::tests::every_setting() {
            let spec: TransferSpec = serde_json::from_value(j).unwrap();
            let v = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
            assert_eq!(spec_of(&v).unwrap(), spec);
            // As the configuration would carry it, and through a state shaped by it.
            let config = Value::from_json(&config_json(&v), &schema().value_type()).unwrap();
            assert_eq!(spec_of(&config).unwrap(), spec);
            let again = state_of(
                &spec,
                &Infra::default(),
                &Progress::default(),
                &[],
                Some(&v),
            )
            .unwrap();
            assert_eq!(again, v);
        }
        // The relocated concurrency, and the settings the resource does not offer, as the state shows them.
        let mut spec = TransferSpec::new("t", "src", "dst", "img");
        spec.worker.concurrency = 9;
        let v = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
        assert_eq!(v.get("fleet").get("worker_concurrency").as_u64(), Some(9));
        assert!(
            v.get("worker").is_null(),
            "at its defaults otherwise: {v:?}"
        );
        assert_eq!(spec_of(&v).unwrap(), spec);
    }

    #[test]
    fn changed_optional_blocks_show_up() {
        let mut spec = TransferSpec::new("t", "src", "dst", "img");
        spec.finder.depth = 2;
        spec.worker.bandwidth_limit = 1 << 20;
        let v = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
        assert_eq!(v.get("finder").get("depth").as_u64(), Some(2));
        assert!(v.get("finder").get("dry_run_keys").is_null(), "not offered");
        assert_eq!(
            v.get("worker").get("bandwidth_limit").as_u64(),
            Some(1 << 20)
        );
        assert!(
            v.get("worker").get("concurrency").is_null(),
            "offered as fleet.worker_concurrency"
        );
        assert!(v.get("batch").is_null());
    }
}
