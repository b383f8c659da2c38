//! dth_ecr_transfer through the real terraform CLI against moto: the same provisioning as dth_s3_transfer
//! (queues, ledger, role, launch templates, groups, schedule, alarms) around an image transfer's job config.
//! - create → plan (no changes) → the instances' job config and role → import (no changes) → update in place →
//!   destroy → nothing left;
//! - a piece deleted by hand: the plan replaces the transfer and names it;
//! - invalid configurations rejected with the attribute named.

use std::collections::BTreeMap;

use dth_core::config::TransferConfig;
use dth_core::image_config::ImageSourceType;
use dth_tests::cloud::{clients, leftovers};
use dth_tests::terraform::Terraform;
use dth_tests::*;

fn transfer(name: &str, max: u32) -> String {
    format!(
        r#"
resource "dth_ecr_transfer" "t" {{
  name = "{name}"
  source {{
    type      = "registry"
    registry  = "http://127.0.0.1:5999"
    images    = ["app:1.0", "team/base:ALL_TAGS"]
    platforms = ["linux/arm64"]
  }}
  destination {{
    prefix = "mirror"
  }}
  alarm_email = "ops@example.com"
  fleet {{
    max   = {max}
    image = "dth:test"
  }}
}}
"#
    )
}

/// The job config in the user data of the newest version of a launch template.
async fn launched(w: &World, template: &str) -> dth_core::userdata::LaunchSpec {
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

#[tokio::test(flavor = "multi_thread")]
async fn image_transfer_create_import_update_destroy() {
    let w = World::start("tf-ecr-lifecycle").await;
    let name = "mirror";
    let tf = Terraform::new(&w, "main");
    tf.write(&transfer(name, 4));
    tf.ok(&["init", "-input=false"]);
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    let state = tf.state();
    let values = &state["values"]["root_module"]["resources"][0]["values"];
    assert_eq!(values["id"], name);
    assert_eq!(values["status"], "idle");
    assert_eq!(values["schedule"], "0 0 * * *", "daily by default");
    assert_eq!(values["images_found"], 0);
    assert!(values.get("objects_found").is_none(), "{values}");
    assert_eq!(values["worker_asg_name"], "dth-mirror-worker");

    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "a plan right after apply must be empty:\n{out}");

    // Both launch templates run the image transfer's job config, with the provider's queue and ledger.
    for role in ["finder", "worker"] {
        let launch = launched(&w, &format!("dth-mirror-{role}")).await;
        let TransferConfig::Images(c) = &launch.config else {
            panic!(
                "{role}: not an image transfer's config: {:?}",
                launch.config
            );
        };
        assert_eq!(c.source.kind, ImageSourceType::Registry);
        assert_eq!(c.source.images, ["app:1.0", "team/base:ALL_TAGS"]);
        assert_eq!(c.source.platforms, ["linux/arm64"]);
        assert_eq!(c.destination.prefix, "mirror");
        assert!(c.queue.url.ends_with("/dth-mirror-jobs"), "{}", c.queue.url);
        assert_eq!(c.ledger.table, "dth-mirror-ledger");
        c.validate().unwrap();
    }

    // The role writes the prefixed destination repositories and touches no bucket.
    let c = clients(&w.endpoint).await;
    let policy = c
        .iam
        .get_role_policy()
        .role_name("dth-mirror-role")
        .policy_name("dth-mirror-access")
        .send()
        .await
        .unwrap();
    let document = percent_encoding::percent_decode_str(policy.policy_document())
        .decode_utf8()
        .unwrap()
        .to_string();
    assert!(
        document.contains(":repository/mirror/app\"")
            && document.contains(":repository/mirror/team/base\""),
        "{document}"
    );
    assert!(document.contains("ecr:PutImage"), "{document}");
    assert!(!document.contains("s3:"), "{document}");

    // Import into a fresh working directory with the same configuration: no changes.
    let imported = Terraform::new(&w, "import");
    imported.write(&transfer(name, 4));
    imported.ok(&["init", "-input=false"]);
    imported.ok(&["import", "-input=false", "dth_ecr_transfer.t", name]);
    let (code, out) = imported.plan(&[]);
    assert_eq!(code, 0, "an imported transfer must plan no changes:\n{out}");
    // An image transfer is not an object transfer: importing it as one says so.
    let wrong = Terraform::new(&w, "wrong");
    wrong.write(
        "resource \"dth_s3_transfer\" \"t\" {\n  name = \"mirror\"\n  source {\n    bucket = \"a-b\"\n  }\n  \
         destination {\n    bucket = \"c-d\"\n  }\n}\n",
    );
    wrong.ok(&["init", "-input=false"]);
    let o = wrong.run(&["import", "-input=false", "dth_s3_transfer.t", name]);
    let out = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(out.contains("another kind of transfer"), "{out}");

    // In place: the fleet's size.
    tf.write(&transfer(name, 6));
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("1 to change, 0 to destroy"), "{out}");
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    let groups = w
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("dth-mirror-worker")
        .send()
        .await
        .unwrap();
    assert_eq!(groups.auto_scaling_groups()[0].max_size(), Some(6));
    let (code, out) = tf.plan(&[]);
    assert_eq!(
        code, 0,
        "a plan right after the update must be empty:\n{out}"
    );

    // A piece deleted by hand: the plan replaces the transfer and names what is missing.
    let queue = w
        .sqs
        .get_queue_url()
        .queue_name("dth-mirror-jobs")
        .send()
        .await
        .unwrap();
    w.sqs
        .delete_queue()
        .queue_url(queue.queue_url().unwrap())
        .send()
        .await
        .unwrap();
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("must be replaced"), "{out}");
    assert!(out.contains("1 to add, 0 to change, 1 to destroy"), "{out}");
    tf.ok(&["apply", "-auto-approve", "-input=false"]);

    tf.ok(&["destroy", "-auto-approve", "-input=false"]);
    let left = leftovers(&c, name, "no-such-bucket").await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A configuration of a registry transfer with `line` added to `block` (empty: the resource itself).
fn with(block: &str, line: &str) -> String {
    let mut blocks: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    blocks.insert(
        "source",
        vec!["type = \"registry\"", "registry = \"registry.example.com\""],
    );
    blocks.insert("destination", vec![]);
    blocks.insert("fleet", vec!["image = \"dth:test\""]);
    let mut top = vec!["name = \"bad\"".to_owned()];
    if block.is_empty() {
        top.push(line.to_owned());
    } else {
        blocks.entry(block).or_default().push(line);
    }
    let source_has_images = blocks["source"]
        .iter()
        .any(|l| l.starts_with("images") || l.starts_with("all"));
    if !source_has_images {
        blocks
            .entry("source")
            .or_default()
            .push("images = [\"app:1\"]");
    }
    for (b, lines) in &blocks {
        top.push(format!("{b} {{\n    {}\n  }}", lines.join("\n    ")));
    }
    format!(
        "resource \"dth_ecr_transfer\" \"t\" {{\n  {}\n}}\n",
        top.join("\n  ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_image_configurations_name_the_attribute() {
    let w = World::start("tf-ecr-invalid").await;
    let tf = Terraform::new(&w, "main");
    tf.write(&with("", ""));
    tf.ok(&["init", "-input=false"]);
    tf.ok(&["validate"]);
    let cases: Vec<(String, &str)> = vec![
        (with("", "").replace("\"bad\"", "\"Bad_Name\""), "name"),
        (with("source", "images = [\"App:1\"]"), "source.images[0]"),
        (with("source", "images = [\"app:\"]"), "source.images[0]"),
        (with("source", "images = []"), "source.images"),
        (
            with("source", "all = true\n    images = [\"app:1\"]"),
            "source.images",
        ),
        (
            with("", "").replace("registry = \"registry.example.com\"", ""),
            "source.registry",
        ),
        (
            with("", "").replace("registry.example.com", "http://host/path"),
            "source.registry",
        ),
        (
            with("", "").replace("\"registry\"", "\"dockerhub\""),
            "source.type",
        ),
        (with("source", "region = \"eu-west-1\""), "source.region"),
        (
            with("", "")
                .replace("\"registry\"", "\"ecr\"")
                .replace("registry = \"registry.example.com\"", "account_id = \"12\""),
            "source.account_id",
        ),
        (
            with("source", "platforms = [\"arm64\"]"),
            "source.platforms[0]",
        ),
        (
            with("destination", "prefix = \"Mirror\""),
            "destination.prefix",
        ),
        (
            with("destination", "account_id = \"12345\""),
            "destination.account_id",
        ),
        (
            with("destination", "region = \"Europe\""),
            "destination.region",
        ),
        (with("finder", "parallelism = 0"), "finder.parallelism"),
        (
            with("fleet", "worker_concurrency = 0"),
            "fleet.worker_concurrency",
        ),
        (with("fleet", "max = 0"), "fleet.max"),
        (with("", "schedule = \"daily\""), "schedule"),
        (with("", "max_attempts = 0"), "max_attempts"),
        (with("", "alarm_email = \"nobody\""), "alarm_email"),
        (
            with("worker", "shutdown_grace_secs = 7200"),
            "worker.shutdown_grace_secs",
        ),
        (with("finder", "depth = 2"), "depth"),
        (with("", "compare = \"size\""), "compare"),
        (with("timeouts", "create = \"soon\""), "timeouts.create"),
    ];
    assert!(cases.len() >= 15);
    let mut wrong = Vec::new();
    for (config, attribute) in &cases {
        tf.write(config);
        let o = tf.run(&["validate"]);
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
