//! `(service, operation, protocol)` of a request, from its head (and for AWS Query, its form body).

use super::Protocol;

/// Query-string pairs, decoded (`?uploads` gives `("uploads", "")`).
pub(super) fn query_pairs(target: &str) -> Vec<(String, String)> {
    match target.split_once('?') {
        Some((_, q)) => crate::http::form(q.as_bytes()),
        None => Vec::new(),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The service of a SigV4 credential `AKID/<date>/<region>/<service>/aws4_request`.
fn scope_service(credential: &str) -> Option<String> {
    let parts: Vec<&str> = credential.trim().split('/').collect();
    (parts.len() >= 5 && parts[parts.len() - 1] == "aws4_request")
        .then(|| parts[parts.len() - 2].to_owned())
}

/// The SigV4 signing name: from `Authorization`, else from a presigned URL's `X-Amz-Credential`, else guessed
/// from the target prefix or path; `moto` for moto's own API, `unknown` otherwise.
pub(super) fn service_of(headers: &[(String, String)], target: &str) -> String {
    if let Some(auth) = header(headers, "authorization") {
        let credential = auth
            .split([' ', ','])
            .find_map(|p| p.trim().strip_prefix("Credential="));
        if let Some(s) = credential.and_then(scope_service) {
            return s;
        }
    }
    if let Some(s) = query_pairs(target)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("X-Amz-Credential"))
        .and_then(|(_, v)| scope_service(&v))
    {
        return s;
    }
    if let Some(t) = header(headers, "x-amz-target") {
        let prefix = t.split('.').next().unwrap_or("");
        let guessed = match prefix {
            "AmazonSQS" => "sqs",
            p if p.starts_with("DynamoDB") => "dynamodb",
            p if p.starts_with("Logs") => "logs",
            "secretsmanager" => "secretsmanager",
            _ => "unknown",
        };
        return guessed.to_owned();
    }
    if target.starts_with("/service/GraniteServiceVersion20100801/") {
        return "monitoring".into();
    }
    if target.starts_with("/moto-api") {
        return "moto".into();
    }
    if target.starts_with("/v2/") || target == "/v2" || target.starts_with("/token") {
        return "registry".into();
    }
    "unknown".into()
}

/// Identify a request. `body` is its form body for AWS Query (unused otherwise).
pub(super) fn identify(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (String, String, Protocol) {
    let service = service_of(headers, target);
    if service == "registry" {
        return (
            service,
            registry_operation(method, target).into(),
            Protocol::Registry,
        );
    }
    if let Some(t) = header(headers, "x-amz-target") {
        let op = t.rsplit('.').next().unwrap_or(t).to_owned();
        let version_1_1 = header(headers, "content-type").is_some_and(|c| c.contains("1.1"));
        return (service, op, Protocol::Json { version_1_1 });
    }
    let path = target.split('?').next().unwrap_or("");
    if let Some(rest) = path.strip_prefix("/service/") {
        if let Some((_, op)) = rest.split_once("/operation/") {
            return (service, op.to_owned(), Protocol::RpcV2Cbor);
        }
    }
    if service == "s3" {
        let op = s3_operation(
            method,
            target,
            header(headers, "x-amz-copy-source").is_some(),
        );
        return (service, op.to_owned(), Protocol::RestXml);
    }
    let action = crate::http::form(body)
        .into_iter()
        .chain(query_pairs(target))
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v);
    match action {
        Some(op) => {
            let protocol = if service == "ec2" {
                Protocol::Ec2Query
            } else {
                Protocol::Query
            };
            (service, op, protocol)
        }
        None => (service, "unknown".into(), Protocol::Unknown),
    }
}

/// S3 operations told apart by a query marker: (method, has a key, marker, operation). A marker `k` means the
/// parameter is present, `k=v` that it has that value. Taken from aws-sdk-s3 1.157's request serializers
/// (`uri_query` of each operation); operations the SDK tags with `x-id=<Op>` need no entry.
const S3_MARKED: &[(&str, bool, &str, &str)] = &[
    ("POST", true, "uploads", "CreateMultipartUpload"),
    ("POST", true, "restore", "RestoreObject"),
    ("POST", true, "select", "SelectObjectContent"),
    ("POST", false, "delete", "DeleteObjects"),
    (
        "POST",
        false,
        "metadataConfiguration",
        "CreateBucketMetadataConfiguration",
    ),
    (
        "POST",
        false,
        "metadataTable",
        "CreateBucketMetadataTableConfiguration",
    ),
    ("GET", false, "session", "CreateSession"),
    ("GET", false, "uploads", "ListMultipartUploads"),
    ("GET", false, "list-type=2", "ListObjectsV2"),
    ("GET", false, "versions", "ListObjectVersions"),
    (
        "GET",
        false,
        "notification",
        "GetBucketNotificationConfiguration",
    ),
    ("GET", false, "location", "GetBucketLocation"),
    ("GET", false, "policyStatus", "GetBucketPolicyStatus"),
    ("GET", false, "policy", "GetBucketPolicy"),
    ("GET", false, "tagging", "GetBucketTagging"),
    ("GET", false, "versioning", "GetBucketVersioning"),
    ("GET", false, "lifecycle", "GetBucketLifecycleConfiguration"),
    ("GET", false, "encryption", "GetBucketEncryption"),
    ("GET", false, "cors", "GetBucketCors"),
    ("GET", false, "acl", "GetBucketAcl"),
    ("GET", false, "website", "GetBucketWebsite"),
    ("GET", false, "logging", "GetBucketLogging"),
    ("GET", false, "replication", "GetBucketReplication"),
    (
        "GET",
        false,
        "accelerate",
        "GetBucketAccelerateConfiguration",
    ),
    ("GET", false, "requestPayment", "GetBucketRequestPayment"),
    (
        "GET",
        false,
        "ownershipControls",
        "GetBucketOwnershipControls",
    ),
    ("GET", false, "publicAccessBlock", "GetPublicAccessBlock"),
    ("GET", false, "object-lock", "GetObjectLockConfiguration"),
    ("GET", false, "analytics", "GetBucketAnalyticsConfiguration"),
    ("GET", false, "inventory", "GetBucketInventoryConfiguration"),
    ("GET", false, "metrics", "GetBucketMetricsConfiguration"),
    (
        "GET",
        false,
        "intelligent-tiering",
        "GetBucketIntelligentTieringConfiguration",
    ),
    ("GET", false, "abac", "GetBucketAbac"),
    ("GET", true, "uploadId", "ListParts"),
    ("GET", true, "tagging", "GetObjectTagging"),
    ("GET", true, "acl", "GetObjectAcl"),
    ("GET", true, "attributes", "GetObjectAttributes"),
    ("GET", true, "legal-hold", "GetObjectLegalHold"),
    ("GET", true, "retention", "GetObjectRetention"),
    ("GET", true, "torrent", "GetObjectTorrent"),
    (
        "PUT",
        false,
        "notification",
        "PutBucketNotificationConfiguration",
    ),
    ("PUT", false, "policy", "PutBucketPolicy"),
    ("PUT", false, "tagging", "PutBucketTagging"),
    ("PUT", false, "versioning", "PutBucketVersioning"),
    ("PUT", false, "lifecycle", "PutBucketLifecycleConfiguration"),
    ("PUT", false, "encryption", "PutBucketEncryption"),
    ("PUT", false, "cors", "PutBucketCors"),
    ("PUT", false, "acl", "PutBucketAcl"),
    ("PUT", false, "website", "PutBucketWebsite"),
    ("PUT", false, "logging", "PutBucketLogging"),
    ("PUT", false, "replication", "PutBucketReplication"),
    (
        "PUT",
        false,
        "accelerate",
        "PutBucketAccelerateConfiguration",
    ),
    ("PUT", false, "requestPayment", "PutBucketRequestPayment"),
    (
        "PUT",
        false,
        "ownershipControls",
        "PutBucketOwnershipControls",
    ),
    ("PUT", false, "publicAccessBlock", "PutPublicAccessBlock"),
    ("PUT", false, "object-lock", "PutObjectLockConfiguration"),
    ("PUT", false, "analytics", "PutBucketAnalyticsConfiguration"),
    ("PUT", false, "inventory", "PutBucketInventoryConfiguration"),
    ("PUT", false, "metrics", "PutBucketMetricsConfiguration"),
    (
        "PUT",
        false,
        "intelligent-tiering",
        "PutBucketIntelligentTieringConfiguration",
    ),
    ("PUT", false, "abac", "PutBucketAbac"),
    ("PUT", true, "tagging", "PutObjectTagging"),
    ("PUT", true, "acl", "PutObjectAcl"),
    ("PUT", true, "legal-hold", "PutObjectLegalHold"),
    ("PUT", true, "retention", "PutObjectRetention"),
    ("PUT", true, "renameObject", "RenameObject"),
    ("PUT", true, "encryption", "UpdateObjectEncryption"),
    ("DELETE", false, "policy", "DeleteBucketPolicy"),
    ("DELETE", false, "tagging", "DeleteBucketTagging"),
    ("DELETE", false, "lifecycle", "DeleteBucketLifecycle"),
    ("DELETE", false, "encryption", "DeleteBucketEncryption"),
    ("DELETE", false, "cors", "DeleteBucketCors"),
    ("DELETE", false, "website", "DeleteBucketWebsite"),
    ("DELETE", false, "replication", "DeleteBucketReplication"),
    (
        "DELETE",
        false,
        "ownershipControls",
        "DeleteBucketOwnershipControls",
    ),
    (
        "DELETE",
        false,
        "publicAccessBlock",
        "DeletePublicAccessBlock",
    ),
    (
        "DELETE",
        false,
        "analytics",
        "DeleteBucketAnalyticsConfiguration",
    ),
    (
        "DELETE",
        false,
        "inventory",
        "DeleteBucketInventoryConfiguration",
    ),
    (
        "DELETE",
        false,
        "metrics",
        "DeleteBucketMetricsConfiguration",
    ),
    (
        "DELETE",
        false,
        "intelligent-tiering",
        "DeleteBucketIntelligentTieringConfiguration",
    ),
    (
        "DELETE",
        false,
        "metadataConfiguration",
        "DeleteBucketMetadataConfiguration",
    ),
    (
        "DELETE",
        false,
        "metadataTable",
        "DeleteBucketMetadataTableConfiguration",
    ),
    ("DELETE", true, "uploadId", "AbortMultipartUpload"),
    ("DELETE", true, "tagging", "DeleteObjectTagging"),
];

/// The SDK's name of a path-style S3 request. `copy_source`: whether it carries `x-amz-copy-source`.
pub fn s3_operation(method: &str, target: &str, copy_source: bool) -> &'static str {
    let q = query_pairs(target);
    let has = |k: &str| q.iter().any(|(n, _)| n == k);
    if let Some((_, id)) = q.iter().find(|(k, _)| k == "x-id") {
        // The SDK says which operation it is; keep only names we know to return a 'static str.
        if let Some(op) = S3_XID.iter().find(|op| **op == id.as_str()) {
            return op;
        }
    }
    let path = target
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches('/');
    if path.is_empty() {
        return if method == "GET" {
            "ListBuckets"
        } else {
            "unknown"
        };
    }
    let has_key = path.split_once('/').is_some_and(|(_, k)| !k.is_empty());
    for (m, k, marker, op) in S3_MARKED {
        if *m != method || *k != has_key {
            continue;
        }
        let hit = match marker.split_once('=') {
            Some((name, value)) => q.iter().any(|(n, v)| n == name && v == value),
            None => has(marker),
        };
        if hit {
            return op;
        }
    }
    match (method, has_key) {
        ("PUT", false) => "CreateBucket",
        ("DELETE", false) => "DeleteBucket",
        ("GET", false) => "ListObjects",
        ("HEAD", false) => "HeadBucket",
        ("HEAD", true) => "HeadObject",
        ("GET", true) => "GetObject",
        ("DELETE", true) => "DeleteObject",
        ("POST", true) if has("uploadId") => "CompleteMultipartUpload",
        ("PUT", true) if has("uploadId") && copy_source => "UploadPartCopy",
        ("PUT", true) if has("uploadId") => "UploadPart",
        ("PUT", true) if copy_source => "CopyObject",
        ("PUT", true) => "PutObject",
        _ => "unknown",
    }
}

/// Every `x-id` aws-sdk-s3 1.157 sends.
const S3_XID: &[&str] = &[
    "AbortMultipartUpload",
    "CopyObject",
    "DeleteObject",
    "GetBucketAnalyticsConfiguration",
    "GetBucketIntelligentTieringConfiguration",
    "GetBucketInventoryConfiguration",
    "GetBucketMetricsConfiguration",
    "GetObject",
    "GetObjectAnnotation",
    "ListBucketAnalyticsConfigurations",
    "ListBucketIntelligentTieringConfigurations",
    "ListBucketInventoryConfigurations",
    "ListBucketMetricsConfigurations",
    "ListBuckets",
    "ListDirectoryBuckets",
    "ListObjectAnnotations",
    "ListParts",
    "PutObject",
    "UploadPart",
    "UploadPartCopy",
];

/// A distribution API request's operation, named after the specification's endpoints: `Base`, `Catalog`,
/// `ListTags`, `HeadManifest`/`GetManifest`/`PutManifest`/`DeleteManifest`, `HeadBlob`/`GetBlob`/`DeleteBlob`,
/// `StartUpload`, `MountBlob` (`POST` with `mount=`), `PatchUpload`, `PutUpload`, `GetUpload`,
/// `CancelUpload`; `Token` for a token service at `/token`.
pub fn registry_operation(method: &str, target: &str) -> &'static str {
    let path = target.split('?').next().unwrap_or("");
    if path.starts_with("/token") {
        return "Token";
    }
    if path == "/v2" || path == "/v2/" {
        return "Base";
    }
    if path == "/v2/_catalog" {
        return "Catalog";
    }
    if path.ends_with("/tags/list") {
        return "ListTags";
    }
    if path.contains("/blobs/uploads") {
        return match method {
            "POST" if query_pairs(target).iter().any(|(k, _)| k == "mount") => "MountBlob",
            "POST" => "StartUpload",
            "PATCH" => "PatchUpload",
            "PUT" => "PutUpload",
            "GET" => "GetUpload",
            "DELETE" => "CancelUpload",
            _ => "unknown",
        };
    }
    if path.contains("/manifests/") {
        return match method {
            "HEAD" => "HeadManifest",
            "GET" => "GetManifest",
            "PUT" => "PutManifest",
            "DELETE" => "DeleteManifest",
            _ => "unknown",
        };
    }
    if path.contains("/blobs/") {
        return match method {
            "HEAD" => "HeadBlob",
            "GET" => "GetBlob",
            "DELETE" => "DeleteBlob",
            _ => "unknown",
        };
    }
    "unknown"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const AUTH_SQS: &str = "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/sqs/aws4_request, \
                            SignedHeaders=host;x-amz-date, Signature=abc";

    #[test]
    fn services_come_from_the_credential_scope() {
        assert_eq!(service_of(&h(&[("Authorization", AUTH_SQS)]), "/"), "sqs");
        assert_eq!(
            service_of(
                &[],
                "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=test%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
            ),
            "s3"
        );
        assert_eq!(
            service_of(&h(&[("X-Amz-Target", "DynamoDB_20120810.ListTables")]), "/"),
            "dynamodb"
        );
        assert_eq!(service_of(&[], "/moto-api/reset"), "moto");
    }

    #[test]
    fn operations_per_protocol() {
        let json = h(&[
            ("Authorization", AUTH_SQS),
            ("X-Amz-Target", "AmazonSQS.CreateQueue"),
            ("Content-Type", "application/x-amz-json-1.0"),
        ]);
        assert_eq!(
            identify("POST", "/", &json, b"{}"),
            (
                "sqs".into(),
                "CreateQueue".into(),
                Protocol::Json { version_1_1: false }
            )
        );
        let logs = h(&[
            ("X-Amz-Target", "Logs_20140328.CreateLogGroup"),
            ("Content-Type", "application/x-amz-json-1.1"),
        ]);
        assert_eq!(
            identify("POST", "/", &logs, b"{}").2,
            Protocol::Json { version_1_1: true }
        );
        let iam = h(&[(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=a/20250101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=x",
        )]);
        assert_eq!(
            identify(
                "POST",
                "/",
                &iam,
                b"Action=CreateRole&Version=2010-05-08&RoleName=r"
            ),
            ("iam".into(), "CreateRole".into(), Protocol::Query)
        );
        let ec2 = h(&[(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=a/20250101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x",
        )]);
        assert_eq!(
            identify("POST", "/", &ec2, b"Action=RunInstances&Version=2016-11-15").2,
            Protocol::Ec2Query
        );
        let cw = h(&[(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=a/20250101/us-east-1/monitoring/aws4_request, SignedHeaders=host, Signature=x",
        )]);
        assert_eq!(
            identify(
                "POST",
                "/service/GraniteServiceVersion20100801/operation/PutMetricAlarm",
                &cw,
                b""
            ),
            (
                "monitoring".into(),
                "PutMetricAlarm".into(),
                Protocol::RpcV2Cbor
            )
        );
    }

    #[test]
    fn s3_operations_as_the_sdk_names_them() {
        let cases = [
            ("PUT", "/b/k?x-id=PutObject", false, "PutObject"),
            ("PUT", "/b/k", false, "PutObject"),
            ("PUT", "/b/k", true, "CopyObject"),
            ("POST", "/b/k?uploads", false, "CreateMultipartUpload"),
            ("POST", "/b/k?uploads=", false, "CreateMultipartUpload"),
            ("PUT", "/b/k?partNumber=1&uploadId=u", false, "UploadPart"),
            (
                "PUT",
                "/b/k?partNumber=1&uploadId=u",
                true,
                "UploadPartCopy",
            ),
            ("POST", "/b/k?uploadId=u", false, "CompleteMultipartUpload"),
            ("DELETE", "/b/k?uploadId=u", false, "AbortMultipartUpload"),
            ("GET", "/b?uploads", false, "ListMultipartUploads"),
            ("GET", "/b?list-type=2&prefix=a", false, "ListObjectsV2"),
            ("GET", "/b?prefix=a", false, "ListObjects"),
            ("GET", "/b/k?x-id=GetObject", false, "GetObject"),
            ("GET", "/b/a/b/c", false, "GetObject"),
            ("HEAD", "/b/k", false, "HeadObject"),
            ("HEAD", "/b", false, "HeadBucket"),
            (
                "PUT",
                "/b?notification",
                false,
                "PutBucketNotificationConfiguration",
            ),
            (
                "GET",
                "/b?notification",
                false,
                "GetBucketNotificationConfiguration",
            ),
            ("PUT", "/b", false, "CreateBucket"),
            ("DELETE", "/b", false, "DeleteBucket"),
            ("POST", "/b?delete", false, "DeleteObjects"),
            ("PUT", "/b/k?tagging", false, "PutObjectTagging"),
            ("GET", "/", false, "ListBuckets"),
            ("GET", "/b/k?uploadId=u", false, "ListParts"),
        ];
        for (method, target, copy, op) in cases {
            assert_eq!(s3_operation(method, target, copy), op, "{method} {target}");
        }
    }

    #[test]
    fn registry_operations() {
        assert_eq!(registry_operation("GET", "/v2/"), "Base");
        assert_eq!(registry_operation("GET", "/v2/_catalog?n=10"), "Catalog");
        assert_eq!(registry_operation("GET", "/v2/a/b/tags/list"), "ListTags");
        assert_eq!(
            registry_operation("HEAD", "/v2/a/manifests/1"),
            "HeadManifest"
        );
        assert_eq!(
            registry_operation("PUT", "/v2/a/manifests/sha256:0"),
            "PutManifest"
        );
        assert_eq!(registry_operation("GET", "/v2/a/blobs/sha256:0"), "GetBlob");
        assert_eq!(
            registry_operation("POST", "/v2/a/blobs/uploads/"),
            "StartUpload"
        );
        assert_eq!(
            registry_operation("POST", "/v2/a/blobs/uploads/?mount=sha256%3A0&from=b"),
            "MountBlob"
        );
        assert_eq!(
            registry_operation("PATCH", "/v2/a/blobs/uploads/u?_state=x"),
            "PatchUpload"
        );
        assert_eq!(
            registry_operation("PUT", "/v2/a/blobs/uploads/u?digest=d"),
            "PutUpload"
        );
        assert_eq!(registry_operation("GET", "/token?scope=x"), "Token");
    }
}
