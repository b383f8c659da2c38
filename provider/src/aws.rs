//! The provider's AWS configuration and the clients built from it.
//!
//! Mirrors the AWS provider's `provider "aws" {}` block: `region`, `profile` (and the standard credential chain),
//! static keys, `assume_role`, an `endpoints {}` override per service, `default_tags` and `s3_use_path_style`.
//! Endpoints are plain configuration: nothing here knows whether it talks to AWS or to a local stand-in.
//!
//! [`AwsClients::new`] makes no AWS call and reads no instance metadata: terraform starts the provider several
//! times per command, and most of those processes only validate or plan. Credentials are resolved lazily, on the
//! first request.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::ConfigBag;
use serde::{Deserialize, Serialize};

/// The region used when neither the configuration, the environment nor the shared config file names one
/// (the same fallback as dth-core's binaries).
pub const FALLBACK_REGION: &str = "us-east-1";

/// The `provider "dth" {}` block.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Region of the control plane (queue, ledger, fleet). Default: `AWS_REGION` / `AWS_DEFAULT_REGION`, then the
    /// profile's region, then us-east-1.
    pub region: Option<String>,
    /// Named profile of the shared config and credentials files.
    pub profile: Option<String>,
    /// Static credentials; both or neither. Default: the standard credential chain.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub assume_role: Option<AssumeRole>,
    pub endpoints: ServiceEndpoints,
    /// Tags put on every taggable resource, under the resource's own `tags`.
    pub default_tags: BTreeMap<String, String>,
    /// Path-style S3 addressing (`endpoint/bucket/key`), needed by most S3 stand-ins.
    pub s3_use_path_style: bool,
    /// Retries of a throttled, failed (5xx) or cut-off AWS call ([`DEFAULT_MAX_RETRIES`] unless given).
    pub max_retries: Option<u32>,
}

/// The AWS provider's default `max_retries`: a busy account throttles often (EC2's RequestLimitExceeded, IAM's
/// Throttling), and three attempts (the SDK's default) fail an apply of a hundred calls every few runs.
pub const DEFAULT_MAX_RETRIES: u32 = 25;

// By hand so that the secret key never reaches a log line or a panic message.
impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("access_key", &self.access_key)
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("assume_role", &self.assume_role)
            .field("endpoints", &self.endpoints)
            .field("default_tags", &self.default_tags)
            .field("s3_use_path_style", &self.s3_use_path_style)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssumeRole {
    pub role_arn: String,
    pub session_name: Option<String>,
    pub external_id: Option<String>,
}

/// Endpoint overrides, one per service the provider calls (like the AWS provider's `endpoints {}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceEndpoints {
    pub s3: Option<String>,
    pub sqs: Option<String>,
    pub dynamodb: Option<String>,
    pub autoscaling: Option<String>,
    pub ec2: Option<String>,
    pub iam: Option<String>,
    pub secretsmanager: Option<String>,
    pub cloudwatch: Option<String>,
    pub sns: Option<String>,
    pub sts: Option<String>,
    /// CloudWatch Logs (the transfer's log group), named as the AWS provider names it.
    pub logs: Option<String>,
    /// ECR's API, for the instances of an image transfer (authorization tokens, repositories, image lists).
    pub ecr: Option<String>,
}

impl ServiceEndpoints {
    fn all(&self) -> [(&'static str, &Option<String>); 12] {
        [
            ("s3", &self.s3),
            ("sqs", &self.sqs),
            ("dynamodb", &self.dynamodb),
            ("autoscaling", &self.autoscaling),
            ("ec2", &self.ec2),
            ("iam", &self.iam),
            ("secretsmanager", &self.secretsmanager),
            ("cloudwatch", &self.cloudwatch),
            ("sns", &self.sns),
            ("sts", &self.sts),
            ("logs", &self.logs),
            ("ecr", &self.ecr),
        ]
    }
}

/// A provider configuration that cannot work, with the attribute it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{attribute}: {message}")]
pub struct ConfigError {
    pub attribute: String,
    pub message: String,
}

impl ProviderConfig {
    /// Every problem at once, as (attribute path, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |a: &str, m: String| out.push((a.to_owned(), m));
        if let Some(r) = &self.region {
            if !is_region(r) {
                bad(
                    "region",
                    format!("{r:?} is not a region name (like us-east-1 or cn-north-1)"),
                );
            }
        }
        if let Some(p) = &self.profile {
            if p.trim().is_empty() {
                bad("profile", "must not be empty".into());
            }
        }
        match (&self.access_key, &self.secret_key) {
            (Some(_), None) => bad("secret_key", "is required with access_key".into()),
            (None, Some(_)) => bad("access_key", "is required with secret_key".into()),
            _ => {}
        }
        if let Some(ar) = &self.assume_role {
            if !ar.role_arn.starts_with("arn:") || !ar.role_arn.contains(":role/") {
                bad(
                    "assume_role.role_arn",
                    format!("{:?} is not an IAM role ARN", ar.role_arn),
                );
            }
            if let Some(s) = &ar.session_name {
                // STS's rule for RoleSessionName.
                let ok = (2..=64).contains(&s.len())
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "=,.@-_".contains(c));
                if !ok {
                    bad(
                        "assume_role.session_name",
                        "must be 2-64 characters of [A-Za-z0-9=,.@_-]".into(),
                    );
                }
            }
        }
        for (service, url) in self.endpoints.all() {
            if let Some(u) = url {
                let host = u
                    .strip_prefix("https://")
                    .or_else(|| u.strip_prefix("http://"));
                if !matches!(host, Some(h) if !h.is_empty() && !h.contains(char::is_whitespace)) {
                    bad(
                        &format!("endpoints.{service}"),
                        format!("{u:?} must be a URL starting with http:// or https://"),
                    );
                }
            }
        }
        if self.max_retries.is_some_and(|r| r > 100) {
            bad(
                "max_retries",
                "must be at most 100 (each retry waits up to 20 s)".into(),
            );
        }
        for (k, v) in &self.default_tags {
            if let Some(m) = tag_problem(k, v) {
                bad(&format!("default_tags[{k:?}]"), m);
            }
        }
        out
    }
}

/// What is wrong with a tag, if anything (limits common to every service we tag).
pub fn tag_problem(key: &str, value: &str) -> Option<String> {
    if key.is_empty() || key.chars().count() > 128 {
        return Some("tag keys must be 1-128 characters".into());
    }
    if value.chars().count() > 256 {
        return Some("tag values must be at most 256 characters".into());
    }
    if key.starts_with("aws:") {
        return Some("tag keys starting with \"aws:\" are reserved by AWS".into());
    }
    if key.starts_with("dth:") {
        return Some("tag keys starting with \"dth:\" are reserved by this provider".into());
    }
    None
}

pub(crate) fn is_region(r: &str) -> bool {
    !r.is_empty()
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The ARN partition of a region: IAM policies and ARNs built by hand must use it.
pub fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// Counts every AWS operation made through [`AwsClients`] (once per operation, not per retry attempt, so that
/// the number is a property of the code, not of the network).
#[derive(Debug, Clone)]
struct CallCounter {
    calls: Arc<AtomicU64>,
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "dth-call-counter"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match cfg.load::<Metadata>() {
            Some(m) => tracing::debug!(service = m.service(), operation = m.name(), "AWS call"),
            None => tracing::debug!(service = "?", operation = "?", "AWS call"),
        }
        Ok(())
    }
}

/// One client per service, all sharing the resolved region and credentials, each with its endpoint override.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub secretsmanager: aws_sdk_secretsmanager::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub sns: aws_sdk_sns::Client,
    pub sts: aws_sdk_sts::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    region: String,
    calls: Arc<AtomicU64>,
}

/// Region from the configuration, else the environment, else the profile — but never from instance metadata,
/// whose probe costs seconds off EC2 (the AWS provider does not use it either).
async fn resolve_region(cfg: &ProviderConfig) -> String {
    if let Some(r) = &cfg.region {
        return r.clone();
    }
    let mut profile = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(p) = &cfg.profile {
        profile = profile.profile_name(p);
    }
    let chain = RegionProviderChain::first_try(
        aws_config::environment::EnvironmentVariableRegionProvider::new(),
    )
    .or_else(profile.build());
    match chain.region().await {
        Some(r) => r.to_string(),
        None => FALLBACK_REGION.to_owned(),
    }
}

impl AwsClients {
    /// Build every client. Makes no AWS call: credentials (including the assumed role) are fetched on first use.
    pub async fn new(cfg: &ProviderConfig) -> Result<AwsClients, ConfigError> {
        if let Some((attribute, message)) = cfg.validate().into_iter().next() {
            return Err(ConfigError { attribute, message });
        }
        let region = resolve_region(cfg).await;
        let retries = cfg.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        // The same connect, attempt and operation timeouts as the binaries' clients: a call that hangs fails
        // (and is retried) instead of holding terraform for ever.
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(dth_core::aws::timeouts(std::time::Duration::from_secs(
                dth_core::config::DEFAULT_IO_TIMEOUT_SECS,
            )))
            .region(Region::new(region.clone()))
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(retries.saturating_add(1))
                    .with_max_backoff(std::time::Duration::from_secs(20)),
            );
        if let Some(p) = &cfg.profile {
            loader = loader.profile_name(p);
        }
        if let (Some(k), Some(s)) = (&cfg.access_key, &cfg.secret_key) {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                k.clone(),
                s.clone(),
                None,
                None,
                "dth-provider-config",
            ));
        }
        let mut sdk: SdkConfig = loader.load().await;
        if let Some(ar) = &cfg.assume_role {
            // STS is reached through its own endpoint override, with the base credentials resolved above.
            let mut sts_sdk = sdk.clone().into_builder();
            if let Some(u) = &cfg.endpoints.sts {
                sts_sdk = sts_sdk.endpoint_url(u);
            }
            let mut b = aws_config::sts::AssumeRoleProvider::builder(&ar.role_arn)
                .configure(&sts_sdk.build())
                .session_name(
                    ar.session_name
                        .clone()
                        .unwrap_or_else(|| "terraform-provider-dth".to_owned()),
                );
            if let Some(id) = &ar.external_id {
                b = b.external_id(id);
            }
            let provider = b.build().await;
            sdk = sdk
                .into_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                )
                .build();
        }

        let calls = Arc::new(AtomicU64::new(0));
        let counter = CallCounter {
            calls: calls.clone(),
        };
        let e = &cfg.endpoints;
        macro_rules! client {
            ($krate:ident, $endpoint:expr) => {{
                let mut b = $krate::config::Builder::from(&sdk).interceptor(counter.clone());
                if let Some(u) = $endpoint {
                    b = b.endpoint_url(u);
                }
                $krate::Client::from_conf(b.build())
            }};
        }
        let s3 = {
            let mut b = aws_sdk_s3::config::Builder::from(&sdk)
                .interceptor(counter.clone())
                .force_path_style(cfg.s3_use_path_style);
            if let Some(u) = &e.s3 {
                b = b.endpoint_url(u);
            }
            aws_sdk_s3::Client::from_conf(b.build())
        };
        Ok(AwsClients {
            s3,
            sqs: client!(aws_sdk_sqs, &e.sqs),
            dynamodb: client!(aws_sdk_dynamodb, &e.dynamodb),
            secretsmanager: client!(aws_sdk_secretsmanager, &e.secretsmanager),
            autoscaling: client!(aws_sdk_autoscaling, &e.autoscaling),
            ec2: client!(aws_sdk_ec2, &e.ec2),
            iam: client!(aws_sdk_iam, &e.iam),
            cloudwatch: client!(aws_sdk_cloudwatch, &e.cloudwatch),
            sns: client!(aws_sdk_sns, &e.sns),
            sts: client!(aws_sdk_sts, &e.sts),
            logs: client!(aws_sdk_cloudwatchlogs, &e.logs),
            region,
            calls,
        })
    }

    /// AWS operations made through these clients so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The control-plane region every client signs for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The ARN partition of [`AwsClients::region`].
    pub fn partition(&self) -> &'static str {
        partition_of(&self.region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret_key() {
        let cfg = ProviderConfig {
            access_key: Some("AKIDEXAMPLE".into()),
            secret_key: Some("wJalrXUtnFEMI/K7MDENG".into()),
            ..Default::default()
        };
        let text = format!("{cfg:?}");
        assert!(!text.contains("wJalr"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn validation_names_the_attribute() {
        let cfg: ProviderConfig = serde_json::from_value(serde_json::json!({
            "region": "US East",
            "access_key": "a",
            "endpoints": {"sqs": "localhost:4566"},
            "assume_role": {"role_arn": "role"},
            "default_tags": {"aws:x": "y"}
        }))
        .unwrap();
        let paths: Vec<String> = cfg.validate().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "region",
                "secret_key",
                "assume_role.role_arn",
                "endpoints.sqs",
                "default_tags[\"aws:x\"]"
            ]
        );
        assert!(ProviderConfig::default().validate().is_empty());
    }

    #[test]
    fn unknown_settings_are_rejected() {
        let r: Result<ProviderConfig, _> =
            serde_json::from_value(serde_json::json!({"endpoints": {"lambda": "http://x"}}));
        assert!(r.is_err());
        // CloudWatch Logs is `logs`, as in the AWS provider; no second spelling.
        let r: Result<ProviderConfig, _> = serde_json::from_value(
            serde_json::json!({"endpoints": {"cloudwatchlogs": "http://x"}}),
        );
        assert!(r.is_err());
        let cfg: ProviderConfig =
            serde_json::from_value(serde_json::json!({"endpoints": {"logs": "http://x"}})).unwrap();
        assert_eq!(cfg.endpoints.logs.as_deref(), Some("http://x"));
    }

    #[test]
    fn partitions() {
        assert_eq!(partition_of("cn-north-1"), "aws-cn");
        assert_eq!(partition_of("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition_of("eu-west-1"), "aws");
    }

    #[tokio::test]
    async fn clients_are_built_without_calling_aws() {
        let cfg = ProviderConfig {
            region: Some("eu-west-1".into()),
            access_key: Some("a".into()),
            secret_key: Some("b".into()),
            assume_role: Some(AssumeRole {
                role_arn: "arn:aws:iam::222222222222:role/x".into(),
                ..Default::default()
            }),
            endpoints: ServiceEndpoints {
                // Nothing listens here: building must not try.
                sts: Some("http://127.0.0.1:9".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = AwsClients::new(&cfg).await.unwrap();
        assert_eq!(c.region(), "eu-west-1");
        assert_eq!(c.calls(), 0);
    }
}
