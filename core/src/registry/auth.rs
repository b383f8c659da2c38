//! Registry authentication: where credentials come from ([`CredentialSource`]), the registry's challenge
//! (`WWW-Authenticate`), and Bearer tokens from the registry's token service.
//!
//! A registry says how it wants to be authenticated only when it refuses a request: `401` with
//! `WWW-Authenticate: Basic realm="…"` (a private registry behind htpasswd, ECR) or `Bearer realm="<token
//! service>",service="…",scope="repository:<name>:pull"` (Docker Hub, quay.io, gcr.io, Harbor, JFrog). The
//! client starts anonymous, learns the scheme from the first challenge and from then on sends what it asks for:
//! the Basic credentials with every request, or a token per scope, fetched from the realm (with the Basic
//! credentials when there are some, anonymously otherwise) and cached until it expires or is refused.

use std::fmt;

use async_trait::async_trait;

use crate::error::Result;

/// A username and password (for ECR: `AWS` and the authorization token). The password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl BasicCredentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        use base64::Engine as _;
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Where a registry's credentials come from.
#[async_trait]
pub trait CredentialSource: Send + Sync + fmt::Debug {
    /// The credentials to present; None: anonymous. `refresh` says the registry refused the last ones: fetch
    /// them anew (an expired ECR token, a rotated secret) rather than from a cache.
    async fn credentials(&self, refresh: bool) -> Result<Option<BasicCredentials>>;
}

/// No credentials: public registries and repositories.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

#[async_trait]
impl CredentialSource for Anonymous {
    async fn credentials(&self, _refresh: bool) -> Result<Option<BasicCredentials>> {
        Ok(None)
    }
}

/// Fixed credentials.
#[derive(Debug, Clone)]
pub struct StaticCredentials(pub BasicCredentials);

#[async_trait]
impl CredentialSource for StaticCredentials {
    async fn credentials(&self, _refresh: bool) -> Result<Option<BasicCredentials>> {
        Ok(Some(self.0.clone()))
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        /// The scopes the refused request needed, as the registry names them.
        scope: Option<String>,
    },
    /// A scheme this client does not speak (its name).
    Other(String),
}

impl Challenge {
    /// Parse `Scheme k="v", k2=v2`; values may be quoted and hold commas (`scope="repository:a:pull,push"`).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let params = parse_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if scheme.eq_ignore_ascii_case("basic") {
            Some(Challenge::Basic)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(Challenge::Bearer {
                realm: get("realm")?,
                service: get("service"),
                scope: get("scope"),
            })
        } else if scheme.is_empty() {
            None
        } else {
            Some(Challenge::Other(scheme.to_owned()))
        }
    }
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return out;
        }
        if chars.peek() != Some(&'=') {
            continue;
        }
        chars.next();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name.trim().to_owned(), value.trim().to_owned()));
    }
}

/// A token service's answer: `token` (Docker) or `access_token` (OAuth 2), and how long it lasts.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Seconds; the specification's default is 60.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn token(self) -> Option<String> {
        self.token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm=http://127.0.0.1:1/token, error="invalid_token""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: None,
                scope: None,
            })
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None, "no realm");
        assert_eq!(
            Challenge::parse("Negotiate"),
            Some(Challenge::Other("Negotiate".into()))
        );
        assert_eq!(Challenge::parse(""), None);
    }

    #[test]
    fn passwords_are_not_printed() {
        let c = BasicCredentials::new("AWS", "s3cr3t");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(c.header(), "Basic QVdTOnMzY3IzdA==");
    }
}
