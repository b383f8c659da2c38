//! Building AWS clients from a [`JobConfig`]: endpoints, regions and credentials, including credentials kept
//! in a Secrets Manager secret and re-read when the other side starts refusing them.

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::{self, error::CredentialsError, ProvideCredentials};
use aws_credential_types::Credentials;
use tokio::sync::Mutex;

use crate::config::{AwsConfig, DestinationConfig, JobConfig, SourceConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::limit::Limits;
use crate::requests::{Count, Service};
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
    /// The worker's metrics ([`crate::metrics`]).
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// The longest a request may go without progress ([`AwsConfig::io_timeout`]).
    pub io_timeout: Duration,
}

/// The timeouts of every AWS client, from the longest a request may go without progress (`io`): connecting,
/// each attempt, and the whole operation with its retries. An attempt may take `io` plus 25 s, so that SQS's
/// 20-second long polls fit.
pub fn timeouts(io: Duration) -> TimeoutConfig {
    let attempt = io + Duration::from_secs(25);
    TimeoutConfig::builder()
        .connect_timeout(io.min(Duration::from_secs(10)))
        .operation_attempt_timeout(attempt)
        .operation_timeout(attempt * 3 + Duration::from_secs(30))
        .build()
}

/// The timeouts of a request that carries `bytes` (an upload, or a download's answer): `io` plus one second
/// per 256 KiB (a link down to 256 KiB/s still finishes), per attempt.
pub fn data_timeouts(io: Duration, bytes: u64) -> TimeoutConfig {
    let attempt = io + Duration::from_secs(bytes.div_ceil(256 * 1024));
    TimeoutConfig::builder()
        .connect_timeout(io.min(Duration::from_secs(10)))
        .operation_attempt_timeout(attempt)
        .operation_timeout(attempt.saturating_mul(3) + Duration::from_secs(30))
        .build()
}

async fn load(region: Option<&str>, io: Duration) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts(io));
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
        let sdk = load(cfg.region.as_deref(), cfg.io_timeout()).await;
        let e = &cfg.endpoints;
        let mut sqs = aws_sdk_sqs::config::Builder::from(&sdk).interceptor(Count(Service::Sqs));
        if let Some(u) = &e.sqs {
            sqs = sqs.endpoint_url(u);
        }
        let mut ddb =
            aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(Count(Service::DynamoDb));
        if let Some(u) = &e.dynamodb {
            ddb = ddb.endpoint_url(u);
        }
        let mut sm = aws_sdk_secretsmanager::config::Builder::from(&sdk)
            .interceptor(Count(Service::SecretsManager));
        if let Some(u) = &e.secretsmanager {
            sm = sm.endpoint_url(u);
        }
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk).interceptor(Count(Service::S3));
        if let Some(u) = &e.s3 {
            s3 = s3.endpoint_url(u).force_path_style(true);
        }
        let mut asg =
            aws_sdk_autoscaling::config::Builder::from(&sdk).interceptor(Count(Service::Other));
        if let Some(u) = &e.autoscaling {
            asg = asg.endpoint_url(u);
        }
        let mut cw =
            aws_sdk_cloudwatch::config::Builder::from(&sdk).interceptor(Count(Service::Other));
        if let Some(u) = &e.cloudwatch {
            cw = cw.endpoint_url(u);
        }
        Self {
            cloudwatch: aws_sdk_cloudwatch::Client::from_conf(cw.build()),
            sqs: aws_sdk_sqs::Client::from_conf(sqs.build()),
            autoscaling: aws_sdk_autoscaling::Client::from_conf(asg.build()),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(ddb.build()),
            secrets: aws_sdk_secretsmanager::Client::from_conf(sm.build()),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            sdk,
            io_timeout: cfg.io_timeout(),
        }
    }
}

/// Access keys read from a Secrets Manager secret (`{"access_key_id", "secret_access_key"}`), cached until
/// [`SecretCredentials::invalidate`] is called after a 403, so rotated keys are picked up without a restart.
/// At most one re-read per [`SecretCredentials::REREAD_AFTER`]: a fleet whose keys are refused (revoked, or
/// short of a permission) would otherwise call Secrets Manager once per failed request.
#[derive(Debug, Clone)]
pub struct SecretCredentials {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    cached: Arc<Mutex<Option<(Credentials, std::time::Instant)>>>,
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

    /// The shortest time between two reads of the secret.
    pub const REREAD_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

    /// Forget the keys (they were refused), so that the next request reads the secret again; false, keeping
    /// them, when they were read less than [`Self::REREAD_AFTER`] ago (a rotation is then not what failed).
    pub async fn invalidate(&self) -> bool {
        let mut cached = self.cached.lock().await;
        match cached.as_ref() {
            Some((_, at)) if at.elapsed() < Self::REREAD_AFTER => false,
            _ => {
                *cached = None;
                true
            }
        }
    }

    async fn load(&self) -> Result<Credentials> {
        let mut cached = self.cached.lock().await;
        if let Some((c, _)) = cached.as_ref() {
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
        *cached = Some((creds.clone(), std::time::Instant::now()));
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
        .interceptor(Count(Service::S3))
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
    .with_io_timeout(cp.io_timeout)
}

pub async fn source_store(cfg: &JobConfig, cp: &ControlPlane, limits: Arc<Limits>) -> S3Store {
    store_for(Side::from(&cfg.source), cp, limits).await
}

pub async fn destination_store(cfg: &JobConfig, cp: &ControlPlane, limits: Arc<Limits>) -> S3Store {
    store_for(Side::from(&cfg.destination), cp, limits).await
}

/// An ECR API client in `region` (the control plane's when None), signed with the access keys of secret
/// `secret` (ECR in another account) or the control plane's credentials, at `aws.endpoints.ecr` when set.
pub fn ecr_client(
    cp: &ControlPlane,
    endpoint: Option<&str>,
    region: Option<&str>,
    secret: Option<&str>,
) -> aws_sdk_ecr::Client {
    let sdk = match region {
        Some(r) => cp
            .sdk
            .clone()
            .into_builder()
            .region(Region::new(r.to_owned()))
            .build(),
        None => cp.sdk.clone(),
    };
    let mut b = aws_sdk_ecr::config::Builder::from(&sdk).interceptor(Count(Service::Other));
    if let Some(e) = endpoint {
        b = b.endpoint_url(e);
    }
    if let Some(id) = secret {
        b = b
            .credentials_provider(SecretCredentials::new(cp.secrets.clone(), id))
            .identity_cache(aws_sdk_ecr::config::IdentityCache::no_cache());
    }
    aws_sdk_ecr::Client::from_conf(b.build())
}

/// The registry host of ECR in `account` and `region`: `<account>.dkr.ecr.<region>.amazonaws.com`
/// (`.amazonaws.com.cn` in the China regions).
pub fn ecr_registry_host(account: &str, region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("{account}.dkr.ecr.{region}.{suffix}")
}

/// ECR's registry login: `AWS` and a token from GetAuthorizationToken, kept until shortly before it expires
/// (12 hours after issue) and fetched anew when the registry refuses it. One token opens every registry the
/// credentials may use (GetAuthorizationToken's `registryIds` is deprecated for that reason): `registry_id`
/// only names the registry in messages.
#[derive(Debug)]
pub struct EcrLogin {
    client: aws_sdk_ecr::Client,
    registry_id: Option<String>,
    cached: Mutex<Option<(crate::registry::BasicCredentials, std::time::Instant)>>,
    endpoint: std::sync::Mutex<Option<String>>,
}

impl EcrLogin {
    /// A login to the registry of account `registry_id` (the credentials' own account when None).
    pub fn new(client: aws_sdk_ecr::Client, registry_id: Option<String>) -> Self {
        EcrLogin {
            client,
            registry_id,
            cached: Mutex::new(None),
            endpoint: std::sync::Mutex::new(None),
        }
    }

    /// The registry's URL as GetAuthorizationToken's `proxyEndpoint` gives it (fetching a token if none was).
    pub async fn proxy_endpoint(&self) -> Result<String> {
        if let Some(e) = self
            .endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(e);
        }
        self.fetch().await?;
        self.endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Other,
                    "GetAuthorizationToken gave no proxyEndpoint",
                )
            })
    }

    async fn fetch(&self) -> Result<(crate::registry::BasicCredentials, std::time::Instant)> {
        use base64::Engine as _;
        let what = match &self.registry_id {
            Some(id) => format!("getting an ECR authorization token for registry {id}"),
            None => "getting an ECR authorization token".to_owned(),
        };
        let out = self
            .client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| Error::from_sdk(what.clone(), e))?;
        let data = out.authorization_data().first().ok_or_else(|| {
            Error::new(ErrorKind::Other, format!("{what}: the answer has no token"))
        })?;
        // The token is `base64(AWS:<password>)`; never put it (or its decoding) in an error.
        let decoded = data
            .authorization_token()
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| crate::registry::BasicCredentials::new(u, p))
            })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Other,
                    format!("{what}: the token is not base64 of user:password"),
                )
            })?;
        if let Some(e) = data.proxy_endpoint() {
            *self.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_owned());
        }
        let now = std::time::SystemTime::now();
        let expires = data
            .expires_at()
            .and_then(|t| std::time::SystemTime::try_from(*t).ok());
        // Renewed 15 minutes early. An expiry already past when the token is new says the clocks disagree:
        // the token is used for an hour, or until the registry refuses it.
        let lifetime = match expires.and_then(|t| t.duration_since(now).ok()) {
            Some(d) if d > std::time::Duration::from_secs(20 * 60) => {
                d - std::time::Duration::from_secs(15 * 60)
            }
            Some(d) if !d.is_zero() => d / 2,
            _ => std::time::Duration::from_secs(3600),
        };
        Ok((decoded, std::time::Instant::now() + lifetime))
    }
}

#[async_trait::async_trait]
impl crate::registry::CredentialSource for EcrLogin {
    async fn credentials(
        &self,
        refresh: bool,
    ) -> Result<Option<crate::registry::BasicCredentials>> {
        let mut cached = self.cached.lock().await;
        if let Some((c, until)) = cached.as_ref() {
            if !refresh && *until > std::time::Instant::now() {
                return Ok(Some(c.clone()));
            }
        }
        let (c, until) = self.fetch().await?;
        *cached = Some((c.clone(), until));
        Ok(Some(c))
    }
}

/// A registry login kept in a Secrets Manager secret (`{"username", "password"}`), re-read when the registry
/// refuses it (a rotated password).
#[derive(Debug)]
pub struct SecretLogin {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    cached: Mutex<Option<crate::registry::BasicCredentials>>,
}

impl SecretLogin {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        SecretLogin {
            client,
            secret_id: secret_id.into(),
            cached: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl crate::registry::CredentialSource for SecretLogin {
    async fn credentials(
        &self,
        refresh: bool,
    ) -> Result<Option<crate::registry::BasicCredentials>> {
        #[derive(serde::Deserialize)]
        struct Login {
            username: String,
            password: String,
        }
        let mut cached = self.cached.lock().await;
        if let (Some(c), false) = (cached.as_ref(), refresh) {
            return Ok(Some(c.clone()));
        }
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| {
                Error::from_sdk(
                    format!("reading registry login secret {}", self.secret_id),
                    e,
                )
            })?;
        let text = out.secret_string().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "registry login secret {} has no string value",
                    self.secret_id
                ),
            )
        })?;
        // Never put the secret's text in an error.
        let login: Login = serde_json::from_str(text).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "registry login secret {} must be JSON {{\"username\": ..., \"password\": ...}}",
                    self.secret_id
                ),
            )
        })?;
        let c = crate::registry::BasicCredentials::new(login.username, login.password);
        *cached = Some(c.clone());
        Ok(Some(c))
    }
}

/// The repositories of an ECR registry (DescribeRepositories, every page).
pub async fn ecr_repositories(
    client: &aws_sdk_ecr::Client,
    registry_id: Option<&str>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .describe_repositories()
            .set_registry_id(registry_id.map(str::to_owned))
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| Error::from_sdk("listing ECR repositories", e))?;
        out.extend(
            page.repositories()
                .iter()
                .filter_map(|r| r.repository_name().map(str::to_owned)),
        );
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// The images of an ECR repository (ListImages, every page): `(tag, digest)`, one entry per tag; with
/// `untagged`, also the images without a tag (tag None).
pub async fn ecr_images(
    client: &aws_sdk_ecr::Client,
    registry_id: Option<&str>,
    repository: &str,
    untagged: bool,
) -> Result<Vec<(Option<String>, String)>> {
    use aws_sdk_ecr::types::{ListImagesFilter, TagStatus};
    let status = if untagged {
        TagStatus::Any
    } else {
        TagStatus::Tagged
    };
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_images()
            .set_registry_id(registry_id.map(str::to_owned))
            .repository_name(repository)
            .filter(
                ListImagesFilter::builder()
                    .tag_status(status.clone())
                    .build(),
            )
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| {
                Error::from_sdk(
                    format!("listing the images of ECR repository {repository}"),
                    e,
                )
            })?;
        for id in page.image_ids() {
            if let Some(d) = id.image_digest() {
                let tag = id.image_tag().map(str::to_owned);
                if tag.is_some() || untagged {
                    out.push((tag, d.to_owned()));
                }
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// Create ECR repository `name` unless it exists; true when it was created.
pub async fn ensure_ecr_repository(
    client: &aws_sdk_ecr::Client,
    registry_id: Option<&str>,
    name: &str,
) -> Result<bool> {
    let found = client
        .describe_repositories()
        .set_registry_id(registry_id.map(str::to_owned))
        .repository_names(name)
        .send()
        .await
        .map_err(|e| Error::from_sdk(format!("describing ECR repository {name}"), e));
    match found {
        Ok(_) => return Ok(false),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    let created = client
        .create_repository()
        .set_registry_id(registry_id.map(str::to_owned))
        .repository_name(name)
        .send()
        .await
        .map_err(|e| Error::from_sdk(format!("creating ECR repository {name}"), e));
    match created {
        Ok(_) => Ok(true),
        // Created meanwhile by another finder run.
        Err(e) if e.code() == Some("RepositoryAlreadyExistsException") => Ok(false),
        Err(e) => Err(e),
    }
}
