//! Our entry in the source bucket's event notification configuration (`source.events`): S3 sends object events
//! straight to the job queue.

use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter,
    QueueConfiguration, S3KeyFilter,
};
use dth_core::config::EventsMode;

use super::infra::{Infra, MapErrAsync, Names, ProvisionError, Result};
use super::spec::Source;
use crate::aws::AwsClients;

/// Adds our queue configuration to the source bucket's notifications, keeping every other entry.
pub(crate) async fn add(
    c: &AwsClients,
    source: &Source,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let bucket = &source.bucket;
    let what = "adding S3 event notification";
    let mut events = vec![Event::from("s3:ObjectCreated:*")];
    if source.events == EventsMode::CreateAndDelete {
        events.push(Event::from("s3:ObjectRemoved:*"));
    }
    let mut ours = QueueConfiguration::builder()
        .id(&n.notification_id)
        .queue_arn(&infra.queue_arn)
        .set_events(Some(events));
    if !source.prefix.is_empty() {
        ours = ours.filter(
            NotificationConfigurationFilter::builder()
                .key(
                    S3KeyFilter::builder()
                        .filter_rules(
                            FilterRule::builder()
                                .name(FilterRuleName::Prefix)
                                .value(&source.prefix)
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
    let id = n.notification_id.as_str();
    let queue_arn = infra.queue_arn.clone();
    // Ours: our id for our queue (S3 may give the entry back normalised, so not compared field by field).
    let is_ours = |q: &QueueConfiguration| q.id() == Some(id) && q.queue_arn() == queue_arn;
    edit(
        c,
        bucket,
        what,
        |current| {
            // An entry of our id for another queue is another transfer's (of the same name): never overwritten.
            if let Some(other) = current
                .queue_configurations()
                .iter()
                .find(|q| q.id() == Some(id) && q.queue_arn() != queue_arn)
            {
                let mut e = ProvisionError::new(
                    what,
                    bucket,
                    format!(
                        "the bucket already notifies {} under the id {id:?}: another transfer of this name owns \
                         it, and it is left as it is. Choose another name (or name_prefix)",
                        other.queue_arn()
                    ),
                );
                e.code = Some(ProvisionError::OWNED_ELSEWHERE.into());
                return Err(e);
            }
            if current.queue_configurations().iter().any(is_ours) {
                return Ok(None);
            }
            let mut queues: Vec<QueueConfiguration> = current
                .queue_configurations()
                .iter()
                .filter(|q| q.id() != Some(id))
                .cloned()
                .collect();
            queues.push(ours.clone());
            Ok(Some(queues))
        },
        |current| current.queue_configurations().iter().any(is_ours),
    )
    .await?;
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
    let ours = |q: &QueueConfiguration| q.id() == Some(id);
    edit(
        c,
        bucket,
        "removing S3 event notification",
        |current| {
            if !current.queue_configurations().iter().any(ours) {
                return Ok(None);
            }
            Ok(Some(
                current
                    .queue_configurations()
                    .iter()
                    .filter(|q| !ours(q))
                    .cloned()
                    .collect(),
            ))
        },
        |current| !current.queue_configurations().iter().any(ours),
    )
    .await
}

type Notifications =
    aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput;

/// How many read-modify-write rounds [`edit`] makes before it gives up.
const EDIT_ROUNDS: u32 = 10;
/// Reads in a row, after a write, that must find the change in place (each 1.5–2.5 s after the last): another
/// writer's write from a document read before ours landed arrives within its own round trip, well inside the
/// 4.5 s this spans at least.
const CONFIRMATIONS: u32 = 3;

/// A read-modify-write of the bucket's notification configuration that keeps every other writer's entries and
/// does not lose its own to them. S3 has no conditional write for this configuration, and two transfers applied
/// at once on one source bucket (or any other application editing it) each read it, change their entry and
/// write the whole document back: the later write drops the earlier one's change. So after writing, `edit` reads
/// the configuration back [`CONFIRMATIONS`] times, a random 1.5–2.5 s apart (two writers' rounds drift apart
/// instead of staying in step), and redoes its change whenever `done` no longer holds — another writer's change, made from a document
/// read before ours was written, is then seen and kept. `change` returns the queue configurations to write, or
/// `None` when there is nothing to change; topics, Lambda functions and EventBridge are always kept as read.
async fn edit(
    c: &AwsClients,
    bucket: &str,
    what: &str,
    change: impl Fn(&Notifications) -> Result<Option<Vec<QueueConfiguration>>>,
    done: impl Fn(&Notifications) -> bool,
) -> Result<()> {
    let mut confirmed = 0;
    for _ in 0..EDIT_ROUNDS {
        let current = bucket_notifications(c, bucket).await?;
        match change(&current)? {
            Some(queues) => {
                confirmed = 0;
                let config = NotificationConfiguration::builder()
                    .set_topic_configurations(Some(current.topic_configurations().to_vec()))
                    .set_queue_configurations(Some(queues))
                    .set_lambda_function_configurations(Some(
                        current.lambda_function_configurations().to_vec(),
                    ))
                    .set_event_bridge_configuration(current.event_bridge_configuration().cloned())
                    .build();
                c.s3.put_bucket_notification_configuration()
                    .bucket(bucket)
                    .notification_configuration(config)
                    .send()
                    .map_err_async(what, bucket)
                    .await?;
            }
            None if done(&current) => {
                confirmed += 1;
                if confirmed == CONFIRMATIONS {
                    return Ok(());
                }
            }
            None => confirmed = 0,
        }
        tokio::time::sleep(jitter()).await;
    }
    Err(ProvisionError::new(
        what,
        bucket,
        format!(
            "the bucket's notification configuration kept changing under this write ({EDIT_ROUNDS} rounds): another \
             writer is editing it; apply again"
        ),
    ))
}

/// 1.5 to 2.5 s, at random.
fn jitter() -> std::time::Duration {
    let random = u64::from_str_radix(&super::infra::new_creation_id()[..4], 16).unwrap_or(0);
    std::time::Duration::from_millis(1500 + random % 1000)
}
