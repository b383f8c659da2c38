//! Building AWS clients from a [`JobConfig`]: endpoints, regions and credentials, including credentials kept
//! in a Secrets Manager secret and re-read when the other side starts refusing them.

use std::sync::Arc;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::{self, error::CredentialsError, ProvideCredentials};
use aws_credential_types::Credentials;
use tokio::sync::Mutex;

use crate::config::{AwsConfig, DestinationConfig, JobConfig, SourceConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::limit::Limits;
use crate::store::s3::S3Store;

/// The region used when none is configured anywhere (the SDK's chain found none either).
const FALLBACK_REGION: &str = "us-east-1";

/// Clients for the account that runs the transfer: queue, ledger, secrets, and S3 for the prefix list.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub sdk: SdkConfig,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub s3: aws_sdk_s3::Client,
    /// For the finder to scale its own group in when a scheduled run is done ([`crate::fleet`]).
    pub autoscaling: aws_sdk_autoscaling::Client,
}

async fn load(region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_owned()));
    }
    let mut sdk = loader.load().await;
    if sdk.region().is_none() {
        sdk = sdk
            .into_builder()
            .region(Region::new(FALLBACK_REGION))
            .build();
    }
    sdk
}

impl ControlPlane {
    pub async fn new(cfg: &AwsConfig) -> Self {
        let sdk = load(cfg.region.as_deref()).await;
        let e = &cfg.endpoints;
        let mut sqs = aws_sdk_sqs::config::Builder::from(&sdk);
        if let Some(u) = &e.sqs {
            sqs = sqs.endpoint_url(u);
        }
        let mut ddb = aws_sdk_dynamodb::config::Builder::from(&sdk);
        if let Some(u) = &e.dynamodb {
            ddb = ddb.endpoint_url(u);
        }
        let mut sm = aws_sdk_secretsmanager::config::Builder::from(&sdk);
        if let Some(u) = &e.secretsmanager {
            sm = sm.endpoint_url(u);
        }
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk);
        if let Some(u) = &e.s3 {
            s3 = s3.endpoint_url(u).force_path_style(true);
        }
        let mut asg = aws_sdk_autoscaling::config::Builder::from(&sdk);
        if let Some(u) = &e.autoscaling {
            asg = asg.endpoint_url(u);
        }
        Self {
            sqs: aws_sdk_sqs::Client::from_conf(sqs.build()),
            autoscaling: aws_sdk_autoscaling::Client::from_conf(asg.build()),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(ddb.build()),
            secrets: aws_sdk_secretsmanager::Client::from_conf(sm.build()),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            sdk,
        }
    }
}

/// Access keys read from a Secrets Manager secret (`{"access_key_id", "secret_access_key"}`), cached until
/// [`SecretCredentials::invalidate`] is called after a 403, so rotated keys are picked up without a restart.
#[derive(Debug, Clone)]
pub struct SecretCredentials {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    cached: Arc<Mutex<Option<Credentials>>>,
}

#[derive(serde::Deserialize)]
struct SecretKeys {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
}

impl SecretCredentials {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        Self {
            client,
            secret_id: secret_id.into(),
            cached: Arc::default(),
        }
    }

    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn load(&self) -> Result<Credentials> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| {
                Error::from_sdk(format!("reading credentials secret {}", self.secret_id), e)
            })?;
        let text = out.secret_string().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!("credentials secret {} has no string value", self.secret_id),
            )
        })?;
        // Never put the secret's text in an error: it may be almost-JSON holding the keys.
        let keys: SecretKeys = serde_json::from_str(text).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "credentials secret {} must be JSON {{\"access_key_id\": ..., \"secret_access_key\": ...}}",
                    self.secret_id
                ),
            )
        })?;
        let creds = Credentials::new(
            keys.access_key_id,
            keys.secret_access_key,
            keys.session_token,
            None,
            "dth-secret",
        );
        *cached = Some(creds.clone());
        Ok(creds)
    }
}

impl ProvideCredentials for SecretCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            self.load().await.map_err(CredentialsError::provider_error)
        })
    }
}

/// Endpoint, addressing, region and credentials of one side of the transfer.
struct Side<'a> {
    bucket: &'a str,
    region: Option<&'a str>,
    endpoint: Option<String>,
    path_style: bool,
    secret: Option<&'a str>,
    anonymous: bool,
    requester_pays: bool,
}

impl<'a> From<&'a SourceConfig> for Side<'a> {
    fn from(s: &'a SourceConfig) -> Self {
        let endpoint = s
            .endpoint
            .clone()
            .or_else(|| s.region.as_deref().and_then(|r| s.kind.endpoint_for(r)));
        Side {
            bucket: &s.bucket,
            region: s.region.as_deref(),
            endpoint,
            path_style: s.path_style,
            secret: s.credentials_secret_arn.as_deref(),
            anonymous: s.anonymous,
            requester_pays: s.requester_pays,
        }
    }
}

impl<'a> From<&'a DestinationConfig> for Side<'a> {
    fn from(d: &'a DestinationConfig) -> Self {
        Side {
            bucket: &d.bucket,
            region: d.region.as_deref(),
            endpoint: d.endpoint.clone(),
            path_style: d.path_style,
            secret: d.credentials_secret_arn.as_deref(),
            anonymous: false,
            requester_pays: false,
        }
    }
}

async fn store_for(side: Side<'_>, cp: &ControlPlane, limits: Arc<Limits>) -> S3Store {
    let sdk = match side.region {
        Some(r) => cp
            .sdk
            .clone()
            .into_builder()
            .region(Region::new(r.to_owned()))
            .build(),
        None => cp.sdk.clone(),
    };
    let mut b = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(side.path_style)
        // We send Content-MD5 ourselves and verify ETags; skip the SDK's extra CRC pass over every body.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
    if let Some(e) = side.endpoint {
        b = b.endpoint_url(e);
    }
    let mut secret = None;
    if side.anonymous {
        b.set_credentials_provider(None);
        b = b.allow_no_auth();
    } else if let Some(id) = side.secret {
        let provider = SecretCredentials::new(cp.secrets.clone(), id);
        secret = Some(provider.clone());
        b = b
            .credentials_provider(provider)
            .identity_cache(aws_sdk_s3::config::IdentityCache::no_cache());
    }
    S3Store::new(
        aws_sdk_s3::Client::from_conf(b.build()),
        side.bucket,
        side.requester_pays,
        secret,
        limits,
    )
}

pub async fn source_store(cfg: &JobConfig, cp: &ControlPlane, limits: Arc<Limits>) -> S3Store {
    store_for(Side::from(&cfg.source), cp, limits).await
}

pub async fn destination_store(cfg: &JobConfig, cp: &ControlPlane, limits: Arc<Limits>) -> S3Store {
    store_for(Side::from(&cfg.destination), cp, limits).await
}
