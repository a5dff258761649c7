//! What synchronous (`invoke.rs`) and asynchronous (`jobs.rs`) calls share,
//! so that both follow one rule: the call id, the body limit (413) and the
//! headers a function receives.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use graphene_core::provider::is_hop_by_hop;

use crate::error::ApiError;

/// The call's id: the caller's `X-Call-Id` when it sent one (1 to 128
/// visible ASCII characters; anything else is a 400), else a new UUID.
pub(crate) fn call_id(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get("x-call-id").map(|v| v.as_bytes()) {
        None | Some(b"") => Ok(uuid_v4()),
        Some(id) if id.len() <= 128 && id.iter().all(u8::is_ascii_graphic) => {
            Ok(String::from_utf8_lossy(id).into_owned())
        }
        Some(_) => Err(ApiError::bad_request(
            "X-Call-Id: 1 to 128 visible ASCII characters",
        )),
    }
}

pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than the limit of {limit} bytes"),
    )
}

/// The whole request body, refusing one over `limit` bytes (by its
/// `Content-Length` before reading, or as it arrives).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))
}

/// The caller's credential is for the gateway: it never reaches a
/// function, an upstream or the job queue.
pub(crate) fn is_credential(header: &str) -> bool {
    header.eq_ignore_ascii_case("authorization")
        || header.eq_ignore_ascii_case("proxy-authorization")
}

/// The headers a function receives: without hop-by-hop headers, the
/// caller's credential, or the names in `also`; with `X-Call-Id`.
pub(crate) fn forwarded(
    headers: &HeaderMap,
    also: &[&str],
    call_id: &str,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !is_hop_by_hop(k) && !is_credential(k) && !also.contains(&k) && k != "x-call-id"
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    out.push(("x-call-id".into(), call_id.to_string()));
    out
}

pub(crate) fn uuid_v4() -> String {
    use rand::RngCore;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[(x >> 4) as usize] as char);
        out.push(HEX[(x & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
        assert_eq!(u.matches('-').count(), 4);
        assert_ne!(u, uuid_v4());
    }

    #[test]
    fn one_call_id_rule() {
        let mut h = HeaderMap::new();
        assert_eq!(call_id(&h).unwrap().len(), 36);
        h.insert("x-call-id", "abc-1".parse().unwrap());
        assert_eq!(call_id(&h).unwrap(), "abc-1");
        h.insert("x-call-id", "has space".parse().unwrap());
        assert_eq!(call_id(&h).unwrap_err().status, StatusCode::BAD_REQUEST);
        h.insert("x-call-id", "x".repeat(129).parse().unwrap());
        assert!(call_id(&h).is_err());
    }

    #[test]
    fn forwards_without_credentials() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer s3cr3t".parse().unwrap());
        h.insert("connection", "close".parse().unwrap());
        h.insert("cookie", "a=b".parse().unwrap());
        h.insert("x-call-id", "old".parse().unwrap());
        h.insert("x-mine", "1".parse().unwrap());
        let out = forwarded(&h, &["cookie"], "id-1");
        assert_eq!(
            out,
            [
                ("x-mine".to_string(), "1".to_string()),
                ("x-call-id".to_string(), "id-1".to_string())
            ]
        );
    }
}
