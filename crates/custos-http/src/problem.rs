//! Errors as `application/problem+json` (RFC 9457), with a stable `type` slug.
//!
//! A client learns what was wrong and where; it never sees internals. Storage failures are
//! reported as a 500 with a generic detail; the cause rides along inside the answer (never in
//! its body) to the middleware, which logs it with the request's id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custos_core::Refusal;
use custos_export::ExportError;
use custos_store::StoreError;
use serde::Serialize;

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable slug, e.g. `choice-required`.
    pub kind: &'static str,
    pub detail: String,
    /// What went wrong inside, for the log only; never sent.
    pub cause: Option<String>,
    /// Seconds after which the same request may succeed (sent as `Retry-After`).
    pub retry_after: Option<u32>,
}

/// The cause of an internal failure, carried in an answer's extensions to the log.
#[derive(Debug, Clone)]
pub struct Cause(pub String);

/// A problem as it is sent: the body of an error answer, or one event's outcome in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProblemBody<'a> {
    pub r#type: &'a str,
    pub title: &'a str,
    pub status: u16,
    pub detail: &'a str,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind,
            detail: detail.into(),
            cause: None,
            retry_after: None,
        }
    }

    /// A 503 that says when to try again: nothing of the request was recorded.
    pub fn unavailable(kind: &'static str, detail: impl Into<String>, retry_after: u32) -> Problem {
        Problem {
            retry_after: Some(retry_after),
            ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, kind, detail)
        }
    }

    /// An internal failure, whose cause goes to the log (with the request's id) and nowhere
    /// else.
    pub fn internal_because(cause: impl std::fmt::Display) -> Problem {
        Problem {
            cause: Some(cause.to_string()),
            ..Problem::internal()
        }
    }

    pub fn invalid_body(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", detail)
    }

    pub fn invalid_id(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid-id", detail)
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

    /// The body this problem is sent as.
    pub fn body(&self) -> ProblemBody<'_> {
        ProblemBody {
            r#type: self.kind,
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
        }
    }
}

impl From<Refusal> for Problem {
    fn from(refusal: Refusal) -> Problem {
        // Every refusal is named: a new one must be given its status here.
        let status = match refusal {
            Refusal::UnknownAccount(_)
            | Refusal::UnknownConversation(_)
            | Refusal::AccountErased(_)
            | Refusal::ConversationPurged(_) => StatusCode::NOT_FOUND,
            Refusal::AccountExists(_)
            | Refusal::HoldExists(_)
            | Refusal::HoldNotActive(_)
            | Refusal::ConversationDeleted(_)
            | Refusal::ConversationExpired { .. } => StatusCode::CONFLICT,
            Refusal::NotOwner { .. } => StatusCode::FORBIDDEN,
            Refusal::UnknownPlan(_)
            | Refusal::ChoiceRequired { .. }
            | Refusal::NoChoiceOnBusinessPlan { .. }
            | Refusal::BeforeAccountCreated { .. }
            | Refusal::NulInText { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Problem::new(status, refusal.slug(), refusal.to_string())
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Problem {
        match error {
            StoreError::Refused(refusal) => refusal.into(),
            StoreError::Conflict(_) => {
                Problem::unavailable("busy", "too many concurrent writes; try again", 1)
            }
            StoreError::SweepRunning { .. } => Problem::new(
                StatusCode::CONFLICT,
                "sweep-running",
                format!("{error}; one sweep runs at a time, across every instance"),
            ),
            StoreError::Unavailable(cause) => Problem {
                cause: Some(format!("storage: {cause}")),
                ..Problem::unavailable(
                    "store-unavailable",
                    "the database can't be reached just now; nothing of this request was recorded. Try again",
                    2,
                )
            },
            other => Problem::internal_because(format!("storage: {other}")),
        }
    }
}

impl From<ExportError> for Problem {
    fn from(error: ExportError) -> Problem {
        let kind = match &error {
            ExportError::Purpose(_) => "purpose-refused",
            ExportError::Destination { .. } => "destination-refused",
            ExportError::CutoffInFuture { .. } => "cutoff-in-future",
            ExportError::UnknownSnapshot(_) => {
                return Problem::not_found("unknown-export", error.to_string());
            }
            ExportError::Incomplete(_) => {
                return Problem::new(StatusCode::CONFLICT, "export-incomplete", error.to_string());
            }
            ExportError::Store(_)
            | ExportError::Stopped
            | ExportError::Io { .. }
            | ExportError::Parquet { .. }
            | ExportError::Invalid { .. }
            | ExportError::Internal(_) => {
                return Problem::internal_because(format!("export: {error}"));
            }
        };
        // The destination's full path names the server's folders; the refusal says only why.
        let detail = match &error {
            ExportError::Destination { why, .. } => format!(
                "the destination is refused: {why}. Exports are written only inside the configured export root (R9)"
            ),
            other => other.to_string(),
        };
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, kind, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(Cause(cause));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_failure_keeps_its_cause_out_of_the_body_and_in_the_answer_for_the_log() {
        let problem = Problem::from(StoreError::Database("disk on fire at /var/lib/x".into()));
        assert_eq!(problem.status, StatusCode::INTERNAL_SERVER_ERROR);
        let response = problem.into_response();
        let cause = response.extensions().get::<Cause>().map(|c| c.0.clone());
        assert_eq!(
            cause.as_deref(),
            Some("storage: database error: disk on fire at /var/lib/x")
        );
        let body = serde_json::to_string(&Problem::internal().body()).unwrap_or_default();
        assert!(
            !body.contains("disk") && !body.contains("/var/lib"),
            "{body}"
        );
        // A refusal is the caller's to read, and no cause of the log's.
        let refused = Problem::from(StoreError::Refused(Refusal::UnknownAccount(
            custos_core::AccountId::parse("a").unwrap_or_else(|_| unreachable!()),
        )));
        assert_eq!(refused.cause, None);
        assert_eq!(refused.kind, "unknown-account");
    }
}
