//! `data "dth_transfer"`: a transfer read by name — S3 or image transfer alike — for configurations that do not
//! own it and for `check` blocks. It reads what `dth status` reads ([`dth_core::status::overview`]): a fixed
//! number of calls, whatever the transfer's size.

use async_trait::async_trait;
use dth_core::status;

use crate::provider::Client;
use crate::tfplugin::{
    AttrPath, Attribute, Block, Ctx, DataSource, Diagnostic, Diagnostics, Schema, Type, Value,
};

pub struct TransferData;

/// The computed numbers: (attribute, description).
const COUNTS: [(&str, &str); 12] = [
    (
        "found",
        "Objects (or images) the latest finder run found to move.",
    ),
    ("bytes_found", "Their bytes."),
    ("done", "Of those, copied."),
    ("bytes_done", "Bytes copied."),
    (
        "failed",
        "Failed for good (their jobs are dead-lettered, or were).",
    ),
    ("gone", "Deleted from the source before they were copied."),
    ("pending", "Found and not settled yet."),
    ("pending_bytes", "Bytes found and not copied yet."),
    ("queue_visible", "Jobs waiting on the queue."),
    ("queue_in_flight", "Jobs being worked on."),
    (
        "dead_letters",
        "Jobs on the dead-letter queue (`dth retry` sends them back).",
    ),
    ("workers", "Worker instances in service."),
];

pub fn schema() -> Schema {
    let mut b = Block::new()
        .description(
            "A transfer's progress, read by name: what `dth status` shows, for configurations that do not own \
             the transfer and for `check` blocks. Reads the transfer's queues, ledger and groups with a fixed \
             number of AWS calls (7), whatever its size.",
        )
        .attribute(
            Attribute::string("name")
                .required()
                .description("The transfer's name (a `dth_s3_transfer` or `dth_ecr_transfer`).")
                .validator(|v| match v.as_str() {
                    Some(n) => dth_core::names::problem(n).map_or(Ok(()), Err),
                    None => Ok(()),
                }),
        )
        .attribute(Attribute::string("id").computed().description("The name."))
        .attribute(
            Attribute::string("status")
                .computed()
                .description("`idle` (nothing run yet), `syncing`, `in_sync` or `failed`."),
        )
        .attribute(
            Attribute::string("last_finder_run")
                .computed()
                .description("When the latest finder run started (RFC 3339); null before the first."),
        )
        .attribute(
            Attribute::string("last_finder_error")
                .computed()
                .description("Why the latest finder run failed, when it did."),
        );
    for (name, description) in COUNTS {
        b = b.attribute(Attribute::number(name).computed().description(description));
    }
    b = b.attribute(
        Attribute::list("missing", Type::String)
            .computed()
            .description("Pieces of the transfer not found (`queue`, `dead_letter_queue`, `ledger`, `finder_group`, `worker_group`): being created or destroyed, or damaged by hand."),
    );
    Schema::new(0, b)
}

#[async_trait]
impl DataSource<Client> for TransferData {
    fn type_name(&self) -> &'static str {
        "dth_transfer"
    }

    fn schema(&self) -> Schema {
        schema()
    }

    async fn read(&self, ctx: &Ctx<Client>, config: &Value) -> Result<Value, Diagnostics> {
        let name = config.get("name").as_str().unwrap_or_default().to_owned();
        let aws = &ctx.client.aws;
        let clients = status::Clients {
            sqs: aws.sqs.clone(),
            dynamodb: aws.dynamodb.clone(),
            autoscaling: aws.autoscaling.clone(),
            cloudwatch: None,
        };
        let o = status::overview(&clients, &name)
            .await
            .map_err(|e| {
                Diagnostics::from(Diagnostic::error(
                    format!("Reading transfer {name:?} failed"),
                    e.to_string(),
                ))
            })?
            .ok_or_else(|| {
                Diagnostics::from(Diagnostic::error_at(
                    AttrPath::root("name"),
                    "No such transfer",
                    format!(
                        "There is no transfer named {name:?} in {}: no queue, ledger or Auto Scaling group of that name.",
                        ctx.client.config.region.as_deref().unwrap_or("the provider's region")
                    ),
                ))
            })?;
        let p = &o.progress;
        let mut v = config.clone();
        v.set("id", Value::string(&name));
        v.set("status", Value::string(o.status.as_str()));
        let text = |t: &Option<String>| t.as_ref().map(Value::string).unwrap_or(Value::Null);
        v.set("last_finder_run", text(&p.last_finder_run));
        v.set("last_finder_error", text(&p.finder_error));
        for (attr, n) in [
            ("found", p.objects_found),
            ("bytes_found", p.bytes_found),
            ("done", p.objects_done),
            ("bytes_done", p.bytes_done),
            ("failed", p.objects_failed),
            ("gone", p.objects_gone),
            ("pending", o.pending_objects),
            ("pending_bytes", o.pending_bytes),
            ("queue_visible", p.queue_visible),
            ("queue_in_flight", p.queue_in_flight),
            ("dead_letters", p.dead_letters),
            ("workers", u64::from(o.workers)),
        ] {
            v.set(attr, Value::from(n));
        }
        v.set("missing", Value::list(o.missing.iter().map(Value::string)));
        Ok(v)
    }
}
