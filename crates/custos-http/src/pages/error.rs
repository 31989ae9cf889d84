//! What a page answers when something is wrong.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{page, see_other};
use crate::problem::Problem;

/// What a page answers when something is wrong: a page that says what, with its status, or a
/// way to the sign-in page.
pub enum PageError {
    Redirect(String),
    Shown { status: StatusCode, message: String },
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError::Shown {
            status,
            message: message.into(),
        }
    }

    pub fn forbidden(message: &str) -> PageError {
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
