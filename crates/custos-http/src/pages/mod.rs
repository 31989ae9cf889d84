//! The pages people see, rendered on the server: sign-in and signup, the notice, privacy
//! settings, and the operator dashboard. Templates are `maud` macros and the one stylesheet is
//! `include_str!`d, so everything is in the binary: no build step, no CDN, no script.
//!
//! A page is an adapter like a route: it authenticates (the session cookie), checks the role,
//! and records or reads through the same actions as the API, so every answer is the core's.
//! They are not API routes, so the OpenAPI document does not list them.

mod dashboard;
mod error;
mod layout;
mod person;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use error::PageError;
use layout::see_other;
use session::session;

use crate::state::AppState;

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

async fn home(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    Ok(match session(&state, &headers).await? {
        Some(session) => see_other(&person::first_page(&state, &session.caller).await?),
        None => see_other("/signin"),
    })
}
