//! One error type for every route: client mistakes get a precise 4xx
//! message; internal faults get a generic 500 and a log line with the cause.
//! The `X-Graphene-Layer` header names the layer that failed (gateway,
//! runtime, or the function itself).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use graphene_core::provider::ProviderError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub layer: &'static str,
    /// Seconds, sent as `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            layer: "gateway",
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn no_function(name: &str, namespace: &str) -> Self {
        Self::not_found(format!(
            "function {name} not found in namespace {namespace}"
        ))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the server log has the cause",
        )
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let layer = match &e {
            ProviderError::Internal(cause) => return ApiError::internal(cause),
            ProviderError::Unavailable(_)
            | ProviderError::Upstream(_)
            | ProviderError::Overloaded(_, _) => "runtime",
            ProviderError::Timeout(_) => "function",
            _ => "gateway",
        };
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status,
            message: e.to_string(),
            layer,
            retry_after: match e {
                ProviderError::Overloaded(_, seconds) => Some(seconds),
                _ => None,
            },
        }
    }
}

impl From<graphene_core::store::StoreError> for ApiError {
    fn from(e: graphene_core::store::StoreError) -> Self {
        use graphene_core::store::StoreError;
        match e {
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            StoreError::Invalid(m) => ApiError::bad_request(m),
        }
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(format!("state database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.message;
        body.push('\n');
        let mut r = (self.status, body).into_response();
        r.headers_mut()
            .insert("x-graphene-layer", HeaderValue::from_static(self.layer));
        if self.status == axum::http::StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"graphene\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
