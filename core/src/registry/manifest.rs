//! Manifests: Docker schema 2 and OCI image manifests, Docker manifest lists and OCI image indexes.
//!
//! A [`Manifest`] is kept as the registry sent it — its bytes, media type and digest — and pushed exactly so:
//! re-serialising would change its digest. [`Manifest::parse`] reads only what copying needs (the blobs of an
//! image, the manifests of an index).
//!
//! # Platforms
//!
//! [`Plan::of`] decides what a platform selection pushes for an image:
//! - no selection: the manifest as it is; for an index, every manifest it references, untagged (DTH's
//!   `include_untagged`), so the tag's digest at the destination is the source's;
//! - a selection matching one manifest of an index: that manifest, byte for byte, tagged — its digest is the
//!   source's child manifest's (what `docker pull --platform` would have run);
//! - a selection matching several: those manifests, and a new index listing only them (written by
//!   [`Plan::of`] in one fixed layout, so its digest is a function of the source index and the selection:
//!   the finder computes the same digest as the worker pushes, and a rerun compares exactly);
//! - a single-platform image is copied as it is whatever the selection (its platform is in its config blob,
//!   which a registry does not index; `skopeo copy --override-arch` does the same);
//! - an index with none of the selected platforms is an error naming the platforms it has.
//!
//! A selected platform `os/arch` matches every variant of that architecture; `os/arch/variant` only that
//! variant (`linux/arm64/v8` also matches an `arm64` entry without a variant, its default).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The `Accept` header of manifest requests: every type this client copies.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest read (the OCI specification lets registries refuse more than 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A manifest as the registry serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
    /// `sha256:` of `bytes`.
    pub digest: String,
}

/// A content descriptor: what a manifest says about a blob or another manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Where a foreign (non-distributable) layer is downloaded from instead of the registry.
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl Platform {
    /// `os/architecture[/variant]`.
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    /// Whether the selection `os/arch[/variant]` (checked by the config) takes this platform.
    pub fn matches(&self, selection: &str) -> bool {
        let mut parts = selection.split('/');
        let (Some(os), Some(arch)) = (parts.next(), parts.next()) else {
            return false;
        };
        if os != self.os || arch != self.architecture {
            return false;
        }
        match parts.next() {
            None => true,
            Some(v) => {
                let mine = self.variant.as_deref().or(match arch {
                    "arm64" => Some("v8"),
                    _ => None,
                });
                mine == Some(v)
            }
        }
    }
}

/// What a manifest holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An image: its config blob and layers.
    Image {
        config: Box<Descriptor>,
        layers: Vec<Descriptor>,
    },
    /// An index (manifest list): the manifests it references.
    Index { manifests: Vec<Descriptor> },
}

impl Parsed {
    /// The blobs of an image that the registry serves (foreign layers, which carry `urls`, are not pushed:
    /// registries and ECR refuse or skip them, and clients fetch them from their URLs).
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match self {
            Parsed::Image { config, layers } => std::iter::once(config.as_ref())
                .chain(layers.iter().filter(|l| l.urls.is_empty()))
                .collect(),
            Parsed::Index { .. } => Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

fn invalid(what: &str) -> Error {
    Error::new(ErrorKind::Other, format!("invalid manifest: {what}"))
}

impl Manifest {
    /// A manifest from a registry's answer: its media type from `Content-Type` when that names a manifest
    /// type, else from the document's `mediaType`, else from its shape (`manifests`: an index).
    pub fn from_bytes(bytes: Bytes, content_type: Option<&str>) -> Result<Manifest> {
        let raw: Raw = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(&format!("not a JSON manifest ({e})")))?;
        if raw.schema_version == Some(1)
            || content_type
                .is_some_and(|c| c.contains("application/vnd.docker.distribution.manifest.v1+"))
        {
            return Err(Error::new(
                ErrorKind::Other,
                "Docker schema 1 manifests are not supported (deprecated since 2017; push the image again with a \
                 current client)",
            ));
        }
        let known = [
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
            OCI_MANIFEST,
            OCI_INDEX,
        ];
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| known.contains(c));
        let media_type = match (header, raw.media_type.as_deref()) {
            (Some(h), _) => h.to_owned(),
            (None, Some(m)) if known.contains(&m) => m.to_owned(),
            (None, Some(m)) => return Err(invalid(&format!("unknown media type {m:?}"))),
            (None, None) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
            (None, None) => OCI_MANIFEST.to_owned(),
        };
        let digest = super::sha256_digest(&bytes);
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }

    pub fn parse(&self) -> Result<Parsed> {
        let raw: Raw = serde_json::from_slice(&self.bytes)
            .map_err(|e| invalid(&format!("not a JSON manifest ({e})")))?;
        let check = |d: &Descriptor| {
            crate::image_config::check_digest(&d.digest)
                .map_err(|m| invalid(&format!("a descriptor's digest: {m}")))
        };
        if self.is_index() {
            let manifests = raw
                .manifests
                .ok_or_else(|| invalid("an index without \"manifests\""))?;
            manifests.iter().try_for_each(check)?;
            Ok(Parsed::Index { manifests })
        } else {
            let config = raw
                .config
                .ok_or_else(|| invalid("an image manifest without \"config\""))?;
            let layers = raw.layers.unwrap_or_default();
            check(&config)?;
            layers.iter().try_for_each(check)?;
            Ok(Parsed::Image {
                config: Box::new(config),
                layers,
            })
        }
    }
}

/// What is pushed for an image, given the platform selection (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The manifest as it is; for an index, with every manifest it references.
    Whole,
    /// One manifest of the index, tagged in its place.
    Child(Descriptor),
    /// Several manifests of the index, and a new index listing them.
    Filtered {
        index: Manifest,
        children: Vec<Descriptor>,
    },
}

/// The derived index, in one fixed layout (struct field order; maps sorted).
#[derive(Serialize)]
struct DerivedIndex<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<DerivedEntry<'a>>,
}

#[derive(Serialize)]
struct DerivedEntry<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

impl Plan {
    /// The plan for `top` (as the source serves it) and the selected `platforms` (empty: all).
    pub fn of(top: &Manifest, platforms: &[String]) -> Result<Plan> {
        if platforms.is_empty() || !top.is_index() {
            return Ok(Plan::Whole);
        }
        let Parsed::Index { manifests } = top.parse()? else {
            return Ok(Plan::Whole);
        };
        let chosen: Vec<Descriptor> = manifests
            .iter()
            .filter(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| platforms.iter().any(|s| p.matches(s)))
            })
            .cloned()
            .collect();
        match chosen.len() {
            0 => {
                let have: Vec<String> = manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(Platform::name))
                    .collect();
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the image has none of the platforms {} (it has {})",
                        platforms.join(", "),
                        if have.is_empty() {
                            "no platforms listed".to_owned()
                        } else {
                            have.join(", ")
                        }
                    ),
                )
                .with_code("PLATFORM_UNKNOWN"))
            }
            1 => Ok(Plan::Child(chosen.into_iter().next().expect("one"))),
            _ => {
                let media_type = top.media_type.as_str();
                let doc = DerivedIndex {
                    schema_version: 2,
                    media_type,
                    manifests: chosen
                        .iter()
                        .map(|d| DerivedEntry {
                            media_type: &d.media_type,
                            digest: &d.digest,
                            size: d.size,
                            platform: d.platform.as_ref(),
                            annotations: &d.annotations,
                        })
                        .collect(),
                };
                let bytes = Bytes::from(serde_json::to_vec(&doc)?);
                let index = Manifest::from_bytes(bytes, Some(media_type))?;
                Ok(Plan::Filtered {
                    index,
                    children: chosen,
                })
            }
        }
    }

    /// The digest the destination's tag will have: the source's, the chosen child's, or the derived index's.
    pub fn digest(&self, top: &Manifest) -> String {
        match self {
            Plan::Whole => top.digest.clone(),
            Plan::Child(d) => d.digest.clone(),
            Plan::Filtered { index, .. } => index.digest.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    fn index(platforms: &[(&str, &str, Option<&str>)]) -> Manifest {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut p = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    p["variant"] = serde_json::json!(v);
                }
                serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d((b'a' + i as u8) as char), "size": 100 + i, "platform": p})
            })
            .collect();
        let doc =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        Manifest::from_bytes(Bytes::from(doc.to_string()), None).unwrap()
    }

    #[test]
    fn media_types_come_from_the_header_the_document_or_its_shape() {
        let image = serde_json::json!({"schemaVersion": 2, "config": {"digest": d('c'), "size": 2}, "layers": [
            {"digest": d('e'), "size": 3}, {"digest": d('f'), "size": 4, "urls": ["https://x"]}]})
        .to_string();
        let m = Manifest::from_bytes(Bytes::from(image.clone()), Some("application/json")).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.digest, crate::registry::sha256_digest(image.as_bytes()));
        let Parsed::Image { layers, .. } = m.parse().unwrap() else {
            panic!()
        };
        assert_eq!(layers.len(), 2);
        assert_eq!(
            m.parse().unwrap().blobs().len(),
            2,
            "the foreign layer is not pushed"
        );
        let m = Manifest::from_bytes(Bytes::from(image.clone()), Some(DOCKER_MANIFEST)).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST);
        for t in [OCI_MANIFEST, OCI_INDEX] {
            assert_eq!(
                Manifest::from_bytes(Bytes::from(image.clone()), Some(t))
                    .unwrap()
                    .media_type,
                t
            );
        }
        assert!(Manifest::from_bytes(
            Bytes::from(image),
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws")
        )
        .is_err());
        assert!(index(&[]).is_index());
        for bad in [
            "nope",
            r#"{"schemaVersion": 1, "fsLayers": []}"#,
            r#"{"mediaType": "text/plain"}"#,
        ] {
            assert!(
                Manifest::from_bytes(Bytes::from(bad), None).is_err(),
                "{bad}"
            );
        }
        let bad_digest = r#"{"config": {"digest": "md5:x", "size": 1}}"#;
        assert!(Manifest::from_bytes(Bytes::from(bad_digest), None)
            .unwrap()
            .parse()
            .is_err());
    }

    #[test]
    fn platform_selection() {
        let top = index(&[
            ("linux", "amd64", None),
            ("linux", "arm64", Some("v8")),
            ("linux", "arm", Some("v7")),
            ("unknown", "unknown", None),
        ]);
        assert_eq!(Plan::of(&top, &[]).unwrap(), Plan::Whole);
        assert_eq!(Plan::of(&top, &[]).unwrap().digest(&top), top.digest);
        let one = Plan::of(&top, &["linux/arm64".into()]).unwrap();
        assert_eq!(one.digest(&top), d('b'));
        let Plan::Filtered { index, children } =
            Plan::of(&top, &["linux/amd64".into(), "linux/arm/v7".into()]).unwrap()
        else {
            panic!("two platforms make a derived index");
        };
        assert_eq!(children.len(), 2);
        assert_eq!(index.media_type, OCI_INDEX);
        let again = Plan::of(&top, &["linux/arm/v7".into(), "linux/amd64".into()]).unwrap();
        assert_eq!(
            again.digest(&top),
            index.digest,
            "the derived index depends on the source, not on the order of the selection"
        );
        let Parsed::Index { manifests } = index.parse().unwrap() else {
            panic!()
        };
        assert_eq!(
            manifests[1].platform.as_ref().unwrap().name(),
            "linux/arm/v7"
        );
        let e = Plan::of(&top, &["windows/amd64".into()]).unwrap_err();
        assert!(e.to_string().contains("linux/arm64/v8"), "{e}");
        assert!(Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            os_version: None,
            os_features: vec![],
            variant: None,
            features: vec![]
        }
        .matches("linux/arm64/v8"));
    }
}
