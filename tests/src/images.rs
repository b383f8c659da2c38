//! Image fixtures: container images built by the test as OCI layouts (random content, several layers, a
//! multi-platform index whose per-platform manifests are untagged), and a Bearer-token registry.
//!
//! Images are written by hand — blobs under `blobs/sha256/`, an `index.json` naming the image — and pushed
//! with skopeo ([`crate::registry::Registry::push`]), a client the project did not write. Two kinds:
//! - [`docker_image`]: one platform, Docker schema 2 media types, gzip layers;
//! - [`oci_index`]: an OCI index of one OCI image manifest per platform, sharing a base layer, uncompressed tar
//!   layers; the index is what the tag names, its children are reachable only through it;
//! - [`docker_list`]: the same as a Docker manifest list of Docker schema 2 images.
//!
//! # Bearer tokens
//!
//! docker-registry's own token auth needs a token service signing JWTs with a key whose certificate chain the
//! registry trusts; none is packaged here. [`token_auth`] is the stand-in: a [`FaultProxy`] in front of an
//! open docker-registry that plays both the token service (`GET /token?service=…&scope=…` with the Basic
//! login, answering `{"token", "access_token", "expires_in"}`) and the registry's check (every `/v2/` request
//! needs `Authorization: Bearer <token>` whose scopes cover it — `pull` to read a repository, `pull,push` to
//! write, `registry:catalog:*` for the catalog — else `401` with `WWW-Authenticate: Bearer realm=…,service=…,
//! scope=…`), as Docker Hub, quay.io and Harbor do. Tokens are this proxy's own (a random secret and the
//! scopes granted); scopes on repositories in `deny` are never granted, which is how a test makes the
//! registry refuse one repository.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::fault::{Fault, FaultProxy, Request, Response, Rule};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An image written as an OCI layout.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    /// The digest and bytes of the manifest the layout's `index.json` names (what a tag will name).
    pub digest: String,
    pub manifest: Vec<u8>,
    /// Per platform (`linux/amd64`): the digest of its image manifest (for an index: the untagged children).
    pub platforms: Vec<(String, String)>,
    /// Bytes of every distinct blob.
    pub blob_bytes: u64,
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn put_blob(dir: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let path = dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    digest
}

/// A tar holding one file of `size` random bytes.
fn tar_layer(size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(
        &mut h,
        format!("data/{:016x}.bin", fastrand::u64(..)),
        &crate::random_bytes(size)[..],
    )
    .unwrap();
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn write_layout(dir: &Path, media_type: &str, manifest: &[u8]) -> String {
    let digest = put_blob(dir, manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": media_type, "digest": digest, "size": manifest.len()}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    digest
}

/// One image manifest for `platform` with layers of these sizes (plus `shared`, reused as is); its blobs are
/// written into `dir`. Returns (manifest bytes, blob bytes).
fn image_manifest(
    dir: &Path,
    platform: &str,
    layers: &[usize],
    shared: Option<&(Vec<u8>, String)>,
    docker: bool,
) -> (Vec<u8>, u64) {
    let (os, arch) = platform.split_once('/').unwrap();
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    let mut bytes = 0u64;
    let layer_type = if docker {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    };
    let mut add = |tar: &[u8], blob: Vec<u8>| {
        diff_ids.push(sha256(tar));
        let d = put_blob(dir, &blob);
        bytes += blob.len() as u64;
        descriptors
            .push(serde_json::json!({"mediaType": layer_type, "digest": d, "size": blob.len()}));
    };
    if let Some((tar, _)) = shared {
        add(tar, tar.clone());
    }
    for &size in layers {
        let tar = tar_layer(size);
        let blob = if docker { gzip(&tar) } else { tar.clone() };
        add(&tar, blob);
    }
    let config = serde_json::json!({"architecture": arch, "os": os, "config": {"Env": [format!("NONCE={}", fastrand::u64(..))]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    .to_string();
    let config_digest = put_blob(dir, config.as_bytes());
    bytes += config.len() as u64;
    let (media_type, config_type) = if docker {
        (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json")
    };
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": descriptors});
    (serde_json::to_vec_pretty(&manifest).unwrap(), bytes)
}

/// A single-platform (`linux/amd64`) image in Docker schema 2 with gzip layers of these (uncompressed) sizes.
pub fn docker_image(dir: &Path, layers: &[usize]) -> Layout {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let (manifest, blob_bytes) = image_manifest(dir, "linux/amd64", layers, None, true);
    let digest = write_layout(dir, DOCKER_MANIFEST, &manifest);
    Layout {
        dir: dir.to_owned(),
        platforms: vec![("linux/amd64".into(), digest.clone())],
        digest,
        manifest,
        blob_bytes,
    }
}

/// An OCI index with one image per platform, each of a shared base layer of `base` bytes and `layers` of its
/// own.
pub fn oci_index(dir: &Path, platforms: &[&str], base: usize, layers: &[usize]) -> Layout {
    index(dir, platforms, base, layers, false)
}

/// A Docker manifest list of Docker schema 2 images, as [`oci_index`] (gzip layers).
pub fn docker_list(dir: &Path, platforms: &[&str], base: usize, layers: &[usize]) -> Layout {
    index(dir, platforms, base, layers, true)
}

fn index(dir: &Path, platforms: &[&str], base: usize, layers: &[usize], docker: bool) -> Layout {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let shared_tar = tar_layer(base);
    let shared = (shared_tar.clone(), sha256(&shared_tar));
    let mut entries = Vec::new();
    let mut children = Vec::new();
    let mut blob_bytes = 0;
    for (i, p) in platforms.iter().enumerate() {
        let (m, bytes) = image_manifest(dir, p, layers, Some(&shared), docker);
        // The shared base counts once.
        blob_bytes += if i == 0 {
            bytes
        } else {
            bytes - base_len(&shared)
        };
        let d = put_blob(dir, &m);
        let (os, arch) = p.split_once('/').unwrap();
        let mut platform = serde_json::json!({"os": os, "architecture": arch});
        if arch == "arm64" {
            platform["variant"] = "v8".into();
        }
        let child_type = if docker {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        entries.push(serde_json::json!({"mediaType": child_type, "digest": d, "size": m.len(), "platform": platform}));
        children.push(((*p).to_owned(), d));
    }
    let media_type = if docker { DOCKER_LIST } else { OCI_INDEX };
    let index = serde_json::to_vec_pretty(
        &serde_json::json!({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}),
    )
    .unwrap();
    let digest = write_layout(dir, media_type, &index);
    Layout {
        dir: dir.to_owned(),
        digest,
        manifest: index,
        platforms: children,
        blob_bytes,
    }
}

fn base_len(shared: &(Vec<u8>, String)) -> u64 {
    shared.0.len() as u64
}

/// The repository and the actions a registry request needs (`None`: any valid token; `/v2/` itself).
fn needed(r: &Request) -> Option<Vec<String>> {
    let path = r.path();
    if path == "/v2/" || path == "/v2" {
        return None;
    }
    if path == "/v2/_catalog" {
        return Some(vec!["registry:catalog:*".into()]);
    }
    let rest = path.strip_prefix("/v2/")?;
    let cut = ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()?;
    let name = &rest[..cut];
    let write = !matches!(r.method.as_str(), "GET" | "HEAD");
    let mut scopes = vec![format!(
        "repository:{name}:{}",
        if write { "pull,push" } else { "pull" }
    )];
    if let Some(from) = r.query("from") {
        scopes.push(format!("repository:{from}:pull"));
    }
    Some(scopes)
}

/// Whether `granted` (`type:name:a,b` each) covers `want` (same form).
fn covers(granted: &[String], want: &str) -> bool {
    let split = |s: &str| {
        let (t, rest) = s.split_once(':')?;
        let (n, a) = rest.rsplit_once(':')?;
        Some((t.to_owned(), n.to_owned(), a.to_owned()))
    };
    let Some((t, n, a)) = split(want) else {
        return false;
    };
    a.split(',').all(|action| {
        granted.iter().filter_map(|g| split(g)).any(|(gt, gn, ga)| {
            gt == t && gn == n && ga.split(',').any(|x| x == action || x == "*")
        })
    })
}

fn unauthorized(r: &Request, scope: Option<&str>) -> Response {
    let host = r.header("host").unwrap_or("127.0.0.1");
    let mut challenge = format!("Bearer realm=\"http://{host}/token\",service=\"dth-registry\"");
    if let Some(s) = scope {
        challenge.push_str(&format!(",scope=\"{s}\""));
    }
    Response {
        status: 401,
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("WWW-Authenticate".into(), challenge),
        ],
        body: serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
            .to_string()
            .into_bytes(),
    }
}

/// A Bearer-token registry in front of `upstream` (an open docker-registry): see the module's documentation.
/// The token service takes the Basic login `user`/`password`; scopes on a repository in `deny` are refused.
pub async fn token_auth(upstream: &str, user: &str, password: &str, deny: &[&str]) -> FaultProxy {
    let proxy = FaultProxy::start(&format!("http://{upstream}")).await;
    let secret = format!("{:016x}", fastrand::u64(..));
    let login = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let deny: Vec<String> = deny.iter().map(|d| (*d).to_owned()).collect();
    let issue = {
        let secret = secret.clone();
        move |r: &Request| -> Response {
            if r.header("authorization") != Some(login.as_str()) {
                return Response {
                    status: 401,
                    headers: vec![("Content-Type".into(), "application/json".into())],
                    body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad login"}]}"#.to_vec(),
                };
            }
            let granted: Vec<String> =
                crate::http::form(r.target.split_once('?').map_or("", |(_, q)| q).as_bytes())
                    .into_iter()
                    .filter(|(k, _)| k == "scope")
                    .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
                    .filter(|s| {
                        !deny
                            .iter()
                            .any(|d| s.starts_with(&format!("repository:{d}:")))
                    })
                    .collect();
            let token = format!(
                "{secret}.{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(granted.join(" "))
            );
            Response {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: serde_json::json!({"token": token, "access_token": token, "expires_in": 300})
                    .to_string()
                    .into_bytes(),
            }
        }
    };
    proxy.inject(Rule::on("registry", "Token", Fault::reply(issue)));
    let check = move |r: &Request| -> bool {
        // True when the request must be refused.
        let granted: Option<Vec<String>> = r
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| t.split_once('.'))
            .filter(|(s, _)| *s == secret)
            .and_then(|(_, g)| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(g)
                    .ok()
            })
            .map(|g| {
                String::from_utf8_lossy(&g)
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            });
        match (granted, needed(r)) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(g), Some(want)) => !want.iter().all(|w| covers(&g, w)),
        }
    };
    proxy.inject(
        Rule::new(Fault::reply(|r: &Request| {
            let scope = needed(r).map(|s| s.join(" "));
            unauthorized(r, scope.as_deref())
        }))
        .service("registry")
        .when(check),
    );
    proxy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_actions() {
        let g = vec![
            "repository:a/b:pull,push".to_owned(),
            "registry:catalog:*".to_owned(),
        ];
        assert!(covers(&g, "repository:a/b:pull"));
        assert!(covers(&g, "repository:a/b:pull,push"));
        assert!(covers(&g, "registry:catalog:*"));
        assert!(!covers(&g, "repository:a:pull"));
        assert!(!covers(
            &["repository:x:pull".to_owned()],
            "repository:x:pull,push"
        ));
    }
}
