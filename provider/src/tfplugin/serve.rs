//! The plugin process: go-plugin handshake, AutoMTLS, the gRPC server and its lifecycle.
//!
//! Terraform starts the provider with a magic cookie and its own client certificate in the
//! environment, reads one handshake line from stdout, connects over TLS, and calls
//! `plugin.GRPCController/Shutdown` when done; the process must then exit at once, or terraform
//! waits two seconds and kills it on every command.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use super::proto::plugin::grpc_controller_server::{GrpcController, GrpcControllerServer};
use super::proto::plugin::Empty;
use super::proto::tfplugin6::provider_server::ProviderServer;
use super::resource::Provider;
use super::server::ProviderService;

const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
const MAGIC_COOKIE_VALUE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
/// go-plugin's core protocol version, and the plugin protocol this provider speaks.
const CORE_PROTOCOL: u32 = 1;
const PLUGIN_PROTOCOL: u32 = 6;
/// The registry namespace printed in the debug-mode reattach line.
const NAMESPACE: &str = "dth";
/// After Shutdown, how long in-flight responses get before the process leaves anyway; well under
/// go-plugin's two-second kill timer.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Terraform state can be large; tonic's 4 MiB default would reject big plans.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Runs `provider` as a terraform plugin until terraform shuts it down (or, with `--debug`,
/// until Ctrl-C).
pub async fn serve<P: Provider>(provider: P) -> anyhow::Result<()> {
    let debug_mode = std::env::args().skip(1).any(|arg| arg == "--debug");
    if !debug_mode && std::env::var(MAGIC_COOKIE_KEY).as_deref() != Ok(MAGIC_COOKIE_VALUE) {
        eprintln!(
            "This binary is a Terraform provider plugin. It is not meant to be run by hand: \
             Terraform starts it when a configuration uses the provider.\n\
             To run it under a debugger, start it with --debug and follow the instructions."
        );
        std::process::exit(1);
    }
    init_logging(provider.quiet_log_targets());

    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding a local port")?;
    let addr = listener.local_addr().context("reading the bound address")?;

    let tls = if debug_mode || tls_disabled() {
        None
    } else {
        match std::env::var("PLUGIN_CLIENT_CERT") {
            Ok(pem) if !pem.trim().is_empty() => Some(ServerTls::new(pem.as_bytes())?),
            _ => None,
        }
    };

    // The handler is installed here, before the handshake: from the moment terraform can see us, a
    // Ctrl-C that reaches our process group must find it in place.
    let interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("watching SIGINT")?;

    let type_name = provider.type_name();
    let shutdown = CancellationToken::new();
    let service = Arc::new(ProviderService::new(provider));
    let controller = Controller {
        shutdown: shutdown.clone(),
        service: Arc::clone(&service),
        debug: debug_mode,
    };

    if debug_mode {
        print_reattach(type_name, addr);
    } else {
        let cert = tls
            .as_ref()
            .map(|t| base64::engine::general_purpose::STANDARD_NO_PAD.encode(&t.cert_der))
            .map(|c| format!("|{c}"))
            .unwrap_or_default();
        let mut stdout = io::stdout().lock();
        writeln!(
            stdout,
            "{CORE_PROTOCOL}|{PLUGIN_PROTOCOL}|tcp|{addr}|grpc{cert}"
        )?;
        stdout.flush()?;
    }
    tracing::debug!(%addr, tls = tls.is_some(), "plugin serving (debug mode: {debug_mode})");

    tokio::spawn(watch_interrupts(interrupts, debug_mode, shutdown.clone()));
    let incoming = accept_connections(listener, tls.map(|t| t.acceptor));

    let server = tonic::transport::Server::builder()
        .add_service(
            ProviderServer::from_arc(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(GrpcControllerServer::new(controller))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.context("serving gRPC")?,
        () = grace => tracing::debug!("connections still open after shutdown; leaving anyway"),
    }
    Ok(())
}

fn tls_disabled() -> bool {
    std::env::var("TF_DISABLE_PLUGIN_TLS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// RUST_LOG when set; otherwise terraform's TF_LOG_PROVIDER / TF_LOG level; otherwise warnings. `quiet`
/// targets stay at `info` at most whatever the level (see [`Provider::quiet_log_targets`]).
fn init_logging(quiet: &[&str]) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let level = std::env::var("TF_LOG_PROVIDER")
            .or_else(|_| std::env::var("TF_LOG"))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let level = match level.as_str() {
            "trace" | "json" => "trace",
            "debug" => "debug",
            "info" => "info",
            "error" => "error",
            "off" => "off",
            _ => "warn",
        };
        // HTTP/2 and TLS frame traces drown the provider's own lines.
        if matches!(level, "trace" | "debug") {
            let quiet: String = quiet.iter().map(|t| format!(",{t}=info")).collect();
            EnvFilter::new(format!(
                "{level},h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,rustls=info{quiet}"
            ))
        } else {
            EnvFilter::new(level)
        }
    });
    // Stdout belongs to the handshake; terraform collects stderr into its own log. The SDK's credential-bearing
    // lines are dropped whatever the level (the filter the finder and the worker log through too).
    dth_core::telemetry::init_with(filter, dth_core::telemetry::LogFormat::Text, false);
}

fn print_reattach(type_name: &str, addr: std::net::SocketAddr) {
    let reattach = serde_json::json!({
        format!("registry.terraform.io/{NAMESPACE}/{type_name}"): {
            "Protocol": "grpc",
            "ProtocolVersion": PLUGIN_PROTOCOL,
            "Pid": std::process::id(),
            "Test": true,
            "Addr": {"Network": "tcp", "String": addr.to_string()},
        }
    });
    println!(
        "Provider started in debug mode. To attach Terraform, set this in the shell that runs it:\n\n\
         \tTF_REATTACH_PROVIDERS='{reattach}'\n\n\
         Press Ctrl-C to stop the provider."
    );
}

/// Terraform forwards Ctrl-C as StopProvider, but the signal also reaches this process (same
/// process group): it must not kill the provider mid-apply. In debug mode it is the way out.
async fn watch_interrupts(
    mut interrupts: tokio::signal::unix::Signal,
    debug: bool,
    shutdown: CancellationToken,
) {
    while interrupts.recv().await.is_some() {
        if debug {
            shutdown.cancel();
            return;
        }
        tracing::debug!("ignoring SIGINT; terraform sends StopProvider");
    }
}

// ---------------------------------------------------------------------------------------------
// GRPCController

struct Controller<P: Provider> {
    shutdown: CancellationToken,
    service: Arc<ProviderService<P>>,
    debug: bool,
}

#[tonic::async_trait]
impl<P: Provider> GrpcController for Controller<P> {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        // A debug-mode provider outlives terraform commands; Ctrl-C ends it instead.
        if !self.debug {
            self.service.stop();
            self.shutdown.cancel();
        }
        Ok(Response::new(Empty {}))
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

fn accept_connections(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
) -> impl futures::Stream<Item = io::Result<PluginConnection>> {
    let (tx, mut rx) = mpsc::channel::<io::Result<PluginConnection>>(8);
    tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Usually descriptor exhaustion: back off instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                if tx.send(Ok(PluginConnection::Plain(tcp))).await.is_err() {
                    return;
                }
                continue;
            };
            // Handshakes run apart so that one stalled client cannot block the others.
            let tx = tx.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        tracing::debug!("TLS handshake took {:?}", started.elapsed());
                        let _ = tx.send(Ok(PluginConnection::Tls(Box::new(tls)))).await;
                    }
                    Ok(Err(e)) => tracing::warn!("TLS handshake with terraform failed: {e}"),
                    Err(_) => tracing::warn!("TLS handshake with terraform timed out"),
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A connection from terraform, encrypted or (debug / TF_DISABLE_PLUGIN_TLS) not.
enum PluginConnection {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for PluginConnection {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for PluginConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PluginConnection::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PluginConnection::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PluginConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PluginConnection::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PluginConnection::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PluginConnection::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PluginConnection::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PluginConnection::Plain(s) => s.is_write_vectored(),
            PluginConnection::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PluginConnection::Plain(s) => Pin::new(s).poll_flush(cx),
            PluginConnection::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PluginConnection::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PluginConnection::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AutoMTLS

struct ServerTls {
    cert_der: Vec<u8>,
    acceptor: TlsAcceptor,
}

impl ServerTls {
    /// A fresh self-signed certificate for this process, and a server that accepts only the
    /// client certificate terraform put in PLUGIN_CLIENT_CERT.
    fn new(client_cert_pem: &[u8]) -> anyhow::Result<Self> {
        let expected = CertificateDer::from_pem_slice(client_cert_pem)
            .context("PLUGIN_CLIENT_CERT is not a PEM certificate")?;
        // ring does the TLS work: aws-lc seeds its RNG from CPU jitter on first use, ~90 ms per
        // process, paid by every one of the 2-3 provider starts of each terraform command. ring
        // cannot verify go-plugin's P-521 client signature, so verification stays on aws-lc-rs
        // (verifying needs no randomness).
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = ExactClientCert {
            expected: expected.as_ref().to_vec(),
            algorithms: rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms,
        };
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .context("generating the server certificate")?;
        let cert_der = generated.cert.der().to_vec();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            generated.signing_key.serialize_der(),
        ));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(vec![CertificateDer::from(cert_der.clone())], key)
            .context("loading the server certificate")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            cert_der,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Accepts exactly one client certificate. go-plugin's is a self-signed P-521 CA certificate
/// that webpki's chain building rejects; comparing it byte for byte with the one terraform handed
/// us is both simpler and stricter. The handshake signature is still verified, proving the client
/// holds the certificate's key.
#[derive(Debug)]
struct ExactClientCert {
    expected: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ExactClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_slice() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
