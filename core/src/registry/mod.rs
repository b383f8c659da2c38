//! A client of the distribution API (the OCI Distribution Specification, which Docker's Registry HTTP API V2
//! became), for copying container images between registries with their digests preserved.
//!
//! - [`RegistryAddress`]: where a registry is (`host[:port]` is HTTPS; `http://` and `https://` URLs say so).
//! - [`auth`]: anonymous, Basic and Bearer-token authentication; a [`CredentialSource`] that can be refreshed
//!   (ECR's tokens expire after 12 hours, a secret may be rotated).
//! - [`Registry`]: one registry's API over hyper, with retries on 429, 5xx and broken connections, redirects
//!   (blob downloads usually go to object storage), and errors that name the image, the registry and the
//!   registry's own error code.
//! - [`manifest`]: Docker schema 2 and OCI manifests, Docker manifest lists and OCI indexes; which manifests a
//!   platform selection pushes ([`manifest::Plan`]).
//! - [`copy`]: one image from a source registry to a destination registry: blobs skipped when present,
//!   mounted across repositories of one registry, otherwise streamed in chunks with the digest verified before
//!   the upload is committed; manifests pushed byte for byte, children before the index, the tag last.

pub mod auth;
pub mod client;
pub mod copy;
pub mod manifest;

use std::fmt;

pub use auth::{Anonymous, BasicCredentials, CredentialSource, StaticCredentials};
pub use client::{BlobReader, ManifestHead, Registry, Upload, UploadStart};
pub use copy::{CopyOptions, CopyReport, ImageCopier};
pub use manifest::{Manifest, Plan};

use crate::error::{Error, Result};

/// Where a registry is: scheme and `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryAddress {
    /// `https` or `http`.
    pub scheme: &'static str,
    /// `host[:port]`.
    pub authority: String,
}

impl RegistryAddress {
    /// `host[:port]` (HTTPS), `https://host[:port]` or `http://host[:port]`; a trailing `/` is allowed, a path
    /// is not. `field` names the setting in the error.
    pub fn parse(field: &str, text: &str) -> Result<RegistryAddress> {
        let (scheme, rest) = if let Some(r) = text.strip_prefix("https://") {
            ("https", r)
        } else if let Some(r) = text.strip_prefix("http://") {
            ("http", r)
        } else {
            ("https", text)
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty()
            || authority.contains(['/', '?', '#', '@'])
            || authority.contains(char::is_whitespace)
        {
            return Err(Error::config(
                field,
                format!("{text:?} is not a registry address (host[:port], or a URL like https://host without a path)"),
            ));
        }
        Ok(RegistryAddress {
            scheme,
            authority: authority.to_owned(),
        })
    }

    /// `scheme://authority`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

impl fmt::Display for RegistryAddress {
    /// As a user writes it: `host[:port]` for HTTPS, the URL for plain HTTP.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scheme == "https" {
            f.write_str(&self.authority)
        } else {
            write!(f, "{}://{}", self.scheme, self.authority)
        }
    }
}

/// `sha256:<hex>` of `bytes`: the digest of a manifest or a blob.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether a reference (the part after `repo:` or `repo@`) is a digest rather than a tag.
pub fn is_digest(reference: &str) -> bool {
    reference.contains(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a =
            RegistryAddress::parse("f", "123456789012.dkr.ecr.us-east-1.amazonaws.com").unwrap();
        assert_eq!(a.scheme, "https");
        assert_eq!(
            a.base_url(),
            "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"
        );
        let a = RegistryAddress::parse("f", "http://127.0.0.1:5000/").unwrap();
        assert_eq!((a.scheme, a.authority.as_str()), ("http", "127.0.0.1:5000"));
        assert_eq!(a.to_string(), "http://127.0.0.1:5000");
        assert_eq!(
            RegistryAddress::parse("f", "https://quay.io")
                .unwrap()
                .to_string(),
            "quay.io"
        );
        for bad in ["", "http://", "h/path", "https://h/v2", "a b", "u@h"] {
            let e = RegistryAddress::parse("source.registry", bad).unwrap_err();
            assert!(e.to_string().starts_with("source.registry"), "{bad}: {e}");
        }
    }

    #[test]
    fn digests() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(is_digest("sha256:ab"));
        assert!(!is_digest("latest"));
    }
}
