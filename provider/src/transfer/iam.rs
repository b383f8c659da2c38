//! The instances' IAM role, its inline access policy (written by [`super::policy`]) and the instance profile
//! that carries it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::policy::{access_policy, trust_policy};

use super::delete::Failures;
use super::infra::{
    retry_while, spec_name, Infra, MapErrAsync, Names, Owner, ProvisionError, Result,
};
use super::spec::{Payload, TransferSpec};
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

/// Create the role (with its policy) and the instance profile holding it. A role or profile of the same name
/// that exists already is adopted only when its tags say it is ours (a create whose answer was lost); IAM's
/// eventual consistency (a role not yet visible to PutRolePolicy or AddRoleToInstanceProfile: NoSuchEntity) is
/// retried for up to [`SETTLE_TIMEOUT`], as terraform-provider-aws retries within its IAM `propagationTimeout`.
pub(crate) async fn create<P: Payload>(
    c: &AwsClients,
    spec: &TransferSpec<P>,
    n: &Names,
    infra: &mut Infra,
) -> Result<()> {
    let what = "creating IAM role";
    let created = c
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
        .map_err_async(what, &n.role)
        .await;
    infra.role_arn = match created {
        Ok(out) => out.role().map(|r| r.arn().to_owned()).unwrap_or_default(),
        Err(e) if is_code(&e, "EntityAlreadyExists") => {
            let out = c
                .iam
                .get_role()
                .role_name(&n.role)
                .send()
                .map_err_async(what, &n.role)
                .await?;
            let role = out.role();
            owner(role.map(|r| r.tags()).unwrap_or_default(), infra)
                .ensure_ours("IAM role", &n.role)?;
            role.map(|r| r.arn().to_owned()).unwrap_or_default()
        }
        Err(e) => return Err(e),
    };
    infra.role_name = n.role.clone();

    let what = "creating IAM role policy";
    let policy = access_policy(spec, infra, n)?;
    retry_while(what, &n.policy, SETTLE_TIMEOUT, not_visible_yet, || {
        c.iam
            .put_role_policy()
            .role_name(&n.role)
            .policy_name(&n.policy)
            .policy_document(&policy)
            .send()
            .map_err_async(what, &n.policy)
    })
    .await?;
    infra.policy_name = n.policy.clone();

    let what = "creating IAM instance profile";
    let created = c
        .iam
        .create_instance_profile()
        .instance_profile_name(&n.instance_profile)
        .set_tags(Some(iam_tags(&infra.tags, what, &n.instance_profile)?))
        .send()
        .map_err_async(what, &n.instance_profile)
        .await;
    let (arn, has_role) = match created {
        Ok(out) => (
            out.instance_profile()
                .map(|p| p.arn().to_owned())
                .unwrap_or_default(),
            false,
        ),
        Err(e) if is_code(&e, "EntityAlreadyExists") => {
            let out = c
                .iam
                .get_instance_profile()
                .instance_profile_name(&n.instance_profile)
                .send()
                .map_err_async(what, &n.instance_profile)
                .await?;
            let p = out.instance_profile();
            owner(p.map(|p| p.tags()).unwrap_or_default(), infra)
                .ensure_ours("IAM instance profile", &n.instance_profile)?;
            (
                p.map(|p| p.arn().to_owned()).unwrap_or_default(),
                p.is_some_and(|p| p.roles().iter().any(|r| r.role_name() == n.role)),
            )
        }
        Err(e) => return Err(e),
    };
    infra.instance_profile_name = n.instance_profile.clone();
    infra.instance_profile_arn = arn;
    if has_role {
        return Ok(());
    }
    let what = "adding IAM role to instance profile";
    retry_while(
        what,
        &n.instance_profile,
        SETTLE_TIMEOUT,
        not_visible_yet,
        || {
            c.iam
                .add_role_to_instance_profile()
                .instance_profile_name(&n.instance_profile)
                .role_name(&n.role)
                .send()
                .map_err_async(what, &n.instance_profile)
        },
    )
    .await?;
    Ok(())
}

fn is_code(e: &ProvisionError, code: &str) -> bool {
    e.code.as_deref() == Some(code)
}

/// IAM answers NoSuchEntity for a role or profile made seconds ago until the change has propagated.
fn not_visible_yet(e: &ProvisionError) -> bool {
    is_code(e, "NoSuchEntity")
}

/// Whose an IAM role or instance profile is, by its tags.
fn owner(tags: &[aws_sdk_iam::types::Tag], infra: &Infra) -> Owner {
    Owner::of(
        tags.iter().map(|t| (t.key(), t.value())),
        spec_name(infra),
        &infra.creation_id,
    )
}

/// Retries `op` while IAM's new instance profile is not yet usable by EC2 and Auto Scaling (seconds on AWS):
/// Auto Scaling answers `ValidationError` "… Invalid IAM Instance Profile name" and EC2 `InvalidParameterValue`
/// "Invalid IamInstanceProfile", which terraform-provider-aws retries within its IAM `propagationTimeout` (2 min).
pub(crate) async fn with_iam_settling<T, F, Fut>(what: &str, name: &str, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    retry_while(what, name, SETTLE_TIMEOUT, profile_not_ready, op).await
}

fn profile_not_ready(e: &ProvisionError) -> bool {
    let cause = e.cause.to_ascii_lowercase();
    matches!(
        e.code.as_deref(),
        Some("ValidationError" | "InvalidParameterValue")
    ) && (cause.contains("instance profile") || cause.contains("iaminstanceprofile"))
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
