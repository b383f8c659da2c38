//! Update in place: what AWS can change without recreating the transfer. Everything else is listed by
//! [`requires_replace`].

use std::collections::BTreeMap;

use aws_sdk_sqs::types::QueueAttributeName;
use dth_core::userdata::Role;

use super::fleet::{asg_tag, defaults_tag, launch_template_data, lt_spec, put_scale_in_policy};
use super::infra::{
    resource_tags, Infra, MapErrAsync, Names, ProvisionError, Result, DEFAULTS_TAG,
};
use super::policy::access_policy;
use super::queues::redrive_policy;
use super::read::Component;
use super::spec::{Payload, Schedule, TransferSpec};
use super::{alarms, fleet, iam, logs, queues, table};
use crate::aws::{AwsClients, ProviderConfig};

/// Attribute paths whose change needs a new transfer: its name, what the kind of transfer says ([`Payload::requires_replace`]:
/// its identity and regions), and switching between a provider-made security group and the user's own.
pub fn requires_replace<P: Payload>(
    old: &TransferSpec<P>,
    new: &TransferSpec<P>,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.name != new.name {
        out.push("name");
    }
    if old.name_prefix != new.name_prefix {
        out.push("name_prefix");
    }
    out.extend(P::requires_replace(&old.payload, &new.payload));
    if old.fleet.security_group_ids.is_empty() != new.fleet.security_group_ids.is_empty() {
        out.push("fleet.security_group_ids");
    }
    out
}

/// Whether [`update_repairing`] from `old` to `new` leaves the infra (ids, versions, tags) exactly as it is, so
/// that a plan can promise it unchanged. False when a launch template gets a new version, the tags, subnets or
/// AMI change, the alarm email or the schedule changes (topic, subscription, scheduled action), `fleet.min`
/// changes (the scale-in policy is put again), or a repair puts policies, alarms or templates again.
pub fn infra_unchanged<P: Payload>(
    cfg: &ProviderConfig,
    old: (&TransferSpec<P>, &Infra),
    new: &TransferSpec<P>,
    repair: &[Component],
) -> bool {
    let (old_spec, infra) = old;
    let n = Names::new(&new.name);
    let rewritten = [
        Component::WorkerLaunchTemplate,
        Component::FinderLaunchTemplate,
        Component::ScalingPolicies,
        Component::Alarms,
        Component::Dashboard,
    ];
    if repair.iter().any(|r| rewritten.contains(r)) {
        return false;
    }
    if resource_tags(cfg, new, &infra.creation_id) != infra.tags
        || old_spec.alarm_email != new.alarm_email
        || old_spec.schedule != new.schedule
        || old_spec.fleet.min != new.fleet.min
        || old_spec.fleet.subnet_ids != new.fleet.subnet_ids
        || old_spec.fleet.ami_id != new.fleet.ami_id
    {
        return false;
    }
    [Role::Finder, Role::Worker].into_iter().all(|role| {
        launch_template_data(cfg, old_spec, infra, &n, role)
            == launch_template_data(cfg, new, infra, &n, role)
    })
}

/// Change the transfer from `old` to `new` in place. Returns the new infra and warnings (e.g. running
/// instances keeping an old launch template version). On error, what was changed before the failing step
/// stays changed; the next read shows it.
pub async fn update<P: Payload>(
    c: &AwsClients,
    cfg: &ProviderConfig,
    old: (&TransferSpec<P>, &Infra),
    new: &TransferSpec<P>,
) -> Result<(Infra, Vec<String>)> {
    Box::pin(update_inner(c, cfg, old, new, &[])).await
}

/// [`update`], and put back the settings of the `repair` components that a refresh found changed by hand
/// ([`super::drift`]).
pub async fn update_repairing<P: Payload>(
    c: &AwsClients,
    cfg: &ProviderConfig,
    old: (&TransferSpec<P>, &Infra),
    new: &TransferSpec<P>,
    repair: &[Component],
) -> Result<(Infra, Vec<String>)> {
    Box::pin(update_inner(c, cfg, old, new, repair)).await
}

async fn update_inner<P: Payload>(
    c: &AwsClients,
    cfg: &ProviderConfig,
    old: (&TransferSpec<P>, &Infra),
    new: &TransferSpec<P>,
    repair: &[Component],
) -> Result<(Infra, Vec<String>)> {
    let (old_spec, old_infra) = old;
    let problems = new.validate();
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|(p, m)| format!("{p}: {m}")).collect();
        return Err(ProvisionError::new(
            "validating transfer",
            &new.name,
            list.join("; "),
        ));
    }
    let replace = requires_replace(old_spec, new);
    if !replace.is_empty() {
        return Err(ProvisionError::new(
            "updating transfer",
            &new.name,
            format!(
                "{} cannot change in place: the transfer must be replaced",
                replace.join(", ")
            ),
        ));
    }
    let n = Names::new(&new.name);
    let mut infra = old_infra.clone();
    let mut warnings = Vec::new();

    if repair.contains(&Component::Queue) || repair.contains(&Component::DeadLetterQueue) {
        Box::pin(queues::put_settings(c, new, &infra)).await?;
    }
    if repair.contains(&Component::Table) {
        Box::pin(table::enable_time_to_live(c, &infra.table)).await?;
    }
    if old_spec.max_attempts != new.max_attempts {
        c.sqs
            .set_queue_attributes()
            .queue_url(&infra.queue_url)
            .attributes(
                QueueAttributeName::RedrivePolicy,
                redrive_policy(&infra.dlq_arn, new.max_attempts),
            )
            .send()
            .map_err_async("updating SQS queue redrive policy", &n.queue)
            .await?;
    }

    if old_spec.log_retention_days != new.log_retention_days && !infra.log_group.is_empty() {
        super::logs::put_retention(c, &infra.log_group, new.log_retention_days).await?;
    }

    let policy = access_policy(new, &infra, &n)?;
    if access_policy(old_spec, old_infra, &n).ok().as_ref() != Some(&policy)
        || repair.contains(&Component::RolePolicy)
    {
        c.iam
            .put_role_policy()
            .role_name(&infra.role_name)
            .policy_name(&infra.policy_name)
            .policy_document(policy)
            .send()
            .map_err_async("updating IAM role policy", &infra.policy_name)
            .await?;
    }

    let tags = resource_tags(cfg, new, &infra.creation_id);
    if tags != infra.tags {
        Box::pin(retag(c, &infra, &tags)).await?;
        infra.tags = tags;
    }

    Box::pin(alarms::update_alarm_email(c, old_spec, new, &n, &mut infra)).await?;

    // Fleet network and AMI: keep what the provider resolved unless the user now names their own.
    if !new.fleet.subnet_ids.is_empty() {
        infra.subnet_ids = new.fleet.subnet_ids.clone();
    } else if !old_spec.fleet.subnet_ids.is_empty() {
        return Err(ProvisionError::new(
            "updating transfer",
            &new.name,
            "fleet.subnet_ids cannot go back to empty (the default VPC's subnets) in place: list the subnets",
        ));
    }
    match &new.fleet.ami_id {
        Some(a) => infra.ami_id = a.clone(),
        None if old_spec.fleet.ami_id.is_some() => {
            return Err(ProvisionError::new(
                "updating transfer",
                &new.name,
                "fleet.ami_id cannot go back to empty (the newest AMI) in place: name the AMI",
            ))
        }
        None => {}
    }

    // New launch template versions where the rendered data changed (job settings, image, concurrency,
    // instance types, AMI, security groups, tags).
    let mut worker_template_changed = false;
    for role in [Role::Finder, Role::Worker] {
        let before = launch_template_data(cfg, old_spec, old_infra, &n, role);
        let after = launch_template_data(cfg, new, &infra, &n, role);
        let component = match role {
            Role::Finder => Component::FinderLaunchTemplate,
            Role::Worker => Component::WorkerLaunchTemplate,
        };
        if before == after && !repair.contains(&component) {
            continue;
        }
        let (id, name) = match role {
            Role::Finder => (&infra.finder_launch_template_id, &n.finder_launch_template),
            Role::Worker => (&infra.worker_launch_template_id, &n.worker_launch_template),
        };
        let what = "creating launch template version";
        let out = c
            .ec2
            .create_launch_template_version()
            .launch_template_id(id)
            .version_description("terraform-provider-dth")
            .launch_template_data(after)
            .send()
            .map_err_async(what, name)
            .await?;
        let version = out
            .launch_template_version()
            .and_then(|v| v.version_number())
            .ok_or_else(|| ProvisionError::new(what, name, "the response has no version number"))?;
        match role {
            Role::Finder => infra.finder_launch_template_version = version,
            Role::Worker => {
                infra.worker_launch_template_version = version;
                worker_template_changed = true;
            }
        }
    }

    let f_old = &old_spec.fleet;
    let f_new = &new.fleet;
    let subnets_changed = infra.subnet_ids != old_infra.subnet_ids;
    // Capacity first, template and subnets second: instances the new capacity starts come from the version
    // running now and are replaced by the instance refresh below. (moto, the local stand-in, cannot launch
    // from a version made by CreateLaunchTemplateVersion that carries user data; this order keeps it working.)
    if (f_old.min, f_old.desired, f_old.max) != (f_new.min, f_new.desired, f_new.max) {
        // The desired capacity is step scaling's to move: it is written only when `desired` itself changes, so that
        // a new min or max leaves the fleet as the scaling policies sized it (AWS raises or lowers it into the new
        // bounds by itself).
        let desired = (f_old.desired != f_new.desired).then_some(f_new.desired as i32);
        c.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(&infra.worker_asg)
            .min_size(f_new.min as i32)
            .max_size(f_new.max as i32)
            .set_desired_capacity(desired)
            .send()
            .map_err_async("updating Auto Scaling group capacity", &infra.worker_asg)
            .await?;
    }
    if infra.worker_launch_template_version != old_infra.worker_launch_template_version
        || subnets_changed
    {
        c.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(&infra.worker_asg)
            .launch_template(lt_spec(
                &infra.worker_launch_template_id,
                infra.worker_launch_template_version,
            ))
            .vpc_zone_identifier(infra.subnet_ids.join(","))
            .send()
            .map_err_async(
                "updating Auto Scaling group launch template",
                &infra.worker_asg,
            )
            .await?;
    }
    if f_old.min != f_new.min {
        put_scale_in_policy(c, new, &n, &mut infra).await?;
    }
    if infra.finder_launch_template_version != old_infra.finder_launch_template_version
        || subnets_changed
    {
        c.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(&infra.finder_asg)
            .launch_template(lt_spec(
                &infra.finder_launch_template_id,
                infra.finder_launch_template_version,
            ))
            .vpc_zone_identifier(infra.subnet_ids.join(","))
            .send()
            .map_err_async("updating Auto Scaling group", &infra.finder_asg)
            .await?;
    }
    if defaults_tag(old_spec) != defaults_tag(new) {
        c.autoscaling
            .create_or_update_tags()
            .tags(asg_tag(
                &infra.worker_asg,
                DEFAULTS_TAG,
                &defaults_tag(new),
                false,
            ))
            .send()
            .map_err_async("tagging Auto Scaling group", &infra.worker_asg)
            .await?;
    }

    if repair.contains(&Component::ScalingPolicies) || repair.contains(&Component::Alarms) {
        Box::pin(fleet::put_scaling(c, new, &n, &mut infra)).await?;
        Box::pin(alarms::put_dead_letter_alarm(c, &n, &mut infra)).await?;
    }
    if repair.contains(&Component::Dashboard) {
        Box::pin(alarms::put_dashboard(c, &n, &mut infra)).await?;
    }
    // The drain hook waits for the workers' grace.
    if repair.contains(&Component::DrainHook)
        || old_spec.worker.shutdown_grace_secs != new.worker.shutdown_grace_secs
    {
        Box::pin(fleet::put_drain_hook(c, new, &n)).await?;
    }
    if repair.contains(&Component::FinderGroup) {
        if let Schedule::Cron(cron) = Schedule::parse(&new.schedule)
            .map_err(|m| ProvisionError::new("updating schedule", &n.finder_asg, m))?
        {
            Box::pin(fleet::put_schedule(c, &n, &cron)).await?;
        }
    }
    if old_spec.schedule != new.schedule {
        Box::pin(fleet::update_schedule(c, new, &n, &mut infra)).await?;
    }

    if worker_template_changed {
        let refresh = c
            .autoscaling
            .start_instance_refresh()
            .auto_scaling_group_name(&infra.worker_asg)
            // Only a warning when it fails (new instances get the new version anyway): the SDK's three attempts,
            // not the provider's `max_retries`.
            .customize()
            .config_override(
                aws_sdk_autoscaling::config::Builder::default()
                    .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3)),
            )
            .send()
            .map_err_async("starting instance refresh", &infra.worker_asg)
            .await;
        if let Err(e) = refresh {
            warnings.push(format!(
                "{e}. Running workers keep launch template version {} until they are replaced; new ones start \
                 with version {}.",
                old_infra.worker_launch_template_version, infra.worker_launch_template_version
            ));
        }
    }
    Ok((infra, warnings))
}

/// Puts `tags` on every taggable resource of the transfer and removes the keys no longer wanted. Launch
/// templates' instance and volume tags follow through the new template versions.
async fn retag(c: &AwsClients, infra: &Infra, tags: &BTreeMap<String, String>) -> Result<()> {
    let removed: Vec<String> = infra
        .tags
        .keys()
        .filter(|k| !tags.contains_key(*k))
        .cloned()
        .collect();
    let account = super::policy::account_of(&infra.dlq_arn).unwrap_or("");
    queues::retag(c, infra, tags, &removed).await?;
    table::retag(c, infra, tags, &removed).await?;
    Box::pin(iam::retag(c, infra, tags, &removed)).await?;
    Box::pin(fleet::retag(c, infra, tags, &removed)).await?;
    Box::pin(alarms::retag(c, infra, tags, &removed)).await?;
    if !infra.log_group.is_empty() {
        logs::retag(c, infra, account, tags, &removed).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_changes_need_a_new_transfer() {
        let old = TransferSpec::new("x", "src-bucket", "dst-bucket", "img:1");
        let mut new = old.clone();
        new.fleet.max = 50;
        new.fleet.image = "img:2".into();
        new.schedule = "0 2 * * *".into();
        new.alarm_email = Some("ops@example.com".into());
        new.destination.prefix = "archive".into();
        assert!(requires_replace(&old, &new).is_empty());
        new.source.bucket = "other-bucket".into();
        new.destination.region = Some("eu-west-1".into());
        new.fleet.security_group_ids = vec!["sg-0123".into()];
        assert_eq!(
            requires_replace(&old, &new),
            [
                "source.bucket",
                "destination.region",
                "fleet.security_group_ids"
            ]
        );
    }
}
