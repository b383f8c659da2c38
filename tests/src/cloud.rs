//! The provider's view of the local world: its configuration pointed at a moto server, and what of a transfer
//! is left in the cloud after it is deleted.

use dth_provider::aws::{AwsClients, ProviderConfig, ServiceEndpoints};
use dth_provider::transfer::Names;

use crate::REGION;

/// A provider configuration with every service endpoint at `endpoint` (a moto server).
pub fn provider_config(endpoint: &str) -> ProviderConfig {
    let e = Some(endpoint.to_owned());
    ProviderConfig {
        region: Some(REGION.into()),
        access_key: Some("test".into()),
        secret_key: Some("test".into()),
        endpoints: ServiceEndpoints {
            s3: e.clone(),
            sqs: e.clone(),
            dynamodb: e.clone(),
            autoscaling: e.clone(),
            ec2: e.clone(),
            iam: e.clone(),
            secretsmanager: e.clone(),
            cloudwatch: e.clone(),
            sns: e.clone(),
            sts: e.clone(),
            logs: e.clone(),
            ecr: e,
        },
        s3_use_path_style: true,
        ..Default::default()
    }
}

/// The provider's clients for [`provider_config`].
pub async fn clients(endpoint: &str) -> AwsClients {
    AwsClients::new(&provider_config(endpoint))
        .await
        .expect("provider clients")
}

/// Ids of the bucket's queue notifications. moto answers a bucket without any with a document the SDK cannot
/// parse (another root element): that reads as none.
pub async fn notification_ids(c: &AwsClients, bucket: &str) -> Vec<String> {
    match c
        .s3
        .get_bucket_notification_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => out
            .queue_configurations()
            .iter()
            .filter_map(|q| q.id().map(str::to_owned))
            .collect(),
        Err(e) => {
            let body = e
                .raw_response()
                .and_then(|r| r.body().bytes())
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            assert!(
                !body.contains("Configuration"),
                "bucket notifications: {e:?}"
            );
            Vec::new()
        }
    }
}

/// Everything named `dth-<name>-*` (and the log group `/dth/<name>`) that moto still holds, by kind.
pub async fn leftovers(c: &AwsClients, name: &str, source_bucket: &str) -> Vec<String> {
    let n = Names::new(name);
    let prefix = format!("dth-{name}-");
    let mut left = Vec::new();
    let queues = c
        .sqs
        .list_queues()
        .queue_name_prefix(&prefix)
        .send()
        .await
        .expect("list queues");
    left.extend(queues.queue_urls().iter().map(|u| format!("queue {u}")));
    let tables = c.dynamodb.list_tables().send().await.expect("list tables");
    left.extend(
        tables
            .table_names()
            .iter()
            .filter(|t| t.starts_with(&prefix))
            .map(|t| format!("table {t}")),
    );
    if c.iam.get_role().role_name(&n.role).send().await.is_ok() {
        left.push(format!("role {}", n.role));
    }
    if c.iam
        .get_instance_profile()
        .instance_profile_name(&n.instance_profile)
        .send()
        .await
        .is_ok()
    {
        left.push(format!("instance profile {}", n.instance_profile));
    }
    let lts = c
        .ec2
        .describe_launch_templates()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("launch-template-name")
                .values(&n.finder_launch_template)
                .values(&n.worker_launch_template)
                .build(),
        )
        .send()
        .await
        .expect("describe launch templates");
    left.extend(
        lts.launch_templates()
            .iter()
            .map(|t| format!("launch template {:?}", t.launch_template_name())),
    );
    let sgs = c
        .ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("group-name")
                .values(&n.security_group)
                .build(),
        )
        .send()
        .await
        .expect("describe security groups");
    left.extend(
        sgs.security_groups()
            .iter()
            .map(|g| format!("security group {:?}", g.group_id())),
    );
    let groups = c
        .autoscaling
        .describe_auto_scaling_groups()
        .send()
        .await
        .expect("describe groups");
    left.extend(
        groups
            .auto_scaling_groups()
            .iter()
            .filter_map(|g| g.auto_scaling_group_name())
            .filter(|g| g.starts_with(&prefix))
            .map(|g| format!("group {g}")),
    );
    let alarms = c
        .cloudwatch
        .describe_alarms()
        .alarm_name_prefix(&prefix)
        .send()
        .await
        .expect("describe alarms");
    left.extend(
        alarms
            .metric_alarms()
            .iter()
            .map(|a| format!("alarm {:?}", a.alarm_name())),
    );
    let dashboards = c
        .cloudwatch
        .list_dashboards()
        .dashboard_name_prefix(&prefix)
        .send()
        .await
        .expect("list dashboards");
    left.extend(
        dashboards
            .dashboard_entries()
            .iter()
            .map(|d| format!("dashboard {:?}", d.dashboard_name())),
    );
    let log_groups = c
        .logs
        .describe_log_groups()
        .log_group_name_prefix(&n.log_group)
        .send()
        .await
        .expect("describe log groups");
    left.extend(
        log_groups
            .log_groups()
            .iter()
            .filter_map(|g| g.log_group_name())
            .filter(|g| *g == n.log_group)
            .map(|g| format!("log group {g}")),
    );
    let topics = c.sns.list_topics().send().await.expect("list topics");
    left.extend(
        topics
            .topics()
            .iter()
            .filter_map(|t| t.topic_arn())
            .filter(|a| a.contains(&prefix))
            .map(|a| format!("topic {a}")),
    );
    left.extend(
        notification_ids(c, source_bucket)
            .await
            .into_iter()
            .filter(|id| *id == n.notification_id)
            .map(|id| format!("notification {id}")),
    );
    left
}
