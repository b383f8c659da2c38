//! `dth_ecr_transfer`: container images from ECR in another region or account, or from any registry (Docker Hub,
//! quay.io, gcr.io, a private registry), into ECR — incrementally, by digest, with the same `finder` and `worker`
//! binaries and the same provisioning as `dth_s3_transfer` ([`super::transfer`]). Its schema's source,
//! destination and finder blocks; everything else is shared.

use super::transfer::{setting, transfer_schema, Kind, Texts, TransferResource};
use crate::tfplugin::{Attribute, Block, NestedBlock, Schema};
use crate::transfer::{Images, TransferSpec};

pub const TYPE_NAME: &str = "dth_ecr_transfer";

/// The `dth_ecr_transfer` kind.
pub struct EcrTransfer;

/// The resource the provider serves.
pub fn resource() -> TransferResource<EcrTransfer> {
    TransferResource::new()
}

impl Kind for EcrTransfer {
    type P = Images;
    const OPTIONAL_BLOCKS: &'static [&'static str] = &["finder", "fleet", "worker"];
    const UNWRITTEN_EMPTY: &'static [(&'static str, &'static str)] = &[
        ("source", "images"),
        ("source", "platforms"),
        ("fleet", "subnet_ids"),
        ("fleet", "security_group_ids"),
    ];
    /// `finder.dry_run_keys` only shapes `finder --dry-run`'s output, which the instances never run.
    const NOT_SETTABLE: &'static [&'static str] = &["finder.dry_run_keys"];

    fn schema() -> Schema {
        schema()
    }

    /// Registries charge no requests; what an image transfer costs is data transfer out of the source, which the
    /// S3 price table does not cover for other registries: no estimate rather than a wrong one.
    fn cost(_: &TransferSpec<Images>, _: &str, _: u64, _: u64) -> Option<String> {
        None
    }
}

/// The resource's schema; every optional attribute takes its type and default from the default spec (core's,
/// for a job setting).
pub fn schema() -> Schema {
    let d = &super::transfer::defaults::<EcrTransfer>();
    let source = Block::new()
        .description("Where images come from.")
        .attribute(
            setting(d, "source.type", "`ecr` (Amazon ECR in another region or account: repositories and tags listed through the ECR API) or `registry` (any registry speaking the distribution API: Docker Hub, quay.io, gcr.io, a private registry).")
                .one_of(&["ecr", "registry"])
                .requires_replace(),
        )
        .attribute(setting(d, "source.registry", "The registry: `host[:port]` (HTTPS) or a URL (`https://host`, `http://host:port`). Required for `registry`; for `ecr` it replaces `<account_id>.dkr.ecr.<region>.amazonaws.com` (an interface VPC endpoint)."))
        .attribute(setting(d, "source.region", "`ecr`: the source registry's region. Default: the provider's region.").requires_replace())
        .attribute(setting(d, "source.account_id", "`ecr`: the source registry's account. Default: the account of the credentials (the instance role's, or the secret's).").requires_replace())
        .attribute(setting(d, "source.images", "The images: `repo:tag`, `repo` (tag `latest`), `repo@sha256:<digest>` or `repo:ALL_TAGS` (every tag). Not with `all`."))
        .attribute(setting(d, "source.all", "Every repository with every tag (`ecr`: through the ECR API; `registry`: the registry's `/v2/_catalog`). Not with `images`."))
        .attribute(setting(d, "source.include_untagged", "Copy every platform of a multi-platform image with the untagged manifests its index references (DTH's `include_untagged`); with `ecr` and `all`, also the repositories' untagged images."))
        .attribute(setting(d, "source.platforms", "Only these platforms of multi-platform images (`linux/amd64`, `linux/arm64/v8`). Empty: all."))
        .attribute(setting(d, "source.credentials_secret_arn", "Secrets Manager secret: `{\"username\",\"password\"}` for a registry, `{\"access_key_id\",\"secret_access_key\"}` for ECR in another account. Default: anonymous (`registry`) or the instance role (`ecr`). Only the ARN is stored, never the secret."));
    let destination = Block::new()
        .description("Where images go (Amazon ECR).")
        .attribute(setting(d, "destination.region", "The ECR region. Default: the provider's region.").requires_replace())
        .attribute(setting(d, "destination.account_id", "The ECR account. Default: the account of the credentials.").requires_replace())
        .attribute(setting(d, "destination.registry", "Replaces `<account_id>.dkr.ecr.<region>.amazonaws.com` (an interface VPC endpoint): `host[:port]` or a URL."))
        .attribute(setting(d, "destination.prefix", "Prepended to every repository name: `<prefix>/<source repository>`. Repositories missing at the destination are created."))
        .attribute(setting(d, "destination.credentials_secret_arn", "Secrets Manager secret with `{\"access_key_id\",\"secret_access_key\"}` for ECR in another account. Default: the instance role."));
    let finder = Block::new()
        .description(
            "The finder: lists both registries and enqueues the images whose digests differ.",
        )
        .attribute(setting(
            d,
            "finder.parallelism",
            "Repositories listed and compared at once.",
        ))
        .attribute(setting(
            d,
            "finder.instance_type",
            "Instance type of the finder.",
        ));
    transfer_schema::<EcrTransfer>(
        &Texts {
            resource: "A Data Transfer Hub image transfer into Amazon ECR: the job queue and dead-letter queue, the DynamoDB ledger, a CloudWatch Logs group, an IAM role, launch templates and Auto Scaling groups running the `finder` and `worker`, the finder's schedule (daily by default), alarms and a dashboard — with the transfer's progress read back on every refresh. Images are compared by digest: only tags whose digest differs at the destination are copied, blobs already there are skipped, digests are preserved, and a tag is written only after everything it refers to.",
            worker_concurrency: "Images each worker copies at once. The job config's `worker.concurrency`.",
            part_concurrency: "Blobs (layers) of one image copied at once.",
            bandwidth_limit: "Bytes per second each worker reads from the source registry, over all its copies; 0: unlimited.",
            requests_per_second: "Registry requests per second each worker sends, source and destination together; 0: unlimited.",
            schedule: "When the finder runs: a 5-field cron expression (UTC) or `once` (right after creation). Default: daily at 00:00 UTC.",
        },
        Vec::<Attribute>::new(),
        vec![
            NestedBlock::single("source", source)
                .min_items(1)
                .max_items(1)
                .description("Where images come from."),
            NestedBlock::single("destination", destination)
                .min_items(1)
                .max_items(1)
                .description("Where images go."),
            NestedBlock::single("finder", finder).description("The finder's settings."),
        ],
    )
}
