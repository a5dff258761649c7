//! The forwarder: passes calls to an HTTP service (the local runtime's
//! `com.graphene.upstream`, where graphene adds its routing, headers,
//! timeouts and metrics in front of, say, an existing model server).
//!
//! It is a small HTTP/1.1 client of its own: pooled
//! keep-alive connections, each used by one call at a time and driven by
//! that call's task, the request written with one system call, the answer
//! parsed in place (`httparse`), bodies by `Content-Length`, chunked
//! encoding, or until the upstream closes.

use std::io;
use std::sync::Mutex;

use bytes::{Buf, Bytes, BytesMut};
use graphene_core::provider::{is_hop_by_hop, InvocationResult, ProviderError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per upstream.
const MAX_IDLE: usize = 256;
const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 64 << 10;
/// The largest answer body accepted from an upstream.
const MAX_BODY: usize = 1 << 30;

/// A call with its body read, as the forwarder (and a runtime that hands
/// whole bodies to its replicas) takes it.
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub call_id: String,
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

pub struct Upstream {
    base: String,
    authority: String,
    prefix: String,
    idle: Mutex<Vec<Conn>>,
}

/// An exchange that failed; `stale` when nothing of an answer arrived on a
/// reused connection, so that the call can be sent again on a fresh one.
struct Failed {
    error: io::Error,
    stale: bool,
}

impl Upstream {
    /// `base` is an `http://host:port[/prefix]` URL, already validated.
    pub fn new(base: &str) -> Self {
        let base = base.trim_end_matches('/').to_string();
        let rest = base.strip_prefix("http://").unwrap_or(&base);
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Self {
            prefix: prefix.to_string(),
            authority,
            base,
            idle: Mutex::new(Vec::new()),
        }
    }

    async fn connect(&self) -> io::Result<Conn> {
        let stream = TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(8192),
        })
    }

    /// The request head and body as one buffer.
    fn encode(&self, call: &Call) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + call.body.len());
        out.extend_from_slice(call.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(call.path.as_bytes());
        if !call.query.is_empty() {
            out.push(b'?');
            out.extend_from_slice(call.query.as_bytes());
        }
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &call.headers {
            // Host and the connection's own headers are this client's to set.
            // Expect is answered by graphene, which has the whole body.
            if k.eq_ignore_ascii_case("host")
                || k.eq_ignore_ascii_case("expect")
                || is_hop_by_hop(k)
                || k.contains(['\r', '\n'])
                || v.contains(['\r', '\n'])
            {
                continue;
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(call.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&call.body);
        out
    }

    /// One request and its answer on one connection. Returns the answer and
    /// whether the connection can carry another request.
    async fn exchange(
        conn: &mut Conn,
        request: &[u8],
        head_only: bool,
        reused: bool,
    ) -> Result<(InvocationResult, bool), Failed> {
        // A reused connection that the upstream closed while idle fails
        // before any answer byte: only then may the call be sent again.
        let stale = |error: io::Error| Failed {
            error,
            stale: reused,
        };
        let bad = |what: String| Failed {
            error: io::Error::new(io::ErrorKind::InvalidData, what),
            stale: false,
        };
        conn.stream.write_all(request).await.map_err(stale)?;
        conn.buf.clear();
        let mut answered = false;
        // The head (after any interim 1xx heads).
        let (status, headers, head_len, length, chunked, close) = loop {
            let parsed = if conn.buf.is_empty() {
                None
            } else {
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut slots);
                match resp.parse(&conn.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(502);
                        if status == 101 {
                            return Err(bad(
                                "the upstream switched protocols, which is not supported".into(),
                            ));
                        }
                        if (100..200).contains(&status) {
                            // 100 Continue and other interim answers.
                            conn.buf.advance(n);
                            continue;
                        }
                        let mut length = None;
                        let mut chunked = false;
                        let mut close = resp.version == Some(0);
                        let mut headers = Vec::with_capacity(resp.headers.len());
                        for h in resp.headers.iter() {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            if h.name.eq_ignore_ascii_case("content-length") {
                                let n = value
                                    .trim()
                                    .parse::<usize>()
                                    .ok()
                                    .filter(|n| *n <= MAX_BODY);
                                length =
                                    Some(n.ok_or_else(|| {
                                        bad(format!("bad Content-Length {value:?}"))
                                    })?);
                            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                chunked = value.to_ascii_lowercase().contains("chunked");
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                let v = value.to_ascii_lowercase();
                                close = v.contains("close") || (close && !v.contains("keep-alive"));
                            }
                            headers.push((h.name.to_string(), value));
                        }
                        Some((status, headers, n, length, chunked, close))
                    }
                    Ok(httparse::Status::Partial) if conn.buf.len() < MAX_HEAD_BYTES => None,
                    Ok(httparse::Status::Partial) => {
                        return Err(bad("answer head too large".into()))
                    }
                    Err(e) => return Err(bad(format!("bad answer: {e}"))),
                }
            };
            if let Some(head) = parsed {
                break head;
            }
            let read = conn.stream.read_buf(&mut conn.buf).await;
            let failed = match read {
                Ok(0) => Some(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection",
                )),
                Ok(_) => None,
                Err(e) => Some(e),
            };
            if let Some(error) = failed {
                return Err(Failed {
                    error,
                    stale: reused && !answered,
                });
            }
            answered = true;
        };
        conn.buf.advance(head_len);
        let fail = |error: io::Error| Failed {
            error,
            stale: false,
        };
        let no_body = head_only || status == 204 || status == 304;
        let (body, reusable) = if no_body {
            (Bytes::new(), !close && conn.buf.is_empty())
        } else if chunked {
            let body = read_chunked(conn).await.map_err(fail)?;
            (body, !close && conn.buf.is_empty())
        } else if let Some(n) = length {
            while conn.buf.len() < n {
                if conn.stream.read_buf(&mut conn.buf).await.map_err(fail)? == 0 {
                    return Err(fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed mid-answer",
                    )));
                }
            }
            let body = conn.buf.split_to(n).freeze();
            (body, !close && conn.buf.is_empty())
        } else {
            // No length: the body runs until the upstream closes.
            while conn.stream.read_buf(&mut conn.buf).await.map_err(fail)? > 0 {
                if conn.buf.len() > MAX_BODY {
                    return Err(fail(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "answer too large",
                    )));
                }
            }
            (conn.buf.split().freeze(), false)
        };
        Ok((
            InvocationResult {
                status,
                headers,
                body: body.into(),
                cold_start: None,
            },
            reusable,
        ))
    }

    pub async fn call(
        &self,
        function: &str,
        call: Call,
        deadline: Instant,
        timeout: std::time::Duration,
    ) -> Result<InvocationResult, ProviderError> {
        let request = self.encode(&call);
        let head_only = call.method.eq_ignore_ascii_case("HEAD");
        let attempt = async {
            let pooled = self.idle.lock().expect("pool lock").pop();
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect().await?,
            };
            let outcome = match Self::exchange(&mut conn, &request, head_only, reused).await {
                // A kept-alive connection the upstream had closed meanwhile.
                Err(Failed { stale: true, .. }) => {
                    conn = self.connect().await?;
                    Self::exchange(&mut conn, &request, head_only, false).await
                }
                other => other,
            };
            let (result, reusable) = outcome.map_err(|f| f.error)?;
            if reusable {
                let mut idle = self.idle.lock().expect("pool lock");
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
            }
            Ok::<_, io::Error>(result)
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(ProviderError::Upstream(format!(
                "function {function}: upstream {} failed: {e}",
                self.base
            ))),
            Err(_) => Err(ProviderError::Timeout(format!(
                "function {function}: upstream {} did not answer within the function's timeout ({timeout:?})",
                self.base
            ))),
        }
    }
}

/// Decodes a chunked body (trailers are read and dropped).
async fn read_chunked(conn: &mut Conn) -> io::Result<Bytes> {
    let mut body = BytesMut::new();
    loop {
        let line_end = loop {
            if let Some(i) = conn.buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if conn.buf.len() > MAX_HEAD_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad chunk size line",
                ));
            }
            if conn.stream.read_buf(&mut conn.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let line = std::str::from_utf8(&conn.buf[..line_end]).unwrap_or("");
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .ok()
            .filter(|n| body.len().saturating_add(*n) <= MAX_BODY)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "bad or too large chunk size")
            })?;
        conn.buf.advance(line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if let Some(i) = conn.buf.windows(2).position(|w| w == b"\r\n") {
                    conn.buf.advance(i + 2);
                    if i == 0 {
                        return Ok(body.freeze());
                    }
                    continue;
                }
                if conn.stream.read_buf(&mut conn.buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        while conn.buf.len() < size + 2 {
            if conn.stream.read_buf(&mut conn.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        body.extend_from_slice(&conn.buf[..size]);
        conn.buf.advance(size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot upstream that answers each request with `answer`.
    async fn upstream(answers: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for a in answers {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
                s.write_all(a).await.unwrap();
            }
            seen
        });
        (url, task)
    }

    fn full(b: &graphene_core::provider::Body) -> &[u8] {
        match b {
            graphene_core::provider::Body::Full(b) => b,
            other => panic!("expected a whole body, got {other:?}"),
        }
    }

    fn call(path: &str) -> Call {
        Call {
            method: "POST".into(),
            path: path.into(),
            query: "a=1".into(),
            headers: vec![
                ("X-Test".into(), "yes".into()),
                ("Connection".into(), "close".into()),
            ],
            body: Bytes::from_static(b"hello"),
            call_id: "c".into(),
        }
    }

    #[tokio::test]
    async fn content_length_chunked_and_reuse() {
        let (url, seen) = upstream(vec![
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Up: 1\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        ])
        .await;
        let up = Upstream::new(&format!("{url}/base"));
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let t = std::time::Duration::from_secs(5);
        let r = up.call("f", call("/x"), deadline, t).await.unwrap();
        assert_eq!((r.status, full(&r.body)), (201, &b"ok"[..]));
        assert!(r.headers.iter().any(|(k, v)| k == "X-Up" && v == "1"));
        let r = up.call("f", call("/y"), deadline, t).await.unwrap();
        assert_eq!((r.status, full(&r.body)), (200, &b"abcde"[..]));
        let seen = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(seen.starts_with("POST /base/x?a=1 HTTP/1.1\r\n"), "{seen}");
        assert!(
            seen.contains("X-Test: yes\r\n") && seen.contains("Content-Length: 5\r\n\r\nhello")
        );
        assert!(
            !seen.contains("Connection: close"),
            "hop-by-hop headers stay behind"
        );
        assert_eq!(
            seen.matches("POST ").count(),
            2,
            "one connection carried both calls"
        );
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let (url, seen) = upstream(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let up = Upstream::new(&url);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut c = call("/");
        c.headers.push(("Expect".into(), "100-continue".into()));
        let r = up
            .call("f", c, deadline, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((r.status, full(&r.body)), (200, &b"ok"[..]));
        let seen = String::from_utf8(seen.await.unwrap()).unwrap();
        assert!(!seen.to_ascii_lowercase().contains("expect:"), "{seen}");
        let (url, _seen) = upstream(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
        ])
        .await;
        let e = Upstream::new(&url)
            .call("f", call("/"), deadline, std::time::Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("too large chunk size"), "{e}");
    }

    #[tokio::test]
    async fn body_until_close_and_bad_answers() {
        let (url, _seen) = upstream(vec![b"HTTP/1.0 200 OK\r\n\r\nstreamed"]).await;
        let up = Upstream::new(&url);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let t = std::time::Duration::from_secs(5);
        // The test upstream closes after its answers.
        let r = up.call("f", call("/"), deadline, t).await.unwrap();
        assert_eq!(full(&r.body), b"streamed");
        let (url, _seen) = upstream(vec![b"garbage\r\n\r\n"]).await;
        let e = Upstream::new(&url)
            .call("f", call("/"), deadline, t)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("bad answer"), "{e}");
    }
}
