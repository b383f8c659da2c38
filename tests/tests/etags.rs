//! Every store's ETags, and what "already at the destination" means with them: a source changed in place
//! keeping its size is copied again whatever the shapes of the ETags; a delayed job never overwrites a newer
//! copy; a destination that KMS-encrypts by default (no MD5 ETags) verifies by checksum; sources whose ETags
//! are no MD5 (Aliyun OSS, Qiniu Kodo) copy, verify and stay in sync. The real finder and worker on moto; the
//! stores' dialects spoken by the fault proxy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use dth_tests::fault::{Fault, FaultProxy, Request, Response, Rule};
use dth_tests::*;
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;

fn report(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_str(&stdout(out)).unwrap()
}

/// A finder run (its JSON report), then workers until the queue is idle.
fn sync(w: &World, cfg: &Path) -> Value {
    let r = report(&w.run("finder", cfg, &["--json"]));
    let (mut worker, log) = w.spawn_worker(cfg, &["--exit-when-idle", "4"]);
    let status = wait(&mut worker, Duration::from_secs(120));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{log}");
    assert!(!log.contains("copy failed"), "{log}");
    r
}

async fn world(name: &str) -> (World, Queues) {
    world_receiving(name, 3).await
}

/// A world whose jobs are dead-lettered after `max_receive` deliveries (the provider makes it the transfer's
/// `max_attempts`).
async fn world_receiving(name: &str, max_receive: u32) -> (World, Queues) {
    let w = World::start(name).await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", max_receive, 30).await;
    w.table("ledger").await;
    (w, q)
}

async fn assert_copied(w: &World, expected: &HashMap<&str, Vec<u8>>) {
    for (k, body) in expected {
        let got = w
            .get("dst-bucket", k)
            .await
            .unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(md5_hex(&got), md5_hex(body), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_changed_in_place_keeping_its_size_is_copied_again() {
    let (w, q) = world("stale").await;
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"multipart": {"threshold": 10 * MIB, "chunk_size": 5 * MIB}}),
    );
    let mut expected = HashMap::new();
    // One PUT of 12 MiB, copied in parts (its copy's ETag has another shape); one uploaded in parts, to be
    // replaced by a single PUT; one small.
    expected.insert("single.bin", random_bytes(12 * MIB + 1));
    expected.insert("parts.bin", random_bytes(11 * MIB + 3));
    expected.insert("small.txt", random_bytes(1000));
    w.put("src-bucket", "single.bin", &expected["single.bin"])
        .await;
    w.put_multipart("src-bucket", "parts.bin", &expected["parts.bin"], 5 * MIB)
        .await;
    w.put("src-bucket", "small.txt", &expected["small.txt"])
        .await;
    assert_eq!(sync(&w, &cfg)["to_move"], 3);
    assert_copied(&w, &expected).await;

    // Changed in place a second later (S3 keeps whole seconds), each keeping its size.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expected.insert("single.bin", random_bytes(12 * MIB + 1));
    expected.insert("parts.bin", random_bytes(11 * MIB + 3));
    w.put("src-bucket", "single.bin", &expected["single.bin"])
        .await;
    w.put("src-bucket", "parts.bin", &expected["parts.bin"])
        .await;
    let r = sync(&w, &cfg);
    assert_eq!(
        r["to_move"], 2,
        "both changed objects, not the small one: {r}"
    );
    assert_copied(&w, &expected).await;
    // And then in sync: nothing moves again.
    let r = report(&w.run("finder", &cfg, &["--json"]));
    assert_eq!(r["to_move"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_never_overwrites_a_newer_copy() {
    let (w, q) = world("delayed").await;
    w.s3.put_bucket_versioning()
        .bucket("src-bucket")
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let old = random_bytes(3000);
    let new = random_bytes(3000);
    let v1 =
        w.s3.put_object()
            .bucket("src-bucket")
            .key("doc.txt")
            .body(ByteStream::from(old.clone()))
            .send()
            .await
            .unwrap();
    w.put("src-bucket", "doc.txt", &new).await;
    // A newer job already copied the newer version.
    w.put("dst-bucket", "doc.txt", &new).await;
    let cfg = w.config("src-bucket", "dst-bucket", &q, "ledger", json!({}));

    // The finder writes what it saw at the destination into each job.
    let r = report(&w.run("finder", &cfg, &["--json"]));
    assert_eq!(r["to_move"], 0);
    w.s3.delete_object()
        .bucket("dst-bucket")
        .key("doc.txt")
        .send()
        .await
        .unwrap();
    let r = report(&w.run("finder", &cfg, &["--json"]));
    assert_eq!(r["to_move"], 1);
    let m = w
        .sqs
        .receive_message()
        .queue_url(&q.url)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    let body = m.messages()[0].body().unwrap().to_owned();
    assert!(body.contains(r#""dest_etag":"""#), "{body}");
    w.s3.delete_object()
        .bucket("src-bucket")
        .key("doc.txt")
        .send()
        .await
        .unwrap(); // (a delete marker: the old versions stay readable)
    w.sqs.purge_queue().queue_url(&q.url).send().await.unwrap();

    // The delayed job: pinned to the old version, written when the destination had nothing; since then the
    // newer copy arrived.
    w.put("dst-bucket", "doc.txt", &new).await;
    let job = json!({
        "kind": "copy", "id": "delayed-1", "run": "r-old",
        "objects": [{"key": "doc.txt", "size": 3000, "etag": v1.e_tag().unwrap().trim_matches('"'),
                     "version_id": v1.version_id().unwrap(), "dest_etag": ""}]
    });
    w.sqs
        .send_message()
        .queue_url(&q.url)
        .message_body(job.to_string())
        .send()
        .await
        .unwrap();
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "4"]);
    assert!(wait(&mut worker, Duration::from_secs(60)).success());
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        md5_hex(&w.get("dst-bucket", "doc.txt").await.unwrap()),
        md5_hex(&new),
        "the newer copy stays: {log}"
    );
    assert!(log.contains("a newer copy is there"), "{log}");
    assert_eq!(w.depth(&q.url).await, (0, 0), "{log}");
    assert_eq!(w.depth(&q.dlq_url).await, (0, 0), "{log}");
    let s = w.summary("ledger", "r-old").await;
    assert_eq!(s["objects_done"].as_n().unwrap(), "1", "{s:?}");
}

/// A consistent stand-in for another store's ETag of `real`: what a rewriter writes and a translator reads
/// back. `seen` remembers each one given out.
type Dialect = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Rewrite every ETag of an S3 answer (headers and XML) into `dialect`'s, remembering the real ones; add
/// `headers` to every answer that lacks them.
fn speak(
    dialect: Dialect,
    seen: Arc<Mutex<HashMap<String, String>>>,
    headers: &'static [(&'static str, &'static str)],
) -> Fault {
    let seen_q = seen.clone();
    Fault::translate(
        move |req: &mut Request| {
            // The store accepts its own ETags in If-Match (pinned reads, conditional writes).
            for (k, v) in req.headers.iter_mut() {
                if k.eq_ignore_ascii_case("if-match") {
                    let bare = v.trim_matches('"').to_owned();
                    if let Some(real) = seen_q.lock().unwrap().get(&bare) {
                        *v = format!("\"{real}\"");
                    }
                }
            }
            // A completion names each part by the ETag the store gave it: its own are read back; any other
            // (an MD5 the caller computed itself, say) names no part the store has: InvalidPart.
            if req.operation == "CompleteMultipartUpload" {
                let text = String::from_utf8_lossy(&req.body).into_owned();
                let seen = seen_q.lock().unwrap();
                let mut out = String::new();
                let mut rest = text.as_str();
                while let Some(i) = rest.find("<ETag>") {
                    let j = rest[i..].find("</ETag>").unwrap() + i;
                    out.push_str(&rest[..i + 6]);
                    let given = rest[i + 6..j]
                        .trim_matches('"')
                        .trim_start_matches("&quot;")
                        .trim_end_matches("&quot;");
                    out.push_str(seen.get(given).map_or("not-a-part", String::as_str));
                    rest = &rest[j..];
                }
                out.push_str(rest);
                req.body = out.into_bytes();
            }
        },
        move |_req: &Request, res: &mut Response| {
            for (k, v) in headers {
                if !res.headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(k)) {
                    res.headers.push((k.to_string(), v.to_string()));
                }
            }
            let map = |real: &str| {
                let d = dialect(real);
                seen.lock().unwrap().insert(d.clone(), real.to_owned());
                d
            };
            for (k, v) in res.headers.iter_mut() {
                if k.eq_ignore_ascii_case("etag") {
                    *v = format!("\"{}\"", map(v.trim_matches('"')));
                }
            }
            let text = String::from_utf8_lossy(&res.body).into_owned();
            if !text.contains("<ETag>") {
                return;
            }
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(i) = rest.find("<ETag>") {
                let j = rest[i..].find("</ETag>").unwrap() + i;
                out.push_str(&rest[..i + 6]);
                let inner = &rest[i + 6..j];
                let real = inner
                    .trim_matches('"')
                    .trim_start_matches("&quot;")
                    .trim_end_matches("&quot;")
                    .trim_start_matches("&#34;")
                    .trim_end_matches("&#34;");
                out.push_str(&format!("&quot;{}&quot;", map(real)));
                rest = &rest[j..];
            }
            out.push_str(rest);
            res.body = out.into_bytes();
        },
    )
}

/// Aliyun OSS: upper case; and for about half the objects (as for appendable ones, or any written otherwise
/// than by PutObject), a hex value that is no MD5 of the bytes.
fn oss(real: &str) -> String {
    let md5_like = real.len() == 32 && real.chars().all(|c| c.is_ascii_hexdigit());
    if md5_like && real.starts_with(['0', '1', '2', '3', '4', '5', '6', '7']) {
        real.to_uppercase()
    } else {
        md5_hex(real.as_bytes()).to_uppercase()
    }
}

/// Qiniu Kodo's qetag: URL-safe base64 of a one-byte tag and a SHA-1, 28 characters.
fn kodo(real: &str) -> String {
    use base64::Engine;
    let h = md5_hex(real.as_bytes());
    let mut bytes = vec![0x16u8];
    bytes.extend_from_slice(&h.as_bytes()[..20]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes)
}

async fn another_store(name: &str, kind: &str, dialect: Dialect) {
    let (w, q) = world(name).await;
    let proxy = FaultProxy::start(&w.endpoint).await;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let dialect_rule = proxy.inject(
        Rule::new(speak(dialect, seen, &[]))
            .service("s3")
            .when(|r| r.bucket() == Some("src-bucket")),
    );
    let mut expected = HashMap::new();
    for i in 0..12 {
        expected.insert(format!("small/{i}"), random_bytes(500 + i * 997));
    }
    expected.insert("large/one-put.bin".into(), random_bytes(11 * MIB + 5));
    expected.insert("large/in-parts.bin".into(), random_bytes(12 * MIB + 7));
    for (k, b) in &expected {
        if k == "large/in-parts.bin" {
            w.put_multipart("src-bucket", k, b, 5 * MIB).await;
        } else {
            w.put("src-bucket", k, b).await;
        }
    }
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"source": {"type": kind, "endpoint": proxy.url()},
               "multipart": {"threshold": 10 * MIB, "chunk_size": 5 * MIB}}),
    );
    let r = sync(&w, &cfg);
    assert_eq!(r["to_move"], expected.len());
    let expected_ref: HashMap<&str, Vec<u8>> = expected
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    assert_copied(&w, &expected_ref).await;
    let s = w.summary("ledger", r["run"].as_str().unwrap()).await;
    assert_eq!(
        s["objects_done"].as_n().unwrap(),
        &expected.len().to_string(),
        "{s:?}"
    );
    assert!(
        s.get("objects_failed")
            .is_none_or(|v| v.as_n().unwrap() == "0"),
        "{s:?}"
    );
    // An unchanged second run moves nothing.
    let again = report(&w.run("finder", &cfg, &["--json"]));
    assert_eq!(again["to_move"], 0, "{again}");
    assert!(proxy.fired(dialect_rule) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aliyun_oss_source_copies_verifies_and_stays_in_sync() {
    another_store("oss", "Aliyun_OSS", Arc::new(oss)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qiniu_kodo_source_copies_verifies_and_stays_in_sync() {
    another_store("kodo", "Qiniu_Kodo", Arc::new(kodo)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_kms_encrypts_by_default_and_copies_verify_by_checksum() {
    let (w, q) = world("kms-default").await;
    w.s3.put_bucket_encryption()
        .bucket("dst-bucket")
        .server_side_encryption_configuration(
            aws_sdk_s3::types::ServerSideEncryptionConfiguration::builder()
                .rules(
                    aws_sdk_s3::types::ServerSideEncryptionRule::builder()
                        .apply_server_side_encryption_by_default(
                            aws_sdk_s3::types::ServerSideEncryptionByDefault::builder()
                                .sse_algorithm(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                                .build()
                                .unwrap(),
                        )
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // S3 gives KMS-encrypted objects (and parts) ETags that are no MD5, and says so in its answers; moto keeps
    // MD5s. The proxy answers as S3 does.
    let proxy = FaultProxy::start(&w.endpoint).await;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let kms: Dialect = Arc::new(|real: &str| {
        let (h, n) = real
            .split_once('-')
            .map_or((real, None), |(h, n)| (h, Some(n)));
        let other = md5_hex(format!("kms:{h}").as_bytes());
        n.map_or(other.clone(), |n| format!("{other}-{n}"))
    });
    proxy.inject(
        Rule::new(speak(
            kms,
            seen,
            &[("x-amz-server-side-encryption", "aws:kms")],
        ))
        .service("s3")
        .when(|r| r.bucket() == Some("dst-bucket") && r.operation != "GetBucketEncryption"),
    );
    let mut expected = HashMap::new();
    expected.insert("a.txt", random_bytes(4000));
    expected.insert("b/large.bin", random_bytes(11 * MIB + 1));
    for (k, b) in &expected {
        w.put("src-bucket", k, b).await;
    }
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"destination": {"endpoint": proxy.url()},
               "multipart": {"threshold": 10 * MIB, "chunk_size": 5 * MIB}}),
    );
    let r = sync(&w, &cfg);
    assert_eq!(r["to_move"], 2);
    assert_copied(&w, &expected).await;
    // Each copy carries the CRC64NVME S3 checked; an unchanged second run moves nothing.
    let h =
        w.s3.head_object()
            .bucket("dst-bucket")
            .key("b/large.bin")
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
    assert!(h.checksum_crc64_nvme().is_some(), "{h:?}");
    let again = report(&w.run("finder", &cfg, &["--json"]));
    assert_eq!(again["to_move"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_copy_whose_stored_checksum_is_not_its_own_fails_verification() {
    // One delivery, as the provider couples the queue to max_attempts = 1: a second one would find the
    // object the first completed, take it (with the destination's lie) for another writer's newer copy, and
    // count the job done in place of failed.
    let (w, q) = world_receiving("crc-check", 1).await;
    w.put("src-bucket", "big.bin", &random_bytes(11 * MIB + 9))
        .await;
    w.put("src-bucket", "small.txt", b"fine").await;
    // The destination says it keeps another CRC64NVME than the parts sent make up (S3 itself refuses such a
    // completion; moto completes whatever it is sent): the copy must not count as verified.
    let proxy = FaultProxy::start(&w.endpoint).await;
    let lie = proxy.inject(
        Rule::on(
            "s3",
            "HeadObject",
            Fault::rewrite(|_, res| {
                for (k, v) in res.headers.iter_mut() {
                    if k.eq_ignore_ascii_case("x-amz-checksum-crc64nvme") {
                        *v = "AAAAAAAAAAA=".into();
                    }
                }
            }),
        )
        .when(|r| r.bucket() == Some("dst-bucket")),
    );
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"destination": {"endpoint": proxy.url()}, "max_attempts": 1,
               "multipart": {"threshold": 10 * MIB, "chunk_size": 5 * MIB}}),
    );
    let r = report(&w.run("finder", &cfg, &["--json"]));
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    assert!(wait(&mut worker, Duration::from_secs(120)).success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(proxy.fired(lie) > 0, "{}", proxy.journal_text());
    assert!(
        log.contains("the destination keeps CRC64NVME"),
        "{log}\n{}",
        proxy.journal_text()
    );
    let s = w.summary("ledger", r["run"].as_str().unwrap()).await;
    assert_eq!(s["objects_failed"].as_n().unwrap(), "1", "{s:?}");
    assert_eq!(s["objects_done"].as_n().unwrap(), "1", "{s:?}");
}

/// Parts go without an MD5 of ours once the destination has shown that it checks CRC64NVME and names parts by
/// the MD5 of what it received: then a part read wrong from the source (same length, other bytes: what no
/// checksum of ours can see) is caught by the parts' ETags, which no longer make the source's, before the
/// completion, so nothing reaches the destination and the upload is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_read_wrong_from_the_source_is_caught_before_the_upload_completes() {
    let (w, q) = world("part-read-wrong").await;
    w.put_multipart("src-bucket", "big.bin", &random_bytes(16 * MIB), 5 * MIB)
        .await;
    w.put("src-bucket", "small.txt", b"fine").await;
    let proxy = FaultProxy::start(&w.endpoint).await;
    // The parts sent without an MD5 of ours (moto, like S3, answers a part with the CRC64NVME it checked).
    let without_md5 = proxy.inject(
        Rule::on("s3", "UploadPart", Fault::rewrite(|_, _| {}))
            .when(|r| r.bucket() == Some("dst-bucket") && r.header("content-md5").is_none()),
    );
    // The third part as the source sends it: one byte flipped.
    let third = format!("bytes={}-", 10 * MIB);
    let flip = proxy.inject(
        Rule::on(
            "s3",
            "GetObject",
            Fault::rewrite(|_, res| {
                if let Some(b) = res.body.get_mut(100) {
                    *b ^= 0xff;
                }
            }),
        )
        .when(move |r| {
            r.bucket() == Some("src-bucket")
                && r.header("range").is_some_and(|h| h.starts_with(&third))
        }),
    );
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"source": {"endpoint": proxy.url()}, "destination": {"endpoint": proxy.url()},
               "max_attempts": 1, "worker": {"part_concurrency": 1},
               "multipart": {"threshold": 10 * MIB, "chunk_size": 5 * MIB}}),
    );
    let r = report(&w.run("finder", &cfg, &["--json"]));
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    assert!(wait(&mut worker, Duration::from_secs(120)).success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(proxy.fired(flip) > 0, "{log}\n{}", proxy.journal_text());
    // The first part with an MD5 of ours (the destination's answer to it shows the rest need none), the
    // rest (of this attempt and of the redeliveries) without.
    let parts = proxy.calls("s3", "UploadPart");
    assert!(proxy.fired(without_md5) >= 3, "{}", proxy.journal_text());
    assert_eq!(
        proxy.fired(without_md5),
        parts - 1,
        "{}",
        proxy.journal_text()
    );
    assert!(log.contains("the parts received make ETag"), "{log}");
    assert!(w.get("dst-bucket", "big.bin").await.is_none(), "{log}");
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
    assert_eq!(w.get("dst-bucket", "small.txt").await.unwrap(), b"fine");
    let s = w.summary("ledger", r["run"].as_str().unwrap()).await;
    assert_eq!(s["objects_failed"].as_n().unwrap(), "1", "{s:?}");
    assert_eq!(s["objects_done"].as_n().unwrap(), "1", "{s:?}");
}
