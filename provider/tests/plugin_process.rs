//! The provider as a process, met the way terraform meets it: the magic cookie is checked (a human message
//! when run by hand), the handshake line comes first on stdout, AutoMTLS is on whenever terraform hands over
//! its client certificate, SIGINT is ignored, `GRPCController.Shutdown` ends the process at once, and
//! `--debug` prints `TF_REATTACH_PROVIDERS` and stops on Ctrl-C instead.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dth_provider::tfplugin::proto::{plugin, tfplugin6 as pb};
use tonic::codegen::http::uri::PathAndQuery;
use tonic_prost::ProstCodec;

const BIN: &str = env!("CARGO_BIN_EXE_terraform-provider-dth");
const COOKIE: (&str, &str) = (
    "TF_PLUGIN_MAGIC_COOKIE",
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2",
);

/// A provider process that is killed if a test fails before it ends.
struct Plugin {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Plugin {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Plugin {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove(COOKIE.0)
            .env_remove("PLUGIN_CLIENT_CERT")
            .env_remove("TF_DISABLE_PLUGIN_TLS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start the provider");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Plugin { child, stdout }
    }

    /// The next line on stdout; the process must not have closed it.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "the provider closed stdout");
        line.trim_end().to_owned()
    }

    fn interrupt(&self) {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
    }

    /// The exit status once the process ends, or None while it still runs after `limit`.
    fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One unary gRPC call over plain HTTP/2, the way a tonic-generated client makes it.
type CallResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn call<Req, Resp>(addr: &str, path: &'static str, req: Req) -> CallResult<Resp>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let codec = ProstCodec::<Req, Resp>::default();
    let path = PathAndQuery::from_static(path);
    Ok(grpc
        .unary(tonic::Request::new(req), path, codec)
        .await?
        .into_inner())
}

async fn resource_types(addr: &str) -> CallResult<Vec<String>> {
    let schema: pb::get_provider_schema::Response = call(
        addr,
        "/tfplugin6.Provider/GetProviderSchema",
        pb::get_provider_schema::Request {},
    )
    .await?;
    let mut types: Vec<String> = schema.resource_schemas.into_keys().collect();
    types.sort();
    Ok(types)
}

async fn shutdown(addr: &str) -> CallResult<plugin::Empty> {
    call(addr, "/plugin.GRPCController/Shutdown", plugin::Empty {}).await
}

#[test]
fn run_by_hand_it_explains_itself_and_exits() {
    let out = Command::new(BIN)
        .env_remove(COOKIE.0)
        .output()
        .expect("run the provider");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no handshake without the cookie");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Terraform provider plugin"), "{stderr}");
    assert!(stderr.contains("--debug"), "{stderr}");

    let wrong = Command::new(BIN)
        .env(COOKIE.0, "not-the-cookie")
        .output()
        .expect("run the provider");
    assert_eq!(wrong.status.code(), Some(1));
    assert!(wrong.stdout.is_empty());
}

#[tokio::test]
async fn handshake_first_then_sigint_is_ignored_and_shutdown_exits() {
    let mut p = Plugin::start(&[], &[COOKIE, ("TF_DISABLE_PLUGIN_TLS", "1")]);
    let handshake = p.line();
    let fields: Vec<&str> = handshake.split('|').collect();
    assert_eq!(fields.len(), 5, "{handshake}");
    assert_eq!(&fields[..3], ["1", "6", "tcp"], "{handshake}");
    assert_eq!(fields[4], "grpc", "{handshake}");
    let addr = fields[3].to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{handshake}");

    // Terraform's Ctrl-C reaches the whole process group; the provider must keep serving.
    p.interrupt();
    assert!(p.exited_within(Duration::from_millis(500)).is_none());
    let types = resource_types(&addr).await.expect("GetProviderSchema");
    assert_eq!(types, ["dth_ecr_transfer", "dth_s3_transfer"]);

    shutdown(&addr).await.expect("Shutdown");
    let status = p
        .exited_within(Duration::from_secs(2))
        .expect("exits within go-plugin's 2 s after Shutdown");
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    p.stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing but the handshake on stdout");
}

#[tokio::test]
async fn with_terraforms_client_certificate_it_speaks_only_tls() {
    let client = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = client.cert.pem();
    let mut p = Plugin::start(&[], &[COOKIE, ("PLUGIN_CLIENT_CERT", &pem)]);
    let handshake = p.line();
    let fields: Vec<&str> = handshake.split('|').collect();
    assert_eq!(fields.len(), 6, "{handshake}");
    assert_eq!(&fields[..3], ["1", "6", "tcp"]);
    let der = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(fields[5])
        .expect("the server certificate, base64 without padding");
    assert_eq!(der.first(), Some(&0x30), "a DER certificate");
    assert!(
        resource_types(fields[3]).await.is_err(),
        "a plaintext client is refused"
    );
    assert!(p.exited_within(Duration::from_millis(200)).is_none());
}

#[tokio::test]
async fn debug_mode_prints_reattach_and_stops_on_ctrl_c() {
    let mut p = Plugin::start(&["--debug"], &[]);
    let reattach = loop {
        let line = p.line();
        if let Some(rest) = line.trim().strip_prefix("TF_REATTACH_PROVIDERS='") {
            break rest.trim_end_matches('\'').to_owned();
        }
    };
    let v: serde_json::Value = serde_json::from_str(&reattach).expect("reattach JSON");
    let entry = &v["registry.terraform.io/dth/dth"];
    assert_eq!(entry["Protocol"], "grpc");
    assert_eq!(entry["ProtocolVersion"], 6);
    assert_eq!(entry["Pid"], p.child.id());
    assert_eq!(entry["Addr"]["Network"], "tcp");
    let addr = entry["Addr"]["String"]
        .as_str()
        .expect("address")
        .to_owned();
    assert_eq!(
        resource_types(&addr).await.expect("GetProviderSchema"),
        ["dth_ecr_transfer", "dth_s3_transfer"]
    );

    // A debug-mode provider outlives each terraform command's Shutdown …
    shutdown(&addr).await.expect("Shutdown");
    assert!(p.exited_within(Duration::from_millis(500)).is_none());
    // … and Ctrl-C is the way out.
    p.interrupt();
    let status = p
        .exited_within(Duration::from_secs(3))
        .expect("exits on SIGINT in debug mode");
    assert!(status.success(), "{status}");
}
