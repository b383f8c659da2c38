//! A throwaway instance: a root directory run as its own little machine, the way cloud-init and systemd run
//! user data and units — as root, with absolute paths (`/etc/dth/job.json`, `/etc/systemd/system/...`), but
//! inside a private mount and PID namespace whose `init` is chrooted into the root, so nothing touches the
//! machine running the tests and nothing the instance started outlives it. The host's `/usr` is mounted
//! read-only (bash, coreutils, curl, skopeo, qemu), `/usr/local`, `/etc` and `/var` are the instance's own,
//! and a `shims/` directory first on PATH holds the commands an EC2 instance would have but this machine must
//! not run for real: `docker`, `systemctl`, `sysctl`, `dnf`, `aws` (and, for [`Shims::Recording`], `curl`).
//! Every shim call is recorded ([`Instance::calls`]).
//!
//! Two sets of shims:
//! - [`Shims::Recording`]: record, and act only as far as a script needs to go on (the user data test);
//! - [`Shims::Acting`]: what the EC2 stand-in boots: `docker` pulls the image from its registry for the
//!   machine's platform (skopeo), unpacks it, and runs its program in the image's root as the image's user
//!   (arm64 under `qemu-aarch64-static`), `docker stop -t` signals it and waits; `aws` makes the Auto Scaling
//!   and ECR calls the CLI would make (endpoints from `AWS_ENDPOINT_URL_AUTO_SCALING` /
//!   `AWS_ENDPOINT_URL_ECR`, as the CLI honours them); curl is the real one, talking to the stand-in's
//!   metadata service. `systemctl` records: the stand-in's systemd reads what was enabled.
//!
//! Needs root (namespaces, chroot, the script's `install -o 65532`).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The instance id the recording metadata shim hands out.
pub const INSTANCE_ID: &str = "i-0123456789abcdef0";
/// The ECR password the recording `aws ecr get-login-password` shim prints.
pub const ECR_PASSWORD: &str = "ecr-password-from-the-role";
const TOKEN: &str = "imds-session-token";
const CALLS: &str = "var/log/shim-calls";
const FIELD: char = '\u{1f}';
const RECORD: char = '\u{1e}';
/// Where the stand-in tells the acting shims about the machine: `arch` (its platform, `amd64`/`arm64`) and
/// `container.env` (what the host network gives a container: the metadata service's address).
pub const MACHINE_DIR: &str = "/etc/ec2-standin";
/// The commands systemd finds for bare names (systemd ≥ 239), after the shims.
pub const PATH: &str = "/shims:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin";
/// Where util-linux keeps the kernel's parent-death signal within reach of code without `unsafe`.
const SETPRIV: [&str; 2] = ["/usr/bin/setpriv", "/bin/setpriv"];

/// Which shims an instance gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shims {
    Recording,
    Acting,
}

/// The line every shim starts with: log `name FS arg FS arg ... RS` in one write (O_APPEND makes it atomic:
/// the two ends of `aws ... | docker login` log at once).
fn record() -> String {
    format!(
        "record=\"$(printf '%s\\x1f' \"$(basename \"$0\")\" \"$@\")\"; printf '%s\\x1e' \"$record\" >> /{CALLS}\n"
    )
}

/// Recording shims: they log and act only as far as the script needs.
fn recording_shim(name: &str) -> String {
    match name {
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
    }
}

/// `docker`, as far as dth's units use it, without a daemon: images are pulled with skopeo for the
/// machine's platform and unpacked; `run` replaces itself with the image's program, chrooted into the
/// image's root with the volumes bind-mounted, as the given user, with the image's environment plus `--env`.
const DOCKER: &str = r#"state=/var/lib/docker
arch="$(cat /etc/ec2-standin/arch)"
image_dir() { printf '%s/images/%s' "$state" "$(printf '%s' "$1" | sha256sum | cut -c1-40)"; }
pid_of() { cat "$state/containers/$1.pid" 2>/dev/null || true; }
running() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
case "$1" in
image)
  [ "${2:-}" = inspect ] && [ -f "$(image_dir "$3")/config.json" ] ;;
login)
  shift; user=; host=; stdin=no
  while [ $# -gt 0 ]; do
    case "$1" in
      --username|-u) user=$2; shift 2 ;;
      --password-stdin) stdin=yes; shift ;;
      *) host=$1; shift ;;
    esac
  done
  [ "$stdin" = yes ] || { echo "docker login (stand-in): only --password-stdin" >&2; exit 1; }
  password="$(cat)"
  [ -n "$password" ] || { echo "docker login: empty password" >&2; exit 1; }
  install -d -m 0700 /root/.docker
  printf '%s:%s' "$user" "$password" > "/root/.docker/auth-$host"
  echo "Login Succeeded" ;;
pull)
  ref=$2; host=${ref%%/*}; d="$(image_dir "$ref")"
  rm -rf "$d.tmp"; mkdir -p "$d.tmp/rootfs"
  # Docker trusts registries on 127.0.0.0/8 without TLS by default.
  tls=true; case "$host" in 127.*|localhost|localhost:*) tls=false ;; esac
  creds=(); [ -f "/root/.docker/auth-$host" ] && creds=(--src-creds "$(cat "/root/.docker/auth-$host")")
  skopeo --insecure-policy copy --quiet --override-os linux --override-arch "$arch" \
    --src-tls-verify="$tls" "${creds[@]}" "docker://$ref" "dir:$d.tmp/blobs"
  for layer in $(jq -r '.layers[].digest' "$d.tmp/blobs/manifest.json"); do
    tar -xzf "$d.tmp/blobs/${layer#*:}" -C "$d.tmp/rootfs"
  done
  cfg="$(jq -r '.config.digest' "$d.tmp/blobs/manifest.json")"
  [ "$(jq -r .architecture "$d.tmp/blobs/${cfg#*:}")" = "$arch" ] \
    || { echo "docker pull: $ref has no linux/$arch image" >&2; exit 1; }
  cp "$d.tmp/blobs/${cfg#*:}" "$d.tmp/config.json"
  rm -rf "$d.tmp/blobs" "$d"; mv "$d.tmp" "$d"
  echo "$ref: pulled for linux/$arch" ;;
rm)
  shift; [ "$1" = --force ] || [ "$1" = -f ] && shift
  pid="$(pid_of "$1")"; if running "$pid"; then kill -KILL "$pid"; fi
  rm -f "$state/containers/$1.pid"; umount -R "$state/containers/$1/root" 2>/dev/null || true ;;
stop)
  shift; t=10; if [ "$1" = --time ] || [ "$1" = -t ]; then t=$2; shift 2; fi
  pid="$(pid_of "$1")"; running "$pid" || exit 0
  kill -TERM "$pid"
  for _ in $(seq $((t * 10))); do running "$pid" || exit 0; sleep 0.1; done
  echo "docker stop: $1 still running after ${t}s: SIGKILL" >&2
  kill -KILL "$pid" ;;
run)
  shift; name=; user=; envs=(); vols=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --rm) shift ;;
      --name) name=$2; shift 2 ;;
      --network) [ "$2" = host ] || { echo "docker run (stand-in): only --network host" >&2; exit 125; }; shift 2 ;;
      --user|-u) user=$2; shift 2 ;;
      --stop-timeout) shift 2 ;;
      --volume|-v) vols+=("$2"); shift 2 ;;
      --env|-e) envs+=("$2"); shift 2 ;;
      # Output goes to the machine's console either way.
      --log-driver|--log-opt) shift 2 ;;
      -*) echo "docker run (stand-in): unsupported option $1" >&2; exit 125 ;;
      *) break ;;
    esac
  done
  [ -n "$name" ] || { echo "docker run (stand-in): --name is required" >&2; exit 125; }
  ref=$1; shift
  d="$(image_dir "$ref")"; cfg="$d/config.json"
  [ -f "$cfg" ] || { echo "Unable to find image '$ref' locally" >&2; exit 125; }
  c="$state/containers/$name/root"
  umount -R "$c" 2>/dev/null || true
  mkdir -p "$c"; mount --bind "$d/rootfs" "$c"
  mkdir -p "$c/dev" "$c/proc"; mount --rbind /dev "$c/dev"; mount -t proc proc "$c/proc"
  for v in "${vols[@]}"; do
    IFS=: read -r src dst mode <<<"$v"
    mkdir -p "$c$(dirname "$dst")"
    if [ -d "$src" ]; then mkdir -p "$c$dst"; else touch "$c$dst"; fi
    mount --bind "$src" "$c$dst"
    if [ "${mode:-}" = ro ]; then mount -o remount,bind,ro "$c$dst"; fi
  done
  mapfile -t env < <(jq -r '.config.Env // [] | .[]' "$cfg")
  env+=("${envs[@]}")
  [ -f /etc/ec2-standin/container.env ] && mapfile -t -O "${#env[@]}" env < /etc/ec2-standin/container.env
  mapfile -t entry < <(jq -r '.config.Entrypoint // [] | .[]' "$cfg")
  if [ $# -gt 0 ]; then cmd=("$@"); else mapfile -t cmd < <(jq -r '.config.Cmd // [] | .[]' "$cfg"); fi
  argv=("${entry[@]}" "${cmd[@]}")
  prog=${argv[0]}
  if [[ "$prog" != */* ]]; then
    path="$(jq -r '.config.Env // [] | .[] | select(startswith("PATH=")) | .[5:]' "$cfg")"
    for p in ${path//:/ }; do
      if [ -e "$c$p/$prog" ] || [ -L "$c$p/$prog" ]; then prog="$p/$prog"; break; fi
    done
  fi
  interp=()
  if [ "$arch" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then
    touch "$c/.qemu-aarch64-static"; mount --bind "$(command -v qemu-aarch64-static)" "$c/.qemu-aarch64-static"
    interp=(/.qemu-aarch64-static)
  fi
  [ -n "$user" ] || user="$(jq -r '.config.User // "0:0"' "$cfg")"
  mkdir -p "$state/containers"; echo $$ > "$state/containers/$name.pid"
  exec /usr/bin/env -i "${env[@]}" /usr/sbin/chroot --userspec="$user" "$c" "${interp[@]}" "$prog" "${argv[@]:1}" ;;
*) echo "docker (stand-in): unsupported command $1" >&2; exit 1 ;;
esac
"#;

/// The AWS CLI, as far as the user data and its units use it: each command becomes the API call the CLI
/// would make, to the endpoint the CLI would use (`AWS_ENDPOINT_URL_<SERVICE>`, else AWS's). The calls are
/// not signed: the servers here (moto, the stand-in's Auto Scaling endpoint) do not check signatures, and the
/// credential scope still names the region.
const AWS: &str = r#"region="${AWS_REGION:-us-east-1}"
service=$1; op=$2; shift 2
params=()
while [ $# -gt 0 ]; do
  case "$1" in
    --region) region=$2; shift 2 ;;
    --no-*) params+=("$(printf '%s' "${1#--no-}" | sed -E 's/(^|-)([a-z])/\U\2/g')=false"); shift ;;
    --*) params+=("$(printf '%s' "${1#--}" | sed -E 's/(^|-)([a-z])/\U\2/g')=$2"); shift 2 ;;
    *) echo "aws (stand-in): unexpected argument $1" >&2; exit 252 ;;
  esac
done
auth="Authorization: AWS4-HMAC-SHA256 Credential=ASIASTANDIN/$(date -u +%Y%m%d)/$region/$service/aws4_request, SignedHeaders=host, Signature=0"
case "$service $op" in
'ecr get-login-password')
  endpoint="${AWS_ENDPOINT_URL_ECR:-https://api.ecr.$region.amazonaws.com}"
  curl -fsS --retry 3 -X POST -H "$auth" -H 'Content-Type: application/x-amz-json-1.1' \
    -H 'X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken' -d '{}' "$endpoint/" \
    | jq -r '.authorizationData[0].authorizationToken' | base64 -d | cut -d: -f2- ;;
autoscaling\ *)
  endpoint="${AWS_ENDPOINT_URL_AUTO_SCALING:-https://autoscaling.$region.amazonaws.com}"
  action="$(printf '%s' "$op" | sed -E 's/(^|-)([a-z])/\U\2/g')"
  form=(--data-urlencode "Action=$action" --data-urlencode "Version=2011-01-01")
  for p in "${params[@]}"; do form+=(--data-urlencode "$p"); done
  curl -sS --fail-with-body --retry 3 -H "$auth" "${form[@]}" "$endpoint/" >/dev/null ;;
*) echo "aws (stand-in): unsupported command $service $op" >&2; exit 252 ;;
esac
"#;

fn shim(name: &str, shims: Shims) -> String {
    let body = match (shims, name) {
        (Shims::Acting, "docker") => DOCKER.to_owned(),
        (Shims::Acting, "aws") => AWS.to_owned(),
        (Shims::Acting, _) => String::new(),
        (Shims::Recording, name) => recording_shim(name),
    };
    let record = record();
    format!("#!/bin/bash\nset -euo pipefail\n{record}{body}exit 0\n")
}

/// The commands the shims stand in for.
pub const SHIMS: &[&str] = &["docker", "systemctl", "sysctl", "dnf", "aws", "curl"];

pub struct Instance {
    root: PathBuf,
    /// The namespace's holder once booted: `unshare`, whose child is the instance's PID 1.
    init: Mutex<Option<(Child, u32)>>,
}

impl Instance {
    /// A fresh root under `dir` with every recording shim, or all but those in `without` (say, `docker` on
    /// an AMI that lacks it).
    pub fn new(dir: &Path, without: &[&str]) -> anyhow::Result<Instance> {
        Self::with_shims(dir, Shims::Recording, without)
    }

    /// A fresh root with the given shims (the acting set has no curl shim: the real curl is used).
    pub fn with_shims(dir: &Path, shims: Shims, without: &[&str]) -> anyhow::Result<Instance> {
        let root = dir.to_path_buf();
        for d in [
            "etc",
            "usr",
            "usr-local",
            "dev",
            "proc",
            "tmp",
            "run",
            "var/log",
            "var/lib",
            "var/tmp",
            "shims",
            "root",
        ] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        fs::set_permissions(root.join("var/tmp"), fs::Permissions::from_mode(0o1777))?;
        // Debian's merged /usr.
        for (link, to) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            if Path::new("/").join(to).exists() && !root.join(link).exists() {
                std::os::unix::fs::symlink(to, root.join(link))?;
            }
        }
        let skip = |s: &&&str| without.contains(s) || (shims == Shims::Acting && **s == "curl");
        for name in SHIMS.iter().filter(|s| !skip(s)) {
            let path = root.join("shims").join(name);
            fs::write(&path, shim(name, shims))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        fs::write(root.join(CALLS), "")?;
        Ok(Instance {
            root,
            init: Mutex::new(None),
        })
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

    /// Start the instance's namespaces: PID 1 is a `sleep` chrooted into the root, with `/usr`, `/dev` and a
    /// `/proc` of its own mounted. The holder gets SIGKILL from the kernel if the thread that called this
    /// dies (where setpriv exists), and takes every process of the instance with it. Booting twice is a
    /// no-op.
    pub fn boot(&self) -> anyhow::Result<()> {
        if !rustix::process::geteuid().is_root() {
            bail!("an instance needs root (mount and PID namespaces, chroot, chown)");
        }
        let mut init = self.init.lock().unwrap_or_else(|e| e.into_inner());
        if init.is_some() {
            return Ok(());
        }
        // Mounts live only in the new namespace; /usr is read-only so a stray write fails loudly.
        let setup = r#"set -e
r="$1"
mount --rbind /usr "$r/usr"
mount -o remount,bind,ro "$r/usr"
mount --bind "$r/usr-local" "$r/usr/local"
mount --rbind /dev "$r/dev"
mount -t proc proc "$r/proc"
exec chroot "$r" /bin/sleep infinity"#;
        let mut cmd = match SETPRIV.iter().find(|p| Path::new(p).is_file()) {
            Some(sp) => {
                let mut c = Command::new(sp);
                c.args(["--pdeathsig", "KILL", "--", "unshare"]);
                c
            }
            None => Command::new("unshare"),
        };
        let mut child = cmd
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                setup,
                "sh",
            ])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting unshare")?;
        // PID 1 is ready once it runs in the root.
        let holder = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let root = fs::canonicalize(&self.root)?;
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("the instance's namespace ended at once ({status}): {err}");
            }
            let pid1 = children(holder).into_iter().next();
            if let Some(pid) = pid1 {
                if fs::read_link(format!("/proc/{pid}/root")).ok().as_deref() == Some(&root) {
                    *init = Some((child, pid));
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the instance's PID 1 did not start within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `argv` as a command that runs inside the booted instance as root, with a clean environment: PATH with
    /// the shims first, HOME, LANG and `env`. The process it starts on the host is `nsenter`, whose one child
    /// is the command inside (see [`children`]).
    pub fn command(
        &self,
        argv: &[&str],
        env: &BTreeMap<String, String>,
    ) -> anyhow::Result<Command> {
        self.boot()?;
        let pid1 = self
            .init
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, p)| *p)
            .context("instance not booted")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(pid1.to_string())
            .args([
                "--mount",
                "--pid",
                "--root",
                "--wd",
                "--",
                "/usr/bin/env",
                "-i",
            ])
            .arg(format!("PATH={PATH}"))
            .args(["HOME=/root", "LANG=C.UTF-8"])
            .args(env.iter().map(|(k, v)| format!("{k}={v}")))
            .args(argv)
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// Run `argv` inside the instance as root, to the end.
    pub fn run(&self, argv: &[&str], env: &BTreeMap<String, String>) -> anyhow::Result<Output> {
        self.command(argv, env)?
            .output()
            .context("starting nsenter")
    }

    /// Power off: SIGKILL to the namespace's holder, which takes PID 1 and with it every process of the
    /// instance.
    pub fn shutdown(&self) {
        if let Some((mut child, _)) = self.init.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The children of a host process (`nsenter`'s one child is the command it runs in the instance).
pub fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
