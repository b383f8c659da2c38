//! Provisioning a transfer against a private moto server: create → observe → update → observe → import →
//! delete, then a check in moto that nothing of the transfer is left and the data is; a create that fails
//! midway leaves nothing behind; `observe` costs a fixed number of AWS calls whatever the bucket holds; and
//! pieces deleted by hand (the queue, the drain hook, the log group) are reported missing and come back with
//! the replacement.

use std::collections::BTreeMap;

use dth_provider::aws::{AwsClients, ProviderConfig};
use dth_provider::transfer::{
    create, delete, import, observe, update, Component, Images, Infra, Observed, Payload, Status,
    TransferSpec,
};

use dth_tests::cloud::{leftovers, notification_ids, provider_config};
use dth_tests::World;

/// What a refresh sees of a transfer that is there.
async fn observed<P: Payload>(
    c: &AwsClients,
    cfg: &ProviderConfig,
    spec: &TransferSpec<P>,
    infra: &Infra,
) -> Observed<P> {
    observe(c, cfg, spec, infra)
        .await
        .expect("observe")
        .expect("present")
}

async fn world(name: &str) -> (World, ProviderConfig, AwsClients) {
    let w = World::start(name).await;
    let mut cfg = provider_config(&w.endpoint);
    cfg.default_tags = [("team".to_owned(), "data".to_owned())].into();
    let clients = AwsClients::new(&cfg).await.expect("clients");
    (w, cfg, clients)
}

/// The log group's retention (None: never expires) and tags, or None when it is gone.
async fn log_group(c: &AwsClients, name: &str) -> Option<(Option<i32>, BTreeMap<String, String>)> {
    let out = c
        .logs
        .describe_log_groups()
        .log_group_name_prefix(name)
        .send()
        .await
        .expect("describe log groups");
    let group = out
        .log_groups()
        .iter()
        .find(|g| g.log_group_name() == Some(name))?;
    let arn = group
        .log_group_arn()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("arn:aws:logs:us-east-1:123456789012:log-group:{name}"));
    let tags = c
        .logs
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await
        .expect("log group tags");
    let tags = tags
        .tags()
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Some((group.retention_in_days(), tags))
}

/// Whether the worker group has its drain hook.
async fn has_drain_hook(c: &AwsClients, infra: &Infra, hook: &str) -> bool {
    c.autoscaling
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(&infra.worker_asg)
        .send()
        .await
        .expect("lifecycle hooks")
        .lifecycle_hooks()
        .iter()
        .any(|h| h.lifecycle_hook_name() == Some(hook))
}

/// Keys `<prefix>0000`, `<prefix>0001`, …, each object holding its own key.
async fn fill(w: &World, bucket: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let k = format!("{prefix}{i:04}");
        w.put(bucket, &k, k.as_bytes()).await;
    }
}

#[tokio::test]
async fn create_observe_update_import_delete() {
    let (w, cfg, c) = world("provision-life").await;
    w.bucket("life-src").await;
    fill(&w, "life-src", "in/", 5).await;
    w.bucket("life-dst").await;
    // Someone else's notification on the source bucket: it must survive our create and delete.
    let other = c
        .sqs
        .create_queue()
        .queue_name("someone-else")
        .send()
        .await
        .expect("queue");
    let other_arn = c
        .sqs
        .get_queue_attributes()
        .queue_url(other.queue_url().unwrap_or_default())
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("arn")
        .attributes()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .unwrap_or_default();
    c.s3.put_bucket_notification_configuration()
        .bucket("life-src")
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .queue_configurations(
                    aws_sdk_s3::types::QueueConfiguration::builder()
                        .id("someone-else")
                        .queue_arn(&other_arn)
                        .events(aws_sdk_s3::types::Event::from("s3:ObjectCreated:Put"))
                        .build()
                        .expect("queue configuration"),
                )
                .build(),
        )
        .send()
        .await
        .expect("put notification");

    let mut spec = TransferSpec::new("life", "life-src", "life-dst", "registry.local/dth:1");
    spec.source.prefix = "in/".into();
    spec.source.events = dth_core::config::EventsMode::Create;
    spec.destination.prefix = "copy".into();
    spec.alarm_email = Some("ops@example.com".into());
    spec.tags.insert("project".into(), "photos".into());

    let infra = create(&c, &cfg, &spec).await.expect("create");
    assert_eq!(
        infra.queue_arn,
        "arn:aws:sqs:us-east-1:123456789012:dth-life-jobs"
    );
    assert!(infra.security_group_id.is_some());
    assert_eq!(infra.alarm_names.len(), 3);
    assert_eq!(infra.notification_id.as_deref(), Some("dth-life"));
    assert!(!infra.ami_id.is_empty());
    // The log group: the default retention, and the tags every resource of the transfer carries.
    assert_eq!(infra.log_group, "/dth/life");
    let (retention, tags) = log_group(&c, "/dth/life").await.expect("log group");
    assert_eq!(retention, Some(30));
    assert_eq!(tags, infra.tags);
    assert_eq!(
        tags.get("dth:transfer").map(String::as_str),
        Some("life"),
        "{tags:?}"
    );
    assert_eq!(tags.get("team").map(String::as_str), Some("data"));
    assert_eq!(tags.get("project").map(String::as_str), Some("photos"));

    // The worker's user data carries the job config, parsed back exactly.
    let lt = c
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(&infra.worker_launch_template_id)
        .versions("1")
        .send()
        .await
        .expect("versions");
    let data = lt.launch_template_versions()[0]
        .launch_template_data()
        .cloned()
        .expect("data");
    let launch = dth_core::userdata::parse(data.user_data().unwrap_or("")).expect("user data");
    assert_eq!(launch.config, spec.job_config(&infra, &cfg).into());
    assert_eq!(
        launch.args,
        ["--concurrency", "4", "--lifecycle-hook", "dth-life-drain"]
    );
    assert_eq!(
        (launch.group.as_str(), launch.region.as_str()),
        ("dth-life-worker", "us-east-1")
    );
    assert_eq!(
        launch.log_group.as_deref(),
        Some("/dth/life"),
        "the containers log to the group (awslogs)"
    );
    assert_eq!(
        data.metadata_options()
            .and_then(|m| m.http_tokens())
            .map(|t| t.as_str()),
        Some("required")
    );
    assert_eq!(
        data.block_device_mappings()[0]
            .ebs()
            .and_then(|e| e.encrypted()),
        Some(true)
    );
    let group = c
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&infra.finder_asg)
        .send()
        .await
        .expect("groups");
    let finder = &group.auto_scaling_groups()[0];
    assert_eq!(
        (
            finder.min_size(),
            finder.max_size(),
            finder.desired_capacity()
        ),
        (Some(0), Some(1), Some(1))
    );
    // Scale-in waits for a worker to release its jobs: a termination hook on the worker group, longer than
    // the worker's grace period and the stop margins.
    let hooks = c
        .autoscaling
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(&infra.worker_asg)
        .send()
        .await
        .expect("lifecycle hooks");
    let hook = &hooks.lifecycle_hooks()[0];
    assert_eq!(hook.lifecycle_hook_name(), Some("dth-life-drain"));
    assert_eq!(
        hook.lifecycle_transition(),
        Some("autoscaling:EC2_INSTANCE_TERMINATING")
    );
    assert_eq!(hook.default_result(), Some("CONTINUE"));
    let grace = dth_core::config::WorkerOptions::default().shutdown_grace_secs as i32;
    assert!(
        hook.heartbeat_timeout().unwrap_or(0) > grace + 60,
        "{hook:?}"
    );
    assert_eq!(
        notification_ids(&c, "life-src").await,
        ["someone-else", "dth-life"],
        "ours merged with the existing one"
    );
    // S3 (and moto) confirm a new notification with a test event on the queue; a worker drops it.
    let received = c
        .sqs
        .receive_message()
        .queue_url(&infra.queue_url)
        .send()
        .await
        .expect("receive");
    let test_event = &received.messages()[0];
    assert!(test_event.body().unwrap_or("").contains("s3:TestEvent"));
    c.sqs
        .delete_message()
        .queue_url(&infra.queue_url)
        .receipt_handle(test_event.receipt_handle().unwrap_or(""))
        .send()
        .await
        .expect("delete test event");

    let seen = observed(&c, &cfg, &spec, &infra).await;
    assert!(seen.missing.is_empty(), "{:?}", seen.missing);
    assert_eq!(seen.progress.status, Status::Idle);
    assert_eq!(seen.spec, spec);
    assert_eq!(seen.infra, infra);

    let mut new = spec.clone();
    new.fleet.min = 2;
    new.fleet.desired = 3;
    new.fleet.max = 10;
    new.worker.concurrency = 8;
    new.worker.requests_per_second = 50;
    new.batch.max_objects = 100;
    new.schedule = "30 2 * * *".into();
    new.tags.insert("owner".into(), "me".into());
    new.tags.remove("project");
    new.log_retention_days = 7;
    let (infra2, warnings) = update(&c, &cfg, (&spec, &infra), &new)
        .await
        .expect("update");
    let (retention, tags) = log_group(&c, "/dth/life").await.expect("log group");
    assert_eq!(retention, Some(7), "retention changed in place");
    assert_eq!(tags, infra2.tags, "retagged with the rest");
    assert!(!tags.contains_key("project"), "{tags:?}");
    assert_eq!(infra2.worker_launch_template_version, 2);
    assert_eq!(
        infra2.schedule_action.as_deref(),
        Some("dth-life-finder-schedule")
    );
    // moto answers StartInstanceRefresh with a 500: a warning, not an error.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("keep launch template version 1"),
        "{warnings:?}"
    );

    let seen = observed(&c, &cfg, &new, &infra2).await;
    assert!(seen.missing.is_empty(), "{:?}", seen.missing);
    assert_eq!(seen.spec, new);
    assert_eq!(seen.worker_desired, 3);
    // A hand-made change shows up against the spec.
    c.autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(&infra2.worker_asg)
        .max_size(4)
        .send()
        .await
        .expect("hand edit");
    let seen = observed(&c, &cfg, &new, &infra2).await;
    assert_eq!(seen.spec.fleet.max, 4);
    assert_eq!(
        seen.spec.fleet.desired, 3,
        "autoscaling owns desired within min..max"
    );
    c.autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(&infra2.worker_asg)
        .max_size(10)
        .send()
        .await
        .expect("hand edit undone");
    // So does a retention changed by hand, and an update puts it back.
    c.logs
        .put_retention_policy()
        .log_group_name("/dth/life")
        .retention_in_days(14)
        .send()
        .await
        .expect("hand edit");
    let seen = observed(&c, &cfg, &new, &infra2).await;
    assert_eq!(seen.spec.log_retention_days, 14);
    assert!(seen.missing.is_empty(), "{:?}", seen.missing);
    update(&c, &cfg, (&seen.spec, &infra2), &new)
        .await
        .expect("retention put back");
    assert_eq!(
        log_group(&c, "/dth/life").await.map(|(r, _)| r),
        Some(Some(7))
    );
    // 0 removes the retention policy (the logs never expire), and back.
    let mut forever = new.clone();
    forever.log_retention_days = 0;
    update(&c, &cfg, (&new, &infra2), &forever)
        .await
        .expect("never expire");
    assert_eq!(log_group(&c, "/dth/life").await.map(|(r, _)| r), Some(None));
    let seen = observed(&c, &cfg, &forever, &infra2).await;
    assert_eq!(seen.spec, forever);
    update(&c, &cfg, (&forever, &infra2), &new)
        .await
        .expect("retention again");
    assert_eq!(
        log_group(&c, "/dth/life").await.map(|(r, _)| r),
        Some(Some(7))
    );

    let (imported, imported_infra) = import(&c, &cfg, "life").await.expect("import");
    assert_eq!(imported, new);
    assert_eq!(imported_infra, infra2);
    // Step scaling moved the fleet in to 2 (moto cannot launch from a template version with user data made by
    // CreateLaunchTemplateVersion, so the test scales in): a new max leaves it there — only a change of
    // `desired` itself writes the desired capacity.
    c.autoscaling
        .set_desired_capacity()
        .auto_scaling_group_name(&infra2.worker_asg)
        .desired_capacity(2)
        .send()
        .await
        .expect("scaled in");
    let mut wider = new.clone();
    wider.fleet.max = 12;
    let (infra3, _) = update(&c, &cfg, (&new, &infra2), &wider)
        .await
        .expect("raise max");
    let seen = observed(&c, &cfg, &wider, &infra3).await;
    assert_eq!((seen.spec.fleet.max, seen.worker_desired), (12, 2));
    assert_eq!(seen.spec.fleet.desired, 3, "within min..max: as written");
    update(&c, &cfg, (&wider, &infra3), &new)
        .await
        .expect("max back");

    // The alarm email changes in place: a new subscription, then none (topic gone, alarm without action).
    let mut other_email = new.clone();
    other_email.alarm_email = Some("oncall@example.com".into());
    let (infra3, _) = update(&c, &cfg, (&new, &infra2), &other_email)
        .await
        .expect("update email");
    assert_ne!(infra3.subscription_arn, infra2.subscription_arn);
    let seen = observed(&c, &cfg, &other_email, &infra3).await;
    assert_eq!(seen.spec.alarm_email.as_deref(), Some("oncall@example.com"));
    let mut no_email = other_email.clone();
    no_email.alarm_email = None;
    let (infra4, _) = update(&c, &cfg, (&other_email, &infra3), &no_email)
        .await
        .expect("update email");
    assert_eq!(
        (infra4.topic_arn.as_ref(), infra4.subscription_arn.as_ref()),
        (None, None)
    );
    let seen = observed(&c, &cfg, &no_email, &infra4).await;
    assert!(seen.missing.is_empty(), "{:?}", seen.missing);
    assert_eq!(seen.spec, no_email);
    let (new, infra2) = (no_email, infra4);

    let notes = delete(&c, &infra2, &new).await.expect("delete");
    assert!(notes.is_empty(), "{notes:?}");
    let left = leftovers(&c, "life", "life-src").await;
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(log_group(&c, "/dth/life").await, None, "deleted with it");
    assert_eq!(notification_ids(&c, "life-src").await, ["someone-else"]);
    assert_eq!(w.keys("life-src").await.len(), 5, "source objects stay");
    c.s3.head_bucket()
        .bucket("life-dst")
        .send()
        .await
        .expect("destination bucket stays");
    // Deleting again finds nothing to delete, and that is fine.
    delete(&c, &infra2, &new).await.expect("delete again");
    assert!(observe(&c, &cfg, &new, &infra2)
        .await
        .expect("observe")
        .is_none());
}

#[tokio::test]
async fn failed_create_leaves_nothing_behind() {
    let (w, cfg, c) = world("provision-fail").await;
    w.bucket("fail-src").await;
    fill(&w, "fail-src", "", 2).await;
    w.bucket("fail-dst").await;
    // The role name is taken: create gets past the queues and the table, then fails.
    c.iam
        .create_role()
        .role_name("dth-fail-role")
        .assume_role_policy_document("{}")
        .send()
        .await
        .expect("pre-existing role");
    let spec = TransferSpec::new("fail", "fail-src", "fail-dst", "img:1");
    let err = create(&c, &cfg, &spec).await.expect_err("role exists");
    let text = err.to_string();
    assert!(
        text.starts_with(
            "creating IAM role (dth-fail-role): already exists and it was not made by dth, not this transfer"
        ),
        "{text}"
    );
    assert!(err.cleanup.is_empty(), "{text}");
    let left: Vec<String> = leftovers(&c, "fail", "fail-src")
        .await
        .into_iter()
        .filter(|l| l != "role dth-fail-role")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(
        log_group(&c, "/dth/fail").await,
        None,
        "the log group, made before the role, is rolled back"
    );
    // The role that was there before is not ours to delete.
    c.iam
        .get_role()
        .role_name("dth-fail-role")
        .send()
        .await
        .expect("role kept");
    assert_eq!(w.keys("fail-src").await.len(), 2);

    // Invalid specs fail before any AWS call, naming the attribute.
    let mut bad = spec.clone();
    bad.fleet.min = 5;
    bad.fleet.desired = 1;
    let before = c.calls();
    let err = create(&c, &cfg, &bad).await.expect_err("invalid");
    assert!(err.to_string().contains("fleet.desired"), "{err}");
    assert_eq!(c.calls(), before);
    let mut bad = spec.clone();
    bad.log_retention_days = 31;
    let err = create(&c, &cfg, &bad).await.expect_err("invalid");
    assert!(
        err.to_string()
            .contains("log_retention_days: 31 is not a retention CloudWatch Logs accepts"),
        "{err}"
    );
    assert_eq!(c.calls(), before);
}

#[tokio::test]
async fn observe_costs_a_fixed_number_of_calls() {
    let (w, cfg, c) = world("provision-count").await;
    w.bucket("count-src").await;
    fill(&w, "count-src", "a/", 10).await;
    w.bucket("count-dst").await;
    fill(&w, "count-dst", "x/", 3).await;
    let mut spec = TransferSpec::new("count", "count-src", "count-dst", "img:1");
    spec.alarm_email = Some("ops@example.com".into());
    spec.source.events = dth_core::config::EventsMode::CreateAndDelete;
    let infra = create(&c, &cfg, &spec).await.expect("create");

    // A finder run in the ledger, as the finder and workers write it.
    let ledger = dth_core::ledger::DynamoLedger::new(c.dynamodb.clone(), &infra.table);
    ledger.start_run("run-1").await.expect("start run");
    ledger
        .finish_run("run-1", 10, 100)
        .await
        .expect("finish run");

    let calls = |before: u64| c.calls() - before;
    let before = c.calls();
    let seen = observed(&c, &cfg, &spec, &infra).await;
    let small = calls(before);
    assert_eq!(seen.progress.objects_found, 10);
    assert_eq!(seen.progress.status, Status::Syncing, "found 10, none done");
    assert!(seen.progress.last_finder_run.is_some());

    // Many more objects on both sides: the same calls.
    fill(&w, "count-src", "b/", 300).await;
    let before = c.calls();
    observed(&c, &cfg, &spec, &infra).await;
    let large = calls(before);
    assert_eq!(
        small, large,
        "observe must not depend on the objects in the buckets"
    );
    // SQS 2, DynamoDB 3 (run pointer, summary, time to live), Auto Scaling 4 (groups, scheduled actions,
    // policies, drain hook), EC2 4 (templates, 2 versions, security group), IAM 2, CloudWatch 2, CloudWatch Logs
    // 1, SNS 1, S3 1. (17 before the drain hook and the log group were checked; 19 before drift was.)
    assert_eq!(small, 20, "observe made {small} AWS calls");

    // A piece deleted by hand is reported, so that it can be replaced.
    c.sqs
        .delete_queue()
        .queue_url(&infra.queue_url)
        .send()
        .await
        .expect("delete queue");
    let seen = observed(&c, &cfg, &spec, &infra).await;
    assert_eq!(seen.missing, [Component::Queue]);

    delete(&c, &infra, &spec).await.expect("delete");
    assert!(leftovers(&c, "count", "count-src").await.is_empty());
    assert_eq!(w.keys("count-src").await.len(), 310);
    assert_eq!(w.keys("count-dst").await.len(), 3);
}

/// An image transfer is read like an object transfer: the same calls for the same shared settings (an object
/// transfer without S3 events: the image one has no bucket notification to read), its progress from the ledger,
/// and nothing left after delete.
#[tokio::test]
async fn an_image_transfer_is_observed_with_the_calls_of_an_object_transfer() {
    let (w, cfg, c) = world("provision-images").await;
    w.bucket("objs-src").await;
    w.bucket("objs-dst").await;
    let mut objects = TransferSpec::new("objs", "objs-src", "objs-dst", "img:1");
    objects.alarm_email = Some("ops@example.com".into());
    let mut images = TransferSpec::images(
        "imgs",
        "http://127.0.0.1:5999",
        &["app:1.0", "team/base:ALL_TAGS"],
        "img:1",
    );
    images.alarm_email = Some("ops@example.com".into());
    let objects_infra = create(&c, &cfg, &objects).await.expect("create objects");
    let images_infra = create(&c, &cfg, &images).await.expect("create images");

    for infra in [&objects_infra, &images_infra] {
        let ledger = dth_core::ledger::DynamoLedger::new(c.dynamodb.clone(), &infra.table);
        ledger.start_run("run-1").await.expect("start run");
        ledger
            .finish_run("run-1", 3, 300)
            .await
            .expect("finish run");
    }
    let before = c.calls();
    let seen = observed(&c, &cfg, &objects, &objects_infra).await;
    let objects_calls = c.calls() - before;
    assert_eq!(seen.progress.objects_found, 3);
    let before = c.calls();
    let seen: Observed<Images> = observed(&c, &cfg, &images, &images_infra).await;
    let images_calls = c.calls() - before;
    assert_eq!(
        seen.progress.objects_found, 3,
        "images found, from the ledger"
    );
    assert_eq!(seen.progress.status, Status::Syncing);
    assert!(seen.missing.is_empty(), "{:?}", seen.missing);
    assert!(seen.drift.is_empty(), "{:?}", seen.drift);
    assert_eq!(seen.spec, images, "the spec reads back from the cloud");
    assert_eq!(images_calls, objects_calls);
    assert_eq!(images_calls, 19, "observe made {images_calls} AWS calls");

    // Import rebuilds the image transfer, and refuses to rebuild it as an object transfer.
    let (spec, infra) = import::<Images>(&c, &cfg, "imgs").await.expect("import");
    assert_eq!(spec, images);
    assert_eq!(infra.queue_url, images_infra.queue_url);
    let wrong = import::<dth_provider::transfer::Objects>(&c, &cfg, "imgs")
        .await
        .expect_err("an image transfer is not an object transfer");
    assert!(
        wrong.to_string().contains("another kind of transfer"),
        "{wrong}"
    );

    delete(&c, &images_infra, &images).await.expect("delete");
    delete(&c, &objects_infra, &objects).await.expect("delete");
    assert!(leftovers(&c, "imgs", "objs-src").await.is_empty());
    assert!(leftovers(&c, "objs", "objs-src").await.is_empty());
}

#[tokio::test]
async fn hand_deleted_drain_hook_and_log_group_are_missing_until_replaced() {
    let (w, cfg, c) = world("provision-drift").await;
    w.bucket("drift-src").await;
    w.bucket("drift-dst").await;
    let mut spec = TransferSpec::new("drift", "drift-src", "drift-dst", "img:1");
    spec.log_retention_days = 0;
    let infra = create(&c, &cfg, &spec).await.expect("create");
    let hook = "dth-drift-drain";
    assert!(has_drain_hook(&c, &infra, hook).await);
    assert_eq!(
        log_group(&c, "/dth/drift").await.map(|(r, _)| r),
        Some(None),
        "0: no retention policy, the logs never expire"
    );
    let seen = observed(&c, &cfg, &spec, &infra).await;
    assert!(seen.missing.is_empty(), "{:?}", seen.missing);
    assert_eq!(seen.spec, spec);

    // The drain hook deleted by hand: scale-in would no longer wait for workers to release their jobs.
    c.autoscaling
        .delete_lifecycle_hook()
        .auto_scaling_group_name(&infra.worker_asg)
        .lifecycle_hook_name(hook)
        .send()
        .await
        .expect("delete hook");
    let seen = observed(&c, &cfg, &spec, &infra).await;
    assert_eq!(seen.missing, [Component::DrainHook]);
    assert_eq!(seen.spec, spec, "nothing else drifted");

    // The log group too.
    c.logs
        .delete_log_group()
        .log_group_name(&infra.log_group)
        .send()
        .await
        .expect("delete log group");
    let seen = observed(&c, &cfg, &spec, &infra).await;
    assert_eq!(seen.missing, [Component::LogGroup, Component::DrainHook]);

    // A missing piece plans a replacement: delete (which finds both already gone, and that is fine), then create.
    let notes = delete(&c, &infra, &spec).await.expect("delete");
    assert!(notes.is_empty(), "{notes:?}");
    assert!(leftovers(&c, "drift", "drift-src").await.is_empty());
    let infra = create(&c, &cfg, &spec).await.expect("create again");
    assert!(has_drain_hook(&c, &infra, hook).await, "the hook is back");
    assert!(
        log_group(&c, "/dth/drift").await.is_some(),
        "the group is back"
    );
    let seen = observed(&c, &cfg, &spec, &infra).await;
    assert!(seen.missing.is_empty(), "{:?}", seen.missing);
    delete(&c, &infra, &spec).await.expect("delete");
    assert!(leftovers(&c, "drift", "drift-src").await.is_empty());
}
