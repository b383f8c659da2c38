//! The instances' IAM role, its inline access policy (written by [`super::policy`]) and the instance profile
//! that carries it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::policy::{access_policy, trust_policy};

use super::delete::Failures;
use super::infra::{Infra, MapErrAsync, Names, ProvisionError, Result};
use super::spec::TransferSpec;
use crate::aws::AwsClients;

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

pub(crate) async fn create(
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
        .assume_role_policy_document(trust_policy())
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
        .policy_document(access_policy(spec, infra, n))
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

/// Retries `op` while IAM's new instance profile is not yet visible to Auto Scaling (seconds on AWS).
pub(crate) async fn with_iam_settling<T, F, Fut>(what: &str, name: &str, mut op: F) -> Result<T>
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

/// How long to wait for IAM's eventual consistency (a new instance profile unknown to Auto Scaling) and for
/// DynamoDB to make a new table ACTIVE.
pub(crate) const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Put `tags` on the role and the instance profile and take `removed` off.
pub(crate) async fn retag(
    c: &AwsClients,
    infra: &Infra,
    tags: &BTreeMap<String, String>,
    removed: &[String],
) -> Result<()> {
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
            .set_tag_keys(Some(removed.to_vec()))
            .send()
            .map_err_async("untagging IAM role", &infra.role_name)
            .await?;
        c.iam
            .untag_instance_profile()
            .instance_profile_name(&infra.instance_profile_name)
            .set_tag_keys(Some(removed.to_vec()))
            .send()
            .map_err_async(
                "untagging IAM instance profile",
                &infra.instance_profile_name,
            )
            .await?;
    }

    Ok(())
}

/// Delete the instance profile (its role taken out first), the role policy and the role.
pub(crate) async fn delete(c: &AwsClients, infra: &Infra, failed: &mut Failures) {
    if !infra.instance_profile_name.is_empty() {
        if !infra.role_name.is_empty() {
            failed.step(
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
        failed.step(
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
            failed.step(
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
        failed.step(
            c.iam
                .delete_role()
                .role_name(&infra.role_name)
                .send()
                .map_err_async("deleting IAM role", &infra.role_name)
                .await
                .map(|_| ()),
        );
    }
}
