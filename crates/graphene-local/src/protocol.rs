//! The replica protocol between the replica host (this crate) and a runner
//! (`runner/runner.py`, or a small program in any language).
//!
//! Every message is a frame: two big-endian `u32` (header length, body
//! length), a JSON header, then the body bytes. A runner connects to the Unix
//! socket named by `GRAPHENE_SOCKET` and opens each connection with a hello
//! that carries `"token"`, the value of `GRAPHENE_RUNNER_TOKEN` (connections
//! without it are refused):
//!
//! - `{"type":"parent","pid":P}`: the handler imported (the model is loaded);
//!   the connection stays open as the warm parent's control channel. The
//!   host sends `{"type":"spawn","replica":R,"workers":N}` to fork a
//!   replica's workers, `{"type":"drain","replica":R}` to stop replacing them
//!   (a stopping replica), `{"type":"retire","replica":R}` to end them and
//!   `{"type":"kill","pid":W}` to replace one; the parent reports each
//!   worker that ends as `{"type":"exit","pid":W,"replica":R,"status":"...",
//!   "expected":bool}`. Closing the connection tells the runner to exit.
//! - `{"type":"worker","pid":W,"replica":R}`: a worker of replica `R` ready
//!   for calls. The host sends a request frame (`method`, `path`, `query`,
//!   `headers`, `call_id`; the body is the request body) and the worker
//!   answers with a response frame (`status`, `headers`, optional `error`),
//!   one call at a time.
//! - `{"type":"import_error","pid":P,"error":"..."}`: the handler failed to
//!   import; the runner exits after sending it.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Frames larger than this are a protocol error, not an allocation.
pub const MAX_FRAME: usize = 1 << 30;

/// A hello carries the token the host gave this runner incarnation
/// (`GRAPHENE_RUNNER_TOKEN`), so that nothing else that reaches the socket
/// can pose as one of its workers.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub token: String,
    #[serde(flatten)]
    pub hello: Hello,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Hello {
    Parent {
        pid: u32,
    },
    Worker {
        pid: u32,
        #[serde(default)]
        replica: String,
    },
    ImportError {
        #[serde(default)]
        pid: u32,
        error: String,
    },
}

#[derive(Debug, Serialize)]
pub struct RequestHeader<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub call_id: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct ResponseHeader {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control<'a> {
    Spawn { replica: &'a str, workers: u64 },
    Drain { replica: &'a str },
    Retire { replica: &'a str },
    Kill { pid: u32 },
}

/// What the warm parent reports on its control channel.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Exit {
        pid: u32,
        replica: String,
        status: String,
        #[serde(default)]
        expected: bool,
    },
}

pub async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    header: &impl Serialize,
    body: &[u8],
) -> std::io::Result<()> {
    let head = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(8 + head.len() + body.len());
    buf.extend_from_slice(&(head.len() as u32).to_be_bytes());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&head);
    buf.extend_from_slice(body);
    w.write_all(&buf).await
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut lens = [0u8; 8];
    match r.read_exact(&mut lens).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let hlen = u32::from_be_bytes(lens[..4].try_into().expect("4 bytes")) as usize;
    let blen = u32::from_be_bytes(lens[4..].try_into().expect("4 bytes")) as usize;
    if hlen > MAX_FRAME || blen > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut head = vec![0; hlen];
    r.read_exact(&mut head).await?;
    let mut body = vec![0; blen];
    r.read_exact(&mut body).await?;
    Ok(Some((head, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(
            &mut a,
            &serde_json::json!({"status": 201, "headers": [["a", "b"]]}),
            b"body",
        )
        .await
        .unwrap();
        drop(a);
        let (head, body) = read_frame(&mut b).await.unwrap().unwrap();
        let h: ResponseHeader = serde_json::from_slice(&head).unwrap();
        assert_eq!(h.status, 201);
        assert_eq!(h.headers, vec![("a".to_string(), "b".to_string())]);
        assert_eq!(body, b"body");
        assert!(read_frame(&mut b).await.unwrap().is_none());
    }

    #[test]
    fn parses_hellos() {
        let h: Envelope =
            serde_json::from_str(r#"{"type":"import_error","pid":3,"error":"boom","token":"t"}"#)
                .unwrap();
        assert_eq!(h.token, "t");
        assert!(matches!(h.hello, Hello::ImportError { error, .. } if error == "boom"));
    }
}
