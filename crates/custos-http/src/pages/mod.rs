//! The pages people see, rendered on the server (issue 7): sign-in and signup, the notice,
//! privacy settings, and the operator dashboard. Templates are `maud` macros and the one
//! stylesheet is `include_str!`d, so everything is in the binary: no build step, no CDN, no
//! script.
//!
//! A page is an adapter like a route: it authenticates (the token kept in an HttpOnly,
//! SameSite=Strict cookie), checks the role, and records or reads through the same helpers as
//! the API, so every answer is the core's.

mod dashboard;
mod person;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::AppState;
use crate::access::{Caller, Role};
use crate::problem::Problem;
use crate::routes::authenticate;

pub use dashboard::{
    DashboardCache, SweepRecord, refresh_in_background as refresh_dashboard_in_background,
};

/// The cookie that keeps a signed-in person's token. HttpOnly: no script can read it;
/// SameSite=Strict: no other site's page can send it.
const SESSION_COOKIE: &str = "custos_session";

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(home))
        .route("/assets/custos.css", get(stylesheet))
        .route("/signin", get(person::signin_page).post(person::signin))
        .route("/signout", post(person::signout))
        .route("/signup", get(person::signup_page).post(person::signup))
        .route(
            "/notice",
            get(person::notice_page).post(person::notice_answer),
        )
        .route("/privacy", get(person::privacy_page))
        .route("/privacy/choice", post(person::change_choice))
        .route("/privacy/receipts/{receipt}", get(person::download_receipt))
        .route(
            "/privacy/conversations/{id}/delete",
            post(person::delete_conversation),
        )
        .route("/privacy/data", get(person::download_data))
        .route(
            "/privacy/erase",
            get(person::erase_page).post(person::erase),
        )
        .route("/dashboard", get(dashboard::dashboard))
        .route("/dashboard/refresh", post(dashboard::refresh))
        .route("/dashboard/exports/{id}", get(dashboard::manifest))
        .layer(axum::middleware::from_fn(page_headers))
}

/// What every page answer carries: no framing, no other origin's content or form targets, no
/// referrer, nothing cached (the pages show a person's own data).
async fn page_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("custos.css"),
    )
        .into_response()
}

/// A signed-in person or operator: the token (to check forms against) and who it speaks for.
pub(crate) struct Session {
    token: String,
    caller: Caller,
}

impl Session {
    /// The form field that proves a form came from one of our own pages: derived from the
    /// session's token, which no other site can read.
    fn csrf(&self) -> String {
        let hash = custos_store::token_hash(&format!("custos-pages-form:{}", self.token));
        custos_core::policy::hex(hash.get(..16).unwrap_or_default())
    }

    fn check_form(&self, sent: &str) -> Result<(), PageError> {
        if sent == self.csrf() {
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
async fn session(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, PageError> {
    let Some(token) = session_token(headers) else {
        return Ok(None);
    };
    match authenticate(state, token.clone()).await {
        Ok(caller) => Ok(Some(Session { token, caller })),
        Err(problem) if problem.status == StatusCode::UNAUTHORIZED => Ok(None),
        Err(problem) => Err(problem.into()),
    }
}

/// The session of a request, or a way to the sign-in page.
async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Session, PageError> {
    session(state, headers)
        .await?
        .ok_or_else(|| PageError::Redirect("/signin".into()))
}

/// Where a signed-in caller starts.
fn start_page(caller: &Caller) -> &'static str {
    match caller.role {
        Role::User => "/privacy",
        Role::Admin | Role::Auditor => "/dashboard",
        Role::Service | Role::Trainer => "/signin?role=other",
    }
}

async fn home(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    Ok(match session(&state, &headers).await? {
        Some(session) => see_other(&person::first_page(&state, &session.caller).await?),
        None => see_other("/signin"),
    })
}

/// After a form: 303, so that reloading the next page does not send the form again.
fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A cookie header that keeps `token` for this site only.
fn session_cookie(token: &str) -> String {
    format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000")
}

fn cleared_cookie() -> &'static str {
    "custos_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
}

/// The frame of every page: a skip link, the header with what this caller may open, the
/// content, and the promise that nothing is sold or shared.
fn layout(title: &str, session: Option<&Session>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · custos" }
                link rel="stylesheet" href="/assets/custos.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "custos" }
                    nav aria-label="Main" {
                        @match session.map(|s| s.caller.role) {
                            Some(Role::User) => {
                                a href="/privacy" { "Privacy settings" }
                                a href="/notice" { "Training notice" }
                            }
                            Some(Role::Admin | Role::Auditor) => {
                                a href="/dashboard" { "Dashboard" }
                            }
                            _ => {}
                        }
                        @if let Some(session) = session {
                            form method="post" action="/signout" {
                                input type="hidden" name="csrf" value=(session.csrf());
                                button.link type="submit" { "Sign out" }
                            }
                        } @else {
                            a href="/signin" { "Sign in" }
                            a href="/signup" { "Sign up" }
                        }
                    }
                }
                main #main tabindex="-1" { (content) }
                footer.bottom {
                    "Your data is never sold or disclosed to third parties. "
                    "Training data is stripped of names, ids, secrets and contact details first."
                }
            }
        }
    }
}

fn page(title: &str, session: Option<&Session>, content: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        layout(title, session, content).into_string(),
    )
        .into_response()
}

/// What a page answers when something is wrong: a page that says what, with its status, or a
/// way to the sign-in page.
pub(crate) enum PageError {
    Redirect(String),
    Shown { status: StatusCode, message: String },
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError::Shown {
            status,
            message: message.into(),
        }
    }

    fn forbidden(message: &str) -> PageError {
        PageError::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<Problem> for PageError {
    fn from(problem: Problem) -> PageError {
        PageError::new(problem.status, problem.detail)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Redirect(to) => see_other(&to),
            PageError::Shown { status, message } => {
                let content = html! {
                    h1 { "Something went wrong" }
                    p.banner.error role="alert" { (message) }
                    p { a href="/" { "Back to the start" } }
                };
                let mut response = page("Error", None, content);
                *response.status_mut() = status;
                response
            }
        }
    }
}

/// A file to download, e.g. a receipt or the person's data.
fn download(file_name: &str, value: &serde_json::Value) -> Response {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// `2031-11-28`, from a timestamp.
fn date(at: custos_core::Timestamp) -> String {
    at.to_string().get(..10).unwrap_or_default().to_owned()
}

/// `2031-11-28 14:03 UTC`, from a timestamp.
fn date_time(at: custos_core::Timestamp) -> String {
    let text = at.to_string();
    format!(
        "{} {} UTC",
        text.get(..10).unwrap_or_default(),
        text.get(11..16).unwrap_or_default()
    )
}

/// A policy duration in words: `5 years`, `30 days`.
fn in_words(duration: custos_core::Duration) -> String {
    match duration {
        custos_core::Duration::Days(1) => "1 day".into(),
        custos_core::Duration::Days(n) => format!("{n} days"),
        custos_core::Duration::Years(1) => "1 year".into(),
        custos_core::Duration::Years(n) => format!("{n} years"),
    }
}

#[cfg(test)]
mod tests {
    /// WCAG 2's contrast ratio of two `#rrggbb` colours.
    pub(crate) fn contrast(a: &str, b: &str) -> f64 {
        let luminance = |hex: &str| {
            let channel = |i: usize| {
                let value =
                    f64::from(u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap()) / 255.0;
                if value <= 0.039_28 {
                    value / 12.92
                } else {
                    ((value + 0.055) / 1.055).powf(2.4)
                }
            };
            0.2126 * channel(0) + 0.7152 * channel(1) + 0.0722 * channel(2)
        };
        let (x, y) = (luminance(a), luminance(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    /// The value of a colour variable of the stylesheet, e.g. `--text`.
    fn colour(name: &str) -> String {
        let css = include_str!("custos.css");
        let at = css.find(&format!("{name}:")).unwrap() + name.len() + 1;
        css[at..].trim_start()[..7].to_owned()
    }

    #[test]
    fn every_text_colour_keeps_a_contrast_of_at_least_4_5_to_1_on_its_background() {
        let white = "#ffffff".to_owned();
        for (text, background) in [
            (colour("--text"), white.clone()),
            (colour("--muted"), white.clone()),
            (colour("--link"), white.clone()),
            (colour("--accent"), white.clone()),
            // The answer buttons: white on the accent colour.
            (white.clone(), colour("--accent")),
            (colour("--warn"), colour("--warn-bg")),
            (colour("--ok"), colour("--ok-bg")),
            (colour("--bad"), white.clone()),
            (colour("--bad"), "#fdecea".to_owned()),
        ] {
            let ratio = contrast(&text, &background);
            assert!(ratio >= 4.5, "{text} on {background}: {ratio:.2}:1");
        }
    }
}
