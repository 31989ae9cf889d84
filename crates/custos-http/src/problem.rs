//! Errors as `application/problem+json` (RFC 9457), with a stable `type` slug.
//!
//! A client learns what was wrong and where; it never sees internals. Storage failures are
//! reported as a 500 with a generic detail, and the cause goes to the server's log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custos_core::Refusal;
use custos_store::StoreError;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable slug, e.g. `choice-required`.
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Serialize)]
struct Body<'a> {
    r#type: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind,
            detail: detail.into(),
        }
    }

    pub fn invalid_body(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", detail)
    }

    pub fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <token>` with a valid, unexpired token",
        )
    }

    pub fn forbidden() -> Problem {
        Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token's role may not use this route",
        )
    }

    pub fn not_found(kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, kind, detail)
    }

    pub fn internal() -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "custos could not complete this request; nothing of it was recorded. See the server log.",
        )
    }
}

impl From<Refusal> for Problem {
    fn from(refusal: Refusal) -> Problem {
        let status = match refusal {
            Refusal::UnknownAccount(_) | Refusal::UnknownConversation(_) => StatusCode::NOT_FOUND,
            Refusal::AccountErased(_) | Refusal::ConversationPurged(_) => StatusCode::NOT_FOUND,
            Refusal::AccountExists(_) | Refusal::HoldExists(_) | Refusal::HoldNotActive(_) => {
                StatusCode::CONFLICT
            }
            Refusal::ConversationDeleted(_) | Refusal::ConversationExpired { .. } => {
                StatusCode::CONFLICT
            }
            Refusal::NotOwner { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Problem::new(status, refusal.slug(), refusal.to_string())
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Problem {
        match error {
            StoreError::Refused(refusal) => refusal.into(),
            StoreError::Conflict(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many concurrent writes; try again",
            ),
            other => {
                eprintln!("custos: storage error: {other}");
                Problem::internal()
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Body {
            r#type: self.kind.to_owned(),
            title: self.status.canonical_reason().unwrap_or("error"),
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}
