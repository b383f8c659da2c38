//! AWS error responses, per protocol, and each service's own throttling, 500 and 503 errors.
//!
//! Wire formats (each checked against the parser of the SDK crate in Cargo.lock, and by
//! `tests/tests/fault_proxy.rs` through real clients):
//! - AWS Query (IAM, Auto Scaling, SNS, STS, CloudWatch ≤ 1.99): `<ErrorResponse><Error><Type>Sender</Type>
//!   <Code>…</Code><Message>…</Message></Error><RequestId>…</RequestId></ErrorResponse>`, `text/xml` — the
//!   SDKs' `rest_xml_wrapped_errors`; the same document IAM sends (e.g. `Throttling` / `Rate exceeded`, 400).
//! - EC2: `<Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors><RequestID>…</RequestID>
//!   </Response>` — aws-sdk-ec2's `ec2_query_errors`.
//! - AWS JSON: `{"__type": "<namespace>#<Shape>", "message": …}` with the request's
//!   `application/x-amz-json-1.x` — `json_errors::parse_error_metadata` (the code is what follows `#`); DynamoDB's
//!   namespace as in the DynamoDB Developer Guide's example (`com.amazonaws.dynamodb.v20120810#…`). SQS is
//!   `awsQueryCompatible`: the `x-amzn-query-error: <code>;<Sender|Receiver>` header decides the code
//!   (aws-sdk-sqs 1.119 `parse_http_error_metadata`), so `code()` is `AWS.SimpleQueueService.QueueDeletedRecently`
//!   and the body's `__type` is the shape `QueueDeletedRecently` (aws-sdk-go's `awsquerycompatible` test).
//! - S3 REST XML: `<Error><Code>…</Code><Message>…</Message><RequestId>…</RequestId><HostId>…</HostId></Error>`,
//!   no body for HEAD (aws-sdk-s3 then has no code, except `NotFound` for a 404).
//! - RPC v2 CBOR: a CBOR map `{"__type": …, "message": …}`, `smithy-protocol: rpc-v2-cbor`, plus
//!   `x-amzn-query-error` (CloudWatch is query-compatible).

use super::{Fault, Protocol, Request, Response};

/// An error to render: HTTP status, code as the SDK reports it, message.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AwsError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

fn err(status: u16, code: &str, message: &str) -> AwsError {
    AwsError {
        status,
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

/// The service's throttling error.
///
/// - S3: `SlowDown`, 503, "Please reduce your request rate." (S3 API Reference, error codes).
/// - EC2: `RequestLimitExceeded`, 503, "Request limit exceeded." (as EC2 answers it: "Status Code: 503; Error
///   Code: RequestLimitExceeded", cloudfoundry/bosh-aws-cpi-release#61, jclouds#1214).
/// - DynamoDB: `ThrottlingException`, 400, "Rate of requests exceeds the allowed throughput." (Developer Guide).
/// - SQS: `RequestThrottled`, 400 (the SQS API Reference's error for every action; aws-sdk-sqs maps the code
///   `RequestThrottled`).
/// - Other AWS JSON services (Logs, Secrets Manager): `ThrottlingException`, 400, "Rate exceeded".
/// - AWS Query services (IAM, Auto Scaling, SNS, STS, CloudWatch): `Throttling`, 400, "Rate exceeded" (the
///   common error; IAM's own answer in legion-platform/legion#807, CloudWatch's in hortonworks/cloudbreak#10689).
///
/// Every one of these codes is in aws-runtime's `THROTTLING_ERRORS`, so the SDK retries them as throttling.
pub(super) fn throttling(service: &str, protocol: Protocol) -> AwsError {
    match (service, protocol) {
        ("registry", _) => err(429, "TOOMANYREQUESTS", "too many requests"),
        ("s3", _) => err(503, "SlowDown", "Please reduce your request rate."),
        ("ec2", _) => err(503, "RequestLimitExceeded", "Request limit exceeded."),
        ("dynamodb", _) => err(
            400,
            "ThrottlingException",
            "Rate of requests exceeds the allowed throughput.",
        ),
        ("sqs", _) => err(
            400,
            "RequestThrottled",
            "The request was denied due to request throttling.",
        ),
        (_, Protocol::Json { .. }) => err(400, "ThrottlingException", "Rate exceeded"),
        _ => err(400, "Throttling", "Rate exceeded"),
    }
}

/// The service's 500 error: S3 and EC2 `InternalError`, DynamoDB `InternalServerError`, Secrets Manager
/// `InternalServiceError`, CloudWatch Logs `ServiceUnavailableException` (its API Reference: 500), the others the
/// common `InternalFailure` (AWS common errors: "The request processing has failed because of an unknown error,
/// exception or failure.", 500).
pub(super) fn internal_error(service: &str) -> AwsError {
    match service {
        "registry" => err(500, "UNKNOWN", "unknown error"),
        "s3" => err(
            500,
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        "ec2" => err(500, "InternalError", "An internal error has occurred."),
        "dynamodb" => err(
            500,
            "InternalServerError",
            "The server encountered an internal error trying to fulfill the request.",
        ),
        "secretsmanager" => err(
            500,
            "InternalServiceError",
            "An error occurred on the server side.",
        ),
        "logs" => err(
            500,
            "ServiceUnavailableException",
            "The service cannot complete the request.",
        ),
        _ => err(
            500,
            "InternalFailure",
            "The request processing has failed because of an unknown error, exception or failure.",
        ),
    }
}

/// The service's 503 error: EC2 `Unavailable`, the others `ServiceUnavailable` (S3 error codes, DynamoDB
/// Developer Guide, AWS common errors: "The request has failed due to a temporary failure of the server.").
pub(super) fn service_unavailable(service: &str) -> AwsError {
    match service {
        "registry" => err(503, "UNAVAILABLE", "service unavailable"),
        "s3" => err(
            503,
            "ServiceUnavailable",
            "Service is unable to handle request.",
        ),
        "ec2" => err(
            503,
            "Unavailable",
            "The server is overloaded and can't handle the request.",
        ),
        "dynamodb" => err(
            503,
            "ServiceUnavailable",
            "DynamoDB is currently unavailable. (This should be a temporary state.)",
        ),
        _ => err(
            503,
            "ServiceUnavailable",
            "The request has failed due to a temporary failure of the server.",
        ),
    }
}

/// The error a fault stands for, if it is one.
pub(super) fn of(fault: &Fault, r: &Request) -> Option<AwsError> {
    match fault {
        Fault::Error {
            status,
            code,
            message,
        } => Some(err(*status, code, message)),
        Fault::Throttling => Some(throttling(&r.service, r.protocol)),
        Fault::InternalError => Some(internal_error(&r.service)),
        Fault::ServiceUnavailable => Some(service_unavailable(&r.service)),
        _ => None,
    }
}

/// SQS's query-compatible codes whose JSON shape has another name (aws-sdk-sqs 1.119's error dispatch); the
/// others drop the `AWS.SimpleQueueService.` prefix.
const SQS_SHAPES: &[(&str, &str)] = &[
    (
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
    ),
    ("QueueAlreadyExists", "QueueNameExists"),
    ("KMS.AccessDeniedException", "KmsAccessDenied"),
    ("KMS.DisabledException", "KmsDisabled"),
    ("KMS.InvalidKeyUsageException", "KmsInvalidKeyUsage"),
    ("KMS.InvalidStateException", "KmsInvalidState"),
    ("KMS.NotFoundException", "KmsNotFound"),
    ("KMS.OptInRequired", "KmsOptInRequired"),
    ("KMS.ThrottlingException", "KmsThrottled"),
];

fn json_type(service: &str, code: &str) -> String {
    match service {
        "dynamodb" => format!("com.amazonaws.dynamodb.v20120810#{code}"),
        "sqs" => {
            let shape = SQS_SHAPES
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, s)| (*s).to_owned())
                .unwrap_or_else(|| {
                    code.trim_start_matches("AWS.SimpleQueueService.")
                        .to_owned()
                });
            format!("com.amazonaws.sqs#{shape}")
        }
        _ => code.to_owned(),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Query protocol namespaces, as the services write them.
fn query_namespace(service: &str) -> &'static str {
    match service {
        "iam" => "https://iam.amazonaws.com/doc/2010-05-08/",
        "autoscaling" => "http://autoscaling.amazonaws.com/doc/2011-01-01/",
        "sns" => "http://sns.amazonaws.com/doc/2010-03-31/",
        "sts" => "https://sts.amazonaws.com/doc/2011-06-15/",
        "monitoring" => "http://monitoring.amazonaws.com/doc/2010-08-01/",
        "sqs" => "http://queue.amazonaws.com/doc/2012-11-05/",
        _ => "https://aws.amazon.com/doc/",
    }
}

pub(super) fn request_id() -> String {
    let mut b = [0u8; 16];
    fastrand::fill(&mut b);
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The content type a protocol's answers carry.
pub(super) fn content_type(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Json { version_1_1: true } => "application/x-amz-json-1.1",
        Protocol::Json { version_1_1: false } => "application/x-amz-json-1.0",
        Protocol::RpcV2Cbor => "application/cbor",
        Protocol::RestXml => "application/xml",
        Protocol::Registry => "application/json; charset=utf-8",
        Protocol::Query | Protocol::Ec2Query | Protocol::Unknown => "text/xml",
    }
}

/// A CBOR text string (RFC 8949, major type 3).
fn cbor_text(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 24 {
        out.push(0x60 | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[0x78, n as u8]);
    } else if n < 65536 {
        out.push(0x79);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x7a);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// `e` as `r`'s service answers it.
pub(super) fn render(r: &Request, e: &AwsError) -> Response {
    let id = request_id();
    let fault_type = if e.status >= 500 {
        "Receiver"
    } else {
        "Sender"
    };
    let mut headers = vec![
        (
            "Content-Type".to_owned(),
            content_type(r.protocol).to_owned(),
        ),
        ("x-amzn-RequestId".to_owned(), id.clone()),
    ];
    let body = match r.protocol {
        Protocol::RestXml => {
            headers.push(("x-amz-request-id".into(), id.clone()));
            if r.method == "HEAD" {
                Vec::new()
            } else {
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message>\
                     <RequestId>{id}</RequestId><HostId>{id}</HostId></Error>",
                    xml_escape(&e.code),
                    xml_escape(&e.message)
                )
                .into_bytes()
            }
        }
        Protocol::Registry => {
            if r.method == "HEAD" {
                Vec::new()
            } else {
                serde_json::json!({"errors": [{"code": e.code, "message": e.message}]})
                    .to_string()
                    .into_bytes()
            }
        }
        Protocol::Ec2Query => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message>\
             </Error></Errors><RequestID>{id}</RequestID></Response>",
            xml_escape(&e.code),
            xml_escape(&e.message)
        )
        .into_bytes(),
        Protocol::Query | Protocol::Unknown => format!(
            "<ErrorResponse xmlns=\"{}\">\n  <Error>\n    <Type>{fault_type}</Type>\n    <Code>{}</Code>\n    \
             <Message>{}</Message>\n  </Error>\n  <RequestId>{id}</RequestId>\n</ErrorResponse>\n",
            query_namespace(&r.service),
            xml_escape(&e.code),
            xml_escape(&e.message)
        )
        .into_bytes(),
        Protocol::Json { .. } => {
            if r.service == "sqs" {
                headers.push((
                    "x-amzn-query-error".into(),
                    format!("{};{fault_type}", e.code),
                ));
            }
            let message_key = if r.service == "secretsmanager" {
                "Message"
            } else {
                "message"
            };
            serde_json::json!({"__type": json_type(&r.service, &e.code), message_key: e.message})
                .to_string()
                .into_bytes()
        }
        Protocol::RpcV2Cbor => {
            headers.push(("smithy-protocol".into(), "rpc-v2-cbor".into()));
            headers.push((
                "x-amzn-query-error".into(),
                format!("{};{fault_type}", e.code),
            ));
            let mut b = vec![0xa2];
            cbor_text(&mut b, "__type");
            cbor_text(&mut b, &e.code);
            cbor_text(&mut b, "message");
            cbor_text(&mut b, &e.message);
            b
        }
    };
    Response {
        status: e.status,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(service: &str, protocol: Protocol, method: &str) -> Request {
        Request {
            method: method.into(),
            target: "/".into(),
            headers: vec![],
            body: vec![],
            body_streamed: false,
            service: service.into(),
            operation: "Op".into(),
            protocol,
        }
    }

    #[test]
    fn sqs_json_errors_carry_the_query_code_in_a_header() {
        let r = req("sqs", Protocol::Json { version_1_1: false }, "POST");
        let resp = render(
            &r,
            &err(400, "AWS.SimpleQueueService.NonExistentQueue", "gone"),
        );
        let header = |n: &str| {
            resp.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header("x-amzn-query-error").as_deref(),
            Some("AWS.SimpleQueueService.NonExistentQueue;Sender")
        );
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/x-amz-json-1.0")
        );
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
    }

    #[test]
    fn head_errors_have_no_body_and_cbor_is_a_map() {
        let r = req("s3", Protocol::RestXml, "HEAD");
        assert!(render(&r, &throttling("s3", Protocol::RestXml))
            .body
            .is_empty());
        let r = req("monitoring", Protocol::RpcV2Cbor, "POST");
        let b = render(&r, &err(400, "Throttling", "Rate exceeded")).body;
        assert_eq!(
            b,
            [
                &[0xa2, 0x66][..],
                b"__type",
                &[0x6a],
                b"Throttling",
                &[0x67],
                b"message",
                &[0x6d],
                b"Rate exceeded"
            ]
            .concat()
        );
    }
}
