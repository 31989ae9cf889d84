//! The frame every page shares, and the small helpers of its content: dates and durations in
//! words, downloads, the redirect after a form.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};

use crate::access::Role;

/// What the header offers a signed-in caller: the pages of its role, and a way to sign out
/// (a form, so it carries the session's form token).
#[derive(Debug, Clone, Copy)]
pub struct SignedIn<'a> {
    pub role: Role,
    pub form_token: &'a str,
}

/// After a form: 303, so that reloading the next page does not send the form again.
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The frame of every page: a skip link, the header with what this caller may open, the
/// content, and the promise that nothing is sold or shared.
fn layout(title: &str, visitor: Option<&SignedIn<'_>>, content: Markup) -> Markup {
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
                        @match visitor.map(|v| v.role) {
                            Some(Role::User) => {
                                a href="/privacy" { "Privacy settings" }
                                a href="/notice" { "Training notice" }
                            }
                            Some(Role::Admin | Role::Auditor) => {
                                a href="/dashboard" { "Dashboard" }
                            }
                            _ => {}
                        }
                        @if let Some(visitor) = visitor {
                            form method="post" action="/signout" {
                                input type="hidden" name="csrf" value=(visitor.form_token);
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

pub fn page(title: &str, visitor: Option<&SignedIn<'_>>, content: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        layout(title, visitor, content).into_string(),
    )
        .into_response()
}

/// A file to download, e.g. a receipt or the person's data.
pub fn download(file_name: &str, value: &impl serde::Serialize) -> Response {
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
pub fn date(at: custos_core::Timestamp) -> String {
    at.to_string().get(..10).unwrap_or_default().to_owned()
}

/// `2031-11-28 14:03 UTC`, from a timestamp.
pub fn date_time(at: custos_core::Timestamp) -> String {
    let text = at.to_string();
    format!(
        "{} {} UTC",
        text.get(..10).unwrap_or_default(),
        text.get(11..16).unwrap_or_default()
    )
}

/// A policy duration in words: `5 years`, `30 days`.
pub fn in_words(duration: custos_core::Duration) -> String {
    match duration {
        custos_core::Duration::Days(1) => "1 day".into(),
        custos_core::Duration::Days(n) => format!("{n} days"),
        custos_core::Duration::Years(1) => "1 year".into(),
        custos_core::Duration::Years(n) => format!("{n} years"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
