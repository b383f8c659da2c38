//! The job queue and its dead-letter queue: created (the DLQ first, so that the queue's redrive policy can name
//! it), read for depth and redrive, retagged, their redrive changed in place, deleted.

use std::collections::BTreeMap;

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::json;

use super::policy::queue_policy;

use super::delete::Failures;
use super::infra::{retry_while, Infra, MapErrAsync, Names, Owner, ProvisionError, Result};
use super::spec::{Payload, TransferSpec};
use crate::aws::AwsClients;

/// SQS's longest retention: a job waits up to 14 days for a worker.
pub(crate) const RETENTION_SECS: &str = "1209600";

/// A job's visibility before its first heartbeat (the worker extends it while it copies).
pub(crate) const VISIBILITY_SECS: &str = "900";

pub(crate) fn redrive_policy(dlq_arn: &str, max_attempts: u32) -> String {
    json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_attempts}).to_string()
}

pub(crate) async fn create<P: Payload>(
    c: &AwsClients,
    spec: &TransferSpec<P>,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let what = "creating SQS dead-letter queue";
    let mut req = c
        .sqs
        .create_queue()
        .queue_name(&n.dlq)
        .attributes(QueueAttributeName::MessageRetentionPeriod, RETENTION_SECS);
    for (k, v) in &infra.tags {
        req = req.tags(k, v);
    }
    infra.dlq_url = create_ours(c, req, &n.dlq, what, infra).await?;
    infra.dlq_arn = queue_arn(c, &infra.dlq_url, &n.dlq, what).await?;

    let what = "creating SQS queue";
    // Same account and region as the dead-letter queue: its ARN is known before the queue exists, so the
    // S3 policy can be part of the create call.
    let arn = match infra.dlq_arn.rsplit_once(':') {
        Some((head, _)) => format!("{head}:{}", n.queue),
        None => {
            return Err(ProvisionError::new(
                what,
                &n.queue,
                format!("unexpected dead-letter queue ARN {:?}", infra.dlq_arn),
            ))
        }
    };
    let mut req = c
        .sqs
        .create_queue()
        .queue_name(&n.queue)
        .attributes(QueueAttributeName::VisibilityTimeout, VISIBILITY_SECS)
        .attributes(QueueAttributeName::MessageRetentionPeriod, RETENTION_SECS)
        .attributes(
            QueueAttributeName::RedrivePolicy,
            redrive_policy(&infra.dlq_arn, spec.max_attempts),
        );
    if let Some(source) = spec.notifications() {
        req = req.attributes(
            QueueAttributeName::Policy,
            queue_policy(&arn, &source.bucket, c.partition())?,
        );
    }
    for (k, v) in &infra.tags {
        req = req.tags(k, v);
    }
    infra.queue_url = create_ours(c, req, &n.queue, what, infra).await?;
    infra.queue_arn = arn;
    Ok(())
}

/// How long SQS refuses a deleted queue's name (`QueueDeletedRecently`): AWS documents 60 seconds; a margin on
/// top, as terraform-provider-aws's `queueCreatedTimeout` has.
const NAME_REUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// Send a CreateQueue and make sure the queue it answers with is ours: CreateQueue is idempotent on a name
/// (it returns an existing queue whose attributes match, without touching its tags), so another transfer's
/// queue of the same name would come back as if just made. Its tags say whose it is; a queue that is not ours is
/// never recorded in `infra`, so a rollback leaves it alone. The name of a queue deleted in the last minute is
/// retried until SQS releases it.
async fn create_ours(
    c: &AwsClients,
    req: aws_sdk_sqs::operation::create_queue::builders::CreateQueueFluentBuilder,
    name: &str,
    what: &str,
    infra: &Infra,
) -> Result<String> {
    let out = retry_while(
        what,
        name,
        NAME_REUSE_TIMEOUT,
        is_queue_deleted_recently,
        || req.clone().send().map_err_async(what, name),
    )
    .await;
    let url = match out {
        Ok(out) => out
            .queue_url()
            .ok_or_else(|| ProvisionError::new(what, name, "the response has no queue URL"))?
            .to_owned(),
        // Same name, other attributes: someone else's queue (or ours from an interrupted create).
        Err(e)
            if e.code.as_deref().is_some_and(|c| {
                c.ends_with("QueueNameExists") || c.ends_with("QueueAlreadyExists")
            }) =>
        {
            let out = c
                .sqs
                .get_queue_url()
                .queue_name(name)
                .send()
                .map_err_async(what, name)
                .await?;
            let url = out.queue_url().unwrap_or_default().to_owned();
            owner(c, &url, name, infra)
                .await?
                .ensure_ours("SQS queue", name)?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    owner(c, &url, name, infra)
        .await?
        .ensure_ours("SQS queue", name)?;
    Ok(url)
}

/// Whose the queue at `url` is, by its tags.
async fn owner(c: &AwsClients, url: &str, name: &str, infra: &Infra) -> Result<Owner> {
    let tags = c
        .sqs
        .list_queue_tags()
        .queue_url(url)
        .send()
        .map_err_async("reading SQS queue tags", name)
        .await?;
    let found = tags.tags().into_iter().flatten();
    Ok(Owner::of(
        found.map(|(k, v)| (k.as_str(), v.as_str())),
        &infra
            .tags
            .get(super::infra::TRANSFER_TAG)
            .cloned()
            .unwrap_or_default(),
        &infra.creation_id,
    ))
}

/// SQS's `QueueDeletedRecently` (the JSON protocol reports it with or without the `AWS.SimpleQueueService.`
/// prefix of the query protocol's code).
fn is_queue_deleted_recently(e: &ProvisionError) -> bool {
    e.code
        .as_deref()
        .is_some_and(|c| c.ends_with("QueueDeletedRecently"))
}

/// Put back the settings the provider gives both queues (after a hand edit): visibility timeout, retention,
/// redrive and, with S3 events, the policy letting the source bucket send.
pub(crate) async fn put_settings<P: Payload>(
    c: &AwsClients,
    spec: &TransferSpec<P>,
    infra: &Infra,
) -> Result<()> {
    let what = "putting back SQS queue settings";
    let mut req = c
        .sqs
        .set_queue_attributes()
        .queue_url(&infra.queue_url)
        .attributes(QueueAttributeName::VisibilityTimeout, VISIBILITY_SECS)
        .attributes(QueueAttributeName::MessageRetentionPeriod, RETENTION_SECS)
        .attributes(
            QueueAttributeName::RedrivePolicy,
            redrive_policy(&infra.dlq_arn, spec.max_attempts),
        );
    if let Some(source) = spec.notifications() {
        req = req.attributes(
            QueueAttributeName::Policy,
            queue_policy(&infra.queue_arn, &source.bucket, c.partition())?,
        );
    }
    req.send().map_err_async(what, &infra.queue_url).await?;
    c.sqs
        .set_queue_attributes()
        .queue_url(&infra.dlq_url)
        .attributes(QueueAttributeName::MessageRetentionPeriod, RETENTION_SECS)
        .send()
        .map_err_async(what, &infra.dlq_url)
        .await?;
    Ok(())
}

async fn queue_arn(c: &AwsClients, url: &str, name: &str, what: &str) -> Result<String> {
    let out = c
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, name, e))?;
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| ProvisionError::new(what, name, "the queue has no QueueArn attribute"))
}

pub(crate) fn attr(
    attrs: Option<&std::collections::HashMap<QueueAttributeName, String>>,
    name: QueueAttributeName,
) -> u64 {
    attrs
        .and_then(|a| a.get(&name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// maxReceiveCount of a queue's RedrivePolicy attribute.
pub(crate) fn max_receive_count(
    attrs: Option<&std::collections::HashMap<QueueAttributeName, String>>,
) -> Option<u32> {
    let text = attrs?.get(&QueueAttributeName::RedrivePolicy)?;
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    match &v["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        // Some implementations store it as a string.
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Put `tags` on both queues and take `removed` off.
pub(crate) async fn retag(
    c: &AwsClients,
    infra: &Infra,
    tags: &BTreeMap<String, String>,
    removed: &[String],
) -> Result<()> {
    for url in [&infra.queue_url, &infra.dlq_url] {
        c.sqs
            .tag_queue()
            .queue_url(url)
            .set_tags(Some(tags.clone().into_iter().collect()))
            .send()
            .map_err_async("tagging SQS queue", url)
            .await?;
        if !removed.is_empty() {
            c.sqs
                .untag_queue()
                .queue_url(url)
                .set_tag_keys(Some(removed.to_vec()))
                .send()
                .map_err_async("untagging SQS queue", url)
                .await?;
        }
    }

    Ok(())
}

/// Delete both queues.
pub(crate) async fn delete(c: &AwsClients, infra: &Infra, failed: &mut Failures) {
    for url in [&infra.queue_url, &infra.dlq_url] {
        if !url.is_empty() {
            failed.step(
                c.sqs
                    .delete_queue()
                    .queue_url(url)
                    .send()
                    .map_err_async("deleting SQS queue", url)
                    .await
                    .map(|_| ()),
            );
        }
    }
}
