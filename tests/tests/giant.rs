//! Giant objects split across the fleet, under faults: a part that fails its last attempt fails the object
//! (FAILED, counted, its upload aborted, its message dead-lettered); an upload aborted outside the transfer
//! starts the object over; exactly one worker completes an upload, however often its parts are delivered.
//! The real finder and worker binaries on moto server, the worker's calls through the fault proxy.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue as Av;
use dth_core::ledger::DynamoLedger;
use dth_tests::fault::{Fault, FaultProxy, Rule};
use dth_tests::*;
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;
const KEY: &str = "giant/g.bin";

/// A world with a 21 MiB source object uploaded in 6 MiB parts (a giant of 4 parts at the thresholds of
/// [`config`]), its queues (`max_receive` deliveries before dead-lettering, 3 s visibility) and ledger.
async fn world(name: &str, max_receive: u32) -> (World, Queues, Vec<u8>) {
    let w = World::start(name).await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", max_receive, 3).await;
    w.table("ledger").await;
    let body = random_bytes(21 * MIB + 5);
    w.put_multipart("src-bucket", KEY, &body, 6 * MIB).await;
    (w, q, body)
}

/// The job config: giant from 20 MiB, `patch` over it.
fn config(w: &World, q: &Queues, max_attempts: u32, patch: Value) -> std::path::PathBuf {
    let mut v = json!({
        "max_attempts": max_attempts,
        "multipart": {"threshold": 10 * MIB, "chunk_size": 5 * MIB, "giant_threshold": 20 * MIB},
        "worker": {"heartbeat_secs": 1, "visibility_secs": 3}
    });
    merge(&mut v, patch);
    w.config("src-bucket", "dst-bucket", q, "ledger", v)
}

fn run_id(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    let v: Value = serde_json::from_str(&stdout(out)).unwrap();
    v["run"].as_str().unwrap().to_owned()
}

/// Run workers until the queue has been idle a while, and check they exited cleanly.
fn work(w: &World, cfg: &std::path::Path, n: usize, idle_secs: u32) -> Vec<String> {
    let idle = idle_secs.to_string();
    let mut workers: Vec<_> = (0..n)
        .map(|_| w.spawn_worker(cfg, &["--exit-when-idle", &idle]))
        .collect();
    let mut logs = Vec::new();
    for (child, log) in workers.iter_mut() {
        let status = wait(child, Duration::from_secs(180));
        let text = std::fs::read_to_string(log).unwrap();
        assert!(status.success(), "worker failed: {text}");
        logs.push(text);
    }
    logs
}

/// The key's row in the run: (status, error).
async fn row(w: &World, run: &str, key: &str) -> (String, String) {
    let item = w
        .ddb
        .get_item()
        .table_name("ledger")
        .key("pk", Av::S(format!("run#{run}")))
        .key("sk", Av::S(format!("obj#{key}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let i = item.item().cloned().unwrap_or_default();
    let s = |k: &str| {
        i.get(k)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    (s("status"), s("error"))
}

/// The run summary's (objects_done, objects_failed, bytes_done).
async fn counts(w: &World, run: &str) -> (u64, u64, u64) {
    let s = w.summary("ledger", run).await;
    let n = |k: &str| {
        s.get(k)
            .and_then(|v| v.as_n().ok())
            .map_or(0, |v| v.parse().unwrap())
    };
    (n("objects_done"), n("objects_failed"), n("bytes_done"))
}

/// The worker's calls (S3, SQS, DynamoDB) through `proxy`; the finder's straight to moto.
fn via(proxy: &FaultProxy, patch: Value) -> Value {
    let mut v = proxy.config_patch();
    merge(&mut v, patch);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_failing_its_last_attempt_fails_the_object_and_aborts_its_upload() {
    let (w, q, _) = world("giant-fail", 2).await;
    let proxy = w.fault_proxy().await;
    let run = run_id(&w.run("finder", &config(&w, &q, 2, json!({})), &["--json"]));
    // Part 2 can never be written: S3 answers every UploadPart of it with a 500.
    let broken = proxy.inject(
        Rule::on("s3", "UploadPart", Fault::InternalError)
            .when(|r| r.query("partNumber").as_deref() == Some("2")),
    );
    let cfg = config(&w, &q, 2, via(&proxy, json!({})));
    let logs = work(&w, &cfg, 2, 8);
    assert!(proxy.fired(broken) > 0, "{}", proxy.journal_text());

    let (status, error) = row(&w, &run, KEY).await;
    assert_eq!(status, "FAILED", "{logs:#?}");
    assert!(
        error.contains("500") || error.contains("InternalError"),
        "{error}"
    );
    assert_eq!(counts(&w, &run).await, (0, 1, 0), "counted once, as failed");
    assert_eq!(
        w.incomplete_uploads("dst-bucket").await,
        0,
        "the failed object's upload is aborted"
    );
    assert!(w.get("dst-bucket", KEY).await.is_none());
    assert_eq!(w.depth(&q.url).await, (0, 0));
    assert_eq!(
        w.depth(&q.dlq_url).await.0,
        1,
        "the failed part's message is dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_aborted_outside_the_transfer_starts_the_object_over() {
    let (w, q, body) = world("giant-aborted", 5).await;
    let ledger = DynamoLedger::new(w.ddb.clone(), "ledger");
    let proxy = w.fault_proxy().await;
    // Slow enough (2 MiB/s, one part at a time) that the upload can be aborted between two parts.
    let cfg = config(
        &w,
        &q,
        5,
        via(
            &proxy,
            json!({"worker": {"concurrency": 1, "part_concurrency": 1, "bandwidth_limit": 2 * MIB}}),
        ),
    );
    let run = run_id(&w.run("finder", &cfg, &["--json"]));
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "8"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(u) = ledger.upload(&run, KEY).await.unwrap() {
            if !u.part_etags.is_empty() {
                break u.upload_id;
            }
        }
        assert!(Instant::now() < deadline, "no part recorded in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A lifecycle rule, or another operator, aborts the upload while its parts are being written.
    w.s3.abort_multipart_upload()
        .bucket("dst-bucket")
        .key(KEY)
        .upload_id(&first)
        .send()
        .await
        .unwrap();
    // S3 answers calls on an aborted upload with 404 NoSuchUpload; moto 5 answers UploadPart with a bare 500.
    let gone = first.clone();
    proxy.inject(
        Rule::new(Fault::error(
            404,
            "NoSuchUpload",
            "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
        ))
        .service("s3")
        .when(move |r| r.query("uploadId").as_deref() == Some(gone.as_str())),
    );
    let status = wait(&mut worker, Duration::from_secs(180));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("starting the object over"), "{log}");

    let got = w
        .get("dst-bucket", KEY)
        .await
        .unwrap_or_else(|| panic!("never completed:\n{log}"));
    assert_eq!(md5_hex(&got), md5_hex(&body));
    assert_eq!(row(&w, &run, KEY).await.0, "DONE");
    assert_eq!(counts(&w, &run).await, (1, 0, body.len() as u64));
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
    assert_eq!(w.depth(&q.url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_worker_completes_an_upload_however_often_its_parts_come_back() {
    let (w, q, body) = world("giant-complete", 20).await;
    let proxy = w.fault_proxy().await;
    let run = run_id(&w.run("finder", &config(&w, &q, 20, json!({})), &["--json"]));
    // Finished jobs are not deleted (every DeleteMessage fails) so each comes back 3 s later, a second
    // delivery, while the one completion takes 8 s.
    let no_delete = proxy.inject(Rule::on("sqs", "DeleteMessage", Fault::InternalError));
    proxy.inject(Rule::on(
        "s3",
        "CompleteMultipartUpload",
        Fault::Delay(Duration::from_secs(8)),
    ));
    let cfg = config(
        &w,
        &q,
        20,
        via(&proxy, json!({"worker": {"concurrency": 4}})),
    );
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "8"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while proxy.calls("s3", "CompleteMultipartUpload") == 0 {
        assert!(Instant::now() < deadline, "{}", proxy.journal_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redeliveries of the finished parts (and of the split) arrive while the completion is under way.
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.remove(no_delete);
    let status = wait(&mut worker, Duration::from_secs(180));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{log}");

    assert_eq!(
        proxy.calls("s3", "CompleteMultipartUpload"),
        1,
        "one completer: {}",
        proxy.journal_text()
    );
    assert_eq!(
        md5_hex(&w.get("dst-bucket", KEY).await.unwrap()),
        md5_hex(&body)
    );
    assert_eq!(row(&w, &run, KEY).await.0, "DONE");
    assert_eq!(counts(&w, &run).await, (1, 0, body.len() as u64));
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
    assert_eq!(w.depth(&q.url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completer_that_fails_after_completing_is_finished_by_its_redelivery() {
    let (w, q, body) = world("giant-recomplete", 5).await;
    let proxy = w.fault_proxy().await;
    proxy.answer_s3_as_aws();
    let run = run_id(&w.run("finder", &config(&w, &q, 5, json!({})), &["--json"]));
    // The upload is completed, then recording it fails (every attempt of the SDK): the completer's message
    // comes back, to an upload S3 no longer has.
    let lost = proxy.inject(
        Rule::on("dynamodb", "BatchWriteItem", Fault::ResetBeforeForward)
            .mentioning(KEY)
            .first(3),
    );
    let cfg = config(&w, &q, 5, via(&proxy, json!({})));
    let logs = work(&w, &cfg, 1, 15);
    assert_eq!(proxy.fired(lost), 3, "{}", proxy.journal_text());
    assert_eq!(
        md5_hex(&w.get("dst-bucket", KEY).await.unwrap()),
        md5_hex(&body)
    );
    assert_eq!(row(&w, &run, KEY).await.0, "DONE", "{logs:#?}");
    assert_eq!(counts(&w, &run).await, (1, 0, body.len() as u64));
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
    assert_eq!(w.depth(&q.url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completer_killed_before_forgetting_its_upload_leaves_none_open() {
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    let (w, q, body) = world("giant-killed-completer", 5).await;
    let proxy = w.fault_proxy().await;
    proxy.answer_s3_as_aws();
    let run = run_id(&w.run("finder", &config(&w, &q, 5, json!({})), &["--json"]));
    // The completer dies as it asks the ledger to forget the upload it has just completed.
    let pid = Arc::new(AtomicU32::new(0));
    let forget = proxy.inject(
        Rule::on("dynamodb", "DeleteItem", Fault::kill_caller(pid.clone()))
            .mentioning("uploads")
            .first(1),
    );
    let cfg = config(&w, &q, 5, via(&proxy, json!({})));
    w.worker_killed(&cfg, &pid);
    assert_eq!(proxy.fired(forget), 1, "{}", proxy.journal_text());
    let ledger = DynamoLedger::new(w.ddb.clone(), "ledger");
    assert_eq!(ledger.open_uploads().await.unwrap().len(), 1);
    // The completing part's redelivery finds the upload completed: S3 says so with NoSuchUpload ("the upload
    // ID might be invalid, or the multipart upload might have been aborted or completed"), which moto, keeping
    // completed uploads, does not. The object is DONE, its upload closed.
    let gone = proxy.inject_first(Rule::on(
        "s3",
        "CompleteMultipartUpload",
        Fault::error(404, "NoSuchUpload", "The specified upload does not exist."),
    ));
    let logs = work(&w, &cfg, 1, 5);
    assert!(proxy.fired(gone) >= 1, "{}", proxy.journal_text());
    assert_eq!(
        md5_hex(&w.get("dst-bucket", KEY).await.unwrap()),
        md5_hex(&body)
    );
    assert_eq!(row(&w, &run, KEY).await.0, "DONE", "{logs:#?}");
    assert_eq!(counts(&w, &run).await, (1, 0, body.len() as u64));
    let open = ledger.open_uploads().await.unwrap();
    assert!(open.is_empty(), "{open:?}\n{logs:#?}");
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
    assert_eq!(w.depth(&q.url).await, (0, 0));
}
