//! What the API and the pages both do, written once: record a choice or that the notice was
//! shown, create an account, change its plan, delete a conversation, erase an account, ask
//! the gate of memory, run a sweep. Each write answers with what its own transaction wrote,
//! and brings the gate index up to it.

use std::sync::Arc;

use custos_core::{
    AccountId, Channel, Command, ConversationId, Gate, Refusal, SweepReport, Timestamp,
};
use custos_store::{AccountView, EntryKind, Written};

use crate::access::{Caller, Role};
use crate::gate_index::Lookup;
use crate::jobs::SweepRecord;
use crate::problem::Problem;
use crate::state::AppState;

/// Applies `command` now as `actor` and keeps the gate index in step with what it wrote.
async fn write(state: &AppState, command: Command, actor: String) -> Result<Written, Problem> {
    let at = state.now();
    let written = state
        .blocking(move |store| store.apply(at, &command, &actor))
        .await?;
    state.remember(&written);
    Ok(written)
}

/// The account as a write left it; every write to a live account's ledger answers one.
fn account_of(written: Written) -> Result<AccountView, Problem> {
    written.account.ok_or_else(Problem::internal)
}

/// Creates an account (with its signup choice, if any) and answers it as created.
pub async fn create_account(
    state: &AppState,
    actor: String,
    id: AccountId,
    plan: String,
    choice: Option<(bool, Channel)>,
) -> Result<AccountView, Problem> {
    let command = Command::CreateAccount {
        account: id,
        plan,
        choice,
    };
    account_of(write(state, command, actor).await?)
}

/// Moves an account to another plan and answers it as moved.
pub async fn change_plan(
    state: &AppState,
    caller: &Caller,
    id: AccountId,
    plan: String,
) -> Result<AccountView, Problem> {
    let command = Command::ChangePlan { account: id, plan };
    account_of(write(state, command, caller.actor()).await?)
}

/// Records a training choice; answers the account as this choice left it and the id of this
/// choice's receipt (the hash of the ledger entry it wrote).
pub async fn record_choice(
    state: &AppState,
    caller: &Caller,
    id: AccountId,
    allowed: bool,
    channel: Channel,
) -> Result<(AccountView, String), Problem> {
    let command = Command::Choose {
        account: id,
        allowed,
        channel,
    };
    let written = write(state, command, caller.actor()).await?;
    let receipt = written
        .entries
        .iter()
        .find(|entry| entry.kind == EntryKind::Choice)
        .map(|entry| custos_core::policy::hex(&entry.hash))
        .ok_or_else(Problem::internal)?;
    Ok((account_of(written)?, receipt))
}

/// Records that the notice was shown and the user chose "Not now".
pub async fn record_notice_shown(
    state: &AppState,
    caller: &Caller,
    id: AccountId,
) -> Result<(), Problem> {
    write(state, Command::NoticeShown { account: id }, caller.actor()).await?;
    Ok(())
}

/// Deletes a conversation (R7) for a caller that may: the service, an admin, or the user who
/// owns it. Another user's conversation looks the same as none.
pub async fn delete_conversation_as(
    state: &AppState,
    caller: &Caller,
    id: ConversationId,
) -> Result<(), Problem> {
    let at = state.now();
    let actor = caller.actor();
    let owner_must_be = match caller.role {
        Role::Service | Role::Admin => None,
        Role::User => Some(caller.account.clone().ok_or_else(Problem::forbidden)?),
        Role::Trainer | Role::Auditor => return Err(Problem::forbidden()),
    };
    state
        .blocking(move |store| {
            if let Some(owner) = owner_must_be {
                // A user may delete only its own conversations; another's looks like none.
                if store.conversation_owner(&id)? != Some(owner) {
                    return Err(Refusal::UnknownConversation(id).into());
                }
            }
            store.apply(
                at,
                &Command::DeleteConversation { conversation: id },
                &actor,
            )
        })
        .await?;
    Ok(())
}

/// Erases an account (R14) for a caller already admitted for it.
pub async fn erase_account_as(
    state: &AppState,
    caller: &Caller,
    id: AccountId,
) -> Result<(), Problem> {
    write(state, Command::EraseAccount { account: id }, caller.actor()).await?;
    Ok(())
}

/// Gate(a, now) from memory, or the problem of an unknown or erased account.
fn remembered_gate(state: &AppState, id: &AccountId) -> Result<Option<Gate>, Problem> {
    match state.gates.gate(state.store.policy(), id, state.now()) {
        Lookup::Live(gate) => Ok(Some(gate)),
        Lookup::Erased => Err(Refusal::AccountErased(id.clone()).into()),
        Lookup::Unknown => Ok(None),
    }
}

/// Gate(a, now) from memory, or the problem of an unknown or erased account. An id the index
/// does not hold is looked up once in the store: an account erased before this server started
/// is stored only under its pseudonym, and is remembered as erased once found.
pub async fn gate_from_memory(state: &Arc<AppState>, id: &AccountId) -> Result<Gate, Problem> {
    if let Some(gate) = remembered_gate(state, id)? {
        return Ok(gate);
    }
    state.look_up_gate(id).await?;
    remembered_gate(state, id)?.ok_or_else(|| Refusal::UnknownAccount(id.clone()).into())
}

/// Refuses an unknown or erased account.
pub async fn known_live(state: &Arc<AppState>, id: &AccountId) -> Result<(), Problem> {
    gate_from_memory(state, id).await.map(|_| ())
}

/// Runs a sweep at `at` on a thread of its own at a lower CPU priority (nice 10): a sweep is
/// background work, and on a small machine it must not take the cores the gate answers on.
/// Each sweep is remembered for the dashboard, with `by` (`scheduled`, or who asked).
pub async fn sweep_now(
    state: &AppState,
    at: Timestamp,
    by: String,
) -> Result<SweepReport, Problem> {
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
    tracing::info!(
        %at,
        by = %by,
        purged = report.purged_total(),
        held_back = report.held_back,
        "sweep"
    );
    state.sweeps.record(SweepRecord {
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

/// Sweeps every `interval`, for as long as the service runs. The first sweep runs one interval
/// after start.
pub async fn sweep_periodically(state: Arc<AppState>, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let at = state.now();
        if let Err(problem) = sweep_now(&state, at, "scheduled".into()).await {
            let cause = problem.cause.as_deref().unwrap_or(&problem.detail);
            tracing::error!(%at, cause, "scheduled sweep failed");
        }
    }
}
