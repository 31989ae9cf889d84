//! Extractors: who is calling, the path's ids, the JSON body. Each refuses with the same
//! problem+json as every other error, and says what was wrong and where.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use custos_core::{AccountId, ConversationId, HoldId};
use serde::de::DeserializeOwned;

use crate::access::{Allowed, Caller, bearer};
use crate::problem::Problem;
use crate::state::AppState;

/// The caller of a request, authenticated by its bearer token (401 without a valid one).
impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Caller, Problem> {
        let token = bearer(&parts.headers)
            .ok_or_else(Problem::unauthorized)?
            .to_owned();
        state.authenticate(token).await
    }
}

/// A JSON body, or the problem that says what was wrong with it and where: 400 when it is not
/// JSON, 415 when it is not sent as JSON, 413 when too large, 422 when it is JSON of the wrong
/// shape.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<ApiJson<T>, Problem> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    let status = rejection.status();
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        _ => "invalid-body",
    };
    Problem::new(status, kind, rejection.body_text())
}

/// The path's parameters, or a 400 that says which could not be read (a percent-encoding that
/// is not UTF-8, say).
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<ApiPath<T>, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_problem(&rejection)),
        }
    }
}

fn path_problem(rejection: &PathRejection) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-path",
        rejection.body_text(),
    )
}

/// The account a route's path names, if `caller` may reach it there: a 400 for an id of the
/// wrong syntax, a 403 for a caller the route does not allow.
pub fn admitted_account(caller: &Caller, id: &str, allowed: Allowed) -> Result<AccountId, Problem> {
    let id = account_id(id)?;
    allowed.check(caller, Some(&id))?;
    Ok(id)
}

/// An account id from outside (docs/POLICY.md, Terms), or a 400 that says why not.
pub fn account_id(text: &str) -> Result<AccountId, Problem> {
    AccountId::parse(text).map_err(|e| Problem::invalid_id(e.to_string()))
}

pub fn conversation_id(text: &str) -> Result<ConversationId, Problem> {
    ConversationId::parse(text).map_err(|e| Problem::invalid_id(e.to_string()))
}

pub fn hold_id(text: &str) -> Result<HoldId, Problem> {
    HoldId::parse(text).map_err(|e| Problem::invalid_id(e.to_string()))
}
