//! The worker under what goes wrong inside it rather than around it: a request that never answers, a job that
//! panics, credentials that keep being refused, an object larger than its memory, a log level that would print
//! credentials. The real worker (in-process where a fault must come from inside) on moto server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use dth_core::config::JobConfig;
use dth_core::store::{
    Fetched, Head, ListPage, ObjectStore, PartInfo, Pin, Sums, UploadInfo, WriteIf, WriteOptions,
    Written,
};
use dth_tests::fault::{Fault, Rule};
use dth_tests::*;
use serde_json::json;

const MIB: usize = 1024 * 1024;

async fn world(name: &str, visibility: u32) -> (World, Queues) {
    let w = World::start(name).await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 5, visibility).await;
    w.table("ledger").await;
    (w, q)
}

fn finder(w: &World, cfg: &std::path::Path) -> String {
    let out = w.run("finder", cfg, &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["run"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_answers_times_out_and_is_retried() {
    let (w, q) = world("stalls", 30).await;
    let body = random_bytes(300_000);
    w.put("src-bucket", "a.bin", &body).await;
    let proxy = w.fault_proxy().await;
    // The first GET of the object and the first count of a job get no answer for ten minutes.
    let get =
        proxy.inject(Rule::on("s3", "GetObject", Fault::Delay(Duration::from_secs(600))).first(1));
    let count = proxy.inject(
        Rule::on(
            "dynamodb",
            "TransactWriteItems",
            Fault::Delay(Duration::from_secs(600)),
        )
        .first(1),
    );
    let mut patch = proxy.config_patch();
    merge(
        &mut patch,
        json!({"aws": {"io_timeout_secs": 2}, "worker": {"heartbeat_secs": 2, "visibility_secs": 30}}),
    );
    let cfg = w.config("src-bucket", "dst-bucket", &q, "ledger", patch);
    let run = finder(&w, &cfg);
    let start = Instant::now();
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    let status = wait(&mut worker, Duration::from_secs(120));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{log}");
    assert_eq!(proxy.fired(get), 1, "{}", proxy.journal_text());
    assert_eq!(proxy.fired(count), 1, "{}", proxy.journal_text());
    assert!(
        start.elapsed() < Duration::from_secs(100),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        md5_hex(&w.get("dst-bucket", "a.bin").await.unwrap()),
        md5_hex(&body)
    );
    let s = w.summary("ledger", &run).await;
    assert_eq!(s["objects_done"].as_n().unwrap(), "1", "{s:?}");
    assert_eq!(w.depth(&q.url).await, (0, 0));
}

/// A source that panics on the first GET of one key, as a bug in the copy path would.
#[derive(Debug)]
struct PanicsOnce {
    inner: Arc<dyn ObjectStore>,
    key: &'static str,
    armed: AtomicBool,
}

#[async_trait]
impl ObjectStore for PanicsOnce {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
    async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
    ) -> dth_core::Result<ListPage> {
        self.inner.list(prefix, delimiter, token).await
    }
    async fn head(&self, key: &str, pin: &Pin) -> dth_core::Result<Head> {
        self.inner.head(key, pin).await
    }
    async fn part_size(&self, key: &str, pin: &Pin, n: u32) -> dth_core::Result<Option<u64>> {
        self.inner.part_size(key, pin, n).await
    }
    async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        pin: &Pin,
    ) -> dth_core::Result<Fetched> {
        if key == self.key && self.armed.swap(false, Ordering::SeqCst) {
            panic!("a bug in the copy path");
        }
        self.inner.get(key, range, pin).await
    }
    async fn get_tags(&self, key: &str, pin: &Pin) -> dth_core::Result<Vec<(String, String)>> {
        self.inner.get_tags(key, pin).await
    }
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        sums: Sums,
        opts: &WriteOptions,
        cond: &WriteIf,
    ) -> dth_core::Result<Written> {
        self.inner.put(key, body, sums, opts, cond).await
    }
    async fn create_multipart(&self, key: &str, opts: &WriteOptions) -> dth_core::Result<String> {
        self.inner.create_multipart(key, opts).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
        sums: Sums,
    ) -> dth_core::Result<Written> {
        self.inner
            .upload_part(key, upload_id, number, body, sums)
            .await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        crc64: Option<u64>,
        cond: &WriteIf,
    ) -> dth_core::Result<Written> {
        self.inner
            .complete_multipart(key, upload_id, parts, crc64, cond)
            .await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> dth_core::Result<()> {
        self.inner.abort_multipart(key, upload_id).await
    }
    async fn list_multipart_uploads(&self, prefix: &str) -> dth_core::Result<Vec<UploadInfo>> {
        self.inner.list_multipart_uploads(prefix).await
    }
    async fn list_parts(&self, key: &str, upload_id: &str) -> dth_core::Result<Vec<PartInfo>> {
        self.inner.list_parts(key, upload_id).await
    }
    async fn delete(&self, key: &str) -> dth_core::Result<()> {
        self.inner.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_panics_goes_back_to_the_queue_and_the_worker_carries_on() {
    use dth_core::aws;
    use dth_core::ledger::DynamoLedger;
    use dth_core::limit::Limits;
    use dth_core::queue::SqsQueue;
    use dth_core::worker::{RunOptions, Worker};
    let (w, q) = world("panics", 4).await;
    let bodies: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("k{i}"), random_bytes(1000 + i)))
        .collect();
    for (k, b) in &bodies {
        w.put("src-bucket", k, b).await;
    }
    let path = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"batch": {"max_objects": 1}, "worker": {"heartbeat_secs": 1, "visibility_secs": 4}}),
    );
    let run = finder(&w, &path);
    let cfg: JobConfig = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    let cp = aws::ControlPlane::new(&cfg.aws).await;
    let limits = Arc::new(Limits::new(0, 0));
    let cfg = Arc::new(cfg);
    let src: Arc<dyn ObjectStore> = Arc::new(PanicsOnce {
        inner: Arc::new(aws::source_store(&cfg, &cp, limits.clone()).await),
        key: "k1",
        armed: AtomicBool::new(true),
    });
    let dst: Arc<dyn ObjectStore> = Arc::new(aws::destination_store(&cfg, &cp, limits).await);
    let (stats, _totals) = dth_core::stats::spawn(
        dth_core::stats::Role::Worker,
        dth_core::stats::Progress::Off,
    );
    let worker = Worker::new(
        cfg.clone(),
        src,
        dst,
        SqsQueue::new(cp.sqs.clone(), &cfg.queue.url),
        DynamoLedger::new(cp.dynamodb.clone(), &cfg.ledger.table),
        stats,
    )
    .unwrap();
    let ran = tokio::time::timeout(
        Duration::from_secs(90),
        worker.run(
            tokio_util::sync::CancellationToken::new(),
            RunOptions {
                exit_when_idle: Some(Duration::from_secs(3)),
            },
        ),
    )
    .await;
    assert!(
        ran.is_ok(),
        "the worker never drained the queue: the panicked job's message stayed invisible"
    );
    ran.unwrap().unwrap();
    for (k, b) in &bodies {
        assert_eq!(
            md5_hex(&w.get("dst-bucket", k).await.unwrap()),
            md5_hex(b),
            "{k}"
        );
    }
    let s = w.summary("ledger", &run).await;
    assert_eq!(s["objects_done"].as_n().unwrap(), "3", "{s:?}");
    assert_eq!(w.depth(&q.url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_read_again_at_most_every_thirty_seconds() {
    let (w, q) = world("secret-reread", 30).await;
    for i in 0..20 {
        w.put("src-bucket", &format!("k{i:02}"), &random_bytes(100))
            .await;
    }
    let secret = w
        .secret(
            "src-keys",
            r#"{"access_key_id": "revoked", "secret_access_key": "revoked"}"#,
        )
        .await;
    let proxy = w.fault_proxy().await;
    // The source refuses these keys on every request.
    proxy.inject(
        Rule::new(Fault::error(403, "AccessDenied", "Access Denied"))
            .service("s3")
            .when(|r| r.bucket() == Some("src-bucket") && r.operation == "GetObject"),
    );
    let finder_cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"batch": {"max_objects": 1}}),
    );
    finder(&w, &finder_cfg);
    let mut patch = proxy.config_patch();
    merge(
        &mut patch,
        json!({"source": {"credentials_secret_arn": secret}, "max_attempts": 1,
               "worker": {"concurrency": 4}}),
    );
    let cfg = w.config("src-bucket", "dst-bucket", &q, "ledger", patch);
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    let status = wait(&mut worker, Duration::from_secs(120));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{log}");
    let refused = proxy.injected("s3", "GetObject");
    let reads = proxy.calls("secretsmanager", "GetSecretValue");
    assert!(refused >= 20, "{}", proxy.journal_text());
    assert!(
        reads <= 2,
        "{reads} reads of the secret for {refused} refusals: {}",
        proxy.journal_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_larger_than_the_memory_budget_streams_in_parts() {
    let (w, q) = world("budget", 30).await;
    let body = random_bytes(24 * MIB + 3);
    w.put("src-bucket", "big.bin", &body).await;
    // A single PUT up to 64 MiB, but one object slot of 5 MiB buffers.
    let cfg = w.config(
        "src-bucket",
        "dst-bucket",
        &q,
        "ledger",
        json!({"multipart": {"threshold": 64 * MIB, "chunk_size": 5 * MIB, "giant_threshold": 1024 * MIB},
               "worker": {"concurrency": 1, "part_concurrency": 1}}),
    );
    finder(&w, &cfg);
    let (mut worker, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    let status = wait(&mut worker, Duration::from_secs(120));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{log}");
    assert_eq!(
        md5_hex(&w.get("dst-bucket", "big.bin").await.unwrap()),
        md5_hex(&body)
    );
    let h =
        w.s3.head_object()
            .bucket("dst-bucket")
            .key("big.bin")
            .send()
            .await
            .unwrap();
    assert!(
        h.e_tag().unwrap().trim_matches('"').ends_with("-5"),
        "copied in 5 MiB parts, not buffered whole: {:?}",
        h.e_tag()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_level_prints_credentials() {
    let (w, q) = world("log-secrets", 30).await;
    w.put("src-bucket", "a.txt", b"hello").await;
    let cfg = w.config("src-bucket", "dst-bucket", &q, "ledger", json!({}));
    finder(&w, &cfg);
    // The SDK redacts secret keys and session tokens in its own lines, but its trace lines print the access
    // key id with the resolved identity, and whole signed requests.
    const KEY_ID: &str = "AKIAIDENTIFIESTHEKEYS";
    const KEY: &str = "SeCrEtKeY0123456789abcdefghijklmnopqrstu";
    const TOKEN: &str = "SeSsIoNtOkEn-must-never-be-logged-0123456789";
    for level in [
        "trace",
        "debug",
        "info,aws_sigv4=trace,aws_smithy_runtime=trace,aws_config=trace",
    ] {
        let out = w
            .cmd("worker", &cfg)
            .args(["--exit-when-idle", "2"])
            .env("RUST_LOG", level)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", KEY)
            .env("AWS_SESSION_TOKEN", TOKEN)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(log.contains("queue drained"), "RUST_LOG={level}: {log}");
        assert!(
            !log.contains(KEY_ID) && !log.contains(KEY) && !log.contains(TOKEN),
            "RUST_LOG={level} printed credentials"
        );
    }
}

/// `big.bin` of `size` bytes in the source, written in 5 MiB parts (the layout the copy keeps, so a copy has
/// its ETag); the fault proxy answering as S3 does; a config through it copying in 5 MiB parts from 8 MiB,
/// with a 3 s visibility; and the finder's run.
async fn multipart_world(
    name: &str,
    size: usize,
) -> (
    World,
    Queues,
    Vec<u8>,
    dth_tests::fault::FaultProxy,
    std::path::PathBuf,
    String,
) {
    let (w, q) = world(name, 3).await;
    let body = random_bytes(size);
    w.put_multipart("src-bucket", "big.bin", &body, 5 * MIB)
        .await;
    let proxy = w.fault_proxy().await;
    proxy.answer_s3_as_aws();
    let mut patch = proxy.config_patch();
    merge(
        &mut patch,
        json!({
            "multipart": {"threshold": 8 * MIB, "chunk_size": 5 * MIB},
            "worker": {"heartbeat_secs": 1, "visibility_secs": 3, "part_concurrency": 1}
        }),
    );
    let cfg = w.config("src-bucket", "dst-bucket", &q, "ledger", patch);
    let run = finder(&w, &cfg);
    (w, q, body, proxy, cfg, run)
}

/// `big.bin` copied whole, counted once, nothing left open or queued.
async fn assert_big_copied(w: &World, q: &Queues, body: &[u8], run: &str) {
    assert_eq!(
        md5_hex(&w.get("dst-bucket", "big.bin").await.unwrap()),
        md5_hex(body)
    );
    let s = w.summary("ledger", run).await;
    assert_eq!(s["objects_done"].as_n().unwrap(), "1", "{s:?}");
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
    assert_eq!(w.depth(&q.url).await, (0, 0));
}

/// A worker SIGKILLed after completing a multipart upload and before the ledger forgets the upload: the
/// redelivery finds the object copied and closes the upload's record too. Left open, the record would stay for
/// ever (open uploads never expire) and every later destroy would try to abort it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_completing_an_upload_leaves_no_upload_open() {
    use dth_core::ledger::DynamoLedger;
    use std::sync::atomic::AtomicU32;
    let (w, q, body, proxy, cfg, run) = multipart_world("killed-completer", 12 * MIB + 7).await;
    // The worker's call to forget its completed upload (a DeleteItem under `uploads`) is its last: the proxy
    // kills it as the call arrives.
    let pid = Arc::new(AtomicU32::new(0));
    let forget = proxy.inject(
        Rule::on("dynamodb", "DeleteItem", Fault::kill_caller(pid.clone()))
            .mentioning("uploads")
            .first(1),
    );
    w.worker_killed(&cfg, &pid);
    assert_eq!(proxy.fired(forget), 1, "{}", proxy.journal_text());
    let ledger = DynamoLedger::new(w.ddb.clone(), "ledger");
    assert_eq!(ledger.open_uploads().await.unwrap().len(), 1);
    // The redelivery: the object is there already, its upload closed.
    let log = w.worker_until_idle(&cfg, 3);
    let open = ledger.open_uploads().await.unwrap();
    assert!(open.is_empty(), "{open:?}\n{log}");
    assert_big_copied(&w, &q, &body, &run).await;
}

/// A resumed multipart copy keeps the parts its killed worker recorded without reading them from the source
/// again (the ledger holds their CRC64NVME, the destination lists the same): only a part uploaded but not
/// recorded is read again, then the missing ones are copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_copy_reads_again_only_what_was_not_recorded() {
    use std::sync::atomic::{AtomicU32, AtomicUsize};
    let (w, q, body, proxy, cfg, run) = multipart_world("resume-reads", 27 * MIB + 11).await;
    // The worker dies as it records its third part: parts 1 and 2 recorded, 3 uploaded only, 4–6 not yet.
    let pid = Arc::new(AtomicU32::new(0));
    let recorded = Arc::new(AtomicUsize::new(0));
    let kill = proxy.inject(
        Rule::on("dynamodb", "UpdateItem", Fault::kill_caller(pid.clone()))
            .when(move |r| r.mentions("part_etags") && recorded.fetch_add(1, Ordering::SeqCst) == 2)
            .first(1),
    );
    w.worker_killed(&cfg, &pid);
    assert_eq!(proxy.fired(kill), 1, "{}", proxy.journal_text());
    let gets_before = proxy.calls("s3", "GetObject");
    let log = w.worker_until_idle(&cfg, 3);
    assert!(log.contains("resuming multipart upload"), "{log}");
    assert_eq!(
        proxy.calls("s3", "GetObject") - gets_before,
        4,
        "part 3 read again, parts 4-6 copied: {}",
        proxy.journal_text()
    );
    assert_big_copied(&w, &q, &body, &run).await;
}
