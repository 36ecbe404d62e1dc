//! The HTTP error: `{"error":{"code":"…","message":"…"}}` with a fitting
//! status, and how domain and commit errors become one.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::domain::DomainError;
use crate::tenant::CommitError;

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let msg = e.to_string();
        match e {
            DomainError::Invalid(_) => Self::bad_request("invalid", msg),
            DomainError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", msg),
            DomainError::Exists(_) => Self::new(StatusCode::CONFLICT, "exists", msg),
            DomainError::Transition { .. } => {
                Self::new(StatusCode::CONFLICT, "invalid_transition", msg)
            }
            DomainError::Forbidden(_) => Self::forbidden(msg),
        }
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Domain(d) => d.into(),
            CommitError::Seal(e) => {
                tracing::error!(error = %e, "sealing an event failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "sealing failed",
                )
            }
            CommitError::Conflict(_) | CommitError::Contended(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "contended",
                "other nodes kept changing this tenant's log at the same moment; retry",
            ),
            CommitError::Log(m) => {
                tracing::error!(error = %m, "a change could not be made durable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log_unavailable",
                    "the change could not be made durable",
                )
            }
        }
    }
}
