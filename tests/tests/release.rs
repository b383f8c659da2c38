//! The provider as a release ships it — `dth-release provider-zip`, `manifest`, `sums` (what scripts/release
//! and scripts/install-provider run) — installed by the real terraform CLI the two ways a user installs it:
//! - from a packed filesystem mirror (scripts/install-provider): `terraform init` unpacks exactly the built
//!   binary and locks its `h1:` hash, and then refuses a different zip under the same name;
//! - `--from` a release directory: the zip is checked against the directory's SHA256SUMS before it is installed;
//! - through the provider registry protocol with a GPG-signed SHA256SUMS, as a registry serves a release:
//!   `terraform init` writes into `.terraform.lock.hcl` a `zh:` hash for every zip SHA256SUMS lists, equal to
//!   its line, next to the `h1:` of what it unpacked; a SHA256SUMS that lies about the zip is refused.
//!
//! The debug provider stands in for a release build (same packaging, same names; only the bytes differ).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use base64::Engine;
use dth_tests::{bin, repo_root, without_cargo_env};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn zip_name(platform: &str) -> String {
    format!("terraform-provider-dth_{VERSION}_{platform}.zip")
}

fn sums_name() -> String {
    format!("terraform-provider-dth_{VERSION}_SHA256SUMS")
}

/// A fresh directory for one test, removed when the test passes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("release")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The output with every run of whitespace made one space: terraform wraps its messages.
fn flat(o: &Output) -> String {
    text(o).split_whitespace().collect::<Vec<_>>().join(" ")
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed:\n{}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// sha256 in hex, by coreutils' `sha256sum` (not by the code under test).
fn sha256sum(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Terraform's `h1:` hash of an unpacked provider package holding only `name` with `data`: the base64 of the
/// sha256 of the package's `sha256sum`-style listing (golang.org/x/mod's dirhash.Hash1).
fn h1(name: &str, data: &[u8]) -> String {
    let listing = format!("{}  {name}\n", sha256sum(data));
    let sum = hex::decode(sha256sum(listing.as_bytes())).unwrap();
    format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(sum)
    )
}

/// `file -> hex` from a SHA256SUMS file.
fn sums_lines(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (hex, name) = l.split_once("  ").expect("sha256sum format");
            (name.to_string(), hex.to_string())
        })
        .collect()
}

/// The `hashes` terraform locked for registry.terraform.io/dth/dth.
fn locked_hashes(work: &Path) -> BTreeSet<String> {
    let lock = std::fs::read_to_string(work.join(".terraform.lock.hcl")).unwrap();
    let block = lock
        .split("provider \"registry.terraform.io/dth/dth\" {")
        .nth(1)
        .unwrap_or_else(|| panic!("no dth/dth in the lock file:\n{lock}"));
    let list = block
        .split("hashes = [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or_else(|| panic!("no hashes in the lock file:\n{lock}"));
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// A configuration that needs dth/dth and nothing else, in `dir`.
fn work_dir(dir: &Path) -> PathBuf {
    let work = dir.to_path_buf();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join("main.tf"),
        format!(
            "terraform {{\n  required_providers {{\n    dth = {{\n      source  = \"dth/dth\"\n      version = \"{VERSION}\"\n    }}\n  }}\n}}\n"
        ),
    )
    .unwrap();
    work
}

fn terraform(work: &Path, cli_config: &Path, args: &[&str]) -> Output {
    Command::new(repo_root().join(".venv/bin/terraform"))
        .args(args)
        .arg("-no-color")
        .current_dir(work)
        .env("TF_CLI_CONFIG_FILE", cli_config)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_IN_AUTOMATION", "1")
        .env_remove("TF_PLUGIN_CACHE_DIR")
        .env_remove("TF_DATA_DIR")
        .output()
        .expect("running terraform (scripts/dev-env install puts it in .venv)")
}

/// The smallest file `dth-release provider-zip` takes as a linux_arm64 provider: a 64-bit little-endian ELF
/// header for aarch64. It stands in for the arm64 package, which terraform on this machine only ever sees as a
/// line of SHA256SUMS.
fn arm64_stand_in() -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little-endian
    b[6] = 1;
    b[16] = 2; // ET_EXEC
    b[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    b.extend_from_slice(b"arm64 stand-in\n");
    b
}

/// A release directory as scripts/release writes it, for the provider: both zips, the manifest, SHA256SUMS.
fn release_dir(dir: &Path) -> PathBuf {
    let rel = bin("dth-release");
    let out = dir.join("release");
    std::fs::create_dir_all(&out).unwrap();
    let arm = dir.join("arm64-provider");
    std::fs::write(&arm, arm64_stand_in()).unwrap();
    let provider = bin("terraform-provider-dth");
    for (platform, binary) in [("linux_amd64", &provider), ("linux_arm64", &arm)] {
        run_ok(
            without_cargo_env(&rel)
                .args(["provider-zip", "--binary"])
                .arg(binary)
                .args([
                    "--version",
                    VERSION,
                    "--platform",
                    platform,
                    "--mtime",
                    "1767225600",
                    "--out",
                ])
                .arg(&out),
        );
    }
    let manifest = out.join(format!("terraform-provider-dth_{VERSION}_manifest.json"));
    run_ok(
        without_cargo_env(&rel)
            .args(["manifest", "--out"])
            .arg(&manifest),
    );
    run_ok(
        without_cargo_env(&rel)
            .args(["sums", "--out"])
            .arg(out.join(sums_name()))
            .arg(out.join(zip_name("linux_amd64")))
            .arg(out.join(zip_name("linux_arm64")))
            .arg(&manifest),
    );
    out
}

fn install_provider(args: &[&str], root: &Path) -> Output {
    without_cargo_env(repo_root().join("scripts/install-provider"))
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .expect("running scripts/install-provider")
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn install_provider_packs_a_mirror_that_terraform_init_installs_and_locks() {
    let scratch = Scratch::new("packed-mirror");
    let provider = std::fs::read(bin("terraform-provider-dth")).unwrap();
    let root = scratch.0.join("tf");
    // What an older install-provider left: the same version unpacked. It must go.
    let unpacked = root.join(format!(
        "mirror/registry.terraform.io/dth/dth/{VERSION}/linux_amd64"
    ));
    std::fs::create_dir_all(&unpacked).unwrap();
    std::fs::write(
        unpacked.join(format!("terraform-provider-dth_v{VERSION}")),
        b"stale",
    )
    .unwrap();

    let o = install_provider(&[], &root);
    assert!(o.status.success(), "install-provider failed:\n{}", text(&o));
    let cli_config = root.join("terraformrc");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "export TF_CLI_CONFIG_FILE={} CHECKPOINT_DISABLE=1\n",
            cli_config.display()
        ),
        "stdout is only the export line (logs go to stderr)"
    );
    let packed = format!("registry.terraform.io/dth/dth/{}", zip_name("linux_amd64"));
    assert_eq!(files(&root.join("mirror")), std::slice::from_ref(&packed));
    let zip = std::fs::read(root.join("mirror").join(&packed)).unwrap();
    // The SHA256SUMS beside the packaged zip lists it (and the manifest), as a release's does.
    let sums = sums_lines(&root.join("dist").join(sums_name()));
    let names: Vec<&str> = sums.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            zip_name("linux_amd64"),
            format!("terraform-provider-dth_{VERSION}_manifest.json")
        ]
    );
    assert_eq!(sums[0].1, sha256sum(&zip));

    let work = work_dir(&scratch.0.join("work"));
    let o = terraform(&work, &cli_config, &["init", "-input=false"]);
    assert!(o.status.success(), "terraform init failed:\n{}", text(&o));
    assert!(
        text(&o).contains(&format!("Installed dth/dth v{VERSION}")),
        "{}",
        text(&o)
    );
    // Terraform unpacked exactly the built binary, and locked it by its h1: hash. A filesystem mirror gives
    // it no signed checksums, so it records no zh: hashes (those come from a registry: the next tests).
    let exe = format!("terraform-provider-dth_v{VERSION}");
    let installed = work.join(format!(
        ".terraform/providers/registry.terraform.io/dth/dth/{VERSION}/linux_amd64/{exe}"
    ));
    assert!(
        std::fs::read(&installed).unwrap() == provider,
        "{} differs from the built provider",
        installed.display()
    );
    assert_eq!(locked_hashes(&work), BTreeSet::from([h1(&exe, &provider)]));

    // Another binary under the same name: the lock file's h1: refuses it.
    let other = scratch.0.join("other");
    run_ok(
        without_cargo_env(bin("dth-release"))
            .args(["provider-zip", "--binary"])
            .arg(bin("dth-release"))
            .args([
                "--version",
                VERSION,
                "--platform",
                "linux_amd64",
                "--mtime",
                "1767225600",
                "--out",
            ])
            .arg(&other),
    );
    std::fs::copy(
        other.join(zip_name("linux_amd64")),
        root.join("mirror").join(&packed),
    )
    .unwrap();
    std::fs::remove_dir_all(work.join(".terraform")).unwrap();
    let o = terraform(&work, &cli_config, &["init", "-input=false"]);
    assert!(
        !o.status.success(),
        "init took a different binary:\n{}",
        text(&o)
    );
    assert!(
        flat(&o).contains(
            "doesn't match any of the checksums previously recorded in the dependency lock file"
        ),
        "{}",
        text(&o)
    );
}

#[test]
fn install_provider_from_a_release_checks_its_sha256sums() {
    let scratch = Scratch::new("from-release");
    let release = release_dir(&scratch.0);
    let root = scratch.0.join("tf");
    let packed = root
        .join("mirror/registry.terraform.io/dth/dth")
        .join(zip_name("linux_amd64"));

    let o = install_provider(&["--from", release.to_str().unwrap()], &root);
    assert!(
        o.status.success(),
        "install-provider --from failed:\n{}",
        text(&o)
    );
    assert!(text(&o).contains("matches"), "{}", text(&o));
    assert!(
        std::fs::read(&packed).unwrap()
            == std::fs::read(release.join(zip_name("linux_amd64"))).unwrap(),
        "the mirror holds the release's zip"
    );
    let cli_config = root.join("terraformrc");
    let work = work_dir(&scratch.0.join("work"));
    let o = terraform(&work, &cli_config, &["init", "-input=false"]);
    assert!(o.status.success(), "terraform init failed:\n{}", text(&o));

    // One hex digit of the amd64 line changed: nothing is installed.
    std::fs::remove_file(&packed).unwrap();
    let sums = release.join(sums_name());
    let good = std::fs::read_to_string(&sums).unwrap();
    std::fs::write(&sums, flip_amd64_sum(&good)).unwrap();
    let o = install_provider(&["--from", release.to_str().unwrap()], &root);
    assert!(
        !o.status.success(),
        "installed despite a wrong checksum:\n{}",
        text(&o)
    );
    assert!(text(&o).contains("does not match"), "{}", text(&o));
    assert!(!packed.exists());

    // No line for the zip at all, or no SHA256SUMS: refused too.
    let amd64 = zip_name("linux_amd64");
    let without: String = good
        .lines()
        .filter(|l| !l.ends_with(&amd64))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&sums, without).unwrap();
    let o = install_provider(&["--from", release.to_str().unwrap()], &root);
    assert!(!o.status.success());
    assert!(text(&o).contains("has no line for"), "{}", text(&o));
    std::fs::remove_file(&sums).unwrap();
    let o = install_provider(&["--from", release.to_str().unwrap()], &root);
    assert!(!o.status.success());
    assert!(text(&o).contains("is missing"), "{}", text(&o));
    assert!(!packed.exists());
}

/// A throwaway GPG home with one signing key; the agent gpg starts for it is stopped on drop.
struct Gpg {
    home: PathBuf,
}

impl Gpg {
    fn new() -> Gpg {
        // Short: gpg-agent's socket lives in it, and a socket path has at most 107 bytes.
        let home = std::env::temp_dir().join(format!("dth-gpg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let gpg = Gpg { home };
        run_ok(gpg.cmd().args([
            "--passphrase",
            "",
            "--quick-gen-key",
            "dth release test <release-test@dth.invalid>",
            "ed25519",
            "sign",
            "never",
        ]));
        gpg
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", &self.home).args(["--batch", "--quiet"]);
        c
    }

    fn sign(&self, file: &Path) {
        let sig = PathBuf::from(format!("{}.sig", file.display()));
        let _ = std::fs::remove_file(&sig);
        run_ok(
            self.cmd()
                .arg("--detach-sign")
                .arg("--output")
                .arg(&sig)
                .arg(file),
        );
    }

    fn key_id(&self) -> String {
        let list = run_ok(self.cmd().args(["--with-colons", "--list-keys"]));
        list.lines()
            .find(|l| l.starts_with("pub:"))
            .and_then(|l| l.split(':').nth(4))
            .expect("a public key")
            .to_string()
    }

    fn armor(&self) -> String {
        run_ok(self.cmd().args(["--armor", "--export"]))
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &self.home)
            .args(["--kill", "gpg-agent"])
            .status();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// The provider registry protocol (v1) for one release directory, served on 127.0.0.1: the versions list and
/// the linux_amd64 download document, whose `shasum` comes from SHA256SUMS as a registry's does; the files
/// themselves under /files/. Records the paths asked for.
struct Registry {
    url: String,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Registry {
    fn serve(release: PathBuf, gpg: &Gpg) -> Registry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (key_id, armor) = (gpg.key_id(), gpg.armor());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (base, log) = (url.clone(), asked.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req);
                let path = req.split(' ').nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(path.clone());
                let body = Self::answer(&release, &base, &key_id, &armor, &path);
                let head = match &body {
                    Some(b) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .into()
                    }
                };
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body.unwrap_or_default());
            }
        });
        Registry { url, asked }
    }

    fn answer(
        release: &Path,
        base: &str,
        key_id: &str,
        armor: &str,
        path: &str,
    ) -> Option<Vec<u8>> {
        let providers = "/v1/providers/dth/dth";
        if path == format!("{providers}/versions") {
            let v = serde_json::json!({"versions": [{
                "version": VERSION,
                "protocols": ["6.0"],
                "platforms": [{"os": "linux", "arch": "amd64"}, {"os": "linux", "arch": "arm64"}],
            }]});
            return Some(v.to_string().into_bytes());
        }
        if path == format!("{providers}/{VERSION}/download/linux/amd64") {
            let zip = zip_name("linux_amd64");
            let shasum = sums_lines(&release.join(sums_name()))
                .into_iter()
                .find(|(n, _)| *n == zip)
                .map(|(_, h)| h)?;
            let v = serde_json::json!({
                "protocols": ["6.0"],
                "os": "linux",
                "arch": "amd64",
                "filename": zip,
                "download_url": format!("{base}/files/{zip}"),
                "shasums_url": format!("{base}/files/{}", sums_name()),
                "shasums_signature_url": format!("{base}/files/{}.sig", sums_name()),
                "shasum": shasum,
                "signing_keys": {"gpg_public_keys": [{"key_id": key_id, "ascii_armor": armor}]},
            });
            return Some(v.to_string().into_bytes());
        }
        let name = path.strip_prefix("/files/")?;
        if name.contains('/') {
            return None;
        }
        std::fs::read(release.join(name)).ok()
    }

    /// A CLI config that sends registry.terraform.io's provider requests here.
    fn cli_config(&self, path: &Path) -> PathBuf {
        std::fs::write(
            path,
            format!(
                "host \"registry.terraform.io\" {{\n  services = {{\n    \"providers.v1\" = \"{}/v1/providers/\"\n  }}\n}}\ndisable_checkpoint = true\n",
                self.url
            ),
        )
        .unwrap();
        path.to_path_buf()
    }
}

#[test]
fn terraform_init_from_a_registry_locks_zh_hashes_equal_to_sha256sums() {
    let scratch = Scratch::new("registry");
    let release = release_dir(&scratch.0);
    let sums = release.join(sums_name());
    let gpg = Gpg::new();
    gpg.sign(&sums);
    let registry = Registry::serve(release.clone(), &gpg);
    let cli_config = registry.cli_config(&scratch.0.join("terraformrc"));

    let work = work_dir(&scratch.0.join("work"));
    let o = terraform(&work, &cli_config, &["init", "-input=false"]);
    assert!(o.status.success(), "terraform init failed:\n{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "Installed dth/dth v{VERSION} (self-signed, key ID"
        )),
        "terraform checked the signature:\n{}",
        text(&o)
    );
    assert!(
        registry
            .asked
            .lock()
            .unwrap()
            .contains(&format!("/files/{}", zip_name("linux_amd64"))),
        "the zip came from this registry"
    );

    // Every line of the signed SHA256SUMS as zh:<hex>: both zips (so that the lock verifies an arm64 install
    // too) and the manifest (terraform takes the whole signed list; registry-installed providers' lock files
    // carry their manifest's line the same way); plus the h1: of what was unpacked.
    let lines = sums_lines(&sums);
    assert_eq!(lines.len(), 3);
    let mut want: BTreeSet<String> = lines.iter().map(|(_, h)| format!("zh:{h}")).collect();
    assert_eq!(want.len(), 3);
    let amd64 = std::fs::read(release.join(zip_name("linux_amd64"))).unwrap();
    assert!(want.contains(&format!("zh:{}", sha256sum(&amd64))));
    let exe = format!("terraform-provider-dth_v{VERSION}");
    let provider = std::fs::read(bin("terraform-provider-dth")).unwrap();
    want.insert(h1(&exe, &provider));
    assert_eq!(locked_hashes(&work), want);

    // A SHA256SUMS that lies about the zip, properly signed: terraform refuses the download.
    let good = std::fs::read_to_string(&sums).unwrap();
    std::fs::write(&sums, flip_amd64_sum(&good)).unwrap();
    gpg.sign(&sums);
    let work = work_dir(&scratch.0.join("work-lying-sums"));
    let o = terraform(&work, &cli_config, &["init", "-input=false"]);
    assert!(
        !o.status.success(),
        "init installed a zip its SHA256SUMS does not list:\n{}",
        text(&o)
    );
    assert!(
        flat(&o).contains("archive has incorrect checksum"),
        "{}",
        text(&o)
    );
    assert!(!work.join(".terraform.lock.hcl").exists());
}

/// `sums` with the first hex digit of the linux_amd64 zip's line changed.
fn flip_amd64_sum(sums: &str) -> String {
    let line = sums
        .lines()
        .find(|l| l.ends_with(&zip_name("linux_amd64")))
        .expect("a linux_amd64 line");
    let flipped = format!(
        "{}{}",
        if line.starts_with('0') { '1' } else { '0' },
        &line[1..]
    );
    sums.replace(line, &flipped)
}
