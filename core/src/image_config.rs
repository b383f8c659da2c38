//! The job configuration of an image transfer: container images from ECR or any registry into ECR.
//!
//! It shares the queue, ledger, control plane and worker settings with an object transfer's [`JobConfig`] (the
//! same `finder` and `worker` binaries run both); what it moves is described by [`ImageSource`] and
//! [`ImageDestination`]. [`TransferConfig`] tells the two apart by the top-level `"transfer": "images"`.
//!
//! [`JobConfig`]: crate::config::JobConfig
//! [`TransferConfig`]: crate::config::TransferConfig

use serde::{Deserialize, Serialize};

use crate::config::{
    check_endpoint, check_nonempty, check_region, check_shared, default_max_attempts, AwsConfig,
    LedgerConfig, MetricsConfig, QueueConfig, WorkerOptions,
};
use crate::error::{Error, Result};

/// The marker that makes a job config an image transfer's: `"transfer": "images"`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum ImagesMarker {
    #[default]
    #[serde(rename = "images")]
    Images,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageJobConfig {
    /// Always `"images"`.
    pub transfer: ImagesMarker,
    pub source: ImageSource,
    pub destination: ImageDestination,
    #[serde(default)]
    pub finder: ImageFinderOptions,
    /// `concurrency`: images copied at once by one worker; `part_concurrency`: blobs of one image copied at once;
    /// the rate limits, heartbeat, shutdown and ledger settings as for objects.
    #[serde(default)]
    pub worker: WorkerOptions,
    /// Deliveries of a job before it is dead-lettered (the queue's redrive maxReceiveCount).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    pub queue: QueueConfig,
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub aws: AwsConfig,
    /// As for objects ([`JobConfig::metrics`](crate::config::JobConfig)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum ImageSourceType {
    /// Amazon ECR (another region or account): repositories and tags listed through the ECR API.
    #[default]
    #[serde(rename = "ecr")]
    Ecr,
    /// Any registry speaking the distribution API (Docker Hub, quay.io, gcr.io, a private registry).
    #[serde(rename = "registry")]
    Registry,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageSource {
    #[serde(rename = "type", default)]
    pub kind: ImageSourceType,
    /// The registry's address: `host[:port]` (HTTPS) or a URL (`https://host`, `http://host:port`). Required for
    /// `registry`; for `ecr` it replaces `<account_id>.dkr.ecr.<region>.amazonaws.com` (an interface VPC endpoint).
    #[serde(default)]
    pub registry: Option<String>,
    /// `ecr`: the region of the source registry. Default: the control plane's.
    #[serde(default)]
    pub region: Option<String>,
    /// `ecr`: the account of the source registry. Default: the account of the credentials.
    #[serde(default)]
    pub account_id: Option<String>,
    /// `repo:tag`, `repo` (tag `latest`), `repo@sha256:<hex>` or `repo:ALL_TAGS`. Not with `all`.
    #[serde(default)]
    pub images: Vec<String>,
    /// Every repository (`ecr`: through the ECR API; `registry`: the registry's `/v2/_catalog`) with all its tags.
    #[serde(default)]
    pub all: bool,
    /// DTH's `include_untagged`: for `ecr` with `all`, also the repositories' untagged images (copied by digest,
    /// untagged). The untagged per-platform manifests an index references are copied with it whatever this
    /// says (an index without them is not an image). A registry's API lists tags only: no effect there.
    #[serde(default = "yes")]
    pub include_untagged: bool,
    /// Only these platforms (`linux/amd64`, `linux/arm64/v8`) of a multi-platform image. Empty: all. One
    /// platform: its manifest is tagged; several: a derived index of them (see `registry::manifest`).
    #[serde(default)]
    pub platforms: Vec<String>,
    /// A Secrets Manager secret: `{"username", "password"}` for a registry, `{"access_key_id",
    /// "secret_access_key"}` for ECR in another account. Default: anonymous (`registry`) or the instance role (`ecr`).
    #[serde(default)]
    pub credentials_secret_arn: Option<String>,
}

fn yes() -> bool {
    true
}

impl Default for ImageSource {
    fn default() -> Self {
        ImageSource {
            kind: ImageSourceType::default(),
            registry: None,
            region: None,
            account_id: None,
            images: Vec::new(),
            all: false,
            include_untagged: true,
            platforms: Vec::new(),
            credentials_secret_arn: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ImageDestination {
    /// The ECR region. Default: the control plane's.
    #[serde(default)]
    pub region: Option<String>,
    /// The ECR account. Default: the account of the credentials.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Replaces `<account_id>.dkr.ecr.<region>.amazonaws.com` (an interface VPC endpoint): `host[:port]` or a URL.
    #[serde(default)]
    pub registry: Option<String>,
    /// Prepended to every repository name: `prefix/<source repository>`.
    #[serde(default)]
    pub prefix: String,
    /// A Secrets Manager secret with `{"access_key_id", "secret_access_key"}` for ECR in another account. Default:
    /// the instance role.
    #[serde(default)]
    pub credentials_secret_arn: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageFinderOptions {
    /// Repositories listed and compared at once.
    pub parallelism: u32,
    /// Images shown by `--dry-run`.
    pub dry_run_keys: u32,
}

impl Default for ImageFinderOptions {
    fn default() -> Self {
        ImageFinderOptions {
            parallelism: 4,
            dry_run_keys: 20,
        }
    }
}

/// `ALL_TAGS` in place of a tag: every tag of the repository.
pub const ALL_TAGS: &str = "ALL_TAGS";

/// One entry of `source.images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSelection {
    Tag { repository: String, tag: String },
    Digest { repository: String, digest: String },
    AllTags { repository: String },
}

impl ImageSelection {
    /// `repo:tag`, `repo` (`latest`), `repo@sha256:<64 hex>` or `repo:ALL_TAGS`; the message says what is wrong.
    pub fn parse(text: &str) -> std::result::Result<ImageSelection, String> {
        if let Some((repository, digest)) = text.split_once('@') {
            check_repository(repository)?;
            check_digest(digest)?;
            return Ok(ImageSelection::Digest {
                repository: repository.into(),
                digest: digest.into(),
            });
        }
        // A tag follows the last ':' after the last '/' (a registry's port is not part of a repository here).
        let (repository, tag) = match text.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (text, None),
        };
        check_repository(repository)?;
        match tag {
            Some(ALL_TAGS) => Ok(ImageSelection::AllTags {
                repository: repository.into(),
            }),
            Some(t) => {
                check_tag(t)?;
                Ok(ImageSelection::Tag {
                    repository: repository.into(),
                    tag: t.into(),
                })
            }
            None => Ok(ImageSelection::Tag {
                repository: repository.into(),
                tag: "latest".into(),
            }),
        }
    }

    pub fn repository(&self) -> &str {
        match self {
            ImageSelection::Tag { repository, .. }
            | ImageSelection::Digest { repository, .. }
            | ImageSelection::AllTags { repository } => repository,
        }
    }
}

/// A repository name as the distribution spec defines it: lowercase path components of `[a-z0-9]` separated by
/// `.`, `_`, `__` or dashes, joined by `/`; at most 256 characters (ECR's limit).
pub fn check_repository(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        return Err(format!(
            "{name:?} is not a repository name (1 to 256 characters)"
        ));
    }
    for component in name.split('/') {
        let ok = !component.is_empty()
            && component
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric())
            && !component.contains("..")
            && !component.contains("._")
            && !component.contains("_.")
            && !component.contains("___")
            && !component.contains(".-")
            && !component.contains("-.")
            && !component.contains("_-")
            && !component.contains("-_");
        if !ok {
            return Err(format!(
                "{name:?} is not a repository name: lowercase letters and digits, separated by '.', '_', '__' or \
                 '-' within a path component, components joined by '/'"
            ));
        }
    }
    Ok(())
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let ok = (1..=128).contains(&tag.len())
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{tag:?} is not a tag (1 to 128 of letters, digits, '_', '.' and '-', not starting with '.' or '-')"
        ))
    }
}

/// A content digest: `sha256:<64 lowercase hex>` (`sha512:<128>` too).
pub fn check_digest(digest: &str) -> std::result::Result<(), String> {
    let ok = match digest.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64,
        Some(("sha512", hex)) => hex.len() == 128,
        _ => false,
    } && digest.split_once(':').is_some_and(|(_, h)| {
        h.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{digest:?} is not a digest (sha256:<64 lowercase hex digits>)"
        ))
    }
}

/// A platform: `os/architecture[/variant]`.
pub fn check_platform(p: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = p.split('/').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts.iter().all(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{p:?} is not a platform (os/architecture[/variant], like linux/amd64 or linux/arm64/v8)"
        ))
    }
}

/// A registry address: `host[:port]`, `https://host[:port]` or `http://host[:port]`, without a path.
pub fn check_registry(field: &str, r: &str) -> Result<()> {
    check_nonempty(field, r)?;
    let host = r
        .strip_prefix("https://")
        .or_else(|| r.strip_prefix("http://"))
        .unwrap_or(r)
        .trim_end_matches('/');
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return Err(Error::config(
            field,
            format!("{r:?} is not a registry address (host[:port], or a URL like https://host without a path)"),
        ));
    }
    Ok(())
}

fn check_account(field: &str, a: &str) -> Result<()> {
    if a.len() != 12 || !a.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::config(
            field,
            format!("{a:?} is not an AWS account id (12 digits)"),
        ));
    }
    Ok(())
}

impl ImageJobConfig {
    /// Every check in one place; the first failure names its field.
    pub fn validate(&self) -> Result<()> {
        let s = &self.source;
        match s.kind {
            ImageSourceType::Registry if s.registry.is_none() => {
                return Err(Error::config(
                    "source.registry",
                    "is required when source.type is \"registry\"",
                ))
            }
            ImageSourceType::Registry if s.region.is_some() || s.account_id.is_some() => {
                return Err(Error::config(
                    if s.region.is_some() {
                        "source.region"
                    } else {
                        "source.account_id"
                    },
                    "is for source.type \"ecr\"",
                ))
            }
            _ => {}
        }
        if let Some(r) = &s.registry {
            check_registry("source.registry", r)?;
        }
        if let Some(r) = &s.region {
            check_region("source.region", r)?;
        }
        if let Some(a) = &s.account_id {
            check_account("source.account_id", a)?;
        }
        match (s.all, s.images.is_empty()) {
            (true, false) => {
                return Err(Error::config(
                    "source.images",
                    "cannot be combined with source.all",
                ))
            }
            (false, true) => {
                return Err(Error::config(
                    "source.images",
                    "name the images (repo:tag, repo:ALL_TAGS) or set source.all",
                ))
            }
            _ => {}
        }
        for (i, text) in s.images.iter().enumerate() {
            ImageSelection::parse(text)
                .map_err(|m| Error::config(&format!("source.images[{i}]"), m))?;
        }
        for (i, p) in s.platforms.iter().enumerate() {
            check_platform(p).map_err(|m| Error::config(&format!("source.platforms[{i}]"), m))?;
        }
        if let Some(arn) = &s.credentials_secret_arn {
            check_nonempty("source.credentials_secret_arn", arn)?;
        }

        let d = &self.destination;
        if let Some(r) = &d.registry {
            check_registry("destination.registry", r)?;
        }
        if let Some(r) = &d.region {
            check_region("destination.region", r)?;
        }
        if let Some(a) = &d.account_id {
            check_account("destination.account_id", a)?;
        }
        if !d.prefix.is_empty() {
            check_repository(d.prefix.trim_end_matches('/')).map_err(|m| {
                Error::config(
                    "destination.prefix",
                    format!("{m} (it is prepended to repository names)"),
                )
            })?;
        }
        if let Some(arn) = &d.credentials_secret_arn {
            check_nonempty("destination.credentials_secret_arn", arn)?;
        }

        if self.finder.parallelism == 0 || self.finder.parallelism > 256 {
            return Err(Error::config(
                "finder.parallelism",
                "must be between 1 and 256",
            ));
        }
        check_shared(
            &self.worker,
            self.max_attempts,
            &self.queue,
            &self.ledger,
            &self.aws,
        )?;
        if let Some(m) = &self.metrics {
            m.validate()?;
        }
        if let Some(e) = &self.aws.endpoints.ecr {
            check_endpoint("aws.endpoints.ecr", e)?;
        }
        Ok(())
    }

    /// The destination repository of a source repository: `<destination prefix>/<repository>`.
    pub fn destination_repository(&self, source_repository: &str) -> String {
        crate::config::join_prefix(&self.destination.prefix, source_repository)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransferConfig;

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "transfer": "images",
            "source": {"type": "registry", "registry": "http://127.0.0.1:5000", "images": ["app:1.0", "base:ALL_TAGS"]},
            "destination": {"prefix": "mirror"},
            "queue": {"url": "http://127.0.0.1:1/123456789012/jobs"},
            "ledger": {"table": "ledger"}
        })
    }

    fn parse(v: &serde_json::Value) -> Result<TransferConfig> {
        TransferConfig::from_json(&v.to_string())
    }

    #[test]
    fn an_image_config_is_told_from_an_object_config_and_round_trips() {
        let TransferConfig::Images(c) = parse(&sample()).unwrap() else {
            panic!("not an image config");
        };
        assert!(c.source.include_untagged);
        assert_eq!(c.destination_repository("app"), "mirror/app");
        let again =
            parse(&serde_json::to_value(TransferConfig::Images(c.clone())).unwrap()).unwrap();
        assert_eq!(again, TransferConfig::Images(c));
    }

    #[test]
    fn selections_parse() {
        use ImageSelection::*;
        let tag = |r: &str, t: &str| Tag {
            repository: r.into(),
            tag: t.into(),
        };
        assert_eq!(
            ImageSelection::parse("ubuntu").unwrap(),
            tag("ubuntu", "latest")
        );
        assert_eq!(
            ImageSelection::parse("library/ubuntu:22.04").unwrap(),
            tag("library/ubuntu", "22.04")
        );
        assert_eq!(
            ImageSelection::parse("team/app:ALL_TAGS").unwrap(),
            AllTags {
                repository: "team/app".into()
            }
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            ImageSelection::parse(&format!("app@{d}")).unwrap(),
            Digest {
                repository: "app".into(),
                digest: d
            }
        );
        for bad in [
            "",
            "App:1",
            "app:",
            "app:-x",
            "app@sha256:12",
            "a//b:1",
            "-a:1",
            "a:b:c/d",
        ] {
            assert!(ImageSelection::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                serde_json::json!({"source": {"registry": null}}),
                "source.registry",
            ),
            (
                serde_json::json!({"source": {"images": ["Bad:1"]}}),
                "source.images[0]",
            ),
            (
                serde_json::json!({"source": {"images": []}}),
                "source.images",
            ),
            (
                serde_json::json!({"source": {"all": true}}),
                "source.images",
            ),
            (
                serde_json::json!({"source": {"platforms": ["amd64"]}}),
                "source.platforms[0]",
            ),
            (
                serde_json::json!({"source": {"region": "us-east-1"}}),
                "source.region",
            ),
            (
                serde_json::json!({"source": {"registry": "http://h/path"}}),
                "source.registry",
            ),
            (
                serde_json::json!({"destination": {"prefix": "Upper"}}),
                "destination.prefix",
            ),
            (
                serde_json::json!({"destination": {"account_id": "12"}}),
                "destination.account_id",
            ),
            (
                serde_json::json!({"destination": {"registry": ""}}),
                "destination.registry",
            ),
            (
                serde_json::json!({"finder": {"parallelism": 0}}),
                "finder.parallelism",
            ),
            (
                serde_json::json!({"worker": {"concurrency": 0}}),
                "worker.concurrency",
            ),
            (serde_json::json!({"max_attempts": 0}), "max_attempts"),
            (
                serde_json::json!({"aws": {"endpoints": {"ecr": "localhost"}}}),
                "aws.endpoints.ecr",
            ),
            (serde_json::json!({"source": {"bucket": "x"}}), "source"),
        ];
        for (patch, field) in cases {
            let mut v = sample();
            merge(&mut v, patch.clone());
            let e = parse(&v).expect_err(&patch.to_string()).to_string();
            assert!(e.starts_with(field), "{patch}: {e}");
        }
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b,
        }
    }
}
