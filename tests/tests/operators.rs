//! The operators' view, end to end against a transfer applied with the real terraform CLI on moto:
//! - `dth status` (one transfer, all of them, JSON and text), `dth failures` and `dth retry`: a transfer whose
//!   jobs fail (the destination refuses two keys) and are dead-lettered, then retried to completion;
//! - `dth retry` where SQS will not start a message move task: batch by batch, a refused batch returned to the
//!   dead-letter queue at once, killed between a send and its delete without losing a job;
//! - `data "dth_transfer"` in a `check` block of another configuration: it warns while the transfer is behind
//!   or failed, and passes once it is in sync;
//! - the worker's metrics: every metric the transfer's dashboard graphs is one the workers published (read back
//!   from moto's CloudWatch), and `--metrics-addr` serves the same counters to a scraper.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use dth_tests::cloud::clients;
use dth_tests::fault::{Fault, FaultProxy, Rule};
use dth_tests::terraform::{launched, Terraform};
use dth_tests::*;
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;

const TRANSFER: &str = r#"
resource "dth_s3_transfer" "t" {
  name = "ops"
  source {
    bucket = "ops-src"
  }
  destination {
    bucket = "ops-dst"
  }
  schedule     = "once"
  max_attempts = 2
  fleet {
    min     = 0
    desired = 0
    max     = 2
    image   = "dth:test"
  }
}
"#;

const READER: &str = r#"
data "dth_transfer" "ops" {
  name = "ops"
}

check "ops_in_sync" {
  assert {
    condition     = data.dth_transfer.ops.status == "in_sync"
    error_message = "ops is ${data.dth_transfer.ops.status}: ${data.dth_transfer.ops.pending} pending, ${data.dth_transfer.ops.failed} failed, ${data.dth_transfer.ops.dead_letters} dead letters"
  }
}
"#;

/// `dth ARGS` with the world's endpoint and credentials from the standard AWS configuration (environment).
fn dth(w: &World, args: &[&str]) -> Output {
    dth_via(w, &w.endpoint, args)
}

/// `dth ARGS` with every service at `endpoint`, as the world's user.
fn dth_command(endpoint: &str, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(bin("dth"));
    c.args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", REGION)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CA_BUNDLE");
    c
}

/// [`dth`] with every service at `endpoint`.
fn dth_via(w: &World, endpoint: &str, args: &[&str]) -> Output {
    let out = dth_command(endpoint, args).output().unwrap();
    std::fs::write(
        w.dir.join(format!("dth-{}.log", fastrand::u32(..))),
        [&out.stdout[..], b"\n---\n", &out.stderr[..]].concat(),
    )
    .unwrap();
    out
}

fn dth_ok(w: &World, args: &[&str]) -> String {
    let out = dth(w, args);
    assert!(
        out.status.success(),
        "dth {args:?}: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn status(w: &World) -> Value {
    serde_json::from_str(&dth_ok(w, &["status", "ops", "--json"])).unwrap()
}

/// The plan of the reader configuration, flattened (terraform wraps diagnostics), and whether the check warned.
fn check(reader: &Terraform) -> (bool, String) {
    let (code, out) = reader.plan(&[]);
    assert_eq!(
        code, 0,
        "a failed check warns, it does not fail the plan:\n{out}"
    );
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    (flat.contains("Check block assertion failed"), flat)
}

/// The metrics of namespace `ns` the dashboard's widgets graph: (metric name, transfer name).
fn dashboard_metrics(body: &str, ns: &str) -> BTreeSet<(String, String)> {
    let v: Value = serde_json::from_str(body).unwrap();
    let mut out = BTreeSet::new();
    for widget in v["widgets"].as_array().unwrap() {
        for m in widget["properties"]["metrics"].as_array().unwrap() {
            let m = m.as_array().unwrap();
            if m[0] == ns {
                assert_eq!(m[2], "TransferName", "{m:?}");
                out.insert((
                    m[1].as_str().unwrap().to_owned(),
                    m[3].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

async fn scrape(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(body)
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{transfer=\"ops\"}} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn status_failures_retry_metrics_and_a_check_block() {
    let w = World::start("operators").await;
    w.bucket("ops-src").await;
    w.bucket("ops-dst").await;
    let mut objects: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("good/{i}.txt"), random_bytes(1000 + i)))
        .collect();
    objects.push(("big.bin".into(), random_bytes(12 * MIB)));
    objects.push(("bad/1.txt".into(), b"refused at first".to_vec()));
    objects.push(("bad/2.txt".into(), b"refused too".to_vec()));
    for (k, v) in &objects {
        w.put("ops-src", k, v).await;
    }
    let n = objects.len() as u64;

    let tf = Terraform::new(&w, "owner");
    tf.write(TRANSFER);
    tf.ok(&["init", "-input=false"]);
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    let reader = Terraform::new(&w, "reader");
    reader.write(READER);
    reader.ok(&["init", "-input=false"]);

    // Before any run.
    let s = status(&w);
    assert_eq!(s["status"], "idle", "{s}");
    assert_eq!(s["missing"], json!([]), "{s}");
    assert_eq!(s["workers_desired"], 0, "{s}");
    let all = dth_ok(&w, &["status"]);
    assert!(
        all.lines().next().unwrap().starts_with("TRANSFER  STATUS"),
        "{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.split_whitespace().take(2).eq(["ops", "idle"])),
        "{all}"
    );
    let all: Value = serde_json::from_str(&dth_ok(&w, &["status", "--json"])).unwrap();
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    let nosuch = dth(&w, &["status", "nosuch"]);
    assert_eq!(nosuch.status.code(), Some(1));
    assert!(
        stderr(&nosuch).contains("no transfer named \"nosuch\""),
        "{}",
        stderr(&nosuch)
    );
    let bad_name = dth(&w, &["status", "Not_A_Name"]);
    assert_eq!(bad_name.status.code(), Some(2), "{}", stderr(&bad_name));
    assert!(stderr(&bad_name).contains("NAME"), "{}", stderr(&bad_name));
    let (warned, out) = check(&reader);
    assert!(warned && out.contains("ops is idle"), "{out}");

    // The finder and workers run here, from the job config the provider wrote into the launch templates; the
    // destination's S3 goes through a proxy that refuses the two `bad/` keys until told otherwise.
    let proxy = FaultProxy::start(&w.endpoint).await;
    let refuse = proxy.inject(
        Rule::on(
            "s3",
            "PutObject",
            Fault::error(403, "AccessDenied", "Access Denied"),
        )
        .when(|r| r.bucket() == Some("ops-dst") && r.key().is_some_and(|k| k.starts_with("bad/")))
        .always(),
    );
    let mut config = serde_json::to_value(launched(&w, "dth-ops-worker").await.config).unwrap();
    assert_eq!(config["metrics"], json!({"transfer": "ops"}), "{config}");
    merge(
        &mut config,
        json!({"destination": {"endpoint": proxy.url()}}),
    );
    let cfg = w.dir.join("ops-job.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    // What moving it would cost, as the plan's warning estimates it: a dry run.
    let cost = dth_ok(&w, &["plan-cost", "--config", cfg.to_str().unwrap()]);
    assert!(cost.contains(&format!("would move {n} objects")), "{cost}");
    assert!(
        cost.contains(&format!("cost: moving {n} objects")) && cost.contains("will cost about"),
        "{cost}"
    );
    assert!(w.run("finder", &cfg, &[]).status.success());
    let s = status(&w);
    assert_eq!(s["status"], "syncing", "{s}");
    assert_eq!(s["pending_objects"], n, "{s}");
    assert_eq!(s["progress"]["objects_found"], n, "{s}");
    let detail = dth_ok(&w, &["status", "ops"]);
    assert!(detail.starts_with("ops: syncing\n"), "{detail}");
    assert!(detail.contains(&format!("pending {n} (")), "{detail}");
    let (warned, out) = check(&reader);
    assert!(
        warned && out.contains(&format!("ops is syncing: {n} pending")),
        "{out}"
    );

    // Two attempts each (the second 10 s after the first), then the redrive dead-letters the job.
    let log = w.worker_until_idle(&cfg, 3);
    assert!(proxy.fired(refuse) >= 4, "{}", proxy.journal_text());
    let s = status(&w);
    assert_eq!(s["status"], "failed", "{s}\n{log}");
    assert_eq!(s["progress"]["objects_failed"], 2, "{s}");
    assert_eq!(s["progress"]["objects_done"], n - 2, "{s}");
    let dead = s["progress"]["dead_letters"].as_u64().unwrap();
    assert!(dead >= 1, "{s}\n{log}");
    assert!(s["bytes_per_sec"].as_f64().unwrap() > 0.0, "the rate: {s}");
    let detail = dth_ok(&w, &["status", "ops"]);
    assert!(detail.contains("dth retry ops"), "{detail}");

    let failures = dth_ok(&w, &["failures", "ops"]);
    for key in ["bad/1.txt", "bad/2.txt"] {
        assert!(failures.contains(key), "{failures}");
    }
    assert!(failures.contains("AccessDenied"), "{failures}");
    assert!(!failures.contains("good/"), "{failures}");
    let lines: Vec<Value> = dth_ok(&w, &["failures", "ops", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l["attempt"] == 2), "{lines:?}");
    let limited = dth_ok(&w, &["failures", "ops", "--limit", "1"]);
    assert!(limited.contains("--limit 0"), "{limited}");
    let (warned, out) = check(&reader);
    assert!(
        warned && out.contains("ops is failed: 0 pending, 2 failed"),
        "{out}"
    );

    // Every metric the dashboard graphs was published by the workers, under the transfer's name.
    let c = clients(&w.endpoint).await;
    let listed = c
        .cloudwatch
        .list_metrics()
        .namespace("DataTransferHub")
        .send()
        .await
        .unwrap();
    let published: BTreeSet<(String, String)> = listed
        .metrics()
        .iter()
        .flat_map(|m| {
            m.dimensions()
                .iter()
                .filter(|d| d.name() == Some("TransferName"))
                .map(|d| {
                    (
                        m.metric_name().unwrap_or_default().to_owned(),
                        d.value().unwrap_or_default().to_owned(),
                    )
                })
        })
        .collect();
    let dashboard = c
        .cloudwatch
        .get_dashboard()
        .dashboard_name("dth-ops-dashboard")
        .send()
        .await
        .unwrap();
    let graphed = dashboard_metrics(dashboard.dashboard_body().unwrap(), "DataTransferHub");
    assert_eq!(graphed.len(), 6, "{graphed:?}");
    let unpublished: Vec<_> = graphed.difference(&published).collect();
    assert!(
        unpublished.is_empty(),
        "graphed but never published: {unpublished:?} (published: {published:?})"
    );
    let failed = c
        .cloudwatch
        .get_metric_statistics()
        .namespace("DataTransferHub")
        .metric_name("ObjectsFailed")
        .dimensions(
            aws_sdk_cloudwatch::types::Dimension::builder()
                .name("TransferName")
                .value("ops")
                .build(),
        )
        .start_time(aws_smithy_types::DateTime::from_secs(0))
        .end_time(aws_smithy_types::DateTime::from(
            std::time::SystemTime::now() + Duration::from_secs(60),
        ))
        .period(60)
        .statistics(aws_sdk_cloudwatch::types::Statistic::Sum)
        .send()
        .await
        .unwrap();
    let sum: f64 = failed.datapoints().iter().filter_map(|d| d.sum()).sum();
    assert_eq!(sum, 4.0, "two keys, two attempts each: {failed:?}");

    // Retried once the destination takes them: to completion.
    proxy.remove(refuse);
    let moved: Value = serde_json::from_str(&dth_ok(&w, &["retry", "ops", "--json"])).unwrap();
    assert_eq!(moved["moved"], dead, "{moved}");
    assert_eq!(moved["interrupted"], false, "{moved}");
    let s = status(&w);
    assert_eq!(s["progress"]["dead_letters"], 0, "{s}");
    assert_eq!(s["status"], "syncing", "jobs back on the queue: {s}");
    let again = dth_ok(&w, &["retry", "ops"]);
    assert_eq!(again.trim(), "ops: no dead letters");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (mut worker, log) =
        w.spawn_worker(&cfg, &["--exit-when-idle", "3", "--metrics-addr", &addr]);
    let mut scraped = String::new();
    while worker.0.try_wait().unwrap().is_none() {
        if let Some(text) = scrape(&addr).await {
            scraped = text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(log).unwrap();
    assert!(worker.0.wait().unwrap().success(), "{log}");
    assert!(scraped.starts_with("HTTP/1.1 200 OK"), "{scraped}");
    assert!(
        counter(&scraped, "dth_objects_copied_total") >= 2,
        "{scraped}"
    );
    assert!(
        scraped.contains("# TYPE dth_job_latency_milliseconds summary"),
        "{scraped}"
    );

    let s = status(&w);
    assert_eq!(s["status"], "in_sync", "{s}\n{log}");
    assert_eq!(s["progress"]["objects_done"], n, "{s}");
    assert_eq!(s["progress"]["objects_failed"], 0, "{s}");
    assert_eq!(s["pending_objects"], 0, "{s}");
    let failures = dth_ok(&w, &["failures", "ops"]);
    assert!(failures.contains("nothing failed"), "{failures}");
    // The job config names the transfer and its control plane's endpoints.
    let by_config: Value = serde_json::from_str(&dth_ok(
        &w,
        &["status", "--config", cfg.to_str().unwrap(), "--json"],
    ))
    .unwrap();
    assert_eq!(by_config["name"], "ops", "{by_config}");
    assert_eq!(by_config["status"], "in_sync", "{by_config}");

    // A fixed number of calls, whatever the transfer holds: counted through the proxy.
    let before = proxy.journal().len();
    let out = dth_via(&w, proxy.url(), &["status", "ops", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut calls: Vec<String> = proxy.journal()[before..]
        .iter()
        .map(|c| format!("{} {}", c.service, c.operation))
        .collect();
    calls.sort();
    assert_eq!(
        calls,
        [
            "autoscaling DescribeAutoScalingGroups",
            "dynamodb GetItem",
            "dynamodb GetItem",
            "monitoring GetMetricData",
            "sqs GetQueueAttributes",
            "sqs GetQueueAttributes",
            "sqs GetQueueUrl",
            "sqs GetQueueUrl",
        ],
        "{}",
        proxy.journal_text()
    );
    for (k, v) in &objects {
        assert_eq!(w.get("ops-dst", k).await.as_ref(), Some(v), "{k}");
    }
    let (warned, out) = check(&reader);
    assert!(!warned, "in sync: the check passes\n{out}");
    // Applied, the data source's state holds what it read.
    reader.ok(&["apply", "-auto-approve", "-input=false"]);
    let values = reader.values();
    assert_eq!(values["status"], "in_sync", "{values}");
    assert_eq!(values["done"], n, "{values}");
    assert_eq!(values["missing"], json!([]), "{values}");

    // A data source naming a transfer that does not exist fails the plan, at its name.
    reader.write(&READER.replace("name = \"ops\"", "name = \"nosuch\""));
    let (code, out) = reader.plan(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("No such transfer"), "{out}");
}

/// What the worker publishes reaches CloudWatch as it was counted: counters as sums, latencies as statistic
/// sets, under the transfer's name.
#[tokio::test(flavor = "multi_thread")]
async fn published_metrics_read_back() {
    use dth_core::metrics::{self, Metric};
    let w = World::start("metrics").await;
    let c = clients(&w.endpoint).await;
    metrics::copied(1000);
    metrics::copied(500);
    metrics::record(Metric::PartLatency, 40);
    metrics::record(Metric::PartLatency, 60);
    metrics::publish(&c.cloudwatch, "m1").await.unwrap();
    let listed = c
        .cloudwatch
        .list_metrics()
        .namespace(metrics::NAMESPACE)
        .send()
        .await
        .unwrap();
    let names: BTreeSet<&str> = listed
        .metrics()
        .iter()
        .filter_map(|m| m.metric_name())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["ObjectsCopied", "BytesCopied", "PartLatency"]),
        "{listed:?}"
    );
    let rate = metrics::copy_rate(&c.cloudwatch, "m1", Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(rate, (Some(2.0 / 300.0), Some(1500.0 / 300.0)));
}

/// `dth retry` where SQS will not start a message move task (an SQS without it, a role without
/// `sqs:StartMessageMoveTask`): the jobs go back a batch at a time with their attributes. A batch the job queue
/// refuses is back in the dead-letter queue at once; killed between a batch's send and its delete, nothing is
/// lost (that batch is on both queues) and the next retry moves the rest.
#[tokio::test(flavor = "multi_thread")]
async fn retry_without_a_move_task_loses_nothing() {
    use aws_sdk_sqs::types::MessageAttributeValue;
    use std::collections::BTreeMap;
    let w = World::start("retry").await;
    let names = dth_core::names::Names::new("rt");
    let mut urls = Vec::new();
    for q in [&names.dlq, &names.queue] {
        let out = w.sqs.create_queue().queue_name(q).send().await.unwrap();
        urls.push(out.queue_url().unwrap().to_owned());
    }
    let (dlq, queue) = (&urls[0], &urls[1]);
    let jobs: BTreeMap<String, String> = (0..23)
        .map(|i| (format!(r#"{{"key":"k{i:02}"}}"#), format!("run-{i}")))
        .collect();
    for (body, run) in &jobs {
        let attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(run)
            .build()
            .unwrap();
        w.sqs
            .send_message()
            .queue_url(dlq)
            .message_body(body)
            .message_attributes("run", attr)
            .send()
            .await
            .unwrap();
    }
    let proxy = w.fault_proxy().await;
    let no_task = Fault::error(
        400,
        "AccessDenied",
        "not authorized to StartMessageMoveTask",
    );
    proxy.inject(Rule::on("sqs", "StartMessageMoveTask", no_task).always());

    // The job queue refuses the first batch: dth says so, and the batch is visible in the dead-letter queue
    // again at once (not a visibility timeout later).
    let refuse = proxy.inject(
        Rule::on(
            "sqs",
            "SendMessageBatch",
            Fault::error(400, "AccessDenied", "not authorized to SendMessageBatch"),
        )
        .first(1),
    );
    let out = dth_via(&w, proxy.url(), &["retry", "rt"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("sending to"), "{}", stderr(&out));
    assert_eq!(proxy.fired(refuse), 1);
    assert_eq!(w.depth(dlq).await, (23, 0), "the refused batch is back");
    assert_eq!(w.depth(queue).await, (0, 0));

    // Killed after its first batch reached the job queue, before that batch left the dead-letter queue.
    let pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let kill = proxy
        .inject(Rule::on("sqs", "DeleteMessageBatch", Fault::kill_caller(pid.clone())).first(1));
    let mut killed = dth_command(proxy.url(), &["retry", "rt"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    pid.store(killed.id(), std::sync::atomic::Ordering::SeqCst);
    assert!(!wait(&mut killed, Duration::from_secs(60)).success());
    assert_eq!(proxy.fired(kill), 1);
    assert_eq!(w.depth(queue).await, (10, 0), "the first batch was sent");
    assert_eq!(w.depth(dlq).await, (13, 10), "and is still dead-lettered");

    // The next retry moves the rest; the killed one's batch waits out its visibility timeout in the
    // dead-letter queue, as well as being on the job queue.
    let out = dth_via(&w, proxy.url(), &["retry", "rt", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let moved: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(moved["moved"], 13, "{moved}");
    assert_eq!(moved["method"], "one_by_one", "{moved}");
    assert_eq!(moved["interrupted"], false, "{moved}");
    assert_eq!(w.depth(dlq).await, (0, 10));

    let mut arrived = BTreeMap::new();
    let mut empty = 0;
    while empty < 2 {
        let got = w
            .sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() {
            empty += 1;
        }
        for m in got.messages() {
            let run = m.message_attributes().and_then(|a| a.get("run"));
            let run = run.and_then(|v| v.string_value()).unwrap_or_default();
            let before = arrived.insert(m.body().unwrap().to_owned(), run.to_owned());
            assert!(before.is_none(), "a job arrived twice: {m:?}");
        }
    }
    assert_eq!(
        arrived, jobs,
        "every job, with its attributes, on the job queue"
    );
}
