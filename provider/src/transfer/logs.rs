//! The transfer's CloudWatch Logs group, `/dth/<name>`: the finder's and workers' container output (Docker's
//! awslogs driver, one stream per instance and role), kept `log_retention_days`. Its whole life is here: created
//! before the launch templates that name it, read by [`find`] (one call), retention and tags changed in place,
//! deleted with the transfer.

use std::collections::BTreeMap;

use aws_sdk_cloudwatchlogs::types::LogGroup;

use super::infra::MapErrAsync;
use super::infra::{retry_while, spec_name, Infra, Names, Owner, ProvisionError, Result};

/// The retention periods CloudWatch Logs accepts (PutRetentionPolicy), in days.
pub const RETENTION_DAYS: [u32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];
/// `log_retention_days` when the configuration leaves it out.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// `log_retention_days = 0`: no retention policy, the events never expire (as in the AWS provider's
/// `aws_cloudwatch_log_group`).
pub const NEVER_EXPIRE: u32 = 0;

/// What is wrong with a `log_retention_days` value, if anything.
pub fn retention_problem(days: u32) -> Option<String> {
    if days == NEVER_EXPIRE || RETENTION_DAYS.contains(&days) {
        return None;
    }
    let allowed: Vec<String> = RETENTION_DAYS.iter().map(u32::to_string).collect();
    Some(format!(
        "{days} is not a retention CloudWatch Logs accepts: use 0 (never expire) or one of {}",
        allowed.join(", ")
    ))
}

/// The log group's ARN as tagging wants it (without the `:*` DescribeLogGroups appends).
pub(crate) fn arn(region: &str, account: &str, name: &str) -> String {
    let p = crate::aws::partition_of(region);
    format!("arn:{p}:logs:{region}:{account}:log-group:{name}")
}

/// The log group's streams: what the instances may create and write to, and nothing else.
pub(crate) fn streams_arn(region: &str, account: &str, name: &str) -> String {
    format!("{}:log-stream:*", arn(region, account, name))
}

/// Create the log group with the transfer's tags and its retention; `infra.log_group` records it as soon as it
/// exists, so that a failed retention call still rolls it back.
pub(crate) async fn create(
    c: &crate::aws::AwsClients,
    n: &Names,
    retention_days: u32,
    infra: &mut Infra,
) -> Result<()> {
    let what = "creating CloudWatch Logs group";
    // OperationAbortedException: another operation on a group of this name (its deletion) is under way.
    let created = retry_while(
        what,
        &n.log_group,
        std::time::Duration::from_secs(60),
        |e| e.code.as_deref() == Some("OperationAbortedException"),
        || {
            c.logs
                .create_log_group()
                .log_group_name(&n.log_group)
                .set_tags(Some(infra.tags.clone().into_iter().collect()))
                .send()
                .map_err_async(what, &n.log_group)
        },
    )
    .await;
    match created {
        Ok(_) => {}
        // A group of this name: ours only if a create whose answer was lost made it.
        Err(e) if e.code.as_deref() == Some("ResourceAlreadyExistsException") => {
            let account = super::policy::account_of(&infra.dlq_arn).unwrap_or_default();
            let tags = c
                .logs
                .list_tags_for_resource()
                .resource_arn(arn(&infra.region, account, &n.log_group))
                .send()
                .map_err_async(what, &n.log_group)
                .await?;
            Owner::of(
                tags.tags()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
                spec_name(infra),
                &infra.creation_id,
            )
            .ensure_ours("CloudWatch Logs group", &n.log_group)?;
        }
        Err(e) => return Err(e),
    }
    infra.log_group = n.log_group.clone();
    if retention_days == NEVER_EXPIRE {
        // A new group has no retention policy: nothing to remove.
        return Ok(());
    }
    put_retention(c, &n.log_group, retention_days).await
}

/// Set the retention (0: remove the policy, so that events never expire).
pub(crate) async fn put_retention(
    c: &crate::aws::AwsClients,
    name: &str,
    retention_days: u32,
) -> Result<()> {
    if retention_days == NEVER_EXPIRE {
        return c
            .logs
            .delete_retention_policy()
            .log_group_name(name)
            .send()
            .map_err_async("removing CloudWatch Logs retention", name)
            .await
            .map(|_| ());
    }
    let days = i32::try_from(retention_days).map_err(|_| {
        ProvisionError::new(
            "setting CloudWatch Logs retention",
            name,
            format!("{retention_days} days is out of range"),
        )
    })?;
    c.logs
        .put_retention_policy()
        .log_group_name(name)
        .retention_in_days(days)
        .send()
        .map_err_async("setting CloudWatch Logs retention", name)
        .await
        .map(|_| ())
}

/// The log group `name`, or `None` when it is gone. One call: DescribeLogGroups by prefix, one result (the
/// exact name sorts before every longer name it prefixes).
pub(crate) async fn find(c: &crate::aws::AwsClients, name: &str) -> Result<Option<LogGroup>> {
    let out = c
        .logs
        .describe_log_groups()
        .log_group_name_prefix(name)
        .limit(1)
        .send()
        .map_err_async("reading CloudWatch Logs group", name)
        .await?;
    Ok(out
        .log_groups()
        .iter()
        .find(|g| g.log_group_name() == Some(name))
        .cloned())
}

/// The retention a log group holds, as `log_retention_days` says it.
pub(crate) fn retention_of(group: &LogGroup) -> u32 {
    group
        .retention_in_days()
        .and_then(|d| u32::try_from(d).ok())
        .unwrap_or(NEVER_EXPIRE)
}

/// Put `tags` on the log group and take `removed` off it.
pub(crate) async fn retag(
    c: &crate::aws::AwsClients,
    infra: &Infra,
    account: &str,
    tags: &BTreeMap<String, String>,
    removed: &[String],
) -> Result<()> {
    let name = &infra.log_group;
    let arn = arn(&infra.region, account, name);
    c.logs
        .tag_resource()
        .resource_arn(&arn)
        .set_tags(Some(tags.clone().into_iter().collect()))
        .send()
        .map_err_async("tagging CloudWatch Logs group", name)
        .await?;
    if !removed.is_empty() {
        c.logs
            .untag_resource()
            .resource_arn(&arn)
            .set_tag_keys(Some(removed.to_vec()))
            .send()
            .map_err_async("untagging CloudWatch Logs group", name)
            .await?;
    }
    Ok(())
}

/// Delete the log group and the events in it.
pub(crate) async fn delete(c: &crate::aws::AwsClients, name: &str) -> Result<()> {
    c.logs
        .delete_log_group()
        .log_group_name(name)
        .send()
        .map_err_async("deleting CloudWatch Logs group", name)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_takes_cloudwatchs_values_or_never() {
        for ok in [0, 1, 7, 30, 365, 3653] {
            assert_eq!(retention_problem(ok), None, "{ok}");
        }
        for bad in [2, 31, 366, 3654, u32::MAX] {
            let m = retention_problem(bad).expect("rejected");
            assert!(m.starts_with(&format!("{bad} is not a retention")), "{m}");
            assert!(m.contains("0 (never expire)") && m.contains("3653"), "{m}");
        }
        assert_eq!(retention_problem(DEFAULT_RETENTION_DAYS), None);
    }

    #[test]
    fn arns_follow_the_partition() {
        assert_eq!(
            streams_arn("cn-north-1", "123456789012", "/dth/x"),
            "arn:aws-cn:logs:cn-north-1:123456789012:log-group:/dth/x:log-stream:*"
        );
        assert_eq!(
            arn("us-east-1", "123456789012", "/dth/x"),
            "arn:aws:logs:us-east-1:123456789012:log-group:/dth/x"
        );
    }
}
