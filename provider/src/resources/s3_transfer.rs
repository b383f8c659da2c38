//! `dth_s3_transfer`: one Data Transfer Hub S3 transfer — its queue, ledger, role, fleet, schedule, alarms and
//! dashboard — with its progress read back into state.
//!
//! The user's attributes map one to one onto [`TransferSpec`] (through serde, so the defaults live in one
//! place and the schema repeats them for plans and docs); the computed ones come from [`Infra`] (what was
//! created) and [`Progress`] (the ledger's run summary and the queues' depths).

use async_trait::async_trait;
use dth_core::config::MIB;

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
const OPTIONAL_BLOCKS: [&str; 3] = ["filters", "finder", "multipart"];

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

fn s(name: &str, md: &str) -> Attribute {
    Attribute::string(name).optional().description(md)
}

/// The resource's schema (what [`Resource::schema`] serves, and what the docs are generated from).
pub fn schema() -> Schema {
    let source = Block::new()
        .description("Where objects come from.")
        .attribute(
            s("type", "Kind of store: `Amazon_S3`, `Aliyun_OSS`, `Tencent_COS`, `Qiniu_Kodo` or `S3_Compatible` (needs `endpoint`).")
                .default("Amazon_S3")
                .one_of(&["Amazon_S3", "Aliyun_OSS", "Tencent_COS", "Qiniu_Kodo", "S3_Compatible"])
                .requires_replace(),
        )
        .attribute(Attribute::string("bucket").required().requires_replace().description("Source bucket."))
        .attribute(s("prefix", "Only keys under this prefix.").default(""))
        .attribute(s("region", "Region of the source bucket. Default: the provider's region.").requires_replace())
        .attribute(s("endpoint", "Endpoint URL. Default: derived from `type` and `region` (Amazon S3's own for `Amazon_S3`)."))
        .attribute(s("credentials_secret_arn", "Secrets Manager secret holding `{\"access_key_id\",\"secret_access_key\"}` for the source; re-read on 403. Default: the instance role (same account) — only the ARN is stored, never the secret."))
        .attribute(Attribute::bool("requester_pays").optional().default(false).description("Send `x-amz-request-payer: requester`."))
        .attribute(
            s("events", "S3 event notifications from the source bucket to the job queue: `none`, `create` (copy new objects as they arrive) or `create_and_delete` (also delete at the destination).")
                .default("none")
                .one_of(&["none", "create", "create_and_delete"])
                .requires_replace(),
        )
        .block(
            NestedBlock::single(
                "prefix_list",
                Block::new()
                    .description("A file listing the prefixes to transfer, one per line.")
                    .attribute(s("bucket", "Bucket of the list. Default: the source bucket."))
                    .attribute(Attribute::string("key").required().description("Key of the list.")),
            ).description("Transfer only the prefixes listed in an object."),
        );
    let destination = Block::new()
        .description("Where objects go (Amazon S3).")
        .attribute(Attribute::string("bucket").required().requires_replace().description("Destination bucket."))
        .attribute(s("prefix", "Prepended to every key.").default(""))
        .attribute(s("region", "Region of the destination bucket. Default: the provider's region.").requires_replace())
        .attribute(s("endpoint", "Endpoint URL. Default: Amazon S3's (or the provider's `endpoints.s3`)."))
        .attribute(s("credentials_secret_arn", "Secrets Manager secret with credentials for the destination (another account). Default: the instance role."))
        .attribute(s("storage_class", "Storage class of the copies.").default("INTELLIGENT_TIERING"))
        .attribute(s("acl", "Canned ACL of the copies; empty for none.").default("bucket-owner-full-control"))
        .attribute(s("sse", "Server-side encryption: `none`, `AES256` or `aws:kms`.").default("none").one_of(&["none", "AES256", "aws:kms"]))
        .attribute(s("kms_key_id", "KMS key for `sse = \"aws:kms\"`."));
    let filters = Block::new()
        .description("Key globs (`*` within one path segment, `**` across them).")
        .attribute(
            Attribute::list("include", Type::String)
                .optional()
                .description("Copy only keys matching one of these. Empty: every key."),
        )
        .attribute(
            Attribute::list("exclude", Type::String)
                .optional()
                .description("Never copy keys matching one of these."),
        );
    let finder = Block::new()
        .description("The finder: lists both sides and enqueues what must move.")
        .attribute(Attribute::number("depth").optional().default(0u64).description("Levels of common prefixes listed in parallel (objects above that depth are never lost)."))
        .attribute(Attribute::number("parallelism").optional().default(4u64).description("Prefixes listed at once."))
        .attribute(s("instance_type", "Instance type of the finder.").default("t4g.micro"));
    let fleet = Block::new()
        .description("The worker fleet: an Auto Scaling group scaled on queue depth (DTH's steps).")
        .attribute(s("instance_type", "Worker instance type (Graviton by default).").default("t4g.micro"))
        .attribute(Attribute::number("min").optional().default(1u64).description("Fewest workers (when the queue is empty)."))
        .attribute(Attribute::number("desired").optional().default(1u64).description("Workers at creation."))
        .attribute(Attribute::number("max").optional().default(20u64).description("Most workers."))
        .attribute(Attribute::number("worker_concurrency").optional().default(4u64).description("Objects (or parts) each worker copies at once; its memory holds `worker_concurrency × multipart.chunk_size` bytes of data."))
        .attribute(Attribute::list("subnet_ids", Type::String).optional().description("Subnets of the fleet. Default: the default VPC's."))
        .attribute(Attribute::list("security_group_ids", Type::String).optional().description("Security groups of the fleet. Default: an egress-only group made for the transfer."))
        .attribute(Attribute::string("image").required().description("Container image with the `finder` and `worker` binaries."))
        .attribute(s("ami_id", "AMI of the instances. Default: the newest Amazon Linux 2023 for the instance type's architecture."));
    let multipart = Block::new()
        .description("How large objects are copied.")
        .attribute(Attribute::number("threshold").optional().default(10 * MIB).description("Objects this size or larger are copied in parts."))
        .attribute(Attribute::number("chunk_size").optional().default(5 * MIB).description("Part size (raised when an object would need more than 10,000 parts)."))
        .attribute(Attribute::number("giant_threshold").optional().default(1024 * MIB).description("Objects this size or larger are split into per-part jobs across the whole fleet."));

    let mut root = Block::new()
        .description("A Data Transfer Hub S3 transfer: the job queue and dead-letter queue, the DynamoDB ledger, an IAM role, launch templates and Auto Scaling groups running the `finder` and `worker`, the finder's schedule, alarms and a dashboard — with the transfer's progress read back on every refresh.")
        .attribute(Attribute::string("id").computed().description("The transfer's name."))
        .attribute(Attribute::string("name").required().requires_replace().description("Names every AWS resource of the transfer (`dth-<name>-…`): 1–40 of `a-z 0-9 -`."))
        .attribute(s("compare", "How an object already at the destination counts as up to date: `size`, `size-etag` or `checksum`.").default("size-etag").one_of(&["size", "size-etag", "checksum"]))
        .attribute(Attribute::bool("skip_compare").optional().default(false).description("Copy every listed object without looking at the destination."))
        .attribute(Attribute::bool("include_metadata").optional().default(true).description("Copy system headers, user metadata and tags."))
        .attribute(s("schedule", "When the finder runs: a 5-field cron expression (UTC) or `once` (right after creation).").default("once"))
        .attribute(Attribute::number("max_attempts").optional().default(5u64).description("Deliveries of a job before it goes to the dead-letter queue."))
        .attribute(s("alarm_email", "Email notified (through SNS) when jobs are dead-lettered."))
        .attribute(Attribute::map("tags", Type::String).optional().description("Tags of every taggable resource, on top of the provider's `default_tags`."))
        .attribute(Attribute::string("status").computed().description("`idle` (nothing run yet), `syncing`, `in_sync` or `failed`."))
        .attribute(Attribute::string("last_finder_run").computed().description("When the latest finder run started (RFC 3339)."))
        .attribute(Attribute::list("missing_components", Type::String).computed().description("Pieces of the transfer deleted outside Terraform; any forces a replacement."))
        .attribute(Attribute::string("queue_url").computed().description("The job queue."))
        .attribute(Attribute::string("dead_letter_queue_url").computed().description("The dead-letter queue."))
        .attribute(Attribute::string("ledger_table").computed().description("The DynamoDB ledger."))
        .attribute(Attribute::string("worker_asg_name").computed().description("The workers' Auto Scaling group."))
        .attribute(Attribute::string("finder_asg_name").computed().description("The finder's Auto Scaling group."))
        .attribute(Attribute::string("role_arn").computed().description("The instances' IAM role."))
        .attribute(Attribute::string("dashboard_name").computed().description("The CloudWatch dashboard."))
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
            NestedBlock::single("fleet", fleet)
                .min_items(1)
                .max_items(1)
                .description("The worker fleet."),
        )
        .block(NestedBlock::single("multipart", multipart).description("Multipart settings."));
    Schema::new(0, root)
}

/// The user's part of a state or plan value.
fn spec_of(v: &Value) -> Result<TransferSpec, Diagnostics> {
    let mut j = config_json(v);
    if let serde_json::Value::Object(m) = &mut j {
        let user: Vec<String> = spec_fields();
        m.retain(|k, _| user.contains(k));
    }
    decode("dth_s3_transfer", j)
}

fn spec_fields() -> Vec<String> {
    [
        "name",
        "source",
        "destination",
        "compare",
        "skip_compare",
        "include_metadata",
        "filters",
        "schedule",
        "finder",
        "fleet",
        "multipart",
        "max_attempts",
        "alarm_email",
        "tags",
    ]
    .map(String::from)
    .to_vec()
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
    let mut j = serde_json::to_value(spec)
        .map_err(|e| Diagnostic::error("Internal error", format!("encoding the transfer: {e}")))?;
    let defaults = serde_json::to_value(TransferSpec::new("x", "x", "x", "x")).unwrap_or_default();
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
    set_infra(&mut v, infra)?;
    set_progress(&mut v, progress);
    v.set(
        "missing_components",
        Value::list(missing.iter().map(Value::string)),
    );
    Ok(v)
}

fn set_infra(v: &mut Value, infra: &Infra) -> Result<(), Diagnostics> {
    let json = serde_json::to_string(infra).map_err(|e| {
        Diagnostic::error("Internal error", format!("encoding infrastructure: {e}"))
    })?;
    v.set("infrastructure", Value::string(json));
    v.set("queue_url", Value::string(&infra.queue_url));
    v.set("dead_letter_queue_url", Value::string(&infra.dlq_url));
    v.set("ledger_table", Value::string(&infra.table));
    v.set("worker_asg_name", Value::string(&infra.worker_asg));
    v.set("finder_asg_name", Value::string(&infra.finder_asg));
    v.set("role_arn", Value::string(&infra.role_arn));
    v.set("dashboard_name", Value::string(&infra.dashboard));
    Ok(())
}

fn set_progress(v: &mut Value, p: &Progress) {
    v.set("status", Value::string(p.status_of().as_str()));
    v.set(
        "last_finder_run",
        p.last_finder_run
            .as_ref()
            .map(Value::string)
            .unwrap_or(Value::Null),
    );
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
        finder_finished: v.get("status").as_str() != Some("syncing"),
        ..Default::default()
    }
}

fn failed(action: &str, e: impl std::fmt::Display) -> Diagnostics {
    Diagnostic::error(format!("{action} dth_s3_transfer failed"), e.to_string()).into()
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
        // Cross-field rules need the whole configuration; unknown values (from other resources) wait for apply.
        if !config.is_fully_known() {
            return;
        }
        match spec_of(config) {
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
        if old != new {
            // A new launch template version, subscription or schedule action: ids to be learnt at apply.
            plan.planned.set("infrastructure", Value::Unknown);
        }
        Ok(())
    }

    async fn create(&self, ctx: &Ctx<Client>, planned: &Value) -> Result<Value, Diagnostics> {
        let spec = spec_of(planned)?;
        let c = &ctx.client;
        let infra = tokio::select! {
            r = transfer::create(&c.aws, &c.config, &spec) => r.map_err(|e| failed("Creating", e))?,
            _ = ctx.cancel.cancelled() => return Err(failed("Creating", "interrupted: terraform asked the provider to stop (what was made is being rolled back only if the provider keeps running)")),
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
        state_of(&o.spec, &o.infra, &o.progress, &missing, Some(state)).map(Some)
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
        let c = &ctx.client;
        let (infra, warnings) = transfer::update(&c.aws, &c.config, (&old, &infra), &new)
            .await
            .map_err(|e| failed("Updating", e))?;
        for w in warnings {
            tracing::warn!(transfer = %new.name, "{w}");
        }
        let mut v = state_of(&new, &infra, &progress_of(prior), &[], Some(planned))?;
        // Progress is what the last refresh saw; the plan promised it unchanged.
        for (name, _) in PROGRESS {
            v.set(name, prior.get(name).clone());
        }
        for name in ["status", "last_finder_run"] {
            v.set(name, prior.get(name).clone());
        }
        Ok(v)
    }

    async fn delete(&self, ctx: &Ctx<Client>, prior: &Value) -> Result<(), Diagnostics> {
        let spec = spec_of(prior)?;
        let infra = infra_of(prior)?;
        let c = &ctx.client;
        let notes = transfer::delete(&c.aws, &infra, &spec)
            .await
            .map_err(|e| failed("Deleting", e))?;
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
        // The schema repeats serde's defaults for plans and docs; a state built from a default spec must read
        // back as the same spec, and carry exactly the schema's defaults.
        let spec = TransferSpec::new("t", "src", "dst", "img");
        let v = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
        assert_eq!(spec_of(&v).unwrap(), spec);
        assert!(v.get("finder").is_null(), "{v:?}");
        assert_eq!(v.get("fleet").get("max").as_u64(), Some(20));
        assert_eq!(v.get("source").get("type").as_str(), Some("Amazon_S3"));
    }

    #[test]
    fn changed_optional_blocks_show_up() {
        let mut spec = TransferSpec::new("t", "src", "dst", "img");
        spec.finder.depth = 2;
        let v = state_of(&spec, &Infra::default(), &Progress::default(), &[], None).unwrap();
        assert_eq!(v.get("finder").get("depth").as_u64(), Some(2));
    }
}
