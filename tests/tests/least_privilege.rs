//! Least privilege, run: a transfer created by the provider, then copied by the real `finder` and `worker`
//! binaries holding nothing but the instance role it created — moto checking every request they make against
//! the role's policies.
//!
//! # How far moto's IAM enforcement goes (moto 5.2.5, found by experiment and by reading `moto/iam/access_control.py`)
//!
//! With enforcement on ([`World::enforce_iam`]: moto's `INITIAL_NO_AUTH_ACTION_COUNT`) moto authenticates every
//! request (only an IAM user's access key or an assumed role's session that moto issued is accepted, and the
//! SigV4 signature is recomputed) and authorises it against the principal's inline and attached policies:
//! - **actions**: every service, by the API operation's name (`<service>:<Operation>`). S3 maps requests to IAM
//!   actions with its own table: HEAD object → `s3:GetObject`, ListObjectsV2 → `s3:ListBucket`, `?uploads` on a
//!   bucket → `s3:ListBucketMultipartUploads`, GET `?uploadId` → `s3:ListMultipartUploadParts`, GET `?tagging`
//!   → `s3:GetObjectTagging`, GET `?versionId` → `s3:GetObjectVersion`, CreateMultipartUpload, UploadPart and
//!   CompleteMultipartUpload → `s3:PutObject`, DELETE `?uploadId` → `s3:AbortMultipartUpload`. It does *not* ask
//!   for `s3:PutObjectAcl` / `s3:PutObjectTagging` when PutObject carries `x-amz-acl` / `x-amz-tagging`, nor for
//!   `s3:GetObjectVersion` on a HEAD with a `versionId`. SQS is authorised by operation name, so
//!   SendMessageBatch needs `sqs:SendMessageBatch` in moto where AWS authorises it as `sqs:SendMessage`, and
//!   TransactWriteItems needs `dynamodb:TransactWriteItems`, where AWS authorises each of its actions as its own
//!   operation (`dynamodb:PutItem`, `dynamodb:UpdateItem`: "Using IAM with DynamoDB transactions").
//! - **resources**: S3 (bucket and object ARNs) and SQS (the queue's ARN) only. Every other service is authorised
//!   against the resource `*`, which a statement scoped to an ARN never matches: DynamoDB, Secrets Manager, Auto
//!   Scaling, KMS and CloudWatch Logs calls are refused under a correctly scoped policy (a `GetItem` allowed on
//!   the ledger's table ARN is denied).
//! - **conditions**: not evaluated for identity policies. Only `StringEquals` is implemented at all, against
//!   request values moto passes only for AssumeRole trust checks; `StringLike` on `s3:prefix`, `ArnLike`,
//!   `ForAnyValue:` are ignored (a ListObjectsV2 outside an `s3:prefix` condition is allowed).
//! - resource-based policies (the queue policy, KMS key policies, bucket policies) are not evaluated; S3's event
//!   delivery to SQS is not authorised at all; a trust policy whose principal is a service (`ec2.amazonaws.com`)
//!   cannot be checked by moto's AssumeRole, so the role is assumed before enforcement starts, as EC2 would.
//!
//! So the role carries exactly [`access_policy`] as created, plus one second policy, `moto-resource-blind`,
//! derived mechanically from it for what moto cannot evaluate: each statement of a service moto authorises
//! against `*` copied with `Resource: "*"` (same actions: a missing or extra action is still caught), and
//! `sqs:SendMessageBatch` wherever `sqs:SendMessage` is granted, `dynamodb:TransactWriteItems` wherever
//! `dynamodb:PutItem` and `dynamodb:UpdateItem` are. What this test proves is then: the binaries need
//! no S3 or SQS action outside the policy, on no bucket, key range or queue outside it; and no DynamoDB or Auto
//! Scaling action outside it (actions only). Checked on paper only (the unit table in `transfer/policy.rs` and
//! its citations): conditions (`s3:prefix`, `kms:ResourceAliases`, the queue policy's `aws:SourceArn` /
//! `aws:SourceAccount`), resource scoping of the ledger, secrets, groups, KMS keys, repository and log group,
//! `s3:PutObjectAcl` / `s3:PutObjectTagging` / `s3:GetObjectVersion*`, KMS at all, and the host's calls (ECR
//! pull, awslogs, the AWS CLI in the failure units).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use dth_core::config::{EventsMode, MultipartOptions};
use dth_provider::aws::AwsClients;
use dth_provider::transfer::{access_policy, create, Infra, Names, TransferSpec};
use dth_tests::cloud::provider_config;
use dth_tests::*;
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;
const SRC: &str = "iam-src";
const DST: &str = "iam-dst";
const OTHER: &str = "iam-other";

/// Services whose calls moto authorises against the resource `*` only.
const RESOURCE_BLIND: &[&str] = &[
    "dynamodb",
    "secretsmanager",
    "autoscaling",
    "kms",
    "logs",
    "ecr",
];

/// The second policy moto needs to run `policy` (see the module comment): the same actions of resource-blind
/// services on `*`, `sqs:SendMessageBatch` where `sqs:SendMessage` is granted, and `dynamodb:TransactWriteItems`
/// where `dynamodb:PutItem` and `dynamodb:UpdateItem` are.
fn moto_resource_blind(policy: &Value) -> Value {
    let mut statements = Vec::new();
    for st in policy["Statement"].as_array().unwrap() {
        let actions: Vec<&str> = st["Action"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let blind: Vec<&str> = actions
            .iter()
            .copied()
            .filter(|a| RESOURCE_BLIND.contains(&a.split(':').next().unwrap()))
            .collect();
        if !blind.is_empty() {
            statements.push(json!({"Effect": "Allow", "Action": blind, "Resource": "*"}));
        }
        // AWS authorises each action of a transaction as its own operation; moto asks for the transaction's.
        if actions.contains(&"dynamodb:PutItem") && actions.contains(&"dynamodb:UpdateItem") {
            statements.push(
                json!({"Effect": "Allow", "Action": ["dynamodb:TransactWriteItems"], "Resource": "*"}),
            );
        }
        if actions.contains(&"sqs:SendMessage") {
            statements.push(
                json!({"Effect": "Allow", "Action": ["sqs:SendMessageBatch"],
                                   "Resource": st["Resource"].clone()}),
            );
        }
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// IAM returns policy documents URL-encoded (moto as it was given): JSON either way.
fn policy_json(text: &str) -> Value {
    if let Ok(v) = serde_json::from_str(text) {
        return v;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    serde_json::from_slice(&out).expect("a policy document")
}

/// The instance role's session, as EC2 would hand it to the instance.
struct RoleSession {
    key: String,
    secret: String,
    token: String,
}

impl RoleSession {
    /// A binary run with only this session's credentials.
    fn cmd(&self, w: &World, name: &str, config: &Path) -> std::process::Command {
        let mut c = w.cmd(name, config);
        c.env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_SESSION_TOKEN", &self.token);
        c
    }

    fn run(&self, w: &World, name: &str, config: &Path, args: &[&str]) -> Output {
        let out = self.cmd(w, name, config).args(args).output().unwrap();
        std::fs::write(
            w.dir.join(format!("{name}-{}.log", fastrand::u32(..))),
            &out.stderr,
        )
        .unwrap();
        out
    }

    /// Workers until the queue is drained; each must succeed.
    fn drain(&self, w: &World, config: &Path, workers: usize) {
        let mut running: Vec<_> = (0..workers)
            .map(|_| {
                let log = w.dir.join(format!("worker-{}.log", fastrand::u32(..)));
                let child = self
                    .cmd(w, "worker", config)
                    .args(["--exit-when-idle", "4"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .unwrap();
                (Proc(child), log)
            })
            .collect();
        for (child, log) in running.iter_mut() {
            let status = wait(child, Duration::from_secs(240));
            let text = std::fs::read_to_string(log).unwrap();
            assert!(status.success(), "worker failed: {text}");
            assert!(
                !text.contains("AccessDenied") && !text.contains("not authorized"),
                "a worker was refused something: {text}"
            );
        }
    }

    async fn sdk(&self, w: &World) -> aws_config::SdkConfig {
        let creds = aws_credential_types::Credentials::new(
            &self.key,
            &self.secret,
            Some(self.token.clone()),
            None,
            "role",
        );
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .credentials_provider(creds)
            .endpoint_url(&w.endpoint)
            .load()
            .await
    }
}

fn denied<T, E: std::fmt::Debug>(what: &str, r: Result<T, E>) {
    match r {
        Ok(_) => panic!("{what}: allowed, but the policy does not grant it"),
        Err(e) => {
            let text = format!("{e:?}");
            assert!(
                text.contains("AccessDenied") || text.contains("403"),
                "{what}: refused, but not as access denied: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_transfer_runs_under_the_role_policy_with_iam_enforced() {
    let w = World::start("least-privilege").await;
    let cfg = provider_config(&w.endpoint);
    let c = AwsClients::new(&cfg).await.expect("clients");
    for b in [SRC, DST, OTHER] {
        w.bucket(b).await;
    }
    // The source range is `in/`; `input/` and `in-other/` share its first letters and stay out of it.
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..12 {
        let k = format!("in/small/{i}");
        let body = random_bytes(500 + i * 1000);
        w.put(SRC, &k, &body).await;
        expected.insert(k, body);
    }
    for k in [
        "in/a b/c d.txt",
        "in/ünï/cödé €.bin",
        "in/plus+sign",
        "in/zero",
    ] {
        let body = if k.ends_with("zero") {
            vec![]
        } else {
            random_bytes(3000)
        };
        w.put(SRC, k, &body).await;
        expected.insert(k.into(), body);
    }
    // Tags and metadata travel (GetObjectTagging at the source, x-amz-tagging at the destination).
    let tagged = random_bytes(777);
    w.s3.put_object()
        .bucket(SRC)
        .key("in/meta/doc.html")
        .body(ByteStream::from(tagged.clone()))
        .content_type("text/html")
        .metadata("owner", "data-team")
        .tagging("team=data")
        .send()
        .await
        .unwrap();
    expected.insert("in/meta/doc.html".into(), tagged);
    // In parts, layout kept (a multipart copy: ListMultipartUploads, CreateMultipartUpload, UploadPart,
    // CompleteMultipartUpload, HeadObject with partNumber).
    let multi = random_bytes(11 * MIB + 7);
    w.put_multipart(SRC, "in/big/multi.bin", &multi, 5 * MIB)
        .await;
    expected.insert("in/big/multi.bin".into(), multi);
    // Above the giant threshold: split into per-part jobs that workers send to the queue themselves.
    let giant = random_bytes(13 * MIB + 5);
    w.put_multipart(SRC, "in/giant/g.bin", &giant, 6 * MIB)
        .await;
    expected.insert("in/giant/g.bin".into(), giant);
    for k in ["input/not-mine", "in-other/not-mine"] {
        w.put(SRC, k, b"outside the range").await;
    }
    // At the destination, next to the range: never touched.
    w.put(DST, "out-other/keep", b"keep").await;
    w.put(DST, "out/elsewhere", b"keep").await;

    let mut spec = TransferSpec::new("iam", SRC, DST, "registry.local/dth:1");
    spec.source.prefix = "in/".into();
    spec.destination.prefix = "out".into();
    spec.source.events = EventsMode::CreateAndDelete;
    spec.multipart = MultipartOptions {
        threshold: 5 * MIB as u64,
        chunk_size: 5 * MIB as u64,
        giant_threshold: 12 * MIB as u64,
    };
    let infra: Infra = create(&c, &cfg, &spec).await.expect("create");
    let names = Names::new("iam");

    // The role holds exactly the policy the provider wrote.
    let stored = c
        .iam
        .get_role_policy()
        .role_name(&infra.role_name)
        .policy_name(&infra.policy_name)
        .send()
        .await
        .expect("role policy");
    let policy: Value =
        serde_json::from_str(&access_policy(&spec, &infra, &names).unwrap()).unwrap();
    assert_eq!(policy_json(stored.policy_document()), policy);
    let listed = c
        .iam
        .list_role_policies()
        .role_name(&infra.role_name)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.policy_names(),
        std::slice::from_ref(&infra.policy_name)
    );
    assert!(c
        .iam
        .list_attached_role_policies()
        .role_name(&infra.role_name)
        .send()
        .await
        .unwrap()
        .attached_policies()
        .is_empty());
    c.iam
        .put_role_policy()
        .role_name(&infra.role_name)
        .policy_name("moto-resource-blind")
        .policy_document(moto_resource_blind(&policy).to_string())
        .send()
        .await
        .expect("moto's companion policy");
    let creds = c
        .sts
        .assume_role()
        .role_arn(&infra.role_arn)
        .role_session_name("i-0123456789abcdef0")
        .send()
        .await
        .expect("assume role")
        .credentials()
        .cloned()
        .expect("credentials");
    let role = RoleSession {
        key: creds.access_key_id().to_owned(),
        secret: creds.secret_access_key().to_owned(),
        token: creds.session_token().to_owned(),
    };
    let job = spec.job_config(&infra, &cfg);
    let config = w.dir.join("job.json");
    std::fs::write(&config, serde_json::to_string_pretty(&job).unwrap()).unwrap();

    w.enforce_iam(true);
    // The harness's own credentials are no longer any good: enforcement is on.
    denied(
        "the harness's test credentials",
        w.s3.list_objects_v2().bucket(SRC).send().await,
    );

    let found = role.run(
        &w,
        "finder",
        &config,
        &["--json", "--scale-in-asg", &infra.finder_asg],
    );
    assert!(found.status.success(), "finder: {}", stderr(&found));
    let report: Value = serde_json::from_str(&stdout(&found)).unwrap();
    assert_eq!(report["to_move"], expected.len(), "{report}");
    role.drain(&w, &config, 2);

    // Outside the policy, with the same session: refused.
    let sdk = role.sdk(&w).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let put = |bucket: &str, key: &str| {
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from_static(b"x"))
            .send()
    };
    denied(
        "writing out-other/ (a sibling of `out`)",
        put(DST, "out-other/x").await,
    );
    denied("writing out/ outside out/in/", put(DST, "out/x").await);
    denied("writing another bucket", put(OTHER, "x").await);
    denied(
        "reading input/ (a sibling of `in/`)",
        s3.get_object()
            .bucket(SRC)
            .key("input/not-mine")
            .send()
            .await,
    );
    denied(
        "listing another bucket",
        s3.list_objects_v2().bucket(OTHER).send().await,
    );
    denied(
        "deleting outside the range",
        s3.delete_object()
            .bucket(DST)
            .key("out-other/keep")
            .send()
            .await,
    );
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    denied(
        "sending to the dead-letter queue",
        sqs.send_message()
            .queue_url(&infra.dlq_url)
            .message_body("x")
            .send()
            .await,
    );
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    // Deleting a ledger row other than an upload's is refused on AWS by the dynamodb:LeadingKeys condition, which
    // moto does not evaluate: checked on paper (policy.rs's table), not here.
    denied(
        "scanning the ledger",
        ddb.scan().table_name(&names.table).send().await,
    );

    // Events: a new object and a deletion in the range reach the queue; a worker under the policy applies them.
    w.enforce_iam(false);
    let late = random_bytes(4321);
    w.put(SRC, "in/late/new.bin", &late).await;
    w.s3.delete_object()
        .bucket(SRC)
        .key("in/small/0")
        .send()
        .await
        .unwrap();
    w.put(SRC, "input/late", b"outside the notification's prefix")
        .await;
    w.enforce_iam(true);
    role.drain(&w, &config, 1);
    w.enforce_iam(false);

    expected.remove("in/small/0");
    expected.insert("in/late/new.bin".into(), late);
    for (k, body) in &expected {
        let got = w
            .get(DST, &format!("out/{k}"))
            .await
            .unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(md5_hex(&got), md5_hex(body), "{k} differs");
    }
    let mut keys = w.keys(DST).await;
    keys.sort();
    let mut want: Vec<String> = expected.keys().map(|k| format!("out/{k}")).collect();
    want.extend(["out-other/keep".into(), "out/elsewhere".into()]);
    want.sort();
    assert_eq!(keys, want);
    for k in ["in/big/multi.bin", "in/giant/g.bin"] {
        let s = w.s3.head_object().bucket(SRC).key(k).send().await.unwrap();
        let d =
            w.s3.head_object()
                .bucket(DST)
                .key(format!("out/{k}"))
                .send()
                .await
                .unwrap();
        assert_eq!(s.e_tag(), d.e_tag(), "{k}: layout kept");
    }
    let tags =
        w.s3.get_object_tagging()
            .bucket(DST)
            .key("out/in/meta/doc.html")
            .send()
            .await
            .unwrap();
    assert_eq!(tags.tag_set().len(), 1);
    assert_eq!(w.depth(&infra.queue_url).await, (0, 0));
    assert_eq!(w.depth(&infra.dlq_url).await, (0, 0));
    assert_eq!(w.incomplete_uploads(DST).await, 0);
}
