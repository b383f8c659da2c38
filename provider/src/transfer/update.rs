//! Update in place: what AWS can change without recreating the transfer. Everything else is listed by
//! [`requires_replace`].

use std::collections::BTreeMap;

use aws_sdk_sqs::types::QueueAttributeName;
use dth_core::userdata::Role;

use super::create::{
    asg_tag, cw_tags, defaults_tag, ec2_tags, launch_template_data, lt_spec, put_dead_letter_alarm,
    put_scale_in_policy, put_schedule, redrive_policy, subscribe, MapErrAsync,
};
use super::infra::{resource_tags, Infra, Names, ProvisionError, Result, DEFAULTS_TAG};
use super::policy::access_policy;
use super::spec::{Schedule, TransferSpec};
use crate::aws::{AwsClients, ProviderConfig};

/// Attribute paths whose change needs a new transfer: its identity (name, buckets, source type), the regions
/// (a transfer between other regions is another transfer: its ledger, queue policy and notifications no longer
/// apply), the events mode (queue policy and bucket notification are made at create), and switching between a
/// provider-made security group and the user's own.
pub fn requires_replace(old: &TransferSpec, new: &TransferSpec) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.name != new.name {
        out.push("name");
    }
    if old.source.kind != new.source.kind {
        out.push("source.type");
    }
    if old.source.bucket != new.source.bucket {
        out.push("source.bucket");
    }
    if old.source.region != new.source.region {
        out.push("source.region");
    }
    if old.source.events != new.source.events {
        out.push("source.events");
    }
    if old.destination.bucket != new.destination.bucket {
        out.push("destination.bucket");
    }
    if old.destination.region != new.destination.region {
        out.push("destination.region");
    }
    if old.fleet.security_group_ids.is_empty() != new.fleet.security_group_ids.is_empty() {
        out.push("fleet.security_group_ids");
    }
    out
}

/// Change the transfer from `old` to `new` in place. Returns the new infra and warnings (e.g. running
/// instances keeping an old launch template version). On error, what was changed before the failing step
/// stays changed; the next read shows it.
pub async fn update(
    c: &AwsClients,
    cfg: &ProviderConfig,
    old: (&TransferSpec, &Infra),
    new: &TransferSpec,
) -> Result<(Infra, Vec<String>)> {
    Box::pin(update_inner(c, cfg, old, new)).await
}

async fn update_inner(
    c: &AwsClients,
    cfg: &ProviderConfig,
    old: (&TransferSpec, &Infra),
    new: &TransferSpec,
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
    if access_policy(old_spec, old_infra, &n).ok().as_ref() != Some(&policy) {
        c.iam
            .put_role_policy()
            .role_name(&infra.role_name)
            .policy_name(&infra.policy_name)
            .policy_document(policy)
            .send()
            .map_err_async("updating IAM role policy", &infra.policy_name)
            .await?;
    }

    let tags = resource_tags(cfg, new);
    if tags != infra.tags {
        Box::pin(retag(c, &infra, &tags)).await?;
        infra.tags = tags;
    }

    Box::pin(update_alarm_email(c, old_spec, new, &n, &mut infra)).await?;

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
        if before == after {
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
        c.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(&infra.worker_asg)
            .min_size(f_new.min as i32)
            .max_size(f_new.max as i32)
            .desired_capacity(f_new.desired as i32)
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

    if old_spec.schedule != new.schedule {
        Box::pin(update_schedule(c, new, &n, &mut infra)).await?;
    }

    if worker_template_changed {
        let refresh = c
            .autoscaling
            .start_instance_refresh()
            .auto_scaling_group_name(&infra.worker_asg)
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

async fn update_schedule(
    c: &AwsClients,
    new: &TransferSpec,
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

async fn update_alarm_email(
    c: &AwsClients,
    old: &TransferSpec,
    new: &TransferSpec,
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
                super::create::create_topic(c, n, email, infra).await?;
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

/// Puts `tags` on every taggable resource of the transfer and removes the keys no longer wanted. Launch
/// templates' instance and volume tags follow through the new template versions.
async fn retag(c: &AwsClients, infra: &Infra, tags: &BTreeMap<String, String>) -> Result<()> {
    let removed: Vec<String> = infra
        .tags
        .keys()
        .filter(|k| !tags.contains_key(*k))
        .cloned()
        .collect();
    let p = crate::aws::partition_of(&infra.region);
    let account = super::policy::account_of(&infra.dlq_arn).unwrap_or("");

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
                .set_tag_keys(Some(removed.clone()))
                .send()
                .map_err_async("untagging SQS queue", url)
                .await?;
        }
    }

    let table_arn = format!(
        "arn:{p}:dynamodb:{}:{account}:table/{}",
        infra.region, infra.table
    );
    let ddb_tags = tags
        .iter()
        .map(|(k, v)| {
            aws_sdk_dynamodb::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| ProvisionError::new("tagging DynamoDB table", &infra.table, e))
        })
        .collect::<Result<Vec<_>>>()?;
    c.dynamodb
        .tag_resource()
        .resource_arn(&table_arn)
        .set_tags(Some(ddb_tags))
        .send()
        .map_err_async("tagging DynamoDB table", &infra.table)
        .await?;
    if !removed.is_empty() {
        c.dynamodb
            .untag_resource()
            .resource_arn(&table_arn)
            .set_tag_keys(Some(removed.clone()))
            .send()
            .map_err_async("untagging DynamoDB table", &infra.table)
            .await?;
    }

    let iam_tags = tags
        .iter()
        .map(|(k, v)| {
            aws_sdk_iam::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| ProvisionError::new("tagging IAM role", &infra.role_name, e))
        })
        .collect::<Result<Vec<_>>>()?;
    c.iam
        .tag_role()
        .role_name(&infra.role_name)
        .set_tags(Some(iam_tags.clone()))
        .send()
        .map_err_async("tagging IAM role", &infra.role_name)
        .await?;
    c.iam
        .tag_instance_profile()
        .instance_profile_name(&infra.instance_profile_name)
        .set_tags(Some(iam_tags))
        .send()
        .map_err_async("tagging IAM instance profile", &infra.instance_profile_name)
        .await?;
    if !removed.is_empty() {
        c.iam
            .untag_role()
            .role_name(&infra.role_name)
            .set_tag_keys(Some(removed.clone()))
            .send()
            .map_err_async("untagging IAM role", &infra.role_name)
            .await?;
        c.iam
            .untag_instance_profile()
            .instance_profile_name(&infra.instance_profile_name)
            .set_tag_keys(Some(removed.clone()))
            .send()
            .map_err_async(
                "untagging IAM instance profile",
                &infra.instance_profile_name,
            )
            .await?;
    }

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
            .set_tags(Some(super::create::asg_tags(tags, asg)))
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
                .set_tag_keys(Some(removed.clone()))
                .send()
                .map_err_async("untagging CloudWatch alarm", alarm)
                .await?;
        }
    }

    if !infra.log_group.is_empty() {
        super::logs::retag(c, infra, account, tags, &removed).await?;
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
                .set_tag_keys(Some(removed.clone()))
                .send()
                .map_err_async("untagging SNS topic", topic)
                .await?;
        }
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
