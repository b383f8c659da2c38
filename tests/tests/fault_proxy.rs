//! The fault proxy (`dth_tests::fault`) against a real moto, with real AWS SDK clients — the provider's own
//! (`dth_provider::aws::AwsClients` through `dth_tests::cloud::clients(proxy.url())`):
//! - every fault kind gives, per service and protocol, the error code, message and HTTP status the SDK reports
//!   from AWS (`ProvideErrorMetadata::code()`, and the SDK's typed error where it has one);
//! - first-N rules fault exactly N calls, then moto answers and the resource exists; a share rule faults a
//!   fixed set of calls for its seed;
//! - a reset before forwarding leaves moto untouched, a reset after forwarding leaves the effect behind;
//! - a truncated answer, an answer reset mid-body and a request reset mid-upload are transport or body errors
//!   to the SDK (an S3 body breaks only when it is read), never AWS errors;
//! - S3 bodies (a 5 MiB aws-chunked PutObject, a multipart upload) pass byte-exact; latency delays;
//! - canned and rewritten answers reach the SDK's parsers;
//! - with the SDK's standard retries on, throttling, 5xx and resets are retried (each attempt is a call the
//!   proxy counts), eventual-consistency errors are not;
//! - the real terraform CLI, its provider pointed at the proxy, with rules changed between commands; the
//!   finder and the worker through the proxy (`FaultProxy::config_patch`).
//!
//! Unless a test says otherwise the clients are rebuilt with retries off: one SDK call, one request.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_smithy_types::retry::RetryConfig;
use dth_tests::fault::{Fault, FaultProxy, Rule};
use dth_tests::terraform::Terraform;
use dth_tests::*;

const MIB: usize = 1024 * 1024;

/// The provider's clients pointed at `url`, rebuilt with `retry`.
struct Sdk {
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    ddb: aws_sdk_dynamodb::Client,
    secrets: aws_sdk_secretsmanager::Client,
    asg: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    iam: aws_sdk_iam::Client,
    cw: aws_sdk_cloudwatch::Client,
    sns: aws_sdk_sns::Client,
    sts: aws_sdk_sts::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
}

async fn sdk(url: &str, retry: RetryConfig) -> Sdk {
    let c = dth_tests::cloud::clients(url).await;
    macro_rules! again {
        ($krate:ident, $client:expr) => {
            $krate::Client::from_conf(
                $client
                    .config()
                    .to_builder()
                    .retry_config(retry.clone())
                    .build(),
            )
        };
    }
    Sdk {
        s3: again!(aws_sdk_s3, c.s3),
        sqs: again!(aws_sdk_sqs, c.sqs),
        ddb: again!(aws_sdk_dynamodb, c.dynamodb),
        secrets: again!(aws_sdk_secretsmanager, c.secretsmanager),
        asg: again!(aws_sdk_autoscaling, c.autoscaling),
        ec2: again!(aws_sdk_ec2, c.ec2),
        iam: again!(aws_sdk_iam, c.iam),
        cw: again!(aws_sdk_cloudwatch, c.cloudwatch),
        sns: again!(aws_sdk_sns, c.sns),
        sts: again!(aws_sdk_sts, c.sts),
        logs: again!(aws_sdk_cloudwatchlogs, c.logs),
    }
}

/// Retries off: one SDK call, one request.
async fn direct(url: &str) -> Sdk {
    sdk(url, RetryConfig::disabled()).await
}

/// What a failed call reported.
#[derive(Debug)]
struct Failure {
    code: Option<String>,
    message: Option<String>,
    status: Option<u16>,
    /// No HTTP answer: the connection failed.
    transport: bool,
}

fn failure<T: Debug, E: ProvideErrorMetadata + Debug>(
    r: Result<T, SdkError<E, HttpResponse>>,
) -> Failure {
    let e = r.expect_err("the call must fail");
    Failure {
        code: e.code().map(str::to_owned),
        message: e.message().map(str::to_owned),
        status: e.raw_response().map(|r| r.status().as_u16()),
        transport: matches!(e, SdkError::DispatchFailure(_)),
    }
}

/// Inject `fault` for one call of `service`/`op`, make the call, and require `(code, status)`; then the same
/// call must pass through to moto.
macro_rules! faulted {
    ($proxy:expr, $svc:literal, $op:literal, $fault:expr, $call:expr, $code:expr, $status:expr) => {{
        let id = $proxy.inject(Rule::on($svc, $op, $fault).first(1));
        let f = failure($call.await);
        assert_eq!(
            (f.code.as_deref(), f.status),
            ($code, Some($status)),
            "{} {}: {f:?}\n{}",
            $svc,
            $op,
            $proxy.journal_text()
        );
        assert_eq!($proxy.fired(id), 1, "{}", $proxy.journal_text());
        $proxy.remove(id);
        $call
            .await
            .expect(concat!($svc, " ", $op, " must pass through"));
        f
    }};
}

/// The three generic faults, as the service at hand answers them.
macro_rules! generic_faults {
    ($proxy:expr, $svc:literal, $op:literal, $call:expr, throttling: $t:expr, internal: $i:expr, unavailable: $u:expr) => {{
        let (t, i, u) = ($t, $i, $u);
        faulted!($proxy, $svc, $op, Fault::Throttling, $call, Some(t.0), t.1);
        faulted!(
            $proxy,
            $svc,
            $op,
            Fault::InternalError,
            $call,
            Some(i.0),
            i.1
        );
        faulted!(
            $proxy,
            $svc,
            $op,
            Fault::ServiceUnavailable,
            $call,
            Some(u.0),
            u.1
        );
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_services_answer_aws_errors() {
    let w = World::start("fault-json").await;
    let proxy = w.fault_proxy().await;
    let c = direct(proxy.url()).await;

    // SQS speaks AWS JSON 1.0 (aws-sdk-sqs 1.119) with awsQueryCompatible error codes.
    let f = faulted!(
        proxy,
        "sqs",
        "CreateQueue",
        Fault::queue_deleted_recently(),
        c.sqs.create_queue().queue_name("fp-json").send(),
        Some("AWS.SimpleQueueService.QueueDeletedRecently"),
        400
    );
    assert!(f.message.unwrap().contains("wait 60 seconds"));
    proxy.inject(Rule::on("sqs", "CreateQueue", Fault::queue_deleted_recently()).first(1));
    let e = c
        .sqs
        .create_queue()
        .queue_name("fp-json")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error()
            .is_some_and(|e| e.is_queue_deleted_recently()),
        "the SDK's typed error: {e:?}"
    );
    generic_faults!(proxy, "sqs", "ListQueues", c.sqs.list_queues().send(),
        throttling: ("RequestThrottled", 400),
        internal: ("InternalFailure", 500),
        unavailable: ("ServiceUnavailable", 503));

    // DynamoDB: AWS JSON 1.0.
    w.table("fp-table").await;
    faulted!(
        proxy,
        "dynamodb",
        "DescribeTable",
        Fault::resource_in_use(
            "Attempt to change a resource which is still in use: Table is being created: fp-table"
        ),
        c.ddb.describe_table().table_name("fp-table").send(),
        Some("ResourceInUseException"),
        400
    );
    proxy.inject(
        Rule::on(
            "dynamodb",
            "GetItem",
            Fault::provisioned_throughput_exceeded(),
        )
        .first(1),
    );
    let e = c
        .ddb
        .get_item()
        .table_name("fp-table")
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("a".into()))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("b".into()))
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error()
            .is_some_and(|e| e.is_provisioned_throughput_exceeded_exception()),
        "{e:?}"
    );
    generic_faults!(proxy, "dynamodb", "ListTables", c.ddb.list_tables().send(),
        throttling: ("ThrottlingException", 400),
        internal: ("InternalServerError", 500),
        unavailable: ("ServiceUnavailable", 503));

    // CloudWatch Logs and Secrets Manager: AWS JSON 1.1.
    generic_faults!(proxy, "logs", "DescribeLogGroups", c.logs.describe_log_groups().send(),
        throttling: ("ThrottlingException", 400),
        internal: ("ServiceUnavailableException", 500),
        unavailable: ("ServiceUnavailable", 503));
    generic_faults!(proxy, "secretsmanager", "ListSecrets", c.secrets.list_secrets().send(),
        throttling: ("ThrottlingException", 400),
        internal: ("InternalServiceError", 500),
        unavailable: ("ServiceUnavailable", 503));

    assert_eq!(proxy.injected("*", "*"), 16, "{}", proxy.journal_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_services_answer_aws_errors() {
    let w = World::start("fault-query").await;
    let proxy = w.fault_proxy().await;
    let c = direct(proxy.url()).await;

    generic_faults!(proxy, "iam", "ListRoles", c.iam.list_roles().send(),
        throttling: ("Throttling", 400),
        internal: ("InternalFailure", 500),
        unavailable: ("ServiceUnavailable", 503));
    generic_faults!(proxy, "autoscaling", "DescribeAutoScalingGroups", c.asg.describe_auto_scaling_groups().send(),
        throttling: ("Throttling", 400),
        internal: ("InternalFailure", 500),
        unavailable: ("ServiceUnavailable", 503));
    // CloudWatch signs as `monitoring`; `cloudwatch` is an alias.
    generic_faults!(proxy, "cloudwatch", "DescribeAlarms", c.cw.describe_alarms().send(),
        throttling: ("Throttling", 400),
        internal: ("InternalFailure", 500),
        unavailable: ("ServiceUnavailable", 503));
    generic_faults!(proxy, "sns", "ListTopics", c.sns.list_topics().send(),
        throttling: ("Throttling", 400),
        internal: ("InternalFailure", 500),
        unavailable: ("ServiceUnavailable", 503));
    generic_faults!(proxy, "sts", "GetCallerIdentity", c.sts.get_caller_identity().send(),
        throttling: ("Throttling", 400),
        internal: ("InternalFailure", 500),
        unavailable: ("ServiceUnavailable", 503));
    assert_eq!(proxy.calls("monitoring", "DescribeAlarms"), 6);
    assert_eq!(proxy.injected("cloudwatch", "DescribeAlarms"), 3);

    // EC2's own XML.
    generic_faults!(proxy, "ec2", "DescribeInstances", c.ec2.describe_instances().send(),
        throttling: ("RequestLimitExceeded", 503),
        internal: ("InternalError", 500),
        unavailable: ("Unavailable", 503));

    // An instance profile IAM has not yet propagated, as EC2 and Auto Scaling report it: the first call fails,
    // the second creates the resource in moto.
    let lt = |c: &Sdk| {
        c.ec2
            .create_launch_template()
            .launch_template_name("fp-lt")
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id("ami-12c6146b")
                    .iam_instance_profile(
                        aws_sdk_ec2::types::LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                            .name("fp-profile")
                            .build(),
                    )
                    .build(),
            )
            .send()
    };
    let f = faulted!(
        proxy,
        "ec2",
        "CreateLaunchTemplate",
        Fault::ec2_invalid_instance_profile("fp-profile"),
        lt(&c),
        Some("InvalidParameterValue"),
        400
    );
    assert_eq!(
        f.message.as_deref(),
        Some("Value (fp-profile) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name")
    );
    let group = |c: &Sdk| {
        c.asg
            .create_auto_scaling_group()
            .auto_scaling_group_name("fp-group")
            .launch_template(
                aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_name("fp-lt")
                    .version("$Latest")
                    .build(),
            )
            .min_size(0)
            .max_size(1)
            .availability_zones("us-east-1a")
            .send()
    };
    let f = faulted!(
        proxy,
        "autoscaling",
        "CreateAutoScalingGroup",
        Fault::autoscaling_invalid_instance_profile("fp-profile"),
        group(&c),
        Some("ValidationError"),
        400
    );
    assert!(
        f.message
            .unwrap()
            .contains("Invalid IAM Instance Profile name"),
        "terraform-provider-aws retries on this text"
    );
    let groups = w
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("fp-group")
        .send()
        .await
        .unwrap();
    assert_eq!(groups.auto_scaling_groups().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_answers_aws_errors() {
    let w = World::start("fault-s3").await;
    w.bucket("fp-bucket").await;
    w.put("fp-bucket", "k", b"small").await;
    let proxy = w.fault_proxy().await;
    let c = direct(proxy.url()).await;
    let get = || c.s3.get_object().bucket("fp-bucket").key("k").send();
    generic_faults!(proxy, "s3", "GetObject", get(),
        throttling: ("SlowDown", 503),
        internal: ("InternalError", 500),
        unavailable: ("ServiceUnavailable", 503));
    // A faulted PutObject of a streamed (2 MiB) body: the body is drained, the error still reaches the client.
    let body = random_bytes(2 * MIB);
    let put = || {
        c.s3.put_object()
            .bucket("fp-bucket")
            .key("big")
            .body(body.clone().into())
            .send()
    };
    faulted!(
        proxy,
        "s3",
        "PutObject",
        Fault::Throttling,
        put(),
        Some("SlowDown"),
        503
    );
    assert_eq!(w.get("fp-bucket", "big").await, Some(body));
    // HEAD errors have no body, as from S3: the SDK has only the status (and `NotFound` for 404).
    let head = || c.s3.head_object().bucket("fp-bucket").key("k").send();
    faulted!(
        proxy,
        "s3",
        "HeadObject",
        Fault::Throttling,
        head(),
        None,
        503
    );
    faulted!(
        proxy,
        "s3",
        "HeadObject",
        Fault::error(404, "NoSuchKey", "The specified key does not exist."),
        head(),
        Some("NotFound"),
        404
    );
    let notif = || {
        c.s3.get_bucket_notification_configuration()
            .bucket("fp-bucket")
            .send()
    };
    proxy.inject(
        Rule::on(
            "s3",
            "GetBucketNotificationConfiguration",
            Fault::Throttling,
        )
        .first(1),
    );
    assert_eq!(failure(notif().await).code.as_deref(), Some("SlowDown"));
    assert_eq!(
        proxy.calls("s3", "GetBucketNotificationConfiguration"),
        1,
        "{}",
        proxy.journal_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_n_rules_fault_exactly_n_calls_then_moto_answers() {
    let w = World::start("fault-first").await;
    let proxy = w.fault_proxy().await;
    let c = direct(proxy.url()).await;

    // Only CreateQueue of this queue: another queue passes.
    let rule = proxy.inject(
        Rule::on("sqs", "CreateQueue", Fault::queue_deleted_recently())
            .mentioning("fp-again")
            .first(2),
    );
    for _ in 0..2 {
        let f = failure(c.sqs.create_queue().queue_name("fp-again").send().await);
        assert_eq!(
            f.code.as_deref(),
            Some("AWS.SimpleQueueService.QueueDeletedRecently")
        );
    }
    c.sqs
        .create_queue()
        .queue_name("fp-other")
        .send()
        .await
        .expect("a queue the rule does not mention");
    let url = c
        .sqs
        .create_queue()
        .queue_name("fp-again")
        .send()
        .await
        .expect("the third CreateQueue reaches moto")
        .queue_url
        .unwrap();
    let found = w.sqs.get_queue_url().queue_name("fp-again").send().await;
    assert!(url.ends_with("/fp-again"), "{url}");
    assert!(found.unwrap().queue_url.unwrap().ends_with("/fp-again"));
    assert_eq!(proxy.fired(rule), 2);
    assert_eq!(
        (
            proxy.calls("sqs", "CreateQueue"),
            proxy.injected("sqs", "CreateQueue")
        ),
        (4, 2)
    );

    // A table still in use, twice; the third DeleteTable deletes it.
    w.table("fp-busy").await;
    proxy.inject(
        Rule::on(
            "dynamodb",
            "DeleteTable",
            Fault::resource_in_use("Attempt to change a resource which is still in use: Table is being created: fp-busy"),
        )
        .when(|r| r.json_field("TableName").as_deref() == Some("fp-busy"))
        .first(2),
    );
    for _ in 0..2 {
        let e = c
            .ddb
            .delete_table()
            .table_name("fp-busy")
            .send()
            .await
            .unwrap_err();
        assert!(
            e.as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()),
            "{e:?}"
        );
    }
    c.ddb
        .delete_table()
        .table_name("fp-busy")
        .send()
        .await
        .unwrap();
    assert!(w
        .ddb
        .describe_table()
        .table_name("fp-busy")
        .send()
        .await
        .is_err());
    assert_eq!(proxy.calls("dynamodb", "DeleteTable"), 3);

    let journal = proxy.journal();
    let faulted: Vec<String> = journal
        .iter()
        .filter(|c| c.fault.is_some())
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        faulted,
        [
            "sqs CreateQueue → 400 [AWS.SimpleQueueService.QueueDeletedRecently (400)]",
            "sqs CreateQueue → 400 [AWS.SimpleQueueService.QueueDeletedRecently (400)]",
            "dynamodb DeleteTable → 400 [ResourceInUseException (400)]",
            "dynamodb DeleteTable → 400 [ResourceInUseException (400)]",
        ]
    );
}

/// Which of 40 sequential ListQueues a share rule faults.
async fn share_pattern(upstream: &str, ratio: f64, seed: u64) -> (Vec<bool>, usize) {
    let proxy = FaultProxy::start(upstream).await;
    let c = direct(proxy.url()).await;
    proxy.inject(Rule::on("sqs", "ListQueues", Fault::Throttling).share(ratio, seed));
    let mut pattern = Vec::new();
    for _ in 0..40 {
        pattern.push(c.sqs.list_queues().send().await.is_err());
    }
    (pattern, proxy.injected("sqs", "ListQueues"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_rules_fault_a_seeded_share() {
    let w = World::start("fault-share").await;
    let (a, n) = share_pattern(&w.endpoint, 0.25, 42).await;
    assert_eq!(a.iter().filter(|f| **f).count(), n);
    // The count for seed 42 (SplitMix64, fixed by dth_tests::fault): about a quarter of 40.
    assert_eq!(n, 11, "{a:?}");
    let (b, _) = share_pattern(&w.endpoint, 0.25, 42).await;
    assert_eq!(a, b, "the same seed faults the same calls");
    let (other, m) = share_pattern(&w.endpoint, 0.25, 7).await;
    assert_ne!(a, other, "another seed, other calls");
    assert!((3..=17).contains(&m), "{m} of 40");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_before_and_after_forwarding() {
    let w = World::start("fault-reset").await;
    w.bucket("fp-bucket").await;
    let proxy = w.fault_proxy().await;
    let c = direct(proxy.url()).await;

    proxy.inject(Rule::on("sqs", "CreateQueue", Fault::ResetBeforeForward).first(1));
    let f = failure(c.sqs.create_queue().queue_name("fp-never").send().await);
    assert!(f.transport && f.status.is_none(), "{f:?}");
    let e = w
        .sqs
        .get_queue_url()
        .queue_name("fp-never")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error()
            .is_some_and(|e| e.is_queue_does_not_exist()),
        "moto never saw it: {e:?}"
    );

    proxy.inject(Rule::on("sqs", "CreateQueue", Fault::ResetAfterForward).first(1));
    let f = failure(c.sqs.create_queue().queue_name("fp-done").send().await);
    assert!(f.transport && f.status.is_none(), "{f:?}");
    w.sqs
        .get_queue_url()
        .queue_name("fp-done")
        .send()
        .await
        .expect("the request took effect although the caller saw a failure");

    // A streamed upload reset after moto stored it.
    let body = random_bytes(3 * MIB + 5);
    proxy.inject(Rule::on("s3", "PutObject", Fault::ResetAfterForward).first(1));
    let f = failure(
        c.s3.put_object()
            .bucket("fp-bucket")
            .key("stored")
            .body(body.clone().into())
            .send()
            .await,
    );
    assert!(f.transport, "{f:?}");
    assert_eq!(w.get("fp-bucket", "stored").await, Some(body));
    assert_eq!(proxy.injected("*", "*"), 3);
    assert!(proxy
        .journal()
        .iter()
        .all(|c| c.fault.is_none() || c.status.is_none()));
}

/// A call broken on the wire: no AWS error in it, and either no answer at all (dispatch) or an answer the SDK
/// could not read (response).
fn broken<T: Debug, E: ProvideErrorMetadata + Debug>(
    what: &str,
    r: Result<T, SdkError<E, HttpResponse>>,
    proxy: &FaultProxy,
) {
    let e = r.expect_err(what);
    assert!(
        matches!(e, SdkError::DispatchFailure(_) | SdkError::ResponseError(_))
            && e.code().is_none(),
        "{what}: {e:?}\n{}",
        proxy.journal_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_are_transport_and_body_errors() {
    let w = World::start("fault-bodies").await;
    w.bucket("fp-bucket").await;
    let object = random_bytes(MIB + 17);
    w.put("fp-bucket", "object", &object).await;
    let q = w.queues("fp-q", 5, 30).await;
    let proxy = w.fault_proxy().await;
    let c = direct(proxy.url()).await;
    let get = || c.s3.get_object().bucket("fp-bucket").key("object").send();

    // A truncated GetObject: the head (and its Content-Length) is whole, so `send` succeeds; reading the body
    // fails. The SDK cannot retry that — whoever reads the body must.
    proxy.inject(Rule::on("s3", "GetObject", Fault::TruncatedBody).first(1));
    let answer = get().await.expect("the head is whole");
    assert_eq!(answer.content_length(), Some(object.len() as i64));
    let e = answer
        .body
        .collect()
        .await
        .expect_err("the body ends early");
    assert!(
        format!("{e:?}").to_lowercase().contains("incomplete") || format!("{e:?}").contains("Eof"),
        "{e:?}"
    );
    // Reset mid-body: the body fails, or (when the reset overtakes the head) the call itself.
    proxy.inject(Rule::on("s3", "GetObject", Fault::ResetMidBody).first(1));
    match get().await {
        Ok(answer) => assert!(answer.body.collect().await.is_err(), "the body must fail"),
        Err(e) => broken("GetObject reset mid-body", Err::<(), _>(e), &proxy),
    }
    let whole = get()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(md5_hex(&whole), md5_hex(&object), "then it passes whole");

    // Answers read whole by the SDK (AWS JSON): the call fails without an AWS error.
    proxy.inject(Rule::on("sqs", "ListQueues", Fault::TruncatedBody).first(1));
    broken(
        "ListQueues truncated",
        c.sqs.list_queues().send().await,
        &proxy,
    );
    proxy.inject(Rule::on("dynamodb", "ListTables", Fault::ResetMidBody).first(1));
    broken(
        "ListTables reset mid-body",
        c.ddb.list_tables().send().await,
        &proxy,
    );

    // An answer without a body is cut inside its head; the request took effect all the same.
    let small = random_bytes(1000);
    proxy.inject(Rule::on("s3", "PutObject", Fault::TruncatedBody).first(1));
    broken(
        "PutObject truncated",
        c.s3.put_object()
            .bucket("fp-bucket")
            .key("took-effect")
            .body(small.clone().into())
            .send()
            .await,
        &proxy,
    );
    assert_eq!(w.get("fp-bucket", "took-effect").await, Some(small));

    // An upload broken off midway: moto never sees it.
    proxy.inject(Rule::on("s3", "PutObject", Fault::ResetMidRequest).first(1));
    broken(
        "PutObject reset mid-request",
        c.s3.put_object()
            .bucket("fp-bucket")
            .key("never")
            .body(random_bytes(3 * MIB).into())
            .send()
            .await,
        &proxy,
    );
    assert_eq!(w.get("fp-bucket", "never").await, None);
    proxy.inject(Rule::on("sqs", "SendMessage", Fault::ResetMidRequest).first(1));
    broken(
        "SendMessage reset mid-request",
        c.sqs
            .send_message()
            .queue_url(&q.url)
            .message_body("lost")
            .send()
            .await,
        &proxy,
    );
    assert_eq!(w.depth(&q.url).await, (0, 0), "moto never saw the message");
    assert_eq!(proxy.injected("*", "*"), 7, "{}", proxy.journal_text());
    assert!(
        proxy
            .journal()
            .iter()
            .all(|c| c.fault.is_none() || c.status.is_none()),
        "{}",
        proxy.journal_text()
    );

    // With the SDK's standard retries, a broken answer it reads itself is retried like a reset.
    let c = sdk(
        proxy.url(),
        RetryConfig::standard().with_initial_backoff(Duration::from_millis(5)),
    )
    .await;
    let before = proxy.calls("sqs", "ListQueues");
    proxy.inject(Rule::on("sqs", "ListQueues", Fault::TruncatedBody).first(1));
    proxy.inject(Rule::on("dynamodb", "ListTables", Fault::ResetMidBody).first(1));
    c.sqs.list_queues().send().await.expect("retried");
    c.ddb.list_tables().send().await.expect("retried");
    assert_eq!(
        proxy.calls("sqs", "ListQueues") - before,
        2,
        "{}",
        proxy.journal_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bodies_pass_byte_exact() {
    let w = World::start("fault-bytes").await;
    w.bucket("fp-bucket").await;
    let proxy = w.fault_proxy().await;
    let c = direct(proxy.url()).await;
    // A rule that never fires, to see what the SDK sent.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    proxy.inject(Rule::on("s3", "*", Fault::Throttling).when(move |r| {
        record.lock().unwrap().push((
            r.operation.clone(),
            r.header("content-encoding").map(str::to_owned),
            r.body_streamed,
            format!("{:?}", r.headers),
        ));
        false
    }));

    let one = random_bytes(5 * MIB + 3);
    c.s3.put_object()
        .bucket("fp-bucket")
        .key("one")
        .body(one.clone().into())
        .send()
        .await
        .unwrap();
    assert_eq!(w.get("fp-bucket", "one").await.as_deref(), Some(&one[..]));
    let back =
        c.s3.get_object()
            .bucket("fp-bucket")
            .key("one")
            .send()
            .await
            .unwrap();
    assert_eq!(
        md5_hex(&back.body.collect().await.unwrap().into_bytes()),
        md5_hex(&one)
    );

    // A body the SDK streams from a file: aws-chunked, its CRC32 in a trailer.
    let file = w.dir.join("upload.bin");
    let streamed = random_bytes(4 * MIB + 9);
    std::fs::write(&file, &streamed).unwrap();
    c.s3.put_object()
        .bucket("fp-bucket")
        .key("file")
        .body(
            aws_sdk_s3::primitives::ByteStream::from_path(&file)
                .await
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        w.get("fp-bucket", "file").await.map(|b| md5_hex(&b)),
        Some(md5_hex(&streamed))
    );

    let parts = random_bytes(11 * MIB + 7);
    let up =
        c.s3.create_multipart_upload()
            .bucket("fp-bucket")
            .key("multi")
            .send()
            .await
            .unwrap();
    let id = up.upload_id().unwrap();
    let mut done = vec![];
    for (i, chunk) in parts.chunks(5 * MIB).enumerate() {
        let n = i as i32 + 1;
        let p =
            c.s3.upload_part()
                .bucket("fp-bucket")
                .key("multi")
                .upload_id(id)
                .part_number(n)
                .body(chunk.to_vec().into())
                .send()
                .await
                .unwrap();
        done.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .e_tag(p.e_tag().unwrap())
                .build(),
        );
    }
    let listed =
        c.s3.list_multipart_uploads()
            .bucket("fp-bucket")
            .send()
            .await
            .unwrap();
    assert_eq!(listed.uploads().len(), 1);
    c.s3.complete_multipart_upload()
        .bucket("fp-bucket")
        .key("multi")
        .upload_id(id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        w.get("fp-bucket", "multi").await.map(|b| md5_hex(&b)),
        Some(md5_hex(&parts))
    );

    let calls = |op| proxy.calls("s3", op);
    assert_eq!(
        [
            calls("PutObject"),
            calls("GetObject"),
            calls("CreateMultipartUpload"),
            calls("UploadPart"),
            calls("ListMultipartUploads"),
            calls("CompleteMultipartUpload")
        ],
        [2, 1, 1, 3, 1, 1],
        "{}",
        proxy.journal_text()
    );
    assert_eq!(proxy.injected("*", "*"), 0);
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().any(|(op, enc, streamed, _)| op == "PutObject"
            && enc.as_deref() == Some("aws-chunked")
            && *streamed),
        "the file's PutObject went out aws-chunked and was streamed: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_the_call() {
    let w = World::start("fault-latency").await;
    let proxy = w.fault_proxy().await;
    let c = direct(proxy.url()).await;
    c.sqs.list_queues().send().await.unwrap();
    proxy.inject(
        Rule::on(
            "sqs",
            "ListQueues",
            Fault::Delay(Duration::from_millis(600)),
        )
        .first(1),
    );
    let t = Instant::now();
    c.sqs.list_queues().send().await.unwrap();
    let slow = t.elapsed();
    let t = Instant::now();
    c.sqs.list_queues().send().await.unwrap();
    let fast = t.elapsed();
    assert!(slow >= Duration::from_millis(600), "{slow:?}");
    assert!(fast < Duration::from_millis(500), "{fast:?}");
    assert_eq!(proxy.injected("sqs", "ListQueues"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canned_and_rewritten_answers() {
    let w = World::start("fault-canned").await;
    w.table("fp-table").await;
    let proxy = w.fault_proxy().await;
    let c = direct(proxy.url()).await;
    let describe = || c.ddb.describe_table().table_name("fp-table").send();
    use aws_sdk_dynamodb::types::TableStatus;

    // A table AWS is still deleting.
    proxy.inject(
        Rule::on(
            "dynamodb",
            "DescribeTable",
            Fault::respond_json(serde_json::json!({
                "Table": {"TableName": "fp-table", "TableStatus": "DELETING"}
            })),
        )
        .first(1),
    );
    let t = describe().await.unwrap().table.unwrap();
    assert_eq!(t.table_status(), Some(&TableStatus::Deleting));
    assert!(t.table_arn().is_none(), "canned: nothing of moto's");

    // moto's real answer, its status changed.
    proxy.inject(
        Rule::on(
            "dynamodb",
            "DescribeTable",
            Fault::rewrite(|_, resp| {
                let mut v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
                v["Table"]["TableStatus"] = "UPDATING".into();
                resp.body = v.to_string().into_bytes();
            }),
        )
        .first(1),
    );
    let t = describe().await.unwrap().table.unwrap();
    assert_eq!(t.table_status(), Some(&TableStatus::Updating));
    assert!(t.table_arn().is_some_and(|a| a.ends_with("table/fp-table")));
    let t = describe().await.unwrap().table.unwrap();
    assert_eq!(t.table_status(), Some(&TableStatus::Active));

    // Why the SQS error needs its x-amzn-query-error header: without it the SDK reports the JSON shape name,
    // and its typed error does not match.
    proxy.inject(
        Rule::on(
            "sqs",
            "CreateQueue",
            Fault::respond(
                400,
                &[],
                r#"{"__type":"com.amazonaws.sqs#QueueDeletedRecently","message":"wait"}"#,
            ),
        )
        .first(1),
    );
    let e = c
        .sqs
        .create_queue()
        .queue_name("fp-q")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("QueueDeletedRecently"));
    assert!(!e.as_service_error().unwrap().is_queue_deleted_recently());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_standard_retries_are_counted_per_attempt() {
    let w = World::start("fault-retry").await;
    w.bucket("fp-bucket").await;
    let proxy = w.fault_proxy().await;
    // The SDK's standard mode (3 attempts, the same retry classifiers), with a short backoff to keep this quick.
    let c = sdk(
        proxy.url(),
        RetryConfig::standard().with_initial_backoff(Duration::from_millis(5)),
    )
    .await;

    proxy.inject(Rule::on("dynamodb", "ListTables", Fault::Throttling).first(2));
    c.ddb.list_tables().send().await.expect("third attempt");
    assert_eq!(
        (
            proxy.calls("dynamodb", "ListTables"),
            proxy.injected("dynamodb", "ListTables")
        ),
        (3, 2)
    );

    proxy.inject(Rule::on("ec2", "DescribeVpcs", Fault::Throttling).first(1));
    proxy.inject(Rule::on("iam", "ListRoles", Fault::InternalError).first(1));
    proxy.inject(Rule::on("logs", "DescribeLogGroups", Fault::ResetBeforeForward).first(1));
    c.ec2.describe_vpcs().send().await.unwrap();
    c.iam.list_roles().send().await.unwrap();
    c.logs.describe_log_groups().send().await.unwrap();
    assert_eq!(
        [
            proxy.calls("ec2", "DescribeVpcs"),
            proxy.calls("iam", "ListRoles"),
            proxy.calls("logs", "DescribeLogGroups")
        ],
        [2, 2, 2]
    );

    // A streamed body is sent again on each attempt.
    let body = random_bytes(2 * MIB + 1);
    proxy.inject(Rule::on("s3", "PutObject", Fault::Throttling).first(2));
    c.s3.put_object()
        .bucket("fp-bucket")
        .key("retried")
        .body(body.clone().into())
        .send()
        .await
        .unwrap();
    assert_eq!(proxy.calls("s3", "PutObject"), 3);
    assert_eq!(w.get("fp-bucket", "retried").await, Some(body));

    // Three attempts, then the SDK gives up.
    proxy.inject(Rule::on("sts", "GetCallerIdentity", Fault::Throttling));
    let f = failure(c.sts.get_caller_identity().send().await);
    assert_eq!(f.code.as_deref(), Some("Throttling"));
    assert_eq!(proxy.calls("sts", "GetCallerIdentity"), 3);

    // Eventual consistency is not the SDK's business: one attempt, the caller must retry.
    proxy.inject(Rule::on(
        "sqs",
        "CreateQueue",
        Fault::queue_deleted_recently(),
    ));
    let f = failure(c.sqs.create_queue().queue_name("fp-q").send().await);
    assert_eq!(
        f.code.as_deref(),
        Some("AWS.SimpleQueueService.QueueDeletedRecently")
    );
    assert_eq!(proxy.calls("sqs", "CreateQueue"), 1);
}

fn transfer(name: &str) -> String {
    format!(
        r#"
resource "dth_s3_transfer" "t" {{
  name = "{name}"
  source {{
    bucket = "{name}-src"
  }}
  destination {{
    bucket = "{name}-dst"
  }}
  fleet {{
    image = "dth:test"
  }}
}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_goes_through_the_proxy() {
    let w = World::start("fault-tf").await;
    w.bucket("fptf-src").await;
    w.bucket("fptf-dst").await;
    let proxy = w.fault_proxy().await;
    let tf = Terraform::new_via(&w, "main", proxy.url());
    assert_eq!(tf.endpoint(), proxy.url());
    tf.write(&transfer("fptf"));
    tf.ok(&["init", "-input=false"]);

    // The provider's SDK retries a throttled CreateTable by itself.
    proxy.inject(Rule::on("dynamodb", "CreateTable", Fault::Throttling).first(1));
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    assert_eq!(
        proxy.calls("dynamodb", "CreateTable"),
        2,
        "{}",
        proxy.journal_text()
    );
    for service in [
        "sqs",
        "dynamodb",
        "iam",
        "ec2",
        "autoscaling",
        "cloudwatch",
        "logs",
    ] {
        assert!(
            proxy.calls(service, "*") > 0,
            "no {service} call went through the proxy"
        );
    }

    // Rules change between commands: an error the provider does not retry reaches the user with its code.
    let id = proxy.inject(Rule::on(
        "autoscaling",
        "DescribeAutoScalingGroups",
        Fault::error(
            403,
            "AccessDenied",
            "User is not authorized to perform: autoscaling:DescribeAutoScalingGroups",
        ),
    ));
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("AccessDenied"), "{out}");
    proxy.remove(id);
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "{out}");
    tf.ok(&["destroy", "-auto-approve", "-input=false"]);
    assert!(proxy.calls("sqs", "DeleteQueue") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_go_through_the_proxy() {
    let w = World::start("fault-bins").await;
    w.bucket("fpb-src").await;
    w.bucket("fpb-dst").await;
    for k in ["a", "b", "c"] {
        w.put("fpb-src", k, k.repeat(100).as_bytes()).await;
    }
    let q = w.queues("fpb-jobs", 5, 30).await;
    w.table("fpb-ledger").await;
    let proxy = w.fault_proxy().await;
    let cfg = w.config("fpb-src", "fpb-dst", &q, "fpb-ledger", proxy.config_patch());

    // Throttled once each, as S3 throttles a listing and a write: the SDK in the binaries retries.
    proxy.inject(Rule::on("s3", "ListObjectsV2", Fault::Throttling).first(1));
    proxy.inject(
        Rule::on("s3", "PutObject", Fault::Throttling)
            .when(|r| r.bucket() == Some("fpb-dst"))
            .first(1),
    );
    let found = w.run("finder", &cfg, &["--json"]);
    assert!(found.status.success(), "{}", stderr(&found));
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "1"]);
    let status = wait(&mut worker, Duration::from_secs(60));
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    for k in ["a", "b", "c"] {
        assert_eq!(w.get("fpb-dst", k).await, Some(k.repeat(100).into_bytes()));
    }
    assert_eq!(proxy.injected("s3", "*"), 2, "{}", proxy.journal_text());
    assert_eq!(
        proxy.calls("s3", "PutObject"),
        4,
        "{}",
        proxy.journal_text()
    );
    assert!(proxy.calls("sqs", "ReceiveMessage") > 0 && proxy.calls("dynamodb", "*") > 0);
}
