//! One error type for the engine: a kind that decides what to do next, a context that says what was being
//! done, and the underlying cause.

use std::fmt;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration (or a CLI flag) is invalid; the message names the field.
    Config,
    /// The object, bucket, upload or item does not exist.
    NotFound,
    /// A conditional read or write did not hold (the source changed, the ledger moved on).
    PreconditionFailed,
    /// Credentials were rejected or lack permission.
    AccessDenied,
    /// The service asked us to slow down.
    Throttled,
    /// Network trouble or a 5xx: worth another try.
    Transient,
    /// Bytes did not verify (checksum, ETag or size mismatch).
    Integrity,
    /// A conditional write found the destination changed since the finder looked: a newer copy is there.
    Superseded,
    /// A queue message we cannot understand.
    InvalidMessage,
    /// Anything else.
    Other,
}

#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    code: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            code: None,
            source: None,
        }
    }

    pub fn with_source(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            context: context.into(),
            code: None,
            source: Some(source.into()),
        }
    }

    /// A configuration error naming the field, e.g. `config("source.bucket", "must not be empty")`.
    pub fn config(field: &str, message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Config, format!("{field}: {message}"))
    }

    /// The same error carrying the service's error code (a registry's `MANIFEST_UNKNOWN`, `DENIED`, ...).
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn integrity(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, context)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The service's error code (`NoSuchKey`, `ConditionalCheckFailedException`, ...), when there was one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Throttled | ErrorKind::Transient | ErrorKind::Integrity
        )
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// Prefix the context: "copying a/b: GET ...".
    pub fn context(mut self, outer: impl fmt::Display) -> Self {
        self.context = format!("{outer}: {}", self.context);
        self
    }

    /// Classify an AWS SDK error by HTTP status and error code.
    pub fn from_sdk<E>(context: impl Into<String>, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let context = context.into();
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().map(str::to_owned);
        let kind = match &err {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => ErrorKind::Transient,
            SdkError::ConstructionFailure(_) => ErrorKind::Config,
            _ => classify(status, code.as_deref()),
        };
        let message = err.message().map(str::to_owned);
        let source: Box<dyn std::error::Error + Send + Sync> = match (&code, message) {
            (Some(c), Some(m)) => format!("{c}: {m}").into(),
            (Some(c), None) => format!("{c} (HTTP {})", status.unwrap_or(0)).into(),
            (None, _) if status.is_some() => {
                let detail = format!(
                    "{}",
                    aws_smithy_types::error::display::DisplayErrorContext(&err)
                );
                format!(
                    "HTTP {}: {}",
                    status.unwrap_or(0),
                    detail.chars().take(300).collect::<String>()
                )
                .into()
            }
            _ => format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(&err)
            )
            .into(),
        };
        Self {
            kind,
            context,
            code,
            source: Some(source),
        }
    }
}

fn classify(status: Option<u16>, code: Option<&str>) -> ErrorKind {
    match code {
        Some(
            "NoSuchKey"
            | "NotFound"
            | "NoSuchBucket"
            | "NoSuchUpload"
            | "ResourceNotFoundException"
            | "RepositoryNotFoundException"
            | "ImageNotFoundException"
            | "AWS.SimpleQueueService.NonExistentQueue"
            | "QueueDoesNotExist",
        ) => return ErrorKind::NotFound,
        Some(
            "PreconditionFailed"
            | "ConditionalCheckFailedException"
            | "TransactionCanceledException",
        ) => return ErrorKind::PreconditionFailed,
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "AccessDeniedException",
        ) => return ErrorKind::AccessDenied,
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "ProvisionedThroughputExceededException"
            | "RequestThrottled",
        ) => return ErrorKind::Throttled,
        Some("BadDigest" | "InvalidDigest" | "InvalidPart" | "XAmzContentSHA256Mismatch") => {
            return ErrorKind::Integrity
        }
        _ => {}
    }
    match status {
        Some(404) => ErrorKind::NotFound,
        Some(412) => ErrorKind::PreconditionFailed,
        Some(401 | 403) => ErrorKind::AccessDenied,
        Some(429 | 503) => ErrorKind::Throttled,
        Some(s) if s >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::with_source(ErrorKind::InvalidMessage, "decoding JSON", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_by_code_wins_over_status() {
        assert_eq!(
            classify(Some(400), Some("NoSuchUpload")),
            ErrorKind::NotFound
        );
        assert_eq!(classify(Some(403), None), ErrorKind::AccessDenied);
        assert_eq!(classify(Some(500), None), ErrorKind::Transient);
        assert_eq!(
            classify(Some(400), Some("ConditionalCheckFailedException")),
            ErrorKind::PreconditionFailed
        );
        assert_eq!(classify(Some(400), Some("BadDigest")), ErrorKind::Integrity);
    }

    #[test]
    fn config_error_names_the_field() {
        let e = Error::config("destination.bucket", "must be 3 to 63 characters");
        assert_eq!(
            e.to_string(),
            "destination.bucket: must be 3 to 63 characters"
        );
        assert!(!e.is_retryable());
    }
}
