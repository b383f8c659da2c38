//! One registry's distribution API over hyper: authentication, retries, redirects and errors, and the calls
//! an image copy makes (catalog, tags, manifests, blobs, uploads).
//!
//! Every request body is held in memory (manifests, and upload chunks of at most the copy's chunk size), so
//! any request can be sent again: after a 401 with new credentials, or after a 429, a 5xx or a broken
//! connection, with exponential backoff (and the registry's `Retry-After`). Responses are streamed: a blob is
//! read frame by frame ([`BlobReader`]), never whole.
//!
//! TLS uses the platform's trust roots, as the AWS SDK's HTTPS client does (`SSL_CERT_FILE` and
//! `SSL_CERT_DIR` are honoured), with the same rustls and crypto provider.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::auth::{Challenge, CredentialSource, TokenResponse};
use super::manifest::{Manifest, ACCEPT, MAX_MANIFEST_BYTES};
use super::RegistryAddress;
use crate::error::{Error, ErrorKind, Result};
use crate::limit::Limits;

type Http = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Longest wait for a response's head, and between two frames of a body.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts of one request after the first, on 429, 5xx and transport errors.
const RETRIES: u32 = 6;
/// Redirects followed by one request (blob downloads go to object storage or a CDN).
const MAX_REDIRECTS: u32 = 5;
/// Error bodies read for their code and message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Query values: everything but unreserved characters is escaped (`sha256%3A…`, `team%2Fapp`).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A registry's API. Cheap to clone: clones share the connection pool, credentials and tokens.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("address", &self.inner.address)
            .finish()
    }
}

struct Inner {
    address: RegistryAddress,
    http: Http,
    credentials: Arc<dyn CredentialSource>,
    state: Mutex<AuthState>,
    /// Held while the registry is asked for its scheme, so that requests starting together ask once.
    ping: tokio::sync::Mutex<()>,
    requests: AtomicU64,
    limits: Option<Arc<Limits>>,
    retries: u32,
}

#[derive(Default)]
struct AuthState {
    scheme: Scheme,
    /// Bearer tokens by the scopes they were issued for.
    tokens: HashMap<String, Token>,
}

#[derive(Debug, Clone, Default)]
enum Scheme {
    /// Not asked yet: the first request asks (`GET /v2/`) before any other goes out.
    #[default]
    Unknown,
    /// `/v2/` answered without a challenge: requests go out anonymously until one is refused.
    Open,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    until: Instant,
}

/// What a manifest `HEAD` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: String,
    pub media_type: Option<String>,
}

/// An upload session at the destination: where the next chunk goes, and how much it holds.
#[derive(Debug, Clone)]
pub struct Upload {
    location: String,
    repository: String,
    pub offset: u64,
}

/// The answer to starting an upload.
#[derive(Debug)]
pub enum UploadStart {
    /// The blob was mounted from the other repository: nothing to upload.
    Mounted,
    /// An upload session (the registry declined the mount, or none was asked for).
    Session(Upload),
}

/// A blob's body, read frame by frame.
pub struct BlobReader {
    body: Incoming,
    limits: Option<Arc<Limits>>,
    what: String,
}

impl BlobReader {
    /// The next piece of the blob; None at its end. A stalled or broken download is a transient error.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            let frame = tokio::time::timeout(IDLE_TIMEOUT, self.body.frame())
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Transient,
                        format!("{}: no data for {IDLE_TIMEOUT:?}", self.what),
                    )
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(Error::with_source(
                        ErrorKind::Transient,
                        format!("{}: the download broke off", self.what),
                        e,
                    ))
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        if let Some(l) = &self.limits {
                            l.bytes(data.len() as u64).await;
                        }
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// The scopes a request needs, as a token service names them.
fn pull(repo: &str) -> Vec<String> {
    vec![format!("repository:{repo}:pull")]
}

fn push(repo: &str) -> Vec<String> {
    vec![format!("repository:{repo}:pull,push")]
}

fn https_client() -> Http {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(b) => b,
        Err(e) => {
            // Plain-HTTP registries still work; HTTPS ones fail with an unknown-issuer error that says why.
            tracing::warn!(
                "no trust roots found for registry TLS ({e}): HTTPS registries will be refused"
            );
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .expect("the default provider supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let https = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
}

/// Backoff before retry `attempt` (1-based): 250 ms doubling to 8 s, ±25 %, or the registry's Retry-After.
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(d) = retry_after {
        return d.min(Duration::from_secs(30));
    }
    let base = 250u64 << attempt.saturating_sub(1).min(5);
    let jitter = fastrand::u64(..=base / 2);
    Duration::from_millis(base - base / 4 + jitter)
}

fn retry_after(resp: &Response<Incoming>) -> Option<Duration> {
    resp.headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

fn header_str<'a>(resp: &'a Response<Incoming>, name: &str) -> Option<&'a str> {
    resp.headers().get(name)?.to_str().ok()
}

/// `scheme://authority` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// A `Location` (absolute, or relative to `current`) as an absolute URL.
fn resolve(current: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(current))
    } else {
        let dir = current
            .split('?')
            .next()
            .unwrap_or(current)
            .rsplit_once('/')
            .map_or(current, |(d, _)| d);
        format!("{dir}/{location}")
    }
}

/// The `rel="next"` target of a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let part = part.trim();
        let (target, params) = part.split_once(';')?;
        params
            .contains("rel=\"next\"")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
            .or_else(|| {
                params
                    .contains("rel=next")
                    .then(|| target.trim().trim_matches(['<', '>']).to_owned())
            })
    })
}

/// The registry's error code and message from an error body (`{"errors": [{"code", "message"}]}`).
fn error_detail(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => {
            let first = &e.errors[0];
            (first.code.clone(), first.message.clone())
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            (
                None,
                (!text.is_empty()).then(|| text.chars().take(200).collect()),
            )
        }
    }
}

/// An error for a registry's non-success answer: the kind from the status (and code), the text naming what
/// was asked, the status and the registry's code and message.
pub(crate) fn status_error(what: &str, status: StatusCode, body: &[u8]) -> Error {
    let (code, message) = error_detail(body);
    let kind = match (code.as_deref(), status.as_u16()) {
        // An upload session the registry lost, or whose state moved on (a chunk it took while its answer was
        // lost: docker-registry answers 404 BLOB_UPLOAD_INVALID, others 416): start the blob again.
        (Some("BLOB_UPLOAD_UNKNOWN" | "BLOB_UPLOAD_INVALID" | "RANGE_INVALID"), _) | (_, 416) => {
            ErrorKind::Transient
        }
        (Some("DENIED" | "UNAUTHORIZED"), _) | (_, 401 | 403) => ErrorKind::AccessDenied,
        (Some("TOOMANYREQUESTS"), _) | (_, 429) => ErrorKind::Throttled,
        (_, 404) => ErrorKind::NotFound,
        (_, s) if s >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Other,
    };
    let mut text = format!("{what}: HTTP {}", status.as_u16());
    if let Some(c) = &code {
        text.push(' ');
        text.push_str(c);
    }
    if let Some(m) = &message {
        text.push_str(": ");
        text.push_str(m);
    } else if kind == ErrorKind::AccessDenied {
        text.push_str(": the registry refused the credentials (or they do not allow this)");
    }
    let e = Error::new(kind, text);
    match code {
        Some(c) => e.with_code(c),
        None => e,
    }
}

/// Read a (small) body whole, failing past `max` bytes.
async fn read_limited(resp: Response<Incoming>, max: usize, what: &str) -> Result<Bytes> {
    let mut body = resp.into_body();
    let mut out = bytes::BytesMut::new();
    loop {
        let frame = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Transient,
                    format!("{what}: no data for {IDLE_TIMEOUT:?}"),
                )
            })?;
        match frame {
            None => return Ok(out.freeze()),
            Some(Err(e)) => {
                return Err(Error::with_source(
                    ErrorKind::Transient,
                    format!("{what}: reading the answer"),
                    e,
                ))
            }
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    if out.len() + data.len() > max {
                        return Err(Error::new(
                            ErrorKind::Other,
                            format!("{what}: the answer is larger than {max} bytes"),
                        ));
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}

/// An error body, as far as it goes (never an error itself).
async fn error_body(resp: Response<Incoming>) -> Bytes {
    read_limited(resp, MAX_ERROR_BODY, "")
        .await
        .unwrap_or_default()
}

/// Why one exchange produced no answer.
enum Failed {
    /// The request could not be built (a registry's `Location` that is not a URL): sending it again won't help.
    Invalid(String),
    /// The connection failed, broke, or no answer came in time: worth another try.
    Transport(String),
}

/// One request as [`Registry::send`] sends it (and sends again).
struct Call<'a> {
    method: Method,
    url: String,
    headers: Vec<(header::HeaderName, String)>,
    body: Bytes,
    scopes: &'a [String],
    what: &'a str,
}

impl<'a> Call<'a> {
    fn new(method: Method, url: String, scopes: &'a [String], what: &'a str) -> Self {
        Call {
            method,
            url,
            headers: Vec::new(),
            body: Bytes::new(),
            scopes,
            what,
        }
    }

    fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }
}

impl Registry {
    /// A client of the registry at `address`, authenticating with what `credentials` gives when the registry
    /// asks; `limits` (the worker's request and bandwidth limits) apply to every request and blob byte.
    pub fn new(
        address: RegistryAddress,
        credentials: Arc<dyn CredentialSource>,
        limits: Option<Arc<Limits>>,
    ) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                address,
                http: https_client(),
                credentials,
                state: Mutex::default(),
                ping: tokio::sync::Mutex::new(()),
                requests: AtomicU64::new(0),
                limits,
                retries: RETRIES,
            }),
        }
    }

    pub fn address(&self) -> &RegistryAddress {
        &self.inner.address
    }

    /// Requests sent so far (every attempt, token requests included).
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.address.base_url())
    }

    /// `repo:tag` or `repo@digest` at this registry, for messages.
    pub fn describe(&self, repository: &str, reference: &str) -> String {
        let sep = if super::is_digest(reference) {
            '@'
        } else {
            ':'
        };
        format!("{}/{repository}{sep}{reference}", self.inner.address)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One HTTP exchange, no retries.
    async fn once(
        &self,
        method: &Method,
        url: &str,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
        authorization: Option<&str>,
    ) -> std::result::Result<Response<Incoming>, Failed> {
        if let Some(l) = &self.inner.limits {
            l.request().await;
        }
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let mut b = Request::builder().method(method.clone()).uri(url).header(
            header::USER_AGENT,
            format!("dth/{}", crate::build_info::VERSION),
        );
        for (k, v) in headers {
            b = b.header(k, v.as_str());
        }
        if let Some(a) = authorization {
            b = b.header(header::AUTHORIZATION, a);
        }
        let req = b.body(Full::new(body)).map_err(|e| {
            Failed::Invalid(format!(
                "{url:?} is not a request this client can send ({e})"
            ))
        })?;
        match tokio::time::timeout(IDLE_TIMEOUT, self.inner.http.request(req)).await {
            Err(_) => Err(Failed::Transport(format!(
                "no answer within {IDLE_TIMEOUT:?}"
            ))),
            Ok(Err(e)) => {
                // hyper_util's error hides the cause (connection refused, reset) behind "client error".
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text = format!("{text}: {s}");
                    source = s.source();
                }
                Err(Failed::Transport(text))
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// The `Authorization` header for a request needing `scopes`, as far as the registry's scheme is known.
    async fn authorization(&self, scopes: &[String]) -> Result<Option<String>> {
        if matches!(self.state().scheme, Scheme::Unknown) {
            let _asking = self.inner.ping.lock().await;
            if matches!(self.state().scheme, Scheme::Unknown) {
                let learned = self.ping().await;
                self.state().scheme = learned;
            }
        }
        let scheme = self.state().scheme.clone();
        match scheme {
            Scheme::Unknown | Scheme::Open => Ok(None),
            Scheme::Basic => Ok(self
                .inner
                .credentials
                .credentials(false)
                .await?
                .map(|c| c.header())),
            Scheme::Bearer { realm, service } => {
                let key = scopes.join(" ");
                let cached = self
                    .state()
                    .tokens
                    .get(&key)
                    .filter(|t| t.until > Instant::now())
                    .map(|t| t.value.clone());
                let token = match cached {
                    Some(t) => t,
                    None => {
                        let t = self
                            .fetch_token(&realm, service.as_deref(), scopes, false)
                            .await?;
                        let value = t.value.clone();
                        self.state().tokens.insert(key, t);
                        value
                    }
                };
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Ask the registry how it authenticates (`GET /v2/`, as Docker's clients do): one request, rather than a
    /// refused one per request in flight. Anything but a challenge leaves requests anonymous until refused.
    async fn ping(&self) -> Scheme {
        let url = self.url("/v2/");
        let Ok(resp) = self.once(&Method::GET, &url, &[], Bytes::new(), None).await else {
            return Scheme::Open;
        };
        let challenge = (resp.status() == StatusCode::UNAUTHORIZED)
            .then(|| header_str(&resp, "www-authenticate").and_then(Challenge::parse))
            .flatten();
        let _ = error_body(resp).await;
        match challenge {
            Some(Challenge::Basic) => Scheme::Basic,
            Some(Challenge::Bearer { realm, service, .. }) => Scheme::Bearer { realm, service },
            _ => Scheme::Open,
        }
    }

    /// Ask the token service at `realm` for a token for `scopes`, with the Basic credentials if there are some.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        refresh: bool,
    ) -> Result<Token> {
        let mut url = realm.to_owned();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(s) = service {
            url.push_str(&format!("{sep}service={}", utf8_percent_encode(s, QUERY)));
            sep = '&';
        }
        for s in scopes {
            url.push_str(&format!("{sep}scope={}", utf8_percent_encode(s, QUERY)));
            sep = '&';
        }
        let what = format!(
            "getting a token for {} from {realm} (registry {})",
            scopes.join(" "),
            self.inner.address
        );
        let auth = self
            .inner
            .credentials
            .credentials(refresh)
            .await?
            .map(|c| c.header());
        let mut attempt = 0;
        loop {
            let res = self
                .once(&Method::GET, &url, &[], Bytes::new(), auth.as_deref())
                .await;
            let resp = match res {
                Err(Failed::Invalid(e)) => {
                    return Err(Error::new(ErrorKind::Other, format!("{what}: {e}")))
                }
                Err(Failed::Transport(e)) => {
                    attempt += 1;
                    if attempt > self.inner.retries {
                        return Err(Error::new(ErrorKind::Transient, format!("{what}: {e}")));
                    }
                    tokio::time::sleep(backoff(attempt, None)).await;
                    continue;
                }
                Ok(r) => r,
            };
            let status = resp.status();
            if status.is_success() {
                let body = read_limited(resp, MAX_ERROR_BODY, &what).await?;
                let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                    Error::new(
                        ErrorKind::Other,
                        format!("{what}: the answer is not a token"),
                    )
                })?;
                let lifetime = parsed.expires_in.unwrap_or(60).max(10);
                let value = parsed.token().ok_or_else(|| {
                    Error::new(ErrorKind::Other, format!("{what}: the answer has no token"))
                })?;
                // Renewed a little before it expires: a token must not run out between check and use.
                return Ok(Token {
                    value,
                    until: Instant::now() + Duration::from_secs(lifetime - lifetime / 10),
                });
            }
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && attempt < self.inner.retries
            {
                attempt += 1;
                let wait = backoff(attempt, retry_after(&resp));
                let _ = error_body(resp).await;
                tokio::time::sleep(wait).await;
                continue;
            }
            let body = error_body(resp).await;
            return Err(status_error(&what, status, &body));
        }
    }

    /// The registry refused a request (401) with `challenge`: learn its scheme and get what it asks for.
    /// `sent` says whether the refused request carried credentials or a token (then they are refreshed).
    async fn learn(&self, challenge: Challenge, scopes: &[String], sent: bool) -> Result<()> {
        match challenge {
            Challenge::Basic => {
                let was_basic = matches!(self.state().scheme, Scheme::Basic);
                if was_basic && sent {
                    self.inner.credentials.credentials(true).await?;
                }
                self.state().scheme = Scheme::Basic;
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let key = scopes.join(" ");
                let had = {
                    let mut st = self.state();
                    st.scheme = Scheme::Bearer {
                        realm: realm.clone(),
                        service: service.clone(),
                    };
                    st.tokens.remove(&key).is_some()
                };
                let mut wanted = scopes.to_vec();
                if let Some(s) = scope {
                    for part in s.split(' ').filter(|p| !p.is_empty()) {
                        if !wanted.iter().any(|w| w == part) {
                            wanted.push(part.to_owned());
                        }
                    }
                }
                let token = self
                    .fetch_token(&realm, service.as_deref(), &wanted, had && sent)
                    .await?;
                self.state().tokens.insert(key, token);
                Ok(())
            }
            Challenge::Other(scheme) => Err(Error::new(
                ErrorKind::AccessDenied,
                format!(
                    "registry {} asks for {scheme} authentication; this client speaks Basic and Bearer",
                    self.inner.address
                ),
            )),
        }
    }

    /// Send `call`: authenticated as the registry asks, retried on 429, 5xx and transport errors, redirects
    /// followed (without credentials to another host). Returns the first other answer, whatever its status.
    async fn send(&self, call: &Call<'_>) -> Result<Response<Incoming>> {
        let mut url = call.url.clone();
        let mut attempt = 0u32;
        let mut auth_rounds = 0u32;
        let mut redirects = 0u32;
        let own = self.inner.address.base_url();
        loop {
            let ours = origin(&url) == own;
            let auth = if ours {
                self.authorization(call.scopes).await?
            } else {
                None
            };
            let resp = match self
                .once(
                    &call.method,
                    &url,
                    &call.headers,
                    call.body.clone(),
                    auth.as_deref(),
                )
                .await
            {
                Ok(r) => r,
                Err(Failed::Invalid(e)) => {
                    return Err(Error::new(ErrorKind::Other, format!("{}: {e}", call.what)))
                }
                Err(Failed::Transport(e)) => {
                    attempt += 1;
                    if attempt > self.inner.retries {
                        return Err(Error::new(
                            ErrorKind::Transient,
                            format!("{}: {e} (after {attempt} attempts)", call.what),
                        ));
                    }
                    tracing::debug!("{}: {e}; retrying", call.what);
                    tokio::time::sleep(backoff(attempt, None)).await;
                    continue;
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && ours {
                auth_rounds += 1;
                let challenge = header_str(&resp, "www-authenticate").and_then(Challenge::parse);
                let body = error_body(resp).await;
                match challenge {
                    Some(c) if auth_rounds <= 2 => {
                        self.learn(c, call.scopes, auth.is_some())
                            .await
                            .map_err(|e| e.context(call.what))?;
                        continue;
                    }
                    _ => return Err(status_error(call.what, status, &body)),
                }
            }
            if status == StatusCode::TOO_MANY_REQUESTS
                || matches!(status.as_u16(), 500 | 502 | 503 | 504)
            {
                attempt += 1;
                let wait = backoff(attempt, retry_after(&resp));
                let body = error_body(resp).await;
                if attempt > self.inner.retries {
                    return Err(status_error(call.what, status, &body));
                }
                tracing::debug!(
                    "{}: HTTP {}; retrying in {wait:?}",
                    call.what,
                    status.as_u16()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            if status.is_redirection()
                && (call.method == Method::GET || call.method == Method::HEAD)
            {
                if let Some(loc) = header_str(&resp, "location") {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(Error::new(
                            ErrorKind::Other,
                            format!("{}: more than {MAX_REDIRECTS} redirects", call.what),
                        ));
                    }
                    url = resolve(&url, loc);
                    let _ = error_body(resp).await;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// Every repository of the registry (`/v2/_catalog`, followed page by page).
    pub async fn catalog(&self) -> Result<Vec<String>> {
        let what = format!("listing the repositories of registry {}", self.address());
        let scopes = vec!["registry:catalog:*".to_owned()];
        self.paged(
            "/v2/_catalog?n=1000",
            &scopes,
            &what,
            "repositories",
            "catalog",
        )
        .await
    }

    /// Every tag of `repository` (`/v2/<name>/tags/list`, followed page by page).
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>> {
        let what = format!("listing the tags of {}/{repository}", self.inner.address);
        let path = format!("/v2/{repository}/tags/list?n=1000");
        self.paged(&path, &pull(repository), &what, "tags", "tag list")
            .await
    }

    /// A paginated list of names: the strings under `field` of each page (null or absent: none), following the
    /// `Link` header's next page until there is none or a page comes back empty. `kind` names the document in
    /// errors.
    async fn paged(
        &self,
        path: &str,
        scopes: &[String],
        what: &str,
        field: &str,
        kind: &str,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut url = self.url(path);
        loop {
            let resp = self
                .send(&Call::new(Method::GET, url.clone(), scopes, what))
                .await?;
            let status = resp.status();
            if !status.is_success() {
                let body = error_body(resp).await;
                return Err(status_error(what, status, &body));
            }
            let next = header_str(&resp, "link").and_then(next_link);
            let body = read_limited(resp, 64 * 1024 * 1024, what).await?;
            let not_one =
                |e: String| Error::new(ErrorKind::Other, format!("{what}: not a {kind} ({e})"));
            let page: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| not_one(e.to_string()))?;
            if !page.is_object() {
                return Err(not_one("not a JSON object".into()));
            }
            let names: Vec<String> = match page.get(field) {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| not_one(e.to_string()))?,
            };
            let empty = names.is_empty();
            out.extend(names);
            match next {
                Some(n) if !empty => url = resolve(&url, &n),
                _ => return Ok(out),
            }
        }
    }

    /// The digest `repository:reference` points at, or None when there is no such manifest (or repository).
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<ManifestHead>> {
        let what = format!("HEAD manifest {}", self.describe(repository, reference));
        let scopes = pull(repository);
        let call = Call::new(
            Method::HEAD,
            self.url(&format!("/v2/{repository}/manifests/{reference}")),
            &scopes,
            &what,
        )
        .header(header::ACCEPT, ACCEPT);
        let resp = self.send(&call).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = error_body(resp).await;
            return Err(status_error(&what, status, &body));
        }
        let media_type = header_str(&resp, "content-type").map(str::to_owned);
        let digest = header_str(&resp, "docker-content-digest").map(str::to_owned);
        let _ = error_body(resp).await;
        match digest {
            Some(d) if crate::image_config::check_digest(&d).is_ok() => Ok(Some(ManifestHead {
                digest: d,
                media_type,
            })),
            // No digest header (allowed for a HEAD by tag): the manifest's own bytes say.
            _ => match self.get_manifest(repository, reference).await {
                Ok(m) => Ok(Some(ManifestHead {
                    digest: m.digest,
                    media_type: Some(m.media_type),
                })),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// The manifest `repository:reference`; by digest, its bytes are checked against the digest.
    pub async fn get_manifest(&self, repository: &str, reference: &str) -> Result<Manifest> {
        let what = format!("GET manifest {}", self.describe(repository, reference));
        if super::is_digest(reference) && !reference.starts_with("sha256:") {
            return Err(Error::new(
                ErrorKind::Other,
                format!("{what}: only sha256 digests are verified by this client"),
            ));
        }
        let scopes = pull(repository);
        let call = Call::new(
            Method::GET,
            self.url(&format!("/v2/{repository}/manifests/{reference}")),
            &scopes,
            &what,
        )
        .header(header::ACCEPT, ACCEPT);
        let resp = self.send(&call).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = error_body(resp).await;
            return Err(status_error(&what, status, &body));
        }
        let content_type = header_str(&resp, "content-type").map(str::to_owned);
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES, &what).await?;
        let m =
            Manifest::from_bytes(bytes, content_type.as_deref()).map_err(|e| e.context(&what))?;
        if super::is_digest(reference) && m.digest != reference {
            return Err(Error::integrity(format!(
                "{what}: the registry served a manifest whose digest is {}",
                m.digest
            )));
        }
        Ok(m)
    }

    /// Push `manifest` byte for byte as `repository:reference` (a tag or its digest), with its media type.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<()> {
        let what = format!("PUT manifest {}", self.describe(repository, reference));
        let scopes = push(repository);
        let call = Call::new(
            Method::PUT,
            self.url(&format!("/v2/{repository}/manifests/{reference}")),
            &scopes,
            &what,
        )
        .header(header::CONTENT_TYPE, manifest.media_type.clone())
        .body(manifest.bytes.clone());
        let resp = self.send(&call).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = error_body(resp).await;
            return Err(status_error(&what, status, &body));
        }
        let stored = header_str(&resp, "docker-content-digest").map(str::to_owned);
        let _ = error_body(resp).await;
        match stored {
            Some(d) if d != manifest.digest => Err(Error::integrity(format!(
                "{what}: the registry stored it as {d}, not {}",
                manifest.digest
            ))),
            _ => Ok(()),
        }
    }

    /// The size of blob `digest` in `repository`, or None when it is not there.
    pub async fn blob_size(&self, repository: &str, digest: &str) -> Result<Option<u64>> {
        let what = format!("HEAD blob {digest} in {}/{repository}", self.inner.address);
        let scopes = pull(repository);
        let call = Call::new(
            Method::HEAD,
            self.url(&format!("/v2/{repository}/blobs/{digest}")),
            &scopes,
            &what,
        );
        let resp = self.send(&call).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = error_body(resp).await;
            return Err(status_error(&what, status, &body));
        }
        let size = header_str(&resp, "content-length").and_then(|v| v.parse().ok());
        let _ = error_body(resp).await;
        Ok(Some(size.unwrap_or(0)))
    }

    /// Start reading blob `digest` of `repository` (following the registry's redirect to its storage).
    pub async fn get_blob(&self, repository: &str, digest: &str) -> Result<BlobReader> {
        let what = format!("GET blob {digest} of {}/{repository}", self.inner.address);
        let scopes = pull(repository);
        let call = Call::new(
            Method::GET,
            self.url(&format!("/v2/{repository}/blobs/{digest}")),
            &scopes,
            &what,
        );
        let resp = self.send(&call).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = error_body(resp).await;
            return Err(status_error(&what, status, &body));
        }
        Ok(BlobReader {
            body: resp.into_body(),
            limits: self.inner.limits.clone(),
            what,
        })
    }

    /// Start an upload to `repository`; with `mount = (digest, from)`, first ask the registry to mount the
    /// blob from repository `from` (same registry): a 201 means it is there, a 202 is an ordinary session.
    pub async fn start_upload(
        &self,
        repository: &str,
        mount: Option<(&str, &str)>,
    ) -> Result<UploadStart> {
        let mut path = format!("/v2/{repository}/blobs/uploads/");
        let mut scopes = push(repository);
        let what = match mount {
            Some((digest, from)) => {
                path.push_str(&format!(
                    "?mount={}&from={}",
                    utf8_percent_encode(digest, QUERY),
                    utf8_percent_encode(from, QUERY)
                ));
                scopes.extend(pull(from));
                format!(
                    "mounting blob {digest} from {from} into {}/{repository}",
                    self.inner.address
                )
            }
            None => format!("starting an upload to {}/{repository}", self.inner.address),
        };
        let call = Call::new(Method::POST, self.url(&path), &scopes, &what);
        let resp = self.send(&call).await?;
        let status = resp.status();
        if status == StatusCode::CREATED && mount.is_some() {
            let _ = error_body(resp).await;
            return Ok(UploadStart::Mounted);
        }
        if status != StatusCode::ACCEPTED {
            let body = error_body(resp).await;
            return Err(status_error(&what, status, &body));
        }
        let location = header_str(&resp, "location").map(str::to_owned);
        let _ = error_body(resp).await;
        let location = location.ok_or_else(|| {
            Error::new(
                ErrorKind::Transient,
                format!("{what}: the registry gave no upload location"),
            )
        })?;
        Ok(UploadStart::Session(Upload {
            location: resolve(&self.url("/v2/"), &location),
            repository: repository.to_owned(),
            offset: 0,
        }))
    }

    /// Append `chunk` to the upload (`PATCH` with its `Content-Range`).
    pub async fn upload_chunk(&self, upload: &mut Upload, chunk: Bytes) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let end = upload.offset + chunk.len() as u64 - 1;
        let what = format!(
            "uploading bytes {}-{end} to {}/{}",
            upload.offset, self.inner.address, upload.repository
        );
        let scopes = push(&upload.repository);
        let call = Call::new(Method::PATCH, upload.location.clone(), &scopes, &what)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_RANGE, format!("{}-{end}", upload.offset))
            .body(chunk.clone());
        let resp = self.send(&call).await?;
        let status = resp.status();
        if status != StatusCode::ACCEPTED && status != StatusCode::NO_CONTENT {
            let body = error_body(resp).await;
            return Err(status_error(&what, status, &body));
        }
        if let Some(loc) = header_str(&resp, "location") {
            upload.location = resolve(&upload.location, loc);
        }
        let _ = error_body(resp).await;
        upload.offset += chunk.len() as u64;
        Ok(())
    }

    /// Commit the upload as blob `digest` (`PUT ?digest=`).
    pub async fn finish_upload(&self, upload: Upload, digest: &str) -> Result<()> {
        let what = format!(
            "committing blob {digest} to {}/{}",
            self.inner.address, upload.repository
        );
        let sep = if upload.location.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!(
            "{}{sep}digest={}",
            upload.location,
            utf8_percent_encode(digest, QUERY)
        );
        let scopes = push(&upload.repository);
        let call = Call::new(Method::PUT, url, &scopes, &what)
            .header(header::CONTENT_TYPE, "application/octet-stream");
        let resp = self.send(&call).await?;
        let status = resp.status();
        let body = error_body(resp).await;
        if !status.is_success() {
            return Err(status_error(&what, status, &body));
        }
        Ok(())
    }

    /// Abandon an upload (best effort: a registry expires abandoned sessions anyway).
    pub async fn cancel_upload(&self, upload: Upload) {
        let what = format!("cancelling an upload to {}", upload.repository);
        let scopes = push(&upload.repository);
        let call = Call::new(Method::DELETE, upload.location.clone(), &scopes, &what);
        if let Ok(resp) = self.send(&call).await {
            let _ = error_body(resp).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve() {
        let cur = "http://127.0.0.1:5000/v2/app/blobs/uploads/abc?_state=x";
        assert_eq!(
            resolve(cur, "/v2/app/blobs/uploads/def?_state=y"),
            "http://127.0.0.1:5000/v2/app/blobs/uploads/def?_state=y"
        );
        assert_eq!(
            resolve(cur, "https://s3.example/bucket/key?X-Amz=1"),
            "https://s3.example/bucket/key?X-Amz=1"
        );
        assert_eq!(
            resolve(cur, "def"),
            "http://127.0.0.1:5000/v2/app/blobs/uploads/def"
        );
        assert_eq!(origin(cur), "http://127.0.0.1:5000");
        assert_eq!(origin("https://h"), "https://h");
    }

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
    }

    #[test]
    fn errors_carry_status_code_and_message() {
        let e = status_error(
            "GET manifest r/app:1",
            StatusCode::NOT_FOUND,
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"1"}}]}"#,
        );
        assert_eq!(
            e.to_string(),
            "GET manifest r/app:1: HTTP 404 MANIFEST_UNKNOWN: manifest unknown"
        );
        assert!(e.is_not_found());
        assert_eq!(e.code(), Some("MANIFEST_UNKNOWN"));
        let e = status_error("x", StatusCode::UNAUTHORIZED, b"");
        assert_eq!(e.kind(), ErrorKind::AccessDenied);
        assert_eq!(
            e.to_string(),
            "x: HTTP 401: the registry refused the credentials (or they do not allow this)"
        );
        let e = status_error(
            "x",
            StatusCode::BAD_REQUEST,
            br#"{"errors":[{"code":"BLOB_UPLOAD_INVALID"}]}"#,
        );
        assert!(e.is_retryable());
        assert!(status_error("x", StatusCode::SERVICE_UNAVAILABLE, b"busy").is_retryable());
        // docker-registry's answer to a chunk sent again after the registry took it.
        let e = status_error(
            "x",
            StatusCode::NOT_FOUND,
            br#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"blob upload invalid"}]}"#,
        );
        assert!(e.is_retryable(), "{e}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1, None) <= Duration::from_millis(320));
        assert!(backoff(20, None) <= Duration::from_secs(10));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(600))),
            Duration::from_secs(30)
        );
    }
}
