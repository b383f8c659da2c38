//! The policy documents of a transfer: the instance role's trust and access policies and the job queue's policy
//! for S3 event notifications. Pure functions of the spec and what was created, so that a unit test can hold
//! them against a table of (action, resource) pairs.

use dth_core::config::{EventsMode, SourceType, Sse};
use dth_core::userdata;
use serde_json::{json, Value};

use super::infra::{Infra, Names};
use super::spec::TransferSpec;

/// Lets S3 deliver the source bucket's event notifications to the job queue.
pub(crate) fn queue_policy(queue_arn: &str, bucket: &str, partition: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "dth-s3-events",
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnLike": {"aws:SourceArn": format!("arn:{partition}:s3:::{bucket}")}}
        }]
    })
    .to_string()
}

pub(crate) fn trust_policy() -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole"
        }]
    })
    .to_string()
}

/// `<account>` from any ARN of the account (`arn:partition:service:region:account:...`).
pub(crate) fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// The instances' permissions: only the named buckets and prefixes, queue, table, secrets, groups and log group.
/// A side read or written with keys from a secret gets no S3 statement (the role never touches it).
pub fn access_policy(spec: &TransferSpec, infra: &Infra, names: &Names) -> String {
    let p = crate::aws::partition_of(&infra.region);
    let region = &infra.region;
    let account = account_of(&infra.dlq_arn).unwrap_or("*");
    let mut statements: Vec<Value> = Vec::new();
    let s = &spec.source;
    if s.kind == SourceType::AmazonS3 && s.credentials_secret_arn.is_none() {
        // With a prefix list the prefixes are only known at run time: the whole bucket is readable.
        let prefix = if s.prefix_list.is_some() {
            ""
        } else {
            s.prefix.as_str()
        };
        statements.push(json!({
            "Sid": "ReadSource",
            "Effect": "Allow",
            "Action": ["s3:GetObject*"],
            "Resource": format!("arn:{p}:s3:::{}/{prefix}*", s.bucket),
        }));
        statements.push(list_statement("ListSource", p, &s.bucket, prefix));
    }
    if let Some(list) = &s.prefix_list {
        if let Some(b) = &list.bucket {
            statements.push(json!({
                "Sid": "ReadPrefixList",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": format!("arn:{p}:s3:::{b}/{}", list.key),
            }));
        }
    }
    let d = &spec.destination;
    if d.credentials_secret_arn.is_none() {
        let mut actions = vec![
            "s3:PutObject*",
            "s3:GetObject*",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
        ];
        if s.events == EventsMode::CreateAndDelete {
            actions.push("s3:DeleteObject");
        }
        statements.push(json!({
            "Sid": "WriteDestination",
            "Effect": "Allow",
            "Action": actions,
            "Resource": format!("arn:{p}:s3:::{}/{}*", d.bucket, d.prefix),
        }));
        let mut list = list_statement("ListDestination", p, &d.bucket, &d.prefix);
        if let Some(a) = list.get_mut("Action") {
            *a = json!(["s3:ListBucket", "s3:ListBucketMultipartUploads"]);
        }
        statements.push(list);
        if d.sse == Sse::Kms {
            let key = d
                .kms_key_id
                .as_deref()
                .filter(|k| k.starts_with("arn:"))
                .map(str::to_owned)
                .unwrap_or_else(|| format!("arn:{p}:kms:{region}:{account}:key/*"));
            statements.push(json!({
                "Sid": "EncryptDestination",
                "Effect": "Allow",
                "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                "Resource": key,
            }));
        }
    }
    statements.push(json!({
        "Sid": "Queue",
        "Effect": "Allow",
        "Action": [
            "sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
            "sqs:GetQueueAttributes", "sqs:GetQueueUrl"
        ],
        "Resource": [infra.queue_arn, infra.dlq_arn],
    }));
    statements.push(json!({
        "Sid": "Ledger",
        "Effect": "Allow",
        "Action": [
            "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
            "dynamodb:BatchWriteItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:DescribeTable",
            "dynamodb:ConditionCheckItem"
        ],
        "Resource": format!("arn:{p}:dynamodb:{region}:{account}:table/{}", names.table),
    }));
    let secrets: Vec<&String> = [&s.credentials_secret_arn, &d.credentials_secret_arn]
        .into_iter()
        .flatten()
        .collect();
    if !secrets.is_empty() {
        statements.push(json!({
            "Sid": "Credentials",
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue"],
            "Resource": secrets,
        }));
    }
    statements.push(json!({
        "Sid": "FinderScalesItselfIn",
        "Effect": "Allow",
        "Action": ["autoscaling:SetDesiredCapacity"],
        "Resource": format!(
            "arn:{p}:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{}",
            names.finder_asg
        ),
    }));
    statements.push(json!({
        "Sid": "WorkersLeaveTheirGroup",
        "Effect": "Allow",
        "Action": [
            "autoscaling:SetInstanceHealth", "autoscaling:CompleteLifecycleAction",
            "autoscaling:RecordLifecycleActionHeartbeat"
        ],
        "Resource": format!(
            "arn:{p}:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{}",
            names.worker_asg
        ),
    }));
    if let Some((registry_account, registry_region, repository)) =
        userdata::ecr_repository(&spec.fleet.image)
    {
        let rp = crate::aws::partition_of(registry_region);
        // GetAuthorizationToken has no resource to scope to; the pull is this one repository.
        statements.push(json!({
            "Sid": "PullImageLogin",
            "Effect": "Allow",
            "Action": ["ecr:GetAuthorizationToken"],
            "Resource": "*",
        }));
        statements.push(json!({
            "Sid": "PullImage",
            "Effect": "Allow",
            "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            "Resource": format!("arn:{rp}:ecr:{registry_region}:{registry_account}:repository/{repository}"),
        }));
    }
    if !infra.log_group.is_empty() {
        // Docker's awslogs driver makes one stream per container and writes to it; the group itself is the
        // provider's to create, retain and delete.
        statements.push(json!({
            "Sid": "Logs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": super::logs::streams_arn(region, account, &infra.log_group),
        }));
    }
    statements.push(json!({
        "Sid": "Metrics",
        "Effect": "Allow",
        "Action": ["cloudwatch:PutMetricData"],
        "Resource": "*",
    }));
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

fn list_statement(sid: &str, partition: &str, bucket: &str, prefix: &str) -> Value {
    let mut st = json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": ["s3:ListBucket"],
        "Resource": format!("arn:{partition}:s3:::{bucket}"),
    });
    if !prefix.is_empty() {
        st["Condition"] = json!({"StringLike": {"s3:prefix": [format!("{prefix}*")]}});
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_scoped_to_the_transfer() {
        let mut spec = TransferSpec::new("x", "src-bucket", "dst-bucket", "img");
        spec.source.prefix = "in/".into();
        spec.destination.prefix = "out".into();
        spec.source.credentials_secret_arn = None;
        spec.destination.credentials_secret_arn =
            Some("arn:aws:secretsmanager:us-east-1:1:secret:k".into());
        let infra = Infra {
            region: "cn-north-1".into(),
            queue_arn: "arn:aws-cn:sqs:cn-north-1:123456789012:dth-x-jobs".into(),
            dlq_arn: "arn:aws-cn:sqs:cn-north-1:123456789012:dth-x-dlq".into(),
            log_group: "/dth/x".into(),
            ..Infra::default()
        };
        let doc: Value =
            serde_json::from_str(&access_policy(&spec, &infra, &Names::new("x"))).unwrap();
        let text = doc.to_string();
        assert!(text.contains("arn:aws-cn:s3:::src-bucket/in/*"), "{text}");
        assert!(text.contains("\"s3:prefix\":[\"in/*\"]"), "{text}");
        // The destination is written with keys from a secret: no S3 statement for it, the secret readable.
        assert!(!text.contains("dst-bucket"), "{text}");
        assert!(text.contains("secretsmanager:GetSecretValue"));
        assert!(text.contains("arn:aws-cn:dynamodb:cn-north-1:123456789012:table/dth-x-ledger"));
        assert!(text.contains("autoScalingGroupName/dth-x-finder"));
        assert!(!text.contains("s3:DeleteObject"));
        // Workers leave their own group only; an image outside ECR needs no ECR rights at all.
        let leave = statement(&doc, "WorkersLeaveTheirGroup");
        assert_eq!(
            leave["Resource"],
            "arn:aws-cn:autoscaling:cn-north-1:123456789012:autoScalingGroup:*:autoScalingGroupName/dth-x-worker"
        );
        assert!(!text.contains("ecr:"), "{text}");
        // Logs: new streams in the transfer's own group and events into them; never a group, never another's.
        let logs = statement(&doc, "Logs");
        assert_eq!(
            logs["Action"],
            json!(["logs:CreateLogStream", "logs:PutLogEvents"])
        );
        assert_eq!(
            logs["Resource"],
            "arn:aws-cn:logs:cn-north-1:123456789012:log-group:/dth/x:log-stream:*"
        );
        let logs_actions: Vec<&Value> = doc["Statement"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|st| st["Action"].as_array().into_iter().flatten())
            .filter(|a| a.as_str().is_some_and(|a| a.starts_with("logs:")))
            .collect();
        assert_eq!(logs_actions.len(), 2, "only the Logs statement: {text}");
    }

    #[test]
    fn no_log_statement_without_a_log_group() {
        // A transfer created before the provider made log groups: its role gets no logs rights.
        let spec = TransferSpec::new("x", "src-bucket", "dst-bucket", "img");
        let text = access_policy(&spec, &Infra::default(), &Names::new("x"));
        assert!(!text.contains("logs:"), "{text}");
    }

    fn statement<'a>(doc: &'a Value, sid: &str) -> &'a Value {
        doc["Statement"]
            .as_array()
            .and_then(|s| s.iter().find(|st| st["Sid"] == sid))
            .unwrap_or_else(|| panic!("no statement {sid} in {doc}"))
    }

    #[test]
    fn an_ecr_image_is_pullable_from_its_one_repository() {
        let spec = TransferSpec::new(
            "x",
            "src-bucket",
            "dst-bucket",
            "210987654321.dkr.ecr.cn-northwest-1.amazonaws.com.cn/mirror/dth:0.1.0@sha256:ab",
        );
        let doc: Value =
            serde_json::from_str(&access_policy(&spec, &Infra::default(), &Names::new("x")))
                .unwrap();
        assert_eq!(
            statement(&doc, "PullImageLogin")["Action"],
            json!(["ecr:GetAuthorizationToken"])
        );
        let pull = statement(&doc, "PullImage");
        assert_eq!(
            pull["Resource"],
            "arn:aws-cn:ecr:cn-northwest-1:210987654321:repository/mirror/dth"
        );
        assert!(
            !pull["Action"].to_string().contains("Put"),
            "pull only: {pull}"
        );
    }

    #[test]
    fn deletes_are_allowed_only_when_mirrored() {
        let mut spec = TransferSpec::new("x", "src-bucket", "dst-bucket", "img");
        spec.source.events = EventsMode::CreateAndDelete;
        let text = access_policy(&spec, &Infra::default(), &Names::new("x"));
        assert!(text.contains("s3:DeleteObject"));
    }
}
