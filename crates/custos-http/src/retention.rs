//! Routes of retention and data-subject rights: a conversation's status, sweeps, legal holds,
//! and account erasure. Every decision is the core's, through the store.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use custos_core::{AccountId, Command, HoldId, HoldTarget};
use custos_store::HoldRecord;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::access::{Allowed, Caller, Role};
use crate::problem::Problem;
use crate::routes::{account_id, admit, admit_account, blocking, body, caller, conversation_id};

type Shared = State<Arc<AppState>>;

/// Runs a sweep at `at` on a thread of its own at a lower CPU priority (nice 10): a sweep is
/// background work, and on a small machine it must not take the cores the gate answers on.
/// Each sweep is listed on the dashboard, with `by` (`scheduled`, or who asked).
async fn sweep_in_background(
    state: &AppState,
    at: custos_core::Timestamp,
    by: String,
) -> Result<custos_core::SweepReport, Problem> {
    let started = std::time::Instant::now();
    let store = Arc::clone(&state.store);
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("custos-sweep".into())
        .spawn(move || {
            lower_this_threads_priority();
            let _ = done.send(store.sweep(at, custos_store::SWEEP_BATCH, &mut |_, _| {}));
        })
        .map_err(|_| Problem::internal())?;
    let report = result
        .await
        .map_err(|_| Problem::internal())?
        .map_err(Problem::from)?;
    state.dashboard.record_sweep(crate::pages::SweepRecord {
        at,
        by,
        purged: report.purged_total(),
        held_back: report.held_back,
        took: started.elapsed(),
    });
    Ok(report)
}

/// On Linux each thread has its own nice value: this sets the calling thread's to 10. The
/// thread is the sweep's own and ends with it, so nothing else runs at the lower priority.
#[allow(
    unsafe_code,
    reason = "the one libc call that lowers a thread's CPU priority"
)]
fn lower_this_threads_priority() {
    // SAFETY: setpriority takes plain integers and touches no memory of ours; `who = 0` with
    // PRIO_PROCESS names the calling thread on Linux. A failure leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Sweeps every `interval`, for as long as the service runs, and logs what each sweep did. The
/// first sweep runs one interval after start.
pub async fn sweep_periodically(state: Arc<AppState>, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let at = state.now();
        match sweep_in_background(&state, at, "scheduled".into()).await {
            Ok(report) => eprintln!(
                "custos: scheduled sweep at {at}: purged {}, held back {}",
                report.purged_total(),
                report.held_back
            ),
            Err(problem) => eprintln!("custos: scheduled sweep at {at} failed: {}", problem.detail),
        }
    }
}

/// API.md §1's `conversation` answer, as of the service's clock: metadata only, never content.
pub async fn conversation_status(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let id = conversation_id(&id)?;
    let caller = caller(&state, &headers).await?;
    let at = state.now();
    let lookup = id.clone();
    let (owner, status) = blocking(&state, move |store| {
        let owner = store.conversation_owner(&lookup)?;
        let status = match owner {
            Some(_) => Some(store.conversation_status(&lookup, at)?),
            None => None,
        };
        Ok((owner, status))
    })
    .await?;
    // A user asking about another's conversation learns no more than about an unknown one.
    let allowed = Allowed::and_user_self(&[Role::Service, Role::Auditor]);
    let unknown = || Problem::from(custos_core::Refusal::UnknownConversation(id.clone()));
    let (Some(owner), Some(status)) = (owner, status) else {
        allowed.check(&caller, None).map_err(|_| unknown())?;
        return Err(unknown());
    };
    allowed.check(&caller, Some(&owner)).map_err(|problem| {
        if caller.role == Role::User {
            unknown()
        } else {
            problem
        }
    })?;
    Ok(Json(json!({
        "id": id.as_str(),
        "exists": status.exists,
        "visible": status.visible,
        "retention_class": status.expiry.map(|e| e.class.as_str()),
        "expires_at": status.expiry.map(|e| e.at.to_string()),
        "held": status.held,
        "eligible": status.eligibility.is_eligible(),
        "reason": status.eligibility.as_str(),
    })))
}

/// Runs a retention sweep now and reports what it did.
pub async fn run_sweep(State(state): Shared, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    let caller = admit(&state, &headers, Allowed::roles(&[]), None).await?;
    let at = state.now();
    let report = sweep_in_background(&state, at, caller.actor()).await?;
    eprintln!(
        "custos: sweep by {} at {at}: purged {}, held back {}",
        caller.actor(),
        report.purged_total(),
        report.held_back
    );
    Ok(Json(json!({
        "at": at.to_string(),
        "purged": report.purged_total(),
        "purged_by_reason": report.purged,
        "held_back": report.held_back,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewHold {
    id: String,
    account: Option<String>,
    conversation: Option<String>,
    reason: String,
}

pub fn hold_json(hold: &HoldRecord) -> Value {
    let (account, conversation) = match &hold.target {
        HoldTarget::Account(account) => (Some(account.as_str()), None),
        HoldTarget::Conversation(conversation) => (None, Some(conversation.as_str())),
    };
    json!({
        "id": hold.id.as_str(),
        "account": account,
        "conversation": conversation,
        "reason": hold.reason,
        "placed_at": hold.placed_at.to_string(),
        "placed_by": hold.placed_by,
        "released_at": hold.released_at.map(|t| t.to_string()),
        "released_by": hold.released_by,
        "active": hold.released_at.is_none(),
    })
}

fn hold_id(text: &str) -> Result<HoldId, Problem> {
    HoldId::parse(text)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid-id", e.to_string()))
}

/// Places a legal hold on an account or a conversation (R13), with its reason.
pub async fn place_hold(
    State(state): Shared,
    headers: HeaderMap,
    payload: Result<Json<NewHold>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let caller = admit(&state, &headers, Allowed::roles(&[]), None).await?;
    let request = body(payload)?;
    let id =
        hold_id(&request.id).map_err(|p| Problem::invalid_body(format!("`id`: {}", p.detail)))?;
    let target = match (&request.account, &request.conversation) {
        (Some(account), None) => HoldTarget::Account(
            account_id(account)
                .map_err(|p| Problem::invalid_body(format!("`account`: {}", p.detail)))?,
        ),
        (None, Some(conversation)) => HoldTarget::Conversation(
            conversation_id(conversation)
                .map_err(|p| Problem::invalid_body(format!("`conversation`: {}", p.detail)))?,
        ),
        _ => {
            return Err(Problem::invalid_body(
                "a hold names exactly one of `account` and `conversation`",
            ));
        }
    };
    if request.reason.trim().is_empty() {
        return Err(Problem::invalid_body(
            "`reason`: say why the hold is placed (it is kept in the audit trail)",
        ));
    }
    let at = state.now();
    let actor = caller.actor();
    let wanted = id.clone();
    let hold = blocking(&state, move |store| {
        store.place_hold(at, &id, &target, request.reason.trim(), &actor)?;
        Ok(store.holds()?.into_iter().find(|h| h.id == id))
    })
    .await?
    .ok_or_else(|| Problem::not_found("unknown-hold", format!("hold `{wanted}` was not kept")))?;
    Ok((StatusCode::CREATED, Json(hold_json(&hold))))
}

/// Every legal hold, active or released, with its audit trail.
pub async fn list_holds(State(state): Shared, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    admit(&state, &headers, Allowed::roles(&[]), None).await?;
    let holds = blocking(&state, |store| store.holds()).await?;
    Ok(Json(
        json!({"holds": holds.iter().map(hold_json).collect::<Vec<_>>()}),
    ))
}

/// Releases an active legal hold; what it held is purged by the next sweep once expired.
pub async fn release_hold(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let caller = admit(&state, &headers, Allowed::roles(&[]), None).await?;
    let id = hold_id(&id)?;
    let at = state.now();
    let actor = caller.actor();
    let wanted = id.clone();
    let hold = blocking(&state, move |store| {
        store.release_hold(at, &id, &actor)?;
        Ok(store.holds()?.into_iter().find(|h| h.id == id))
    })
    .await?
    .ok_or_else(|| Problem::not_found("unknown-hold", format!("no hold `{wanted}`")))?;
    Ok(Json(hold_json(&hold)))
}

/// Erases an account (R14): everything is hidden at once and the next sweep purges what no
/// hold covers. The gate and the account's routes then answer 404 `account-erased`.
pub async fn erase_account(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let (id, caller) = admit_account(&state, &headers, &id, Allowed::and_user_self(&[])).await?;
    erase_account_as(&state, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Erases an account (R14) for a caller already admitted for it.
pub(crate) async fn erase_account_as(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &AccountId,
) -> Result<(), Problem> {
    let at = state.now();
    let actor = caller.actor();
    let account = id.clone();
    blocking(state, move |store| {
        store.apply(at, &Command::EraseAccount { account }, &actor)
    })
    .await?;
    state.refresh_gate_blocking(id).await
}

/// R14 access and portability: everything held about the account, as one JSON document.
pub async fn account_data(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (id, _) = admit_account(&state, &headers, &id, Allowed::and_user_self(&[])).await?;
    let at = state.now();
    let document = blocking(&state, move |store| store.access_document(&id, at)).await?;
    Ok(Json(document))
}

/// Retention figures: conversations per class, purges due per week, purged per reason per
/// day, legal holds. Counts only.
pub async fn retention_report(
    State(state): Shared,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    admit(&state, &headers, Allowed::roles(&[Role::Auditor]), None).await?;
    let at = state.now();
    Ok(Json(
        blocking(&state, move |store| store.retention_report(at)).await?,
    ))
}

/// Consent figures: accounts per plan and preference, choices per channel per day, undecided
/// accounts against the deadline. Counts only.
pub async fn consent_report(
    State(state): Shared,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    admit(&state, &headers, Allowed::roles(&[Role::Auditor]), None).await?;
    let at = state.now();
    Ok(Json(
        blocking(&state, move |store| store.consent_report(at)).await?,
    ))
}
