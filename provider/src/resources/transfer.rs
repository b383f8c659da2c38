//! What `dth_s3_transfer` and `dth_ecr_transfer` share as Terraform resources: one [`Resource`] implementation,
//! [`TransferResource`], over a [`Kind`] that gives the schema of what moves. Both provision the same AWS resources
//! ([`crate::transfer`], generic over the [`Payload`]); only the blocks that describe the source and destination,
//! the names of the progress attributes (`objects_found`, `images_found`) and the cost estimate differ.
//!
//! The user's attributes map one to one onto [`TransferSpec`] through serde (a spec field whose attribute sits
//! elsewhere is moved by [`RELOCATED`]), and each optional one takes its type and default from the default spec
//! ([`setting`]), whose job settings are core's own: no default is written twice, and plans and docs show them.
//! The computed attributes come from [`Infra`] (what was created) and [`Progress`] (the ledger's run summary and
//! the queues' depths).

use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use dth_core::config::WorkerOptions;

use super::{config_json, decode, problems_to_diagnostics};
use crate::provider::Client;
use crate::tfplugin::{
    AttrPath, Attribute, Block, Ctx, Diagnostic, Diagnostics, NestedBlock, PlanChange, Resource,
    Schema, Type, Value,
};
use crate::transfer::{self, Infra, Observed, Payload, Progress, TransferSpec};

/// One kind of transfer as a Terraform resource: its schema and the few things its state does differently.
pub trait Kind: Send + Sync + 'static {
    type P: Payload;
    /// The whole schema; [`shared_attributes`] and [`shared_blocks`] give what every kind has.
    fn schema() -> Schema;
    /// Optional blocks: absent from configuration means "all defaults", and state keeps them absent while the
    /// cloud agrees, so that a configuration without them plans no changes.
    const OPTIONAL_BLOCKS: &'static [&'static str];
    /// Lists (block, attribute) that stay null rather than `[]` when the user did not write them.
    const UNWRITTEN_EMPTY: &'static [(&'static str, &'static str)];
    /// Spec fields the resource does not offer (see [`transfer::spec::NOT_SETTABLE`]).
    const NOT_SETTABLE: &'static [&'static str];
    /// What moving `units` and `bytes` will roughly cost, for the plan's warning, if the kind can say.
    fn cost(
        spec: &TransferSpec<Self::P>,
        default_region: &str,
        units: u64,
        bytes: u64,
    ) -> Option<String>;
    /// Marks a configuration's JSON as this kind's before it is decoded into the spec (nothing by default).
    fn mark(_json: &mut serde_json::Map<String, serde_json::Value>) {}
}

/// A transfer resource of kind `K`.
pub struct TransferResource<K>(PhantomData<K>);

impl<K> TransferResource<K> {
    pub const fn new() -> Self {
        TransferResource(PhantomData)
    }
}

impl<K> Default for TransferResource<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// Computed attributes that report progress, named for what moves (`objects_found`, `images_found`). They change
/// as the transfer runs, never because of a plan.
pub fn progress_attributes(unit: &str) -> Vec<(String, String)> {
    vec![
        (
            format!("{unit}_found"),
            format!("{} the latest finder run found to move.", capitalised(unit)),
        ),
        (
            "bytes_found".into(),
            "Bytes the latest finder run found to move.".into(),
        ),
        (
            format!("{unit}_done"),
            format!(
                "{} of the latest run copied and verified.",
                capitalised(unit)
            ),
        ),
        (
            "bytes_done".into(),
            "Bytes of the latest run copied and verified.".into(),
        ),
        (
            format!("{unit}_failed"),
            format!(
                "{} of the latest run that failed on their last attempt.",
                capitalised(unit)
            ),
        ),
        (
            format!("{unit}_gone"),
            format!(
                "{} found, then deleted from the source before they were copied.",
                capitalised(unit)
            ),
        ),
        ("queue_visible".into(), "Jobs waiting on the queue.".into()),
        ("queue_in_flight".into(), "Jobs being worked on.".into()),
        (
            "dead_letters".into(),
            "Jobs on the dead-letter queue (failed `max_attempts` times).".into(),
        ),
    ]
}

fn capitalised(word: &str) -> String {
    let mut c = word.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// `timeouts { create, update, delete }`, like the AWS provider's: (operation, default). The block lives only in
/// this layer: it is not part of [`TransferSpec`], so changing it never changes a transfer, and state keeps it
/// exactly as written (null when absent, and after import).
pub const TIMEOUTS: [(&str, &str); 3] = [("create", "30m"), ("update", "30m"), ("delete", "30m")];

/// How long each operation may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) create: Duration,
    pub(crate) update: Duration,
    pub(crate) delete: Duration,
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
pub(crate) fn format_duration(duration: Duration) -> String {
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
pub(crate) fn timeouts_of(v: &Value) -> Result<Timeouts, Vec<(String, String)>> {
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

pub(crate) fn s(name: &str, md: &str) -> Attribute {
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
pub(crate) fn schema_json<K: Kind>(
    spec: &TransferSpec<K::P>,
) -> Result<serde_json::Value, Diagnostics> {
    let mut j = serde_json::to_value(spec)
        .map_err(|e| Diagnostic::error("Internal error", format!("encoding the transfer: {e}")))?;
    for (attribute, field) in RELOCATED {
        if let Some(v) = take(&mut j, field) {
            put(&mut j, attribute, v);
        }
    }
    for field in K::NOT_SETTABLE {
        take(&mut j, field);
    }
    for (field, value) in OMITTED_AT_DEFAULT {
        put(&mut j, field, value(&spec.worker));
    }
    Ok(j)
}

/// Job settings core's JSON leaves out at their default (so that older binaries, which refuse unknown fields,
/// still read a job config that does not change them), with the spec's value: state and schema show them all.
type Field = fn(&WorkerOptions) -> serde_json::Value;
const OMITTED_AT_DEFAULT: [(&str, Field); 1] = [("worker.ledger_retention_days", |w| {
    w.ledger_retention_days.into()
})];

/// The default spec as the schema shapes it: where the schema's defaults come from (core's, for every job
/// setting), so that none is written twice.
pub(crate) fn defaults<K: Kind>() -> serde_json::Value {
    let spec = K::P::default_spec("", transfer::spec::DEFAULT_IMAGE);
    schema_json::<K>(&spec).unwrap_or_default()
}

/// An optional attribute whose type and default are the default spec's value at `path` (dotted): a string,
/// number (a whole number of 0 or more) or bool with that default; a list of strings (no default: empty); or a
/// string without a default (null: an optional value).
pub(crate) fn setting(defaults: &serde_json::Value, path: &str, md: &str) -> Attribute {
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

/// What the shared parts of a schema say about a kind: the resource and what its workers copy.
pub struct Texts<'a> {
    /// The resource's description.
    pub resource: &'a str,
    /// `fleet.worker_concurrency`.
    pub worker_concurrency: &'a str,
    /// `worker.part_concurrency`.
    pub part_concurrency: &'a str,
    /// `worker.bandwidth_limit`.
    pub bandwidth_limit: &'a str,
    /// `worker.requests_per_second`.
    pub requests_per_second: &'a str,
    /// `schedule`.
    pub schedule: &'a str,
}

/// The schema of a kind: `attributes` (its own, set after the shared ones of the root) and `blocks` (its own,
/// before `fleet`, `worker` and `timeouts`), with every attribute and block all transfers share.
pub fn transfer_schema<K: Kind>(
    texts: &Texts,
    attributes: Vec<Attribute>,
    blocks: Vec<NestedBlock>,
) -> Schema {
    let d = &defaults::<K>();
    let unit = K::P::UNIT;
    let fleet = Block::new()
        .description("The worker fleet: an Auto Scaling group scaled on queue depth (DTH's steps).")
        .attribute(setting(d, "fleet.instance_type", "Worker instance type (Graviton by default)."))
        .attribute(setting(d, "fleet.min", "Fewest workers (when the queue is empty)."))
        .attribute(setting(d, "fleet.desired", "Workers at creation."))
        .attribute(setting(d, "fleet.max", "Most workers."))
        .attribute(setting(d, "fleet.worker_concurrency", texts.worker_concurrency))
        .attribute(setting(d, "fleet.subnet_ids", "Subnets of the fleet. Default: the default VPC's."))
        .attribute(setting(d, "fleet.security_group_ids", "Security groups of the fleet. Default: an egress-only group made for the transfer."))
        .attribute(setting(d, "fleet.image", "Container image with the `finder` and `worker` binaries. Default: the project's image for this provider version (pinned by digest in a release). To run from your own registry, copy it there (`scripts/publish-image`, or `skopeo copy --all`) and set this; an image in ECR is pulled with the instances' role, which may pull from that one repository."))
        .attribute(setting(d, "fleet.ami_id", "AMI of the instances. Default: the newest Amazon Linux 2023 for the instance type's architecture."));
    let worker = Block::new()
        .description("How each worker copies (its concurrency is `fleet.worker_concurrency`).")
        .attribute(setting(d, "worker.part_concurrency", texts.part_concurrency))
        .attribute(setting(d, "worker.bandwidth_limit", texts.bandwidth_limit))
        .attribute(setting(d, "worker.requests_per_second", texts.requests_per_second))
        .attribute(setting(d, "worker.heartbeat_secs", "Seconds between extensions of a job's visibility while a worker copies it. Below the job queue's visibility timeout (900), which holds a job until its first heartbeat."))
        .attribute(setting(d, "worker.visibility_secs", "Seconds each extension hides the job from other workers: more than `heartbeat_secs`, at most 43200."))
        .attribute(setting(d, "worker.ledger_retention_days", &format!("Days the ledger keeps the rows of copied {unit} and finished jobs after their last write (DynamoDB's TTL removes them; run summaries are kept). 0: forever. At most {}.", dth_core::config::MAX_RETENTION_DAYS)))
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
        .description(texts.resource)
        .attribute(Attribute::string("id").computed().description("The transfer's name."))
        .attribute(Attribute::string("name").optional().computed().requires_replace().description("Names every AWS resource of the transfer (`dth-<name>-…`): 1–40 of `a-z 0-9 -`. Exactly one of `name` and `name_prefix`. Two transfers cannot share a name: a create that finds the name's resources made by someone else fails and leaves them alone."))
        .attribute(Attribute::string("name_prefix").optional().requires_replace().description(format!("Instead of `name`: the name is this prefix and {} random characters, chosen at create — a new name for every create, so that `lifecycle {{ create_before_destroy = true }}` works (the new transfer is made while the old one still exists). 1–{} of `a-z 0-9 -`.", transfer::spec::NAME_SUFFIX_LEN, transfer::spec::MAX_NAME_LEN - transfer::spec::NAME_SUFFIX_LEN)));
    for a in attributes {
        root = root.attribute(a);
    }
    root = root
        .attribute(setting(d, "schedule", texts.schedule))
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
    for (name, md) in progress_attributes(unit) {
        root = root.attribute(Attribute::number(&name).computed().description(&md));
    }
    for b in blocks {
        root = root.block(b);
    }
    root = root
        .block(NestedBlock::single("fleet", fleet).description("The worker fleet."))
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
pub(crate) fn with_name(v: &Value) -> Value {
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
pub(crate) fn spec_of<K: Kind>(v: &Value) -> Result<TransferSpec<K::P>, Diagnostics> {
    let mut j = config_json(v);
    if let serde_json::Value::Object(m) = &mut j {
        let user: Vec<String> = spec_fields::<K>();
        m.retain(|k, _| user.contains(k));
    }
    for (attribute, field) in RELOCATED {
        if let Some(v) = take(&mut j, attribute) {
            put(&mut j, field, v);
        }
    }
    let resource = K::P::RESOURCE;
    if let serde_json::Value::Object(m) = &mut j {
        K::mark(m);
    }
    decode(resource, j)
}

/// The attributes and blocks that make up the spec.
fn spec_fields<K: Kind>() -> Vec<String> {
    match defaults::<K>() {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// The `drift` lines of a state.
pub(crate) fn drift_of(v: &Value) -> Vec<String> {
    v.get("drift")
        .items()
        .iter()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect()
}

pub(crate) fn infra_of(v: &Value) -> Result<Infra, Diagnostics> {
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
pub(crate) fn state_of<K: Kind>(
    spec: &TransferSpec<K::P>,
    infra: &Infra,
    progress: &Progress,
    missing: &[String],
    shape: Option<&Value>,
) -> Result<Value, Diagnostics> {
    let mut j = schema_json::<K>(spec)?;
    let defaults = defaults::<K>();
    if let serde_json::Value::Object(m) = &mut j {
        for &block in K::OPTIONAL_BLOCKS {
            let absent = shape.is_none_or(|s| s.get(block).is_null());
            if absent && m.get(block) == defaults.get(block) {
                m.insert(block.into(), serde_json::Value::Null);
            }
        }
        // Empty lists and maps the user did not write stay null rather than showing as a change to [].
        for &(block, list) in K::UNWRITTEN_EMPTY {
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
    let ty = K::schema().value_type();
    let mut v = Value::from_json(&j, &ty)
        .map_err(|e| Diagnostic::error("Internal error", format!("building state: {e}")))?;
    v.set("id", Value::string(&spec.name));
    // Not part of the spec: kept exactly as the configuration (or prior state) has it; null after import.
    v.set(
        "timeouts",
        shape.map_or(Value::Null, |s| s.get("timeouts").clone()),
    );
    set_infra(&mut v, infra)?;
    set_progress::<K>(&mut v, progress);
    v.set(
        "missing_components",
        Value::list(missing.iter().map(Value::string)),
    );
    v.set("drift", Value::list(Vec::<Value>::new()));
    Ok(v)
}

pub(crate) fn set_infra(v: &mut Value, infra: &Infra) -> Result<(), Diagnostics> {
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

pub(crate) fn set_progress<K: Kind>(v: &mut Value, p: &Progress) {
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
    let unit = K::P::UNIT;
    for (name, n) in [
        (format!("{unit}_found"), p.objects_found),
        ("bytes_found".into(), p.bytes_found),
        (format!("{unit}_done"), p.objects_done),
        ("bytes_done".into(), p.bytes_done),
        (format!("{unit}_failed"), p.objects_failed),
        (format!("{unit}_gone"), p.objects_gone),
        ("queue_visible".into(), p.queue_visible),
        ("queue_in_flight".into(), p.queue_in_flight),
        ("dead_letters".into(), p.dead_letters),
    ] {
        v.set(&name, Value::from(n));
    }
}

pub(crate) fn progress_of<K: Kind>(v: &Value) -> Progress {
    let unit = K::P::UNIT;
    let n = |k: &str| v.get(k).as_u64().unwrap_or(0);
    let u = |k: &str| n(&format!("{unit}_{k}"));
    Progress {
        objects_found: u("found"),
        bytes_found: n("bytes_found"),
        objects_done: u("done"),
        bytes_done: n("bytes_done"),
        objects_failed: u("failed"),
        objects_gone: u("gone"),
        queue_visible: n("queue_visible"),
        queue_in_flight: n("queue_in_flight"),
        dead_letters: n("dead_letters"),
        last_finder_run: v.get("last_finder_run").as_str().map(str::to_owned),
        finder_error: v.get("last_finder_error").as_str().map(str::to_owned),
        finder_finished: v.get("status").as_str() != Some("syncing"),
        ..Default::default()
    }
}

pub(crate) fn failed<K: Kind>(action: &str, e: impl std::fmt::Display) -> Diagnostics {
    Diagnostic::error(format!("{action} {} failed", K::P::RESOURCE), e.to_string()).into()
}

/// The time limits of a plan or state; a bad value (which validation normally stops first) as diagnostics
/// naming its attribute.
pub(crate) fn limits_of<K: Kind>(v: &Value) -> Result<Timeouts, Diagnostics> {
    timeouts_of(v).map_err(|problems| {
        let mut diags = Diagnostics::new();
        problems_to_diagnostics(&format!("Invalid {}", K::P::RESOURCE), problems, &mut diags);
        diags
    })
}

/// An operation that ran out of its `timeouts.<operation>`; `outcome` says what was left behind.
pub(crate) fn timed_out<K: Kind>(
    operation: &str,
    name: &str,
    limit: Duration,
    outcome: &str,
) -> Diagnostics {
    let (gerund, capitalised) = match operation {
        "create" => ("creating", "Creating"),
        "update" => ("updating", "Updating"),
        _ => ("deleting", "Deleting"),
    };
    Diagnostic::error(
        format!("{capitalised} {} timed out", K::P::RESOURCE),
        format!(
            "{gerund} transfer {name} timed out after {} (timeouts.{operation}). {outcome} To allow more time, \
             raise timeouts.{operation}.",
            format_duration(limit)
        ),
    )
    .into()
}

/// The plan-time report on a transfer that is not in sync: what is still to move, what died, and its price.
pub(crate) fn drift_warning<K: Kind>(
    spec: &TransferSpec<K::P>,
    default_region: &str,
    prior: &Value,
) -> Option<Diagnostic> {
    let status = prior.get("status").as_str()?;
    if status == "in_sync" || status == "idle" {
        return None;
    }
    let p = progress_of::<K>(prior);
    let unit = K::P::UNIT;
    let objects = p.pending_objects();
    let bytes = p.pending_bytes();
    let mut detail = format!(
        "Transfer {} is {status}: {objects} {unit} ({} bytes) of the latest run still to move, {} jobs queued, \
         {} in flight, {} dead-lettered, {} {unit} failed.",
        spec.name, bytes, p.queue_visible, p.queue_in_flight, p.dead_letters, p.objects_failed
    );
    if objects > 0 {
        if let Some(cost) = K::cost(spec, default_region, objects, bytes) {
            detail.push(' ');
            detail.push_str(&cost);
            detail.push('.');
        }
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
        format!("{}.{}: not in sync", K::P::RESOURCE, spec.name),
        detail,
    ))
}

#[async_trait]
impl<K: Kind> Resource<Client> for TransferResource<K> {
    fn type_name(&self) -> &'static str {
        K::P::RESOURCE
    }

    fn schema(&self) -> Schema {
        K::schema()
    }

    fn validate(&self, config: &Value, diags: &mut Diagnostics) {
        // Each timeout stands alone: checked as soon as it is known.
        if let Err(problems) = timeouts_of(config) {
            problems_to_diagnostics(&format!("Invalid {}", K::P::RESOURCE), problems, diags);
        }
        // Cross-field rules need the whole configuration; unknown values (from other resources) wait for apply.
        if !config.is_fully_known() {
            return;
        }
        let (name, prefix) = (config.get("name"), config.get("name_prefix"));
        if name.is_null() == prefix.is_null() {
            diags.push(Diagnostic::error(
                format!("Invalid {}", K::P::RESOURCE),
                "exactly one of name and name_prefix must be set",
            ));
            return;
        }
        match spec_of::<K>(&with_name(config)) {
            Ok(spec) => problems_to_diagnostics(
                &format!("Invalid {}", K::P::RESOURCE),
                spec.validate(),
                diags,
            ),
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
        let old = spec_of::<K>(&prior)?;
        if let Some(w) = drift_warning::<K>(&old, ctx.client.aws.region(), &prior) {
            plan.diagnostics.push(w);
        }
        if !plan.planned.is_fully_known() {
            plan.planned.set("infrastructure", Value::Unknown);
            return Ok(());
        }
        let new = spec_of::<K>(&plan.planned)?;
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
        let spec = spec_of::<K>(&with_name(planned))?;
        let limit = limits_of::<K>(planned)?.create;
        let c = &ctx.client;
        // The limit bounds the creation steps only: the rollback of a create that timed out runs to its end.
        // Ctrl-C (StopProvider) abandons the creation steps like the limit does: what was made is deleted again
        // before the error returns.
        let created = transfer::create_within(&c.aws, &c.config, &spec, limit, &ctx.cancel).await;
        let infra = match created {
            Ok(created) => created.map_err(|e| failed::<K>("Creating", e))?,
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
                        timed_out::<K>("create", &spec.name, limit, &outcome)
                    }
                    transfer::Abandon::Stopped => failed::<K>(
                        "Creating",
                        format!("interrupted: terraform asked the provider to stop. {outcome}"),
                    ),
                });
            }
        };
        state_of::<K>(&spec, &infra, &Progress::default(), &[], Some(planned))
    }

    async fn read(&self, ctx: &Ctx<Client>, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let spec = spec_of::<K>(state)?;
        let infra = infra_of(state)?;
        let c = &ctx.client;
        let observed: Option<Observed<K::P>> = transfer::observe(&c.aws, &c.config, &spec, &infra)
            .await
            .map_err(|e| failed::<K>("Reading", e))?;
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
        let mut v = state_of::<K>(&o.spec, &o.infra, &o.progress, &missing, Some(state))?;
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
        let old = spec_of::<K>(prior)?;
        let infra = infra_of(prior)?;
        let new = spec_of::<K>(planned)?;
        let limit = limits_of::<K>(planned)?.update;
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
                Ok(r) => r.map_err(|e| failed::<K>("Updating", e))?,
                Err(_) => {
                    return Err(timed_out::<K>(
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
        let mut v = state_of::<K>(&new, &infra, &progress_of::<K>(prior), &[], Some(planned))?;
        // Progress is what the last refresh saw; the plan promised it unchanged.
        for (name, _) in progress_attributes(K::P::UNIT) {
            v.set(&name, prior.get(&name).clone());
        }
        for name in ["status", "last_finder_run", "last_finder_error"] {
            v.set(name, prior.get(name).clone());
        }
        Ok(v)
    }

    async fn delete(&self, ctx: &Ctx<Client>, prior: &Value) -> Result<(), Diagnostics> {
        let spec = spec_of::<K>(prior)?;
        let infra = infra_of(prior)?;
        let limit = limits_of::<K>(prior)?.delete;
        let c = &ctx.client;
        let delete = Box::pin(transfer::delete(&c.aws, &infra, &spec));
        let notes = match tokio::time::timeout(limit, delete).await {
            Ok(r) => r.map_err(|e| failed::<K>("Deleting", e))?,
            Err(_) => {
                return Err(timed_out::<K>(
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
        let (spec, infra) = transfer::import::<K::P>(&c.aws, &c.config, id)
            .await
            .map_err(|e| failed::<K>("Importing", e))?;
        state_of::<K>(&spec, &infra, &Progress::default(), &[], None)
    }
}
