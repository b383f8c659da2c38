//! End to end: the real finder and worker binaries copy a mixed bucket on moto server.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use dth_tests::*;
use serde_json::json;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finder_and_workers_copy_a_mixed_bucket() {
    let w = World::start("mixed").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 3, 60).await;
    w.table("ledger").await;

    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let small_keys = [
        "empty-not",
        "a b/c d.txt",
        "ünï/cödé €.bin",
        "plus+sign",
        "pct%41%",
        "eq=ual&x",
        "deep/1/2/3/4/5/6/leaf",
        "top-level",
        "a b/second",
        "x/y/z",
        "x/y-z",
        "x-y",
    ];
    for (i, k) in small_keys.iter().enumerate() {
        let body = random_bytes(1000 + i * 3000);
        w.put("src-bucket", k, &body).await;
        expected.insert(k.to_string(), body);
    }
    w.put("src-bucket", "zero", b"").await;
    expected.insert("zero".into(), vec![]);
    for i in 0..25 {
        let k = format!("many/f{i:03}");
        let body = random_bytes(2048);
        w.put("src-bucket", &k, &body).await;
        expected.insert(k, body);
    }
    // Metadata and tags travel with the object.
    let meta_body = random_bytes(777);
    w.s3.put_object()
        .bucket("src-bucket")
        .key("meta/doc.html")
        .body(ByteStream::from(meta_body.clone()))
        .content_type("text/html; charset=utf-8")
        .cache_control("max-age=60")
        .content_disposition("inline")
        .metadata("owner", "data-team")
        .tagging("team=data%20eng&tier=gold")
        .send()
        .await
        .unwrap();
    expected.insert("meta/doc.html".into(), meta_body);
    // Multipart sizes: one single-PUT object above the threshold, one uploaded in parts (layout kept).
    let big = random_bytes(12 * MIB + 123);
    w.put("src-bucket", "big/single put.bin", &big).await;
    expected.insert("big/single put.bin".into(), big);
    let parts = random_bytes(11 * MIB + 7);
    w.put_multipart("src-bucket", "big/multi+part.bin", &parts, 5 * MIB)
        .await;
    expected.insert("big/multi+part.bin".into(), parts);
    // Above the giant threshold: split into per-part jobs across the fleet.
    let giant = random_bytes(21 * MIB + 5);
    w.put_multipart("src-bucket", "giant/ü g.bin", &giant, 6 * MIB)
        .await;
    expected.insert("giant/ü g.bin".into(), giant);

    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"destination": {"prefix": "copy"}, "finder": {"depth": 2, "parallelism": 3},
               "multipart": {"threshold": 10 * MIB, "chunk_size": 5 * MIB, "giant_threshold": 20 * MIB},
               "batch": {"max_objects": 10}, "worker": {"concurrency": 4, "heartbeat_secs": 5, "visibility_secs": 60}}),
    );

    // Dry run: counts and bytes, nothing enqueued.
    let dry = w.run("finder", &cfg, &["--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let total: usize = expected.values().map(Vec::len).sum();
    assert!(
        stdout(&dry).contains(&format!(
            "would move {} objects ({total} bytes",
            expected.len()
        )),
        "{}",
        stdout(&dry)
    );
    assert_eq!(w.depth(&q.url).await, (0, 0));

    let found = w.run("finder", &cfg, &["--json"]);
    assert!(found.status.success(), "{}", stderr(&found));
    let report: serde_json::Value = serde_json::from_str(&stdout(&found)).unwrap();
    assert_eq!(report["to_move"], expected.len());
    let run = report["run"].as_str().unwrap().to_owned();

    let mut workers: Vec<_> = (0..3)
        .map(|_| w.spawn_worker(&cfg, &["--exit-when-idle", "4"]))
        .collect();
    for (child, log) in workers.iter_mut() {
        let status = wait(child, Duration::from_secs(240));
        assert!(
            status.success(),
            "worker failed: {}",
            std::fs::read_to_string(log).unwrap()
        );
    }

    for (k, body) in &expected {
        let got = w
            .get("dst-bucket", &format!("copy/{k}"))
            .await
            .unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(md5_hex(&got), md5_hex(body), "{k} differs");
    }
    assert_eq!(w.keys("dst-bucket").await.len(), expected.len());
    // Layout kept: the multipart ETag matches the source's.
    for k in ["big/multi+part.bin", "giant/ü g.bin", "a b/c d.txt"] {
        let s =
            w.s3.head_object()
                .bucket("src-bucket")
                .key(k)
                .send()
                .await
                .unwrap();
        let d =
            w.s3.head_object()
                .bucket("dst-bucket")
                .key(format!("copy/{k}"))
                .send()
                .await
                .unwrap();
        assert_eq!(s.e_tag(), d.e_tag(), "{k}");
    }
    let d =
        w.s3.head_object()
            .bucket("dst-bucket")
            .key("copy/meta/doc.html")
            .send()
            .await
            .unwrap();
    assert_eq!(d.content_type(), Some("text/html; charset=utf-8"));
    assert_eq!(d.cache_control(), Some("max-age=60"));
    assert_eq!(d.content_disposition(), Some("inline"));
    assert_eq!(
        d.metadata().unwrap().get("owner").map(String::as_str),
        Some("data-team")
    );
    let tags =
        w.s3.get_object_tagging()
            .bucket("dst-bucket")
            .key("copy/meta/doc.html")
            .send()
            .await
            .unwrap();
    let tags: BTreeMap<_, _> = tags
        .tag_set()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    assert_eq!(
        tags,
        BTreeMap::from([
            ("team".into(), "data eng".into()),
            ("tier".into(), "gold".into())
        ])
    );

    let rows = w.ledger_rows("ledger", &run).await;
    assert_eq!(rows.len(), expected.len());
    assert!(rows.values().all(|s| s == "DONE"), "{rows:?}");
    let summary = w.summary("ledger", &run).await;
    assert_eq!(
        summary["objects_done"].as_n().unwrap(),
        &expected.len().to_string()
    );
    assert_eq!(summary["bytes_done"].as_n().unwrap(), &total.to_string());
    assert_eq!(w.depth(&q.url).await, (0, 0));
    assert_eq!(w.depth(&q.dlq_url).await, (0, 0));
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
    // Every upload the workers recorded as theirs (multipart and the fleet-split giant) is closed.
    assert_eq!(
        dth_core::ledger::DynamoLedger::new(w.ddb.clone(), "ledger")
            .open_uploads()
            .await
            .unwrap(),
        vec![]
    );

    // In sync: a second finder run enqueues nothing.
    let again = w.run("finder", &cfg, &["--json"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let report: serde_json::Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!(report["to_move"], 0, "{report}");
    assert_eq!(report["up_to_date"], expected.len());
    assert_eq!(w.depth(&q.url).await, (0, 0));
}
