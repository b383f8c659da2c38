//! The OCI image layout: `oci-layout`, `index.json` (one descriptor, tagged) → an image index blob → one
//! manifest, config and gzip layer per platform.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, HistoryBuilder,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType,
    OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder, ANNOTATION_CREATED,
    ANNOTATION_DESCRIPTION, ANNOTATION_LICENSES, ANNOTATION_REF_NAME, ANNOTATION_REVISION,
    ANNOTATION_SOURCE, ANNOTATION_TITLE, ANNOTATION_VERSION,
};
use serde_json::Value;

use crate::elf;
use crate::layer::{self, Entry};

/// The non-root user (and group) the image runs as; 65532 is the distroless "nonroot" convention.
pub const UID: u32 = 65532;
pub const BINARIES: [&str; 2] = ["finder", "worker"];
pub const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
const TITLE: &str = "dth";
const DESCRIPTION: &str =
    "dth (Data Transfer Hub) finder and worker: static binaries, CA roots and a non-root user, nothing else";
const LICENSES: &str = "Apache-2.0";
const CREATED_BY: &str =
    "dth-release image: finder, worker, CA roots (webpki-root-certs), user dth";

/// A platform of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Platform {
    Amd64,
    Arm64,
}

impl Platform {
    pub const ALL: [Platform; 2] = [Platform::Amd64, Platform::Arm64];

    /// The name used on the command line (`--bin-dir amd64=DIR`) and as the OCI architecture.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Amd64 => "amd64",
            Platform::Arm64 => "arm64",
        }
    }

    fn arch(self) -> Arch {
        match self {
            Platform::Amd64 => Arch::Amd64,
            Platform::Arm64 => Arch::ARM64,
        }
    }

    pub fn variant(self) -> Option<&'static str> {
        match self {
            Platform::Amd64 => None,
            Platform::Arm64 => Some("v8"),
        }
    }

    pub fn elf_machine(self) -> u16 {
        match self {
            Platform::Amd64 => elf::EM_X86_64,
            Platform::Arm64 => elf::EM_AARCH64,
        }
    }

    /// `linux/amd64`, `linux/arm64/v8`.
    pub fn display(self) -> String {
        match self.variant() {
            Some(v) => format!("linux/{}/{v}", self.name()),
            None => format!("linux/{}", self.name()),
        }
    }

    pub fn parse(s: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Everything the image is built from.
pub struct Spec {
    /// The directory holding `finder` and `worker` for each platform, in the platform order of the index.
    pub bin_dirs: Vec<(Platform, PathBuf)>,
    pub version: String,
    pub revision: String,
    pub source: String,
    /// RFC 3339 in UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub created: String,
    /// `created` as seconds since the epoch: every tar header's mtime.
    pub mtime: u64,
    pub tag: String,
}

/// What was built, for the caller's report.
pub struct Built {
    pub index_digest: String,
    pub platforms: Vec<BuiltPlatform>,
}

pub struct BuiltPlatform {
    pub platform: Platform,
    pub manifest_digest: String,
    pub layer_size: u64,
    pub tar_size: u64,
    /// Layer + config + manifest: what a pull of this platform transfers.
    pub compressed_size: u64,
}

/// Blobs by digest, written out at the end.
#[derive(Default)]
struct Blobs(BTreeMap<String, Vec<u8>>);

impl Blobs {
    fn add(&mut self, media_type: MediaType, bytes: Vec<u8>) -> Result<Descriptor> {
        let digest = layer::sha256(&bytes);
        let d = DescriptorBuilder::default()
            .media_type(media_type)
            .digest(Digest::try_from(digest.as_str())?)
            .size(bytes.len() as u64)
            .build()?;
        self.0.insert(digest, bytes);
        Ok(d)
    }
}

/// JSON with every object's keys in byte order. oci-spec keeps annotations and labels in `HashMap`s, whose
/// iteration order changes from run to run; serde_json's `Map` is sorted, or (with `preserve_order`, which any
/// crate in a build may turn on) keeps insertion order: rebuilding every map from sorted entries gives the same
/// bytes either way.
pub fn canonical_json(value: Value) -> Result<Vec<u8>> {
    fn sorted(v: Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sorted(value))?)
}

/// Mozilla's roots from webpki-root-certs as one PEM bundle (the version is pinned by Cargo.lock, so every
/// machine writes the same bundle). The binaries' rustls-native-certs reads it via SSL_CERT_FILE.
pub fn ca_bundle() -> String {
    let mut pem = String::new();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

fn passwd() -> String {
    format!("root:x:0:0:root:/root:/sbin/nologin\ndth:x:{UID}:{UID}:dth:/tmp:/sbin/nologin\n")
}

fn group() -> String {
    format!("root:x:0:\ndth:x:{UID}:\n")
}

/// One of the image's programs in `usr/local/bin`.
#[derive(Debug, PartialEq, Eq)]
pub enum Binary {
    File {
        name: String,
        bytes: Vec<u8>,
    },
    /// A symlink to a file of the same directory: one multi-call binary that acts as `finder` or `worker` by
    /// the name it runs as (scripts/build-binaries writes `dth` with `finder` and `worker` linked to it).
    Link {
        name: String,
        target: String,
    },
}

/// A symlink target that names a file in the link's own directory.
fn sibling_name(target: &Path) -> Option<&str> {
    let t = target.to_str()?;
    let plain = !t.is_empty()
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    plain.then_some(t)
}

/// Reads `finder` and `worker` from a platform's bin dir, refusing what would not run there. A symlink to a
/// file beside it stays a symlink (the file is stored once); any other symlink is followed and copied.
pub fn read_binaries(platform: Platform, dir: &Path) -> Result<Vec<Binary>> {
    let flag = format!("--bin-dir {}={}", platform.name(), dir.display());
    let mut links = Vec::new();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for name in BINARIES {
        let path = dir.join(name);
        let meta = fs::symlink_metadata(&path).map_err(|e| {
            anyhow!(
                "{flag}: {} is missing ({e}); build it with scripts/build-binaries --arch {}",
                path.display(),
                platform.name()
            )
        })?;
        let mut file = name.to_string();
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path)
                .with_context(|| format!("{flag}: reading the link {}", path.display()))?;
            if let Some(t) = sibling_name(&target) {
                if fs::symlink_metadata(dir.join(t)).is_ok_and(|m| m.is_file()) {
                    links.push(Binary::Link {
                        name: name.to_string(),
                        target: t.to_string(),
                    });
                    file = t.to_string();
                }
            }
        }
        if files.contains_key(&file) {
            continue;
        }
        let what = if file == name {
            name.to_string()
        } else {
            format!("{name} (-> {file})")
        };
        let path = dir.join(&file);
        let meta = fs::metadata(&path).map_err(|e| {
            anyhow!(
                "{flag}: {what}: {} is missing ({e}); build it with scripts/build-binaries --arch {}",
                path.display(),
                platform.name()
            )
        })?;
        if !meta.is_file() {
            bail!("{flag}: {what}: {} is not a regular file", path.display());
        }
        let bytes =
            fs::read(&path).with_context(|| format!("{flag}: reading {}", path.display()))?;
        elf::check(&bytes, platform.elf_machine()).map_err(|why| {
            anyhow!(
                "{flag}: {what} is {why}; the {} image would not run it",
                platform.display()
            )
        })?;
        files.insert(file, bytes);
    }
    let mut out: Vec<Binary> = files
        .into_iter()
        .map(|(name, bytes)| Binary::File { name, bytes })
        .collect();
    out.extend(links);
    Ok(out)
}

/// The layer's entries for a platform's binaries.
pub fn entries(binaries: Vec<Binary>) -> Vec<Entry> {
    let mut e = vec![
        Entry::dir("etc/", 0o755),
        Entry::file("etc/group", 0o644, group()),
        Entry::file("etc/passwd", 0o644, passwd()),
        Entry::dir("etc/ssl/", 0o755),
        Entry::dir("etc/ssl/certs/", 0o755),
        Entry::file(CA_BUNDLE, 0o644, ca_bundle()),
        Entry::dir("tmp/", 0o1777),
        Entry::dir("usr/", 0o755),
        Entry::dir("usr/local/", 0o755),
        Entry::dir("usr/local/bin/", 0o755),
    ];
    for b in binaries {
        e.push(match b {
            Binary::File { name, bytes } => {
                Entry::file(&format!("usr/local/bin/{name}"), 0o755, bytes)
            }
            Binary::Link { name, target } => {
                Entry::symlink(&format!("usr/local/bin/{name}"), &target)
            }
        });
    }
    e
}

fn annotations(spec: &Spec) -> HashMap<String, String> {
    [
        (ANNOTATION_SOURCE, spec.source.as_str()),
        (ANNOTATION_VERSION, spec.version.as_str()),
        (ANNOTATION_REVISION, spec.revision.as_str()),
        (ANNOTATION_CREATED, spec.created.as_str()),
        (ANNOTATION_TITLE, TITLE),
        (ANNOTATION_DESCRIPTION, DESCRIPTION),
        (ANNOTATION_LICENSES, LICENSES),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The files of a layout: (path inside the layout, bytes).
type Files = Vec<(String, Vec<u8>)>;

/// Builds the whole layout in memory, plus the report.
fn render(spec: &Spec) -> Result<(Files, Built)> {
    let annotations = annotations(spec);
    let mut blobs = Blobs::default();
    let mut manifests = Vec::new();
    let mut report = Vec::new();
    for (platform, dir) in &spec.bin_dirs {
        let platform = *platform;
        let binaries = read_binaries(platform, dir)?;
        let layer = layer::build(entries(binaries), spec.mtime)?;
        let layer_size = layer.gzip.len() as u64;

        let config = ConfigBuilder::default()
            .user(format!("{UID}:{UID}"))
            .env(vec![
                "PATH=/usr/local/bin".to_string(),
                format!("SSL_CERT_FILE=/{CA_BUNDLE}"),
            ])
            .cmd(vec!["worker".to_string(), "--help".to_string()])
            .working_dir("/tmp")
            .labels(annotations.clone())
            .build()?;
        let mut image = ImageConfigurationBuilder::default()
            .created(spec.created.clone())
            .architecture(platform.arch())
            .os(Os::Linux)
            .config(config)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![layer.diff_id.clone()])
                    .build()?,
            )
            .history(vec![HistoryBuilder::default()
                .created(spec.created.clone())
                .created_by(CREATED_BY)
                .build()?])
            .build()?;
        if let Some(v) = platform.variant() {
            image.set_variant(Some(v.to_string()));
        }
        let config_desc = blobs.add(
            MediaType::ImageConfig,
            canonical_json(serde_json::to_value(&image)?)?,
        )?;
        let layer_desc = blobs.add(MediaType::ImageLayerGzip, layer.gzip)?;

        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_desc.clone())
            .layers(vec![layer_desc])
            .annotations(annotations.clone())
            .build()?;
        let manifest_bytes = canonical_json(serde_json::to_value(&manifest)?)?;
        let compressed_size = layer_size + config_desc.size() + manifest_bytes.len() as u64;
        let mut manifest_desc = blobs.add(MediaType::ImageManifest, manifest_bytes)?;
        let mut p = PlatformBuilder::default()
            .architecture(platform.arch())
            .os(Os::Linux);
        if let Some(v) = platform.variant() {
            p = p.variant(v);
        }
        manifest_desc.set_platform(Some(p.build()?));
        report.push(BuiltPlatform {
            platform,
            manifest_digest: manifest_desc.digest().to_string(),
            layer_size,
            tar_size: layer.tar_size,
            compressed_size,
        });
        manifests.push(manifest_desc);
    }

    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .annotations(annotations)
        .build()?;
    let mut index_desc = blobs.add(
        MediaType::ImageIndex,
        canonical_json(serde_json::to_value(&index)?)?,
    )?;
    index_desc.set_annotations(Some(HashMap::from([(
        ANNOTATION_REF_NAME.to_string(),
        spec.tag.clone(),
    )])));
    let index_digest = index_desc.digest().to_string();
    let top = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![index_desc])
        .build()?;

    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()?;
    let mut files = vec![
        (
            "oci-layout".to_string(),
            canonical_json(serde_json::to_value(&layout)?)?,
        ),
        (
            "index.json".to_string(),
            canonical_json(serde_json::to_value(&top)?)?,
        ),
    ];
    for (digest, bytes) in blobs.0 {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digests");
        files.push((format!("blobs/sha256/{hex}"), bytes));
    }
    Ok((
        files,
        Built {
            index_digest,
            platforms: report,
        },
    ))
}

/// Writes the layout at `out`, replacing an OCI layout already there (only a layout, or an empty directory).
/// The layout is written beside it first, so a failed build leaves `out` as it was.
pub fn write(spec: &Spec, out: &Path) -> Result<Built> {
    let (files, built) = render(spec)?;
    let name = out
        .file_name()
        .ok_or_else(|| anyhow!("--out {}: needs a directory name", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)
        .with_context(|| format!("--out {}: creating {}", out.display(), parent.display()))?;
    if out.exists() {
        let is_layout = out.join("oci-layout").is_file();
        let is_empty = out.is_dir() && fs::read_dir(out)?.next().is_none();
        if !is_layout && !is_empty {
            bail!(
                "--out {}: exists and is not an OCI image layout; refusing to replace it",
                out.display()
            );
        }
    }
    let staging = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir_all(staging.join("blobs/sha256"))?;
        for (path, bytes) in &files {
            fs::write(staging.join(path), bytes)
                .with_context(|| format!("writing {}", staging.join(path).display()))?;
        }
        if out.exists() {
            fs::remove_dir_all(out)
                .with_context(|| format!("removing the old {}", out.display()))?;
        }
        fs::rename(&staging, out)
            .with_context(|| format!("moving {} to {}", staging.display(), out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result.map(|()| built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_every_map() {
        let mut m = HashMap::new();
        for k in ["zeta", "alpha", "mu", "beta", "omega", "kappa"] {
            m.insert(
                k.to_string(),
                vec![HashMap::from([(k.to_string(), 1), ("a".to_string(), 2)])],
            );
        }
        let s =
            String::from_utf8(canonical_json(serde_json::to_value(&m).unwrap()).unwrap()).unwrap();
        assert!(
            s.starts_with(r#"{"alpha":[{"a":2,"alpha":1}],"beta""#),
            "{s}"
        );
        assert!(s.ends_with(r#""zeta":[{"a":2,"zeta":1}]}"#), "{s}");
    }

    #[test]
    fn ca_bundle_is_pem_of_every_root() {
        let pem = ca_bundle();
        let n = webpki_root_certs::TLS_SERVER_ROOT_CERTS.len();
        assert!(n > 100, "{n} roots");
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----\n").count(), n);
        assert_eq!(pem.matches("-----END CERTIFICATE-----\n").count(), n);
        assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("dth-release-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Fake static binaries (an ELF header, no code) for both platforms.
    fn fake_bins(root: &Path, amd64_machine: u16, arm64_machine: u16) -> Vec<(Platform, PathBuf)> {
        let mut dirs = Vec::new();
        for (p, m) in [
            (Platform::Amd64, amd64_machine),
            (Platform::Arm64, arm64_machine),
        ] {
            let dir = root.join(p.name());
            fs::create_dir_all(&dir).unwrap();
            for b in BINARIES {
                let mut bytes = elf::fake(m, &[1]);
                bytes.extend(format!("{b} for {}", p.name()).as_bytes());
                fs::write(dir.join(b), bytes).unwrap();
            }
            dirs.push((p, dir));
        }
        dirs
    }

    fn spec(bin_dirs: Vec<(Platform, PathBuf)>) -> Spec {
        Spec {
            bin_dirs,
            version: "0.1.0".into(),
            revision: "0123abcd".into(),
            source: "https://github.com/dth/dth".into(),
            created: "2026-01-01T00:00:00Z".into(),
            mtime: 1_767_225_600,
            tag: "0.1.0".into(),
        }
    }

    #[test]
    fn two_builds_give_one_digest_and_the_same_layout() {
        let tmp = TempDir::new("twice");
        let s = spec(fake_bins(&tmp.0, elf::EM_X86_64, elf::EM_AARCH64));
        let a = write(&s, &tmp.0.join("a")).unwrap();
        let b = write(&s, &tmp.0.join("b")).unwrap();
        assert_eq!(a.index_digest, b.index_digest);
        let list = |d: &Path| {
            let mut v: Vec<_> = fs::read_dir(d.join("blobs/sha256"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(list(&tmp.0.join("a")), list(&tmp.0.join("b")));
        // 2 x (layer, config, manifest) + the index.
        assert_eq!(list(&tmp.0.join("a")).len(), 7);
        for f in ["oci-layout", "index.json"] {
            assert_eq!(
                fs::read(tmp.0.join("a").join(f)).unwrap(),
                fs::read(tmp.0.join("b").join(f)).unwrap()
            );
        }
        // Rewriting a layout in place gives the same result, and replaces it.
        fs::write(tmp.0.join("a/blobs/sha256/stale"), "x").unwrap();
        assert_eq!(
            write(&s, &tmp.0.join("a")).unwrap().index_digest,
            a.index_digest
        );
        assert!(!tmp.0.join("a/blobs/sha256/stale").exists());

        let index: Value =
            serde_json::from_slice(&fs::read(tmp.0.join("a/index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], a.index_digest.as_str());
        assert_eq!(
            index["manifests"][0]["annotations"][ANNOTATION_REF_NAME],
            "0.1.0"
        );
        let hex = a.index_digest.strip_prefix("sha256:").unwrap();
        let inner: Value =
            serde_json::from_slice(&fs::read(tmp.0.join("a/blobs/sha256").join(hex)).unwrap())
                .unwrap();
        assert_eq!(
            inner["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(
            inner["manifests"][0]["platform"],
            serde_json::json!({"architecture": "amd64", "os": "linux"})
        );
        assert_eq!(
            inner["manifests"][1]["platform"],
            serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
        );
        assert_eq!(inner["annotations"][ANNOTATION_REVISION], "0123abcd");
        let manifest_hex = inner["manifests"][1]["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let manifest: Value = serde_json::from_slice(
            &fs::read(tmp.0.join("a/blobs/sha256").join(manifest_hex)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let config_hex = manifest["config"]["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let config: Value = serde_json::from_slice(
            &fs::read(tmp.0.join("a/blobs/sha256").join(config_hex)).unwrap(),
        )
        .unwrap();
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(config["variant"], "v8");
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(
            config["config"]["Cmd"],
            serde_json::json!(["worker", "--help"])
        );
        assert!(config["config"].get("Entrypoint").is_none());
        assert_eq!(
            config["config"]["Labels"][ANNOTATION_SOURCE],
            "https://github.com/dth/dth"
        );
        assert_eq!(config["created"], "2026-01-01T00:00:00Z");
    }

    #[test]
    fn refuses_binaries_of_the_wrong_machine_naming_the_flag() {
        let tmp = TempDir::new("wrong");
        // amd64 binaries in the arm64 dir: the mistake that would ship x86_64 to t4g.
        let s = spec(fake_bins(&tmp.0, elf::EM_X86_64, elf::EM_X86_64));
        let err = format!("{:#}", write(&s, &tmp.0.join("out")).err().unwrap());
        assert!(
            err.starts_with(&format!(
                "--bin-dir arm64={}",
                tmp.0.join("arm64").display()
            )),
            "{err}"
        );
        assert!(err.contains("finder is an x86_64 ELF binary"), "{err}");
        assert!(err.contains("linux/arm64/v8"), "{err}");
        assert!(!tmp.0.join("out").exists());
    }

    #[test]
    fn refuses_a_bin_dir_without_worker() {
        let tmp = TempDir::new("missing");
        let s = spec(fake_bins(&tmp.0, elf::EM_X86_64, elf::EM_AARCH64));
        fs::remove_file(tmp.0.join("amd64/worker")).unwrap();
        let err = format!("{:#}", write(&s, &tmp.0.join("out")).err().unwrap());
        assert!(err.starts_with("--bin-dir amd64="), "{err}");
        assert!(
            err.contains("worker is missing")
                && err.contains("scripts/build-binaries --arch amd64"),
            "{err}"
        );
    }

    /// The layout scripts/build-binaries writes: one multi-call `dth`, `finder` and `worker` linked to it.
    fn multicall_bins(
        root: &Path,
        amd64_machine: u16,
        arm64_machine: u16,
    ) -> Vec<(Platform, PathBuf)> {
        let mut dirs = Vec::new();
        for (p, m) in [
            (Platform::Amd64, amd64_machine),
            (Platform::Arm64, arm64_machine),
        ] {
            let dir = root.join(p.name());
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("dth"), elf::fake(m, &[1])).unwrap();
            for b in BINARIES {
                std::os::unix::fs::symlink("dth", dir.join(b)).unwrap();
            }
            dirs.push((p, dir));
        }
        dirs
    }

    #[test]
    fn a_multicall_binary_is_stored_once_with_its_links() {
        let tmp = TempDir::new("multicall");
        let dirs = multicall_bins(&tmp.0, elf::EM_X86_64, elf::EM_AARCH64);
        let bins = read_binaries(Platform::Arm64, &dirs[1].1).unwrap();
        assert_eq!(
            bins,
            [
                Binary::File {
                    name: "dth".into(),
                    bytes: elf::fake(elf::EM_AARCH64, &[1])
                },
                Binary::Link {
                    name: "finder".into(),
                    target: "dth".into()
                },
                Binary::Link {
                    name: "worker".into(),
                    target: "dth".into()
                },
            ]
        );
        let a = write(&spec(dirs.clone()), &tmp.0.join("a")).unwrap();
        assert_eq!(
            write(&spec(dirs), &tmp.0.join("b")).unwrap().index_digest,
            a.index_digest
        );

        // A link out of the bin dir is followed and copied.
        let other = tmp.0.join("elsewhere");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("w"), elf::fake(elf::EM_AARCH64, &[])).unwrap();
        fs::remove_file(tmp.0.join("arm64/worker")).unwrap();
        std::os::unix::fs::symlink(other.join("w"), tmp.0.join("arm64/worker")).unwrap();
        let bins = read_binaries(Platform::Arm64, &tmp.0.join("arm64")).unwrap();
        assert_eq!(bins.len(), 3);
        assert!(bins.contains(&Binary::File {
            name: "worker".into(),
            bytes: elf::fake(elf::EM_AARCH64, &[])
        }));
    }

    #[test]
    fn refuses_a_multicall_binary_of_the_wrong_machine_naming_the_link() {
        let tmp = TempDir::new("multicall-wrong");
        let s = spec(multicall_bins(&tmp.0, elf::EM_X86_64, elf::EM_X86_64));
        let err = format!("{:#}", write(&s, &tmp.0.join("out")).err().unwrap());
        assert!(err.starts_with("--bin-dir arm64="), "{err}");
        assert!(
            err.contains("finder (-> dth) is an x86_64 ELF binary"),
            "{err}"
        );
        // A dangling link is a missing binary.
        let tmp = TempDir::new("multicall-dangling");
        let dirs = multicall_bins(&tmp.0, elf::EM_X86_64, elf::EM_AARCH64);
        fs::remove_file(tmp.0.join("amd64/dth")).unwrap();
        let err = format!(
            "{:#}",
            write(&spec(dirs), &tmp.0.join("out")).err().unwrap()
        );
        assert!(
            err.starts_with("--bin-dir amd64=") && err.contains("is missing"),
            "{err}"
        );
    }

    #[test]
    fn refuses_to_replace_what_is_not_a_layout() {
        let tmp = TempDir::new("notlayout");
        let s = spec(fake_bins(&tmp.0, elf::EM_X86_64, elf::EM_AARCH64));
        fs::create_dir_all(tmp.0.join("out")).unwrap();
        fs::write(tmp.0.join("out/precious"), "x").unwrap();
        let err = format!("{:#}", write(&s, &tmp.0.join("out")).err().unwrap());
        assert!(err.contains("not an OCI image layout"), "{err}");
        assert!(tmp.0.join("out/precious").exists());
    }

    #[test]
    fn users_and_groups() {
        assert!(passwd()
            .lines()
            .any(|l| l == "dth:x:65532:65532:dth:/tmp:/sbin/nologin"));
        assert!(group().lines().any(|l| l == "dth:x:65532:"));
        assert!(passwd().starts_with("root:x:0:0:"));
    }
}
