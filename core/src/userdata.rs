//! The EC2 user data that starts a finder or worker on an instance of a transfer's Auto Scaling group.
//!
//! The provider [`render`]s it into the launch templates; the provider's own refresh and import [`parse`] it
//! back. The script is plain bash, run once by cloud-init as root. It:
//! - writes the job config to `/etc/dth/job.json`, readable only by the image's user (the config names secrets
//!   by ARN only, never their values);
//! - turns on BBR congestion control with fair queueing, as Data Transfer Hub does;
//! - installs Docker when the AMI lacks it and reads the instance id from IMDSv2 (the launch template
//!   requires tokens);
//! - writes `/usr/local/libexec/dth/pull` (log in to ECR with the instance role when the image is there, then
//!   pull the image, pinned by digest when the reference carries one);
//! - installs one systemd unit for the role and starts it:
//!   - the worker restarts on any exit with growing delays (systemd ≥ 254 honours the steps; older ones
//!     restart every 10 s), and when it cannot stay up (5 failed starts in 15 minutes: image unpullable, config
//!     refused, …) `dth-unhealthy.service` marks the instance Unhealthy so that its group replaces it;
//!   - stopping gives the worker its shutdown grace plus time to release its jobs: `docker stop -t` and the
//!     unit's `TimeoutStopSec` are both longer than `worker.shutdown_grace_secs`;
//!   - the finder runs once; if it fails (the binary records the failed run in the ledger and scales its group
//!     in itself when it gets that far) `dth-finder-failed.service` sets the group back to 0 so that the next
//!     scheduled run still starts.
//! - with a log group, the container's output goes to CloudWatch Logs (Docker's awslogs driver, one stream
//!   per instance and role).
//!
//! Machine-readable copies of the role, group, image and arguments sit in `# dth:` comment lines so that
//! [`parse`] never has to understand shell quoting.

use serde::{Deserialize, Serialize};

use crate::config::TransferConfig;
use crate::error::{Error, Result};

/// Where the job config lives on the instance (and, mounted read-only, in the container).
pub const CONFIG_PATH: &str = "/etc/dth/job.json";
/// The image's non-root user (see `scripts/build-image`): the job config is handed to it.
pub const IMAGE_USER: &str = "65532:65532";
/// The systemd directory the units go to.
pub const UNIT_DIR: &str = "/etc/systemd/system";
const HEREDOC: &str = "DTH_JOB_CONFIG";
/// Time to release jobs after the grace period (a visibility change per job in flight) and for Docker to
/// stop the container: added to the grace for `docker stop -t`, and again for systemd's stop timeout.
pub const RELEASE_MARGIN_SECS: u64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Finder,
    Worker,
}

impl Role {
    pub fn binary(self) -> &'static str {
        match self {
            Role::Finder => "finder",
            Role::Worker => "worker",
        }
    }

    /// The systemd unit (and container) name of the role: `dth-worker.service`, container `dth-worker`.
    pub fn unit(self) -> String {
        format!("dth-{}.service", self.binary())
    }
}

/// What an instance runs: which binary, with which config and arguments, from which image.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    pub role: Role,
    pub config: TransferConfig,
    /// Arguments after `--config /etc/dth/job.json`, e.g. `["--concurrency", "4"]`.
    pub args: Vec<String>,
    /// The container image holding the `finder` and `worker` binaries.
    pub image: String,
    /// The instance's own Auto Scaling group (marked unhealthy, scaled in, lifecycle actions completed).
    pub group: String,
    /// The region of the control plane (the group, the log group, an ECR image's registry).
    pub region: String,
    /// CloudWatch Logs group for the container's output; None keeps Docker's local json-file logs.
    pub log_group: Option<String>,
}

/// An image reference's ECR registry host and region, when it is in ECR
/// (`<account>.dkr.ecr.<region>.amazonaws.com[.cn]/repo[:tag|@digest]`).
pub fn ecr_registry(image: &str) -> Option<(&str, &str)> {
    let (host, _) = image.split_once('/')?;
    let mut parts = host.split('.');
    let account = parts.next()?;
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (dkr, ecr, region) = (parts.next()?, parts.next()?, parts.next()?);
    let rest: Vec<&str> = parts.collect();
    let domain_ok = matches!(
        rest.as_slice(),
        ["amazonaws", "com"] | ["amazonaws", "com", "cn"]
    );
    (dkr == "dkr" && ecr == "ecr" && !region.is_empty() && domain_ok).then_some((host, region))
}

/// An ECR image's account, region and repository (`team/dth` in `…amazonaws.com/team/dth:1` or `@sha256:…`).
pub fn ecr_repository(image: &str) -> Option<(&str, &str, &str)> {
    let (host, region) = ecr_registry(image)?;
    let path = &image[host.len() + 1..];
    let path = path.split_once('@').map_or(path, |(p, _)| p);
    // A tag follows the last `:` after the last `/`.
    let name_start = path.rfind('/').map_or(0, |i| i + 1);
    let repository = match path[name_start..].find(':') {
        Some(i) => &path[..name_start + i],
        None => path,
    };
    let account = host.split('.').next()?;
    (!repository.is_empty()).then_some((account, region, repository))
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        s.to_string()
    } else if s.contains(|c: char| c.is_control()) {
        // Bash's $'...' keeps the script's lines its own: no value can end a heredoc or start a command.
        let mut out = String::from("$'");
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                c if c.is_control() && c.is_ascii() => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A word of a systemd `Exec*=` line: systemd splits on spaces and honours double quotes and backslash
/// escapes, and expands `%` specifiers and `$VAR`, so those are escaped (`%%`, `$$`).
fn unit_word(s: &str) -> String {
    let escaped = s.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && escaped
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,$".contains(&b))
    {
        escaped
    } else {
        let mut out = String::from("\"");
        for c in escaped.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                // A raw newline would end the unit's line: the rest would be read as directives.
                c if c.is_control() && c.is_ascii() => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
}

/// A value of a `# dth:` line as written: itself, or a JSON string when it holds a line break (or anything
/// that would not read back the same), so that no value can add a line to the script.
fn comment_value(v: &str) -> String {
    if v.starts_with('"') || v.contains(|c: char| c.is_control()) {
        serde_json::Value::from(v).to_string()
    } else {
        v.to_owned()
    }
}

/// The `docker run` of the role's unit (one line, systemd-quoted). Commands are bare names, found by
/// systemd in its fixed search path (`/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin`, systemd ≥ 239).
fn docker_run(spec: &LaunchSpec) -> String {
    let role = spec.role.binary();
    let grace = spec
        .config
        .worker()
        .shutdown_grace_secs
        .saturating_add(RELEASE_MARGIN_SECS);
    let mut words: Vec<String> = [
        "docker",
        "run",
        "--rm",
        "--name",
        &format!("dth-{role}"),
        "--network",
        "host",
        "--user",
        IMAGE_USER,
        "--stop-timeout",
        &grace.to_string(),
        "--volume",
        &format!("{CONFIG_PATH}:{CONFIG_PATH}:ro"),
        "--env",
        "DTH_INSTANCE_ID=${DTH_INSTANCE_ID}",
        "--env",
        &format!("DTH_AUTO_SCALING_GROUP={}", spec.group),
        "--env",
        &format!("AWS_REGION={}", spec.region),
    ]
    .iter()
    .map(|w| {
        // The instance id is the one expansion systemd is meant to do (from the EnvironmentFile).
        if w.contains("${DTH_INSTANCE_ID}") {
            (*w).to_owned()
        } else {
            unit_word(w)
        }
    })
    .collect();
    if let Some(group) = &spec.log_group {
        for opt in [
            "--log-driver".to_owned(),
            "awslogs".to_owned(),
            "--log-opt".to_owned(),
            format!("awslogs-region={}", spec.region),
            "--log-opt".to_owned(),
            format!("awslogs-group={group}"),
        ] {
            words.push(unit_word(&opt));
        }
        words.push("--log-opt".to_owned());
        words.push(format!("awslogs-stream=${{DTH_INSTANCE_ID}}/{role}"));
    }
    words.push(unit_word(&spec.image));
    for w in [role, "--config", CONFIG_PATH, "--log-format", "json"] {
        words.push(unit_word(w));
    }
    words.extend(spec.args.iter().map(|a| unit_word(a)));
    words.join(" ")
}

fn unit(spec: &LaunchSpec) -> String {
    let role = spec.role.binary();
    let grace = spec
        .config
        .worker()
        .shutdown_grace_secs
        .saturating_add(RELEASE_MARGIN_SECS);
    let common_unit = "Wants=network-online.target\n\
                       After=network-online.target docker.service\n\
                       Requires=docker.service";
    let common_service = format!(
        "Type=exec\n\
         EnvironmentFile=/etc/dth/instance.env\n\
         # Pulling a first image over a slow link can take minutes.\n\
         TimeoutStartSec=900\n\
         ExecStartPre=/usr/local/libexec/dth/pull\n\
         ExecStartPre=-docker rm --force dth-{role}\n\
         ExecStart={run}\n\
         ExecStop=docker stop --time {grace} dth-{role}\n\
         TimeoutStopSec={stop}",
        run = docker_run(spec),
        stop = grace.saturating_add(RELEASE_MARGIN_SECS),
    );
    match spec.role {
        Role::Worker => format!(
            "[Unit]\n\
             Description=Data Transfer Hub worker\n\
             {common_unit}\n\
             # A worker that cannot stay up (image unpullable, config refused, ...) is an instance to replace.\n\
             StartLimitIntervalSec=900\n\
             StartLimitBurst=5\n\
             OnFailure=dth-unhealthy.service\n\
             \n\
             [Service]\n\
             {common_service}\n\
             Restart=always\n\
             RestartSec=10\n\
             RestartSteps=5\n\
             RestartMaxDelaySec=300\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n"
        ),
        Role::Finder => format!(
            "[Unit]\n\
             Description=Data Transfer Hub finder\n\
             {common_unit}\n\
             # A failed run still ends: the group goes back to 0 so the next scheduled run starts afresh.\n\
             OnFailure=dth-finder-failed.service\n\
             \n\
             [Service]\n\
             {common_service}\n\
             Restart=no\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n"
        ),
    }
}

/// The oneshot unit the role's unit triggers when it fails.
fn on_failure_unit(spec: &LaunchSpec) -> (&'static str, String) {
    let region = unit_word(&spec.region);
    let group = unit_word(&spec.group);
    match spec.role {
        Role::Worker => (
            "dth-unhealthy.service",
            format!(
                "[Unit]\n\
                 Description=Mark this instance unhealthy: its Data Transfer Hub worker cannot stay up\n\
                 \n\
                 [Service]\n\
                 Type=oneshot\n\
                 EnvironmentFile=/etc/dth/instance.env\n\
                 ExecStart=aws autoscaling set-instance-health --region {region} \
                 --instance-id ${{DTH_INSTANCE_ID}} --health-status Unhealthy --no-should-respect-grace-period\n"
            ),
        ),
        Role::Finder => (
            "dth-finder-failed.service",
            format!(
                "[Unit]\n\
                 Description=End a failed Data Transfer Hub finder run: set its group back to 0\n\
                 \n\
                 [Service]\n\
                 Type=oneshot\n\
                 ExecStart=aws autoscaling set-desired-capacity --region {region} \
                 --auto-scaling-group-name {group} --desired-capacity 0 --no-honor-cooldown\n"
            ),
        ),
    }
}

/// `/usr/local/libexec/dth/pull`: the image, once per boot (restarts reuse it), after an ECR login.
fn pull_script(spec: &LaunchSpec) -> String {
    let image = shell_quote(&spec.image);
    let login = match ecr_registry(&spec.image) {
        Some((host, region)) => format!(
            "# ECR: log in with the instance role (tokens last 12 hours; a pull logs in afresh).\n\
             aws ecr get-login-password --region {region} \\\n  | docker login --username AWS --password-stdin {host}\n",
            region = shell_quote(region),
            host = shell_quote(host),
        ),
        None => String::new(),
    };
    format!(
        "#!/bin/bash\n\
         set -euo pipefail\n\
         docker image inspect {image} >/dev/null 2>&1 && exit 0\n\
         {login}\
         for attempt in 1 2 3; do\n\
         \x20 docker pull {image} && exit 0\n\
         \x20 sleep $((attempt * 10))\n\
         done\n\
         exit 1\n"
    )
}

/// The user data script for `spec` (plain text; EC2 wants it base64-encoded).
pub fn render(spec: &LaunchSpec) -> String {
    let config = serde_json::to_string_pretty(&spec.config).expect("job configs serialise");
    let args_json = serde_json::to_string(&spec.args).expect("strings serialise");
    let role = spec.role.binary();
    let (failure_name, failure_unit) = on_failure_unit(spec);
    let unit_name = spec.role.unit();
    format!(
        r#"#!/bin/bash
# Data Transfer Hub {role}, written by terraform-provider-dth; terraform replaces this launch template version.
# dth:role={role}
# dth:group={group}
# dth:region={region}
# dth:log_group={log_group}
# dth:image={image_raw}
# dth:args={args_json}
set -euo pipefail
umask 022
install -d -m 0755 /etc/dth /etc/sysctl.d /usr/local/libexec/dth {UNIT_DIR}
# The job config: for the image's user only (it names secrets by ARN, never their values).
install -m 0400 -o {uid} -g {gid} /dev/null {CONFIG_PATH}
cat > {CONFIG_PATH} <<'{HEREDOC}'
{config}
{HEREDOC}

# BBR congestion control with fair queueing, as Data Transfer Hub sets it: long, lossy paths copy faster.
cat > /etc/sysctl.d/90-dth.conf <<'DTH_SYSCTL'
net.core.default_qdisc = fq
net.ipv4.tcp_congestion_control = bbr
DTH_SYSCTL
sysctl -p /etc/sysctl.d/90-dth.conf

if ! command -v docker >/dev/null 2>&1; then
  for attempt in 1 2 3; do dnf install -y docker && break || sleep $((attempt * 10)); done
fi
systemctl enable --now docker

# IMDSv2 only: every metadata read carries a session token.
imds() {{
  local base="${{AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}}" token
  base="${{base%/}}"
  token="$(curl -fsS --retry 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$base/latest/api/token")"
  curl -fsS --retry 5 -H "X-aws-ec2-metadata-token: $token" "$base/latest/meta-data/$1"
}}
printf 'DTH_INSTANCE_ID=%s\n' "$(imds instance-id)" > /etc/dth/instance.env

cat > /usr/local/libexec/dth/pull <<'DTH_PULL'
{pull}DTH_PULL
chmod 0755 /usr/local/libexec/dth/pull

cat > {UNIT_DIR}/{failure_name} <<'DTH_UNIT'
{failure_unit}DTH_UNIT
cat > {UNIT_DIR}/{unit_name} <<'DTH_UNIT'
{unit}DTH_UNIT
systemctl daemon-reload
systemctl enable --now {unit_name}
"#,
        group = comment_value(&spec.group),
        region = comment_value(&spec.region),
        log_group = comment_value(spec.log_group.as_deref().unwrap_or("")),
        image_raw = comment_value(&spec.image),
        uid = IMAGE_USER.split(':').next().unwrap_or("0"),
        gid = IMAGE_USER.split(':').nth(1).unwrap_or("0"),
        pull = pull_script(spec),
        unit = unit(spec),
    )
}

fn comment(text: &str, name: &str) -> Result<String> {
    let tag = format!("# dth:{name}=");
    let raw = text
        .lines()
        .find_map(|l| l.strip_prefix(tag.as_str()))
        .ok_or_else(|| Error::config("user_data", format!("no `{tag}` line")))?;
    if raw.starts_with('"') {
        serde_json::from_str(raw)
            .map_err(|e| Error::config("user_data", format!("`{tag}` is not a JSON string: {e}")))
    } else {
        Ok(raw.to_owned())
    }
}

/// Read back what [`render`] wrote. Accepts the raw script or its base64 form.
pub fn parse(user_data: &str) -> Result<LaunchSpec> {
    let decoded;
    let text = if user_data.starts_with("#!") {
        user_data
    } else {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(user_data.trim())
            .map_err(|e| Error::config("user_data", format!("neither a script nor base64: {e}")))?;
        decoded = String::from_utf8(bytes)
            .map_err(|_| Error::config("user_data", "base64 of something that is not UTF-8"))?;
        &decoded
    };
    let role = match comment(text, "role")?.as_str() {
        "finder" => Role::Finder,
        "worker" => Role::Worker,
        other => {
            return Err(Error::config(
                "user_data",
                format!("unknown role `{other}`"),
            ))
        }
    };
    let image = comment(text, "image")?;
    let group = comment(text, "group")?;
    let region = comment(text, "region")?;
    let log_group = Some(comment(text, "log_group")?).filter(|g| !g.is_empty());
    let args: Vec<String> = serde_json::from_str(&comment(text, "args")?).map_err(|e| {
        Error::config(
            "user_data",
            format!("`# dth:args=` is not a JSON list: {e}"),
        )
    })?;
    // The whole line, so that no `# dth:` value can pass for it.
    let open = format!("\ncat > {CONFIG_PATH} <<'{HEREDOC}'\n");
    let start = text
        .find(&open)
        .map(|i| i + open.len())
        .ok_or_else(|| Error::config("user_data", "no job config heredoc"))?;
    let close = format!("\n{HEREDOC}\n");
    let end = text[start..]
        .find(&close)
        .map(|i| start + i)
        .ok_or_else(|| Error::config("user_data", "job config heredoc is not closed"))?;
    let config = TransferConfig::from_json(&text[start..end])?;
    Ok(LaunchSpec {
        role,
        config,
        args,
        image,
        group,
        region,
        log_group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JobConfig;

    fn config() -> JobConfig {
        JobConfig::from_json(
            r#"{"source":{"bucket":"src","prefix":"it's/a b"},"destination":{"bucket":"dst"},
                "queue":{"url":"http://127.0.0.1:1/123/q"},"ledger":{"table":"ledger"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn render_then_parse_round_trips() {
        let spec = LaunchSpec {
            role: Role::Worker,
            config: config().into(),
            args: vec!["--concurrency".into(), "4".into(), "it's odd".into()],
            image: "public.ecr.aws/dth/dth:0.1.0".into(),
            group: "dth-x-workers".into(),
            region: "eu-west-1".into(),
            log_group: Some("/dth/x".into()),
        };
        let text = render(&spec);
        assert!(text.contains("\"it's odd\""), "{text}");
        assert_eq!(parse(&text).unwrap(), spec);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text);
        assert_eq!(parse(&b64).unwrap(), spec);
    }

    #[test]
    fn ecr_images_are_recognised_by_their_registry_host() {
        assert_eq!(
            ecr_registry("123456789012.dkr.ecr.eu-west-1.amazonaws.com/dth@sha256:ab"),
            Some(("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "eu-west-1"))
        );
        assert_eq!(
            ecr_registry("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/team/dth:1"),
            Some((
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                "cn-north-1"
            ))
        );
        assert_eq!(
            ecr_repository("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/dth:1.2@sha256:ab"),
            Some(("123456789012", "eu-west-1", "team/dth"))
        );
        assert_eq!(
            ecr_repository("123456789012.dkr.ecr.eu-west-1.amazonaws.com/dth"),
            Some(("123456789012", "eu-west-1", "dth"))
        );
        for other in [
            "public.ecr.aws/dth/dth:0.1.0",
            "dth:1",
            "127.0.0.1:5000/dth@sha256:ab",
            "12345.dkr.ecr.eu-west-1.amazonaws.com/x",
            "123456789012.dkr.ecr.eu-west-1.example.com/x",
        ] {
            assert_eq!(ecr_registry(other), None, "{other}");
        }
    }

    #[test]
    fn unit_words_escape_what_systemd_expands() {
        assert_eq!(unit_word("a%b$c"), "a%%b$$c");
        assert_eq!(unit_word("x y\\\"z"), "\"x y\\\\\\\"z\"");
    }

    #[test]
    fn parse_names_what_is_missing() {
        let err = parse("#!/bin/bash\necho hi\n").unwrap_err().to_string();
        assert!(err.contains("dth:role"), "{err}");
        assert!(parse("not base64 !!").is_err());
    }
}

/// Issue 12's fuzzing of the user data: whatever the values, the script keeps its shape (no value adds a line,
/// ends a heredoc or a unit's line) and reads back as what was rendered.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::config::JobConfig;
    use crate::fuzz::{config, text};

    fn job_config(prefix: &str) -> TransferConfig {
        let mut c = JobConfig::from_json(
            r#"{"source":{"bucket":"src"},"destination":{"bucket":"dst"},
                "queue":{"url":"http://127.0.0.1:1/123/q"},"ledger":{"table":"ledger"}}"#,
        )
        .unwrap();
        c.source.prefix = prefix.to_owned();
        c.into()
    }

    fn spec() -> impl Strategy<Value = LaunchSpec> {
        (
            any::<bool>(),
            text().prop_filter("a valid prefix", |p| {
                crate::config::check_prefix("source.prefix", p).is_ok()
            }),
            prop::collection::vec(text(), 0..4),
            text(),
            text(),
            text(),
            prop::option::of(text().prop_filter("an empty group reads as none", |g| !g.is_empty())),
        )
            .prop_map(|(worker, prefix, args, image, group, region, log_group)| {
                LaunchSpec {
                    role: if worker { Role::Worker } else { Role::Finder },
                    config: job_config(&prefix),
                    args,
                    image,
                    group,
                    region,
                    log_group,
                }
            })
    }

    /// The same spec with every value plain.
    fn plain(spec: &LaunchSpec) -> LaunchSpec {
        LaunchSpec {
            args: spec.args.iter().map(|_| "a".to_owned()).collect(),
            image: "i".into(),
            group: "g".into(),
            region: "r".into(),
            log_group: spec.log_group.as_ref().map(|_| "l".to_owned()),
            ..spec.clone()
        }
    }

    /// systemd's reading of one word of an `Exec*=` line (quotes, C escapes, `%%` and `$$`).
    fn systemd_word(w: &str) -> String {
        let unescape = |s: &str| s.replace("%%", "%").replace("$$", "$");
        let Some(inner) = w.strip_prefix('"').and_then(|w| w.strip_suffix('"')) else {
            return unescape(w);
        };
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('x') => {
                    let hex: String = chars.by_ref().take(2).collect();
                    out.push(char::from(u8::from_str_radix(&hex, 16).unwrap()));
                }
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                }
                Some(c) => out.push(c),
                None => panic!("a trailing backslash in {w}"),
            }
        }
        unescape(&out)
    }

    proptest! {
        #![proptest_config(config(128))]

        #[test]
        fn rendered_user_data_reads_back_and_keeps_its_shape(spec in spec()) {
            let text = render(&spec);
            prop_assert_eq!(parse(&text).unwrap(), spec.clone());
            let reference = render(&plain(&spec));
            prop_assert_eq!(text.lines().count(), reference.lines().count(), "{}", text);
            for end in [HEREDOC, "DTH_SYSCTL", "DTH_PULL", "DTH_UNIT"] {
                let count = |t: &str| t.lines().filter(|l| l.ends_with(end)).count();
                prop_assert_eq!(count(&text), count(&reference), "{}", end);
            }
        }

        #[test]
        fn unit_words_read_back_as_systemd_splits_them(s in text()) {
            let w = unit_word(&s);
            prop_assert!(!w.contains('\n') && !w.is_empty());
            prop_assert_eq!(systemd_word(&w), s);
        }

        #[test]
        fn any_user_data_parses_or_is_refused(s in any::<String>(), cut in any::<prop::sample::Index>()) {
            let _ = parse(&s);
            let full = render(&LaunchSpec {
                role: Role::Worker,
                config: job_config("p"),
                args: vec![],
                image: "i".into(),
                group: "g".into(),
                region: "r".into(),
                log_group: None,
            });
            let at = cut.index(full.len());
            if full.is_char_boundary(at) {
                let _ = parse(&full[..at]);
                let _ = parse(&format!("{}{s}{}", &full[..at], &full[at..]));
            }
        }
    }

    proptest! {
        #![proptest_config(config(32))]

        /// Bash itself reads every quoted word back as the value (NUL aside: no shell word holds one).
        #[test]
        fn shell_words_read_back_in_bash(values in prop::collection::vec(text(), 1..8)) {
            let values: Vec<String> = values.into_iter().map(|v| v.replace('\0', "")).collect();
            let script = format!(
                "printf '%s\\0' {}",
                values.iter().map(|v| shell_quote(v)).collect::<Vec<_>>().join(" ")
            );
            let out = std::process::Command::new("bash").arg("-c").arg(&script).output().unwrap();
            prop_assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let words: Vec<String> = out
                .stdout
                .split(|b| *b == 0)
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            prop_assert_eq!(&words[..values.len()], &values[..]);
        }
    }
}

/// Defects the fuzzing of the user data found; each test failed before its fix.
#[cfg(test)]
mod regressions {
    use super::*;
    use crate::config::JobConfig;

    fn spec(image: &str, group: &str) -> LaunchSpec {
        let config = JobConfig::from_json(
            r#"{"source":{"bucket":"src"},"destination":{"bucket":"dst"},
                "queue":{"url":"http://127.0.0.1:1/123/q"},"ledger":{"table":"ledger"}}"#,
        )
        .unwrap();
        LaunchSpec {
            role: Role::Worker,
            config: config.into(),
            args: vec![],
            image: image.into(),
            group: group.into(),
            region: "eu-west-1".into(),
            log_group: None,
        }
    }

    /// A newline in a value was written as is: into the `# dth:` line (a new line of the script, run as root),
    /// into the pull script's heredoc (a line `DTH_PULL` ended it early) and into the unit (new directives).
    #[test]
    fn a_newline_in_a_value_adds_no_line_to_the_script() {
        let hostile = spec("img\nDTH_PULL\ntouch /tmp/owned\n", "g\ntouch /tmp/owned");
        let text = render(&hostile);
        assert!(!text.lines().any(|l| l == "touch /tmp/owned"), "{text}");
        assert_eq!(
            text.lines().count(),
            render(&spec("img", "g")).lines().count(),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), hostile);
    }

    /// A value holding the config heredoc's opening was taken for it on the way back.
    #[test]
    fn a_value_that_looks_like_the_heredoc_reads_back() {
        let odd = spec("img", &format!("<<'{HEREDOC}'"));
        assert_eq!(parse(&render(&odd)).unwrap(), odd);
        let quoted = spec("\"quoted\"", "g");
        assert_eq!(parse(&render(&quoted)).unwrap(), quoted);
    }

    /// `shutdown_grace_secs + margin` overflowed (a panic) for a grace near u64::MAX.
    #[test]
    fn a_huge_grace_renders_without_overflow() {
        let mut s = spec("img", "g");
        s.config.worker_mut().shutdown_grace_secs = u64::MAX;
        assert!(render(&s).contains(&format!("TimeoutStopSec={}", u64::MAX)));
    }
}
