//! Test harness: a private moto server per test (started and stopped by PID), AWS clients pointed at it,
//! and the real `finder` / `worker` binaries run as child processes — by hand, or by the EC2 stand-in
//! ([`ec2`]) from the launch templates of Auto Scaling groups. [`fault`] puts a fault-injecting proxy in front
//! of moto.

pub mod chaos;
pub mod cloud;
pub mod ec2;
pub mod fault;
pub mod http;
pub mod images;
pub mod instance;
pub mod machine;
pub mod registry;
pub mod systemd;
pub mod terraform;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::QueueAttributeName;

/// Poll `cond` (an async expression) every 250 ms until it holds; fail after `limit` with `what`.
#[macro_export]
macro_rules! wait_for {
    ($limit:expr, $what:expr, $cond:expr) => {{
        let deadline = std::time::Instant::now() + $limit;
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }};
}

pub const REGION: &str = "us-east-1";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

static BUILD: Once = Once::new();

/// A command run from the repository root without the `CARGO_*` variables `cargo test` gives this process:
/// ring's build script reruns when the test package's CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ... change
/// (rerun-if-env-changed), and with it everything above ring (the TLS stack, every AWS SDK). Without them a
/// nested `cargo build` (directly or in a script) finds everything `cargo test` just built.
pub fn without_cargo_env(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(repo_root());
    cmd
}

/// Path of a workspace binary, building every binary of the workspace once if needed.
pub fn bin(name: &str) -> PathBuf {
    BUILD.call_once(|| {
        let status = without_cargo_env(env!("CARGO"))
            // The same selection as scripts/test, scripts/demo and scripts/install-provider: one build (and one
            // set of resolved features) serves them all, so nothing is compiled twice.
            .args(["build", "-q", "--workspace", "--bins"])
            .current_dir(repo_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    target_dir().join("debug").join(name)
}

pub struct World {
    pub endpoint: String,
    moto: Child,
    pub dir: PathBuf,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub ddb: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub ec2: aws_sdk_ec2::Client,
    /// Keep `dir` when dropped although no test panicked (see [`World::keep_dir`]).
    keep: std::sync::atomic::AtomicBool,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.moto.kill();
        let _ = self.moto.wait();
        // A passing test's files go (each world's moto log and job configs; some tests write hundreds of MB);
        // a failing one's stay under target/e2e for a look.
        if !std::thread::panicking() && !self.keep.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (from /proc: the listening socket's
/// inode in /proc/net/tcp, among the process's file descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(tcp) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let sockets: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode.
            let listening = f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A");
            listening
                .then(|| f.get(9).map(|i| format!("socket:[{i}]")))
                .flatten()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|t| sockets.iter().any(|s| t.as_os_str() == s.as_str()))
    })
}

/// Wait (up to 30 s) until moto, still running, answers HTTP on `port` as moto, from its own socket.
async fn moto_answers(moto: &mut Child, port: u16) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if !matches!(moto.try_wait(), Ok(None)) {
            return false;
        }
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reply = String::new();
            let asked = conn.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: localhost\r\n\r\n");
            if asked.is_ok() && conn.read_to_string(&mut reply).is_ok() {
                // Another test's moto may hold the port (it took it between our pick and our moto's bind, and
                // ours is about to exit): only our own process's socket counts.
                return reply.starts_with("HTTP/1")
                    && reply.contains("Werkzeug")
                    && listens_on(moto.id(), port);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub fn md5_hex(b: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(b))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fastrand::fill(&mut v);
    v
}

pub struct Queues {
    pub url: String,
    pub dlq_url: String,
    pub arn: String,
}

impl World {
    pub async fn start(name: &str) -> World {
        // moto with DynamoDB's isolation (see the script).
        let moto_bin = repo_root().join(".venv/bin/python");
        let moto_script = repo_root().join("tests/moto/moto_server.py");
        assert!(
            repo_root().join(".venv/bin/moto_server").exists(),
            "moto is not installed: run `scripts/dev-env install` (the README's test command does)"
        );
        let dir = target_dir()
            .join("e2e")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A free port can be taken by someone else (another test's provider plugin) before moto binds it: then
        // moto exits, or the port answers but not as moto. Either way, start again on another port.
        let mut attempt = 0;
        let (moto, endpoint) = loop {
            attempt += 1;
            let port = free_port();
            let log = std::fs::File::create(dir.join("moto.log")).unwrap();
            let mut moto = Command::new(&moto_bin)
                .arg(&moto_script)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting moto_server");
            let endpoint = format!("http://127.0.0.1:{port}");
            if moto_answers(&mut moto, port).await {
                break (moto, endpoint);
            }
            let _ = moto.kill();
            let _ = moto.wait();
            let log = std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default();
            assert!(attempt < 3, "moto did not start on {endpoint}:\n{log}");
        };
        let creds = aws_credential_types::Credentials::new("test", "test", None, None, "test");
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .credentials_provider(creds)
            .endpoint_url(&endpoint)
            .load()
            .await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        );
        World {
            s3,
            sqs: aws_sdk_sqs::Client::new(&sdk),
            ddb: aws_sdk_dynamodb::Client::new(&sdk),
            secrets: aws_sdk_secretsmanager::Client::new(&sdk),
            autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
            ec2: aws_sdk_ec2::Client::new(&sdk),
            endpoint,
            moto,
            dir,
            keep: Default::default(),
        }
    }

    /// Keep this world's directory (logs, configs) when it is dropped: for a harness that reports a failure
    /// instead of panicking.
    pub fn keep_dir(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A [`fault::FaultProxy`] in front of this world's moto.
    pub async fn fault_proxy(&self) -> fault::FaultProxy {
        fault::FaultProxy::start(&self.endpoint).await
    }

    /// Turn moto's IAM authentication and authorisation on or off for every request from now on: the setting
    /// `INITIAL_NO_AUTH_ACTION_COUNT` (requests served before enforcement starts) of this world's private server,
    /// through moto's `/moto-api/reset-auth` (0: every later request is checked; `inf`: none is). While on, only
    /// credentials moto issued itself (an IAM user's access key, an assumed role's session) are accepted, and a
    /// request is allowed only as the principal's policies allow it, as far as moto evaluates them (see
    /// `tests/tests/least_privilege.rs`).
    pub fn enforce_iam(&self, on: bool) {
        use std::io::{Read, Write};
        let body = if on { "0" } else { "inf" };
        let host = self.endpoint.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(host).expect("connecting to moto");
        write!(
            conn,
            "POST /moto-api/reset-auth HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert!(
            reply.starts_with("HTTP/1") && reply.contains(" 200 ") && reply.contains("\"ok\""),
            "moto refused reset-auth: {reply}"
        );
    }

    pub async fn bucket(&self, name: &str) {
        self.s3.create_bucket().bucket(name).send().await.unwrap();
    }

    pub async fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .unwrap();
    }

    /// Upload in parts of `part` bytes, giving the object a multipart ETag.
    pub async fn put_multipart(&self, bucket: &str, key: &str, body: &[u8], part: usize) {
        let up = self
            .s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let id = up.upload_id().unwrap();
        let mut parts = vec![];
        for (i, chunk) in body.chunks(part).enumerate() {
            let n = i as i32 + 1;
            let p = self
                .s3
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .part_number(n)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .unwrap();
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(n)
                    .e_tag(p.e_tag().unwrap())
                    .build(),
            );
        }
        self.s3
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let o = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        Some(o.body.collect().await.unwrap().to_vec())
    }

    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let mut keys = vec![];
        let mut token = None;
        loop {
            let o = self
                .s3
                .list_objects_v2()
                .bucket(bucket)
                .set_continuation_token(token)
                .send()
                .await
                .unwrap();
            keys.extend(o.contents().iter().map(|c| c.key().unwrap().to_owned()));
            token = o.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                return keys;
            }
        }
    }

    pub async fn incomplete_uploads(&self, bucket: &str) -> usize {
        self.s3
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .unwrap()
            .uploads()
            .len()
    }

    pub async fn queues(&self, name: &str, max_receive: u32, visibility: u32) -> Queues {
        let dlq = self
            .sqs
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .unwrap();
        let dlq_url = dlq.queue_url().unwrap().to_owned();
        let dlq_arn = self.queue_arn(&dlq_url).await;
        let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive.to_string()});
        let q = self
            .sqs
            .create_queue()
            .queue_name(name)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility.to_string(),
            )
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .send()
            .await
            .unwrap();
        let url = q.queue_url().unwrap().to_owned();
        let arn = self.queue_arn(&url).await;
        Queues { url, dlq_url, arn }
    }

    pub async fn queue_arn(&self, url: &str) -> String {
        let a = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap();
        a.attributes().unwrap()[&QueueAttributeName::QueueArn].clone()
    }

    /// (visible, in flight)
    pub async fn depth(&self, url: &str) -> (u64, u64) {
        let a = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let a = a.attributes().unwrap();
        let g = |n| a.get(&n).and_then(|v: &String| v.parse().ok()).unwrap_or(0);
        (
            g(QueueAttributeName::ApproximateNumberOfMessages),
            g(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// An ECR client on this world's moto (its control plane: repositories, tokens, image lists).
    pub fn ecr(&self) -> aws_sdk_ecr::Client {
        let conf = aws_sdk_ecr::Config::builder()
            .behavior_version(aws_sdk_ecr::config::BehaviorVersion::latest())
            .region(aws_sdk_ecr::config::Region::new(REGION))
            .credentials_provider(aws_credential_types::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_ecr::Client::from_conf(conf)
    }

    /// The names of the ECR repositories in moto, sorted.
    pub async fn ecr_repositories(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .ecr()
            .describe_repositories()
            .send()
            .await
            .unwrap()
            .repositories()
            .iter()
            .filter_map(|r| r.repository_name().map(str::to_owned))
            .collect();
        names.sort();
        names
    }

    pub async fn table(&self, name: &str) {
        self.ddb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("sk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("sk")
                    .key_type(KeyType::Range)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }

    /// Object outcomes of a run, as the ledger answers them: key → status.
    pub async fn ledger_rows(
        &self,
        table: &str,
        run: &str,
    ) -> std::collections::BTreeMap<String, String> {
        dth_core::ledger::DynamoLedger::new(self.ddb.clone(), table)
            .objects(run)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.key, r.status.as_str().to_owned()))
            .collect()
    }

    pub async fn summary(
        &self,
        table: &str,
        run: &str,
    ) -> std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
        use aws_sdk_dynamodb::types::AttributeValue as Av;
        self.ddb
            .get_item()
            .table_name(table)
            .key("pk", Av::S(format!("run#{run}")))
            .key("sk", Av::S("summary".into()))
            .send()
            .await
            .unwrap()
            .item()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn secret(&self, name: &str, value: &str) -> String {
        self.secrets
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .unwrap()
            .arn()
            .unwrap()
            .to_owned()
    }

    /// The JSON of a job config for `src` → `dst` with everything on this world; `patch` is merged over it.
    pub fn config_json(
        &self,
        src: &str,
        dst: &str,
        q: &Queues,
        table: &str,
        patch: serde_json::Value,
    ) -> serde_json::Value {
        let mut v = serde_json::json!({
            "source": {"bucket": src, "endpoint": self.endpoint, "path_style": true, "region": REGION},
            "destination": {"bucket": dst, "endpoint": self.endpoint, "path_style": true, "region": REGION},
            "queue": {"url": q.url},
            "ledger": {"table": table},
            "aws": {"region": REGION, "endpoints": {"sqs": self.endpoint, "dynamodb": self.endpoint,
                    "secretsmanager": self.endpoint, "s3": self.endpoint, "autoscaling": self.endpoint}}
        });
        merge(&mut v, patch);
        v
    }

    /// [`World::config_json`] written to a file.
    pub fn config(
        &self,
        src: &str,
        dst: &str,
        q: &Queues,
        table: &str,
        patch: serde_json::Value,
    ) -> PathBuf {
        let v = self.config_json(src, dst, q, table, patch);
        let path = self.dir.join(format!("config-{}.json", fastrand::u32(..)));
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        path
    }

    /// A command for a dth binary, with this world's credentials in the environment.
    pub fn cmd(&self, name: &str, config: &Path) -> Command {
        let mut c = Command::new(bin(name));
        c.arg("--config")
            .arg(config)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", REGION)
            .env(
                "RUST_LOG",
                std::env::var("DTH_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE")
            .env_remove("DTH_CONFIG");
        c
    }

    pub fn run(&self, name: &str, config: &Path, args: &[&str]) -> Output {
        let out = self.cmd(name, config).args(args).output().unwrap();
        std::fs::write(
            self.dir.join(format!("{name}-{}.log", fastrand::u32(..))),
            &out.stderr,
        )
        .unwrap();
        out
    }

    /// Start a worker in the background with its stderr in a log file; it is killed if the test fails.
    /// Run a worker that a [`fault::Fault::kill_caller`] rule kills (its pid goes into `pid`), and return its
    /// log once it is dead.
    pub fn worker_killed(&self, config: &Path, pid: &std::sync::atomic::AtomicU32) -> String {
        let (mut worker, log) = self.spawn_worker(config, &[]);
        pid.store(worker.id(), std::sync::atomic::Ordering::SeqCst);
        let status = wait(&mut worker, Duration::from_secs(120));
        let log = std::fs::read_to_string(log).unwrap();
        assert!(!status.success(), "the worker was not killed: {log}");
        log
    }

    /// Run a worker until the queue has been idle `idle_secs`; check it exited cleanly and return its log.
    pub fn worker_until_idle(&self, config: &Path, idle_secs: u32) -> String {
        let (mut worker, log) =
            self.spawn_worker(config, &["--exit-when-idle", &idle_secs.to_string()]);
        let status = wait(&mut worker, Duration::from_secs(180));
        let log = std::fs::read_to_string(log).unwrap();
        assert!(status.success(), "worker failed: {log}");
        log
    }

    pub fn spawn_worker(&self, config: &Path, args: &[&str]) -> (Proc, PathBuf) {
        let log = self.dir.join(format!("worker-{}.log", fastrand::u32(..)));
        let f = std::fs::File::create(&log).unwrap();
        let child = self
            .cmd("worker", config)
            .args(args)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        (Proc(child), log)
    }
}

impl World {
    /// Stand-in options for this world: instance consoles under `<dir>/ec2`, and the world's credentials as
    /// the stand-in's own and the instances' profile.
    pub fn standin_options(&self) -> ec2::Options {
        ec2::Options::new(&self.endpoint, REGION, self.dir.join("ec2")).credentials("test", "test")
    }

    /// Start the EC2 stand-in against this world; it powers its instances off when dropped. Its log goes to
    /// the test's output.
    pub fn standin(&self) -> ec2::Ec2StandIn {
        self.standin_with(self.standin_options())
    }

    pub fn standin_with(&self, opts: ec2::Options) -> ec2::Ec2StandIn {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        ec2::Ec2StandIn::spawn(opts).expect("starting the EC2 stand-in thread")
    }

    /// A private registry for this world holding the project's image (see [`registry::Registry`]): the
    /// registry, and the image pinned by digest.
    pub fn image_registry(&self) -> (registry::Registry, String) {
        let r = registry::Registry::start(&self.dir.join("registry"));
        let image = r.project_image();
        (r, image)
    }
}

/// A child process killed (by its PID) when dropped, so a failing test leaves nothing running.
pub struct Proc(pub Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// Wait for a child with a deadline; kill it and fail if it overstays.
pub fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not finish within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A TCP forwarder to `upstream` whose answers come back at no more than `bytes_per_sec`: a slow source, so
/// that a copy is still in flight when a test needs it to be. Runs until the runtime ends.
pub async fn slow_proxy(upstream: &str, bytes_per_sec: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs_f64(n as f64 / bytes_per_sec as f64))
                        .await;
                }
                let _ = cw.shutdown().await;
                up.abort();
            });
        }
    });
    url
}
