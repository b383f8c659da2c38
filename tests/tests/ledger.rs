//! The ledger on a real AWS account: the transfer's multipart uploads are its own (other applications'
//! uploads under the destination prefix are never touched), object and job rows expire, and a failed finder run
//! does not hide the last good run's progress. The real finder and worker binaries on moto server.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue as Av;
use aws_sdk_s3::primitives::ByteStream;
use dth_core::ledger::{DynamoLedger, OpenUpload, RunStatus, EXPIRES_AT};
use dth_tests::*;
use serde_json::json;

const MIB: usize = 1024 * 1024;

fn run_id(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    let v: serde_json::Value = serde_json::from_str(&stdout(out)).unwrap();
    v["run"].as_str().unwrap().to_owned()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Start a multipart upload of `key` with one part, as another application would, and leave it open.
async fn foreign_upload(w: &World, bucket: &str, key: &str) -> String {
    let up =
        w.s3.create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
    let id = up.upload_id().unwrap().to_owned();
    w.s3.upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .part_number(1)
        .body(ByteStream::from(random_bytes(5 * MIB)))
        .send()
        .await
        .unwrap();
    id
}

/// Incomplete uploads in `bucket`: (key, upload id).
async fn live_uploads(w: &World, bucket: &str) -> BTreeSet<(String, String)> {
    let out =
        w.s3.list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
    out.uploads()
        .iter()
        .map(|u| {
            (
                u.key().unwrap().to_owned(),
                u.upload_id().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Wait until the transfer's ledger records an open upload of `key` with at least `parts` parts uploaded.
async fn wait_for_own_upload(ledger: &DynamoLedger, run: &str, key: &str, parts: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rec = ledger.upload(run, key).await.unwrap();
        if let Some(r) = rec.filter(|r| r.part_etags.len() >= parts) {
            return r.upload_id;
        }
        assert!(
            Instant::now() < deadline,
            "the upload of {key} did not reach {parts} parts"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_uploads_survive_a_run_and_a_resume_and_destroy_aborts_only_ours() {
    let w = World::start("own-uploads").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 5, 3).await;
    w.table("ledger").await;
    let ledger = DynamoLedger::new(w.ddb.clone(), "ledger");
    let body = random_bytes(40 * MIB + 11);
    w.put("src-bucket", "large/object.bin", &body).await;
    w.put("src-bucket", "small.txt", b"small").await;
    // Another application's uploads under the destination prefix: one of the very key the transfer writes,
    // one of a key of its own.
    let same_key = foreign_upload(&w, "dst-bucket", "copy/large/object.bin").await;
    let other_key = foreign_upload(&w, "dst-bucket", "copy/other-app/upload.bin").await;
    let foreign = BTreeSet::from([
        ("copy/large/object.bin".to_owned(), same_key.clone()),
        ("copy/other-app/upload.bin".to_owned(), other_key.clone()),
    ]);

    let slow = w.config("src-bucket", "dst-bucket", &q, "ledger", json!({
        "destination": {"prefix": "copy"},
        "worker": {"concurrency": 1, "part_concurrency": 1, "bandwidth_limit": 6 * MIB, "heartbeat_secs": 1, "visibility_secs": 3}
    }));
    let run = run_id(&w.run("finder", &slow, &["--json"]));
    let (mut first, first_log) = w.spawn_worker(&slow, &[]);
    let ours = wait_for_own_upload(&ledger, &run, "large/object.bin", 2).await;
    first.kill().unwrap(); // SIGKILL: no cleanup at all
    first.wait().unwrap();
    assert!(!foreign.iter().any(|(_, id)| *id == ours));

    // The interrupted upload is the transfer's one open upload; the foreign ones are not in the ledger.
    let open = ledger.open_uploads().await.unwrap();
    assert_eq!(
        open.iter()
            .map(|u| (
                u.bucket.as_str(),
                u.key.as_str(),
                u.upload_id.as_str(),
                u.run.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![(
            "dst-bucket",
            "copy/large/object.bin",
            ours.as_str(),
            run.as_str()
        )],
        "{open:?}"
    );
    assert!(open[0].created_at.is_some());
    let mut expected = foreign.clone();
    expected.insert(("copy/large/object.bin".to_owned(), ours.clone()));
    assert_eq!(live_uploads(&w, "dst-bucket").await, expected);

    // Resume: the transfer's upload is continued, the foreign one of the same key is left alone.
    let fast = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"destination": {"prefix": "copy"}, "worker": {"heartbeat_secs": 1, "visibility_secs": 3}}),
    );
    let (mut second, log) = w.spawn_worker(&fast, &["--exit-when-idle", "15"]);
    assert!(wait(&mut second, Duration::from_secs(120)).success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains(&format!("upload_id={ours}")) && log.contains("resuming multipart upload"),
        "no resume of {ours}:\n{log}"
    );
    for l in [std::fs::read_to_string(first_log).unwrap(), log] {
        assert!(!l.contains(&same_key) && !l.contains(&other_key), "{l}");
    }
    assert_eq!(
        md5_hex(&w.get("dst-bucket", "copy/large/object.bin").await.unwrap()),
        md5_hex(&body)
    );
    assert_eq!(
        w.get("dst-bucket", "copy/small.txt").await.as_deref(),
        Some(&b"small"[..])
    );
    assert_eq!(live_uploads(&w, "dst-bucket").await, foreign);
    assert_eq!(
        ledger.open_uploads().await.unwrap(),
        vec![],
        "a completed upload is no longer open"
    );

    // Another interrupted upload (the source changed), then destroy: the core helper aborts the transfer's
    // upload and forgets it, counts a recorded one that is gone already, and leaves the foreign ones.
    let body = random_bytes(40 * MIB + 12);
    w.put("src-bucket", "large/object.bin", &body).await;
    let run = run_id(&w.run("finder", &slow, &["--json"]));
    let (mut third, _) = w.spawn_worker(&slow, &[]);
    let ours = wait_for_own_upload(&ledger, &run, "large/object.bin", 1).await;
    third.kill().unwrap();
    third.wait().unwrap();
    ledger
        .record_open_upload(&OpenUpload {
            upload_id: "completed-long-ago".into(),
            bucket: "dst-bucket".into(),
            key: "copy/old.bin".into(),
            run: run.clone(),
            created_at: None,
        })
        .await
        .unwrap();
    let open: BTreeSet<String> = ledger
        .open_uploads()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.upload_id)
        .collect();
    assert_eq!(
        open,
        BTreeSet::from([ours.clone(), "completed-long-ago".to_owned()])
    );
    let done = dth_core::uploads::abort_open_uploads(&ledger, &w.s3)
        .await
        .unwrap();
    assert_eq!(
        (done.aborted, done.gone, done.failed.len()),
        (1, 1, 0),
        "{done:?}"
    );
    assert_eq!(live_uploads(&w, "dst-bucket").await, foreign);
    assert_eq!(ledger.open_uploads().await.unwrap(), vec![]);
    let again = dth_core::uploads::abort_open_uploads(&ledger, &w.s3)
        .await
        .unwrap();
    assert_eq!(again, Default::default());
}

/// Every item of `pk`, by sort key.
async fn items(w: &World, pk: &str) -> HashMap<String, HashMap<String, Av>> {
    let out = w
        .ddb
        .query()
        .table_name("ledger")
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", Av::S(pk.into()))
        .send()
        .await
        .unwrap();
    out.items()
        .iter()
        .map(|i| (i["sk"].as_s().unwrap().clone(), i.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_and_job_rows_expire_run_summaries_stay() {
    let w = World::start("ledger-ttl").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 2, 30).await;
    w.table("ledger").await;
    for i in 0..5 {
        w.put("src-bucket", &format!("small/{i}"), &random_bytes(100))
            .await;
    }
    w.put("src-bucket", "big.bin", &random_bytes(11 * MIB))
        .await;
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"worker": {"ledger_retention_days": 7}}),
    );
    let before = unix_now();
    let run = run_id(&w.run("finder", &cfg, &["--json"]));
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    assert!(
        wait(&mut worker, Duration::from_secs(60)).success(),
        "{}",
        std::fs::read_to_string(log).unwrap()
    );
    let after = unix_now();
    assert_eq!(w.keys("dst-bucket").await.len(), 6);

    let rows = items(&w, &format!("run#{run}")).await;
    let week = 7 * 86_400;
    let (mut objects, mut jobs) = (0, 0);
    for (sk, item) in &rows {
        if sk == "summary" {
            assert!(
                !item.contains_key(EXPIRES_AT),
                "the summary stays: {item:?}"
            );
            continue;
        }
        let at: i64 = item
            .get(EXPIRES_AT)
            .and_then(|v| v.as_n().ok())
            .unwrap_or_else(|| panic!("{sk} has no {EXPIRES_AT}: {item:?}"))
            .parse()
            .unwrap();
        assert!(
            (before + week..=after + week).contains(&at),
            "{sk}: {at} is not 7 days after the run ({before}..{after})"
        );
        if sk.starts_with("obj#") {
            objects += 1;
        } else if sk.starts_with("job#") {
            jobs += 1;
        }
    }
    assert!(
        objects >= 1,
        "the multipart object has its own row: {rows:?}"
    );
    assert!(jobs >= 1, "{rows:?}");
    let pointer = &items(&w, "transfer").await["latest"];
    assert!(!pointer.contains_key(EXPIRES_AT), "{pointer:?}");
    assert!(items(&w, "uploads").await.is_empty(), "no upload left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_finder_run_keeps_the_last_good_run_as_latest() {
    let w = World::start("failed-run").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 2, 30).await;
    w.table("ledger").await;
    let ledger = DynamoLedger::new(w.ddb.clone(), "ledger");
    for i in 0..3 {
        w.put("src-bucket", &format!("k{i}"), b"data").await;
    }
    let good = w.config("src-bucket", "dst-bucket", &q, "ledger", json!({}));
    let out = w.run("finder", &good, &["--run-id", "r1-good"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let latest = ledger.latest_runs().await.unwrap();
    assert_eq!(latest.good.as_deref(), Some("r1-good"));
    assert_eq!(latest.failed, None);

    // Fails after it started (the destination bucket is missing): the good run is the latest again.
    let no_dst = w.config("src-bucket", "no-such-dst", &q, "ledger", json!({}));
    let out = w.run("finder", &no_dst, &["--run-id", "r2-no-dst"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let latest = ledger.latest_runs().await.unwrap();
    assert_eq!(latest.good.as_deref(), Some("r1-good"));
    let failed = latest.failed.expect("the failure is recorded");
    assert_eq!(failed.run, "r2-no-dst");
    assert!(
        failed.error.contains("NoSuchBucket") && failed.error.contains("no-such-dst"),
        "{failed:?}"
    );
    assert!(failed.at.is_some());
    assert_eq!(
        ledger.latest_run().await.unwrap().as_deref(),
        Some("r1-good")
    );
    let s = ledger.summary("r1-good").await.unwrap().unwrap();
    assert_eq!(
        (s.status, s.objects_found, s.error),
        (RunStatus::Done, 3, None)
    );
    let s = ledger.summary("r2-no-dst").await.unwrap().unwrap();
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(s.error.as_deref(), Some(failed.error.as_str()));

    // Fails before it started (an unreadable prefix list): recorded the same way.
    let no_list = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"source": {"prefix_list": {"key": w.dir.join("missing.txt").to_str().unwrap()}}}),
    );
    let out = w.run("finder", &no_list, &["--run-id", "r3-no-list"]);
    // A configuration problem (the list is part of the config): exit 2, recorded all the same.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let latest = ledger.latest_runs().await.unwrap();
    assert_eq!(latest.good.as_deref(), Some("r1-good"));
    assert_eq!(
        latest.failed.as_ref().map(|f| f.run.as_str()),
        Some("r3-no-list")
    );
    let s = ledger.summary("r3-no-list").await.unwrap().unwrap();
    assert_eq!(s.status, RunStatus::Failed);
    assert!(s.error.is_some_and(|e| e.contains("missing.txt")));

    // A later run that succeeds is the latest, and the failure is cleared.
    let out = w.run("finder", &good, &["--run-id", "r4-good"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let latest = ledger.latest_runs().await.unwrap();
    assert_eq!(latest.good.as_deref(), Some("r4-good"));
    assert_eq!(latest.failed, None);
    assert_eq!(
        ledger.summary("r4-good").await.unwrap().unwrap().status,
        RunStatus::Done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_pointer_through_failures_overlaps_and_an_upgrade() {
    let w = World::start("run-pointer").await;
    w.table("ledger").await;
    let ledger = DynamoLedger::new(w.ddb.clone(), "ledger");
    let good = |l: dth_core::ledger::LatestRuns| l.good;
    let failed = |l: dth_core::ledger::LatestRuns| l.failed.map(|f| (f.run, f.error));
    assert_eq!(ledger.latest_runs().await.unwrap(), Default::default());

    // The first run fails: there is no good run to show.
    ledger.start_run("a").await.unwrap();
    assert_eq!(ledger.latest_run().await.unwrap().as_deref(), Some("a"));
    ledger.fail_run("a", "boom").await.unwrap();
    let l = ledger.latest_runs().await.unwrap();
    assert_eq!(good(l.clone()), None);
    assert_eq!(failed(l), Some(("a".into(), "boom".into())));

    // A run in progress is the latest; the failure stays until it finishes.
    ledger.start_run("b").await.unwrap();
    let l = ledger.latest_runs().await.unwrap();
    assert_eq!(good(l.clone()).as_deref(), Some("b"));
    assert_eq!(failed(l), Some(("a".into(), "boom".into())));
    ledger.finish_run("b", 1, 1).await.unwrap();
    assert_eq!(
        ledger.latest_runs().await.unwrap(),
        dth_core::ledger::LatestRuns {
            good: Some("b".into()),
            failed: None
        }
    );

    // Two failures in a row go back to the same good run.
    for r in ["c", "d"] {
        ledger.start_run(r).await.unwrap();
        ledger.fail_run(r, &format!("{r} failed")).await.unwrap();
        let l = ledger.latest_runs().await.unwrap();
        assert_eq!(good(l.clone()).as_deref(), Some("b"));
        assert_eq!(failed(l), Some((r.into(), format!("{r} failed"))));
    }

    // Overlapping runs: an older run failing after a newer one started leaves the newer one the latest (and
    // the newer one finishing clears the failure).
    ledger.start_run("e").await.unwrap();
    ledger.start_run("f").await.unwrap();
    ledger.fail_run("e", "e failed").await.unwrap();
    assert_eq!(ledger.latest_run().await.unwrap().as_deref(), Some("f"));
    ledger.finish_run("f", 0, 0).await.unwrap();
    assert_eq!(ledger.latest_runs().await.unwrap().failed, None);

    // A pointer written by the version that made a failed run the latest one.
    w.ddb
        .put_item()
        .table_name("ledger")
        .item("pk", Av::S("transfer".into()))
        .item("sk", Av::S("latest".into()))
        .item("run", Av::S("old".into()))
        .item("started_at", Av::S("2025-01-01T00:00:00Z".into()))
        .item("failed_at", Av::S("2025-01-01T00:01:00Z".into()))
        .item("error", Av::S("old failure".into()))
        .send()
        .await
        .unwrap();
    let l = ledger.latest_runs().await.unwrap();
    assert_eq!(good(l.clone()), None);
    assert_eq!(failed(l), Some(("old".into(), "old failure".into())));
    ledger.start_run("g").await.unwrap();
    let l = ledger.latest_runs().await.unwrap();
    assert_eq!(good(l.clone()).as_deref(), Some("g"));
    assert_eq!(failed(l), Some(("old".into(), "old failure".into())));
    ledger.fail_run("g", "g failed").await.unwrap();
    let l = ledger.latest_runs().await.unwrap();
    assert_eq!(good(l.clone()), None, "the old failed run is not put back");
    assert_eq!(failed(l), Some(("g".into(), "g failed".into())));
    let pointer = &items(&w, "transfer").await["latest"];
    assert!(
        !pointer.contains_key("error") && !pointer.contains_key("started_at"),
        "{pointer:?}"
    );
}

/// A ledger whose every DynamoDB request goes through `proxy`, one request per call (the SDK's retries off), so
/// that a fault injected is a fault the ledger sees.
async fn ledger_via(proxy: &fault::FaultProxy, table: &str) -> DynamoLedger {
    let c = dth_tests::cloud::clients(proxy.url()).await;
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        c.dynamodb
            .config()
            .to_builder()
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .build(),
    );
    DynamoLedger::new(ddb, table)
}

fn totals(done: u64, bytes: u64) -> dth_core::ledger::JobTotals {
    dth_core::ledger::JobTotals {
        done,
        bytes,
        failed: 0,
        gone: 0,
    }
}

/// The run summary's (objects_done, bytes_done).
async fn counted(w: &World, run: &str) -> (u64, u64) {
    let s = w.summary("ledger", run).await;
    let n = |k: &str| {
        s.get(k)
            .and_then(|v| v.as_n().ok())
            .map_or(0, |v| v.parse().unwrap())
    };
    (n("objects_done"), n("bytes_done"))
}

/// A job is counted exactly once or not at all, whatever fails around its count: a request lost before
/// DynamoDB saw it, an answer lost after the count took effect, a transaction cancelled by a concurrent one,
/// a redelivered message, and many jobs counted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_counted_exactly_once_whatever_fails() {
    use dth_tests::fault::{Fault, Rule};
    let w = World::start("count-once").await;
    w.table("ledger").await;
    let proxy = w.fault_proxy().await;
    let ledger = ledger_via(&proxy, "ledger").await;
    let the_count = |r: &fault::Request| r.mentions("objects_done");

    // Lost before it reached DynamoDB (every request of the count, for a while), then an answer lost after
    // the count took effect: the job is counted once, by the delivery that saw its count go through or by a
    // redelivery (a delivery whose count failed leaves the message for one).
    for (fault, job, t, expected) in [
        (Fault::ResetBeforeForward, "a", totals(3, 300), (3, 300)),
        (Fault::ResetAfterForward, "b", totals(2, 20), (5, 320)),
    ] {
        let rule = proxy.inject(
            Rule::new(fault)
                .service("dynamodb")
                .when(the_count)
                .first(2),
        );
        let mut deliveries = 0;
        loop {
            deliveries += 1;
            match ledger.count_job("r", job, t).await {
                Ok(_) => break,
                Err(e) => assert!(deliveries < 3, "job {job}: {e}"),
            }
        }
        assert_eq!(
            counted(&w, "r").await,
            expected,
            "job {job} counted exactly once after {deliveries} deliveries: {}",
            proxy.journal_text()
        );
        assert_eq!(proxy.fired(rule), 2, "{}", proxy.journal_text());
    }

    // Cancelled because another job's transaction held the summary: retried until it goes through.
    let conflict = proxy.inject(
        Rule::on(
            "dynamodb",
            "TransactWriteItems",
            Fault::respond(
                400,
                &[("Content-Type", "application/x-amz-json-1.0")],
                serde_json::to_vec(&json!({
                    "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                    "message": "Transaction cancelled, please refer cancellation reasons for specific reasons [None, TransactionConflict]",
                    "CancellationReasons": [
                        {"Code": "None"},
                        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
                    ]
                }))
                .unwrap(),
            ),
        )
        .first(3),
    );
    assert!(ledger.count_job("r", "c", totals(1, 1)).await.unwrap());
    assert_eq!(proxy.fired(conflict), 3, "{}", proxy.journal_text());
    assert_eq!(counted(&w, "r").await, (6, 321));

    // A redelivered message, and 40 jobs counted at once.
    assert!(!ledger.count_job("r", "a", totals(3, 300)).await.unwrap());
    let mut all = tokio::task::JoinSet::new();
    for i in 0..40u64 {
        let ledger = ledger.clone();
        all.spawn(async move {
            ledger
                .count_job("r", &format!("many-{i}"), totals(1, i))
                .await
        });
    }
    while let Some(r) = all.join_next().await {
        assert!(r.unwrap().unwrap());
    }
    assert_eq!(counted(&w, "r").await, (46, 321 + (0..40).sum::<u64>()));
}

/// Run `r`'s (objects_done, objects_failed, bytes_done).
async fn summary_of(w: &World) -> (u64, u64, u64) {
    let s = w.summary("ledger", "r").await;
    let n = |k: &str| {
        s.get(k)
            .and_then(|v| v.as_n().ok())
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    (n("objects_done"), n("objects_failed"), n("bytes_done"))
}

/// A job counted with failures (its last attempt failed; the redrive dead-letters it) that goes through when it
/// is retried is counted again: the summary moves by the difference, its objects' rows say DONE, and a
/// redelivery of either outcome changes nothing. Two workers recounting at once move the summary once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_retried_after_it_failed_is_counted_again_by_the_difference() {
    use dth_core::ledger::{ObjectRecord, Status};
    let w = World::start("recount").await;
    w.table("ledger").await;
    let ledger = DynamoLedger::new(w.ddb.clone(), "ledger");
    let failed_row = |key: &str| ObjectRecord {
        error: Some("AccessDenied".into()),
        ..ObjectRecord::new(key, Status::Failed, 10, 2)
    };
    let done_row = |key: &str| ObjectRecord::new(key, Status::Done, 10, 1);
    let first = [done_row("a"), failed_row("b"), failed_row("c")];
    assert!(ledger
        .finish_job("r", "j", &first, |_| false)
        .await
        .unwrap());
    assert_eq!(summary_of(&w).await, (1, 2, 10));
    // Redelivered with the same outcome: nothing changes.
    assert!(!ledger
        .finish_job("r", "j", &first, |_| false)
        .await
        .unwrap());
    assert_eq!(summary_of(&w).await, (1, 2, 10));
    let (failures, _) = ledger.failures_page("r", None).await.unwrap();
    assert_eq!(failures.len(), 2, "{failures:?}");

    // Retried from the dead-letter queue (a first delivery again), and through: twice at once.
    let second = [done_row("a"), done_row("b"), done_row("c")];
    let (x, y) = tokio::join!(
        ledger.finish_job("r", "j", &second, |_| false),
        ledger.finish_job("r", "j", &second, |_| false)
    );
    assert_eq!(
        [x.unwrap(), y.unwrap()].iter().filter(|c| **c).count(),
        1,
        "one of the two recounts moves the summary"
    );
    assert_eq!(summary_of(&w).await, (3, 0, 30));
    let (failures, _) = ledger.failures_page("r", None).await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    let rows = ledger.objects("r").await.unwrap();
    assert!(rows.iter().all(|r| r.status == Status::Done), "{rows:?}");
    assert!(!ledger
        .finish_job("r", "j", &second, |_| false)
        .await
        .unwrap());
    assert_eq!(summary_of(&w).await, (3, 0, 30));

    // A marker written before markers kept their totals: counted once, never recounted.
    w.ddb
        .put_item()
        .table_name("ledger")
        .item("pk", Av::S("run#r".into()))
        .item("sk", Av::S("job#old".into()))
        .send()
        .await
        .unwrap();
    assert!(!ledger.count_job("r", "old", totals(5, 50)).await.unwrap());
    assert_eq!(summary_of(&w).await, (3, 0, 30));
}

/// An object below the multipart threshold whose source was written in parts is copied in parts too (to keep
/// its ETag), so its upload has a row of its own: that row must end up DONE, not STARTED behind the job's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_object_copied_in_parts_ends_up_done_in_the_ledger() {
    let w = World::start("small-parts").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 3, 30).await;
    w.table("ledger").await;
    let parts = random_bytes(6 * MIB + 3);
    w.put_multipart("src-bucket", "parts.bin", &parts, 5 * MIB)
        .await;
    w.put("src-bucket", "plain.bin", &random_bytes(1000)).await;
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"multipart": {"threshold": 64 * MIB, "chunk_size": 5 * MIB}}),
    );
    let run = run_id(&w.run("finder", &cfg, &["--json"]));
    let out = w.run("worker", &cfg, &["--exit-when-idle", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        md5_hex(&w.get("dst-bucket", "parts.bin").await.unwrap()),
        md5_hex(&parts)
    );
    let ledger = DynamoLedger::new(w.ddb.clone(), "ledger");
    let rows: Vec<(String, String)> = ledger
        .objects(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key, r.status.as_str().to_owned()))
        .collect();
    assert_eq!(
        rows,
        [
            ("parts.bin".to_owned(), "DONE".to_owned()),
            ("plain.bin".to_owned(), "DONE".to_owned())
        ]
    );
}

/// The stand-in itself: moto as the harness starts it keeps DynamoDB's isolation. Stock moto, when a
/// transaction's condition fails, puts back the copy of the table it took before applying it, undoing every
/// write that landed meanwhile (see tests/moto/moto_server.py): a redelivered job's marker then wiped out other
/// jobs' markers and part records. DynamoDB: writes are atomic, transactions serializable with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_next_to_failing_transactions_are_kept() {
    use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
    use futures::{FutureExt, StreamExt};
    let w = World::start("ddb-isolation").await;
    w.table("ledger").await;
    let key = |sk: &str| {
        HashMap::from([
            ("pk".to_owned(), Av::S("p".into())),
            ("sk".to_owned(), Av::S(sk.into())),
        ])
    };
    // A table of some size (the copy takes a while), and a marker every transaction below tries again.
    for chunk in 0..80 {
        let writes = (0..25)
            .map(|i| {
                let mut item = key(&format!("filler-{chunk}-{i}"));
                item.insert("blob".into(), Av::S("x".repeat(2000)));
                aws_sdk_dynamodb::types::WriteRequest::builder()
                    .put_request(
                        aws_sdk_dynamodb::types::PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect();
        w.ddb
            .batch_write_item()
            .request_items("ledger", writes)
            .send()
            .await
            .unwrap();
    }
    w.ddb
        .put_item()
        .table_name("ledger")
        .set_item(Some(key("marker")))
        .send()
        .await
        .unwrap();
    let failing = (0..200).map(|_| {
        let ddb = w.ddb.clone();
        let (marker, counter) = (key("marker"), key("counter"));
        async move {
            let put = Put::builder()
                .table_name("ledger")
                .set_item(Some(marker))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .unwrap();
            let add = Update::builder()
                .table_name("ledger")
                .set_key(Some(counter))
                .update_expression("ADD n :one")
                .expression_attribute_values(":one", Av::N("1".into()))
                .build()
                .unwrap();
            let res = ddb
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put).build())
                .transact_items(TransactWriteItem::builder().update(add).build())
                .send()
                .await;
            assert!(res.is_err(), "the marker exists: the transaction must fail");
        }
        .boxed()
    });
    let writes = (0..400).map(|i| {
        let ddb = w.ddb.clone();
        let item = key(&format!("written-{i}"));
        async move {
            ddb.put_item()
                .table_name("ledger")
                .set_item(Some(item))
                .send()
                .await
                .unwrap();
        }
        .boxed()
    });
    // Interleaved, 16 at a time.
    let mut all: Vec<_> = failing.chain(writes).collect();
    fastrand::shuffle(&mut all);
    futures::stream::iter(all)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let mut kept = 0;
    let mut start = None;
    loop {
        let out = w
            .ddb
            .query()
            .table_name("ledger")
            .key_condition_expression("pk = :p AND begins_with(sk, :w)")
            .expression_attribute_values(":p", Av::S("p".into()))
            .expression_attribute_values(":w", Av::S("written-".into()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        kept += out.items().len();
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    assert_eq!(kept, 400, "writes lost next to failing transactions");
}
