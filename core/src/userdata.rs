//! The EC2 user data that starts a finder or worker on an instance of a transfer's Auto Scaling group.
//!
//! The provider [`render`]s it into the launch templates; anything that plays EC2 (the test stand-in, or an
//! operator debugging an instance) [`parse`]s it back. The script is plain bash: it writes the job config to
//! `/etc/dth/job.json` (the config names secrets by ARN only, never their values), makes sure a container
//! runtime is there, and runs the image's `finder` or `worker` with the arguments below. Machine-readable
//! copies of the role and arguments sit in `# dth:` comment lines so that parsing never has to understand
//! shell quoting.

use serde::{Deserialize, Serialize};

use crate::config::JobConfig;
use crate::error::{Error, Result};

const CONFIG_PATH: &str = "/etc/dth/job.json";
const HEREDOC: &str = "DTH_JOB_CONFIG";

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
}

/// What an instance runs: which binary, with which config and arguments, from which image.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    pub role: Role,
    pub config: JobConfig,
    /// Arguments after `--config /etc/dth/job.json`, e.g. `["--concurrency", "4"]`.
    pub args: Vec<String>,
    /// The container image holding the `finder` and `worker` binaries.
    pub image: String,
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The user data script for `spec` (plain text; EC2 wants it base64-encoded).
pub fn render(spec: &LaunchSpec) -> String {
    let config = serde_json::to_string_pretty(&spec.config).expect("JobConfig serialises");
    let args_json = serde_json::to_string(&spec.args).expect("strings serialise");
    let role = spec.role.binary();
    let args: Vec<String> = spec.args.iter().map(|a| shell_quote(a)).collect();
    let image = shell_quote(&spec.image);
    format!(
        r#"#!/bin/bash
# Data Transfer Hub {role}, written by terraform-provider-dth; terraform replaces this launch template version.
# dth:role={role}
# dth:image={image_raw}
# dth:args={args_json}
set -euo pipefail
install -d -m 0700 /etc/dth
umask 077
cat > {CONFIG_PATH} <<'{HEREDOC}'
{config}
{HEREDOC}
if ! command -v docker >/dev/null 2>&1; then
  (dnf install -y docker || yum install -y docker || apt-get install -y docker.io)
fi
systemctl enable --now docker
for attempt in 1 2 3 4 5; do docker pull {image} && break || sleep $((attempt * 10)); done
exec docker run --rm --network host --name dth-{role} -v /etc/dth:/etc/dth:ro {image} \
  {role} --config {CONFIG_PATH} --log-format json {args}
"#,
        image_raw = spec.image,
        args = args.join(" "),
    )
}

fn comment<'a>(text: &'a str, name: &str) -> Result<&'a str> {
    let tag = format!("# dth:{name}=");
    text.lines()
        .find_map(|l| l.strip_prefix(tag.as_str()))
        .ok_or_else(|| Error::config("user_data", format!("no `{tag}` line")))
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
    let role = match comment(text, "role")? {
        "finder" => Role::Finder,
        "worker" => Role::Worker,
        other => {
            return Err(Error::config(
                "user_data",
                format!("unknown role `{other}`"),
            ))
        }
    };
    let image = comment(text, "image")?.to_string();
    let args: Vec<String> = serde_json::from_str(comment(text, "args")?).map_err(|e| {
        Error::config(
            "user_data",
            format!("`# dth:args=` is not a JSON list: {e}"),
        )
    })?;
    let open = format!("<<'{HEREDOC}'\n");
    let start = text
        .find(&open)
        .map(|i| i + open.len())
        .ok_or_else(|| Error::config("user_data", "no job config heredoc"))?;
    let close = format!("\n{HEREDOC}\n");
    let end = text[start..]
        .find(&close)
        .map(|i| start + i)
        .ok_or_else(|| Error::config("user_data", "job config heredoc is not closed"))?;
    let config = JobConfig::from_json(&text[start..end])?;
    Ok(LaunchSpec {
        role,
        config,
        args,
        image,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            config: config(),
            args: vec!["--concurrency".into(), "4".into(), "it's odd".into()],
            image: "public.ecr.aws/dth/dth:0.1.0".into(),
        };
        let text = render(&spec);
        assert!(text.contains("'it'\\''s odd'"), "{text}");
        assert_eq!(parse(&text).unwrap(), spec);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text);
        assert_eq!(parse(&b64).unwrap(), spec);
    }

    #[test]
    fn parse_names_what_is_missing() {
        let err = parse("#!/bin/bash\necho hi\n").unwrap_err().to_string();
        assert!(err.contains("dth:role"), "{err}");
        assert!(parse("not base64 !!").is_err());
    }
}
