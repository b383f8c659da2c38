//! Read: what the cloud holds of a transfer ([`observe`]), its progress from the ledger and the queues, and
//! rebuilding a transfer's spec and infra from its name alone ([`import`]).
//!
//! `observe` makes a fixed number of AWS calls per transfer — it never lists buckets, objects, queues or
//! groups — so `terraform plan` costs the same for an empty transfer and for one of a billion objects:
//!
//! | service      | calls | what                                                                  |
//! |--------------|-------|-----------------------------------------------------------------------|
//! | SQS          | 2     | GetQueueAttributes on the job queue (depth, redrive) and the DLQ      |
//! | DynamoDB     | 2–3   | GetItem of the latest run pointer, then of that run's summary; DescribeTimeToLive |
//! | Auto Scaling | 4     | DescribeAutoScalingGroups (both), DescribeScheduledActions, DescribePolicies, DescribeLifecycleHooks (the drain hook) |
//! | EC2          | 3     | DescribeLaunchTemplates (both), DescribeLaunchTemplateVersions × 2   |
//! | EC2          | 0–1   | DescribeSecurityGroups, when the transfer created its group          |
//! | IAM          | 2     | GetInstanceProfile (with its role), GetRolePolicy                    |
//! | CloudWatch   | 2     | DescribeAlarms (all three by name), GetDashboard                      |
//! | CloudWatch Logs | 0–1 | DescribeLogGroups (the log group: its name as prefix, one result), unless the transfer predates log groups |
//! | SNS          | 0–1   | ListSubscriptionsByTopic, when `alarm_email` is set                   |
//! | S3           | 0–1   | GetBucketNotificationConfiguration, when `events` ≠ none              |
//!
//! All but the second ledger read and the launch template versions (which need the groups' versions) run
//! concurrently.

use std::collections::BTreeMap;

use aws_sdk_sqs::types::QueueAttributeName;
use dth_core::config::EventsMode;
use dth_core::userdata::{self, LaunchSpec};
use serde::{Deserialize, Serialize};

use super::drift::{self, Drift};
use super::infra::{present, MapErrAsync};
use super::infra::{
    spec_tags, Infra, Names, Owner, ProvisionError, Result, CREATION_TAG, DEFAULTS_TAG,
    TRANSFER_TAG,
};
use super::notifications::bucket_notifications;
use super::spec::{validate_name, Payload, Schedule, TransferSpec};
use super::{queues, table};
use crate::aws::{AwsClients, ProviderConfig};

pub use dth_core::status::{Progress, Status};

/// What [`observe`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<P: Payload = super::spec::Objects> {
    /// The spec as the cloud has it: every attribute AWS holds a live value for (capacity, schedule, launch
    /// template contents, alarm email, redrive, tags) is the live value, the rest is the spec given. Compare it
    /// with the desired spec to show hand-made changes as a diff.
    pub spec: TransferSpec<P>,
    /// The infra with live ids (the launch template versions the groups use, the subscription found).
    pub infra: Infra,
    /// Components that are gone (see [`Component`]): the transfer needs replacing.
    pub missing: Vec<Component>,
    pub progress: Progress,
    /// Settings changed by hand that the spec does not show ([`drift`]): an update puts them back.
    pub drift: Vec<Drift>,
    /// The worker group's live desired capacity. Step scaling moves it, so it is reported in `spec` only when it
    /// lies outside the group's live min..=max; here it is always the live value.
    pub worker_desired: u32,
}

/// The pieces of a transfer [`observe`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Queue,
    DeadLetterQueue,
    Table,
    LogGroup,
    Role,
    RolePolicy,
    InstanceProfile,
    SecurityGroup,
    FinderLaunchTemplate,
    WorkerLaunchTemplate,
    FinderGroup,
    WorkerGroup,
    /// The worker group's termination lifecycle hook (scale-in waits for a worker to release its jobs).
    DrainHook,
    ScalingPolicies,
    Alarms,
    Dashboard,
    Topic,
    BucketNotification,
}

/// `f`, unless the resource's recorded name is empty (never created, or not found by import): then a
/// not-found error without any call.
async fn unless_empty<T>(name: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    if name.is_empty() {
        let mut e = ProvisionError::new("reading transfer", "", "not recorded in its state");
        e.code = Some("NotFound".into());
        return Err(e);
    }
    f.await
}

/// What the cloud holds of the transfer `infra` describes, with a fixed number of AWS calls (see the module
/// docs). `None` when the transfer vanished entirely (queue, table and both groups gone).
pub async fn observe<P: Payload>(
    c: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec<P>,
    infra: &Infra,
) -> Result<Option<Observed<P>>> {
    // Boxed: sixteen SDK futures joined are too large for a thread's stack in debug builds.
    Box::pin(observe_inner(c, cfg, spec, infra)).await
}

async fn observe_inner<P: Payload>(
    c: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec<P>,
    infra: &Infra,
) -> Result<Option<Observed<P>>> {
    let n = Names::new(&spec.name);
    // Without these the calls below would describe the whole account (empty name lists mean "all").
    for (what, v) in [
        ("queue_url", &infra.queue_url),
        ("dlq_url", &infra.dlq_url),
        ("table", &infra.table),
        ("finder_asg", &infra.finder_asg),
        ("worker_asg", &infra.worker_asg),
    ] {
        if v.is_empty() {
            return Err(ProvisionError::new(
                "reading transfer",
                &spec.name,
                format!("its state has no {what}: import the transfer again"),
            ));
        }
    }
    let queue_f = c
        .sqs
        .get_queue_attributes()
        .queue_url(&infra.queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::MessageRetentionPeriod)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .map_err_async("reading SQS queue", &infra.queue_url);
    let dlq_f = c
        .sqs
        .get_queue_attributes()
        .queue_url(&infra.dlq_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::MessageRetentionPeriod)
        .send()
        .map_err_async("reading SQS queue", &infra.dlq_url);
    let ttl_f = c
        .dynamodb
        .describe_time_to_live()
        .table_name(&infra.table)
        .send()
        .map_err_async("reading DynamoDB time to live", &infra.table);
    let mut progress = Progress::default();
    let ledger_f = Box::pin(table::ledger_progress(c, &infra.table, &mut progress));
    let groups_f = c
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&infra.finder_asg)
        .auto_scaling_group_names(&infra.worker_asg)
        .send()
        .map_err_async("reading Auto Scaling groups", &infra.worker_asg);
    let actions_f = c
        .autoscaling
        .describe_scheduled_actions()
        .auto_scaling_group_name(&infra.finder_asg)
        .send()
        .map_err_async("reading scheduled actions", &infra.finder_asg);
    let policies_f = c
        .autoscaling
        .describe_policies()
        .auto_scaling_group_name(&infra.worker_asg)
        .policy_names(&n.scale_out_policy)
        .policy_names(&n.scale_in_policy)
        .send()
        .map_err_async("reading scaling policies", &infra.worker_asg);
    let hook_f = c
        .autoscaling
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(&infra.worker_asg)
        .lifecycle_hook_names(&n.drain_hook)
        .send()
        .map_err_async("reading lifecycle hooks", &infra.worker_asg);
    // Outer None: not checked (a transfer made before the provider created log groups has none).
    let log_group_f = async {
        if infra.log_group.is_empty() {
            return Ok(None);
        }
        super::logs::find(c, &infra.log_group).await.map(Some)
    };
    let templates_f = c
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
        .map_err_async("reading launch templates", &n.worker_launch_template);
    let profile_f = unless_empty(
        &infra.instance_profile_name,
        c.iam
            .get_instance_profile()
            .instance_profile_name(&infra.instance_profile_name)
            .send()
            .map_err_async("reading IAM instance profile", &infra.instance_profile_name),
    );
    let policy_f = unless_empty(
        &infra.policy_name,
        c.iam
            .get_role_policy()
            .role_name(&infra.role_name)
            .policy_name(&infra.policy_name)
            .send()
            .map_err_async("reading IAM role policy", &infra.policy_name),
    );
    // An empty name list would describe every alarm of the account.
    let alarms_f = unless_empty(
        infra.alarm_names.first().map_or("", String::as_str),
        c.cloudwatch
            .describe_alarms()
            .set_alarm_names(Some(infra.alarm_names.clone()))
            .send()
            .map_err_async("reading CloudWatch alarms", &n.dead_letter_alarm),
    );
    let dashboard_f = unless_empty(
        &infra.dashboard,
        c.cloudwatch
            .get_dashboard()
            .dashboard_name(&infra.dashboard)
            .send()
            .map_err_async("reading CloudWatch dashboard", &infra.dashboard),
    );
    let group_f = async {
        match &infra.security_group_id {
            Some(sg) => present(
                c.ec2
                    .describe_security_groups()
                    .group_ids(sg)
                    .send()
                    .map_err_async("reading security group", sg)
                    .await,
            )
            .map(|o| Some(o.is_some_and(|o| !o.security_groups().is_empty()))),
            None => Ok(None),
        }
    };
    let subs_f = async {
        match &infra.topic_arn {
            Some(t) => present(
                c.sns
                    .list_subscriptions_by_topic()
                    .topic_arn(t)
                    .send()
                    .map_err_async("reading SNS subscriptions", t)
                    .await,
            )
            .map(Some),
            None => Ok(None),
        }
    };
    let notification_f = async {
        match (&infra.notification_id, spec.notifications()) {
            (Some(_), Some(source)) => bucket_notifications(c, &source.bucket).await.map(Some),
            _ => Ok(None),
        }
    };
    let (
        queue,
        dlq,
        ledger,
        groups,
        actions,
        policies,
        hook,
        log_group,
        templates,
        profile,
        policy,
        alarms,
        dashboard,
        group,
        subs,
        notification,
        ttl,
    ) = tokio::join!(
        queue_f,
        dlq_f,
        ledger_f,
        groups_f,
        actions_f,
        policies_f,
        hook_f,
        log_group_f,
        templates_f,
        profile_f,
        policy_f,
        alarms_f,
        dashboard_f,
        group_f,
        subs_f,
        notification_f,
        ttl_f
    );

    let mut missing = Vec::new();
    let mut drifted: Vec<Drift> = Vec::new();
    let mut live = spec.clone();
    let mut live_infra = infra.clone();

    let queue = present(queue)?;
    let table_present = present(ledger)?.is_some();
    let groups = groups?;
    let find_group = |name: &str| {
        groups
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(name))
    };
    let (finder_group, worker_group) =
        (find_group(&infra.finder_asg), find_group(&infra.worker_asg));
    if queue.is_none() && !table_present && finder_group.is_none() && worker_group.is_none() {
        return Ok(None);
    }

    match &queue {
        Some(q) => {
            progress.queue_visible = queues::attr(
                q.attributes(),
                QueueAttributeName::ApproximateNumberOfMessages,
            );
            progress.queue_in_flight = queues::attr(
                q.attributes(),
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            );
        }
        None => missing.push(Component::Queue),
    }
    let dlq = present(dlq)?;
    match &dlq {
        Some(d) => {
            progress.dead_letters = queues::attr(
                d.attributes(),
                QueueAttributeName::ApproximateNumberOfMessages,
            )
        }
        None => missing.push(Component::DeadLetterQueue),
    }
    let queue_policy = spec.notifications().and_then(|source| {
        super::policy::queue_policy(&infra.queue_arn, &source.bucket, c.partition()).ok()
    });
    drifted.extend(drift::queues(
        queue.as_ref().and_then(|q| q.attributes()),
        dlq.as_ref().and_then(|d| d.attributes()),
        infra,
        queue_policy.as_deref(),
    ));
    if table_present {
        drifted.extend(drift::time_to_live(
            present(ttl)?
                .as_ref()
                .and_then(|t| t.time_to_live_description()),
        ));
    }
    if !table_present {
        missing.push(Component::Table);
    }
    // The retention is live (a hand-made change shows as a diff and is put back in place); a group deleted by
    // hand is missing.
    match log_group? {
        Some(Some(g)) => live.log_retention_days = super::logs::retention_of(&g),
        Some(None) => missing.push(Component::LogGroup),
        None => {}
    }

    // Launch template contents: the versions the groups use (one more round trip: they come from the groups).
    let templates = templates?;
    let lt_exists = |id: &str| {
        templates
            .launch_templates()
            .iter()
            .any(|t| t.launch_template_id() == Some(id))
    };
    let group_version = |g: Option<&aws_sdk_autoscaling::types::AutoScalingGroup>,
                         fallback: i64| {
        g.and_then(|g| g.launch_template())
            .and_then(|t| t.version())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(fallback)
    };
    live_infra.finder_launch_template_version =
        group_version(finder_group, infra.finder_launch_template_version);
    live_infra.worker_launch_template_version =
        group_version(worker_group, infra.worker_launch_template_version);
    let version_f = |id: &str, v: i64| {
        let id = id.to_owned();
        async move {
            if !lt_exists(&id) {
                return Ok(None);
            }
            present(
                c.ec2
                    .describe_launch_template_versions()
                    .launch_template_id(&id)
                    .versions(v.to_string())
                    .send()
                    .map_err_async(
                        "reading launch template version",
                        &format!("{id} version {v}"),
                    )
                    .await,
            )
            .map(|o| o.and_then(|o| o.launch_template_versions().first().cloned()))
        }
    };
    let (finder_v, worker_v) = tokio::join!(
        version_f(
            &infra.finder_launch_template_id,
            live_infra.finder_launch_template_version
        ),
        version_f(
            &infra.worker_launch_template_id,
            live_infra.worker_launch_template_version
        )
    );
    let (finder_v, worker_v) = (finder_v?, worker_v?);
    if finder_v.is_none() {
        missing.push(Component::FinderLaunchTemplate);
    }
    if worker_v.is_none() {
        missing.push(Component::WorkerLaunchTemplate);
    }
    if let Some((data, parsed)) = launch(&worker_v) {
        if let Some(t) = data.instance_type() {
            live.fleet.instance_type = t.as_str().to_owned();
        }
        apply_fleet_data(&mut live, infra, data);
        if let Some(ls) = parsed {
            apply_launch(&mut live, cfg, &ls);
        }
    }
    if let Some((data, parsed)) = launch(&finder_v) {
        if let Some(t) = data.instance_type() {
            live.finder.instance_type = t.as_str().to_owned();
        }
        // The finder's copy of the job config should match the worker's; a hand edit of either shows.
        if let Some(ls) = parsed {
            let mut from_finder = live.clone();
            from_finder.apply_transfer_config(&ls.config, cfg);
            if from_finder != live {
                live = from_finder;
            }
        }
    }

    match finder_group {
        Some(_) => {}
        None => missing.push(Component::FinderGroup),
    }
    match worker_group {
        Some(g) => {
            let min = g.min_size().unwrap_or(0).max(0) as u32;
            let max = g.max_size().unwrap_or(0).max(0) as u32;
            let desired = g.desired_capacity().unwrap_or(0).max(0) as u32;
            live.fleet.min = min;
            live.fleet.max = max;
            // Step scaling owns the desired capacity between min and max; only a value outside is drift.
            live.fleet.desired = if (min..=max).contains(&spec.fleet.desired) {
                spec.fleet.desired
            } else {
                desired
            };
            let zones: Vec<String> = g
                .vpc_zone_identifier()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if !(spec.fleet.subnet_ids.is_empty() && sorted(&zones) == sorted(&infra.subnet_ids)) {
                live.fleet.subnet_ids = zones;
            }
            live.tags = spec_tags(
                cfg,
                g.tags().iter().filter_map(|t| {
                    Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned()))
                }),
            );
        }
        None => missing.push(Component::WorkerGroup),
    }

    if let Some(q) = &queue {
        if let Some(m) = queues::max_receive_count(q.attributes()) {
            live.max_attempts = m;
        }
    }

    // Schedule: our recurring action, else "once" (which leaves nothing behind to read).
    if let Ok(a) = &actions {
        drifted.extend(drift::schedule(a.scheduled_update_group_actions(), &n));
        let cron = a
            .scheduled_update_group_actions()
            .iter()
            .find(|a| a.scheduled_action_name() == Some(n.schedule_action.as_str()))
            .and_then(|a| a.recurrence())
            .map(str::to_owned);
        live.schedule = match cron {
            Some(c) => Schedule::parse(&c)
                .map(|s| s.as_str().to_owned())
                .unwrap_or(c),
            None => "once".into(),
        };
    } else if let Err(e) = actions {
        if !e.is_not_found() {
            return Err(e);
        }
    }

    let policies = present(policies)?;
    if let Some(p) = &policies {
        drifted.extend(drift::scaling(p.scaling_policies(), &n, spec.fleet.min));
    }
    let policy_count = policies.as_ref().map_or(0, |p| p.scaling_policies().len());
    if policy_count < 2 && worker_group.is_some() {
        missing.push(Component::ScalingPolicies);
    }
    let hook = present(hook)?;
    if let Some(h) = &hook {
        drifted.extend(drift::drain_hook(
            h.lifecycle_hooks(),
            &n,
            super::fleet::drain_timeout_secs(spec),
        ));
    }
    let has_hook = hook.is_some_and(|h| {
        h.lifecycle_hooks()
            .iter()
            .any(|h| h.lifecycle_hook_name() == Some(n.drain_hook.as_str()))
    });
    if !has_hook && worker_group.is_some() {
        missing.push(Component::DrainHook);
    }

    match present(profile)? {
        Some(p) => {
            let has_role = p
                .instance_profile()
                .is_some_and(|ip| ip.roles().iter().any(|r| r.role_name() == infra.role_name));
            if !has_role {
                missing.push(Component::Role);
            }
        }
        None => missing.push(Component::InstanceProfile),
    }
    match present(policy)? {
        Some(p) => {
            if let Ok(want) = super::policy::access_policy(spec, infra, &n) {
                drifted.extend(drift::role_policy(Some(p.policy_document()), &want));
            }
        }
        None => missing.push(Component::RolePolicy),
    }
    if group? == Some(false) {
        missing.push(Component::SecurityGroup);
    }

    let alarms = present(alarms)?;
    let found_alarms: Vec<&str> = alarms
        .iter()
        .flat_map(|a| a.metric_alarms())
        .filter_map(|a| a.alarm_name())
        .collect();
    if alarms.is_none()
        || infra
            .alarm_names
            .iter()
            .any(|a| !found_alarms.contains(&a.as_str()))
    {
        missing.push(Component::Alarms);
    }
    if let Some(a) = &alarms {
        drifted.extend(drift::alarms(a.metric_alarms(), &alarm_wants(infra, &n)));
    }
    match present(dashboard)? {
        Some(d) => drifted.extend(drift::dashboard(
            d.dashboard_body(),
            &super::alarms::dashboard_body(&infra.region, &n),
        )),
        None => missing.push(Component::Dashboard),
    }

    match subs? {
        Some(Some(s)) => {
            let email = s
                .subscriptions()
                .iter()
                .find(|s| s.protocol() == Some("email"))
                .and_then(|s| {
                    Some((
                        s.endpoint()?.to_owned(),
                        s.subscription_arn().map(str::to_owned),
                    ))
                });
            live.alarm_email = email.as_ref().map(|(e, _)| e.clone());
            live_infra.subscription_arn = email.and_then(|(_, a)| a);
        }
        Some(None) => {
            missing.push(Component::Topic);
        }
        None => live.alarm_email = None,
    }

    if let Some(config) = notification? {
        let ours = config
            .queue_configurations()
            .iter()
            .find(|q| Some(q.id().unwrap_or("")) == infra.notification_id.as_deref());
        match ours {
            Some(q) => {
                let deletes = q
                    .events()
                    .iter()
                    .any(|e| e.as_str().starts_with("s3:ObjectRemoved"));
                if let Some(source) = live.notifications_mut() {
                    source.events = if deletes {
                        EventsMode::CreateAndDelete
                    } else {
                        EventsMode::Create
                    };
                }
            }
            None => missing.push(Component::BucketNotification),
        }
    }

    // Launch template content beyond what the live spec shows (IMDSv2, the instance profile, the user data as
    // the provider renders it from that spec).
    for (component, version, role) in [
        (
            Component::WorkerLaunchTemplate,
            &worker_v,
            userdata::Role::Worker,
        ),
        (
            Component::FinderLaunchTemplate,
            &finder_v,
            userdata::Role::Finder,
        ),
    ] {
        if let Some(data) = version.as_ref().and_then(|v| v.launch_template_data()) {
            let want = super::fleet::launch_template_data(cfg, &live, &live_infra, &n, role);
            drifted.extend(drift::launch_template(component, data, &want));
        }
    }
    missing.sort();
    missing.dedup();
    // A missing piece replaces the whole transfer: its settings need no separate report.
    drifted.retain(|d| !missing.contains(&d.component));
    progress.status = progress.status_of();
    let worker_desired = worker_group
        .and_then(|g| g.desired_capacity())
        .unwrap_or(0)
        .max(0) as u32;
    Ok(Some(Observed {
        spec: live,
        infra: live_infra,
        missing,
        progress,
        worker_desired,
        drift: drifted,
    }))
}

/// The alarms the provider puts, as [`drift::alarms`] checks them.
fn alarm_wants<'a>(infra: &Infra, n: &'a Names) -> Vec<drift::AlarmWant<'a>> {
    let base = f64::from(super::fleet::SCALE_OUT_STEPS[0].0);
    vec![
        drift::AlarmWant {
            name: &n.backlog_alarm,
            threshold: base,
            evaluation_periods: 1,
            comparison: "GreaterThanOrEqualToThreshold",
            actions: vec![infra.scale_out_policy_arn.clone()],
        },
        drift::AlarmWant {
            name: &n.empty_alarm,
            threshold: 0.0,
            evaluation_periods: super::fleet::SCALE_IN_AFTER_MINUTES / 5,
            comparison: "LessThanOrEqualToThreshold",
            actions: vec![infra.scale_in_policy_arn.clone()],
        },
        drift::AlarmWant {
            name: &n.dead_letter_alarm,
            threshold: 1.0,
            evaluation_periods: 1,
            comparison: "GreaterThanOrEqualToThreshold",
            actions: infra.topic_arn.iter().cloned().collect(),
        },
    ]
}

/// A launch template version's data and its parsed user data (None when it is not ours to read).
fn launch(
    v: &Option<aws_sdk_ec2::types::LaunchTemplateVersion>,
) -> Option<(
    &aws_sdk_ec2::types::ResponseLaunchTemplateData,
    Option<LaunchSpec>,
)> {
    v.as_ref()
        .and_then(|v| v.launch_template_data())
        .map(|d| (d, d.user_data().and_then(|u| userdata::parse(u).ok())))
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// Fleet settings a worker launch template holds: security groups and AMI (reported as the spec's defaults
/// when they are the ones the provider chose).
fn apply_fleet_data<P: Payload>(
    live: &mut TransferSpec<P>,
    infra: &Infra,
    data: &aws_sdk_ec2::types::ResponseLaunchTemplateData,
) {
    let groups: Vec<String> = data.security_group_ids().to_vec();
    let ours = infra.security_group_id.as_ref().map(|g| vec![g.clone()]);
    live.fleet.security_group_ids = if Some(&groups) == ours.as_ref() {
        Vec::new()
    } else {
        groups
    };
    if let Some(ami) = data.image_id() {
        live.fleet.ami_id = if live.fleet.ami_id.is_none() && ami == infra.ami_id {
            None
        } else {
            Some(ami.to_owned())
        };
    }
}

/// What the worker's user data carries: the job config, the image and `--concurrency` (which wins over the job
/// config's `worker.concurrency`).
fn apply_launch<P: Payload>(live: &mut TransferSpec<P>, cfg: &ProviderConfig, ls: &LaunchSpec) {
    live.apply_transfer_config(&ls.config, cfg);
    live.fleet.image = ls.image.clone();
    live.worker.concurrency = ls
        .args
        .windows(2)
        .find(|w| w[0] == "--concurrency")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(ls.config.worker().concurrency);
}

/// Rebuild a transfer's spec and infra from the cloud, by name (`terraform import`).
pub async fn import<P: Payload>(
    c: &AwsClients,
    cfg: &ProviderConfig,
    name: &str,
) -> Result<(TransferSpec<P>, Infra)> {
    Box::pin(import_inner(c, cfg, name)).await
}

async fn import_inner<P: Payload>(
    c: &AwsClients,
    cfg: &ProviderConfig,
    name: &str,
) -> Result<(TransferSpec<P>, Infra)> {
    validate_name(name).map_err(|m| ProvisionError::new("importing transfer", name, m))?;
    let n = Names::new(name);
    let mut infra = Infra {
        region: c.region().to_owned(),
        ..Infra::default()
    };

    // The groups and their launch templates carry almost everything.
    let what = "reading Auto Scaling groups";
    let groups = c
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&n.finder_asg)
        .auto_scaling_group_names(&n.worker_asg)
        .send()
        .map_err_async(what, &n.worker_asg)
        .await?;
    let group = |asg: &str| {
        groups
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(asg))
            .cloned()
            .ok_or_else(|| {
                ProvisionError::new(
                    "importing transfer",
                    name,
                    format!(
                        "no Auto Scaling group {asg}: is there a transfer named {name:?} in {}?",
                        c.region()
                    ),
                )
            })
    };
    let (finder_g, worker_g) = (group(&n.finder_asg)?, group(&n.worker_asg)?);
    let lt_of = |g: &aws_sdk_autoscaling::types::AutoScalingGroup| {
        let t = g.launch_template();
        (
            t.and_then(|t| t.launch_template_id())
                .unwrap_or("")
                .to_owned(),
            t.and_then(|t| t.version())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(1),
        )
    };
    (
        infra.finder_launch_template_id,
        infra.finder_launch_template_version,
    ) = lt_of(&finder_g);
    (
        infra.worker_launch_template_id,
        infra.worker_launch_template_version,
    ) = lt_of(&worker_g);
    infra.finder_asg = n.finder_asg.clone();
    infra.worker_asg = n.worker_asg.clone();

    let version = |id: String, v: i64| async move {
        let out = c
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(&id)
            .versions(v.to_string())
            .send()
            .map_err_async(
                "reading launch template version",
                &format!("{id} version {v}"),
            )
            .await?;
        out.launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data())
            .cloned()
            .ok_or_else(|| {
                ProvisionError::new("reading launch template version", &id, "no such version")
            })
    };
    let worker_data = version(
        infra.worker_launch_template_id.clone(),
        infra.worker_launch_template_version,
    )
    .await?;
    let finder_data = version(
        infra.finder_launch_template_id.clone(),
        infra.finder_launch_template_version,
    )
    .await?;
    let launch = userdata::parse(worker_data.user_data().unwrap_or("")).map_err(|e| {
        ProvisionError::new("reading worker user data", &n.worker_launch_template, e)
    })?;

    let mut spec = P::default_spec(name, &launch.image);
    if !spec.apply_transfer_config(&launch.config, cfg) {
        return Err(ProvisionError::new(
            "importing transfer",
            name,
            format!(
                "its instances run another kind of transfer than a {} (import it as that resource)",
                P::RESOURCE
            ),
        ));
    }
    apply_launch(&mut spec, cfg, &launch);
    if let Some(t) = worker_data.instance_type() {
        spec.fleet.instance_type = t.as_str().to_owned();
    }
    if let Some(t) = finder_data.instance_type() {
        spec.finder.instance_type = t.as_str().to_owned();
    }
    infra.queue_url = launch.config.queue().url.clone();
    infra.table = launch.config.ledger().table.clone();
    // The log group the containers log to (none for a transfer made before the provider created one). A group
    // gone since stays recorded, so that the next read reports it missing.
    if let Some(group) = &launch.log_group {
        infra.log_group = group.clone();
        if let Some(found) = super::logs::find(c, group).await? {
            spec.log_retention_days = super::logs::retention_of(&found);
        }
    }
    infra.ami_id = worker_data.image_id().unwrap_or("").to_owned();
    infra.instance_profile_arn = worker_data
        .iam_instance_profile()
        .and_then(|p| p.arn())
        .unwrap_or("")
        .to_owned();

    // Which fleet settings the provider chose (so they stay empty in the spec).
    let all_tags: BTreeMap<String, String> = worker_g
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
        .collect();
    // Only what is tagged as this transfer's is adopted: both groups carry its name and the same creation id.
    infra.creation_id = all_tags.get(CREATION_TAG).cloned().unwrap_or_default();
    for g in [&worker_g, &finder_g] {
        let tags = g
            .tags()
            .iter()
            .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or("")));
        if Owner::of(tags, name, &infra.creation_id) != Owner::Us {
            return Err(ProvisionError::new(
                "importing transfer",
                name,
                format!(
                    "the Auto Scaling group {} is not tagged as transfer {name:?}'s ({TRANSFER_TAG} = {name}, one \
                     {CREATION_TAG} on both groups): not adopted",
                    g.auto_scaling_group_name().unwrap_or_default()
                ),
            ));
        }
    }
    let defaults: Vec<&str> = all_tags
        .get(DEFAULTS_TAG)
        .map(|d| d.split(',').collect())
        .unwrap_or_default();
    spec.fleet.min = worker_g.min_size().unwrap_or(0).max(0) as u32;
    spec.fleet.max = worker_g.max_size().unwrap_or(0).max(0) as u32;
    spec.fleet.desired = worker_g.desired_capacity().unwrap_or(0).max(0) as u32;
    infra.subnet_ids = worker_g
        .vpc_zone_identifier()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !defaults.contains(&"subnet_ids") {
        spec.fleet.subnet_ids = infra.subnet_ids.clone();
    }
    let groups_of_lt = worker_data.security_group_ids().to_vec();
    if defaults.contains(&"security_group_ids") {
        infra.security_group_id = groups_of_lt.first().cloned();
    } else {
        spec.fleet.security_group_ids = groups_of_lt;
    }
    if !defaults.contains(&"ami_id") {
        spec.fleet.ami_id = Some(infra.ami_id.clone());
    }
    spec.tags = spec_tags(cfg, all_tags.clone());
    infra.tags = all_tags
        .into_iter()
        .filter(|(k, _)| k != DEFAULTS_TAG)
        .collect();

    // Queues: the DLQ from the redrive policy.
    let q = c
        .sqs
        .get_queue_attributes()
        .queue_url(&infra.queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .map_err_async("reading SQS queue", &infra.queue_url)
        .await?;
    infra.queue_arn = q
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .unwrap_or_default();
    if let Some(m) = queues::max_receive_count(q.attributes()) {
        spec.max_attempts = m;
    }
    let dlq = c
        .sqs
        .get_queue_url()
        .queue_name(&n.dlq)
        .send()
        .map_err_async("reading SQS queue", &n.dlq)
        .await?;
    infra.dlq_url = dlq.queue_url().unwrap_or("").to_owned();
    infra.dlq_arn = match infra.queue_arn.rsplit_once(':') {
        Some((head, _)) => format!("{head}:{}", n.dlq),
        None => String::new(),
    };

    // IAM.
    let profile = c
        .iam
        .get_instance_profile()
        .instance_profile_name(&n.instance_profile)
        .send()
        .map_err_async("reading IAM instance profile", &n.instance_profile)
        .await?;
    infra.instance_profile_name = n.instance_profile.clone();
    if let Some(ip) = profile.instance_profile() {
        infra.instance_profile_arn = ip.arn().to_owned();
        if let Some(r) = ip.roles().first() {
            infra.role_name = r.role_name().to_owned();
            infra.role_arn = r.arn().to_owned();
        }
    }
    infra.policy_name = n.policy.clone();

    // Scaling policies, schedule, alarms, dashboard.
    let policies = c
        .autoscaling
        .describe_policies()
        .auto_scaling_group_name(&n.worker_asg)
        .send()
        .map_err_async("reading scaling policies", &n.worker_asg)
        .await?;
    for p in policies.scaling_policies() {
        let arn = p.policy_arn().unwrap_or("").to_owned();
        match p.policy_name() {
            Some(x) if x == n.scale_out_policy => infra.scale_out_policy_arn = arn,
            Some(x) if x == n.scale_in_policy => infra.scale_in_policy_arn = arn,
            _ => {}
        }
    }
    let actions = c
        .autoscaling
        .describe_scheduled_actions()
        .auto_scaling_group_name(&n.finder_asg)
        .send()
        .map_err_async("reading scheduled actions", &n.finder_asg)
        .await?;
    if let Some(cron) = actions
        .scheduled_update_group_actions()
        .iter()
        .find(|a| a.scheduled_action_name() == Some(n.schedule_action.as_str()))
        .and_then(|a| a.recurrence())
    {
        spec.schedule = Schedule::parse(cron)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| cron.to_owned());
        infra.schedule_action = Some(n.schedule_action.clone());
    }
    let alarms = c
        .cloudwatch
        .describe_alarms()
        .alarm_names(&n.backlog_alarm)
        .alarm_names(&n.empty_alarm)
        .alarm_names(&n.dead_letter_alarm)
        .send()
        .map_err_async("reading CloudWatch alarms", &n.dead_letter_alarm)
        .await?;
    for want in [&n.backlog_alarm, &n.empty_alarm, &n.dead_letter_alarm] {
        if let Some(a) = alarms
            .metric_alarms()
            .iter()
            .find(|a| a.alarm_name() == Some(want.as_str()))
        {
            infra.alarm_names.push(want.clone());
            if *want == n.dead_letter_alarm {
                infra.topic_arn = a.alarm_actions().first().cloned();
            }
        }
    }
    if present(
        c.cloudwatch
            .get_dashboard()
            .dashboard_name(&n.dashboard)
            .send()
            .map_err_async("reading CloudWatch dashboard", &n.dashboard)
            .await,
    )?
    .is_some()
    {
        infra.dashboard = n.dashboard.clone();
    }
    if let Some(topic) = &infra.topic_arn {
        let subs = c
            .sns
            .list_subscriptions_by_topic()
            .topic_arn(topic)
            .send()
            .map_err_async("reading SNS subscriptions", topic)
            .await?;
        if let Some(s) = subs
            .subscriptions()
            .iter()
            .find(|s| s.protocol() == Some("email"))
        {
            spec.alarm_email = s.endpoint().map(str::to_owned);
            infra.subscription_arn = s.subscription_arn().map(str::to_owned);
        }
    }
    if let Some(source) = spec.notifications() {
        let config = bucket_notifications(c, &source.bucket).await?;
        if config
            .queue_configurations()
            .iter()
            .any(|q| q.id() == Some(n.notification_id.as_str()))
        {
            infra.notification_id = Some(n.notification_id.clone());
        }
    }
    Ok((spec, infra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_max_receive_count_in_either_form() {
        let mut a = std::collections::HashMap::new();
        a.insert(
            QueueAttributeName::RedrivePolicy,
            r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":"7"}"#.to_owned(),
        );
        assert_eq!(queues::max_receive_count(Some(&a)), Some(7));
        a.insert(
            QueueAttributeName::RedrivePolicy,
            r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":3}"#.to_owned(),
        );
        assert_eq!(queues::max_receive_count(Some(&a)), Some(3));
        assert_eq!(queues::max_receive_count(None), None);
    }
}
