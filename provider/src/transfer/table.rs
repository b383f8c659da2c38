//! The ledger: one DynamoDB table per transfer (runs, objects, uploads), created and waited for until ACTIVE,
//! read for the latest run's progress, retagged, deleted.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification,
};
use dth_core::ledger::DynamoLedger;

use super::iam::SETTLE_TIMEOUT;
use super::read::Progress;

use super::delete::Failures;
use super::infra::{
    present, retry_while, spec_name, wait_gone, Infra, MapErrAsync, Names, Owner, ProvisionError,
    Result,
};
use crate::aws::AwsClients;

/// Create the ledger table, wait until it is ACTIVE, and let DynamoDB expire the per-object and per-job rows
/// the workers write with an expiry ([`dth_core::ledger::EXPIRES_AT`], `worker.ledger_retention_days`): run
/// summaries carry none and stay.
pub(crate) async fn create(c: &AwsClients, n: &Names, infra: &mut Infra) -> Result<()> {
    Box::pin(create_active(c, n, infra)).await?;
    enable_time_to_live(c, &n.table).await
}

/// Let DynamoDB expire rows on [`dth_core::ledger::EXPIRES_AT`].
pub(crate) async fn enable_time_to_live(c: &AwsClients, table: &str) -> Result<()> {
    let what = "enabling DynamoDB time to live";
    c.dynamodb
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(dth_core::ledger::EXPIRES_AT)
                .build()
                .map_err(|e| ProvisionError::new(what, table, e))?,
        )
        .send()
        .map_err_async(what, table)
        .await?;
    Ok(())
}

async fn create_active(c: &AwsClients, n: &Names, infra: &mut Infra) -> Result<()> {
    let what = "creating DynamoDB table";
    let e =
        |m: aws_smithy_types::error::operation::BuildError| ProvisionError::new(what, &n.table, m);
    let mut req = c
        .dynamodb
        .create_table()
        .table_name(&n.table)
        .billing_mode(BillingMode::PayPerRequest);
    for key in ["pk", "sk"] {
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(e)?,
        );
    }
    req = req
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .map_err(e)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("sk")
                .key_type(KeyType::Range)
                .build()
                .map_err(e)?,
        );
    for (k, v) in &infra.tags {
        req = req.tags(
            aws_sdk_dynamodb::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(e)?,
        );
    }
    // ResourceInUseException: a table of this name exists. While it is DELETING (a replacement right after its
    // destroy) the name comes free within minutes; otherwise its tags say whether it is ours (a create whose
    // answer was lost) or someone else's. LimitExceededException: too many tables being made at once (AWS allows
    // 500 in CREATING/UPDATING/DELETING); both are retried as terraform-provider-aws's aws_dynamodb_table does.
    let deadline = tokio::time::Instant::now() + NAME_REUSE_TIMEOUT;
    let mut pause = Duration::from_secs(2);
    loop {
        let e = match req.clone().send().map_err_async(what, &n.table).await {
            Ok(out) => {
                infra.table = n.table.clone();
                if out.table_description().and_then(|d| d.table_status())
                    == Some(&TableStatus::Active)
                {
                    return Ok(());
                }
                break;
            }
            Err(e) => e,
        };
        let code = e.code.as_deref().unwrap_or("");
        if code == "ResourceInUseException" {
            let found = present(
                c.dynamodb
                    .describe_table()
                    .table_name(&n.table)
                    .send()
                    .map_err_async(what, &n.table)
                    .await,
            )?;
            let found = found.as_ref().and_then(|o| o.table());
            if let Some(t) = found.filter(|t| t.table_status() != Some(&TableStatus::Deleting)) {
                let tags = c
                    .dynamodb
                    .list_tags_of_resource()
                    .resource_arn(t.table_arn().unwrap_or_default())
                    .send()
                    .map_err_async("reading DynamoDB table tags", &n.table)
                    .await?;
                Owner::of(
                    tags.tags().iter().map(|t| (t.key(), t.value())),
                    spec_name(infra),
                    &infra.creation_id,
                )
                .ensure_ours("DynamoDB table", &n.table)?;
                infra.table = n.table.clone();
                break;
            }
        } else if code != "LimitExceededException" {
            return Err(e);
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(e);
        }
        tracing::info!(table = %n.table, error = %e, "table name not free yet; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(15));
    }
    // A table is CREATING for a few seconds; it can neither be used nor deleted until ACTIVE.
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let out = c
            .dynamodb
            .describe_table()
            .table_name(&n.table)
            .send()
            .await
            .map_err(|err| ProvisionError::sdk("waiting for DynamoDB table", &n.table, err))?;
        if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ProvisionError::new(
                "waiting for DynamoDB table",
                &n.table,
                "still not ACTIVE after 2 minutes",
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// How long a table's name may stay taken by its deletion (DELETING) before create gives up.
const NAME_REUSE_TIMEOUT: Duration = Duration::from_secs(600);

/// The latest run's progress from the ledger ([`dth_core::status::read_progress`]).
pub(crate) async fn ledger_progress(c: &AwsClients, table: &str, p: &mut Progress) -> Result<()> {
    let ledger = DynamoLedger::new(c.dynamodb.clone(), table);
    let core = |e: dth_core::Error| {
        let mut pe = ProvisionError::new("reading the ledger", table, &e);
        if e.is_not_found() {
            pe.code = Some("ResourceNotFoundException".into());
        }
        pe
    };
    dth_core::status::read_progress(&ledger, p)
        .await
        .map_err(core)
}

/// Put `tags` on the table and take `removed` off.
pub(crate) async fn retag(
    c: &AwsClients,
    infra: &Infra,
    tags: &BTreeMap<String, String>,
    removed: &[String],
) -> Result<()> {
    let p = crate::aws::partition_of(&infra.region);
    let account = super::policy::account_of(&infra.dlq_arn).unwrap_or("");
    let table_arn = format!(
        "arn:{p}:dynamodb:{}:{account}:table/{}",
        infra.region, infra.table
    );
    let ddb_tags = tags
        .iter()
        .map(|(k, v)| {
            aws_sdk_dynamodb::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| ProvisionError::new("tagging DynamoDB table", &infra.table, e))
        })
        .collect::<Result<Vec<_>>>()?;
    c.dynamodb
        .tag_resource()
        .resource_arn(&table_arn)
        .set_tags(Some(ddb_tags))
        .send()
        .map_err_async("tagging DynamoDB table", &infra.table)
        .await?;
    if !removed.is_empty() {
        c.dynamodb
            .untag_resource()
            .resource_arn(&table_arn)
            .set_tag_keys(Some(removed.to_vec()))
            .send()
            .map_err_async("untagging DynamoDB table", &infra.table)
            .await?;
    }

    Ok(())
}

/// Delete the ledger table.
pub(crate) async fn delete(c: &AwsClients, infra: &Infra, failed: &mut Failures) {
    let name = &infra.table;
    if name.is_empty() {
        return;
    }
    let what = "deleting DynamoDB table";
    // ResourceInUseException: the table is still CREATING or UPDATING (a create rolled back at once).
    let r = retry_while(
        what,
        name,
        NAME_REUSE_TIMEOUT,
        |e| e.code.as_deref() == Some("ResourceInUseException"),
        || {
            c.dynamodb
                .delete_table()
                .table_name(name)
                .send()
                .map_err_async(what, name)
        },
    )
    .await
    .map(|_| ());
    if r.as_ref().is_err_and(|e| !e.is_not_found()) {
        failed.step(r);
        return;
    }
    // Gone only once DescribeTable no longer finds it: until then the name cannot be used again.
    failed.step(
        wait_gone(
            "waiting for DynamoDB table deletion",
            name,
            NAME_REUSE_TIMEOUT,
            || {
                c.dynamodb
                    .describe_table()
                    .table_name(name)
                    .send()
                    .map_err_async("waiting for DynamoDB table deletion", name)
            },
        )
        .await,
    );
}
