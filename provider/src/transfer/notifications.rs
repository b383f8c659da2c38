//! Our entry in the source bucket's event notification configuration (`source.events`): S3 sends object events
//! straight to the job queue.

use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter,
    QueueConfiguration, S3KeyFilter,
};
use dth_core::config::EventsMode;

use super::infra::{Infra, MapErrAsync, Names, ProvisionError, Result};
use super::spec::TransferSpec;
use crate::aws::AwsClients;

/// Adds our queue configuration to the source bucket's notifications, keeping every other entry.
pub(crate) async fn add(
    c: &AwsClients,
    spec: &TransferSpec,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let bucket = &spec.source.bucket;
    let what = "adding S3 event notification";
    let current = bucket_notifications(c, bucket).await?;
    let mut events = vec![Event::from("s3:ObjectCreated:*")];
    if spec.source.events == EventsMode::CreateAndDelete {
        events.push(Event::from("s3:ObjectRemoved:*"));
    }
    let mut ours = QueueConfiguration::builder()
        .id(&n.notification_id)
        .queue_arn(&infra.queue_arn)
        .set_events(Some(events));
    if !spec.source.prefix.is_empty() {
        ours = ours.filter(
            NotificationConfigurationFilter::builder()
                .key(
                    S3KeyFilter::builder()
                        .filter_rules(
                            FilterRule::builder()
                                .name(FilterRuleName::Prefix)
                                .value(&spec.source.prefix)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        );
    }
    let ours = ours
        .build()
        .map_err(|e| ProvisionError::new(what, bucket, e))?;
    // An entry of our id for another queue is another transfer's (of the same name): never overwritten.
    if let Some(other) = current
        .queue_configurations()
        .iter()
        .find(|q| q.id() == Some(n.notification_id.as_str()) && q.queue_arn() != infra.queue_arn)
    {
        let mut e = ProvisionError::new(
            what,
            bucket,
            format!(
                "the bucket already notifies {} under the id {:?}: another transfer of this name owns it, and it \
                 is left as it is. Choose another name (or name_prefix)",
                other.queue_arn(),
                n.notification_id
            ),
        );
        e.code = Some(ProvisionError::OWNED_ELSEWHERE.into());
        return Err(e);
    }
    let mut queues: Vec<QueueConfiguration> = current
        .queue_configurations()
        .iter()
        .filter(|q| q.id() != Some(n.notification_id.as_str()))
        .cloned()
        .collect();
    queues.push(ours);
    let config = NotificationConfiguration::builder()
        .set_topic_configurations(Some(current.topic_configurations().to_vec()))
        .set_queue_configurations(Some(queues))
        .set_lambda_function_configurations(Some(current.lambda_function_configurations().to_vec()))
        .set_event_bridge_configuration(current.event_bridge_configuration().cloned())
        .build();
    c.s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(config)
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, bucket, e))?;
    infra.notification_id = Some(n.notification_id.clone());
    Ok(())
}

/// The bucket's event notification configuration. Some S3 implementations answer for a bucket that has none
/// with an empty document under another root element, which the SDK refuses to parse: an HTTP 200 whose body
/// names no configuration at all is read as "none".
pub(crate) async fn bucket_notifications(
    c: &AwsClients,
    bucket: &str,
) -> Result<aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput>{
    let call = Box::pin(
        c.s3.get_bucket_notification_configuration()
            .bucket(bucket)
            .send(),
    );
    match call.await {
        Ok(out) => Ok(out),
        Err(e) => {
            let empty = e.raw_response().is_some_and(|r| {
                r.status().as_u16() == 200
                    && r.body()
                        .bytes()
                        .is_some_and(|b| !String::from_utf8_lossy(b).contains("Configuration"))
            });
            if empty {
                Ok(aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput::builder().build())
            } else {
                Err(ProvisionError::sdk(
                    "reading S3 event notifications",
                    bucket,
                    e,
                ))
            }
        }
    }
}

/// Takes only our entry out of the bucket's notification configuration.
pub(crate) async fn remove(c: &AwsClients, bucket: &str, id: &str) -> Result<()> {
    let current = super::notifications::bucket_notifications(c, bucket).await?;
    if !current
        .queue_configurations()
        .iter()
        .any(|q| q.id() == Some(id))
    {
        return Ok(());
    }
    let queues = current
        .queue_configurations()
        .iter()
        .filter(|q| q.id() != Some(id))
        .cloned()
        .collect();
    let config = NotificationConfiguration::builder()
        .set_topic_configurations(Some(current.topic_configurations().to_vec()))
        .set_queue_configurations(Some(queues))
        .set_lambda_function_configurations(Some(current.lambda_function_configurations().to_vec()))
        .set_event_bridge_configuration(current.event_bridge_configuration().cloned())
        .build();
    c.s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(config)
        .send()
        .map_err_async("removing S3 event notification", bucket)
        .await
        .map(|_| ())
}
