//! The finder's and workers' launch templates and Auto Scaling groups: the workers' scaling policies and
//! drain hook, the finder's schedule.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, StepAdjustment};
use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, Metric, MetricDataQuery, MetricStat, Statistic,
};
use aws_sdk_ec2::types::{
    InstanceType, LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData, ResourceType,
    TagSpecification, VolumeType,
};
use base64::Engine;
use dth_core::userdata::{self, LaunchSpec, Role};

pub use dth_core::fleet::architecture_of;

use super::alarms::cw_tags;
use super::delete::Failures;
use super::iam::with_iam_settling;
use super::infra::DEFAULTS_TAG;
use super::infra::{spec_name, Owner};
use super::network::ec2_tags;
use super::spec::Schedule;

use super::infra::{Infra, MapErrAsync, Names, ProvisionError, Result};
use super::spec::{Payload, TransferSpec};
use crate::aws::{AwsClients, ProviderConfig};

/// DTH's step scaling on the visible queue depth: (messages at least, instances added).
pub const SCALE_OUT_STEPS: [(u32, i32); 4] = [(100, 1), (500, 2), (2000, 5), (10000, 10)];

/// The queue has been empty this long before the fleet goes back to `min`.
pub const SCALE_IN_AFTER_MINUTES: i32 = 15;

const ROOT_VOLUME_GIB: i32 = 20;

/// The launch template data of one role: IMDSv2 only, encrypted gp3 root volume, the transfer's instance
/// profile and security groups, and user data that runs `role` from the image with the job config.
pub(crate) fn launch_template_data<P: Payload>(
    cfg: &ProviderConfig,
    spec: &TransferSpec<P>,
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
                spec.worker.concurrency.to_string(),
                "--lifecycle-hook".to_owned(),
                names.drain_hook.clone(),
            ],
        ),
    };
    let config = spec.transfer_config(infra, cfg);
    let script = userdata::render(&LaunchSpec {
        role,
        region: config.aws().region.clone().unwrap_or_default(),
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

pub(crate) async fn create_launch_templates<P: Payload>(
    c: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec<P>,
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
            .map_err_async(what, name)
            .await;
        let lt = match out {
            Ok(out) => out.launch_template().cloned(),
            // A template of this name exists: ours only if a create whose answer was lost made it.
            Err(e)
                if e.code.as_deref()
                    == Some("InvalidLaunchTemplateName.AlreadyExistsException") =>
            {
                let found = c
                    .ec2
                    .describe_launch_templates()
                    .launch_template_names(name)
                    .send()
                    .map_err_async(what, name)
                    .await?;
                let lt = found.launch_templates().first().cloned();
                Owner::of(
                    lt.iter()
                        .flat_map(|t| t.tags())
                        .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
                    spec_name(infra),
                    &infra.creation_id,
                )
                .ensure_ours("launch template", name)?;
                lt
            }
            Err(e) => return Err(e),
        };
        let lt = lt.ok_or_else(|| {
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
pub(crate) fn defaults_tag<P: Payload>(spec: &TransferSpec<P>) -> String {
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

/// Send a CreateAutoScalingGroup (retried while the new instance profile is not yet usable). A group of the name
/// that exists already is adopted only when its tags say it is ours (a create whose answer was lost); anyone
/// else's is refused and left alone.
async fn create_group<T, F, Fut>(
    c: &AwsClients,
    what: &str,
    asg: &str,
    infra: &Infra,
    send: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let e = match with_iam_settling(what, asg, send).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code.as_deref() == Some("AlreadyExists") => e,
        Err(e) => return Err(e),
    };
    let out = c
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(asg)
        .send()
        .map_err_async(what, asg)
        .await?;
    let Some(g) = out.auto_scaling_groups().first() else {
        return Err(e);
    };
    Owner::of(
        g.tags()
            .iter()
            .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
        spec_name(infra),
        &infra.creation_id,
    )
    .ensure_ours("Auto Scaling group", asg)
}

pub(crate) fn lt_spec(id: &str, version: i64) -> LaunchTemplateSpecification {
    // An explicit version number, not $Latest: a new version shows up as a change of the group.
    LaunchTemplateSpecification::builder()
        .launch_template_id(id)
        .version(version.to_string())
        .build()
}

/// What the drain hook waits beyond the worker's grace: Docker's and systemd's stop margins, and a minute for the
/// metadata poll and the call.
pub(crate) const DRAIN_MARGIN_SECS: u64 = 2 * userdata::RELEASE_MARGIN_SECS + 60;
/// The longest lifecycle hook timeout AWS accepts (the shortest is 30 s).
pub(crate) const MAX_DRAIN_TIMEOUT_SECS: u64 = 7200;

/// How long scale-in waits for a worker to finish or release its jobs and complete the drain hook: the
/// worker's grace (`worker.shutdown_grace_secs`) and [`DRAIN_MARGIN_SECS`].
pub(crate) fn drain_timeout_secs<P: Payload>(spec: &TransferSpec<P>) -> i32 {
    let grace = spec.worker.shutdown_grace_secs;
    (grace + DRAIN_MARGIN_SECS).clamp(30, MAX_DRAIN_TIMEOUT_SECS) as i32
}

/// The worker group's termination lifecycle hook (PutLifecycleHook creates or updates it). Instances wait in
/// `Terminating:Wait` until their worker completes it, or until the timeout, after which they go anyway.
pub(crate) async fn put_drain_hook<P: Payload>(
    c: &AwsClients,
    spec: &TransferSpec<P>,
    n: &Names,
) -> Result<()> {
    c.autoscaling
        .put_lifecycle_hook()
        .auto_scaling_group_name(&n.worker_asg)
        .lifecycle_hook_name(&n.drain_hook)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
        .heartbeat_timeout(drain_timeout_secs(spec))
        .default_result("CONTINUE")
        .send()
        .await
        .map_err(|e| ProvisionError::sdk("creating lifecycle hook", &n.drain_hook, e))?;
    Ok(())
}

pub(crate) async fn create_workers<P: Payload>(
    c: &AwsClients,
    spec: &TransferSpec<P>,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let what = "creating Auto Scaling group";
    let asg = &n.worker_asg;
    let mut tags = asg_tags(&infra.tags, asg);
    tags.push(asg_tag(asg, DEFAULTS_TAG, &defaults_tag(spec), false));
    create_group(c, what, asg, infra, || {
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
    put_drain_hook(c, spec, n).await?;
    put_scaling(c, spec, n, infra).await
}

/// The workers' step scaling: the scale-out and scale-in policies and the two queue alarms that drive them. Puts
/// are idempotent, so this also repairs them after a hand edit.
pub(crate) async fn put_scaling<P: Payload>(
    c: &AwsClients,
    spec: &TransferSpec<P>,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let asg = &n.worker_asg;
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
    if !infra.alarm_names.contains(&n.backlog_alarm) {
        infra.alarm_names.push(n.backlog_alarm.clone());
    }

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
    if !infra.alarm_names.contains(&n.empty_alarm) {
        infra.alarm_names.push(n.empty_alarm.clone());
    }
    Ok(())
}

/// The scale-in policy sets the fleet to exactly `fleet.min`, so it is rewritten whenever `min` changes.
pub(crate) async fn put_scale_in_policy<P: Payload>(
    c: &AwsClients,
    spec: &TransferSpec<P>,
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

pub(crate) async fn create_finder<P: Payload>(
    c: &AwsClients,
    spec: &TransferSpec<P>,
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
    create_group(c, what, asg, infra, || {
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

pub(crate) async fn delete_group(c: &AwsClients, asg: &str) -> Result<()> {
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

pub(crate) async fn wait_group_gone(c: &AwsClients, asg: &str) -> Result<()> {
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

/// How long to wait for an Auto Scaling group's instances to terminate (the security group cannot go before).
const GROUP_GONE_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) async fn update_schedule<P: Payload>(
    c: &AwsClients,
    new: &TransferSpec<P>,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let schedule = Schedule::parse(&new.schedule)
        .map_err(|m| ProvisionError::new("updating schedule", &n.finder_asg, m))?;
    match schedule {
        Schedule::Cron(cron) => {
            // PutScheduledUpdateGroupAction replaces an action of the same name.
            put_schedule(c, n, &cron).await?;
            infra.schedule_action = Some(n.schedule_action.clone());
        }
        Schedule::Once => {
            if let Some(action) = infra.schedule_action.take() {
                let r = c
                    .autoscaling
                    .delete_scheduled_action()
                    .auto_scaling_group_name(&infra.finder_asg)
                    .scheduled_action_name(&action)
                    .send()
                    .map_err_async("deleting scheduled action", &action)
                    .await;
                match r {
                    Err(e) if !e.is_not_found() => {
                        infra.schedule_action = Some(action);
                        return Err(e);
                    }
                    _ => {}
                }
            }
            // "once": run the finder now.
            c.autoscaling
                .set_desired_capacity()
                .auto_scaling_group_name(&infra.finder_asg)
                .desired_capacity(1)
                .send()
                .map_err_async("starting the finder", &infra.finder_asg)
                .await?;
        }
    }
    Ok(())
}

/// Put `tags` on the launch templates, the egress security group (when the transfer made it) and both groups; instance and volume tags follow through new template versions and take `removed` off.
pub(crate) async fn retag(
    c: &AwsClients,
    infra: &Infra,
    tags: &BTreeMap<String, String>,
    removed: &[String],
) -> Result<()> {
    let mut ec2_ids = vec![
        infra.finder_launch_template_id.clone(),
        infra.worker_launch_template_id.clone(),
    ];
    ec2_ids.extend(infra.security_group_id.clone());
    c.ec2
        .create_tags()
        .set_resources(Some(ec2_ids.clone()))
        .set_tags(Some(ec2_tags(tags)))
        .send()
        .map_err_async("tagging launch templates", &ec2_ids.join(","))
        .await?;
    if !removed.is_empty() {
        c.ec2
            .delete_tags()
            .set_resources(Some(ec2_ids.clone()))
            .set_tags(Some(
                removed
                    .iter()
                    .map(|k| aws_sdk_ec2::types::Tag::builder().key(k).build())
                    .collect(),
            ))
            .send()
            .map_err_async("untagging launch templates", &ec2_ids.join(","))
            .await?;
    }

    for asg in [&infra.finder_asg, &infra.worker_asg] {
        c.autoscaling
            .create_or_update_tags()
            .set_tags(Some(asg_tags(tags, asg)))
            .send()
            .map_err_async("tagging Auto Scaling group", asg)
            .await?;
        if !removed.is_empty() {
            c.autoscaling
                .delete_tags()
                .set_tags(Some(
                    removed.iter().map(|k| asg_tag(asg, k, "", true)).collect(),
                ))
                .send()
                .map_err_async("untagging Auto Scaling group", asg)
                .await?;
        }
    }

    Ok(())
}

/// Delete both groups (with their scaling policies, scheduled actions, hook and instances), wait until they are gone, then delete the launch templates they used.
pub(crate) async fn delete(c: &AwsClients, infra: &Infra, failed: &mut Failures) {
    // Groups (with their scaling policies, scheduled actions and instances) before the launch templates,
    // instance profile and security group they use.
    for asg in [&infra.finder_asg, &infra.worker_asg] {
        if !asg.is_empty() {
            failed.step(delete_group(c, asg).await);
        }
    }
    for asg in [&infra.finder_asg, &infra.worker_asg] {
        if !asg.is_empty() {
            failed.step(wait_group_gone(c, asg).await);
        }
    }
    for id in [
        &infra.worker_launch_template_id,
        &infra.finder_launch_template_id,
    ] {
        if !id.is_empty() {
            failed.step(
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
}
