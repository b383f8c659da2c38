//! A private container registry (Debian's docker-registry) on a free port, and the project's image in it:
//! what the EC2 stand-in's instances pull, as real ones pull from ECR.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A command's path on PATH, or a panic that says what installs it.
pub fn on_path(cmd: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(cmd))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{cmd} is not on PATH: run scripts/dev-env install (Debian {package})")
        })
}

pub fn skopeo() -> Command {
    Command::new(on_path("skopeo", "skopeo"))
}

/// A private docker-registry on a free port, storing under its directory; killed on drop.
pub struct Registry {
    child: Child,
    port: u16,
    /// The htpasswd login it requires, if any.
    login: Option<(String, String)>,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        Self::start_with(dir, None)
    }

    /// A registry behind htpasswd Basic auth (bcrypt, as docker-registry requires) with one `user`: how ECR's
    /// `AWS:<token>` login is imitated.
    pub fn start_with_login(dir: &Path, user: &str, password: &str) -> Registry {
        Self::start_with(dir, Some((user.to_owned(), password.to_owned())))
    }

    fn start_with(dir: &Path, login: Option<(String, String)>) -> Registry {
        fs::create_dir_all(dir).unwrap();
        let exe = on_path("docker-registry", "docker-registry");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("registry.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    \
             enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage").display()
        );
        if let Some((user, password)) = &login {
            let out = Command::new(on_path("htpasswd", "apache2-utils"))
                .args(["-Bbn", user, password])
                .output()
                .expect("running htpasswd");
            assert!(
                out.status.success(),
                "htpasswd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let file = dir.join("htpasswd");
            fs::write(&file, &out.stdout).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: dth-test\n    path: {}\n",
                file.display()
            ));
        }
        fs::write(&config, yaml).unwrap();
        let log = fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(exe)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut registry = Registry { child, port, login };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !registry.answers() {
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!(
                    "docker-registry exited ({status}): {}",
                    fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer GET /v2/ within 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// `GET /v2/` answers 200.
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        // 401: a registry behind a login answers, refusing the anonymous request.
        ["200", "401"].iter().any(|s| {
            response.starts_with(&format!("HTTP/1.1 {s}"))
                || response.starts_with(&format!("HTTP/1.0 {s}"))
        })
    }

    /// The login it requires (`user`, `password`), if any.
    pub fn login(&self) -> Option<(&str, &str)> {
        self.login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// skopeo's credential flag for this registry (`--<which>-creds=user:password`), if it has a login.
    fn creds(&self, which: &str) -> Vec<String> {
        match &self.login {
            Some((u, p)) => vec![format!("--{which}={u}:{p}")],
            None => vec![],
        }
    }

    /// `skopeo inspect --raw` of `repo:tag` (or `repo@digest`) here: the manifest as the registry serves it.
    pub fn inspect_raw(&self, reference: &str) -> Vec<u8> {
        let out = skopeo()
            .args(["inspect", "--raw", "--tls-verify=false"])
            .args(self.creds("creds"))
            .arg(format!("docker://{}/{reference}", self.address()))
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo inspect {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Whether `repo:tag` (or `repo@digest`) exists here, as skopeo sees it.
    pub fn has(&self, reference: &str) -> bool {
        skopeo()
            .args(["inspect", "--raw", "--tls-verify=false"])
            .args(self.creds("creds"))
            .arg(format!("docker://{}/{reference}", self.address()))
            .output()
            .expect("running skopeo")
            .status
            .success()
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Copy the OCI layout at `layout` (an index: every platform) to `repo:tag` here; returns
    /// `ADDRESS/repo@sha256:...`, the reference pinned by the index's digest.
    pub fn push(&self, layout: &Path, repo: &str, tag: &str) -> String {
        let dest = format!("{}/{repo}:{tag}", self.address());
        let out = skopeo()
            .args([
                "copy",
                "--all",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .args(self.creds("dest-creds"))
            .arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{dest}"))
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy to {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .expect("the layout's index names its image index")
            .to_owned();
        format!("{}/{repo}@{digest}", self.address())
    }

    /// The project's image (`scripts/build-image`'s `target/image/oci`) pushed here as `dth:test`; returns
    /// the reference pinned by digest, as the provider's default image is.
    pub fn project_image(&self) -> String {
        let layout = crate::target_dir().join("image").join("oci");
        assert!(
            layout.join("index.json").is_file(),
            "{} is missing: run scripts/build-image (after scripts/build-binaries --arch all)",
            layout.display()
        );
        self.push(&layout, "dth", "test")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
