//! Faults: a worker killed mid-copy, a source changed mid-copy, S3 events (including a stale one), bad input.

use std::time::{Duration, Instant};

use dth_tests::*;
use serde_json::json;

const MIB: usize = 1024 * 1024;

/// Parts of the one upload in progress, as the ledger of `run` records them for `key`.
async fn parts_uploaded(w: &World, run: &str, key: &str) -> usize {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let item = w
        .ddb
        .get_item()
        .table_name("ledger")
        .key("pk", Av::S(format!("run#{run}")))
        .key("sk", Av::S(format!("obj#{key}")))
        .send()
        .await
        .unwrap();
    item.item()
        .and_then(|i| i.get("part_etags"))
        .and_then(|m| m.as_m().ok())
        .map(|m| m.len())
        .unwrap_or(0)
}

async fn wait_for_parts(w: &World, run: &str, key: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while parts_uploaded(w, run, key).await < n {
        assert!(
            Instant::now() < deadline,
            "the upload of {key} did not reach {n} parts"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn run_id(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    let v: serde_json::Value = serde_json::from_str(&stdout(out)).unwrap();
    v["run"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_resumed_keeping_its_parts() {
    let w = World::start("resume").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 5, 3).await;
    w.table("ledger").await;
    let body = random_bytes(40 * MIB + 11);
    w.put("src-bucket", "large/object.bin", &body).await;
    let slow = w.config("src-bucket", "dst-bucket", &q, "ledger", json!({
        "worker": {"concurrency": 1, "part_concurrency": 1, "bandwidth_limit": 6 * MIB, "heartbeat_secs": 1, "visibility_secs": 3}
    }));
    let run = run_id(&w.run("finder", &slow, &["--json"]));
    let (mut first, _) = w.spawn_worker(&slow, &[]);
    wait_for_parts(&w, &run, "large/object.bin", 3).await;
    first.kill().unwrap(); // SIGKILL: no cleanup at all
    first.wait().unwrap();
    let kept_before = parts_uploaded(&w, &run, "large/object.bin").await;

    let fast = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"worker": {"heartbeat_secs": 1, "visibility_secs": 3}}),
    );
    let (mut second, log) = w.spawn_worker(&fast, &["--exit-when-idle", "15"]);
    assert!(wait(&mut second, Duration::from_secs(120)).success());
    let log = std::fs::read_to_string(log).unwrap();
    let resumed = log
        .lines()
        .find(|l| l.contains("resuming multipart upload"))
        .unwrap_or_else(|| panic!("no resume:\n{log}"));
    let kept: usize = resumed
        .split("kept=")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        kept >= 3 && kept <= kept_before,
        "kept {kept} of {kept_before} parts"
    );
    assert_eq!(
        md5_hex(&w.get("dst-bucket", "large/object.bin").await.unwrap()),
        md5_hex(&body)
    );
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
    assert_eq!(w.depth(&q.url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_overwritten_mid_copy_never_yields_a_mix() {
    let w = World::start("changed").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 5, 30).await;
    w.table("ledger").await;
    let old = random_bytes(30 * MIB);
    w.put("src-bucket", "moving.bin", &old).await;
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({
            "worker": {"concurrency": 1, "part_concurrency": 1, "bandwidth_limit": 8 * MIB}
        }),
    );
    let run = run_id(&w.run("finder", &cfg, &["--json"]));
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "4"]);
    wait_for_parts(&w, &run, "moving.bin", 2).await;
    let new = random_bytes(30 * MIB);
    // The new version goes up in parts. moto computes a single PUT's ETag lazily, on first use, reading the
    // object's buffer without its lock: when the worker's HEAD or GET races with the PUT's own response it
    // caches an ETag that is not the MD5 of the bytes it serves (about 1 in 5 PUTs under two HEAD loops), and
    // a correct copier then refuses the object forever. A completed multipart upload has its ETag fixed at
    // completion, as real S3 does for every write.
    w.put_multipart("src-bucket", "moving.bin", &new, 5 * MIB)
        .await;
    assert!(wait(&mut worker, Duration::from_secs(120)).success());
    let got = w.get("dst-bucket", "moving.bin").await.unwrap();
    assert_eq!(
        md5_hex(&got),
        md5_hex(&new),
        "destination must hold the new version whole"
    );
    assert!(std::fs::read_to_string(log)
        .unwrap()
        .contains("source changed during the copy"));
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
}

fn event(name: &str, key: &str, size: usize, etag: &str, seq: &str) -> String {
    json!({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
        "s3": {"bucket": {"name": "src-bucket"}, "object": {"key": key, "size": size, "eTag": etag, "sequencer": seq}}}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_events_create_delete_and_stale_ones_are_ignored() {
    let w = World::start("events").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 3, 30).await;
    w.table("ledger").await;
    // Notifications from the bucket itself (moto sends a test event first, then one per change).
    w.s3.put_bucket_notification_configuration()
        .bucket("src-bucket")
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .queue_configurations(
                    aws_sdk_s3::types::QueueConfiguration::builder()
                        .queue_arn(&q.arn)
                        .events(aws_sdk_s3::types::Event::from("s3:ObjectCreated:*"))
                        .events(aws_sdk_s3::types::Event::from("s3:ObjectRemoved:*"))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"events": "create_and_delete"}),
    );
    let a = random_bytes(5000);
    w.put("src-bucket", "ev/a b+c.txt", &a).await;
    w.put("src-bucket", "ev/gone soon", b"bye").await;
    w.s3.delete_object()
        .bucket("src-bucket")
        .key("ev/gone soon")
        .send()
        .await
        .unwrap();
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    assert!(
        wait(&mut worker, Duration::from_secs(60)).success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(
        w.get("dst-bucket", "ev/a b+c.txt")
            .await
            .map(|b| md5_hex(&b)),
        Some(md5_hex(&a))
    );
    assert_eq!(w.get("dst-bucket", "ev/gone soon").await, None);

    // Ordered by sequencer: a removal (newer) applies, a creation that is older than it is stale and skipped.
    let s = random_bytes(100);
    w.put("src-bucket", "ev/seq", &s).await;
    let etag = md5_hex(&s);
    let (mut worker, _) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    assert!(wait(&mut worker, Duration::from_secs(60)).success());
    assert!(
        w.get("dst-bucket", "ev/seq").await.is_some(),
        "its own notification copies it"
    );
    w.sqs
        .send_message()
        .queue_url(&q.url)
        .message_body(event(
            "ObjectRemoved:Delete",
            "ev/seq",
            0,
            "",
            "00AB000000000000C0",
        ))
        .send()
        .await
        .unwrap();
    let (mut worker, _) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    assert!(wait(&mut worker, Duration::from_secs(60)).success());
    assert_eq!(
        w.get("dst-bucket", "ev/seq").await,
        None,
        "the removal applies"
    );
    w.sqs
        .send_message()
        .queue_url(&q.url)
        .message_body(event(
            "ObjectCreated:Put",
            "ev/seq",
            100,
            &etag,
            "00AB000000000000B0",
        ))
        .send()
        .await
        .unwrap();
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    assert!(wait(&mut worker, Duration::from_secs(60)).success());
    assert_eq!(
        w.get("dst-bucket", "ev/seq").await,
        None,
        "a stale creation must not undo the newer removal"
    );
    assert!(std::fs::read_to_string(log)
        .unwrap()
        .contains("stale event"));
    assert_eq!(w.depth(&q.url).await, (0, 0));
    assert_eq!(w.depth(&q.dlq_url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let w = World::start("bad").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 2, 30).await;
    w.table("ledger").await;
    w.put("src-bucket", "k", b"hello").await;

    // Invalid values: exit 2, the field named.
    for (patch, field) in [
        (
            json!({"destination": {"storage_class": "COLD"}}),
            "destination.storage_class",
        ),
        (json!({"worker": {"concurrency": 0}}), "worker.concurrency"),
        (json!({"source": {"bucket": ""}}), "source.bucket"),
        (
            json!({"multipart": {"chunk_size": 1}}),
            "multipart.chunk_size",
        ),
        (json!({"source": {"typo": 1}}), "source"),
    ] {
        let cfg = w.config("src-bucket", "dst-bucket", &q, "ledger", patch.clone());
        for bin in ["finder", "worker"] {
            let out = w.run(bin, &cfg, &[]);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{bin} {patch}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(field),
                "{bin} {patch}: {}",
                stderr(&out)
            );
        }
    }
    // A bucket that does not exist.
    let cfg = w.config("no-such-bucket", "dst-bucket", &q, "ledger", json!({}));
    let out = w.run("finder", &cfg, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("NoSuchBucket") && stderr(&out).contains("no-such-bucket"),
        "{}",
        stderr(&out)
    );
    // Credentials: a secret that does not exist, and one that is not the expected JSON (never echoed).
    let cfg = w.config("src-bucket", "dst-bucket", &q, "ledger",
        json!({"source": {"credentials_secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing"}}));
    let out = w.run("finder", &cfg, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("credentials secret") || stderr(&out).contains("ResourceNotFound"),
        "{}",
        stderr(&out)
    );
    let arn = w.secret("bad-keys", "access_key_id=AKIASECRETVALUE").await;
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"source": {"credentials_secret_arn": arn}}),
    );
    let out = w.run("finder", &cfg, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("must be JSON"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("AKIASECRETVALUE"),
        "the secret leaked: {}",
        stderr(&out)
    );
    // A missing ledger table.
    let cfg = w.config("src-bucket", "dst-bucket", &q, "no-table", json!({}));
    let out = w.run("finder", &cfg, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no-table"), "{}", stderr(&out));

    // A malformed message ends in the DLQ; the worker keeps going and does the real job too.
    w.sqs
        .send_message()
        .queue_url(&q.url)
        .message_body("{not json")
        .send()
        .await
        .unwrap();
    w.sqs
        .send_message()
        .queue_url(&q.url)
        .message_body(r#"{"kind":"copy","id":"x","run":"r","objects":[]}"#)
        .send()
        .await
        .unwrap();
    let cfg = w.config("src-bucket", "dst-bucket", &q, "ledger", json!({}));
    assert!(w.run("finder", &cfg, &[]).status.success());
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "4"]);
    assert!(wait(&mut worker, Duration::from_secs(60)).success());
    assert_eq!(
        w.get("dst-bucket", "k").await.as_deref(),
        Some(&b"hello"[..])
    );
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("malformed message"), "{log}");
    assert_eq!(w.depth(&q.url).await, (0, 0));
    assert_eq!(
        w.depth(&q.dlq_url).await.0,
        2,
        "both malformed messages are dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_jobs_in_flight_for_another_worker() {
    let w = World::start("sigterm").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 5, 60).await;
    w.table("ledger").await;
    let body = random_bytes(30 * MIB);
    w.put("src-bucket", "slow.bin", &body).await;
    let slow = w.config("src-bucket", "dst-bucket", &q, "ledger", json!({
        "worker": {"concurrency": 1, "part_concurrency": 1, "bandwidth_limit": 4 * MIB, "shutdown_grace_secs": 1}
    }));
    let run = run_id(&w.run("finder", &slow, &["--json"]));
    let (mut first, log) = w.spawn_worker(&slow, &[]);
    wait_for_parts(&w, &run, "slow.bin", 1).await;
    let pid = first.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        wait(&mut first, Duration::from_secs(30)).success(),
        "a stopped worker exits cleanly"
    );
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("stop requested"), "{log}");
    // Released, not lost: visible again long before the queue's 60 s visibility timeout.
    let deadline = Instant::now() + Duration::from_secs(25);
    while w.depth(&q.url).await.0 != 1 {
        assert!(
            Instant::now() < deadline,
            "the job was not released: {:?}",
            w.depth(&q.url).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fast = w.config("src-bucket", "dst-bucket", &q, "ledger", json!({}));
    let (mut second, _) = w.spawn_worker(&fast, &["--exit-when-idle", "4"]);
    assert!(wait(&mut second, Duration::from_secs(120)).success());
    assert_eq!(
        md5_hex(&w.get("dst-bucket", "slow.bin").await.unwrap()),
        md5_hex(&body)
    );
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_list_selects_what_moves() {
    let w = World::start("prefixes").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 5, 60).await;
    w.table("ledger").await;
    for k in [
        "logs/2024/a",
        "logs/2025/b",
        "logs/2025/c/d",
        "img/x",
        "other/y",
        "top",
    ] {
        w.put("src-bucket", k, k.as_bytes()).await;
    }
    let list = w.dir.join("prefixes.txt");
    std::fs::write(
        &list,
        "# prefixes to move\nlogs/2025/\nimg/\n\nlogs/2025/c/\n",
    )
    .unwrap();
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"source": {"prefix_list": {"key": list.to_str().unwrap()}}, "finder": {"depth": 1}}),
    );
    let out = w.run("finder", &cfg, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (v["to_move"].as_u64(), v["scanned"].as_u64()),
        (Some(3), Some(3)),
        "{v}"
    );
    let (mut worker, _) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    assert!(wait(&mut worker, Duration::from_secs(60)).success());
    let mut keys = w.keys("dst-bucket").await;
    keys.sort();
    assert_eq!(keys, vec!["img/x", "logs/2025/b", "logs/2025/c/d"]);
}
