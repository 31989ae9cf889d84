//! What auditors read: the retention and consent figures (counts only) and the ledger's
//! verification.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use custos_store::{ConsentReport, RetentionReport};
use serde_json::{Value, json};

use crate::access::{Allowed, Caller, Role};
use crate::problem::Problem;
use crate::state::AppState;

type Shared = State<Arc<AppState>>;

const AUDITOR: Allowed = Allowed::roles(&[Role::Auditor]);

/// Conversations per class, purges due per week, purged per reason per day, legal holds.
pub async fn retention(
    State(state): Shared,
    caller: Caller,
) -> Result<Json<RetentionReport>, Problem> {
    AUDITOR.check(&caller, None)?;
    let at = state.now();
    Ok(Json(
        state
            .blocking(move |store| store.retention_report(at))
            .await?,
    ))
}

/// Accounts per plan and preference, choices per channel per day, undecided accounts against
/// the deadline.
pub async fn consent(State(state): Shared, caller: Caller) -> Result<Json<ConsentReport>, Problem> {
    AUDITOR.check(&caller, None)?;
    let at = state.now();
    Ok(Json(
        state
            .blocking(move |store| store.consent_report(at))
            .await?,
    ))
}

/// Recomputes every ledger chain and checkpoint.
pub async fn verify_ledger(State(state): Shared, caller: Caller) -> Result<Json<Value>, Problem> {
    AUDITOR.check(&caller, None)?;
    let report = state.blocking(|store| store.verify_ledger()).await?;
    Ok(Json(json!({
        "intact": report.problem.is_none(),
        "accounts": report.accounts,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "problem": report.problem,
    })))
}
