//! A throwaway instance root for running user data the way cloud-init does: as root, with absolute paths
//! (`/etc/dth/job.json`, `/etc/systemd/system/...`), but inside a private mount namespace and `chroot`, so
//! nothing touches the machine running the tests. The host's `/usr` is mounted read-only (bash, coreutils,
//! curl's absence and all), `/usr/local` and `/etc` are the instance's own, and a `shims/` directory first on
//! PATH holds the commands the test plays: `docker`, `systemctl`, `sysctl`, `dnf`, `aws`, `curl`. Every shim
//! call is recorded ([`Instance::calls`]).
//!
//! Needs root (mount namespaces, chroot, and the script's `install -o 65532`).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context as _};

/// The instance id the metadata shim hands out.
pub const INSTANCE_ID: &str = "i-0123456789abcdef0";
/// The ECR password the `aws ecr get-login-password` shim prints.
pub const ECR_PASSWORD: &str = "ecr-password-from-the-role";
const TOKEN: &str = "imds-session-token";
const CALLS: &str = "var/log/shim-calls";
const FIELD: char = '\u{1f}';
const RECORD: char = '\u{1e}';

/// Shims as bash scripts: they log `name FS arg FS arg ... RS` and act as far as the script needs.
fn shim(name: &str) -> String {
    // One write per record (O_APPEND makes it atomic): the two ends of `aws ... | docker login` log at once.
    let record = format!(
        "record=\"$(printf '%s\\x1f' \"$(basename \"$0\")\" \"$@\")\"; printf '%s\\x1e' \"$record\" >> /{CALLS}\n"
    );
    let body = match name {
        // `image inspect` fails until a pull or SHIM_IMAGE_PRESENT says the image is there; a login keeps
        // the password it was given on stdin.
        "docker" => "case \"$1 ${2:-}\" in\n\
             \x20 'image inspect') [ -e /var/lib/shim-image-present ] ;;\n\
             \x20 'login '*) cat > /var/log/docker-login.stdin ;;\n\
             \x20 'pull '*) touch /var/lib/shim-image-present ;;\n\
             esac\n"
            .to_owned(),
        // IMDSv2: a token for a PUT, metadata only with that token.
        "curl" => format!(
            "args=\"$*\"\n\
             case \"$args\" in\n\
             \x20 *'-X PUT'*latest/api/token*) printf '%s' {TOKEN} ;;\n\
             \x20 *'X-aws-ec2-metadata-token: {TOKEN}'*latest/meta-data/instance-id) printf '%s' {INSTANCE_ID} ;;\n\
             \x20 *) echo \"curl shim: unexpected $args\" >&2; exit 22 ;;\n\
             esac\n"
        ),
        "aws" => format!(
            "case \"$1 ${{2:-}}\" in\n\
             \x20 'ecr get-login-password') printf '%s\\n' {ECR_PASSWORD} ;;\n\
             esac\n"
        ),
        _ => String::new(),
    };
    format!("#!/bin/bash\nset -eu\n{record}{body}exit 0\n")
}

/// The commands the shims stand in for.
pub const SHIMS: &[&str] = &["docker", "systemctl", "sysctl", "dnf", "aws", "curl"];

pub struct Instance {
    root: PathBuf,
}

impl Instance {
    /// A fresh root under `dir` with every shim, or all but those in `without` (say, `docker` on an AMI
    /// that lacks it).
    pub fn new(dir: &Path, without: &[&str]) -> anyhow::Result<Instance> {
        let root = dir.to_path_buf();
        for d in [
            "etc",
            "usr",
            "usr-local",
            "dev",
            "tmp",
            "run",
            "var/log",
            "var/lib",
            "shims",
            "root",
        ] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        // Debian's merged /usr.
        for (link, to) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            if Path::new("/").join(to).exists() {
                std::os::unix::fs::symlink(to, root.join(link))?;
            }
        }
        for name in SHIMS.iter().filter(|s| !without.contains(s)) {
            let path = root.join("shims").join(name);
            fs::write(&path, shim(name))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        fs::write(root.join(CALLS), "")?;
        Ok(Instance { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path inside the instance (`/etc/dth/job.json` → `<root>/etc/dth/job.json`).
    pub fn path(&self, inside: &str) -> PathBuf {
        let rel = inside.trim_start_matches('/');
        match rel.strip_prefix("usr/local") {
            Some(rest) => self
                .root
                .join("usr-local")
                .join(rest.trim_start_matches('/')),
            None => self.root.join(rel),
        }
    }

    /// Run `argv` inside the instance as root, with `env` and the shims first on PATH.
    pub fn run(&self, argv: &[&str], env: &BTreeMap<String, String>) -> anyhow::Result<Output> {
        if !rustix::process::geteuid().is_root() {
            bail!("running user data needs root (mount namespace, chroot, chown)");
        }
        let mut env_args: Vec<String> = vec![
            "PATH=/shims:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into(),
            "HOME=/root".into(),
            "LANG=C.UTF-8".into(),
        ];
        env_args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        // Mounts live only in the new namespace; /usr is read-only so a stray write fails loudly.
        let setup = r#"set -e
r="$1"; shift
mount --rbind /usr "$r/usr"
mount -o remount,bind,ro "$r/usr"
mount --bind "$r/usr-local" "$r/usr/local"
mount --rbind /dev "$r/dev"
exec chroot "$r" /usr/bin/env -i "$@""#;
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                setup,
                "sh",
            ])
            .arg(&self.root)
            .args(&env_args)
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .context("starting unshare")
    }

    /// Every shim call so far: `[command, args...]`.
    pub fn calls(&self) -> Vec<Vec<String>> {
        fs::read_to_string(self.root.join(CALLS))
            .unwrap_or_default()
            .split(RECORD)
            .filter(|r| !r.is_empty())
            .map(|r| {
                r.strip_suffix(FIELD)
                    .unwrap_or(r)
                    .split(FIELD)
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    }

    /// The calls of one command, without its name.
    pub fn calls_to(&self, command: &str) -> Vec<Vec<String>> {
        self.calls()
            .into_iter()
            .filter(|c| c[0] == command)
            .map(|c| c[1..].to_vec())
            .collect()
    }
}
