//! dth_s3_transfer through the real terraform CLI (the provider installed from a filesystem mirror) against
//! moto:
//! - create → plan (no changes) → import and verify → update capacity and schedule → plan (no changes) →
//!   destroy → nothing left in the cloud, data kept;
//! - a transfer whose pieces disappear: one piece → replaced, all of it → dropped from state;
//! - examples/local end to end on t4g instances booted by the EC2 stand-in: the finder runs from its group's
//!   launch template (the image's arm64 binary, under qemu), the plan warns with what is pending, workers copy
//!   a mixed bucket, and a refresh shows it in sync with its counts;
//! - invalid configurations rejected with the attribute named;
//! - secrets absent from plan output, state, TF_LOG=TRACE logs and the instances' user data.

use dth_core::config::TransferConfig;
use dth_tests::cloud::{clients, leftovers, provider_config};
use std::collections::BTreeMap;
use std::time::Duration;

use dth_tests::ec2::logs;
use dth_tests::terraform::{copy_files, launched, Terraform};
use dth_tests::*;

fn transfer(name: &str, desired: u32, max: u32, schedule: &str) -> String {
    format!(
        r#"
resource "dth_s3_transfer" "t" {{
  name = "{name}"
  source {{
    bucket = "{name}-src"
    events = "create"
  }}
  destination {{
    bucket        = "{name}-dst"
    storage_class = "STANDARD"
  }}
  schedule    = "{schedule}"
  alarm_email = "ops@example.com"
  fleet {{
    min     = 1
    desired = {desired}
    max     = {max}
    image   = "dth:test"
  }}
}}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn create_import_update_destroy() {
    let w = World::start("tf-lifecycle").await;
    let name = "life";
    w.bucket("life-src").await;
    w.bucket("life-dst").await;
    w.put("life-dst", "kept.txt", b"copied data is never deleted")
        .await;

    let tf = Terraform::new(&w, "main");
    tf.write(&transfer(name, 1, 4, "once"));
    tf.ok(&["init", "-input=false"]);
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    let state = tf.state();
    let values = &state["values"]["root_module"]["resources"][0]["values"];
    assert_eq!(values["id"], name);
    assert_eq!(values["status"], "idle");
    assert_eq!(values["worker_asg_name"], "dth-life-worker");

    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "a plan right after apply must be empty:\n{out}");

    // Import into a fresh working directory with the same configuration: the state rebuilt from the cloud plans
    // no changes.
    let imported = Terraform::new(&w, "import");
    imported.write(&transfer(name, 1, 4, "once"));
    imported.ok(&["init", "-input=false"]);
    imported.ok(&["import", "-input=false", "dth_s3_transfer.t", name]);
    let (code, out) = imported.plan(&[]);
    assert_eq!(code, 0, "an imported transfer must plan no changes:\n{out}");

    // In place: capacity and schedule.
    tf.write(&transfer(name, 3, 6, "0 3 * * *"));
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("1 to change, 0 to destroy"), "{out}");
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    let groups = w
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("dth-life-worker")
        .send()
        .await
        .unwrap();
    let g = &groups.auto_scaling_groups()[0];
    assert_eq!((g.desired_capacity(), g.max_size()), (Some(3), Some(6)));
    let actions = w
        .autoscaling
        .describe_scheduled_actions()
        .auto_scaling_group_name("dth-life-finder")
        .send()
        .await
        .unwrap();
    assert!(
        actions
            .scheduled_update_group_actions()
            .iter()
            .any(|a| a.recurrence() == Some("0 3 * * *")),
        "{actions:?}"
    );
    let (code, out) = tf.plan(&[]);
    assert_eq!(
        code, 0,
        "a plan right after the update must be empty:\n{out}"
    );

    tf.ok(&["destroy", "-auto-approve", "-input=false"]);
    let c = clients(&w.endpoint).await;
    let left = leftovers(&c, name, "life-src").await;
    assert!(left.is_empty(), "left behind: {left:?}");
    let kept = w.get("life-dst", "kept.txt").await;
    assert_eq!(kept.as_deref(), Some(&b"copied data is never deleted"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn disappears() {
    let w = World::start("tf-disappears").await;
    let name = "gone";
    w.bucket("gone-src").await;
    w.bucket("gone-dst").await;
    let tf = Terraform::new(&w, "main");
    tf.write(&transfer(name, 1, 2, "once"));
    tf.ok(&["init", "-input=false"]);
    tf.ok(&["apply", "-auto-approve", "-input=false"]);

    // The job queue deleted by hand: the plan replaces the transfer, and names what is missing.
    let queue = w
        .sqs
        .get_queue_url()
        .queue_name("dth-gone-jobs")
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
    assert!(out.contains("queue"), "{out}");
    assert!(out.contains("1 to add, 0 to change, 1 to destroy"), "{out}");
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    w.sqs
        .get_queue_url()
        .queue_name("dth-gone-jobs")
        .send()
        .await
        .expect("the queue is back");
    let (code, out) = tf.plan(&[]);
    assert_eq!(
        code, 0,
        "a plan right after the replacement must be empty:\n{out}"
    );

    // Everything deleted outside Terraform: the refresh drops the transfer from state.
    let c = clients(&w.endpoint).await;
    let cfg = provider_config(&w.endpoint);
    let (spec, infra) =
        dth_provider::transfer::import::<dth_provider::transfer::spec::Objects>(&c, &cfg, name)
            .await
            .unwrap();
    dth_provider::transfer::delete(&c, &infra, &spec)
        .await
        .unwrap();
    assert!(leftovers(&c, name, "gone-src").await.is_empty());
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("dth_s3_transfer.t will be created"), "{out}");
    assert!(out.contains("1 to add, 0 to change, 0 to destroy"), "{out}");
    tf.ok(&["apply", "-refresh-only", "-auto-approve", "-input=false"]);
    let listed = tf.ok(&["state", "list"]);
    assert_eq!(listed.trim(), "", "removed from state");
}

/// A bucket of mixed objects: small ones of many sizes, an empty one, odd keys, one copied in parts and one
/// uploaded in parts.
async fn mixed_bucket(w: &World, bucket: &str) -> BTreeMap<String, Vec<u8>> {
    w.bucket(bucket).await;
    let mut objects: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..12 {
        objects.insert(
            format!("photos/{}/img-{i:02}.jpg", 2020 + i % 3),
            random_bytes(1 + i * 7919),
        );
    }
    objects.insert("empty".into(), Vec::new());
    objects.insert("readme.txt".into(), b"hello from dth\n".to_vec());
    objects.insert("unicode/ü é €.txt".into(), "ünïcödé".as_bytes().to_vec());
    objects.insert("plus+and%percent=eq".into(), b"odd key".to_vec());
    objects.insert("big/single.bin".into(), random_bytes(9 * 1024 * 1024 + 17));
    for (k, v) in &objects {
        w.put(bucket, k, v).await;
    }
    let parts = random_bytes(11 * 1024 * 1024);
    w.put_multipart(bucket, "big/parts.bin", &parts, 5 * 1024 * 1024)
        .await;
    objects.insert("big/parts.bin".into(), parts);
    objects
}

/// Every object is at the destination under `mirror/` (examples/local's prefix), byte for byte.
async fn copied(w: &World, objects: &BTreeMap<String, Vec<u8>>) -> bool {
    for (k, body) in objects {
        match w.get("e2e-dst", &format!("mirror/{k}")).await {
            Some(got) if md5_hex(&got) == md5_hex(body) => {}
            _ => return false,
        }
    }
    true
}

/// examples/local, applied as scripts/demo applies it, on t4g instances: the finder's instance boots from its
/// group's launch template and runs the image's arm64 finder under qemu, the plan warns with what is pending,
/// two arm64 workers copy a mixed bucket byte for byte, and a refresh shows it in sync with its counts.
#[tokio::test(flavor = "multi_thread")]
async fn examples_local_end_to_end_on_t4g() {
    let w = World::start("tf-e2e").await;
    let (_registry, image) = w.image_registry();
    let objects = mixed_bucket(&w, "e2e-src").await;
    let n = objects.len() as u64;
    let bytes: u64 = objects.values().map(|v| v.len() as u64).sum();
    w.bucket("e2e-dst").await;
    let s = w.standin();

    // No workers yet: the finder runs (its group goes to 1 for a "once" schedule) and leaves the jobs queued.
    let tf = Terraform::new(&w, "main");
    copy_files(&repo_root().join("examples/local"), &tf.dir);
    let vars = |workers: u32| {
        std::fs::write(
            tf.dir.join("terraform.tfvars"),
            format!(
                "aws_endpoint = \"{}\"\nautoscaling_endpoint = \"{}\"\nimage = \"{image}\"\n\
                 instance_type = \"t4g.micro\"\nsource_bucket = \"e2e-src\"\ndestination_bucket = \"e2e-dst\"\n\
                 workers = {workers}\n",
                w.endpoint,
                s.autoscaling_endpoint()
            ),
        )
        .unwrap()
    };
    vars(0);
    tf.ok(&["init", "-input=false"]);
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    let queue_url = tf.values()["queue_url"].as_str().unwrap().to_owned();
    wait_for!(
        Duration::from_secs(240),
        format!(
            "the finder to run and its instance to terminate\n{}",
            logs(&s.launches())
        ),
        {
            let f = s.launches_of("dth-demo-finder");
            !f.is_empty() && f.iter().all(|l| !l.running())
        }
    );
    let finder = s.launches_of("dth-demo-finder").remove(0);
    assert_eq!(finder.arch, "arm64");
    assert!(
        finder.console().contains("aarch64-unknown-linux-musl"),
        "{}",
        finder.console()
    );
    assert!(s.launches_of("dth-demo-worker").is_empty());
    assert_eq!(w.depth(&queue_url).await.1, 0);
    assert!(w.depth(&queue_url).await.0 > 0, "jobs queued");

    // Before the copy: the plan warns with what is pending and what moving it costs (after a refresh-only
    // apply, so that examples/local's `status` output is up to date and the plan is otherwise empty).
    tf.ok(&["apply", "-refresh-only", "-auto-approve", "-input=false"]);
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "{out}");
    // Terraform wraps diagnostics at 78 columns.
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("Warning: dth_s3_transfer.demo: not in sync"),
        "{out}"
    );
    let detail = format!("{n} objects ({bytes} bytes) of the latest run still to move");
    assert!(flat.contains(&detail), "{detail:?} in\n{out}");
    assert!(flat.contains("will cost about"), "{out}");
    assert!(w.keys("e2e-dst").await.is_empty());

    // Two workers: booted by the stand-in from the worker group's launch template.
    vars(2);
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    wait_for!(
        Duration::from_secs(480),
        format!("the copy\n{}", logs(&s.launches())),
        copied(&w, &objects).await
    );
    wait_for!(
        Duration::from_secs(60),
        "the queue to drain",
        w.depth(&queue_url).await == (0, 0)
    );
    assert_eq!(w.keys("e2e-dst").await.len() as u64, n);
    let workers = s.launches_of("dth-demo-worker");
    assert_eq!(workers.len(), 2, "{}", logs(&workers));
    for l in &workers {
        assert_eq!(l.arch, "arm64");
        assert!(
            l.console().contains("aarch64-unknown-linux-musl"),
            "{}",
            l.console()
        );
    }
    assert_eq!(w.incomplete_uploads("e2e-dst").await, 0);

    let (code, out) = tf.plan(&["-refresh-only"]);
    assert_eq!(code, 2, "{out}");
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains(&format!("objects_done = 0 -> {n}")), "{out}");
    assert!(
        flat.contains("status = \"syncing\" -> \"in_sync\""),
        "{out}"
    );
    tf.ok(&["apply", "-refresh-only", "-auto-approve", "-input=false"]);
    let v = tf.values();
    assert_eq!(v["status"], "in_sync", "{v}");
    assert_eq!(v["objects_found"], n, "{v}");
    assert_eq!(v["objects_done"], n, "{v}");
    assert_eq!(v["bytes_done"], bytes, "{v}");
    assert_eq!(v["objects_failed"], 0, "{v}");
    assert_eq!(v["dead_letters"], 0, "{v}");
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("Warning"), "in sync: no warning\n{out}");

    // Destroyed while the stand-in still serves the Auto Scaling API: the groups go, and their instances.
    tf.ok(&["destroy", "-auto-approve", "-input=false"]);
    wait_for!(
        Duration::from_secs(180),
        format!("the workers to power off\n{}", logs(&s.launches())),
        s.launches().iter().all(|l| !l.running())
    );
    s.stop();
    assert!(copied(&w, &objects).await, "copied data is never deleted");
}

/// A valid transfer with `line` added inside the block named `block` ("" for the resource itself).
fn with(block: &str, line: &str) -> String {
    let mut blocks: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    blocks.insert("source", vec!["bucket = \"bad-src\""]);
    blocks.insert("destination", vec!["bucket = \"bad-dst\""]);
    blocks.insert("fleet", vec!["image = \"dth:test\""]);
    let mut top = vec!["name = \"bad\"".to_owned()];
    if block.is_empty() {
        top.push(line.to_owned());
    } else {
        blocks.entry(block).or_default().push(line);
    }
    for (b, lines) in &blocks {
        top.push(format!("{b} {{\n    {}\n  }}", lines.join("\n    ")));
    }
    format!(
        "resource \"dth_s3_transfer\" \"t\" {{\n  {}\n}}\n",
        top.join("\n  ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_configurations_name_the_attribute() {
    let w = World::start("tf-invalid").await;
    let tf = Terraform::new(&w, "main");
    tf.write(&with("", ""));
    tf.ok(&["init", "-input=false"]);
    tf.ok(&["validate"]);
    let cases: Vec<(String, &str)> = vec![
        (with("", "").replace("\"bad\"", "\"Bad_Name\""), "name"),
        (with("", "").replace("\"bad\"", "\"\""), "name"),
        (
            with("", "").replace("\"bad\"", &format!("\"{}\"", "x".repeat(41))),
            "name",
        ),
        (with("source", "type = \"Dropbox\""), "source.type"),
        (with("source", "events = \"sometimes\""), "source.events"),
        (
            with("source", "type = \"Aliyun_OSS\"\n    events = \"create\""),
            "source.events",
        ),
        (with("destination", "sse = \"DES\""), "destination.sse"),
        (with("", "compare = \"md5\""), "compare"),
        (with("", "schedule = \"every day\""), "schedule"),
        (with("", "schedule = \"61 * * * *\""), "schedule"),
        (with("", "alarm_email = \"not-an-email\""), "alarm_email"),
        (with("", "tags = { \"aws:owner\" = \"me\" }"), "tags"),
        (with("", "max_attempts = 0"), "max_attempts"),
        (with("fleet", "max = 0"), "fleet.max"),
        (with("fleet", "min = 5\n    max = 2"), "fleet.min"),
        (with("fleet", "desired = 9\n    max = 4"), "fleet.desired"),
        (
            with("fleet", "instance_type = \"huge\""),
            "fleet.instance_type",
        ),
        (with("fleet", "ami_id = \"img-123\""), "fleet.ami_id"),
        (
            with("fleet", "subnet_ids = [\"net-1\"]"),
            "fleet.subnet_ids",
        ),
        (
            with("fleet", "security_group_ids = [\"group\"]"),
            "fleet.security_group_ids",
        ),
        (
            with("fleet", "worker_concurrency = 0"),
            "fleet.worker_concurrency",
        ),
        (
            with("finder", "instance_type = \"x\""),
            "finder.instance_type",
        ),
        (
            with("multipart", "chunk_size = 1024"),
            "multipart.chunk_size",
        ),
        (
            with("filters", "include = [\"photos/[a\"]"),
            "filters.include",
        ),
        (
            with("source", "endpoint = \"not a url\""),
            "source.endpoint",
        ),
        (
            with("", "").replace("image = \"dth:test\"", "image = \"two words\""),
            "fleet.image",
        ),
        (
            with("worker", "heartbeat_secs = 900\n    visibility_secs = 1800"),
            "worker.heartbeat_secs",
        ),
        (
            with("worker", "shutdown_grace_secs = 7200"),
            "worker.shutdown_grace_secs",
        ),
        (
            with("worker", "part_concurrency = -1"),
            "worker.part_concurrency",
        ),
        (with("finder", "depth = 1.5"), "finder.depth"),
        (with("batch", "max_objects = 0"), "batch.max_objects"),
        (
            with(
                "source",
                "anonymous = true\n    credentials_secret_arn = \"arn:aws:secretsmanager:us-east-1:1:secret:s\"",
            ),
            "source.anonymous",
        ),
        (with("worker", "concurrency = 8"), "concurrency"),
        (
            with("source", "prefix_list {\n      key = \"list.txt\"\n    }"),
            "\"bucket\" is required",
        ),
        (with("", "colour = \"blue\""), "colour"),
        (with("timeouts", "create = \"soon\""), "timeouts.create"),
        (with("timeouts", "delete = \"-5m\""), "timeouts.delete"),
    ];
    assert!(cases.len() >= 20);
    tf.assert_each_rejected(&cases);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_secret() {
    const ACCESS_KEY: &str = "AKIADTHPROVIDERKEY01";
    const SECRET_KEY: &str = "provider-secret-Zx81Qw";
    const SOURCE_SECRET: &str = "source-secret-Pq77Lm";
    let w = World::start("tf-secrets").await;
    w.bucket("sec-src").await;
    w.bucket("sec-dst").await;
    let secret = w
        .secrets
        .create_secret()
        .name("dth/source")
        .secret_string(format!(
            r#"{{"access_key_id":"AKIASOURCE","secret_access_key":"{SOURCE_SECRET}"}}"#
        ))
        .send()
        .await
        .unwrap();
    let arn = secret.arn().unwrap();
    let tf = Terraform::new(&w, "main");
    tf.write_with(
        &format!("  access_key = \"{ACCESS_KEY}\"\n  secret_key = \"{SECRET_KEY}\""),
        &format!(
            r#"
resource "dth_s3_transfer" "t" {{
  name = "sec"
  source {{
    bucket                 = "sec-src"
    credentials_secret_arn = "{arn}"
  }}
  destination {{
    bucket = "sec-dst"
  }}
  fleet {{
    image = "dth:test"
  }}
}}
"#
        ),
    );
    let log = tf.dir.join("trace.log");
    let trace = [("TF_LOG", "TRACE"), ("TF_LOG_PATH", log.to_str().unwrap())];
    // (where, text): everything a user or a log collector could see.
    let mut seen: Vec<(String, String)> = Vec::new();
    for args in [
        &["init", "-input=false"][..],
        &["plan", "-input=false"],
        &["apply", "-auto-approve", "-input=false"],
        &["plan", "-input=false"],
        &["show"],
        &["show", "-json"],
        &["destroy", "-auto-approve", "-input=false"],
    ] {
        let o = tf.run_env(args, &trace);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "terraform {args:?}:\n{out}");
        seen.push((format!("terraform {args:?}"), out));
        if args[0] == "apply" {
            // The instances get the secret's ARN and the instance role, never a key.
            let versions = w
                .ec2
                .describe_launch_template_versions()
                .launch_template_name("dth-sec-worker")
                .send()
                .await
                .unwrap();
            for v in versions.launch_template_versions() {
                let data = v
                    .launch_template_data()
                    .and_then(|d| d.user_data())
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&base64_decode(data)).into_owned();
                assert!(text.contains(arn), "the secret's ARN is in the job config");
                seen.push(("worker user data".into(), text));
            }
            seen.push((
                "terraform.tfstate".into(),
                std::fs::read_to_string(tf.dir.join("terraform.tfstate")).unwrap(),
            ));
        }
    }
    let trace_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        trace_log.contains("provider.terraform-provider-dth"),
        "the trace log holds the provider's own lines"
    );
    seen.push(("TF_LOG=TRACE log".into(), trace_log));
    for secret in [ACCESS_KEY, SECRET_KEY, SOURCE_SECRET] {
        for (place, text) in &seen {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("{secret} leaked into {place}:\n{line}");
            }
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|_| s.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn examples_and_modules_are_valid() {
    let w = World::start("tf-examples").await;
    let root = repo_root();

    // The docs' examples: the provider block and the resource, together.
    let docs = Terraform::new(&w, "docs");
    copy_files(&root.join("examples/provider"), &docs.dir);
    copy_files(&root.join("examples/resources/dth_s3_transfer"), &docs.dir);
    let docs_images = Terraform::new(&w, "docs-images");
    copy_files(&root.join("examples/provider"), &docs_images.dir);
    copy_files(
        &root.join("examples/resources/dth_ecr_transfer"),
        &docs_images.dir,
    );
    // The local example, as scripts/demo runs it.
    let local = Terraform::new(&w, "local");
    copy_files(&root.join("examples/local"), &local.dir);
    let local_images = Terraform::new(&w, "local-images");
    copy_files(&root.join("examples/local-images"), &local_images.dir);
    // The module, called the way its README shows.
    let module = Terraform::new(&w, "module");
    copy_files(
        &root.join("modules/s3-transfer"),
        &module.dir.join("modules/s3-transfer"),
    );
    copy_files(
        &root.join("modules/ecr-transfer"),
        &module.dir.join("modules/ecr-transfer"),
    );
    module.write(
        r#"
module "mirror" {
  source             = "./modules/ecr-transfer"
  name               = "mirror"
  source_registry    = "registry-1.docker.io"
  images             = ["library/nginx:1.27", "library/alpine:ALL_TAGS"]
  destination_prefix = "dockerhub"
  image              = "dth:test"
}

output "pending" {
  value = module.mirror.images_pending
}

module "photos" {
  source             = "./modules/s3-transfer"
  name               = "photos"
  source_bucket      = "photos-src"
  destination_bucket = "photos-dst"
  image              = "dth:test"
  alarm_email        = "ops@example.com"
}

output "status" {
  value = module.photos.status
}
"#,
    );
    for tf in [&docs, &docs_images, &local, &local_images, &module] {
        tf.ok(&["init", "-input=false", "-backend=false"]);
        tf.ok(&["validate"]);
    }

    // The module's variables are checked before the provider is asked.
    module.write(
        r#"
module "photos" {
  source             = "./modules/s3-transfer"
  name               = "Not A Name"
  source_bucket      = "photos-src"
  destination_bucket = "photos-dst"
  image              = "dth:test"
}
"#,
    );
    let o = module.run(&["validate"]);
    let out = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("var.name"), "{out}");
}

/// Transfer `seta`: every job setting but those that exclude them (in [`EVERY_SETTING_B`]) away from its default, as
/// (attribute path, HCL value). Dotted paths are blocks: `source.prefix_list.key` is `key` in `prefix_list` in
/// `source`.
const EVERY_SETTING_A: &[(&str, &str)] = &[
    ("source.type", r#""S3_Compatible""#),
    ("source.bucket", r#""seta-src""#),
    ("source.prefix", r#""in/""#),
    ("source.prefix_list.bucket", r#""seta-lists""#),
    ("source.prefix_list.key", r#""prefixes.txt""#),
    ("source.region", r#""eu-west-3""#),
    ("source.endpoint", r#""https://minio.example.com""#),
    ("source.anonymous", "true"),
    ("source.requester_pays", "true"),
    ("destination.bucket", r#""seta-dst""#),
    ("destination.prefix", r#""out/""#),
    ("destination.region", r#""eu-west-1""#),
    ("destination.endpoint", r#""https://s3.example.com""#),
    (
        "destination.credentials_secret_arn",
        r#""arn:aws:secretsmanager:eu-west-1:123456789012:secret:dst""#,
    ),
    ("destination.storage_class", r#""STANDARD_IA""#),
    ("destination.acl", r#""private""#),
    ("destination.sse", r#""aws:kms""#),
    ("destination.kms_key_id", r#""alias/dst""#),
    ("compare", r#""checksum""#),
    ("skip_compare", "true"),
    ("include_metadata", "false"),
    ("filters.include", r#"["**/*.jpg"]"#),
    ("filters.exclude", r#"["**/tmp/**"]"#),
    ("finder.depth", "3"),
    ("finder.parallelism", "9"),
    ("multipart.threshold", "20971520"),
    ("multipart.chunk_size", "8388608"),
    ("multipart.giant_threshold", "2147483648"),
    ("batch.max_objects", "50"),
    ("batch.max_bytes", "16777216"),
    ("fleet.worker_concurrency", "6"),
    ("worker.part_concurrency", "3"),
    ("worker.bandwidth_limit", "10485760"),
    ("worker.requests_per_second", "300"),
    ("worker.heartbeat_secs", "30"),
    ("worker.visibility_secs", "120"),
    ("worker.shutdown_grace_secs", "240"),
    ("worker.ledger_retention_days", "7"),
    ("max_attempts", "7"),
];

/// Transfer `setb`: the settings [`EVERY_SETTING_A`] cannot have (`events` needs an Amazon_S3 source without a
/// prefix list; `anonymous` excludes `credentials_secret_arn`).
const EVERY_SETTING_B: &[(&str, &str)] = &[
    ("source.bucket", r#""setb-src""#),
    ("source.events", r#""create_and_delete""#),
    (
        "source.credentials_secret_arn",
        r#""arn:aws:secretsmanager:us-east-1:123456789012:secret:src""#,
    ),
    ("destination.bucket", r#""setb-dst""#),
];

/// A `dth_s3_transfer` named `name` (also its address) with these (attribute path, HCL value) settings, and
/// `image` (none: no `fleet` block, the default image).
fn transfer_with(name: &str, image: Option<&str>, settings: &[(&str, &str)]) -> String {
    #[derive(Default)]
    struct Block(Vec<(String, String)>, BTreeMap<String, Block>);
    fn render(b: &Block, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        for (k, v) in &b.0 {
            out.push_str(&format!("{pad}{k} = {v}\n"));
        }
        for (k, inner) in &b.1 {
            out.push_str(&format!("{pad}{k} {{\n"));
            render(inner, indent + 2, out);
            out.push_str(&format!("{pad}}}\n"));
        }
    }
    let mut root = Block::default();
    let mut all = vec![("name", format!("\"{name}\""))];
    if let Some(image) = image {
        all.push(("fleet.image", format!("\"{image}\"")));
    }
    let settings = all
        .iter()
        .map(|(p, v)| (*p, v.as_str()))
        .chain(settings.iter().copied());
    for (path, value) in settings {
        let mut parts: Vec<&str> = path.split('.').collect();
        let attribute = parts.pop().unwrap();
        let mut b = &mut root;
        for p in parts {
            b = b.1.entry(p.to_owned()).or_default();
        }
        b.0.push((attribute.to_owned(), value.to_owned()));
    }
    let mut out = format!("resource \"dth_s3_transfer\" \"{name}\" {{\n");
    render(&root, 2, &mut out);
    out.push_str("}\n");
    out
}

/// The job config path of an attribute: its own, unless the resource offers the setting elsewhere.
fn job_path(attribute: &str) -> String {
    dth_provider::transfer::spec::ATTRIBUTE_OF
        .iter()
        .find(|(_, a)| *a == attribute)
        .map_or_else(|| attribute.to_owned(), |(job, _)| (*job).to_owned())
}

/// Every (attribute, value) of `settings` in the job config of both launch templates of `name`, and the worker's
/// `--concurrency`.
async fn check_job_configs(w: &World, name: &str, settings: &[(&str, &str)]) {
    for role in ["finder", "worker"] {
        let template = format!("dth-{name}-{role}");
        let launch = launched(w, &template).await;
        let config = serde_json::to_value(&launch.config).unwrap();
        for (attribute, hcl) in settings {
            let want: serde_json::Value = serde_json::from_str(hcl).unwrap();
            let pointer = format!("/{}", job_path(attribute).replace('.', "/"));
            assert_eq!(
                config.pointer(&pointer),
                Some(&want),
                "{template}: {attribute} in the job config\n{config:#}"
            );
        }
        if role == "worker" {
            if let Some((_, n)) = settings
                .iter()
                .find(|(a, _)| *a == "fleet.worker_concurrency")
            {
                let args = launch.args.join(" ");
                assert!(args.contains(&format!("--concurrency {n}")), "{args}");
            }
        }
    }
}

/// The drain lifecycle hook's timeout of transfer `name`'s workers.
async fn drain_timeout(w: &World, name: &str) -> i32 {
    let hooks = w
        .autoscaling
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(format!("dth-{name}-worker"))
        .send()
        .await
        .unwrap();
    hooks.lifecycle_hooks()[0].heartbeat_timeout().unwrap()
}

/// Every job setting of the binaries set through `dth_s3_transfer` (two transfers between them, as some exclude
/// each other) reaches the job config in both launch templates' user data; the plan after apply is empty; an
/// import of each plans no changes (the job config read back); changing worker settings in place renders a new
/// version and moves the drain hook's timeout with `worker.shutdown_grace_secs`.
#[tokio::test(flavor = "multi_thread")]
async fn every_job_setting_reaches_the_instances() {
    let w = World::start("tf-settings").await;
    w.bucket("setb-src").await;
    let config = |a: &[(&str, &str)]| {
        format!(
            "{}\n{}",
            transfer_with("seta", Some("dth:test"), a),
            // No fleet block: every block but source and destination may be left out.
            transfer_with("setb", None, EVERY_SETTING_B)
        )
    };

    // Between them, the two set every job setting a user of the binaries has (core's fields, less what the
    // provider owns or derives).
    let set: Vec<String> = EVERY_SETTING_A
        .iter()
        .chain(EVERY_SETTING_B)
        .map(|(a, _)| job_path(a))
        .collect();
    let unset: Vec<String> = dth_provider::transfer::spec::job_settings()
        .into_iter()
        .filter(|s| !set.contains(s))
        .collect();
    assert!(
        unset.is_empty(),
        "job settings this test does not set: {unset:?}"
    );

    // moto answers StartInstanceRefresh (after a new worker launch template version) with a 500, which the SDK
    // would retry 25 times with backoff (minutes): a warning after a few.
    const RETRIES: &str = "  max_retries = 2";
    let tf = Terraform::new(&w, "main");
    tf.write_with(RETRIES, &config(EVERY_SETTING_A));
    tf.ok(&["init", "-input=false"]);
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    check_job_configs(&w, "seta", EVERY_SETTING_A).await;
    check_job_configs(&w, "setb", EVERY_SETTING_B).await;
    // What the provider derives: an S3_Compatible source is addressed path-style; the default endpoint of an
    // Amazon_S3 side is the provider's.
    let objects = |c: TransferConfig| match c {
        TransferConfig::Objects(c) => c,
        TransferConfig::Images(_) => {
            panic!("an object transfer launched an image transfer's config")
        }
    };
    let a = objects(launched(&w, "dth-seta-worker").await.config);
    assert!(a.source.path_style);
    let b = objects(launched(&w, "dth-setb-worker").await.config);
    assert_eq!(b.source.endpoint.as_deref(), Some(w.endpoint.as_str()));
    assert_eq!(b.destination.endpoint.as_deref(), Some(w.endpoint.as_str()));
    let margin = 2 * dth_core::userdata::RELEASE_MARGIN_SECS as i32 + 60;
    assert_eq!(drain_timeout(&w, "seta").await, 240 + margin);
    assert_eq!(drain_timeout(&w, "setb").await, 90 + margin);

    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "a plan right after apply must be empty:\n{out}");

    // A state written before the resource offered these settings (no `source.anonymous`, no `worker` or
    // `batch` block) reads as the same transfer: no changes.
    let file = tf.dir.join("terraform.tfstate");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    for r in state["resources"].as_array_mut().unwrap() {
        if r["name"] == "setb" {
            let attributes = r["instances"][0]["attributes"].as_object_mut().unwrap();
            assert!(attributes["worker"].is_null() && attributes["batch"].is_null());
            attributes.remove("worker");
            attributes.remove("batch");
            let source = match &mut attributes["source"] {
                serde_json::Value::Array(blocks) => &mut blocks[0],
                block => block,
            };
            source
                .as_object_mut()
                .unwrap()
                .remove("anonymous")
                .expect("source.anonymous in state");
        }
    }
    std::fs::write(&file, serde_json::to_string_pretty(&state).unwrap()).unwrap();
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "an older state must plan no changes:\n{out}");

    // Imported into a fresh working directory: the job configs read back from the launch templates are the
    // configuration's.
    let imported = Terraform::new(&w, "import");
    imported.write_with(RETRIES, &config(EVERY_SETTING_A));
    imported.ok(&["init", "-input=false"]);
    for name in ["seta", "setb"] {
        imported.ok(&[
            "import",
            "-input=false",
            &format!("dth_s3_transfer.{name}"),
            name,
        ]);
    }
    let (code, out) = imported.plan(&[]);
    assert_eq!(code, 0, "imported transfers must plan no changes:\n{out}");

    // In place: worker settings; a new launch template version, and the hook waits for the new grace.
    let changed: Vec<(&str, &str)> = EVERY_SETTING_A
        .iter()
        .map(|&(a, v)| match a {
            "worker.shutdown_grace_secs" => (a, "600"),
            "worker.bandwidth_limit" => (a, "0"),
            "batch.max_objects" => (a, "75"),
            _ => (a, v),
        })
        .collect();
    tf.write_with(RETRIES, &config(&changed));
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("0 to add, 1 to change, 0 to destroy"), "{out}");
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    check_job_configs(&w, "seta", &changed).await;
    assert_eq!(drain_timeout(&w, "seta").await, 600 + margin);
    let (code, out) = tf.plan(&[]);
    assert_eq!(
        code, 0,
        "a plan right after the update must be empty:\n{out}"
    );
}
