//! HTTP/1.1 on the wire: one request per client connection, its body read whole or streamed with its own
//! framing, forwarded to moto with `Connection: close`, answered with `Connection: close`.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{errors, identify, Call, Fault, Request, Response, Shared};

const MAX_HEAD: usize = 64 * 1024;
/// S3 bodies up to this size are read whole (rules can look into them); larger ones are streamed.
const S3_BUFFERED_BODY: u64 = 1024 * 1024;
/// Bodies of the other services are always read whole; this only guards against nonsense.
const MAX_BUFFERED_BODY: u64 = 256 * 1024 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// A TCP stream with a read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Read more into the buffer; false at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        // Read into the buffer's own tail: a chunk array would sit in every future that awaits this one.
        let old = self.buf.len();
        self.buf.resize(old + 64 * 1024, 0);
        let read = self.stream.read(&mut self.buf[old..]).await;
        let n = *read.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        Ok(read? > 0)
    }

    /// The start line and headers of the next message; `None` if the stream ends before one starts.
    async fn read_head(&mut self) -> anyhow::Result<Option<(String, Vec<(String, String)>)>> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let mut lines = head.split("\r\n");
                let start = lines.next().unwrap_or("").to_owned();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                return Ok(Some((start, headers)));
            }
            if self.buf.len() > MAX_HEAD {
                bail!("head longer than {MAX_HEAD} bytes");
            }
            if !self.fill().await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("connection closed inside the head");
            }
        }
    }

    /// One line, CRLF included.
    async fn read_line(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            if self.buf.len() > MAX_HEAD {
                bail!("line longer than {MAX_HEAD} bytes");
            }
            if !self.fill().await? {
                bail!("connection closed inside a line");
            }
        }
    }

    /// Exactly `n` bytes into `sink` (None: dropped).
    async fn copy_exact<W: AsyncWrite + Unpin>(
        &mut self,
        mut n: u64,
        sink: &mut Option<W>,
        mut keep: Option<&mut Vec<u8>>,
    ) -> anyhow::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && !self.fill().await? {
                bail!("connection closed inside the body");
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            let bytes: Vec<u8> = self.buf.drain(..take).collect();
            if let Some(w) = sink {
                w.write_all(&bytes).await?;
            }
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(&bytes);
            }
            n -= take as u64;
        }
        Ok(())
    }

    /// A body with `framing`: passed to `sink` verbatim (chunk framing and trailers included), its data (de-
    /// chunked) kept in `keep`.
    async fn copy_body<W: AsyncWrite + Unpin>(
        &mut self,
        framing: Framing,
        sink: &mut Option<W>,
        mut keep: Option<&mut Vec<u8>>,
    ) -> anyhow::Result<()> {
        match framing {
            Framing::Length(n) => self.copy_exact(n, sink, keep).await,
            Framing::Chunked => loop {
                let line = self.read_line().await?;
                if let Some(w) = sink {
                    w.write_all(&line).await?;
                }
                let text = String::from_utf8_lossy(&line);
                let size_text = text.trim_end().split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_text, 16)
                    .with_context(|| format!("chunk size {size_text:?}"))?;
                if size == 0 {
                    // Trailers, up to an empty line.
                    loop {
                        let t = self.read_line().await?;
                        if let Some(w) = sink {
                            w.write_all(&t).await?;
                        }
                        if t == b"\r\n" {
                            return Ok(());
                        }
                    }
                }
                self.copy_exact(size, sink, keep.as_deref_mut()).await?;
                let crlf = self.read_line().await?;
                if crlf != b"\r\n" {
                    bail!("chunk not followed by CRLF");
                }
                if let Some(w) = sink {
                    w.write_all(&crlf).await?;
                }
            },
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn request_framing(headers: &[(String, String)]) -> anyhow::Result<Framing> {
    if header(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return Ok(Framing::Chunked);
    }
    let n = header(headers, "content-length")
        .map(str::parse)
        .transpose()
        .context("content-length")?
        .unwrap_or(0);
    Ok(Framing::Length(n))
}

fn is_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "expect",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Write a whole response with `Connection: close`. For HEAD, a `Content-Length` of the response is kept and
/// no body is sent.
async fn write_response(w: &mut TcpStream, r: &Response, head_request: bool) -> anyhow::Result<()> {
    w.write_all(response_head(r, head_request).as_bytes())
        .await?;
    if !head_request {
        w.write_all(&r.body).await?;
    }
    w.flush().await?;
    let _ = w.shutdown().await;
    Ok(())
}

/// A response's status line and headers, `Content-Length` of its whole body and `Connection: close` included.
fn response_head(r: &Response, head_request: bool) -> String {
    let mut head = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    let has_length = header(&r.headers, "content-length").is_some();
    for (k, v) in &r.headers {
        if is_hop(k) || k.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        if k.eq_ignore_ascii_case("content-length") && !head_request {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !(head_request && has_length) {
        head.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    head
}

/// How a broken answer ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    /// Close the connection (FIN): the body just ends early.
    Close,
    /// Reset it (RST).
    Reset,
}

/// Forward, then send moto's answer only in part — its head and half its body, or half its head when it has no
/// body — and end the connection as `cut` says.
async fn cut_answer(
    upstream: &str,
    mut client: Conn,
    req: &Request,
    body: &Body,
    head_request: bool,
    cut: Cut,
) -> anyhow::Result<()> {
    let up = send_upstream(upstream, &mut client, req, body).await?;
    let answer = fetch(up, head_request).await?;
    let head = response_head(&answer, head_request);
    let mut wire = head.clone().into_bytes();
    if !head_request {
        wire.extend_from_slice(&answer.body);
    }
    let sent = if head_request || answer.body.is_empty() {
        head.len() / 2
    } else {
        head.len() + answer.body.len() / 2
    };
    tracing::debug!(
        "fault proxy: moto answered {} {} with {}; sending {sent} of {} bytes, then {cut:?}",
        req.service,
        req.operation,
        answer.status,
        wire.len()
    );
    let mut stream = client.stream;
    stream.write_all(&wire[..sent]).await?;
    stream.flush().await?;
    match cut {
        Cut::Close => {
            let _ = stream.shutdown().await;
        }
        Cut::Reset => {
            // A reset discards what the peer has not read yet: give it a moment to take the part sent, so that it
            // fails inside the body rather than before the head (either is a transport error to it).
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            reset(stream);
        }
    }
    Ok(())
}

/// Take part of a request body still on the wire (none of one read whole), then reset the connection.
async fn reset_mid_request(mut client: Conn, body: &Body) -> anyhow::Result<()> {
    if body.data.is_none() {
        match body.framing {
            Framing::Length(n) => {
                client
                    .copy_exact(n / 2, &mut None::<TcpStream>, None)
                    .await?
            }
            Framing::Chunked => {
                // The first 512 KiB of the framed stream, or what there is of it.
                while client.buf.len() < 512 * 1024 && client.fill().await? {}
            }
        }
    }
    reset(client.stream);
    Ok(())
}

/// Reset the connection: SO_LINGER 0, then close, so the peer gets an RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// The request's body, as far as it was read: `Some(data)` when read whole, `None` when still on the wire.
struct Body {
    framing: Framing,
    data: Option<Vec<u8>>,
}

/// Send the request to moto (its body from `body`, or streamed from `client`) and return moto's connection.
async fn send_upstream(
    upstream: &str,
    client: &mut Conn,
    r: &Request,
    body: &Body,
) -> anyhow::Result<Conn> {
    let mut up = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to {upstream}"))?;
    let mut head = format!("{} {} HTTP/1.1\r\n", r.method, r.target);
    for (k, v) in &r.headers {
        let framing_header =
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        if is_hop(k) || (framing_header && body.data.is_some()) {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(data) = &body.data {
        head.push_str(&format!("Content-Length: {}\r\n", data.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    up.write_all(head.as_bytes()).await?;
    let sent = match &body.data {
        Some(data) => up.write_all(data).await.map_err(anyhow::Error::from),
        None => {
            let mut sink = Some(&mut up);
            client.copy_body(body.framing, &mut sink, None).await
        }
    };
    if let Err(e) = sent {
        // moto may answer (and close) before taking the whole body; its answer is still worth relaying.
        tracing::debug!("fault proxy: sending the body upstream: {e:#}");
    }
    up.flush().await?;
    Ok(Conn::new(up))
}

/// The status of a response's start line.
fn status_of(start: &str) -> anyhow::Result<u16> {
    start
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {start:?}"))
}

/// The final (non-1xx) response head from moto.
async fn upstream_head(up: &mut Conn) -> anyhow::Result<(u16, Vec<(String, String)>)> {
    loop {
        let Some((start, headers)) = up.read_head().await? else {
            bail!("moto closed the connection without answering");
        };
        let status = status_of(&start)?;
        if !(100..200).contains(&status) {
            return Ok((status, headers));
        }
    }
}

/// How a response's body is delimited; `None`: by the end of the connection.
fn response_framing(
    status: u16,
    headers: &[(String, String)],
    head_request: bool,
) -> Option<Framing> {
    if head_request || matches!(status, 204 | 304) {
        return Some(Framing::Length(0));
    }
    if header(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return Some(Framing::Chunked);
    }
    header(headers, "content-length")
        .and_then(|v| v.parse().ok())
        .map(Framing::Length)
}

/// Pass moto's answer to the client as it comes, with its own framing; its status.
async fn relay(mut up: Conn, client: &mut TcpStream, head_request: bool) -> anyhow::Result<u16> {
    let (status, headers) = upstream_head(&mut up).await?;
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in &headers {
        if !is_hop(k) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    client.write_all(head.as_bytes()).await?;
    match response_framing(status, &headers, head_request) {
        Some(framing) => up.copy_body(framing, &mut Some(&mut *client), None).await?,
        None => {
            client.write_all(&up.buf).await?;
            tokio::io::copy(&mut up.stream, client).await?;
        }
    }
    client.flush().await?;
    let _ = client.shutdown().await;
    Ok(status)
}

/// moto's whole answer, its body de-chunked.
async fn fetch(mut up: Conn, head_request: bool) -> anyhow::Result<Response> {
    let (status, mut headers) = upstream_head(&mut up).await?;
    let mut body = Vec::new();
    match response_framing(status, &headers, head_request) {
        Some(framing) => {
            up.copy_body(framing, &mut None::<TcpStream>, Some(&mut body))
                .await?
        }
        None => {
            body = std::mem::take(&mut up.buf);
            up.stream.read_to_end(&mut body).await?;
        }
    }
    headers.retain(|(k, _)| {
        !is_hop(k)
            && !k.eq_ignore_ascii_case("transfer-encoding")
            && (head_request || !k.eq_ignore_ascii_case("content-length"))
    });
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Serve one client connection (one request).
pub(super) async fn serve(shared: Arc<Shared>, stream: TcpStream) -> anyhow::Result<()> {
    let mut client = Conn::new(stream);
    let Some((start, headers)) = client.read_head().await? else {
        return Ok(());
    };
    let mut parts = start.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line {start:?}");
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let head_request = method == "HEAD";
    let framing = request_framing(&headers)?;
    if header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        client
            .stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }
    let service = identify::service_of(&headers, &target);
    let read_whole = match framing {
        Framing::Length(n) if service == "s3" => n <= S3_BUFFERED_BODY,
        Framing::Length(n) => n <= MAX_BUFFERED_BODY,
        Framing::Chunked => service != "s3",
    };
    let mut body = Body {
        framing,
        data: None,
    };
    if read_whole {
        let mut data = Vec::new();
        client
            .copy_body(framing, &mut None::<TcpStream>, Some(&mut data))
            .await?;
        body.data = Some(data);
    }
    let (service, operation, protocol) = identify::identify(
        &method,
        &target,
        &headers,
        body.data.as_deref().unwrap_or(&[]),
    );
    let req = Request {
        method,
        target,
        headers,
        body: body.data.clone().unwrap_or_default(),
        body_streamed: !read_whole,
        service,
        operation,
        protocol,
    };
    let fault = shared.decide(&req);
    let label = fault.as_ref().map(Fault::label);
    let status = match handle(&shared, client, &req, &body, fault, head_request).await {
        Ok(status) => status,
        Err(e) => {
            shared.record(Call {
                service: req.service.clone(),
                operation: req.operation.clone(),
                subject: req.subject(),
                status: None,
                fault: Some(format!("{} proxy error: {e:#}", label.unwrap_or_default())),
            });
            return Err(e);
        }
    };
    shared.record(Call {
        subject: req.subject(),
        service: req.service,
        operation: req.operation,
        status,
        fault: label,
    });
    Ok(())
}

/// Apply `fault` (or none) to the request; the status the client got, `None` if it got a reset.
async fn handle(
    shared: &Shared,
    mut client: Conn,
    req: &Request,
    body: &Body,
    fault: Option<Fault>,
    head_request: bool,
) -> anyhow::Result<Option<u16>> {
    let upstream = shared.upstream.as_str();
    match fault {
        None => forward(upstream, client, req, body).await.map(Some),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            forward(upstream, client, req, body).await.map(Some)
        }
        Some(Fault::ResetBeforeForward) => {
            drain(&mut client, body).await?;
            reset(client.stream);
            Ok(None)
        }
        Some(Fault::ResetAfterForward) => {
            let up = send_upstream(upstream, &mut client, req, body).await?;
            let answer = fetch(up, head_request).await?;
            tracing::debug!(
                "fault proxy: moto answered {} {} with {}, resetting the client",
                req.service,
                req.operation,
                answer.status
            );
            reset(client.stream);
            Ok(None)
        }
        Some(Fault::TruncatedBody) => {
            cut_answer(upstream, client, req, body, head_request, Cut::Close).await?;
            Ok(None)
        }
        Some(Fault::ResetMidBody) => {
            cut_answer(upstream, client, req, body, head_request, Cut::Reset).await?;
            Ok(None)
        }
        Some(Fault::ResetMidRequest) => {
            reset_mid_request(client, body).await?;
            Ok(None)
        }
        Some(Fault::Rewrite(f)) => rewrite(upstream, client, req, body, head_request, &f).await,
        Some(Fault::Translate(q, f)) => {
            let mut translated = req.clone();
            q(&mut translated);
            // A body read whole may be translated too (a streamed one is not in `req`).
            let owned;
            let body = match &body.data {
                Some(_) if translated.body != req.body => {
                    owned = Body {
                        framing: body.framing,
                        data: Some(translated.body.clone()),
                    };
                    &owned
                }
                _ => body,
            };
            rewrite(upstream, client, &translated, body, head_request, &f).await
        }
        Some(Fault::Reply(f)) => {
            drain(&mut client, body).await?;
            let r = f(req);
            write_response(&mut client.stream, &r, head_request).await?;
            Ok(Some(r.status))
        }
        Some(Fault::Respond {
            status,
            mut headers,
            body: canned,
        }) => {
            drain(&mut client, body).await?;
            if header(&headers, "content-type").is_none() {
                headers.push((
                    "Content-Type".into(),
                    errors::content_type(req.protocol).into(),
                ));
            }
            headers.push(("x-amzn-RequestId".into(), errors::request_id()));
            let r = Response {
                status,
                headers,
                body: canned,
            };
            write_response(&mut client.stream, &r, head_request).await?;
            Ok(Some(status))
        }
        Some(f) => {
            let e = errors::of(&f, req).expect("every other fault is an error");
            drain(&mut client, body).await?;
            let r = errors::render(req, &e);
            write_response(&mut client.stream, &r, head_request).await?;
            Ok(Some(e.status))
        }
    }
}

/// Faults that answer without moto first take the rest of a streamed body, so that the client is not writing
/// into a closed connection when the answer comes.
async fn drain(client: &mut Conn, body: &Body) -> anyhow::Result<()> {
    if body.data.is_none() {
        client
            .copy_body(body.framing, &mut None::<TcpStream>, None)
            .await?;
    }
    Ok(())
}

/// Forward and relay; a 502 to the client if moto cannot be reached.
async fn forward(
    upstream: &str,
    mut client: Conn,
    req: &Request,
    body: &Body,
) -> anyhow::Result<u16> {
    match send_upstream(upstream, &mut client, req, body).await {
        Ok(up) => relay(up, &mut client.stream, req.method == "HEAD").await,
        Err(e) => {
            let r = Response::text(502, format!("fault proxy: {e:#}"));
            write_response(&mut client.stream, &r, req.method == "HEAD").await?;
            Ok(502)
        }
    }
}

/// Forward `req`, alter moto's answer with `f`, and send that to the client.
async fn rewrite(
    upstream: &str,
    mut client: Conn,
    req: &Request,
    body: &Body,
    head_request: bool,
    f: &super::Rewriter,
) -> anyhow::Result<Option<u16>> {
    let up = send_upstream(upstream, &mut client, req, body).await?;
    let mut answer = fetch(up, head_request).await?;
    let before = answer.body.clone();
    f(req, &mut answer);
    if answer.body != before {
        // DynamoDB's CRC32 of the body would no longer match.
        answer
            .headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("x-amz-crc32"));
    }
    write_response(&mut client.stream, &answer, head_request).await?;
    Ok(Some(answer.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn chunked_bodies_pass_verbatim_and_decode() {
        let (mut a, b) = pair().await;
        let raw = b"5;chunk-signature=x\r\nhello\r\n3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n\r\nNEXT";
        a.write_all(raw).await.unwrap();
        let mut c = Conn::new(b);
        let mut out = Vec::new();
        let mut data = Vec::new();
        c.copy_body(Framing::Chunked, &mut Some(&mut out), Some(&mut data))
            .await
            .unwrap();
        assert_eq!(out, &raw[..raw.len() - 4]);
        assert_eq!(data, b"helloabc");
        assert_eq!(c.buf, b"NEXT");
    }

    #[test]
    fn framing_of_requests() {
        let h = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert_eq!(
            request_framing(&h("Content-Length", "12")).unwrap(),
            Framing::Length(12)
        );
        assert_eq!(
            request_framing(&h("Transfer-Encoding", "chunked")).unwrap(),
            Framing::Chunked
        );
        assert_eq!(request_framing(&[]).unwrap(), Framing::Length(0));
    }
}
