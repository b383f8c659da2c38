//! dth_s3_transfer as AWS really behaves, through the real terraform CLI, with the fault-injecting proxy
//! ([`dth_tests::fault`]) between the provider and moto answering as AWS answers:
//! - a second transfer with a taken name fails, naming the resource and its owner, and the first transfer's
//!   queues, jobs and table are untouched;
//! - a replacement (destroy, then create of the same names) succeeds through `QueueDeletedRecently`, a table
//!   still `DELETING`, and IAM's propagation delays (NoSuchEntity, "Invalid IAM Instance Profile name");
//! - `create_before_destroy` with `name_prefix` makes the new transfer while the old one exists, through the
//!   same IAM delays, then deletes the old one;
//! - apply, plan and destroy succeed with 10 % of every service's calls throttled.

use dth_tests::cloud::{clients, leftovers};
use dth_tests::fault::{Fault, Rule};
use dth_tests::terraform::Terraform;
use dth_tests::*;

fn transfer(naming: &str, source: &str, destination: &str, lifecycle: &str) -> String {
    format!(
        r#"
resource "dth_s3_transfer" "t" {{
  {naming}
  source {{
    bucket = "{source}"
  }}
  destination {{
    bucket = "{destination}"
  }}
  fleet {{
    image = "dth:test"
  }}
  {lifecycle}
}}

output "name" {{
  value = dth_s3_transfer.t.name
}}
"#
    )
}

fn apply(tf: &Terraform) -> String {
    tf.ok(&["apply", "-auto-approve", "-input=false"])
}

fn state_name(tf: &Terraform) -> String {
    tf.state()["values"]["outputs"]["name"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_name_is_refused_and_left_alone() {
    let w = World::start("aws-taken").await;
    for b in ["taken-src", "taken-dst", "other-src", "other-dst"] {
        w.bucket(b).await;
    }
    let first = Terraform::new(&w, "first");
    first.write(&transfer(r#"name = "taken""#, "taken-src", "taken-dst", ""));
    first.ok(&["init", "-input=false"]);
    apply(&first);
    // Jobs waiting on the first transfer's queue, and a row in its ledger.
    let url = w
        .sqs
        .get_queue_url()
        .queue_name("dth-taken-jobs")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    for i in 0..5 {
        w.sqs
            .send_message()
            .queue_url(&url)
            .message_body(format!("job {i}"))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(w.depth(&url).await.0, 5);
    let table_before = w
        .ddb
        .describe_table()
        .table_name("dth-taken-ledger")
        .send()
        .await
        .unwrap();

    // Another workspace (or a lost state) with the same name.
    let second = Terraform::new(&w, "second");
    second.write(&transfer(r#"name = "taken""#, "other-src", "other-dst", ""));
    second.ok(&["init", "-input=false"]);
    let out = second.run(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    // Terraform wraps diagnostics at 80 columns.
    let text = format!("{}{}", stdout(&out), stderr(&out))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("already exists and it belongs to the dth transfer \"taken\" (creation id"),
        "the diagnostic names the owner: {text}"
    );
    assert!(text.contains("dth-taken-"), "and the resource: {text}");

    // The first transfer is whole: its jobs, its table (the same one), and a plan without changes.
    assert_eq!(w.depth(&url).await.0, 5, "no job lost");
    let table_after = w
        .ddb
        .describe_table()
        .table_name("dth-taken-ledger")
        .send()
        .await
        .unwrap();
    assert_eq!(
        table_after.table().and_then(|t| t.creation_date_time()),
        table_before.table().and_then(|t| t.creation_date_time())
    );
    let (code, out) = first.plan(&[]);
    assert_eq!(code, 0, "the first transfer is unchanged:\n{out}");
    // Nothing of the second create is left, and nothing of the first was taken away.
    let c = clients(&w.endpoint).await;
    let second_state = second.state();
    let resources = &second_state["values"]["root_module"]["resources"];
    assert!(
        resources.as_array().is_none_or(Vec::is_empty),
        "no resource in the second state: {second_state}"
    );
    first.ok(&["destroy", "-auto-approve", "-input=false"]);
    assert!(leftovers(&c, "taken", "taken-src").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn replacement_goes_through_aws_consistency_errors() {
    let w = World::start("aws-replace").await;
    for b in ["repl-src", "repl-src2", "repl-dst"] {
        w.bucket(b).await;
    }
    let proxy = w.fault_proxy().await;
    let tf = Terraform::new_via(&w, "main", proxy.url());
    tf.write(&transfer(r#"name = "repl""#, "repl-src", "repl-dst", ""));
    tf.ok(&["init", "-input=false"]);
    apply(&tf);

    // A new source bucket replaces the transfer: destroy, then create the same names at once — where AWS holds
    // a deleted queue's name for 60 s, keeps the table DELETING for a while, and has not yet propagated the new
    // role and instance profile.
    tf.write(&transfer(r#"name = "repl""#, "repl-src2", "repl-dst", ""));
    let rules = [
        proxy.inject(
            Rule::on("sqs", "CreateQueue", Fault::queue_deleted_recently())
                .mentioning("dth-repl-jobs")
                .first(2),
        ),
        proxy.inject(
            Rule::on(
                "dynamodb",
                "CreateTable",
                Fault::resource_in_use("Table already exists: dth-repl-ledger"),
            )
            .first(1),
        ),
        proxy.inject(
            Rule::on(
                "dynamodb",
                "DescribeTable",
                Fault::respond_json(serde_json::json!({"Table": {
                    "TableName": "dth-repl-ledger",
                    "TableStatus": "DELETING",
                    "TableArn": "arn:aws:dynamodb:us-east-1:123456789012:table/dth-repl-ledger"
                }})),
            )
            .first(1),
        ),
        proxy.inject(
            Rule::on(
                "iam",
                "PutRolePolicy",
                Fault::error(
                    404,
                    "NoSuchEntity",
                    "The role with name dth-repl-role cannot be found.",
                ),
            )
            .first(1),
        ),
        proxy.inject(
            Rule::on(
                "iam",
                "AddRoleToInstanceProfile",
                Fault::error(
                    404,
                    "NoSuchEntity",
                    "The role with name dth-repl-role cannot be found.",
                ),
            )
            .first(1),
        ),
        proxy.inject(
            Rule::on(
                "autoscaling",
                "CreateAutoScalingGroup",
                Fault::autoscaling_invalid_instance_profile("dth-repl-profile"),
            )
            .first(2),
        ),
    ];
    let out = apply(&tf);
    assert!(out.contains("1 added, 0 changed, 1 destroyed"), "{out}");
    for id in rules {
        assert!(proxy.fired(id) > 0, "{}", proxy.journal_text());
    }
    assert_eq!(proxy.injected("sqs", "CreateQueue"), 2);
    assert_eq!(proxy.injected("autoscaling", "CreateAutoScalingGroup"), 2);
    proxy.clear();
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "the replacement is whole:\n{out}");
    tf.ok(&["destroy", "-auto-approve", "-input=false"]);
    let c = clients(&w.endpoint).await;
    assert!(leftovers(&c, "repl", "repl-src2").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn create_before_destroy_with_name_prefix() {
    let w = World::start("aws-cbd").await;
    for b in ["cbd-src", "cbd-dst", "cbd-dst2"] {
        w.bucket(b).await;
    }
    let proxy = w.fault_proxy().await;
    let tf = Terraform::new_via(&w, "main", proxy.url());
    let lifecycle = "lifecycle {\n    create_before_destroy = true\n  }";
    tf.write(&transfer(
        r#"name_prefix = "cbd-""#,
        "cbd-src",
        "cbd-dst",
        lifecycle,
    ));
    tf.ok(&["init", "-input=false"]);
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("+ name ") && l.contains("(known after apply)")),
        "the name is chosen at apply: {out}"
    );
    apply(&tf);
    let old = state_name(&tf);
    assert!(
        old.starts_with("cbd-") && old.len() == 4 + 8,
        "generated name {old:?}"
    );
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "{out}");

    // Replace with the old transfer still there: the new one's IAM is slow to propagate.
    tf.write(&transfer(
        r#"name_prefix = "cbd-""#,
        "cbd-src",
        "cbd-dst2",
        lifecycle,
    ));
    proxy.inject(
        Rule::on(
            "autoscaling",
            "CreateAutoScalingGroup",
            Fault::autoscaling_invalid_instance_profile("dth-cbd-profile"),
        )
        .first(1),
    );
    proxy.inject(
        Rule::on(
            "iam",
            "AddRoleToInstanceProfile",
            Fault::error(404, "NoSuchEntity", "The role cannot be found."),
        )
        .first(1),
    );
    let out = apply(&tf);
    assert!(out.contains("1 added, 0 changed, 1 destroyed"), "{out}");
    let created = out.find("Creation complete").expect("created");
    let destroyed = out.find("Destruction complete").expect("destroyed");
    assert!(created < destroyed, "create before destroy:\n{out}");
    let new = state_name(&tf);
    assert_ne!(new, old);
    assert!(new.starts_with("cbd-"), "{new}");
    proxy.clear();
    let c = clients(&w.endpoint).await;
    let left = leftovers(&c, &old, "cbd-src").await;
    assert!(left.is_empty(), "the old transfer is gone: {left:?}");
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "{out}");
    tf.ok(&["destroy", "-auto-approve", "-input=false"]);
    assert!(leftovers(&c, &new, "cbd-src").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_and_destroy_through_throttling_on_every_service() {
    let w = World::start("aws-throttle").await;
    for b in ["thr-src", "thr-dst"] {
        w.bucket(b).await;
    }
    let proxy = w.fault_proxy().await;
    let tf = Terraform::new_via(&w, "main", proxy.url());
    tf.write(&transfer(r#"name = "thr""#, "thr-src", "thr-dst", ""));
    tf.ok(&["init", "-input=false"]);
    // One call in ten, on every service and operation, answers as AWS does when it throttles (EC2's
    // RequestLimitExceeded, IAM's Throttling, DynamoDB's ThrottlingException, S3's SlowDown, ...).
    proxy.inject(Rule::new(Fault::Throttling).share(0.10, 7));
    apply(&tf);
    let (code, out) = tf.plan(&[]);
    assert_eq!(code, 0, "{out}");
    tf.ok(&["destroy", "-auto-approve", "-input=false"]);
    let throttled = proxy.injected("*", "*");
    let calls = proxy.calls("*", "*");
    assert!(
        throttled * 20 >= calls && throttled > 5,
        "{throttled} of {calls} calls throttled:\n{}",
        proxy.journal_text()
    );
    proxy.clear();
    let c = clients(&w.endpoint).await;
    assert!(leftovers(&c, "thr", "thr-src").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_applies_on_one_source_bucket_keep_every_entry() {
    let w = World::start("aws-notify").await;
    for b in ["shared-src", "one-dst", "two-dst"] {
        w.bucket(b).await;
    }
    // Someone else's entry, there before either transfer.
    let other = w.queues("someone-else", 3, 30).await;
    w.s3.put_bucket_notification_configuration()
        .bucket("shared-src")
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .queue_configurations(
                    aws_sdk_s3::types::QueueConfiguration::builder()
                        .id("someone-else")
                        .queue_arn(&other.arn)
                        .events(aws_sdk_s3::types::Event::from("s3:ObjectCreated:*"))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();

    let proxy = w.fault_proxy().await;
    // Every write of the configuration is held 3 s: both applies read it before either writes,
    // and the later write drops the earlier one's entry — unless the provider sees that and writes it again.
    proxy.inject(Rule::on(
        "s3",
        "PutBucketNotificationConfiguration",
        Fault::Delay(std::time::Duration::from_secs(3)),
    ));
    let workspaces: Vec<Terraform> = ["one", "two"]
        .into_iter()
        .map(|name| {
            let tf = Terraform::new_via(&w, name, proxy.url());
            // S3 events from the shared bucket to each transfer's queue.
            let config = transfer(
                &format!("name = \"{name}\""),
                "shared-src",
                &format!("{name}-dst"),
                "",
            )
            .replace(
                "bucket = \"shared-src\"",
                "bucket = \"shared-src\"\n    events = \"create\"",
            );
            tf.write(&config);
            tf.ok(&["init", "-input=false"]);
            tf
        })
        .collect();
    std::thread::scope(|s| {
        for tf in &workspaces {
            s.spawn(move || apply(tf));
        }
    });
    let c = clients(&w.endpoint).await;
    let mut ids = dth_tests::cloud::notification_ids(&c, "shared-src").await;
    ids.sort();
    assert_eq!(
        ids,
        ["dth-one", "dth-two", "someone-else"],
        "{}",
        proxy.journal_text()
    );
    assert!(
        proxy.calls("s3", "PutBucketNotificationConfiguration") >= 3,
        "the two writes raced, and the one dropped was made again:\n{}",
        proxy.journal_text()
    );

    // Both destroyed at once: each takes only its own entry away.
    std::thread::scope(|s| {
        for tf in &workspaces {
            s.spawn(move || tf.ok(&["destroy", "-auto-approve", "-input=false"]));
        }
    });
    let ids = dth_tests::cloud::notification_ids(&c, "shared-src").await;
    assert_eq!(ids, ["someone-else"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_aborts_only_the_transfers_own_uploads() {
    let w = World::start("aws-uploads").await;
    for b in ["up-src", "up-dst"] {
        w.bucket(b).await;
    }
    let tf = Terraform::new(&w, "main");
    tf.write(&transfer(r#"name = "up""#, "up-src", "up-dst", ""));
    tf.ok(&["init", "-input=false"]);
    apply(&tf);
    // The ledger lets DynamoDB expire per-object and per-job rows.
    let ttl = w
        .ddb
        .describe_time_to_live()
        .table_name("dth-up-ledger")
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().expect("time to live");
    assert_eq!(
        ttl.attribute_name(),
        Some(dth_core::ledger::EXPIRES_AT),
        "{ttl:?}"
    );

    let start = |key: &'static str| {
        let s3 = w.s3.clone();
        async move {
            s3.create_multipart_upload()
                .bucket("up-dst")
                .key(key)
                .send()
                .await
                .unwrap()
                .upload_id()
                .unwrap()
                .to_owned()
        }
    };
    // Another application's uploads under the destination prefix (the whole bucket), one under a key the
    // transfer also writes; and one the transfer's worker started and recorded in its ledger.
    let foreign = [
        start("other-app/big.bin").await,
        start("photos/a.jpg").await,
    ];
    let ours = start("photos/a.jpg").await;
    let ledger = dth_core::ledger::DynamoLedger::new(w.ddb.clone(), "dth-up-ledger");
    ledger
        .record_open_upload(&dth_core::ledger::OpenUpload {
            upload_id: ours.clone(),
            bucket: "up-dst".into(),
            key: "photos/a.jpg".into(),
            run: "run-1".into(),
            created_at: None,
        })
        .await
        .unwrap();

    tf.ok(&["destroy", "-auto-approve", "-input=false"]);
    let left =
        w.s3.list_multipart_uploads()
            .bucket("up-dst")
            .send()
            .await
            .unwrap();
    let mut left: Vec<String> = left
        .uploads()
        .iter()
        .filter_map(|u| u.upload_id().map(str::to_owned))
        .collect();
    left.sort();
    let mut want = foreign.to_vec();
    want.sort();
    assert_eq!(left, want, "only the transfer's own upload is aborted");
    assert_eq!(w.incomplete_uploads("up-dst").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn hand_edits_show_in_the_plan_and_are_put_back() {
    let w = World::start("aws-drift").await;
    for b in ["drift-src", "drift-dst"] {
        w.bucket(b).await;
    }
    let tf = Terraform::new(&w, "main");
    let config = |max: u32| {
        transfer(r#"name = "drift""#, "drift-src", "drift-dst", "").replace(
            "image = \"dth:test\"",
            &format!("image = \"dth:test\"\n    max   = {max}"),
        )
    };
    tf.write(&config(20));
    tf.ok(&["init", "-input=false"]);
    apply(&tf);

    // An in-place update plans only what changes: no "(known after apply)" for ids it keeps.
    tf.write(&config(30));
    let (code, out) = tf.plan(&["-no-color"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("~ max"), "{out}");
    assert!(
        !out.contains("known after apply"),
        "only max changes:\n{out}"
    );
    assert!(out.contains("1 to change"), "{out}");
    apply(&tf);

    let c = clients(&w.endpoint).await;
    let n = dth_provider::transfer::Names::new("drift");
    let queue = |name: &str| {
        let sqs = w.sqs.clone();
        let name = name.to_owned();
        async move {
            sqs.get_queue_url()
                .queue_name(name)
                .send()
                .await
                .unwrap()
                .queue_url()
                .unwrap()
                .to_owned()
        }
    };
    let (q, dlq) = (queue(&n.queue).await, queue(&n.dlq).await);
    use aws_sdk_sqs::types::QueueAttributeName as A;
    w.sqs
        .set_queue_attributes()
        .queue_url(&q)
        .attributes(A::VisibilityTimeout, "60")
        .send()
        .await
        .unwrap();
    w.sqs
        .set_queue_attributes()
        .queue_url(&dlq)
        .attributes(A::MessageRetentionPeriod, "3600")
        .send()
        .await
        .unwrap();
    let scale_out = c
        .autoscaling
        .describe_policies()
        .auto_scaling_group_name(&n.worker_asg)
        .policy_names(&n.scale_out_policy)
        .send()
        .await
        .unwrap()
        .scaling_policies()[0]
        .policy_arn()
        .unwrap()
        .to_owned();
    c.cloudwatch
        .put_metric_alarm()
        .alarm_name(&n.backlog_alarm)
        .namespace("AWS/SQS")
        .metric_name("ApproximateNumberOfMessagesVisible")
        .statistic(aws_sdk_cloudwatch::types::Statistic::Maximum)
        .period(60)
        .evaluation_periods(1)
        .threshold(50.0)
        .comparison_operator(
            aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanOrEqualToThreshold,
        )
        .alarm_actions(&scale_out)
        .send()
        .await
        .unwrap();
    c.autoscaling
        .put_scaling_policy()
        .auto_scaling_group_name(&n.worker_asg)
        .policy_name(&n.scale_in_policy)
        .policy_type("SimpleScaling")
        .adjustment_type("ExactCapacity")
        .scaling_adjustment(5)
        .send()
        .await
        .unwrap();
    c.cloudwatch
        .put_dashboard()
        .dashboard_name(&n.dashboard)
        .dashboard_body(r#"{"widgets":[]}"#)
        .send()
        .await
        .unwrap();
    c.iam
        .put_role_policy()
        .role_name(&n.role)
        .policy_name(&n.policy)
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
        )
        .send()
        .await
        .unwrap();
    c.autoscaling
        .put_lifecycle_hook()
        .auto_scaling_group_name(&n.worker_asg)
        .lifecycle_hook_name(&n.drain_hook)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
        .heartbeat_timeout(30)
        .default_result("ABANDON")
        .send()
        .await
        .unwrap();
    w.ddb
        .update_time_to_live()
        .table_name(&n.table)
        .time_to_live_specification(
            aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .enabled(false)
                .attribute_name(dth_core::ledger::EXPIRES_AT)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    // The plan names each edit, and applying it puts everything back.
    let (code, out) = tf.plan(&["-no-color"]);
    assert_eq!(code, 2, "{out}");
    let text = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for edit in [
        "queue: VisibilityTimeout is 60 (the provider sets 900)",
        "dead_letter_queue: MessageRetentionPeriod is 3600",
        "alarms: dth-drift-queue-backlog: threshold 50",
        "scaling_policies: dth-drift-scale-in: sets ExactCapacity 5",
        "dashboard: its widgets differ",
        "role_policy: the role's policy differs",
        "drain_hook: waits 30 s then ABANDON",
        "table: time to live is off",
    ] {
        assert!(text.contains(edit), "the plan names {edit:?}:\n{out}");
    }
    assert!(
        text.contains("1 to change, 0 to destroy"),
        "in place: {out}"
    );
    apply(&tf);
    let (code, out) = tf.plan(&["-no-color"]);
    assert_eq!(code, 0, "everything is back:\n{out}");
    let attrs = w
        .sqs
        .get_queue_attributes()
        .queue_url(&q)
        .attribute_names(A::VisibilityTimeout)
        .send()
        .await
        .unwrap();
    assert_eq!(
        attrs
            .attributes()
            .and_then(|a| a.get(&A::VisibilityTimeout))
            .map(String::as_str),
        Some("900")
    );
    tf.ok(&["destroy", "-auto-approve", "-input=false"]);
}
