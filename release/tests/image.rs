//! The image as it ships, from the real static binaries in target/dist (scripts/build-binaries): two builds
//! give the same bytes, and a registry serves back exactly what was built, for both platforms, with binaries
//! that run as their platform (arm64 under qemu-aarch64-static).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use dth_tests::registry::{on_path, skopeo, Registry};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dth-release");
const MB: f64 = 1024.0 * 1024.0;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `[("amd64", dir), ("arm64", dir)]` of the real binaries (target/dist, or DTH_DIST_DIR like
/// scripts/build-image); fails (never skips) when they are not built.
fn dist() -> [(&'static str, PathBuf); 2] {
    let root = std::env::var_os("DTH_DIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/dist"));
    let dirs = ["amd64", "arm64"].map(|a| (a, root.join(format!("linux_{a}"))));
    for (_, dir) in &dirs {
        for b in ["finder", "worker"] {
            assert!(
                dir.join(b).is_file(),
                "{} is missing: run scripts/build-binaries first (it writes both platforms' static finder and \
                 worker to target/dist/linux_amd64 and target/dist/linux_arm64)",
                dir.join(b).display()
            );
        }
    }
    dirs
}

/// A fresh directory under cargo's tmp dir for integration tests, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("dth-release-image")
            .join(format!("{name}-{}", std::process::id()));
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

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

fn build(out: &Path) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("image");
    for (arch, dir) in dist() {
        cmd.arg("--bin-dir")
            .arg(format!("{arch}={}", dir.display()));
    }
    cmd.args([
        "--version",
        "0.1.0",
        "--revision",
        "0123456789abcdef0123456789abcdef01234567",
        "--source",
        "https://github.com/dth/dth",
        "--created",
        "2026-01-02T03:04:05+01:00",
        "--tag",
        "0.1.0",
    ]);
    cmd.arg("--out").arg(out);
    run(&mut cmd).trim().to_string()
}

/// Every file under `dir` (relative path, bytes), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap()
}

fn json_blob(layout: &Path, digest: &str) -> Value {
    serde_json::from_slice(&blob(layout, digest)).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The layout's tagged index: its digest and content.
fn index(layout: &Path) -> (String, Value) {
    let top: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = top["manifests"][0]["digest"].as_str().unwrap().to_string();
    let index = json_blob(layout, &digest);
    (digest, index)
}

/// Per platform (`amd64`, `arm64`): manifest digest, layer digest and what a pull transfers (layer + config +
/// manifest), printed for the record.
fn sizes(layout: &Path) -> Vec<(String, String, String, u64)> {
    let (_, index) = index(layout);
    let mut out = Vec::new();
    for m in index["manifests"].as_array().unwrap() {
        let arch = m["platform"]["architecture"].as_str().unwrap().to_string();
        let digest = m["digest"].as_str().unwrap().to_string();
        let manifest = json_blob(layout, &digest);
        let layer = &manifest["layers"][0];
        let total = m["size"].as_u64().unwrap()
            + manifest["config"]["size"].as_u64().unwrap()
            + layer["size"].as_u64().unwrap();
        eprintln!(
            "image linux/{arch}: {total} bytes compressed ({:.2} MiB; layer {} bytes)",
            total as f64 / MB,
            layer["size"]
        );
        out.push((
            arch,
            digest,
            layer["digest"].as_str().unwrap().to_string(),
            total,
        ));
    }
    out
}

#[test]
fn two_builds_of_the_same_binaries_are_byte_identical() {
    let tmp = TempDir::new("twice");
    let started = Instant::now();
    let a = build(&tmp.0.join("a"));
    eprintln!("one image build: {:.1} s", started.elapsed().as_secs_f64());
    let b = build(&tmp.0.join("b"));
    assert!(a.starts_with("sha256:") && a.len() == 71, "{a}");
    assert_eq!(a, b, "two builds, two index digests");
    let (ta, tb) = (tree(&tmp.0.join("a")), tree(&tmp.0.join("b")));
    assert_eq!(
        ta.iter().map(|f| &f.0).collect::<Vec<_>>(),
        tb.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for ((path, x), (_, y)) in ta.iter().zip(&tb) {
        assert!(x == y, "{path} differs between two builds");
    }
    // Every blob is named by its digest, and the layout's index is the one printed.
    for (path, bytes) in &ta {
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            assert_eq!(sha256_hex(bytes), hex, "{path}");
        }
    }
    assert_eq!(index(&tmp.0.join("a")).0, a);
    // The budget: at most 15 MB to pull per platform.
    for (arch, _, _, total) in sizes(&tmp.0.join("a")) {
        assert!(
            total <= 15_000_000,
            "linux/{arch}: {total} bytes compressed, over 15 MB"
        );
    }
}

/// A repository script, without the CARGO_* variables `cargo test` gives this process (a nested cargo would
/// otherwise see another package's environment and rebuild).
fn script(name: &str) -> Command {
    let mut cmd = Command::new(repo_root().join("scripts").join(name));
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(repo_root());
    cmd
}

/// An entry of a layer: path, mode, file bytes, symlink target.
struct Unpacked {
    path: String,
    mode: u32,
    data: Vec<u8>,
    link: Option<String>,
}

fn unpack(layer: &[u8]) -> Vec<Unpacked> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mode = e.header().mode().unwrap();
        let link = (e.header().entry_type() == tar::EntryType::Symlink).then(|| {
            e.link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        });
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Unpacked {
            path,
            mode,
            data,
            link,
        });
    }
    out
}

/// What the image must hold for a bin dir: `finder` and `worker`, or links to the multi-call file beside them.
fn expected_listing(bin_dir: &Path) -> Vec<(String, u32)> {
    let mut want: Vec<(String, u32)> = [
        ("etc/", 0o755),
        ("etc/group", 0o644),
        ("etc/passwd", 0o644),
        ("etc/ssl/", 0o755),
        ("etc/ssl/certs/", 0o755),
        ("etc/ssl/certs/ca-certificates.crt", 0o644),
        ("tmp/", 0o1777),
        ("usr/", 0o755),
        ("usr/local/", 0o755),
        ("usr/local/bin/", 0o755),
    ]
    .map(|(p, m)| (p.to_string(), m))
    .to_vec();
    for b in ["finder", "worker"] {
        match fs::read_link(bin_dir.join(b)) {
            Ok(t) if !t.to_string_lossy().contains('/') => {
                want.push((format!("usr/local/bin/{b}"), 0o777));
                want.push((format!("usr/local/bin/{}", t.to_string_lossy()), 0o755));
            }
            _ => want.push((format!("usr/local/bin/{b}"), 0o755)),
        }
    }
    want.sort();
    want.dedup();
    want
}

#[test]
fn published_index_serves_both_platforms_and_their_binaries_run() {
    dist();
    let qemu = on_path("qemu-aarch64-static", "qemu-user-static");
    let tmp = TempDir::new("publish");
    let registry = Registry::start(&tmp.0);
    let layout = tmp.0.join("image/oci");

    // Built the way a release is: scripts/build-image from the binaries already in target/dist.
    let started = Instant::now();
    let built = run(script("build-image")
        .args(["--skip-binaries", "--tag", "it"])
        .arg("--out")
        .arg(&layout))
    .trim()
    .to_string();
    eprintln!(
        "scripts/build-image --skip-binaries: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        fs::read_to_string(tmp.0.join("image/index.digest"))
            .unwrap()
            .trim(),
        built
    );
    let (digest, index) = index(&layout);
    assert_eq!(digest, built);
    let revision = run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo_root()));
    assert_eq!(
        index["annotations"]["org.opencontainers.image.revision"],
        revision.trim()
    );
    let platforms = sizes(&layout);

    let dest = format!("{}/dth:it", registry.address());
    let pushed = run(script("publish-image")
        .arg(&dest)
        .arg("--layout")
        .arg(&layout));
    assert_eq!(
        pushed.trim(),
        built,
        "publish-image prints the pushed digest"
    );

    let docker = format!("docker://{dest}");
    let raw = run(skopeo().args(["inspect", "--raw", "--tls-verify=false", &docker]));
    assert_eq!(format!("sha256:{}", sha256_hex(raw.as_bytes())), built);
    let served: Value = serde_json::from_str(&raw).unwrap();
    let served_platforms: Vec<&Value> = served["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["platform"])
        .collect();
    assert_eq!(
        served_platforms,
        [
            &serde_json::json!({"architecture": "amd64", "os": "linux"}),
            &serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
        ]
    );

    for ((arch, manifest_digest, layer_digest, _), (_, bin_dir)) in platforms.iter().zip(dist()) {
        // What a host of this platform is given.
        let mut inspect = skopeo();
        inspect.args(["--override-os", "linux", "--override-arch", arch]);
        if arch == "arm64" {
            inspect.args(["--override-variant", "v8"]);
        }
        let info: Value = serde_json::from_str(&run(inspect.args([
            "inspect",
            "--tls-verify=false",
            &docker,
        ])))
        .unwrap();
        assert_eq!(info["Architecture"], arch.as_str());
        assert_eq!(info["Os"], "linux");
        assert_eq!(info["Digest"], built.as_str());
        assert_eq!(info["Layers"], serde_json::json!([layer_digest]));
        assert_eq!(
            info["Labels"]["org.opencontainers.image.source"],
            "https://github.com/dth/dth"
        );

        // Pull it as that host would and look inside.
        let pulled = tmp.0.join(format!("pulled-{arch}"));
        run(skopeo()
            .args(["--override-os", "linux", "--override-arch", arch])
            .args(["copy", "--src-tls-verify=false", &docker])
            .arg(format!("oci:{}:x", pulled.display())));
        let top: Value =
            serde_json::from_slice(&fs::read(pulled.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            top["manifests"][0]["digest"],
            manifest_digest.as_str(),
            "{arch}: the built manifest"
        );
        let manifest = json_blob(&pulled, manifest_digest);
        let layer_bytes = blob(&pulled, manifest["layers"][0]["digest"].as_str().unwrap());
        let config = json_blob(&pulled, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], arch.as_str());
        assert_eq!(config["config"]["User"], "65532:65532");
        let files = unpack(&layer_bytes);
        let listing: Vec<(String, u32)> = files.iter().map(|f| (f.path.clone(), f.mode)).collect();
        assert_eq!(
            listing,
            expected_listing(&bin_dir),
            "{arch}: nothing else in the image"
        );
        let worker = files
            .iter()
            .find(|f| f.path == "usr/local/bin/worker")
            .unwrap();
        let worker = match &worker.link {
            Some(target) => {
                let path = format!("usr/local/bin/{target}");
                &files.iter().find(|f| f.path == path).unwrap().data
            }
            None => &worker.data,
        };
        let (machine, triple) = match arch.as_str() {
            "amd64" => (62u16, "x86_64-unknown-linux-musl"),
            _ => (183u16, "aarch64-unknown-linux-musl"),
        };
        assert_eq!(&worker[..4], b"\x7fELF");
        assert_eq!(
            u16::from_le_bytes([worker[18], worker[19]]),
            machine,
            "{arch}: e_machine"
        );

        let root = tmp.0.join(format!("root-{arch}"));
        for f in &files {
            let p = root.join(&f.path);
            if f.path.ends_with('/') {
                fs::create_dir_all(&p).unwrap();
            } else if let Some(target) = &f.link {
                std::os::unix::fs::symlink(target, &p).unwrap();
            } else {
                fs::write(&p, &f.data).unwrap();
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&p, fs::Permissions::from_mode(f.mode)).unwrap();
            }
        }
        let mut cmd = if arch == "arm64" {
            let mut c = Command::new(&qemu);
            c.arg("usr/local/bin/worker");
            c
        } else {
            Command::new(root.join("usr/local/bin/worker"))
        };
        let version = run(cmd.arg("--version").current_dir(&root));
        eprintln!("linux/{arch} worker --version: {}", version.trim());
        assert!(
            version.lines().any(|l| l.contains(triple)),
            "{arch}: worker --version says {version:?}, not {triple}"
        );
    }
}
