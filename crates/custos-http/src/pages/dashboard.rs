//! The operator dashboard (admin, auditor): how the roll-out of the choice stands by plan and
//! over time, choices by channel, retention classes and purges due, recent sweeps, exports with
//! their manifests, holds, and the ledger's verification.
//!
//! The figures come from whole-table counts and a replay of the ledger, which take seconds on
//! a large store; the page must answer in milliseconds. So they are computed on a blocking
//! thread, kept with the time they are as of, and refreshed in the background when older than
//! [`FRESH_FOR`] (or at once, with the page's Refresh button). The ledger's verification reads
//! every chain and runs on its own schedule, [`VERIFY_EVERY`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use custos_core::RetentionClass;
use custos_store::{ConsentOverTime, HoldRecord, RetentionReport};
use maud::{Markup, PreEscaped, html};
use serde_json::Value;

use super::error::PageError;
use super::layout::{date, date_time, download, in_words, page, see_other};
use super::person::CsrfForm;
use super::session::{Session, signed_in};
use crate::access::Role;
use crate::charts::{Series, stacked_bars, thousands};
use crate::figures::{Figures, Verification};
use crate::state::AppState;
use custos_store::SweepRecord;

/// Figures younger than this are shown as they are; older ones are shown while new ones are
/// computed.
const FRESH_FOR: Duration = Duration::from_secs(60);
/// How often the ledger is verified again for the dashboard.
const VERIFY_EVERY: Duration = Duration::from_secs(600);
/// How many weeks the series go back.
const WEEKS: usize = 12;

const ALLOWED: &str = "#1d4ed8";
const DECLINED: &str = "#b45309";
const UNDECIDED: &str = "#6b7280";
const CHANNEL_COLOURS: [&str; 3] = ["#1d4ed8", "#7e22ce", "#0f766e"];

/// Computes the figures, one computation at a time, and starts a verification of the ledger if
/// the last is old. Figures whose counting began after `newer_than` (any, with `None`) are
/// taken as they are if another computation made them while this one waited its turn.
async fn refresh_figures(
    state: &Arc<AppState>,
    newer_than: Option<Instant>,
) -> Result<Arc<Figures>, PageError> {
    let _one_at_a_time = state.dashboard.refreshing.lock().await;
    let made_meanwhile = state
        .dashboard
        .current()
        .filter(|f| newer_than.is_none_or(|asked| f.started >= asked));
    if let Some(figures) = made_meanwhile {
        return Ok(figures);
    }
    let as_of = state.now();
    let started = Instant::now();
    let (over_time, consent, retention) = state
        .blocking(move |store| {
            Ok((
                store.consent_over_time(as_of, WEEKS)?,
                store.consent_report(as_of)?,
                store.retention_report(as_of)?,
            ))
        })
        .await?;
    let figures = Arc::new(Figures {
        as_of,
        started,
        computed: Instant::now(),
        over_time,
        consent,
        retention,
    });
    state.dashboard.keep(Arc::clone(&figures));
    verify_if_due(state);
    Ok(figures)
}

/// Starts computing the figures in the background (at start, so that the first visit finds
/// them), unless a computation is running.
pub fn refresh_in_background(state: &Arc<AppState>) {
    let state = Arc::clone(state);
    tokio::spawn(async move {
        if state.dashboard.refreshing.try_lock().is_ok() {
            let stale = Some(Instant::now());
            if let Err(PageError::Shown { message, cause, .. }) =
                refresh_figures(&state, stale).await
            {
                let cause = cause.unwrap_or(message);
                tracing::error!(cause, "the dashboard's figures could not be computed");
            }
        }
    });
}

fn verify_if_due(state: &Arc<AppState>) {
    let due = state
        .dashboard
        .verification()
        .is_none_or(|v| v.finished.elapsed() >= VERIFY_EVERY);
    if due {
        verify_in_background(state);
    }
}

fn verify_in_background(state: &Arc<AppState>) {
    if state.dashboard.verifying.swap(true, Ordering::AcqRel) {
        return;
    }
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let as_of = state.now();
        let started = Instant::now();
        let outcome = state
            .blocking(|store| store.verify_ledger())
            .await
            .map_err(|problem| {
                let cause = problem.cause.as_deref().unwrap_or(&problem.detail);
                tracing::error!(cause, "the ledger could not be verified");
                problem.detail
            });
        let verification = Arc::new(Verification {
            as_of,
            finished: Instant::now(),
            took: started.elapsed(),
            outcome,
        });
        state.dashboard.keep_verification(verification);
        state.dashboard.verifying.store(false, Ordering::Release);
    });
}

/// How long the very first visit waits for the first figures before it shows a page that
/// says they are being counted (and reloads itself).
const FIRST_WAIT: Duration = Duration::from_secs(2);

/// The figures to show: the kept ones if fresh; otherwise the kept ones while new ones are
/// computed in the background. Before the first figures exist, `None` once [`FIRST_WAIT`] is
/// over: the page never waits on a whole-table count for longer.
async fn figures(state: &Arc<AppState>) -> Option<Arc<Figures>> {
    match state.dashboard.current() {
        Some(figures) => {
            // A manual clock may jump: figures as of another time are stale too.
            let clock_moved =
                (state.now().unix_millis() - figures.as_of.unix_millis()).abs() > 60_000;
            if figures.computed.elapsed() >= FRESH_FOR || clock_moved {
                refresh_in_background(state);
            }
            Some(figures)
        }
        None => {
            refresh_in_background(state);
            let waited = Instant::now();
            while waited.elapsed() < FIRST_WAIT {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Some(figures) = state.dashboard.current() {
                    return Some(figures);
                }
            }
            None
        }
    }
}

/// The dashboard before its first figures exist.
fn counting(session: &Session) -> Markup {
    html! {
        h1 { "Dashboard" }
        p role="status" {
            "The figures are being counted for the first time since this server started. "
            "This page reloads itself every 5 seconds until they are ready."
        }
        form method="post" action="/dashboard/refresh" {
            input type="hidden" name="csrf" value=(session.csrf());
            button type="submit" { "Wait for them here" }
        }
    }
}

fn operator(session: &Session) -> Result<(), PageError> {
    match session.caller.role {
        Role::Admin | Role::Auditor => Ok(()),
        _ => Err(PageError::forbidden(
            "The dashboard is for operators and auditors (an admin or auditor token).",
        )),
    }
}

pub async fn dashboard(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    operator(&session)?;
    let Some(figures) = figures(&state).await else {
        let mut response = page("Dashboard", Some(&session.visitor()), counting(&session));
        response.headers_mut().insert(
            axum::http::header::REFRESH,
            axum::http::HeaderValue::from_static("5"),
        );
        return Ok(response);
    };
    let verification = state.dashboard.verification();
    let sweeps = state.blocking(|store| store.recent_sweeps(20)).await?;
    let exports = state.on_exports(|exports| exports.finished()).await?;
    let holds = if session.caller.role == Role::Admin {
        Some(state.blocking(|store| store.holds()).await?)
    } else {
        None
    };
    let content = html! {
        h1 { "Dashboard" }
        form.explain method="post" action="/dashboard/refresh" {
            "Figures as of " strong { (date_time(figures.as_of)) }
            " (counted in " (format!("{:.1}", (figures.computed - figures.started).as_secs_f64())) " s). "
            input type="hidden" name="csrf" value=(session.csrf());
            button.link type="submit" { "Count again now" }
        }
        (deadline_section(&figures))
        (choices_section(&figures))
        (retention_section(&state, &figures.retention))
        (sweeps_section(&sweeps, &figures.retention))
        (exports_section(&exports))
        (holds_section(&figures.retention, holds.as_deref()))
        (ledger_section(verification.as_deref()))
    };
    Ok(page("Dashboard", Some(&session.visitor()), content))
}

/// The value at `path` (`a/b`) of a manifest, or null: a manifest is read from its file, never
/// trusted to be whole.
fn field<'a>(value: &'a Value, path: &str) -> &'a Value {
    value.pointer(&format!("/{path}")).unwrap_or(&Value::Null)
}

fn week_labels(over_time: &ConsentOverTime) -> Vec<String> {
    over_time
        .week_ends
        .iter()
        .map(|end| date(*end).get(5..).unwrap_or_default().to_owned())
        .collect()
}

fn chart(svg: String) -> Markup {
    html! { figure.chart-figure { (PreEscaped(svg)) } }
}

fn figure(label: &str, value: String) -> Markup {
    html! { div.figure { span.value { (value) } span { (label) } } }
}

fn deadline_section(figures: &Figures) -> Markup {
    let deadline = &figures.consent.deadline;
    let (undecided, passed, days_left) = (
        deadline.undecided_consumer_accounts,
        deadline.passed,
        deadline.days_left,
    );
    let consumer_total: u64 = figures
        .over_time
        .by_plan
        .iter()
        .filter_map(|(_, weeks)| weeks.last())
        .map(|counts| counts.iter().sum::<u64>())
        .sum();
    let labels = week_labels(&figures.over_time);
    let undecided_by_week: Vec<u64> = (0..labels.len())
        .map(|week| {
            figures
                .over_time
                .by_plan
                .iter()
                .map(|(_, weeks)| weeks.get(week).map_or(0, |c| c[2]))
                .sum()
        })
        .collect();
    html! {
        section aria-labelledby="deadline" {
            h2 #deadline { "Undecided against the deadline" }
            div.figures {
                (figure("consumer accounts still undecided", thousands(undecided)))
                (figure("consumer accounts in all", thousands(consumer_total)))
                (figure(
                    if passed { "the deadline has passed: undecided users are blocked until they choose" } else { "days left to choose" },
                    if passed { date(deadline.choose_by) } else { days_left.to_string() },
                ))
            }
            p.explain { "Deadline " (date_time(deadline.choose_by)) ", notice " code { (deadline.notice) } "." }
            (chart(stacked_bars(
                &format!("Undecided consumer accounts at each week's end (deadline {})", date(deadline.choose_by)),
                &labels,
                &[Series { name: "undecided".into(), color: UNDECIDED, values: undecided_by_week }],
            )))
        }
    }
}

fn choices_section(figures: &Figures) -> Markup {
    let over_time = &figures.over_time;
    let labels = week_labels(over_time);
    let business_now = over_time.business.last().copied().unwrap_or(0);
    html! {
        section aria-labelledby="by-plan" {
            h2 #by-plan { "Allowed, declined and undecided by plan" }
            p.explain { "Accounts on each consumer plan at the end of each week, replayed from the ledger." }
            div.charts {
                @for (plan, weeks) in &over_time.by_plan {
                    @let part = |slot: usize| weeks.iter().map(|c| c.get(slot).copied().unwrap_or(0)).collect::<Vec<u64>>();
                    (chart(stacked_bars(
                        &format!("Plan {plan}: choices by week"),
                        &labels,
                        &[
                            Series { name: "allowed".into(), color: ALLOWED, values: part(0) },
                            Series { name: "declined".into(), color: DECLINED, values: part(1) },
                            Series { name: "undecided".into(), color: UNDECIDED, values: part(2) },
                        ],
                    )))
                }
            }
            (share_table(over_time))
            p.explain { (thousands(business_now)) " accounts are on business plans: never asked, never used for training." }
        }
        section aria-labelledby="by-channel" {
            h2 #by-channel { "Choices by channel" }
            (chart(stacked_bars(
                "Choices made each week, by channel",
                &labels,
                &over_time
                    .choices_by_channel
                    .iter()
                    .zip(CHANNEL_COLOURS)
                    .map(|((channel, values), color)| Series { name: channel.clone(), color, values: values.clone() })
                    .collect::<Vec<_>>(),
            )))
        }
    }
}

/// The shares now, per plan, as numbers a person can read beside the charts.
fn share_table(over_time: &ConsentOverTime) -> Markup {
    let percent = |part: u64, whole: u64| {
        if whole == 0 {
            "—".to_owned()
        } else {
            format!("{:.1}%", part as f64 * 100.0 / whole as f64)
        }
    };
    html! {
        div.table-wrap {
            table #shares {
                caption.explain { "Now" }
                thead { tr {
                    th scope="col" { "Plan" } th.num scope="col" { "Accounts" }
                    th.num scope="col" { "Allowed" } th.num scope="col" { "Declined" } th.num scope="col" { "Undecided" }
                } }
                tbody {
                    @for (plan, weeks) in &over_time.by_plan {
                        @let now = weeks.last().copied().unwrap_or_default();
                        @let total: u64 = now.iter().sum();
                        tr {
                            th scope="row" { (plan) }
                            td.num { (thousands(total)) }
                            td.num { (percent(now[0], total)) }
                            td.num { (percent(now[1], total)) }
                            td.num { (percent(now[2], total)) }
                        }
                    }
                }
            }
        }
    }
}

fn retention_section(state: &AppState, retention: &RetentionReport) -> Markup {
    let class = |name: &str| {
        retention
            .conversations_by_class
            .get(name)
            .copied()
            .unwrap_or(0)
    };
    let (labels, due): (Vec<String>, Vec<u64>) = retention
        .due_by_week
        .iter()
        .map(|week| {
            let starts = date(week.week_starting);
            (starts.get(5..).unwrap_or_default().to_owned(), week.due)
        })
        .unzip();
    let kept = &state.store.policy().retention;
    let (extended, standard) = (
        RetentionClass::Extended.as_str(),
        RetentionClass::Standard.as_str(),
    );
    html! {
        section aria-labelledby="retention" {
            h2 #retention { "Retention" }
            div.figures {
                (figure(&format!("conversations kept {} ({extended})", in_words(kept.extended)), thousands(class(extended))))
                (figure(&format!("conversations kept {} ({standard})", in_words(kept.standard)), thousands(class(standard))))
                (figure("due now, waiting for the next sweep", thousands(retention.due_now)))
            }
            div.charts {
                (chart(stacked_bars(
                    "Conversations per retention class",
                    &[extended.to_owned(), standard.to_owned()],
                    &[Series { name: "conversations".into(), color: ALLOWED, values: vec![class(extended), class(standard)] }],
                )))
                (chart(stacked_bars(
                    "Purges due per week (week starting)",
                    &labels,
                    &[Series { name: "due".into(), color: DECLINED, values: due }],
                )))
            }
        }
    }
}

/// A sweep's state: done, running (its lease is held), or stopped (its instance died or it
/// failed; the next sweep finishes its job).
fn sweep_state(sweep: &SweepRecord) -> &'static str {
    match sweep.finished {
        Some(_) => "done",
        None if sweep.lease_until > crate::clock::system_now().unix_millis() => "running",
        None => "stopped",
    }
}

fn sweeps_section(sweeps: &[SweepRecord], retention: &RetentionReport) -> Markup {
    let purged_by_day: Vec<_> = retention.purged_by_day.iter().rev().take(14).collect();
    html! {
        section aria-labelledby="sweeps" {
            h2 #sweeps { "Sweeps" }
            @if sweeps.is_empty() {
                p { "No sweep has run yet." }
            } @else {
                p.explain { "Every sweep of this store, whichever instance ran it; one runs at a time." }
                div.table-wrap { table #sweep-list {
                    thead { tr { th scope="col" { "At" } th scope="col" { "By" } th scope="col" { "Instance" } th scope="col" { "State" } th.num scope="col" { "Purged" } th.num scope="col" { "Held back" } th.num scope="col" { "Took" } } }
                    tbody { @for sweep in sweeps { tr {
                        td { (date_time(sweep.at)) } td { (sweep.by) } td { (sweep.instance) }
                        td { (sweep_state(sweep)) }
                        td.num { (thousands(sweep.purged)) } td.num { (thousands(sweep.held_back)) }
                        td.num { @if let Some(finished) = sweep.finished { (format!("{:.2} s", (finished - sweep.started) as f64 / 1000.0)) } }
                    } } }
                } }
            }
            h3 { "Purged per day (from the tombstones)" }
            @if purged_by_day.is_empty() {
                p { "Nothing purged in the last 90 days." }
            } @else {
                div.table-wrap { table {
                    thead { tr { th scope="col" { "Day" } th scope="col" { "Reason" } th.num scope="col" { "Purged" } } }
                    tbody { @for day in purged_by_day { tr {
                        td { (day.day) }
                        td { (day.reason) }
                        td.num { (thousands(day.purged)) }
                    } } }
                } }
            }
        }
    }
}

fn exports_section(exports: &[Value]) -> Markup {
    html! {
        section aria-labelledby="exports" {
            h2 #exports { "Training exports" }
            @if exports.is_empty() {
                p { "No export has finished yet." }
            } @else {
                div.table-wrap { table #export-list {
                    thead { tr {
                        th scope="col" { "Snapshot" } th scope="col" { "Cutoff" } th scope="col" { "Taken" }
                        th.num scope="col" { "Included" } th.num scope="col" { "Excluded" } th.num scope="col" { "Files" }
                    } }
                    tbody { @for manifest in exports.iter().take(20) {
                        @let id = field(manifest, "snapshot_id").as_str().unwrap_or_default();
                        @let excluded: u64 = field(manifest, "conversations/excluded").as_object().map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
                        tr {
                            td { a href={ "/dashboard/exports/" (id) } download { code { (id) } } }
                            td { (field(manifest, "cutoff").as_str().unwrap_or_default()) }
                            td { (field(manifest, "snapshot_at").as_str().unwrap_or_default()) }
                            td.num { (thousands(field(manifest, "conversations/included").as_u64().unwrap_or(0))) }
                            td.num { (thousands(excluded)) }
                            td.num { (field(manifest, "files").as_array().map_or(0, Vec::len)) }
                        }
                    } }
                } }
                p.explain { "Each snapshot links to its signed manifest." }
            }
        }
    }
}

fn holds_section(retention: &RetentionReport, holds: Option<&[HoldRecord]>) -> Markup {
    let counts = retention.holds;
    html! {
        section aria-labelledby="holds" {
            h2 #holds { "Legal holds" }
            div.figures {
                (figure("active on accounts", thousands(counts.active_on_accounts)))
                (figure("active on conversations", thousands(counts.active_on_conversations)))
                (figure("released", thousands(counts.released)))
            }
            @if let Some(holds) = holds {
                @let active: Vec<_> = holds.iter().filter(|h| h.released_at.is_none()).collect();
                @if !active.is_empty() {
                    div.table-wrap { table {
                        thead { tr { th scope="col" { "Hold" } th scope="col" { "On" } th scope="col" { "Placed" } th scope="col" { "By" } th scope="col" { "Reason" } } }
                        tbody { @for hold in active { tr {
                            td { code { (hold.id.as_str()) } }
                            td { (match &hold.target {
                                custos_core::HoldTarget::Account(a) => format!("account {a}"),
                                custos_core::HoldTarget::Conversation(c) => format!("conversation {c}"),
                            }) }
                            td { (date_time(hold.placed_at)) } td { (hold.placed_by) } td { (hold.reason) }
                        } } }
                    } }
                }
            }
        }
    }
}

fn ledger_section(verification: Option<&Verification>) -> Markup {
    html! {
        section aria-labelledby="ledger" {
            h2 #ledger { "Ledger verification" }
            @match verification {
                None => p { "The ledger is being verified; reload in a moment." },
                Some(v) => @match &v.outcome {
                    Ok(report) if report.problem.is_none() => p.banner.ok #ledger-status {
                        "Intact: " (thousands(report.accounts as u64)) " accounts, "
                        (thousands(report.entries as u64)) " entries and "
                        (thousands(report.checkpoints as u64)) " signed checkpoints recomputed, as of "
                        (date_time(v.as_of)) " (" (format!("{:.1}", v.took.as_secs_f64())) " s)."
                    },
                    Ok(report) => p.banner.error #ledger-status role="alert" {
                        "Verification failed as of " (date_time(v.as_of)) ": "
                        (report.problem.as_deref().unwrap_or_default())
                    },
                    Err(error) => p.banner.error #ledger-status role="alert" {
                        "The ledger could not be read: " (error)
                    },
                }
            }
        }
    }
}

pub async fn refresh(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    sent: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    operator(&session)?;
    let sent =
        sent.map_err(|_| PageError::new(StatusCode::BAD_REQUEST, "The form was not sent whole."))?;
    session.check_form(&sent.0.csrf)?;
    // With no figures yet, the first ones will do; otherwise only ones counted from now.
    let newer_than = state.dashboard.current().map(|_| Instant::now());
    refresh_figures(&state, newer_than).await?;
    verify_in_background(&state);
    Ok(see_other("/dashboard"))
}

/// An export's signed manifest, to download.
pub async fn manifest(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    operator(&session)?;
    let wanted = id.clone();
    let manifest = state
        .on_exports(move |exports| exports.manifest_of(&wanted))
        .await?;
    Ok(download(&format!("manifest-{id}.json"), &manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chart_colour_keeps_a_contrast_of_at_least_3_to_1_on_white() {
        for colour in [ALLOWED, DECLINED, UNDECIDED]
            .into_iter()
            .chain(CHANNEL_COLOURS)
        {
            let ratio = crate::pages::layout::tests::contrast(colour, "#ffffff");
            assert!(ratio >= 3.0, "{colour}: {ratio:.2}:1");
        }
    }
}
