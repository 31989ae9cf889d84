//! What a page answers when something is wrong.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{page, see_other};
use crate::problem::{Cause, Problem};

/// What a page answers when something is wrong: a page that says what, with its status, or a
/// way to the sign-in page.
pub enum PageError {
    Redirect(String),
    Shown {
        status: StatusCode,
        message: String,
        /// What went wrong inside, for the log only (see `Problem::cause`).
        cause: Option<String>,
    },
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError::Shown {
            status,
            message: message.into(),
            cause: None,
        }
    }

    pub fn forbidden(message: &str) -> PageError {
        PageError::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<Problem> for PageError {
    fn from(problem: Problem) -> PageError {
        PageError::Shown {
            status: problem.status,
            message: problem.detail,
            cause: problem.cause,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Redirect(to) => see_other(&to),
            PageError::Shown {
                status,
                message,
                cause,
            } => {
                let content = html! {
                    h1 { "Something went wrong" }
                    p.banner.error role="alert" { (message) }
                    p { a href="/" { "Back to the start" } }
                };
                let mut response = page("Error", None, content);
                *response.status_mut() = status;
                if let Some(cause) = cause {
                    response.extensions_mut().insert(Cause(cause));
                }
                response
            }
        }
    }
}
