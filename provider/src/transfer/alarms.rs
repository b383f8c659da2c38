//! What operators see and hear: the scaling and dead-letter alarms, the SNS topic and its email subscription,
//! the dashboard.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, Statistic};
use serde_json::{json, Value};

use super::delete::Failures;
use super::infra::{present, spec_name, Infra, MapErrAsync, Names, Owner, ProvisionError, Result};
use super::spec::{Payload, TransferSpec};
use crate::aws::AwsClients;

pub(crate) fn cw_tags(tags: &BTreeMap<String, String>) -> Vec<aws_sdk_cloudwatch::types::Tag> {
    tags.iter()
        .map(|(k, v)| {
            aws_sdk_cloudwatch::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
        })
        .collect()
}

/// The dashboard: queue depths and fleet size (AWS's own metrics), and what the workers publish
/// ([`dth_core::metrics::PUBLISHED`], under the transfer's name).
/// Latencies are published as statistic sets, of which CloudWatch keeps no percentiles: average and maximum.
pub(crate) fn dashboard_body(region: &str, n: &Names) -> String {
    let name = n.transfer.as_str();
    use dth_core::metrics::{DIMENSION, NAMESPACE};
    let sqs = |metric: &str, queue: &str, label: &str| json!(["AWS/SQS", metric, "QueueName", queue, {"label": label}]);
    let dth = |metric: &str, label: &str, stat: &str| json!([NAMESPACE, metric, DIMENSION, name, {"label": label, "stat": stat}]);
    let widget = |x: i32, y: i32, title: &str, metrics: Vec<Value>| {
        json!({
            "type": "metric", "x": x, "y": y, "width": 12, "height": 6,
            "properties": {"title": title, "region": region, "stat": "Maximum", "period": 60, "view": "timeSeries",
                           "metrics": metrics}
        })
    };
    json!({"widgets": [
        widget(0, 0, "Jobs waiting", vec![sqs("ApproximateNumberOfMessagesVisible", &n.queue, "visible")]),
        widget(12, 0, "Jobs in flight", vec![sqs("ApproximateNumberOfMessagesNotVisible", &n.queue, "in flight")]),
        widget(0, 6, "Dead letters", vec![sqs("ApproximateNumberOfMessagesVisible", &n.dlq, "dead letters")]),
        widget(12, 6, "Instances in service", vec![
            json!(["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", n.worker_asg, {"label": "workers"}]),
            json!(["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", n.finder_asg, {"label": "finder"}]),
        ]),
        widget(0, 12, "Copied per minute", vec![
            dth("ObjectsCopied", "objects", "Sum"),
            dth("ObjectsFailed", "failed", "Sum"),
            dth("Retries", "retries", "Sum"),
        ]),
        widget(12, 12, "Bytes copied per minute", vec![dth("BytesCopied", "bytes", "Sum")]),
        widget(0, 18, "Job latency (ms)", vec![
            dth("JobLatency", "average", "Average"),
            dth("JobLatency", "max", "Maximum"),
        ]),
        widget(12, 18, "Part latency (ms)", vec![
            dth("PartLatency", "average", "Average"),
            dth("PartLatency", "max", "Maximum"),
        ]),
    ]})
    .to_string()
}

/// Refuses to go on when an alarm or the dashboard a create would write exists already and is not ours:
/// PutMetricAlarm and PutDashboard overwrite whatever has the name. Alarms carry our tags; a dashboard has none,
/// so any dashboard of the name is someone else's (a create writes it once, after this check).
pub(crate) async fn ensure_names_free(c: &AwsClients, n: &Names, infra: &Infra) -> Result<()> {
    let what = "checking CloudWatch alarm names";
    let alarms = c
        .cloudwatch
        .describe_alarms()
        .alarm_names(&n.backlog_alarm)
        .alarm_names(&n.empty_alarm)
        .alarm_names(&n.dead_letter_alarm)
        .send()
        .map_err_async(what, &n.dead_letter_alarm)
        .await?;
    for a in alarms.metric_alarms() {
        let (Some(name), Some(arn)) = (a.alarm_name(), a.alarm_arn()) else {
            continue;
        };
        let tags = c
            .cloudwatch
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .map_err_async(what, name)
            .await?;
        Owner::of(
            tags.tags()
                .iter()
                .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
            spec_name(infra),
            &infra.creation_id,
        )
        .ensure_ours("CloudWatch alarm", name)?;
    }
    let dashboard = present(
        c.cloudwatch
            .get_dashboard()
            .dashboard_name(&n.dashboard)
            .send()
            .map_err_async("checking CloudWatch dashboard name", &n.dashboard)
            .await,
    )?;
    if dashboard.is_some() {
        Owner::Foreign.ensure_ours("CloudWatch dashboard", &n.dashboard)?;
    }
    Ok(())
}

pub(crate) async fn put_dashboard(c: &AwsClients, n: &Names, infra: &mut Infra) -> Result<()> {
    c.cloudwatch
        .put_dashboard()
        .dashboard_name(&n.dashboard)
        .dashboard_body(dashboard_body(&infra.region, n))
        .send()
        .await
        .map_err(|e| ProvisionError::sdk("creating CloudWatch dashboard", &n.dashboard, e))?;
    infra.dashboard = n.dashboard.clone();
    Ok(())
}

pub(crate) async fn create_topic(
    c: &AwsClients,
    n: &Names,
    email: &str,
    infra: &mut Infra,
) -> Result<()> {
    let what = "creating SNS topic";
    let tags = infra
        .tags
        .iter()
        .map(|(k, v)| {
            aws_sdk_sns::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| ProvisionError::new(what, &n.topic, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let out = c
        .sns
        .create_topic()
        .name(&n.topic)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, &n.topic, e))?;
    let topic = out
        .topic_arn()
        .ok_or_else(|| ProvisionError::new(what, &n.topic, "the response has no topic ARN"))?
        .to_owned();
    // CreateTopic returns an existing topic of the name when its attributes and tags match: whose is it?
    let found = c
        .sns
        .list_tags_for_resource()
        .resource_arn(&topic)
        .send()
        .map_err_async(what, &n.topic)
        .await?;
    Owner::of(
        found.tags().iter().map(|t| (t.key(), t.value())),
        spec_name(infra),
        &infra.creation_id,
    )
    .ensure_ours("SNS topic", &n.topic)?;
    infra.topic_arn = Some(topic.clone());
    infra.subscription_arn = Some(subscribe(c, &topic, email).await?);
    Ok(())
}

pub(crate) async fn subscribe(c: &AwsClients, topic: &str, email: &str) -> Result<String> {
    let what = "subscribing to SNS topic";
    let out = c
        .sns
        .subscribe()
        .topic_arn(topic)
        .protocol("email")
        .endpoint(email)
        // The real ARN even while the subscription waits for the recipient's confirmation.
        .return_subscription_arn(true)
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, email, e))?;
    Ok(out.subscription_arn().unwrap_or_default().to_owned())
}

pub(crate) async fn put_dead_letter_alarm(
    c: &AwsClients,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    c.cloudwatch
        .put_metric_alarm()
        .alarm_name(&n.dead_letter_alarm)
        .alarm_description(
            "Data Transfer Hub: jobs failed max_attempts times and were dead-lettered",
        )
        .namespace("AWS/SQS")
        .metric_name("ApproximateNumberOfMessagesVisible")
        .dimensions(Dimension::builder().name("QueueName").value(&n.dlq).build())
        .statistic(Statistic::Maximum)
        .period(300)
        .evaluation_periods(1)
        .threshold(1.0)
        .comparison_operator(ComparisonOperator::GreaterThanOrEqualToThreshold)
        .treat_missing_data("notBreaching")
        .set_alarm_actions(infra.topic_arn.clone().map(|t| vec![t]))
        .set_tags(Some(cw_tags(&infra.tags)))
        .send()
        .await
        .map_err(|e| ProvisionError::sdk("creating CloudWatch alarm", &n.dead_letter_alarm, e))?;
    if !infra.alarm_names.contains(&n.dead_letter_alarm) {
        infra.alarm_names.push(n.dead_letter_alarm.clone());
    }
    Ok(())
}

pub(crate) async fn update_alarm_email<P: Payload>(
    c: &AwsClients,
    old: &TransferSpec<P>,
    new: &TransferSpec<P>,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    if old.alarm_email == new.alarm_email && infra.topic_arn.is_some() == new.alarm_email.is_some()
    {
        return Ok(());
    }
    if let Some(sub) = infra.subscription_arn.take() {
        if sub.starts_with("arn:") {
            let r = c
                .sns
                .unsubscribe()
                .subscription_arn(&sub)
                .send()
                .map_err_async("deleting SNS subscription", &sub)
                .await;
            if let Err(e) = r {
                if !e.is_not_found() {
                    infra.subscription_arn = Some(sub);
                    return Err(e);
                }
            }
        }
    }
    match &new.alarm_email {
        Some(email) => {
            if let Some(topic) = infra.topic_arn.clone() {
                infra.subscription_arn = Some(subscribe(c, &topic, email).await?);
            } else {
                create_topic(c, n, email, infra).await?;
                put_dead_letter_alarm(c, n, infra).await?;
            }
        }
        None => {
            if let Some(topic) = infra.topic_arn.take() {
                // The alarm first, so that it never points at a deleted topic.
                put_dead_letter_alarm(c, n, infra).await?;
                let r = c
                    .sns
                    .delete_topic()
                    .topic_arn(&topic)
                    .send()
                    .map_err_async("deleting SNS topic", &topic)
                    .await;
                if let Err(e) = r {
                    if !e.is_not_found() {
                        infra.topic_arn = Some(topic);
                        return Err(e);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Put `tags` on the alarms and the topic and take `removed` off.
pub(crate) async fn retag(
    c: &AwsClients,
    infra: &Infra,
    tags: &BTreeMap<String, String>,
    removed: &[String],
) -> Result<()> {
    let p = crate::aws::partition_of(&infra.region);
    let account = super::policy::account_of(&infra.dlq_arn).unwrap_or("");
    for alarm in &infra.alarm_names {
        let arn = format!(
            "arn:{p}:cloudwatch:{}:{account}:alarm:{alarm}",
            infra.region
        );
        c.cloudwatch
            .tag_resource()
            .resource_arn(&arn)
            .set_tags(Some(cw_tags(tags)))
            .send()
            .map_err_async("tagging CloudWatch alarm", alarm)
            .await?;
        if !removed.is_empty() {
            c.cloudwatch
                .untag_resource()
                .resource_arn(&arn)
                .set_tag_keys(Some(removed.to_vec()))
                .send()
                .map_err_async("untagging CloudWatch alarm", alarm)
                .await?;
        }
    }

    if let Some(topic) = &infra.topic_arn {
        let sns_tags = tags
            .iter()
            .map(|(k, v)| {
                aws_sdk_sns::types::Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .map_err(|e| ProvisionError::new("tagging SNS topic", topic, e))
            })
            .collect::<Result<Vec<_>>>()?;
        c.sns
            .tag_resource()
            .resource_arn(topic)
            .set_tags(Some(sns_tags))
            .send()
            .map_err_async("tagging SNS topic", topic)
            .await?;
        if !removed.is_empty() {
            c.sns
                .untag_resource()
                .resource_arn(topic)
                .set_tag_keys(Some(removed.to_vec()))
                .send()
                .map_err_async("untagging SNS topic", topic)
                .await?;
        }
    }
    Ok(())
}

/// Delete the alarms, the email subscription, the topic and the dashboard (each tolerating its absence).
pub(crate) async fn delete(c: &AwsClients, infra: &Infra, failed: &mut Failures) {
    if !infra.alarm_names.is_empty() {
        failed.step(
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
        failed.step(
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
        failed.step(
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
        failed.step(
            c.cloudwatch
                .delete_dashboards()
                .dashboard_names(&infra.dashboard)
                .send()
                .map_err_async("deleting CloudWatch dashboard", &infra.dashboard)
                .await
                .map(|_| ()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_names_the_queues_and_groups() {
        let body = dashboard_body("us-east-1", &Names::new("x"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["widgets"].as_array().map(Vec::len), Some(8));
        for name in ["dth-x-jobs", "dth-x-dlq", "dth-x-worker", "dth-x-finder"] {
            assert!(body.contains(name), "{name}");
        }
        // Every metric the workers publish is graphed, under the transfer's name.
        for metric in dth_core::metrics::names() {
            assert!(
                body.contains(&format!(
                    r#"["DataTransferHub","{metric}","TransferName","x","#
                )),
                "{metric} not graphed: {body}"
            );
        }
    }
}
