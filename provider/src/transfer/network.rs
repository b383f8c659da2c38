//! Where the instances run: subnets (the default VPC's unless given), the egress-only security group (unless
//! given) and the AMI (the newest Amazon Linux 2023 for the instance type's architecture unless given).

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType, TagSpecification};

use super::fleet::architecture_of;

use super::infra::{spec_name, Infra, MapErrAsync, Names, Owner, ProvisionError, Result};
use super::spec::{Payload, TransferSpec};
use crate::aws::AwsClients;

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
pub(crate) async fn resolve<P: Payload>(
    c: &AwsClients,
    spec: &TransferSpec<P>,
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
        .map_err_async(what, &n.security_group)
        .await;
    let id = match out {
        Ok(out) => out.group_id().map(str::to_owned),
        // A group of this name in the VPC: ours only if a create whose answer was lost made it.
        Err(e) if e.code.as_deref() == Some("InvalidGroup.Duplicate") => {
            let found = c
                .ec2
                .describe_security_groups()
                .filters(ec2_filter("group-name", &[&n.security_group]))
                .filters(ec2_filter("vpc-id", &[&vpc]))
                .send()
                .map_err_async(what, &n.security_group)
                .await?;
            let g = found.security_groups().first();
            Owner::of(
                g.iter()
                    .flat_map(|g| g.tags())
                    .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
                spec_name(infra),
                &infra.creation_id,
            )
            .ensure_ours("security group", &n.security_group)?;
            g.and_then(|g| g.group_id()).map(str::to_owned)
        }
        Err(e) => return Err(e),
    };
    infra.security_group_id = Some(id.ok_or_else(|| {
        ProvisionError::new(what, &n.security_group, "the response has no group id")
    })?);
    Ok(())
}

pub(crate) async fn resolve_ami<P: Payload>(
    c: &AwsClients,
    spec: &TransferSpec<P>,
    infra: &mut Infra,
) -> Result<()> {
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

pub(crate) async fn delete_security_group(c: &AwsClients, sg: &str) -> Result<()> {
    // Network interfaces of terminated instances linger for a minute or two after their group is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let r = c
            .ec2
            .delete_security_group()
            .group_id(sg)
            .send()
            .map_err_async("deleting security group", sg)
            .await
            .map(|_| ());
        match r {
            Err(e)
                if e.code.as_deref() == Some("DependencyViolation")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            other => return other,
        }
    }
}
