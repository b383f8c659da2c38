//! dth_ecr_transfer through the real terraform CLI against moto: the same provisioning as dth_s3_transfer
//! (queues, ledger, role, launch templates, groups, schedule, alarms) around an image transfer's job config.
//! - create → plan (no changes) → the instances' job config and role → import (no changes) → update in place →
//!   destroy → nothing left;
//! - a piece deleted by hand: the plan replaces the transfer and names it;
//! - invalid configurations rejected with the attribute named;
//! - examples/local-images end to end on t4g instances booted by the EC2 stand-in: selected images and a whole
//!   registry (its catalog) copied by the image's arm64 finder and workers under qemu into a registry that
//!   takes ECR's login, the repositories created in moto's ECR, the digests read back with skopeo, and a
//!   refresh in sync with its counts.

use std::collections::BTreeMap;
use std::time::Duration;

use dth_core::config::TransferConfig;
use dth_core::image_config::ImageSourceType;
use dth_tests::cloud::{clients, leftovers};
use dth_tests::ec2::logs;
use dth_tests::images::{docker_image, oci_index, sha256, Layout};
use dth_tests::registry::Registry;
use dth_tests::terraform::{copy_files, launched, Terraform};
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
    tf.assert_each_rejected(&cases);
}

/// The password moto's GetAuthorizationToken hands out for its account (`AWS:<account>-auth-token`): the
/// destination registry's login, as ECR's.
const ECR_PASSWORD: &str = "123456789012-auth-token";
const KIB: usize = 1024;

/// `reference` at `dst` is the source's manifest byte for byte, and an index's per-platform manifests are
/// there by digest (read with skopeo, a client the project did not write).
fn arrived(dst: &Registry, repo: &str, tag: &str, image: &Layout) -> bool {
    if !dst.has(&format!("{repo}:{tag}")) {
        return false;
    }
    let raw = dst.inspect_raw(&format!("{repo}:{tag}"));
    assert_eq!(sha256(&raw), image.digest, "{repo}:{tag}: digest");
    assert_eq!(raw, image.manifest, "{repo}:{tag}: manifest bytes");
    for (platform, digest) in &image.platforms {
        assert!(
            dst.has(&format!("{repo}@{digest}")),
            "{repo}:{tag}: the {platform} manifest {digest} is missing"
        );
    }
    true
}

/// examples/local-images, applied as scripts/demo applies it, twice: a selection (`repo:tag`, `repo:ALL_TAGS`)
/// and a whole registry (`all`, from its catalog), each on its own t4g finder and worker booted by the EC2
/// stand-in from the launch templates, running the image's arm64 binaries under qemu.
#[tokio::test(flavor = "multi_thread")]
async fn examples_local_images_end_to_end_on_t4g() {
    let w = World::start("tf-ecr-e2e").await;
    let (_project, image) = w.image_registry();
    let src = Registry::start(&w.dir.join("source-registry"));
    let dst = Registry::start_with_login(&w.dir.join("destination-registry"), "AWS", ECR_PASSWORD);
    let layouts = w.dir.join("layouts");
    let app = docker_image(&layouts.join("app"), &[1536 * KIB, 300 * KIB]);
    let base2 = oci_index(
        &layouts.join("base2"),
        &["linux/amd64", "linux/arm64"],
        512 * KIB,
        &[256 * KIB],
    );
    let base3 = docker_image(&layouts.join("base3"), &[700 * KIB]);
    let other = docker_image(&layouts.join("other"), &[100 * KIB]);
    src.push(&app.dir, "app", "1.0");
    src.push(&base2.dir, "team/base", "2");
    src.push(&base3.dir, "team/base", "3");
    src.push(&other.dir, "other", "1");
    let s = w.standin();

    let apply = |name: &str, images: &[&str], prefix: &str, workers: u32| {
        let tf = Terraform::new(&w, name);
        copy_files(&repo_root().join("examples/local-images"), &tf.dir);
        let list: Vec<String> = images.iter().map(|i| format!("\"{i}\"")).collect();
        std::fs::write(
            tf.dir.join("terraform.tfvars"),
            format!(
                "aws_endpoint = \"{}\"\nautoscaling_endpoint = \"{}\"\nimage = \"{image}\"\nname = \"{name}\"\n\
                 source_registry = \"http://{}\"\ndestination_registry = \"http://{}\"\n\
                 destination_prefix = \"{prefix}\"\nimages = [{}]\nworkers = {workers}\n",
                w.endpoint,
                s.autoscaling_endpoint(),
                src.address(),
                dst.address(),
                list.join(", ")
            ),
        )
        .unwrap();
        tf.ok(&["init", "-input=false"]);
        tf.ok(&["apply", "-auto-approve", "-input=false"]);
        tf
    };
    // The selection first without workers: its finder runs and leaves the jobs queued, and the plan warns with
    // what is pending.
    let selected = apply("selected", &["app:1.0", "team/base:ALL_TAGS"], "mirror", 0);
    let queue_url = selected.values()["queue_url"].as_str().unwrap().to_owned();
    wait_for!(
        Duration::from_secs(300),
        format!("the finder to run\n{}", logs(&s.launches())),
        {
            let f = s.launches_of("dth-selected-finder");
            !f.is_empty() && f.iter().all(|l| !l.running())
        }
    );
    assert_eq!(w.depth(&queue_url).await, (3, 0), "one job per image");
    selected.ok(&["apply", "-refresh-only", "-auto-approve", "-input=false"]);
    let (code, out) = selected.plan(&[]);
    assert_eq!(code, 0, "{out}");
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("Warning: dth_ecr_transfer.selected: not in sync"),
        "{out}"
    );
    assert!(
        flat.contains("3 images (") && flat.contains("of the latest run still to move"),
        "{out}"
    );
    assert!(!dst.has("mirror/app:1.0"), "nothing copied without workers");
    // Now with a worker, and a second transfer of the whole registry (its catalog) beside it.
    let selected = apply("selected", &["app:1.0", "team/base:ALL_TAGS"], "mirror", 1);
    let everything = apply("everything", &[], "all", 1);

    let wanted: [(&str, &str, &Layout); 7] = [
        ("mirror/app", "1.0", &app),
        ("mirror/team/base", "2", &base2),
        ("mirror/team/base", "3", &base3),
        ("all/app", "1.0", &app),
        ("all/team/base", "2", &base2),
        ("all/team/base", "3", &base3),
        ("all/other", "1", &other),
    ];
    wait_for!(
        Duration::from_secs(600),
        format!("the images to arrive\n{}", logs(&s.launches())),
        wanted
            .iter()
            .all(|(repo, tag, l)| arrived(&dst, repo, tag, l))
    );
    assert!(
        !dst.has("mirror/other:1"),
        "an image not selected was copied"
    );
    for (tf, found) in [(&selected, 3u64), (&everything, 4u64)] {
        let queue_url = tf.values()["queue_url"].as_str().unwrap().to_owned();
        wait_for!(
            Duration::from_secs(120),
            "the queue to drain",
            w.depth(&queue_url).await == (0, 0)
        );
        tf.ok(&["apply", "-refresh-only", "-auto-approve", "-input=false"]);
        let v = tf.values();
        assert_eq!(v["status"], "in_sync", "{v}");
        assert_eq!(v["images_found"], found, "{v}");
        assert_eq!(v["images_done"], found, "{v}");
        assert_eq!(v["images_failed"], 0, "{v}");
        assert_eq!(v["dead_letters"], 0, "{v}");
        let (code, out) = tf.plan(&[]);
        assert_eq!(code, 0, "{out}");
        assert!(!out.contains("Warning"), "in sync: no warning\n{out}");
    }
    for l in s.launches() {
        assert_eq!(l.arch, "arm64");
        assert!(
            l.console().contains("aarch64-unknown-linux-musl"),
            "{}",
            l.console()
        );
    }
    // The repositories the finders created, in ECR (moto).
    let repos = w.ecr_repositories().await;
    assert_eq!(
        repos,
        [
            "all/app",
            "all/other",
            "all/team/base",
            "mirror/app",
            "mirror/team/base"
        ]
    );

    for tf in [&selected, &everything] {
        tf.ok(&["destroy", "-auto-approve", "-input=false"]);
    }
    wait_for!(
        Duration::from_secs(180),
        format!("the instances to power off\n{}", logs(&s.launches())),
        s.launches().iter().all(|l| !l.running())
    );
    s.stop();
    assert!(
        wanted
            .iter()
            .all(|(repo, tag, l)| arrived(&dst, repo, tag, l)),
        "copied images are never deleted"
    );
}
