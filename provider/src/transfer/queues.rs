//! The job queue and its dead-letter queue: created (the DLQ first, so that the queue's redrive policy can name
//! it), read for depth and redrive, retagged, their redrive changed in place, deleted.

use std::collections::BTreeMap;

use aws_sdk_sqs::types::QueueAttributeName;
use dth_core::config::EventsMode;
use serde_json::json;

use super::policy::queue_policy;

use super::delete::Failures;
use super::infra::{Infra, MapErrAsync, Names, ProvisionError, Result};
use super::spec::TransferSpec;
use crate::aws::AwsClients;

/// SQS's longest retention: a job waits up to 14 days for a worker.
pub(crate) const RETENTION_SECS: &str = "1209600";

/// A job's visibility before its first heartbeat (the worker extends it while it copies).
pub(crate) const VISIBILITY_SECS: &str = "900";

pub(crate) fn redrive_policy(dlq_arn: &str, max_attempts: u32) -> String {
    json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_attempts}).to_string()
}

pub(crate) async fn create(
    c: &AwsClients,
    spec: &TransferSpec,
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
    let out = req
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, &n.dlq, e))?;
    infra.dlq_url = out
        .queue_url()
        .ok_or_else(|| ProvisionError::new(what, &n.dlq, "the response has no queue URL"))?
        .to_owned();
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
    if spec.source.events != EventsMode::None {
        req = req.attributes(
            QueueAttributeName::Policy,
            queue_policy(&arn, &spec.source.bucket, c.partition()),
        );
    }
    for (k, v) in &infra.tags {
        req = req.tags(k, v);
    }
    let out = req
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, &n.queue, e))?;
    infra.queue_url = out
        .queue_url()
        .ok_or_else(|| ProvisionError::new(what, &n.queue, "the response has no queue URL"))?
        .to_owned();
    infra.queue_arn = arn;
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
