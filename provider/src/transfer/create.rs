//! Create: every resource of a transfer, in dependency order; on failure, what was made is deleted again
//! (newest first) before the error is returned.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, StepAdjustment};
use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, Metric, MetricDataQuery, MetricStat, Statistic,
};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};
use aws_sdk_ec2::types::{
    Filter, InstanceType, LaunchTemplateBlockDeviceMappingRequest,
    LaunchTemplateEbsBlockDeviceRequest, LaunchTemplateHttpTokensState,
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData, ResourceType,
    TagSpecification, VolumeType,
};
use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter,
    QueueConfiguration, S3KeyFilter,
};
use aws_sdk_sqs::types::QueueAttributeName;
use base64::Engine;
use dth_core::config::EventsMode;
use dth_core::userdata::{self, LaunchSpec, Role};
use serde_json::{json, Value};

use super::delete::teardown;
use super::infra::{resource_tags, Infra, Names, ProvisionError, Result, DEFAULTS_TAG};
use super::policy::{access_policy, queue_policy, trust_policy};
use super::spec::{Schedule, TransferSpec};
use crate::aws::{AwsClients, ProviderConfig};

/// SQS's longest retention: a job waits up to 14 days for a worker.
pub(crate) const RETENTION_SECS: &str = "1209600";
/// A job's visibility before its first heartbeat (the worker extends it while it copies).
pub(crate) const VISIBILITY_SECS: &str = "900";
/// DTH's step scaling on the visible queue depth: (messages at least, instances added).
pub const SCALE_OUT_STEPS: [(u32, i32); 4] = [(100, 1), (500, 2), (2000, 5), (10000, 10)];
/// The queue has been empty this long before the fleet goes back to `min`.
pub const SCALE_IN_AFTER_MINUTES: i32 = 15;
const ROOT_VOLUME_GIB: i32 = 20;
/// How long to wait for IAM's eventual consistency (a new instance profile unknown to Auto Scaling) and for
/// DynamoDB to make a new table ACTIVE.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Create every resource of `spec`. On failure, everything already made is deleted again (newest first) and the
/// error names the step that failed; leftovers that could not be deleted are listed in
/// [`ProvisionError::cleanup`].
pub async fn create(
    clients: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec,
) -> Result<Infra> {
    // Without a limit there is no timeout; the fallback only satisfies the type.
    create_bounded(clients, cfg, spec, None)
        .await
        .unwrap_or_else(|t| {
            Err(ProvisionError::new(
                "creating transfer",
                &spec.name,
                format!("timed out after {:?}", t.limit),
            ))
        })
}

/// A [`create_within`] whose creation steps did not finish in time. What they had made was deleted again;
/// `cleanup` lists what could not be (as [`ProvisionError::cleanup`] does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    pub limit: Duration,
    pub cleanup: Vec<String>,
}

/// [`create`] with the creation steps bounded by `limit` (like [`tokio::time::timeout`], the outer `Err` is the
/// timeout). When the limit passes, the step in progress is abandoned and what was made is deleted again; the
/// rollback itself is not bounded, since stopping it halfway would leave part of a transfer behind that no state
/// records. (An AWS call in flight at that moment may still complete on AWS's side without being recorded.)
pub async fn create_within(
    clients: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec,
    limit: Duration,
) -> std::result::Result<Result<Infra>, TimedOut> {
    create_bounded(clients, cfg, spec, Some(limit)).await
}

async fn create_bounded(
    clients: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec,
    limit: Option<Duration>,
) -> std::result::Result<Result<Infra>, TimedOut> {
    let problems = spec.validate();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|(p, m)| format!("{p}: {m}")).collect();
        return Ok(Err(ProvisionError::new(
            "validating transfer",
            &spec.name,
            list.join("; "),
        )));
    }
    let mut infra = Infra {
        region: clients.region().to_owned(),
        tags: resource_tags(cfg, spec),
        ..Infra::default()
    };
    // Boxed: the SDK's futures are large, and a create awaits dozens of them (debug builds overflowed a
    // 2 MiB thread stack with the whole state machine inline).
    let steps = Box::pin(build(clients, cfg, spec, &mut infra));
    let built = match limit {
        None => Ok(steps.await),
        Some(limit) => tokio::time::timeout(limit, steps).await,
    };
    // `steps` is gone here (finished or dropped), so `infra` holds what was made, whatever happened.
    match built {
        Ok(Ok(())) => Ok(Ok(infra)),
        Ok(Err(mut e)) => {
            tracing::warn!(transfer = %spec.name, error = %e, "create failed; deleting what was made");
            e.cleanup = Box::pin(teardown(clients, &infra, spec)).await;
            Ok(Err(e))
        }
        Err(_elapsed) => {
            let limit = limit.unwrap_or_default();
            tracing::warn!(transfer = %spec.name, ?limit, "create timed out; deleting what was made");
            let cleanup = Box::pin(teardown(clients, &infra, spec)).await;
            Err(TimedOut { limit, cleanup })
        }
    }
}

async fn build(
    c: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec,
    infra: &mut Infra,
) -> Result<()> {
    let n = Names::new(&spec.name);
    if spec.source.events != EventsMode::None {
        // S3 delivers notifications only to a queue in the bucket's own region.
        if let Some(r) = spec.source.region.as_deref().filter(|r| *r != c.region()) {
            return Err(ProvisionError::new(
                "configuring S3 event notifications",
                &spec.source.bucket,
                format!(
                    "source.region {r} differs from the provider's region {}: S3 can only notify a queue in the \
                     bucket's region",
                    c.region()
                ),
            ));
        }
    }

    Box::pin(create_queues(c, spec, &n, infra)).await?;
    Box::pin(create_table(c, &n, infra)).await?;
    // Before the role (whose policy names it) and the launch templates (whose containers log to it).
    Box::pin(super::logs::create(c, &n, spec.log_retention_days, infra)).await?;
    Box::pin(create_role(c, spec, &n, infra)).await?;
    Box::pin(resolve_network(c, spec, &n, infra)).await?;
    Box::pin(resolve_ami(c, spec, infra)).await?;
    Box::pin(create_launch_templates(c, cfg, spec, &n, infra)).await?;
    Box::pin(create_worker_fleet(c, spec, &n, infra)).await?;
    Box::pin(create_finder_fleet(c, spec, &n, infra)).await?;
    Box::pin(put_dashboard(c, &n, infra)).await?;
    if let Some(email) = &spec.alarm_email {
        Box::pin(create_topic(c, &n, email, infra)).await?;
    }
    Box::pin(put_dead_letter_alarm(c, &n, infra)).await?;
    if spec.source.events != EventsMode::None {
        Box::pin(add_bucket_notification(c, spec, &n, infra)).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------- queues

pub(crate) fn redrive_policy(dlq_arn: &str, max_attempts: u32) -> String {
    json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_attempts}).to_string()
}

async fn create_queues(
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
            queue_policy(&arn, &spec.source.bucket, c.partition())?,
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

// ---------------------------------------------------------------- ledger

async fn create_table(c: &AwsClients, n: &Names, infra: &mut Infra) -> Result<()> {
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
    let out = req
        .send()
        .await
        .map_err(|err| ProvisionError::sdk(what, &n.table, err))?;
    infra.table = n.table.clone();
    if out.table_description().and_then(|d| d.table_status()) == Some(&TableStatus::Active) {
        return Ok(());
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

// ---------------------------------------------------------------- IAM

fn iam_tags(
    tags: &BTreeMap<String, String>,
    what: &str,
    name: &str,
) -> Result<Vec<aws_sdk_iam::types::Tag>> {
    tags.iter()
        .map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| ProvisionError::new(what, name, e))
        })
        .collect()
}

async fn create_role(
    c: &AwsClients,
    spec: &TransferSpec,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let what = "creating IAM role";
    let out = c
        .iam
        .create_role()
        .role_name(&n.role)
        .assume_role_policy_document(trust_policy(c.partition()))
        .description(format!(
            "Data Transfer Hub transfer {} (finder and workers)",
            spec.name
        ))
        .set_tags(Some(iam_tags(&infra.tags, what, &n.role)?))
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, &n.role, e))?;
    infra.role_name = n.role.clone();
    infra.role_arn = out.role().map(|r| r.arn().to_owned()).unwrap_or_default();

    let what = "creating IAM role policy";
    c.iam
        .put_role_policy()
        .role_name(&n.role)
        .policy_name(&n.policy)
        .policy_document(access_policy(spec, infra, n)?)
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, &n.policy, e))?;
    infra.policy_name = n.policy.clone();

    let what = "creating IAM instance profile";
    let out = c
        .iam
        .create_instance_profile()
        .instance_profile_name(&n.instance_profile)
        .set_tags(Some(iam_tags(&infra.tags, what, &n.instance_profile)?))
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, &n.instance_profile, e))?;
    infra.instance_profile_name = n.instance_profile.clone();
    infra.instance_profile_arn = out
        .instance_profile()
        .map(|p| p.arn().to_owned())
        .unwrap_or_default();
    c.iam
        .add_role_to_instance_profile()
        .instance_profile_name(&n.instance_profile)
        .role_name(&n.role)
        .send()
        .await
        .map_err(|e| {
            ProvisionError::sdk(
                "adding IAM role to instance profile",
                &n.instance_profile,
                e,
            )
        })?;
    Ok(())
}

// ---------------------------------------------------------------- network and AMI

fn ec2_filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

pub(crate) fn ec2_tags(tags: &BTreeMap<String, String>) -> Vec<aws_sdk_ec2::types::Tag> {
    tags.iter()
        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
        .collect()
}

async fn default_vpc(c: &AwsClients) -> Result<String> {
    let what = "finding the default VPC";
    let out = c
        .ec2
        .describe_vpcs()
        .filters(ec2_filter("isDefault", &["true"]))
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, c.region(), e))?;
    out.vpcs()
        .iter()
        .find_map(|v| v.vpc_id())
        .map(str::to_owned)
        .ok_or_else(|| {
            ProvisionError::new(
                what,
                c.region(),
                "this region has no default VPC: set fleet.subnet_ids and fleet.security_group_ids",
            )
        })
}

/// Subnets (the default VPC's default subnets unless given) and the egress-only security group (unless given).
async fn resolve_network(
    c: &AwsClients,
    spec: &TransferSpec,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let f = &spec.fleet;
    let need_group = f.security_group_ids.is_empty();
    let mut vpc = None;
    if f.subnet_ids.is_empty() {
        let id = default_vpc(c).await?;
        let what = "finding the default VPC's subnets";
        let out = c
            .ec2
            .describe_subnets()
            .filters(ec2_filter("vpc-id", &[&id]))
            .filters(ec2_filter("default-for-az", &["true"]))
            .send()
            .await
            .map_err(|e| ProvisionError::sdk(what, &id, e))?;
        let mut subnets: Vec<String> = out
            .subnets()
            .iter()
            .filter_map(|s| s.subnet_id().map(str::to_owned))
            .collect();
        subnets.sort();
        if subnets.is_empty() {
            return Err(ProvisionError::new(
                what,
                &id,
                "the default VPC has no default subnets: set fleet.subnet_ids",
            ));
        }
        infra.subnet_ids = subnets;
        vpc = Some(id);
    } else {
        infra.subnet_ids = f.subnet_ids.clone();
    }
    if !need_group {
        return Ok(());
    }
    let vpc = match vpc {
        Some(v) => v,
        None => {
            let what = "finding the VPC of fleet.subnet_ids";
            let out = c
                .ec2
                .describe_subnets()
                .set_subnet_ids(Some(f.subnet_ids.clone()))
                .send()
                .await
                .map_err(|e| ProvisionError::sdk(what, &f.subnet_ids.join(","), e))?;
            out.subnets()
                .iter()
                .find_map(|s| s.vpc_id())
                .map(str::to_owned)
                .ok_or_else(|| {
                    ProvisionError::new(what, f.subnet_ids.join(","), "no such subnets")
                })?
        }
    };
    let what = "creating security group";
    // A new group allows all egress and no ingress: the instances only call out (S3, SQS, DynamoDB, registry).
    let out = c
        .ec2
        .create_security_group()
        .group_name(&n.security_group)
        .description(format!("Data Transfer Hub {}: egress only", spec.name))
        .vpc_id(&vpc)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::SecurityGroup)
                .set_tags(Some(ec2_tags(&infra.tags)))
                .build(),
        )
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, &n.security_group, e))?;
    infra.security_group_id = Some(
        out.group_id()
            .ok_or_else(|| {
                ProvisionError::new(what, &n.security_group, "the response has no group id")
            })?
            .to_owned(),
    );
    Ok(())
}

pub use dth_core::fleet::architecture_of;

async fn resolve_ami(c: &AwsClients, spec: &TransferSpec, infra: &mut Infra) -> Result<()> {
    if let Some(a) = &spec.fleet.ami_id {
        infra.ami_id = a.clone();
        return Ok(());
    }
    let arch = architecture_of(&spec.fleet.instance_type);
    let what = "finding the newest Amazon Linux 2023 AMI";
    let out = c
        .ec2
        .describe_images()
        .owners("amazon")
        .filters(ec2_filter(
            "name",
            &[&format!("al2023-ami-2023.*-kernel-*-{arch}")],
        ))
        .filters(ec2_filter("architecture", &[arch]))
        .filters(ec2_filter("state", &["available"]))
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, arch, e))?;
    // Newest first by creation date; the name (which embeds the release date and kernel) breaks ties.
    let best = out
        .images()
        .iter()
        .filter_map(|i| {
            Some((
                i.creation_date().unwrap_or(""),
                i.name().unwrap_or(""),
                i.image_id()?,
            ))
        })
        .max();
    match best {
        Some((_, _, id)) => {
            infra.ami_id = id.to_owned();
            Ok(())
        }
        None => Err(ProvisionError::new(
            what,
            arch,
            "none found in this region: set fleet.ami_id",
        )),
    }
}

// ---------------------------------------------------------------- launch templates

/// The launch template data of one role: IMDSv2 only, encrypted gp3 root volume, the transfer's instance
/// profile and security groups, and user data that runs `role` from the image with the job config.
pub(crate) fn launch_template_data(
    cfg: &ProviderConfig,
    spec: &TransferSpec,
    infra: &Infra,
    names: &Names,
    role: Role,
) -> RequestLaunchTemplateData {
    let (instance_type, group, args) = match role {
        Role::Finder => (
            &spec.finder.instance_type,
            &names.finder_asg,
            vec!["--scale-in-asg".to_owned(), names.finder_asg.clone()],
        ),
        Role::Worker => (
            &spec.fleet.instance_type,
            &names.worker_asg,
            vec![
                "--concurrency".to_owned(),
                spec.fleet.worker_concurrency.to_string(),
                "--lifecycle-hook".to_owned(),
                names.drain_hook.clone(),
            ],
        ),
    };
    let config = spec.job_config(infra, cfg);
    let script = userdata::render(&LaunchSpec {
        role,
        region: config.aws.region.clone().unwrap_or_default(),
        config,
        args,
        image: spec.fleet.image.clone(),
        group: group.clone(),
        log_group: (!infra.log_group.is_empty()).then(|| infra.log_group.clone()),
    });
    let groups = match &infra.security_group_id {
        Some(g) => vec![g.clone()],
        None => spec.fleet.security_group_ids.clone(),
    };
    let tags = Some(ec2_tags(&infra.tags));
    RequestLaunchTemplateData::builder()
        .image_id(&infra.ami_id)
        .instance_type(InstanceType::from(instance_type.as_str()))
        .iam_instance_profile(
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .arn(&infra.instance_profile_arn)
                .build(),
        )
        .set_security_group_ids(Some(groups))
        .user_data(base64::engine::general_purpose::STANDARD.encode(script))
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                .http_tokens(LaunchTemplateHttpTokensState::Required)
                // 2 hops: the binaries run in a container and still need the instance role.
                .http_put_response_hop_limit(2)
                .build(),
        )
        .block_device_mappings(
            LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name("/dev/xvda")
                .ebs(
                    LaunchTemplateEbsBlockDeviceRequest::builder()
                        .volume_type(VolumeType::Gp3)
                        .volume_size(ROOT_VOLUME_GIB)
                        .encrypted(true)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(tags.clone())
                .build(),
        )
        .tag_specifications(
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(ResourceType::Volume)
                .set_tags(tags)
                .build(),
        )
        .build()
}

async fn create_launch_templates(
    c: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    for role in [Role::Finder, Role::Worker] {
        let name = match role {
            Role::Finder => &n.finder_launch_template,
            Role::Worker => &n.worker_launch_template,
        };
        let what = "creating launch template";
        let out = c
            .ec2
            .create_launch_template()
            .launch_template_name(name)
            .version_description("terraform-provider-dth")
            .launch_template_data(launch_template_data(cfg, spec, infra, n, role))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::LaunchTemplate)
                    .set_tags(Some(ec2_tags(&infra.tags)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| ProvisionError::sdk(what, name, e))?;
        let lt = out.launch_template().ok_or_else(|| {
            ProvisionError::new(what, name, "the response has no launch template")
        })?;
        let id = lt
            .launch_template_id()
            .ok_or_else(|| {
                ProvisionError::new(what, name, "the response has no launch template id")
            })?
            .to_owned();
        let version = lt.latest_version_number().unwrap_or(1);
        match role {
            Role::Finder => {
                infra.finder_launch_template_id = id;
                infra.finder_launch_template_version = version;
            }
            Role::Worker => {
                infra.worker_launch_template_id = id;
                infra.worker_launch_template_version = version;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- Auto Scaling

pub(crate) fn asg_tags(
    tags: &BTreeMap<String, String>,
    asg: &str,
) -> Vec<aws_sdk_autoscaling::types::Tag> {
    tags.iter().map(|(k, v)| asg_tag(asg, k, v, true)).collect()
}

pub(crate) fn asg_tag(
    asg: &str,
    key: &str,
    value: &str,
    propagate: bool,
) -> aws_sdk_autoscaling::types::Tag {
    aws_sdk_autoscaling::types::Tag::builder()
        .resource_id(asg)
        .resource_type("auto-scaling-group")
        .key(key)
        .value(value)
        .propagate_at_launch(propagate)
        .build()
}

/// The `dth:defaults` tag value: the fleet settings left empty (resolved by the provider).
pub(crate) fn defaults_tag(spec: &TransferSpec) -> String {
    let f = &spec.fleet;
    let mut d = Vec::new();
    if f.subnet_ids.is_empty() {
        d.push("subnet_ids");
    }
    if f.security_group_ids.is_empty() {
        d.push("security_group_ids");
    }
    if f.ami_id.is_none() {
        d.push("ami_id");
    }
    if d.is_empty() {
        "none".into()
    } else {
        d.join(",")
    }
}

pub(crate) fn lt_spec(id: &str, version: i64) -> LaunchTemplateSpecification {
    // An explicit version number, not $Latest: a new version shows up as a change of the group.
    LaunchTemplateSpecification::builder()
        .launch_template_id(id)
        .version(version.to_string())
        .build()
}

/// Retries `op` while IAM's new instance profile is not yet visible to Auto Scaling (seconds on AWS).
async fn with_iam_settling<T, F, Fut>(what: &str, name: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        match op().await {
            Err(e)
                if e.cause.to_ascii_lowercase().contains("instance profile")
                    || e.cause.contains("IamInstanceProfile") =>
            {
                if tokio::time::Instant::now() > deadline {
                    return Err(e);
                }
                tracing::debug!(what, name, "instance profile not visible yet; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            other => return other,
        }
    }
}

/// How long scale-in waits for a worker to finish or release its jobs and complete the drain hook: the
/// worker's grace (the job config's default; the resource does not change it), Docker's and systemd's stop
/// margins, and a minute for the metadata poll and the call. AWS accepts 30 s to 7,200 s.
pub(crate) fn drain_timeout_secs() -> i32 {
    let grace = dth_core::config::WorkerOptions::default().shutdown_grace_secs;
    (grace + 2 * userdata::RELEASE_MARGIN_SECS + 60).clamp(30, 7200) as i32
}

/// The worker group's termination lifecycle hook (PutLifecycleHook creates or updates it). Instances wait in
/// `Terminating:Wait` until their worker completes it, or until the timeout, after which they go anyway.
pub(crate) async fn put_drain_hook(c: &AwsClients, n: &Names) -> Result<()> {
    c.autoscaling
        .put_lifecycle_hook()
        .auto_scaling_group_name(&n.worker_asg)
        .lifecycle_hook_name(&n.drain_hook)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
        .heartbeat_timeout(drain_timeout_secs())
        .default_result("CONTINUE")
        .send()
        .await
        .map_err(|e| ProvisionError::sdk("creating lifecycle hook", &n.drain_hook, e))?;
    Ok(())
}

async fn create_worker_fleet(
    c: &AwsClients,
    spec: &TransferSpec,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let what = "creating Auto Scaling group";
    let asg = &n.worker_asg;
    let mut tags = asg_tags(&infra.tags, asg);
    tags.push(asg_tag(asg, DEFAULTS_TAG, &defaults_tag(spec), false));
    with_iam_settling(what, asg, || {
        c.autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(asg)
            .launch_template(lt_spec(
                &infra.worker_launch_template_id,
                infra.worker_launch_template_version,
            ))
            .min_size(spec.fleet.min as i32)
            .max_size(spec.fleet.max as i32)
            .desired_capacity(spec.fleet.desired as i32)
            .vpc_zone_identifier(infra.subnet_ids.join(","))
            .set_tags(Some(tags.clone()))
            .send()
            .map_err_async(what, asg)
    })
    .await?;
    infra.worker_asg = asg.clone();
    put_drain_hook(c, n).await?;

    let what = "creating scaling policy";
    let mut out_policy = c
        .autoscaling
        .put_scaling_policy()
        .auto_scaling_group_name(asg)
        .policy_name(&n.scale_out_policy)
        .policy_type("StepScaling")
        .adjustment_type("ChangeInCapacity")
        .metric_aggregation_type("Maximum")
        .estimated_instance_warmup(300);
    let base = SCALE_OUT_STEPS[0].0;
    for (i, (at, add)) in SCALE_OUT_STEPS.iter().enumerate() {
        // Step bounds are relative to the alarm threshold (the first step).
        let mut step = StepAdjustment::builder()
            .metric_interval_lower_bound(f64::from(at - base))
            .scaling_adjustment(*add);
        if let Some((next, _)) = SCALE_OUT_STEPS.get(i + 1) {
            step = step.metric_interval_upper_bound(f64::from(next - base));
        }
        out_policy = out_policy.step_adjustments(step.build());
    }
    let out = out_policy
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, &n.scale_out_policy, e))?;
    infra.scale_out_policy_arn = match out.policy_arn() {
        Some(a) => a.to_owned(),
        None => policy_arn(c, asg, &n.scale_out_policy).await?,
    };
    put_scale_in_policy(c, spec, n, infra).await?;

    let what = "creating CloudWatch alarm";
    c.cloudwatch
        .put_metric_alarm()
        .alarm_name(&n.backlog_alarm)
        .alarm_description(format!(
            "Data Transfer Hub {}: jobs waiting; adds workers",
            spec.name
        ))
        .namespace("AWS/SQS")
        .metric_name("ApproximateNumberOfMessagesVisible")
        .dimensions(
            Dimension::builder()
                .name("QueueName")
                .value(&n.queue)
                .build(),
        )
        .statistic(Statistic::Maximum)
        .period(60)
        .evaluation_periods(1)
        .threshold(f64::from(base))
        .comparison_operator(ComparisonOperator::GreaterThanOrEqualToThreshold)
        .treat_missing_data("notBreaching")
        .alarm_actions(&infra.scale_out_policy_arn)
        .set_tags(Some(cw_tags(&infra.tags)))
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, &n.backlog_alarm, e))?;
    infra.alarm_names.push(n.backlog_alarm.clone());

    // Visible + in flight, so that a long copy (messages in flight, none visible) is not mistaken for an
    // empty queue. Missing data counts as empty: SQS stops reporting for queues idle for hours.
    let queue_metric = |id: &str, metric: &str| {
        MetricDataQuery::builder()
            .id(id)
            .return_data(false)
            .metric_stat(
                MetricStat::builder()
                    .metric(
                        Metric::builder()
                            .namespace("AWS/SQS")
                            .metric_name(metric)
                            .dimensions(
                                Dimension::builder()
                                    .name("QueueName")
                                    .value(&n.queue)
                                    .build(),
                            )
                            .build(),
                    )
                    .period(300)
                    .stat("Maximum")
                    .build(),
            )
            .build()
    };
    c.cloudwatch
        .put_metric_alarm()
        .alarm_name(&n.empty_alarm)
        .alarm_description(format!(
            "Data Transfer Hub {}: queue empty for {SCALE_IN_AFTER_MINUTES} minutes; back to fleet.min",
            spec.name
        ))
        .metrics(
            MetricDataQuery::builder()
                .id("messages")
                .expression("visible + inflight")
                .label("messages visible or in flight")
                .return_data(true)
                .build(),
        )
        .metrics(queue_metric("visible", "ApproximateNumberOfMessagesVisible"))
        .metrics(queue_metric("inflight", "ApproximateNumberOfMessagesNotVisible"))
        .evaluation_periods(SCALE_IN_AFTER_MINUTES / 5)
        .threshold(0.0)
        .comparison_operator(ComparisonOperator::LessThanOrEqualToThreshold)
        .treat_missing_data("breaching")
        .alarm_actions(&infra.scale_in_policy_arn)
        .set_tags(Some(cw_tags(&infra.tags)))
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, &n.empty_alarm, e))?;
    infra.alarm_names.push(n.empty_alarm.clone());
    Ok(())
}

/// The scale-in policy sets the fleet to exactly `fleet.min`, so it is rewritten whenever `min` changes.
pub(crate) async fn put_scale_in_policy(
    c: &AwsClients,
    spec: &TransferSpec,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let out = c
        .autoscaling
        .put_scaling_policy()
        .auto_scaling_group_name(&n.worker_asg)
        .policy_name(&n.scale_in_policy)
        .policy_type("SimpleScaling")
        .adjustment_type("ExactCapacity")
        .scaling_adjustment(spec.fleet.min as i32)
        .cooldown(300)
        .send()
        .await
        .map_err(|e| ProvisionError::sdk("creating scaling policy", &n.scale_in_policy, e))?;
    infra.scale_in_policy_arn = match out.policy_arn() {
        Some(a) => a.to_owned(),
        None => policy_arn(c, &n.worker_asg, &n.scale_in_policy).await?,
    };
    Ok(())
}

/// Some Auto Scaling implementations leave the ARN out of PutScalingPolicy's answer; ask for it.
async fn policy_arn(c: &AwsClients, asg: &str, policy: &str) -> Result<String> {
    let what = "reading scaling policy";
    let out = c
        .autoscaling
        .describe_policies()
        .auto_scaling_group_name(asg)
        .policy_names(policy)
        .send()
        .await
        .map_err(|e| ProvisionError::sdk(what, policy, e))?;
    out.scaling_policies()
        .iter()
        .find_map(|p| p.policy_arn())
        .map(str::to_owned)
        .ok_or_else(|| ProvisionError::new(what, policy, "the policy has no ARN"))
}

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

async fn create_finder_fleet(
    c: &AwsClients,
    spec: &TransferSpec,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let what = "creating Auto Scaling group";
    let asg = &n.finder_asg;
    let schedule =
        Schedule::parse(&spec.schedule).map_err(|m| ProvisionError::new(what, asg, m))?;
    // "once" starts the finder right away; a cron schedule waits for its first scheduled action. The finder sets
    // the group back to 0 when its run is enqueued.
    let desired = if schedule == Schedule::Once { 1 } else { 0 };
    let tags = asg_tags(&infra.tags, asg);
    with_iam_settling(what, asg, || {
        c.autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(asg)
            .launch_template(lt_spec(
                &infra.finder_launch_template_id,
                infra.finder_launch_template_version,
            ))
            .min_size(0)
            .max_size(1)
            .desired_capacity(desired)
            .vpc_zone_identifier(infra.subnet_ids.join(","))
            .set_tags(Some(tags.clone()))
            .send()
            .map_err_async(what, asg)
    })
    .await?;
    infra.finder_asg = asg.clone();
    if let Schedule::Cron(cron) = &schedule {
        put_schedule(c, n, cron).await?;
        infra.schedule_action = Some(n.schedule_action.clone());
    }
    Ok(())
}

pub(crate) async fn put_schedule(c: &AwsClients, n: &Names, cron: &str) -> Result<()> {
    c.autoscaling
        .put_scheduled_update_group_action()
        .auto_scaling_group_name(&n.finder_asg)
        .scheduled_action_name(&n.schedule_action)
        .recurrence(cron)
        .desired_capacity(1)
        .send()
        .await
        .map_err(|e| ProvisionError::sdk("creating scheduled action", &n.schedule_action, e))?;
    Ok(())
}

// ---------------------------------------------------------------- dashboard, alarms, notifications

pub(crate) fn dashboard_body(region: &str, n: &Names) -> String {
    let sqs = |metric: &str, queue: &str, label: &str| json!(["AWS/SQS", metric, "QueueName", queue, {"label": label}]);
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
    ]})
    .to_string()
}

async fn put_dashboard(c: &AwsClients, n: &Names, infra: &mut Infra) -> Result<()> {
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

/// Adds our queue configuration to the source bucket's notifications, keeping every other entry.
async fn add_bucket_notification(
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

/// `.send()` futures of any SDK operation, mapped to a [`ProvisionError`] naming the step.
pub(crate) trait MapErrAsync<T> {
    fn map_err_async(self, what: &str, name: &str) -> impl std::future::Future<Output = Result<T>>;
}

impl<T, E, F> MapErrAsync<T> for F
where
    F: std::future::Future<
        Output = std::result::Result<
            T,
            aws_smithy_runtime_api::client::result::SdkError<
                E,
                aws_smithy_runtime_api::client::orchestrator::HttpResponse,
            >,
        >,
    >,
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
{
    fn map_err_async(self, what: &str, name: &str) -> impl std::future::Future<Output = Result<T>> {
        let (what, name) = (what.to_owned(), name.to_owned());
        // On the heap right away, so that callers awaiting many calls stay small.
        let call = Box::pin(self);
        async move { call.await.map_err(|e| ProvisionError::sdk(&what, &name, e)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graviton_families_are_arm64() {
        for t in [
            "t4g.micro",
            "m7gd.large",
            "c6gn.xlarge",
            "a1.medium",
            "r8g.2xlarge",
        ] {
            assert_eq!(architecture_of(t), "arm64", "{t}");
        }
        for t in [
            "t3.micro",
            "m5.large",
            "c7i.xlarge",
            "g5.xlarge",
            "m6a.large",
        ] {
            assert_eq!(architecture_of(t), "x86_64", "{t}");
        }
    }

    #[test]
    fn instances_log_to_the_transfers_group() {
        let spec = TransferSpec::new("x", "src-bucket", "dst-bucket", "img");
        let n = Names::new("x");
        let user_data = |infra: &Infra, role: Role| {
            let data = launch_template_data(&ProviderConfig::default(), &spec, infra, &n, role);
            let text = base64::engine::general_purpose::STANDARD
                .decode(data.user_data().unwrap_or(""))
                .unwrap();
            String::from_utf8(text).unwrap()
        };
        let infra = Infra {
            region: "eu-west-1".into(),
            queue_url: "https://sqs.eu-west-1.amazonaws.com/123456789012/dth-x-jobs".into(),
            table: n.table.clone(),
            log_group: n.log_group.clone(),
            ..Infra::default()
        };
        for role in [Role::Finder, Role::Worker] {
            let script = user_data(&infra, role);
            let parsed = userdata::parse(&script).unwrap();
            assert_eq!(parsed.log_group.as_deref(), Some("/dth/x"));
            assert!(script.contains("--log-driver awslogs"), "{script}");
            assert!(script.contains("awslogs-group=/dth/x"), "{script}");
        }
        // A transfer without a group (made before the provider created them) keeps Docker's local logs.
        let old = Infra {
            log_group: String::new(),
            ..infra
        };
        assert_eq!(
            userdata::parse(&user_data(&old, Role::Worker))
                .unwrap()
                .log_group,
            None
        );
    }

    #[test]
    fn scale_out_steps_are_dths() {
        assert_eq!(SCALE_OUT_STEPS.map(|s| s.0), [100, 500, 2000, 10000]);
        assert_eq!(SCALE_OUT_STEPS.map(|s| s.1), [1, 2, 5, 10]);
    }

    #[test]
    fn dashboard_names_the_queues_and_groups() {
        let body = dashboard_body("us-east-1", &Names::new("x"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["widgets"].as_array().map(Vec::len), Some(4));
        for name in ["dth-x-jobs", "dth-x-dlq", "dth-x-worker", "dth-x-finder"] {
            assert!(body.contains(name), "{name}");
        }
    }
}
