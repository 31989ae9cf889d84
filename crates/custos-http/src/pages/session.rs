//! A signed-in person's or operator's session: the token in an `HttpOnly`, `SameSite=Strict`
//! cookie, authenticated like a bearer token, and the form token every POST must carry.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::PageError;
use super::layout::SignedIn;
use crate::access::{Caller, Role};
use crate::state::AppState;

/// The cookie that keeps a signed-in person's token. HttpOnly: no script can read it;
/// SameSite=Strict: no other site's page can send it.
const SESSION_COOKIE: &str = "custos_session";

/// How long a session cookie lasts in the browser: 30 days.
const SESSION_SECONDS: u32 = 30 * 86_400;

/// A signed-in person or operator: the token (to check forms against) and who it speaks for.
pub struct Session {
    pub token: String,
    pub caller: Caller,
    form_token: String,
}

impl Session {
    fn new(token: String, caller: Caller) -> Session {
        // Derived from the session's token, which no other site can read: a form that carries
        // it came from one of our own pages.
        let hash = custos_store::token_hash(&format!("custos-pages-form:{token}"));
        let form_token = custos_core::policy::hex(hash.get(..16).unwrap_or_default());
        Session {
            token,
            caller,
            form_token,
        }
    }

    /// The form field every form of this session carries.
    pub fn csrf(&self) -> &str {
        &self.form_token
    }

    /// What the pages' header offers this session.
    pub fn visitor(&self) -> SignedIn<'_> {
        SignedIn {
            role: self.caller.role,
            form_token: &self.form_token,
        }
    }

    /// Refuses a form that does not carry this session's form token. Compared in constant
    /// time, so that no timing tells how much of a guess was right.
    pub fn check_form(&self, sent: &str) -> Result<(), PageError> {
        if bool::from(sent.as_bytes().ct_eq(self.form_token.as_bytes())) {
            Ok(())
        } else {
            Err(PageError::new(
                StatusCode::FORBIDDEN,
                "This form is out of date. Go back, reload the page and try again.",
            ))
        }
    }
}

fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// The session of a request, if its cookie holds a token that is still valid.
pub async fn session(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, PageError> {
    let Some(token) = session_token(headers) else {
        return Ok(None);
    };
    match state.authenticate(token.clone()).await {
        Ok(caller) => Ok(Some(Session::new(token, caller))),
        Err(problem) if problem.status == StatusCode::UNAUTHORIZED => Ok(None),
        Err(problem) => Err(problem.into()),
    }
}

/// The session of a request, or a way to the sign-in page.
pub async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Session, PageError> {
    session(state, headers)
        .await?
        .ok_or_else(|| PageError::Redirect("/signin".into()))
}

/// Where a signed-in caller starts.
pub fn start_page(caller: &Caller) -> &'static str {
    match caller.role {
        Role::User => "/privacy",
        Role::Admin | Role::Auditor => "/dashboard",
        Role::Service | Role::Trainer => "/signin?role=other",
    }
}

/// Keeps `token` in the browser for this site only.
pub fn keep_session(response: &mut Response, token: &str) {
    set_cookie(
        response,
        &format!(
            "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}"
        ),
    );
}

/// Makes the browser forget the session.
pub fn end_session(response: &mut Response) {
    set_cookie(
        response,
        &format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = header::HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// A form as sent, or a page that says it was not filled in as expected.
pub fn form<T>(sent: Result<Form<T>, FormRejection>) -> Result<T, PageError> {
    sent.map(|Form(value)| value).map_err(|rejection| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "The form was not filled in as expected: {}",
                rejection.body_text()
            ),
        )
    })
}
