//! The policy documents of a transfer: the instance role's trust and access policies and the job queue's policy
//! for S3 event notifications. Pure functions of the spec and what was created, so that a unit test can hold
//! them against a table of (action, resource, condition) rows.
//!
//! # What the instances call, and the IAM action each call needs
//!
//! The instance role is used by the `finder` and `worker` binaries (the engine in `dth_core`) and by the host
//! around them (the user data's units, Docker). Every AWS call they can make, by client, and the action IAM
//! authorises it as:
//!
//! | Who | Call (where) | IAM action | Resource |
//! |---|---|---|---|
//! | finder | ListObjectsV2 on both sides (`store::s3` `list`), with and without a delimiter | `s3:ListBucket` | bucket, `s3:prefix` condition |
//! | finder, worker | HeadObject (`head`: archived objects, `compare = "checksum"`, multipart copies, re-delivered jobs at the destination); HeadObject with `partNumber` (`part_size`) | `s3:GetObject`; `s3:GetObjectVersion` with a `versionId` | object |
//! | worker | GetObject, whole and ranged, pinned by `If-Match` or `versionId` (`get`) | `s3:GetObject` / `s3:GetObjectVersion` | source object |
//! | worker | GetObjectTagging (`get_tags`, with `include_metadata`), by version when pinned to one | `s3:GetObjectTagging` / `s3:GetObjectVersionTagging` | source object |
//! | worker | PutObject; CreateMultipartUpload; UploadPart; CompleteMultipartUpload (`put`, `create_multipart`, `upload_part`, `complete_multipart`) | `s3:PutObject`, plus `s3:PutObjectAcl` for the `x-amz-acl` header (`destination.acl`) and `s3:PutObjectTagging` for the `x-amz-tagging` header (tags copied with `include_metadata`) | destination object |
//! | worker | AbortMultipartUpload | `s3:AbortMultipartUpload` | destination object |
//! | worker | ListMultipartUploads (every multipart copy looks for one to resume; giant objects too) | `s3:ListBucketMultipartUploads` | destination bucket |
//! | finder | GetBucketEncryption of both buckets, once a run (`default_encryption`: KMS by default means ETags that are no MD5s) | `s3:GetEncryptionConfiguration` | source and destination bucket |
//! | worker | ListParts (resume) | `s3:ListMultipartUploadParts` | destination object |
//! | worker | DeleteObject (events `create_and_delete` only) | `s3:DeleteObject` | destination object |
//! | worker | SSE-KMS at the destination: PutObject needs `kms:GenerateDataKey`; CreateMultipartUpload, UploadPart, CompleteMultipartUpload and ListParts need `kms:Decrypt` as well | `kms:GenerateDataKey`, `kms:Decrypt` | the key |
//! | worker | reading an SSE-KMS source object (GetObject) | `kms:Decrypt` | the source's key |
//! | finder | GetObject of the prefix list, with the control-plane client (`finder::roots`) | `s3:GetObject` | that one object |
//! | finder, worker | SendMessageBatch (finder's jobs; a worker's per-part jobs of a giant object) | `sqs:SendMessage` | job queue |
//! | worker | ReceiveMessage, DeleteMessage, ChangeMessageVisibility (heartbeats, releases), GetQueueAttributes (`depth`) | the same names | job queue |
//! | finder, worker | DescribeTable (`check`), PutItem, UpdateItem, GetItem, BatchWriteItem (`ledger`) | the same names | ledger table |
//! | worker | TransactWriteItems of a job marker (Put) and the run summary's ADD (Update) (`ledger::count_job`) | `dynamodb:PutItem`, `dynamodb:UpdateItem`: IAM authorises each action of a transaction as its own operation ("Using IAM with DynamoDB transactions") | ledger table |
//! | worker | DeleteItem of a completed or aborted upload's row (`ledger::close_upload`) | `dynamodb:DeleteItem`, only where `dynamodb:LeadingKeys` is `uploads` | ledger table |
//! | finder, worker | GetSecretValue (`aws::SecretCredentials`) | `secretsmanager:GetSecretValue` | the secrets named |
//! | finder | SetDesiredCapacity (`--scale-in-asg`; `dth-finder-failed.service` with the AWS CLI) | `autoscaling:SetDesiredCapacity` | finder group |
//! | worker | CompleteLifecycleAction (`fleet::complete_termination`); SetInstanceHealth (`dth-unhealthy.service`) | the same names | worker group |
//! | host | `aws ecr get-login-password` and `docker pull` (the pull script) | `ecr:GetAuthorizationToken` (no resource-level permissions); `ecr:BatchGetImage`, `ecr:GetDownloadUrlForLayer` | the image's repository |
//! | host | Docker's awslogs driver | `logs:CreateLogStream`, `logs:PutLogEvents` | the transfer's log group's streams |
//! | worker | PutMetricData (`metrics::publish`, once a minute at most) | `cloudwatch:PutMetricData` (no resource-level permissions: `*`), only where `cloudwatch:namespace` is `DataTransferHub` | - |
//!
//! Nothing calls the dead-letter queue (the queue's redrive moves messages there), GetQueueUrl (the config
//! carries the URL), DeleteItem of any other row, BatchGetItem, Query (the provider's `read` and destroy read the ledger with
//! their own credentials) or RecordLifecycleActionHeartbeat: the role is not
//! granted them. S3 permissions per API are as the S3 API reference states them (GetObject: "If you include a
//! versionId in your request header, you must have the s3:GetObjectVersion permission"; PutObject: "s3:PutObjectAcl
//! – To successfully change the objects ACL of your PutObject request", "s3:PutObjectTagging – To successfully set
//! the tag-set with your PutObject request"; CreateMultipartUpload/UploadPart: "the requester must have permission
//! to the kms:Decrypt and kms:GenerateDataKey actions on the key"); ECR's pull permissions are the three the ECR
//! user guide names for pulling (<https://docs.aws.amazon.com/AmazonECR/latest/userguide/ECR_on_ECS.html>).
//!
//! # Key ranges
//!
//! The policy grants exactly the keys the binaries can touch, with the binaries' own prefix semantics:
//! - the source prefix is a raw string prefix: the finder lists `source.prefix` as it is written and an event
//!   applies when its key `starts_with` it, so `in` covers `in/a` and `input/b` alike, and so does the policy
//!   (`in*`). With a prefix list every root is `join_prefix(source.prefix, line)`, all under
//!   `join_prefix(source.prefix, "")` (`in/`), and the policy is that narrower range;
//! - a destination key is `join_prefix(destination.prefix, source key)`: `out` means keys under `out/` — never
//!   `out-other/` — and since every source key starts with the source range, the destination range is
//!   `join_prefix(destination.prefix, source range)` (`out/in`).
//!
//! `*`, `?` and `$` in a prefix are written as IAM's escapes (`${*}`, `${?}`, `${$}`), so that a key with a
//! wildcard character in it never widens the grant.

use dth_core::config::{join_prefix, EventsMode, SourceType, Sse};
use dth_core::userdata;
use serde_json::{json, Value};

use super::infra::{Infra, Names, ProvisionError, Result};
use super::spec::{Payload, TransferSpec};

/// The IAM service principal of an AWS service in a partition.
///
/// AWS accepts the global form `<service>.amazonaws.com` in every partition, China included, except for a few
/// services: in `aws-cn`, CodeDeploy, EMR and CloudWatch Logs keep `amazonaws.com.cn`. That is the table of
/// hashicorp/terraform-provider-aws (`names.ServicePrincipalNameForPartition`, behind the `aws_service_principal`
/// data source, whose acceptance test expects `s3.amazonaws.com` in cn-north-1), taken from the AWS CDK's
/// region-info, which states "Service principals are now globally `<SERVICE>.amazonaws.com`"
/// (aws/aws-cdk `packages/aws-cdk-lib/region-info/lib/default.ts`). The old `ec2.amazonaws.com.cn` that China
/// once required (kubernetes/kops#27, 2016) is no longer needed: this role trusts `ec2.amazonaws.com` there too.
pub(crate) fn service_principal(service: &str, partition: &str) -> String {
    let suffix = match (partition, service) {
        ("aws-cn", "codedeploy" | "elasticmapreduce" | "logs") => "amazonaws.com.cn",
        _ => "amazonaws.com",
    };
    format!("{service}.{suffix}")
}

/// Lets S3 deliver the source bucket's event notifications to the job queue: only from that bucket
/// (`aws:SourceArn`), and only while it belongs to the queue's account (`aws:SourceAccount`), so that a bucket of
/// the same name in another account (after this one was deleted) cannot send jobs — the confused-deputy guard
/// the S3 user guide's walkthrough gives for an SQS destination ("Walkthrough: Configuring a bucket for
/// notifications", `ArnLike aws:SourceArn` with `StringEquals aws:SourceAccount`).
///
/// The bucket owner is the provider's own account: the provider configures the notification with its own
/// credentials and the spec has no other account for the source (a source in another account is read through
/// `credentials_secret_arn`, and its events cannot reach this queue). That account is the queue's.
pub(crate) fn queue_policy(queue_arn: &str, bucket: &str, partition: &str) -> Result<String> {
    let account = account_of(queue_arn).ok_or_else(|| {
        ProvisionError::new(
            "writing the job queue's policy",
            queue_arn,
            "the queue ARN names no account",
        )
    })?;
    Ok(json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "dth-s3-events",
            "Effect": "Allow",
            "Principal": {"Service": service_principal("s3", partition)},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {
                "ArnLike": {"aws:SourceArn": format!("arn:{partition}:s3:::{bucket}")},
                "StringEquals": {"aws:SourceAccount": account}
            }
        }]
    })
    .to_string())
}

/// Who may assume the instance role: EC2, for the transfer's instances (see [`service_principal`] for why the
/// principal is the same in every partition).
pub(crate) fn trust_policy(partition: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": service_principal("ec2", partition)},
            "Action": "sts:AssumeRole"
        }]
    })
    .to_string()
}

/// `<account>` from any ARN of the account (`arn:partition:service:region:account:...`).
pub(crate) fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// Text for a Resource element or a `StringLike` value that matches itself only: IAM's escapes for its wildcard
/// and policy-variable characters.
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '*' => out.push_str("${*}"),
            '?' => out.push_str("${?}"),
            '$' => out.push_str("${$}"),
            c => out.push(c),
        }
    }
    out
}

/// Where the role's statements point: the partition, region and account of the transfer's control plane.
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    pub partition: &'a str,
    pub region: &'a str,
    pub account: &'a str,
}

/// The source keys the binaries can read: everything starting with this string (see the module's "Key ranges").
pub fn source_key_prefix(spec: &TransferSpec) -> String {
    let s = &spec.source;
    if s.prefix_list.is_some() {
        join_prefix(&s.prefix, "")
    } else {
        s.prefix.clone()
    }
}

/// The destination keys the binaries can write, list and delete: everything starting with this string.
pub fn destination_key_prefix(spec: &TransferSpec) -> String {
    join_prefix(&spec.destination.prefix, &source_key_prefix(spec))
}

pub(crate) fn allow(sid: &str, actions: &[&str], resource: impl Into<Value>) -> Value {
    json!({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resource.into()})
}

/// `s3:ListBucket` on `bucket`, only for listings under `prefix`. With `s3:ListBucket` S3 answers a GET or HEAD
/// of a missing key with 404 rather than 403, which the binaries rely on (a source object gone, an object not
/// yet at the destination); S3 puts the requested key in `s3:prefix` for that check, so the condition holds
/// for keys in the range (as Ceph RGW reproduces it: ceph/ceph#68577, "add the requested object name to the iam
/// environment as s3:prefix to match aws behavior").
fn list_statement(sid: &str, partition: &str, bucket: &str, prefix: &str) -> Value {
    let mut st = allow(
        sid,
        &["s3:ListBucket"],
        format!("arn:{partition}:s3:::{bucket}"),
    );
    if !prefix.is_empty() {
        st["Condition"] = json!({"StringLike": {"s3:prefix": [format!("{}*", literal(prefix))]}});
    }
    st
}

/// The resource (and condition) that names a KMS key given as S3 takes it: a key ARN, a key id, an alias name or
/// an alias ARN. A bare key id or alias name is in the account and region of the request.
///
/// An alias cannot be a Resource: "These features do not allow you to identify a KMS key by using an alias in
/// the resource element of a policy statement" — KMS authorises by the key's ARN. The statement then covers the
/// account's keys in that region (`key/*`) that carry the alias, with `kms:ResourceAliases` ("allows or denies
/// access to a KMS key based on the aliases associated with the KMS key", a multi-valued key, hence
/// `ForAnyValue:`), not `kms:RequestAlias`: S3's Decrypt calls for multipart uploads name no alias. Both from
/// "Use aliases to control access to KMS keys", AWS KMS developer guide
/// (<https://docs.aws.amazon.com/kms/latest/developerguide/alias-authorization.html>), which also warns that an
/// alias moved to another key takes up to five minutes to change what is allowed.
fn kms_key(key: &str, partition: &str, region: &str, account: &str) -> (String, Option<Value>) {
    let alias = |arn_prefix: &str, name: &str| {
        (
            format!("{arn_prefix}:key/*"),
            Some(json!({"ForAnyValue:StringEquals": {"kms:ResourceAliases": name}})),
        )
    };
    if key.starts_with("arn:") {
        // arn:partition:kms:region:account:key/<id> or …:alias/<name>
        let mut parts = key.splitn(6, ':');
        let head: Vec<&str> = parts.by_ref().take(5).collect();
        match parts.next() {
            Some(name) if name.starts_with("alias/") && head.len() == 5 => {
                alias(&head.join(":"), name)
            }
            _ => (key.to_owned(), None),
        }
    } else if key.starts_with("alias/") {
        alias(&format!("arn:{partition}:kms:{region}:{account}"), key)
    } else {
        (
            format!("arn:{partition}:kms:{region}:{account}:key/{key}"),
            None,
        )
    }
}

fn kms_statement(sid: &str, actions: &[&str], key: (String, Option<Value>)) -> Value {
    let (resource, condition) = key;
    let mut st = allow(sid, actions, resource);
    if let Some(c) = condition {
        st["Condition"] = c;
    }
    st
}

/// An object transfer's statements: its buckets and key ranges, keys and secrets (see the module's table). A side
/// read or written with keys from a secret gets no S3 (or KMS) statement: the role never touches it.
pub(crate) fn object_statements(spec: &TransferSpec, at: &Account) -> Vec<Value> {
    let (p, region, account) = (at.partition, at.region, at.account);
    let mut statements: Vec<Value> = Vec::new();
    let s = &spec.source;
    let d = &spec.destination;
    let source_range = source_key_prefix(spec);
    // Read with the role; an anonymous source is read with unsigned requests.
    if s.kind == SourceType::AmazonS3 && s.credentials_secret_arn.is_none() && !s.anonymous {
        let mut read = vec!["s3:GetObject", "s3:GetObjectVersion"];
        if spec.include_metadata {
            read.extend(["s3:GetObjectTagging", "s3:GetObjectVersionTagging"]);
        }
        statements.push(allow(
            "ReadSource",
            &read,
            format!("arn:{p}:s3:::{}/{}*", s.bucket, literal(&source_range)),
        ));
        statements.push(list_statement("ListSource", p, &s.bucket, &source_range));
        // Whether the bucket encrypts with KMS by default (its ETags are then no MD5s): the finder asks once a run.
        statements.push(allow(
            "SourceEncryption",
            &["s3:GetEncryptionConfiguration"],
            format!("arn:{p}:s3:::{}", s.bucket),
        ));
        if let Some(key) = s.kms_key_id.as_deref() {
            let key_region = s.region.as_deref().unwrap_or(region);
            statements.push(kms_statement(
                "DecryptSource",
                &["kms:Decrypt"],
                kms_key(key, p, key_region, account),
            ));
        }
    }
    if let Some(list) = &s.prefix_list {
        if let Some(b) = &list.bucket {
            // Read with the control-plane client (the role), whatever credentials the source uses.
            statements.push(allow(
                "ReadPrefixList",
                &["s3:GetObject"],
                format!("arn:{p}:s3:::{b}/{}", literal(&list.key)),
            ));
        }
    }
    if d.credentials_secret_arn.is_none() {
        let mut write = vec![
            "s3:GetObject",
            "s3:PutObject",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
        ];
        if !d.acl.is_empty() {
            write.push("s3:PutObjectAcl");
        }
        if spec.include_metadata {
            write.push("s3:PutObjectTagging");
        }
        if s.events == EventsMode::CreateAndDelete {
            write.push("s3:DeleteObject");
        }
        let range = destination_key_prefix(spec);
        statements.push(allow(
            "WriteDestination",
            &write,
            format!("arn:{p}:s3:::{}/{}*", d.bucket, literal(&range)),
        ));
        statements.push(list_statement("ListDestination", p, &d.bucket, &range));
        // ListMultipartUploads has no s3:prefix condition key (the Service Authorization Reference lists it for
        // ListBucket and ListBucketVersions only): a condition on it would never hold. The listing shows upload
        // keys and ids, never data; aborting or completing one still needs the object-level actions above.
        statements.push(allow(
            "ResumeDestinationUploads",
            &[
                "s3:ListBucketMultipartUploads",
                "s3:GetEncryptionConfiguration",
            ],
            format!("arn:{p}:s3:::{}", d.bucket),
        ));
        // `sse = "aws:kms"` without a key uses the AWS managed key aws/s3, whose key policy already lets every
        // principal of the account use it through S3 (kms:ViaService, kms:CallerAccount): no IAM grant needed.
        if let (Sse::Kms, Some(key)) = (d.sse, d.kms_key_id.as_deref()) {
            let key_region = d.region.as_deref().unwrap_or(region);
            statements.push(kms_statement(
                "EncryptDestination",
                &["kms:GenerateDataKey", "kms:Decrypt"],
                kms_key(key, p, key_region, account),
            ));
        }
    }
    statements.extend(credentials_statement([
        &s.credentials_secret_arn,
        &d.credentials_secret_arn,
    ]));
    statements
}

/// `secretsmanager:GetSecretValue` on the secrets a transfer names, if any.
pub(crate) fn credentials_statement<'a>(
    secrets: impl IntoIterator<Item = &'a Option<String>>,
) -> Option<Value> {
    let secrets: Vec<&String> = secrets.into_iter().flatten().collect();
    (!secrets.is_empty()).then(|| {
        allow(
            "Credentials",
            &["secretsmanager:GetSecretValue"],
            json!(secrets),
        )
    })
}

/// The instances' permissions: exactly the actions the binaries and their host call (see the module's table), on
/// exactly the transfer's data ([`Payload::data_statements`]: buckets and key ranges, or repositories), queue, table, secrets, groups, repository and log group.
///
/// The account is the one the job queue was created in; an `infra` without it (no queue ARN) is an error rather
/// than a policy on every account's resources.
pub fn access_policy<P: Payload>(
    spec: &TransferSpec<P>,
    infra: &Infra,
    names: &Names,
) -> Result<String> {
    let p = crate::aws::partition_of(&infra.region);
    let region = &infra.region;
    let account = [&infra.queue_arn, &infra.dlq_arn]
        .into_iter()
        .find_map(|arn| account_of(arn))
        .ok_or_else(|| {
            ProvisionError::new(
                "writing the instance role's policy",
                &names.policy,
                "the account is unknown: the job queue has no ARN yet",
            )
        })?;
    let at = Account {
        partition: p,
        region,
        account,
    };
    let mut statements = P::data_statements(spec, &at);
    statements.push(allow(
        "Queue",
        &[
            "sqs:SendMessage",
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:ChangeMessageVisibility",
            "sqs:GetQueueAttributes",
        ],
        infra.queue_arn.as_str(),
    ));
    statements.push(allow(
        "Ledger",
        &[
            "dynamodb:DescribeTable",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:BatchWriteItem",
        ],
        format!("arn:{p}:dynamodb:{region}:{account}:table/{}", names.table),
    ));
    // A worker forgets an upload it completed or aborted (DeleteItem of its row under `uploads`); no other row of
    // the ledger is ever deleted by the instances.
    let mut close = allow(
        "CloseUploads",
        &["dynamodb:DeleteItem"],
        format!("arn:{p}:dynamodb:{region}:{account}:table/{}", names.table),
    );
    close["Condition"] = json!({
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [dth_core::ledger::UPLOADS_PK]}
    });
    statements.push(close);
    let group = |name: &str| {
        format!(
            "arn:{p}:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{name}"
        )
    };
    statements.push(allow(
        "FinderScalesItselfIn",
        &["autoscaling:SetDesiredCapacity"],
        group(&names.finder_asg),
    ));
    statements.push(allow(
        "WorkersLeaveTheirGroup",
        &[
            "autoscaling:CompleteLifecycleAction",
            "autoscaling:SetInstanceHealth",
        ],
        group(&names.worker_asg),
    ));
    if let Some((registry_account, registry_region, repository)) =
        userdata::ecr_repository(&spec.fleet.image)
    {
        let rp = crate::aws::partition_of(registry_region);
        // GetAuthorizationToken has no resource-level permissions: "*" is the only resource it takes.
        statements.push(allow("PullImageLogin", &["ecr:GetAuthorizationToken"], "*"));
        statements.push(allow(
            "PullImage",
            &["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            format!("arn:{rp}:ecr:{registry_region}:{registry_account}:repository/{repository}"),
        ));
    }
    if !infra.log_group.is_empty() {
        // Docker's awslogs driver makes one stream per container and writes to it; the group itself is the
        // provider's to create, retain and delete.
        statements.push(allow(
            "Logs",
            &["logs:CreateLogStream", "logs:PutLogEvents"],
            super::logs::streams_arn(region, account, &infra.log_group),
        ));
    }
    // PutMetricData takes no resource; the namespace condition keeps the role to the transfers' own metrics.
    let mut metrics = allow("Metrics", &["cloudwatch:PutMetricData"], "*");
    metrics["Condition"] =
        json!({"StringEquals": {"cloudwatch:namespace": dth_core::metrics::NAMESPACE}});
    statements.push(metrics);
    Ok(json!({"Version": "2012-10-17", "Statement": statements}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dth_core::config::{PrefixList, SourceType};

    /// One grant: (action, resource, condition as compact JSON or "").
    type Row = (String, String, String);

    const ACCOUNT: &str = "123456789012";

    /// The transfer's infrastructure in `region`, as create leaves it.
    fn infra(region: &str) -> Infra {
        let p = crate::aws::partition_of(region);
        Infra {
            region: region.into(),
            queue_arn: format!("arn:{p}:sqs:{region}:{ACCOUNT}:dth-x-jobs"),
            dlq_arn: format!("arn:{p}:sqs:{region}:{ACCOUNT}:dth-x-dlq"),
            log_group: "/dth/x".into(),
            ..Infra::default()
        }
    }

    fn spec() -> TransferSpec {
        TransferSpec::new("x", "src-bucket", "dst-bucket", "img")
    }

    /// Every (action, resource, condition) a policy grants, sorted. Only Allow statements with Action and Resource
    /// are expected: anything else (Deny, NotAction, NotResource, Principal, unknown keys) fails the test.
    fn rows_of(policy: &str) -> Vec<Row> {
        let doc: Value = serde_json::from_str(policy).expect("JSON");
        assert_eq!(doc["Version"], "2012-10-17");
        let mut rows = Vec::new();
        for st in doc["Statement"].as_array().expect("statements") {
            for k in st.as_object().expect("statement").keys() {
                assert!(
                    ["Sid", "Effect", "Action", "Resource", "Condition"].contains(&k.as_str()),
                    "unexpected {k} in {st}"
                );
            }
            assert_eq!(st["Effect"], "Allow", "{st}");
            let list = |v: &Value| -> Vec<String> {
                match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_owned()).collect(),
                    other => panic!("not a string or list: {other}"),
                }
            };
            let condition = st.get("Condition").map_or(String::new(), Value::to_string);
            for a in list(&st["Action"]) {
                for r in list(&st["Resource"]) {
                    rows.push((a.clone(), r, condition.clone()));
                }
            }
        }
        rows.sort();
        rows
    }

    fn each(actions: &[&str], resource: &str) -> Vec<Row> {
        actions
            .iter()
            .map(|a| (a.to_string(), resource.to_owned(), String::new()))
            .collect()
    }

    fn each_if(actions: &[&str], resource: &str, condition: Value) -> Vec<Row> {
        actions
            .iter()
            .map(|a| (a.to_string(), resource.to_owned(), condition.to_string()))
            .collect()
    }

    fn prefix(p: &str) -> Value {
        json!({"StringLike": {"s3:prefix": [p]}})
    }

    fn sorted(parts: Vec<Vec<Row>>) -> Vec<Row> {
        let mut rows: Vec<Row> = parts.into_iter().flatten().collect();
        rows.sort();
        rows
    }

    /// Queue, ledger, the two groups and the log streams of transfer `x` in `region`.
    fn control_plane(region: &str) -> Vec<Row> {
        let p = crate::aws::partition_of(region);
        let group = |g: &str| {
            format!("arn:{p}:autoscaling:{region}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/{g}")
        };
        sorted(vec![
            each(
                &[
                    "sqs:SendMessage",
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                    "sqs:GetQueueAttributes",
                ],
                &format!("arn:{p}:sqs:{region}:{ACCOUNT}:dth-x-jobs"),
            ),
            each(
                &[
                    "dynamodb:DescribeTable",
                    "dynamodb:GetItem",
                    "dynamodb:PutItem",
                    "dynamodb:UpdateItem",
                    "dynamodb:BatchWriteItem",
                ],
                &format!("arn:{p}:dynamodb:{region}:{ACCOUNT}:table/dth-x-ledger"),
            ),
            each_if(
                &["dynamodb:DeleteItem"],
                &format!("arn:{p}:dynamodb:{region}:{ACCOUNT}:table/dth-x-ledger"),
                json!({"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["uploads"]}}),
            ),
            each(&["autoscaling:SetDesiredCapacity"], &group("dth-x-finder")),
            each(
                &[
                    "autoscaling:CompleteLifecycleAction",
                    "autoscaling:SetInstanceHealth",
                ],
                &group("dth-x-worker"),
            ),
            each(
                &["logs:CreateLogStream", "logs:PutLogEvents"],
                &format!("arn:{p}:logs:{region}:{ACCOUNT}:log-group:/dth/x:log-stream:*"),
            ),
            each_if(
                &["cloudwatch:PutMetricData"],
                "*",
                json!({"StringEquals": {"cloudwatch:namespace": "DataTransferHub"}}),
            ),
        ])
    }

    const READ: &[&str] = &[
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:GetObjectTagging",
        "s3:GetObjectVersionTagging",
    ];
    const WRITE: &[&str] = &[
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
        "s3:PutObjectAcl",
        "s3:PutObjectTagging",
    ];

    /// The S3 rows of the default transfer (whole buckets, ACL and tags copied), in partition `p`.
    fn default_s3(p: &str) -> Vec<Row> {
        sorted(vec![
            each(READ, &format!("arn:{p}:s3:::src-bucket/*")),
            each(&["s3:ListBucket"], &format!("arn:{p}:s3:::src-bucket")),
            each(
                &["s3:GetEncryptionConfiguration"],
                &format!("arn:{p}:s3:::src-bucket"),
            ),
            each(WRITE, &format!("arn:{p}:s3:::dst-bucket/*")),
            each(&["s3:ListBucket"], &format!("arn:{p}:s3:::dst-bucket")),
            each(
                &[
                    "s3:ListBucketMultipartUploads",
                    "s3:GetEncryptionConfiguration",
                ],
                &format!("arn:{p}:s3:::dst-bucket"),
            ),
        ])
    }

    fn policy(spec: &TransferSpec, region: &str) -> Vec<Row> {
        rows_of(&access_policy(spec, &infra(region), &Names::new("x")).expect("policy"))
    }

    #[test]
    fn the_default_transfer_gets_exactly_its_buckets_queue_table_groups_and_logs() {
        assert_eq!(
            policy(&spec(), "us-east-1"),
            sorted(vec![default_s3("aws"), control_plane("us-east-1")])
        );
    }

    #[test]
    fn prefixes_bound_the_keys_as_the_binaries_use_them() {
        // The source prefix is a raw string prefix (`in` lists `input/` too); a destination key is
        // `<destination prefix>/<source key>`, so `out` never reaches `out-other/`.
        let mut s = spec();
        s.source.prefix = "in".into();
        s.destination.prefix = "out".into();
        assert_eq!(
            policy(&s, "us-east-1"),
            sorted(vec![
                each(READ, "arn:aws:s3:::src-bucket/in*"),
                each_if(&["s3:ListBucket"], "arn:aws:s3:::src-bucket", prefix("in*")),
                each(
                    &["s3:GetEncryptionConfiguration"],
                    "arn:aws:s3:::src-bucket"
                ),
                each(WRITE, "arn:aws:s3:::dst-bucket/out/in*"),
                each_if(
                    &["s3:ListBucket"],
                    "arn:aws:s3:::dst-bucket",
                    prefix("out/in*")
                ),
                each(
                    &[
                        "s3:ListBucketMultipartUploads",
                        "s3:GetEncryptionConfiguration"
                    ],
                    "arn:aws:s3:::dst-bucket"
                ),
                control_plane("us-east-1"),
            ])
        );
        // A whole source bucket into `out`: keys under `out/`, with the slash.
        let mut s = spec();
        s.destination.prefix = "out".into();
        let rows = policy(&s, "us-east-1");
        assert!(rows.contains(&(
            "s3:PutObject".into(),
            "arn:aws:s3:::dst-bucket/out/*".into(),
            String::new()
        )));
        assert!(rows.contains(&(
            "s3:ListBucket".into(),
            "arn:aws:s3:::dst-bucket".into(),
            prefix("out/*").to_string()
        )));
        // `out/` and `out` are the same destination; `/` is the bucket's root.
        s.destination.prefix = "out/".into();
        assert_eq!(policy(&s, "us-east-1"), rows);
        s.destination.prefix = "/".into();
        assert_eq!(
            policy(&s, "us-east-1"),
            sorted(vec![default_s3("aws"), control_plane("us-east-1")])
        );
    }

    #[test]
    fn wildcard_characters_in_a_prefix_match_only_themselves() {
        let mut s = spec();
        s.source.prefix = "a*b?c$".into();
        let rows = policy(&s, "us-east-1");
        assert!(rows.contains(&(
            "s3:GetObject".into(),
            "arn:aws:s3:::src-bucket/a${*}b${?}c${$}*".into(),
            String::new()
        )));
        assert!(rows.contains(&(
            "s3:ListBucket".into(),
            "arn:aws:s3:::src-bucket".into(),
            prefix("a${*}b${?}c${$}*").to_string()
        )));
        assert!(rows.contains(&(
            "s3:PutObject".into(),
            "arn:aws:s3:::dst-bucket/a${*}b${?}c${$}*".into(),
            String::new()
        )));
    }

    #[test]
    fn a_side_behind_a_secret_gets_its_secret_and_no_s3_rights() {
        let src_secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:src-keys-AbCdEf";
        let dst_secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:dst-keys-GhIjKl";
        let mut s = spec();
        s.source.credentials_secret_arn = Some(src_secret.into());
        assert_eq!(
            policy(&s, "us-east-1"),
            sorted(vec![
                each(WRITE, "arn:aws:s3:::dst-bucket/*"),
                each(&["s3:ListBucket"], "arn:aws:s3:::dst-bucket"),
                each(
                    &[
                        "s3:ListBucketMultipartUploads",
                        "s3:GetEncryptionConfiguration"
                    ],
                    "arn:aws:s3:::dst-bucket"
                ),
                each(&["secretsmanager:GetSecretValue"], src_secret),
                control_plane("us-east-1"),
            ])
        );
        let mut s = spec();
        s.destination.credentials_secret_arn = Some(dst_secret.into());
        // A KMS key of the other account is that account's business: no KMS statement either.
        s.destination.sse = Sse::Kms;
        s.destination.kms_key_id = Some("alias/theirs".into());
        assert_eq!(
            policy(&s, "us-east-1"),
            sorted(vec![
                each(READ, "arn:aws:s3:::src-bucket/*"),
                each(&["s3:ListBucket"], "arn:aws:s3:::src-bucket"),
                each(
                    &["s3:GetEncryptionConfiguration"],
                    "arn:aws:s3:::src-bucket"
                ),
                each(&["secretsmanager:GetSecretValue"], dst_secret),
                control_plane("us-east-1"),
            ])
        );
        s.source.credentials_secret_arn = Some(src_secret.into());
        assert_eq!(
            policy(&s, "us-east-1"),
            sorted(vec![
                each(&["secretsmanager:GetSecretValue"], src_secret),
                each(&["secretsmanager:GetSecretValue"], dst_secret),
                control_plane("us-east-1"),
            ])
        );
    }

    #[test]
    fn a_kms_destination_key_is_named_by_its_arn_whatever_form_it_was_given_in() {
        let with_key = |key: Option<&str>, region: Option<&str>| {
            let mut s = spec();
            s.destination.sse = Sse::Kms;
            s.destination.kms_key_id = key.map(str::to_owned);
            s.destination.region = region.map(str::to_owned);
            policy(&s, "us-east-1")
        };
        let kms = ["kms:GenerateDataKey", "kms:Decrypt"];
        let key_arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(
            with_key(Some(key_arn), None),
            sorted(vec![
                default_s3("aws"),
                each(&kms, key_arn),
                control_plane("us-east-1")
            ])
        );
        // A key id: that key of the provider's account, in the destination's region.
        assert_eq!(
            with_key(
                Some("1234abcd-12ab-34cd-56ef-1234567890ab"),
                Some("eu-west-1")
            ),
            sorted(vec![
                default_s3("aws"),
                each(
                    &kms,
                    "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                ),
                control_plane("us-east-1")
            ])
        );
        // An alias: the account's keys in that region that carry it.
        assert_eq!(
            with_key(Some("alias/dth"), None),
            sorted(vec![
                default_s3("aws"),
                each_if(
                    &kms,
                    "arn:aws:kms:us-east-1:123456789012:key/*",
                    json!({"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/dth"}})
                ),
                control_plane("us-east-1")
            ])
        );
        // An alias ARN: its own account and region.
        assert_eq!(
            with_key(
                Some("arn:aws:kms:us-west-2:210987654321:alias/shared"),
                None
            ),
            sorted(vec![
                default_s3("aws"),
                each_if(
                    &kms,
                    "arn:aws:kms:us-west-2:210987654321:key/*",
                    json!({"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/shared"}})
                ),
                control_plane("us-east-1")
            ])
        );
        // No key: S3's AWS managed key, whose key policy already admits the account's principals through S3.
        assert_eq!(
            with_key(None, None),
            sorted(vec![default_s3("aws"), control_plane("us-east-1")])
        );
    }

    #[test]
    fn a_kms_encrypted_source_may_be_decrypted_and_nothing_more() {
        let mut s = spec();
        s.source.kms_key_id = Some("alias/src-key".into());
        s.source.region = Some("eu-west-1".into());
        assert_eq!(
            policy(&s, "us-east-1"),
            sorted(vec![
                default_s3("aws"),
                each_if(
                    &["kms:Decrypt"],
                    "arn:aws:kms:eu-west-1:123456789012:key/*",
                    json!({"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/src-key"}})
                ),
                control_plane("us-east-1"),
            ])
        );
    }

    #[test]
    fn deletes_are_allowed_only_when_mirrored_and_only_in_range() {
        let mut s = spec();
        s.source.prefix = "in/".into();
        s.source.events = EventsMode::CreateAndDelete;
        let mut write = WRITE.to_vec();
        write.push("s3:DeleteObject");
        assert_eq!(
            policy(&s, "us-east-1"),
            sorted(vec![
                each(READ, "arn:aws:s3:::src-bucket/in/*"),
                each_if(
                    &["s3:ListBucket"],
                    "arn:aws:s3:::src-bucket",
                    prefix("in/*")
                ),
                each(
                    &["s3:GetEncryptionConfiguration"],
                    "arn:aws:s3:::src-bucket"
                ),
                each(&write, "arn:aws:s3:::dst-bucket/in/*"),
                each_if(
                    &["s3:ListBucket"],
                    "arn:aws:s3:::dst-bucket",
                    prefix("in/*")
                ),
                each(
                    &[
                        "s3:ListBucketMultipartUploads",
                        "s3:GetEncryptionConfiguration"
                    ],
                    "arn:aws:s3:::dst-bucket"
                ),
                control_plane("us-east-1"),
            ])
        );
        s.source.events = EventsMode::Create;
        assert!(!policy(&s, "us-east-1")
            .iter()
            .any(|r| r.0 == "s3:DeleteObject"));
    }

    #[test]
    fn without_an_acl_or_metadata_no_acl_or_tag_rights() {
        let mut s = spec();
        s.destination.acl = String::new();
        s.include_metadata = false;
        assert_eq!(
            policy(&s, "us-east-1"),
            sorted(vec![
                each(
                    &["s3:GetObject", "s3:GetObjectVersion"],
                    "arn:aws:s3:::src-bucket/*"
                ),
                each(&["s3:ListBucket"], "arn:aws:s3:::src-bucket"),
                each(
                    &["s3:GetEncryptionConfiguration"],
                    "arn:aws:s3:::src-bucket"
                ),
                each(
                    &[
                        "s3:GetObject",
                        "s3:PutObject",
                        "s3:AbortMultipartUpload",
                        "s3:ListMultipartUploadParts"
                    ],
                    "arn:aws:s3:::dst-bucket/*"
                ),
                each(&["s3:ListBucket"], "arn:aws:s3:::dst-bucket"),
                each(
                    &[
                        "s3:ListBucketMultipartUploads",
                        "s3:GetEncryptionConfiguration"
                    ],
                    "arn:aws:s3:::dst-bucket"
                ),
                control_plane("us-east-1"),
            ])
        );
    }

    #[test]
    fn a_prefix_list_in_a_bucket_is_readable_and_bounds_the_source() {
        // Every root is `<source prefix>/<line>`: the range is `data/`, not the whole bucket.
        let mut s = spec();
        s.source.prefix = "data".into();
        s.source.prefix_list = Some(PrefixList {
            bucket: Some("lists".into()),
            key: "run/prefixes.txt".into(),
        });
        assert_eq!(
            policy(&s, "us-east-1"),
            sorted(vec![
                each(READ, "arn:aws:s3:::src-bucket/data/*"),
                each_if(
                    &["s3:ListBucket"],
                    "arn:aws:s3:::src-bucket",
                    prefix("data/*")
                ),
                each(
                    &["s3:GetEncryptionConfiguration"],
                    "arn:aws:s3:::src-bucket"
                ),
                each(&["s3:GetObject"], "arn:aws:s3:::lists/run/prefixes.txt"),
                each(WRITE, "arn:aws:s3:::dst-bucket/data/*"),
                each_if(
                    &["s3:ListBucket"],
                    "arn:aws:s3:::dst-bucket",
                    prefix("data/*")
                ),
                each(
                    &[
                        "s3:ListBucketMultipartUploads",
                        "s3:GetEncryptionConfiguration"
                    ],
                    "arn:aws:s3:::dst-bucket"
                ),
                control_plane("us-east-1"),
            ])
        );
        // A list on the instance's disk needs nothing.
        s.source.prefix_list = Some(PrefixList {
            bucket: None,
            key: "/etc/dth/prefixes.txt".into(),
        });
        assert!(!policy(&s, "us-east-1")
            .iter()
            .any(|r| r.1.contains("lists")));
    }

    #[test]
    fn an_ecr_image_is_pullable_from_its_one_repository() {
        let mut s = spec();
        s.fleet.image =
            "210987654321.dkr.ecr.cn-northwest-1.amazonaws.com.cn/mirror/dth:0.1.0@sha256:ab"
                .into();
        assert_eq!(
            policy(&s, "us-east-1"),
            sorted(vec![
                default_s3("aws"),
                each(&["ecr:GetAuthorizationToken"], "*"),
                each(
                    &["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                    "arn:aws-cn:ecr:cn-northwest-1:210987654321:repository/mirror/dth"
                ),
                control_plane("us-east-1"),
            ])
        );
    }

    #[test]
    fn china_gets_its_partition_everywhere() {
        let mut s = spec();
        s.destination.sse = Sse::Kms;
        s.destination.kms_key_id = Some("alias/dth".into());
        assert_eq!(
            policy(&s, "cn-north-1"),
            sorted(vec![
                default_s3("aws-cn"),
                each_if(
                    &["kms:GenerateDataKey", "kms:Decrypt"],
                    "arn:aws-cn:kms:cn-north-1:123456789012:key/*",
                    json!({"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/dth"}})
                ),
                control_plane("cn-north-1"),
            ])
        );
    }

    #[test]
    fn a_source_outside_s3_gets_no_s3_rights_on_it() {
        let mut s = spec();
        s.source.kind = SourceType::AliyunOss;
        s.source.credentials_secret_arn =
            Some("arn:aws:secretsmanager:us-east-1:123456789012:secret:oss-AbCdEf".into());
        let rows = policy(&s, "us-east-1");
        assert!(!rows.iter().any(|r| r.1.contains("src-bucket")), "{rows:?}");
    }

    #[test]
    fn an_anonymous_source_gets_no_s3_rights_on_it() {
        // Read with unsigned requests: the role is never asked.
        let mut s = spec();
        s.source.anonymous = true;
        let rows = policy(&s, "us-east-1");
        assert!(!rows.iter().any(|r| r.1.contains("src-bucket")), "{rows:?}");
        assert!(rows.iter().any(|r| r.1.contains("dst-bucket")), "{rows:?}");
    }

    #[test]
    fn no_logs_rights_without_a_log_group() {
        // A transfer created before the provider made log groups: its role gets no logs rights.
        let i = Infra {
            log_group: String::new(),
            ..infra("us-east-1")
        };
        let rows = rows_of(&access_policy(&spec(), &i, &Names::new("x")).unwrap());
        assert!(!rows.iter().any(|r| r.0.starts_with("logs:")), "{rows:?}");
    }

    #[test]
    fn an_unknown_account_is_an_error_not_a_wildcard() {
        let i = Infra {
            queue_arn: String::new(),
            dlq_arn: String::new(),
            ..infra("us-east-1")
        };
        let e = access_policy(&spec(), &i, &Names::new("x")).expect_err("no account");
        assert!(e.to_string().contains("account"), "{e}");
        assert!(queue_policy("dth-x-jobs", "src-bucket", "aws").is_err());
    }

    #[test]
    fn only_s3_of_the_queues_account_may_send_only_the_source_buckets_events() {
        let doc: Value = serde_json::from_str(
            &queue_policy(
                "arn:aws-cn:sqs:cn-north-1:123456789012:dth-x-jobs",
                "src-bucket",
                "aws-cn",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"Version": "2012-10-17", "Statement": [{
                "Sid": "dth-s3-events",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": "arn:aws-cn:sqs:cn-north-1:123456789012:dth-x-jobs",
                "Condition": {
                    "ArnLike": {"aws:SourceArn": "arn:aws-cn:s3:::src-bucket"},
                    "StringEquals": {"aws:SourceAccount": "123456789012"}
                }
            }]})
        );
    }

    #[test]
    fn ec2_is_trusted_by_its_global_principal_in_every_partition() {
        for p in ["aws", "aws-cn", "aws-us-gov"] {
            let doc: Value = serde_json::from_str(&trust_policy(p)).unwrap();
            assert_eq!(
                doc,
                json!({"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole"
                }]}),
                "{p}"
            );
        }
        assert_eq!(service_principal("s3", "aws-cn"), "s3.amazonaws.com");
        assert_eq!(service_principal("logs", "aws-cn"), "logs.amazonaws.com.cn");
        assert_eq!(service_principal("logs", "aws"), "logs.amazonaws.com");
    }
}
