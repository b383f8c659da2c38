//! Delete: every resource a transfer created, newest first, each piece tolerating its absence. Copied data is
//! never touched; only incomplete multipart uploads the workers left under the destination prefix are aborted.

use std::time::Duration;

use aws_sdk_s3::types::NotificationConfiguration;

use super::create::MapErrAsync;
use super::infra::{Infra, ProvisionError, Result};
use super::spec::TransferSpec;
use crate::aws::AwsClients;

/// How long to wait for an Auto Scaling group's instances to terminate (the security group cannot go before).
const GROUP_GONE_TIMEOUT: Duration = Duration::from_secs(600);
/// Most multipart uploads aborted in one delete: a bound on the calls, not a limit that matters in practice.
const MAX_ABORTS: usize = 10_000;

/// Delete everything in `infra`. Returns notes for the user (aborted uploads, steps skipped); fails with every
/// piece that could not be deleted (the others are gone).
pub async fn delete(
    clients: &AwsClients,
    infra: &Infra,
    spec: &TransferSpec,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let failures = Box::pin(teardown(clients, infra, spec)).await;
    if !failures.is_empty() {
        let mut e = ProvisionError::new("deleting transfer", &spec.name, failures.join("; "));
        e.code = Some("DeleteFailed".into());
        return Err(e);
    }
    match Box::pin(abort_uploads(clients, spec)).await {
        Ok(0) => {}
        Ok(n) => notes.push(format!(
            "aborted {n} incomplete multipart upload(s) under s3://{}/{}",
            spec.destination.bucket, spec.destination.prefix
        )),
        Err(note) => notes.push(note),
    }
    Ok(notes)
}

/// Best effort, newest first: deletes every piece `infra` names (empty names are skipped, so a half-made
/// transfer is rolled back by the same code) and returns what could not be deleted.
pub(crate) async fn teardown(c: &AwsClients, infra: &Infra, spec: &TransferSpec) -> Vec<String> {
    let mut failed: Vec<String> = Vec::new();
    let mut step = |r: Result<()>| {
        if let Err(e) = r {
            if !e.is_not_found() {
                tracing::warn!(error = %e, "delete step failed");
                failed.push(e.to_string());
            }
        }
    };

    if let Some(id) = &infra.notification_id {
        step(remove_bucket_notification(c, &spec.source.bucket, id).await);
    }
    if !infra.alarm_names.is_empty() {
        step(
            c.cloudwatch
                .delete_alarms()
                .set_alarm_names(Some(infra.alarm_names.clone()))
                .send()
                .map_err_async("deleting CloudWatch alarms", &infra.alarm_names.join(","))
                .await
                .map(|_| ()),
        );
    }
    if let Some(sub) = infra
        .subscription_arn
        .as_deref()
        .filter(|s| s.starts_with("arn:"))
    {
        step(
            c.sns
                .unsubscribe()
                .subscription_arn(sub)
                .send()
                .map_err_async("deleting SNS subscription", sub)
                .await
                .map(|_| ()),
        );
    }
    if let Some(topic) = &infra.topic_arn {
        step(
            c.sns
                .delete_topic()
                .topic_arn(topic)
                .send()
                .map_err_async("deleting SNS topic", topic)
                .await
                .map(|_| ()),
        );
    }
    if !infra.dashboard.is_empty() {
        step(
            c.cloudwatch
                .delete_dashboards()
                .dashboard_names(&infra.dashboard)
                .send()
                .map_err_async("deleting CloudWatch dashboard", &infra.dashboard)
                .await
                .map(|_| ()),
        );
    }
    // Groups (with their scaling policies, scheduled actions and instances) before the launch templates,
    // instance profile and security group they use.
    for asg in [&infra.finder_asg, &infra.worker_asg] {
        if !asg.is_empty() {
            step(delete_group(c, asg).await);
        }
    }
    for asg in [&infra.finder_asg, &infra.worker_asg] {
        if !asg.is_empty() {
            step(wait_group_gone(c, asg).await);
        }
    }
    for id in [
        &infra.worker_launch_template_id,
        &infra.finder_launch_template_id,
    ] {
        if !id.is_empty() {
            step(
                c.ec2
                    .delete_launch_template()
                    .launch_template_id(id)
                    .send()
                    .map_err_async("deleting launch template", id)
                    .await
                    .map(|_| ()),
            );
        }
    }
    if let Some(sg) = &infra.security_group_id {
        step(delete_security_group(c, sg).await);
    }
    // After the groups: no instance is left to write to it.
    if !infra.log_group.is_empty() {
        step(super::logs::delete(c, &infra.log_group).await);
    }
    if !infra.instance_profile_name.is_empty() {
        if !infra.role_name.is_empty() {
            step(
                c.iam
                    .remove_role_from_instance_profile()
                    .instance_profile_name(&infra.instance_profile_name)
                    .role_name(&infra.role_name)
                    .send()
                    .map_err_async(
                        "removing IAM role from instance profile",
                        &infra.instance_profile_name,
                    )
                    .await
                    .map(|_| ()),
            );
        }
        step(
            c.iam
                .delete_instance_profile()
                .instance_profile_name(&infra.instance_profile_name)
                .send()
                .map_err_async(
                    "deleting IAM instance profile",
                    &infra.instance_profile_name,
                )
                .await
                .map(|_| ()),
        );
    }
    if !infra.role_name.is_empty() {
        if !infra.policy_name.is_empty() {
            step(
                c.iam
                    .delete_role_policy()
                    .role_name(&infra.role_name)
                    .policy_name(&infra.policy_name)
                    .send()
                    .map_err_async("deleting IAM role policy", &infra.policy_name)
                    .await
                    .map(|_| ()),
            );
        }
        step(
            c.iam
                .delete_role()
                .role_name(&infra.role_name)
                .send()
                .map_err_async("deleting IAM role", &infra.role_name)
                .await
                .map(|_| ()),
        );
    }
    if !infra.table.is_empty() {
        step(
            c.dynamodb
                .delete_table()
                .table_name(&infra.table)
                .send()
                .map_err_async("deleting DynamoDB table", &infra.table)
                .await
                .map(|_| ()),
        );
    }
    for url in [&infra.queue_url, &infra.dlq_url] {
        if !url.is_empty() {
            step(
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
    failed
}

async fn delete_group(c: &AwsClients, asg: &str) -> Result<()> {
    c.autoscaling
        .delete_auto_scaling_group()
        .auto_scaling_group_name(asg)
        // Terminate its instances too: a transfer being deleted has no work worth waiting for.
        .force_delete(true)
        .send()
        .map_err_async("deleting Auto Scaling group", asg)
        .await
        .map(|_| ())
}

async fn wait_group_gone(c: &AwsClients, asg: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + GROUP_GONE_TIMEOUT;
    loop {
        let out = c
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(asg)
            .send()
            .map_err_async("waiting for Auto Scaling group deletion", asg)
            .await?;
        if out.auto_scaling_groups().is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ProvisionError::new(
                "waiting for Auto Scaling group deletion",
                asg,
                "its instances are still terminating after 10 minutes",
            ));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn delete_security_group(c: &AwsClients, sg: &str) -> Result<()> {
    // Network interfaces of terminated instances linger for a minute or two after their group is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let r = c
            .ec2
            .delete_security_group()
            .group_id(sg)
            .send()
            .map_err_async("deleting security group", sg)
            .await
            .map(|_| ());
        match r {
            Err(e)
                if e.code.as_deref() == Some("DependencyViolation")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            other => return other,
        }
    }
}

/// Takes only our entry out of the bucket's notification configuration.
pub(crate) async fn remove_bucket_notification(
    c: &AwsClients,
    bucket: &str,
    id: &str,
) -> Result<()> {
    let current = super::create::bucket_notifications(c, bucket).await?;
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

/// Aborts the incomplete multipart uploads under the destination prefix (the workers' leftovers; completed
/// objects are never touched). Returns how many, or a note when the store cannot list uploads.
async fn abort_uploads(c: &AwsClients, spec: &TransferSpec) -> std::result::Result<usize, String> {
    let d = &spec.destination;
    if d.endpoint.is_some() || d.credentials_secret_arn.is_some() {
        // Written with other credentials or to another store: the provider's S3 client cannot see it.
        return Ok(0);
    }
    let mut aborted = 0;
    let mut key_marker: Option<String> = None;
    let mut upload_marker: Option<String> = None;
    loop {
        let out =
            c.s3.list_multipart_uploads()
                .bucket(&d.bucket)
                .prefix(&d.prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(upload_marker.clone())
                .send()
                .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let e = ProvisionError::sdk("listing multipart uploads", &d.bucket, e);
                // Stores without the API (and buckets already gone) have nothing we could abort.
                tracing::debug!(error = %e, "not aborting multipart uploads");
                return if e.is_not_found() || e.code.as_deref() == Some("NotImplemented") {
                    Ok(aborted)
                } else {
                    Err(format!(
                        "incomplete multipart uploads were not aborted: {e}"
                    ))
                };
            }
        };
        for u in out.uploads() {
            let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            match c
                .s3
                .abort_multipart_upload()
                .bucket(&d.bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
            {
                Ok(_) => aborted += 1,
                Err(e) => {
                    let e = ProvisionError::sdk("aborting multipart upload", key, e);
                    if !e.is_not_found() {
                        return Err(format!(
                            "incomplete multipart uploads were not all aborted: {e}"
                        ));
                    }
                }
            }
            if aborted >= MAX_ABORTS {
                return Ok(aborted);
            }
        }
        if out.is_truncated() != Some(true) {
            return Ok(aborted);
        }
        key_marker = out.next_key_marker().map(str::to_owned);
        upload_marker = out.next_upload_id_marker().map(str::to_owned);
        if key_marker.is_none() {
            return Ok(aborted);
        }
    }
}
