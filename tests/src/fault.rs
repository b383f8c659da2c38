//! A fault-injecting AWS proxy: an HTTP/1.1 server in front of moto that forwards every request unchanged
//! unless a [`Rule`] matches it, and then answers the way AWS answers when it is throttling, briefly
//! inconsistent or broken.
//!
//! # Why
//!
//! AWS is eventually consistent and throttles; moto is neither. The provider (and the finder and worker) must
//! retry AWS's documented transient errors — `QueueDeletedRecently` after a queue was deleted,
//! `ResourceInUseException` while a table is still being created or deleted, `InvalidParameterValue` /
//! `ValidationError` while a new instance profile has not yet reached EC2 and Auto Scaling, throttling, 5xx —
//! and must survive a connection that fails after the request took effect. This proxy makes moto answer
//! exactly so, per AWS operation, for the real AWS SDK for Rust and the real terraform CLI.
//!
//! # How it works
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` on its own thread with its own tokio runtime, so it keeps
//! answering while the test blocks its own thread on a `terraform` child process. Every request is identified
//! as `(service, operation)`:
//! - the service is the SigV4 credential scope's (`Credential=…/<region>/<service>/aws4_request`; CloudWatch
//!   signs as `monitoring`, and `cloudwatch` is accepted as an alias wherever a service is named);
//! - the operation comes from `X-Amz-Target` (AWS JSON: DynamoDB, SQS, CloudWatch Logs, Secrets Manager), from
//!   `Action=` (AWS Query: IAM, EC2, Auto Scaling, SNS, STS, CloudWatch 1.99), from the Smithy RPC v2 CBOR path
//!   (`/service/<Service>/operation/<Op>`, newer CloudWatch SDKs), or for S3 from the method, the path and the
//!   query, named as the SDK names them (`x-id=` when the SDK sends it, else `?uploads` → `CreateMultipartUpload`,
//!   `?notification` → `Put`/`GetBucketNotificationConfiguration`, …).
//!
//! In front of a container registry (upstream a docker-registry instead of moto), a request for `/v2/…` (or a
//! token service's `/token`) is service `registry`, its operation named by [`registry_operation`]
//! (`GetBlob`, `PatchUpload`, `PutManifest`, …), and its errors rendered as the distribution API renders them
//! (`{"errors": [{"code": "UNKNOWN", …}]}`; throttling is `429 TOOMANYREQUESTS`). [`Fault::Reply`] answers
//! from the request itself: what a token service or an auth check needs.
//!
//! Bodies of every service but S3 are read whole, so that a rule can look into them (queue or table names);
//! S3 bodies above 1 MiB are streamed through as they come, with their framing (`Content-Length`, or
//! `Transfer-Encoding: chunked`), `aws-chunked` uploads included — nothing is buffered whole, so objects of any
//! size pass byte-exact. Each connection carries one request and is answered with `Connection: close` (the
//! SDK's pooled hyper client then opens a fresh connection for the next request).
//!
//! # Faults
//!
//! - [`Fault::Error`] — an AWS error response rendered in the request's protocol (Query XML, EC2 XML, AWS JSON
//!   with `__type` and, for SQS, the `x-amzn-query-error` header, S3 REST XML, RPC v2 CBOR), so that
//!   `ProvideErrorMetadata::code()` returns what it returns against AWS. Named constructors for the documented
//!   ones ([`Fault::queue_deleted_recently`], [`Fault::resource_in_use`],
//!   [`Fault::ec2_invalid_instance_profile`], [`Fault::autoscaling_invalid_instance_profile`],
//!   [`Fault::provisioned_throughput_exceeded`]); [`Fault::Throttling`], [`Fault::InternalError`] and
//!   [`Fault::ServiceUnavailable`] pick each service's own code and status (S3 `SlowDown` 503, EC2
//!   `RequestLimitExceeded` 503, DynamoDB `ThrottlingException` 400, Query `Throttling` 400, …).
//! - [`Fault::Translate`] — the request altered before moto sees it, and moto's answer after: a store that
//!   speaks a dialect (its own ETags, accepted back in `If-Match`).
//! - [`Fault::Respond`] — a canned answer (DescribeTable saying `DELETING`); [`Fault::Rewrite`] — moto's real
//!   answer, altered.
//! - [`Fault::ResetBeforeForward`] — the connection is reset (RST) and moto never sees the request;
//!   [`Fault::ResetAfterForward`] — moto executes the request, then the client's connection is reset: the call
//!   took effect but the caller sees a transport failure. [`Fault::Delay`] — latency before forwarding.
//! - Broken bodies. [`Fault::TruncatedBody`] — moto executes the request; its answer goes out with the whole
//!   body's `Content-Length` but only the first half of the body, then the connection is closed (FIN): the
//!   client's read ends early (an S3 `GetObject` whose `send()` succeeded fails while its body is read).
//!   [`Fault::ResetMidBody`] — the same half answer, then a reset (RST). An answer without a body (a
//!   `PutObject`'s, any HEAD's) is cut inside its head instead. [`Fault::ResetMidRequest`] — the proxy takes
//!   part of the request's body, then resets the connection without forwarding: an upload broken off midway,
//!   which moto never sees. Only bodies streamed through (S3 bodies above 1 MiB) can be cut; a body read whole
//!   (every other one) was sent whole before the rule was decided, so for it this is a reset before forwarding.
//!   The journal records all three with no status: the client got no whole answer.
//!
//! A rule applies to the first N matching calls ([`Rule::first`]), to a deterministic share of them
//! ([`Rule::share`], seeded), or to all of them until removed ([`Rule::always`], the default).
//!
//! # In a terraform test
//!
//! ```no_run
//! # async fn example() {
//! use dth_tests::fault::{Fault, FaultProxy, Rule};
//! use dth_tests::terraform::Terraform;
//! use dth_tests::World;
//!
//! let world = World::start("my-test").await;
//! let proxy = FaultProxy::start(&world.endpoint).await;
//! // Every `endpoints {}` entry of the provider block points at the proxy.
//! let tf = Terraform::new_via(&world, "main", proxy.url());
//! tf.write("# resources …");
//! tf.ok(&["init", "-input=false"]);
//! // The first CreateQueue of the job queue answers as AWS does within 60 s of deleting a queue of that name;
//! // a provider that retries it (as terraform-provider-aws does) applies, with one more CreateQueue.
//! proxy.inject(
//!     Rule::on("sqs", "CreateQueue", Fault::queue_deleted_recently())
//!         .mentioning("dth-my-transfer-jobs")
//!         .first(1),
//! );
//! tf.ok(&["apply", "-auto-approve", "-input=false"]);
//! assert_eq!(proxy.injected("sqs", "CreateQueue"), 1, "{}", proxy.journal_text());
//! // Rules change between terraform commands; `clear` lets everything through again.
//! proxy.clear();
//! # }
//! ```
//!
//! The test's runtime must not matter: the proxy has its own thread, so `#[tokio::test]` of either flavour works,
//! and blocking calls (`std::process::Command`) in the test do not stall it. For the finder and the worker,
//! [`FaultProxy::config_patch`] is the job-config patch that points every endpoint at the proxy.
//!
//! The AWS SDK retries throttling, 5xx and transport errors by itself (standard mode, 3 attempts): the proxy
//! counts every attempt ([`FaultProxy::calls`]), so a test either turns the SDK's retries off or counts them.

mod errors;
mod identify;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::http::Response;
pub use identify::{registry_operation, s3_operation};

/// The wire protocol of a request, which decides how an error is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// S3's REST XML.
    RestXml,
    /// AWS Query (`Action=` in a form body): IAM, Auto Scaling, SNS, STS, CloudWatch up to SDK 1.99.
    Query,
    /// EC2's dialect of Query (`<Response><Errors><Error>` errors).
    Ec2Query,
    /// AWS JSON 1.0 or 1.1 (`X-Amz-Target`): DynamoDB and SQS (1.0), CloudWatch Logs and Secrets Manager (1.1).
    Json { version_1_1: bool },
    /// Smithy RPC v2 CBOR (`/service/<Service>/operation/<Op>`): CloudWatch SDKs after 1.99.
    RpcV2Cbor,
    /// The distribution API of a container registry (`/v2/…`): errors are `{"errors": [{"code", "message"}]}`.
    Registry,
    /// Neither signed nor recognisable (moto's own `/moto-api`).
    Unknown,
}

/// A request as the proxy saw it, for rule predicates and rewriters.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked, when it was read whole: always, except S3 bodies above 1 MiB or chunked, which
    /// are streamed (`body_streamed`) and are empty here.
    pub body: Vec<u8>,
    pub body_streamed: bool,
    /// SigV4 service name (`sqs`, `dynamodb`, `monitoring`, …), or `unknown`.
    pub service: String,
    /// Operation as the SDK names it (`CreateQueue`, `PutObject`, …), or `unknown`.
    pub operation: String,
    pub protocol: Protocol,
}

impl Request {
    /// A header's value (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query-string parameter, decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        identify::query_pairs(&self.target)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// A parameter of an AWS Query request (form body or query string), e.g. `RoleName`.
    pub fn param(&self, name: &str) -> Option<String> {
        crate::http::form(&self.body)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .or_else(|| self.query(name))
    }

    /// A top-level string field of a JSON request body, e.g. `TableName` or `QueueUrl`.
    pub fn json_field(&self, name: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v.get(name)?.as_str().map(str::to_owned)
    }

    /// For S3: the bucket of a path-style request.
    pub fn bucket(&self) -> Option<&str> {
        let p = self.path().trim_start_matches('/');
        let b = p.split('/').next().unwrap_or("");
        (!b.is_empty()).then_some(b)
    }

    /// For S3: the key of a path-style request (still percent-encoded).
    pub fn key(&self) -> Option<&str> {
        let p = self.path().trim_start_matches('/');
        p.split_once('/').map(|(_, k)| k).filter(|k| !k.is_empty())
    }

    /// Whether `needle` appears in the (percent-decoded) target or in the body read whole.
    pub fn mentions(&self, needle: &str) -> bool {
        let target = percent_encoding::percent_decode_str(&self.target).decode_utf8_lossy();
        target.contains(needle) || String::from_utf8_lossy(&self.body).contains(needle)
    }
}

/// What to change of a request before moto sees it.
pub type RequestRewriter = Arc<dyn Fn(&mut Request) + Send + Sync>;

/// What to change of moto's real answer.
pub type Rewriter = Arc<dyn Fn(&Request, &mut Response) + Send + Sync>;

/// An answer made from a request.
pub type Replier = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A predicate on requests.
pub type Predicate = Arc<dyn Fn(&Request) -> bool + Send + Sync>;

/// What the proxy does with a matching request instead of (or besides) forwarding it.
#[derive(Clone)]
pub enum Fault {
    /// An AWS error rendered in the request's protocol. `code` is what `ProvideErrorMetadata::code()` returns
    /// (for SQS the query-compatible code, e.g. `AWS.SimpleQueueService.QueueDeletedRecently`); `status` is the
    /// HTTP status AWS answers it with. HEAD requests get no body (as from S3).
    Error {
        status: u16,
        code: String,
        message: String,
    },
    /// The service's own throttling error: S3 `SlowDown` 503, EC2 `RequestLimitExceeded` 503, DynamoDB
    /// `ThrottlingException` 400, SQS `RequestThrottled` 400, Logs and Secrets Manager `ThrottlingException`
    /// 400, the Query services (IAM, Auto Scaling, SNS, STS, CloudWatch) `Throttling` 400. Sources in
    /// `fault/errors.rs`.
    Throttling,
    /// The service's own 500 error: S3 and EC2 `InternalError`, DynamoDB `InternalServerError`, Secrets Manager
    /// `InternalServiceError`, Logs `ServiceUnavailableException`, the others `InternalFailure`.
    InternalError,
    /// The service's own 503 error: EC2 `Unavailable`, the others `ServiceUnavailable`.
    ServiceUnavailable,
    /// A canned answer; without a `Content-Type` header, the protocol's is added.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Forward to moto, then alter its answer before the client sees it.
    Rewrite(Rewriter),
    /// Alter the request before forwarding it (a header, the target), then moto's answer before the client
    /// sees it: a store that speaks a dialect (another provider's ETags, accepted back in `If-Match`).
    Translate(RequestRewriter, Rewriter),
    /// An answer computed from the request, without forwarding it (a token service, an auth check).
    Reply(Replier),
    /// Reset the connection (RST) without forwarding: moto never sees the request.
    ResetBeforeForward,
    /// Forward to moto and read its whole answer, then reset the client's connection: the request took effect,
    /// the client sees a transport error.
    ResetAfterForward,
    /// Wait, then forward.
    Delay(Duration),
    /// Forward to moto, then send its answer's head (with the whole body's `Content-Length`) and the first half
    /// of its body, and close the connection: the request took effect, the client's body ends early. An answer
    /// without a body is cut inside its head.
    TruncatedBody,
    /// Forward to moto, then send its answer's head and the first half of its body, and reset the connection
    /// (RST): the request took effect, the client's read fails mid-body. An answer without a body is cut inside
    /// its head.
    ResetMidBody,
    /// Take part of the request's body, then reset the connection (RST) without forwarding: moto never sees the
    /// request. A body the proxy reads whole (all but S3 bodies above 1 MiB) has been taken whole by then.
    ResetMidRequest,
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

impl Fault {
    /// A generic AWS error.
    pub fn error(status: u16, code: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault::Error {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// SQS `CreateQueue` within 60 seconds of deleting a queue of the same name: 400,
    /// `AWS.SimpleQueueService.QueueDeletedRecently` (what the SDK's `code()` returns; its JSON `__type` is
    /// `QueueDeletedRecently`).
    ///
    /// The message is the one terraform-provider-aws matched on (`internal/service/sqs`, before it switched to
    /// `tfresource.RetryWhenAWSErrCodeEquals(…, errCodeQueueDeletedRecently)`); the code and the
    /// `x-amzn-query-error: AWS.SimpleQueueService.QueueDeletedRecently;Sender` header are those of aws-sdk-go's
    /// `awsquerycompatible` protocol test and of aws-sdk-sqs 1.119's error parser (the header decides the code).
    pub fn queue_deleted_recently() -> Fault {
        Fault::error(
            400,
            "AWS.SimpleQueueService.QueueDeletedRecently",
            "You must wait 60 seconds after deleting a queue before you can create another with the same name.",
        )
    }

    /// DynamoDB `ResourceInUseException` (400): the table is being created, updated or deleted, or already
    /// exists. Typical messages: `Attempt to change a resource which is still in use: Table is being created:
    /// <name>`, `Table already exists: <name>` (DynamoDB Developer Guide, "Error handling": "The resource which
    /// you are attempting to change is in use.").
    pub fn resource_in_use(message: impl Into<String>) -> Fault {
        Fault::error(400, "ResourceInUseException", message)
    }

    /// DynamoDB `ProvisionedThroughputExceededException` (400), message as in the DynamoDB Developer Guide.
    pub fn provisioned_throughput_exceeded() -> Fault {
        Fault::error(
            400,
            "ProvisionedThroughputExceededException",
            "You exceeded your maximum allowed provisioned throughput for a table or for one or more global \
             secondary indexes.",
        )
    }

    /// EC2 (`RunInstances`, `CreateLaunchTemplate`, `AssociateIamInstanceProfile`, …) with an instance profile
    /// IAM has not yet propagated: 400 `InvalidParameterValue`, `Value (<name>) for parameter
    /// iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name`. terraform-provider-aws retries it
    /// on `errCodeInvalidParameterValue` + "Invalid IAM Instance Profile" (`ec2_instance.go`) and quotes the
    /// message in `iam/instance_profile.go`.
    pub fn ec2_invalid_instance_profile(profile: &str) -> Fault {
        Fault::error(
            400,
            "InvalidParameterValue",
            format!(
                "Value ({profile}) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
            ),
        )
    }

    /// Auto Scaling `CreateAutoScalingGroup` (and `UpdateAutoScalingGroup`) with a launch template whose instance
    /// profile IAM has not yet propagated: 400 `ValidationError`, `You must use a valid fully-formed launch
    /// template. Value (<name>) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile
    /// name` — quoted in terraform-provider-aws `autoscaling/group.go`, which retries
    /// `errCodeValidationError` + "Invalid IAM Instance Profile".
    pub fn autoscaling_invalid_instance_profile(profile: &str) -> Fault {
        Fault::error(
            400,
            "ValidationError",
            format!(
                "You must use a valid fully-formed launch template. Value ({profile}) for parameter \
                 iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
            ),
        )
    }

    /// A canned answer.
    pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Fault {
        Fault::Respond {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.into(),
        }
    }

    /// A canned 200 JSON answer (content type from the request's protocol).
    pub fn respond_json(value: serde_json::Value) -> Fault {
        Fault::respond(200, &[], value.to_string())
    }

    /// Answer with what `f` makes of the request; the upstream never sees it.
    pub fn reply(f: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Fault {
        Fault::Reply(Arc::new(f))
    }

    /// SIGKILL the process whose pid `pid` holds (set once it is spawned) as its request arrives, and answer
    /// 500 to a caller that is no more: a crash at exactly that point of its work.
    pub fn kill_caller(pid: Arc<std::sync::atomic::AtomicU32>) -> Fault {
        Fault::reply(move |_| {
            let raw = pid.load(std::sync::atomic::Ordering::SeqCst) as i32;
            if let Some(p) = rustix::process::Pid::from_raw(raw) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            Response::text(500, "killed")
        })
    }

    /// Alter moto's answer.
    pub fn rewrite(f: impl Fn(&Request, &mut Response) + Send + Sync + 'static) -> Fault {
        Fault::Rewrite(Arc::new(f))
    }

    /// Alter the request, forward it, then alter the answer (see [`Fault::Translate`]).
    pub fn translate(
        request: impl Fn(&mut Request) + Send + Sync + 'static,
        response: impl Fn(&Request, &mut Response) + Send + Sync + 'static,
    ) -> Fault {
        Fault::Translate(Arc::new(request), Arc::new(response))
    }

    /// A short name for the journal.
    pub fn label(&self) -> String {
        match self {
            Fault::Error { status, code, .. } => format!("{code} ({status})"),
            Fault::Throttling => "Throttling".into(),
            Fault::InternalError => "InternalError".into(),
            Fault::ServiceUnavailable => "ServiceUnavailable".into(),
            Fault::Respond { status, .. } => format!("Respond({status})"),
            Fault::Rewrite(_) => "Rewrite".into(),
            Fault::Translate(..) => "Translate".into(),
            Fault::Reply(_) => "Reply".into(),
            Fault::ResetBeforeForward => "ResetBeforeForward".into(),
            Fault::ResetAfterForward => "ResetAfterForward".into(),
            Fault::Delay(d) => format!("Delay({d:?})"),
            Fault::TruncatedBody => "TruncatedBody".into(),
            Fault::ResetMidBody => "ResetMidBody".into(),
            Fault::ResetMidRequest => "ResetMidRequest".into(),
        }
    }
}

/// How many of the matching calls a rule faults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Times {
    /// The first N matching calls, then none (the rule stays, spent).
    First(usize),
    /// Each matching call with probability `ratio`, drawn from a SplitMix64 sequence seeded with `seed`: for
    /// calls that arrive one after another the faulted ones are the same on every run.
    Share { ratio: f64, seed: u64 },
    /// Every matching call until the rule is removed.
    Always,
}

/// Which requests to fault, how many of them, and how.
#[derive(Clone)]
pub struct Rule {
    service: Option<String>,
    operation: Option<String>,
    when: Option<Predicate>,
    times: Times,
    fault: Fault,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("service", &self.service)
            .field("operation", &self.operation)
            .field("when", &self.when.as_ref().map(|_| "…"))
            .field("times", &self.times)
            .field("fault", &self.fault)
            .finish()
    }
}

impl Rule {
    /// A rule matching every request, always.
    pub fn new(fault: Fault) -> Rule {
        Rule {
            service: None,
            operation: None,
            when: None,
            times: Times::Always,
            fault,
        }
    }

    /// A rule for one operation of one service (`"*"` for any).
    pub fn on(service: &str, operation: &str, fault: Fault) -> Rule {
        Rule::new(fault).service(service).operation(operation)
    }

    pub fn service(mut self, service: &str) -> Rule {
        self.service = (service != "*").then(|| canonical_service(service).to_owned());
        self
    }

    pub fn operation(mut self, operation: &str) -> Rule {
        self.operation = (operation != "*").then(|| operation.to_owned());
        self
    }

    /// Only requests for which `f` holds (called with the proxy's state locked: it must not call the proxy).
    pub fn when(mut self, f: impl Fn(&Request) -> bool + Send + Sync + 'static) -> Rule {
        self.when = Some(Arc::new(f));
        self
    }

    /// Only requests that mention `needle` (a queue, table, role or bucket name) in their target or body.
    pub fn mentioning(self, needle: &str) -> Rule {
        let needle = needle.to_owned();
        self.when(move |r| r.mentions(&needle))
    }

    pub fn first(mut self, n: usize) -> Rule {
        self.times = Times::First(n);
        self
    }

    /// About `ratio` (0..=1) of the matching calls, deterministically for a given `seed`.
    pub fn share(mut self, ratio: f64, seed: u64) -> Rule {
        self.times = Times::Share { ratio, seed };
        self
    }

    pub fn always(mut self) -> Rule {
        self.times = Times::Always;
        self
    }

    fn matches(&self, r: &Request) -> bool {
        self.service
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(&r.service))
            && self
                .operation
                .as_deref()
                .is_none_or(|o| o.eq_ignore_ascii_case(&r.operation))
            && self.when.as_ref().is_none_or(|f| f(r))
    }
}

/// `cloudwatch` signs (and is counted) as `monitoring`.
fn canonical_service(s: &str) -> &str {
    if s.eq_ignore_ascii_case("cloudwatch") {
        "monitoring"
    } else {
        s
    }
}

/// Handle of an injected rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

/// One request, as the journal keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub service: String,
    pub operation: String,
    /// The status the client got; `None` when its connection was reset.
    pub status: Option<u16>,
    /// The fault applied, if any ([`Fault::label`]).
    pub fault: Option<String>,
    /// What the request was about, to tell calls of one operation apart: the body of an AWS JSON request
    /// (DynamoDB's item keys and update expressions, SQS's queue and receipt) with every string longer than
    /// [`SUBJECT_STRING_CHARS`] cut short, else the method and target.
    pub subject: String,
}

/// The longest string value a [`Call::subject`] keeps whole.
pub const SUBJECT_STRING_CHARS: usize = 200;

impl Request {
    /// This request as [`Call::subject`] keeps it.
    fn subject(&self) -> String {
        fn cut(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) if s.chars().count() > SUBJECT_STRING_CHARS => {
                    let n = s.chars().count();
                    *s = format!(
                        "{}…({n} chars)",
                        s.chars().take(SUBJECT_STRING_CHARS).collect::<String>()
                    );
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(cut),
                serde_json::Value::Object(o) => o.values_mut().for_each(cut),
                _ => {}
            }
        }
        match self.protocol {
            Protocol::Json { .. } => {
                match serde_json::from_slice::<serde_json::Value>(&self.body) {
                    Ok(mut v) => {
                        cut(&mut v);
                        v.to_string()
                    }
                    Err(_) => String::from_utf8_lossy(&self.body)
                        .chars()
                        .take(SUBJECT_STRING_CHARS)
                        .collect(),
                }
            }
            _ => format!("{} {}", self.method, self.target),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} → ", self.service, self.operation)?;
        match self.status {
            Some(s) => write!(f, "{s}")?,
            None => f.write_str("reset")?,
        }
        if let Some(fault) = &self.fault {
            write!(f, " [{fault}]")?;
        }
        Ok(())
    }
}

/// SplitMix64: a tiny generator whose sequence for a seed is fixed by this file, not by a crate's version.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Active {
    id: RuleId,
    rule: Rule,
    fired: usize,
    rng: SplitMix64,
}

impl Active {
    fn fires(&mut self) -> bool {
        let fire = match self.rule.times {
            Times::First(n) => self.fired < n,
            Times::Share { ratio, .. } => self.rng.next_f64() < ratio,
            Times::Always => true,
        };
        if fire {
            self.fired += 1;
        }
        fire
    }
}

#[derive(Default)]
struct State {
    rules: Vec<Active>,
    next_id: u64,
    calls: HashMap<(String, String), usize>,
    injected: HashMap<(String, String), usize>,
    journal: Vec<Call>,
}

struct Shared {
    upstream: String,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking predicate must not take every later request down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count the call and pick the fault of the first rule that matches and fires.
    fn decide(&self, r: &Request) -> Option<Fault> {
        let mut st = self.state();
        let key = (r.service.clone(), r.operation.clone());
        *st.calls.entry(key.clone()).or_default() += 1;
        let fault = st
            .rules
            .iter_mut()
            .find_map(|a| (a.rule.matches(r) && a.fires()).then(|| a.rule.fault.clone()));
        if fault.is_some() {
            *st.injected.entry(key).or_default() += 1;
        }
        fault
    }

    fn record(&self, call: Call) {
        tracing::debug!("fault proxy: {call}");
        self.state().journal.push(call);
    }
}

/// The proxy; it stops (and its thread ends) when dropped.
pub struct FaultProxy {
    shared: Arc<Shared>,
    url: String,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("url", &self.url)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

impl FaultProxy {
    /// Listen on 127.0.0.1 (a free port) and forward to `upstream` (`http://127.0.0.1:PORT`, moto).
    pub async fn start(upstream: &str) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream: upstream
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            state: Mutex::new(State::default()),
        });
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("fault-proxy".into())
                // Unoptimised builds keep large futures on the stack while they are built.
                .stack_size(8 * 1024 * 1024)
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("fault proxy runtime");
                    rt.block_on(async move {
                        let listener = TcpListener::bind("127.0.0.1:0")
                            .await
                            .expect("fault proxy: binding 127.0.0.1:0");
                        let _ = tx.send(listener.local_addr().expect("local address"));
                        loop {
                            let (stream, _) = tokio::select! {
                                _ = stop.cancelled() => return,
                                accepted = listener.accept() => match accepted {
                                    Ok(a) => a,
                                    Err(e) => {
                                        tracing::warn!("fault proxy accept: {e}");
                                        continue;
                                    }
                                },
                            };
                            let shared = shared.clone();
                            tokio::spawn(async move {
                                if let Err(e) = wire::serve(shared, stream).await {
                                    tracing::debug!("fault proxy connection: {e:#}");
                                }
                            });
                        }
                    });
                })
                .expect("starting the fault proxy thread")
        };
        let addr = rx.await.expect("the fault proxy did not start");
        FaultProxy {
            shared,
            url: format!("http://{addr}"),
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for every endpoint of the provider block or the job config.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Correct two answers in which moto 5.2's S3 differs from S3's, so that a client behind this proxy sees what
    /// S3 sends; rules added after those already injected, so that a fault decided first still applies:
    /// - `UploadPart`, `UploadPartCopy` and `CompleteMultipartUpload` of an upload that no longer exists
    ///   (completed or aborted): moto fails with a Python `KeyError` — 500 and an HTML page — where S3 answers
    ///   404 `NoSuchUpload`. A 500 without an S3 error document on these operations becomes that 404.
    /// - `ListParts`: moto's document is rooted at `ListPartsResponse`, S3's (and the SDK's parser's) at
    ///   `ListPartsResult`.
    ///
    /// The journal labels these calls `Rewrite`, whether or not the answer needed it.
    pub fn answer_s3_as_aws(&self) {
        for op in ["UploadPart", "UploadPartCopy", "CompleteMultipartUpload"] {
            self.inject(Rule::on(
                "s3",
                op,
                Fault::rewrite(|req, res| {
                    if res.status == 500 && !String::from_utf8_lossy(&res.body).contains("<Error>") {
                        let upload = req.query("uploadId").unwrap_or_default();
                        *res = errors::render(
                            req,
                            &errors::AwsError {
                                status: 404,
                                code: "NoSuchUpload".into(),
                                message: format!(
                                    "The specified upload does not exist. The upload ID may be invalid, or the \
                                     upload may have been aborted or completed. ({upload})"
                                ),
                            },
                        );
                    }
                }),
            ));
        }
        self.inject(Rule::on(
            "s3",
            "ListParts",
            Fault::rewrite(|_, res| {
                if res.status == 200 {
                    let body = String::from_utf8_lossy(&res.body)
                        .replace("<ListPartsResponse", "<ListPartsResult")
                        .replace("</ListPartsResponse>", "</ListPartsResult>");
                    res.body = body.into_bytes();
                }
            }),
        ));
    }

    /// The job-config patch (for [`crate::World::config`]) that sends the finder's and the worker's every AWS
    /// call through this proxy.
    pub fn config_patch(&self) -> serde_json::Value {
        let u = &self.url;
        serde_json::json!({
            "source": {"endpoint": u},
            "destination": {"endpoint": u},
            "aws": {"endpoints": {"sqs": u, "dynamodb": u, "secretsmanager": u, "s3": u, "autoscaling": u}}
        })
    }

    /// Add a rule after the existing ones (the first rule that matches and fires decides).
    pub fn inject(&self, rule: Rule) -> RuleId {
        self.add(rule, false)
    }

    /// Like [`FaultProxy::inject`], but ahead of every rule already there (the first rule that matches and
    /// fires decides): to override, for a while, a standing rule such as [`FaultProxy::answer_s3_as_aws`]'s.
    pub fn inject_first(&self, rule: Rule) -> RuleId {
        self.add(rule, true)
    }

    fn add(&self, rule: Rule, first: bool) -> RuleId {
        let mut st = self.shared.state();
        st.next_id += 1;
        let id = RuleId(st.next_id);
        let seed = match rule.times {
            Times::Share { seed, .. } => seed,
            _ => 0,
        };
        let active = Active {
            id,
            rule,
            fired: 0,
            rng: SplitMix64(seed),
        };
        if first {
            st.rules.insert(0, active);
        } else {
            st.rules.push(active);
        }
        id
    }

    pub fn remove(&self, id: RuleId) {
        self.shared.state().rules.retain(|a| a.id != id);
    }

    /// Remove every rule: everything passes through again. Counters and journal stay.
    pub fn clear(&self) {
        self.shared.state().rules.clear();
    }

    /// How many times a rule has fired.
    pub fn fired(&self, id: RuleId) -> usize {
        self.shared
            .state()
            .rules
            .iter()
            .find(|a| a.id == id)
            .map_or(0, |a| a.fired)
    }

    fn count(map: &HashMap<(String, String), usize>, service: &str, operation: &str) -> usize {
        let service = canonical_service(service);
        map.iter()
            .filter(|((s, o), _)| {
                (service == "*" || s.eq_ignore_ascii_case(service))
                    && (operation == "*" || o.eq_ignore_ascii_case(operation))
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests for `(service, operation)` that arrived (every SDK retry attempt counts); `"*"` for any.
    pub fn calls(&self, service: &str, operation: &str) -> usize {
        Self::count(&self.shared.state().calls, service, operation)
    }

    /// Of those, how many were faulted.
    pub fn injected(&self, service: &str, operation: &str) -> usize {
        Self::count(&self.shared.state().injected, service, operation)
    }

    /// Every finished request in order of completion.
    pub fn journal(&self) -> Vec<Call> {
        self.shared.state().journal.clone()
    }

    /// The journal, one call a line, for assertion messages.
    pub fn journal_text(&self) -> String {
        self.journal()
            .iter()
            .map(|c| format!("{c}\n"))
            .collect::<String>()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_the_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut r = SplitMix64(0);
        r.next_f64();
        assert_eq!(r.0, 0x9e37_79b9_7f4a_7c15);
        let mut z = SplitMix64(0);
        let first = z.next_f64();
        assert_eq!(
            (first * (1u64 << 53) as f64) as u64,
            0xe220_a839_7b1d_cdaf >> 11
        );
    }

    #[test]
    fn rules_match_service_aliases_operations_and_predicates() {
        let req = Request {
            method: "POST".into(),
            target: "/".into(),
            headers: vec![],
            body: br#"{"TableName":"t1"}"#.to_vec(),
            body_streamed: false,
            service: "monitoring".into(),
            operation: "PutMetricAlarm".into(),
            protocol: Protocol::Query,
        };
        assert!(Rule::on("cloudwatch", "PutMetricAlarm", Fault::Throttling).matches(&req));
        assert!(Rule::on("*", "putmetricalarm", Fault::Throttling).matches(&req));
        assert!(!Rule::on("sqs", "*", Fault::Throttling).matches(&req));
        assert!(Rule::new(Fault::Throttling).mentioning("t1").matches(&req));
        assert!(!Rule::new(Fault::Throttling)
            .when(|r| r.json_field("TableName").as_deref() == Some("t2"))
            .matches(&req));
    }
}
