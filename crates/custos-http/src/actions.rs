//! What the API and the pages both do, written once: record a choice or that the notice was
//! shown, create an account, change its plan, delete a conversation, erase an account, ask
//! the gate of memory, run a sweep. Each write answers with what its own transaction wrote,
//! and brings the gate index up to it.

use std::sync::Arc;

use custos_core::{
    AccountId, Channel, Command, ConversationId, Gate, GateDecision, Refusal, SweepReport,
    Timestamp,
};
use custos_store::{AccountView, EntryKind, Written};

use crate::access::{Caller, Role};
use crate::gate_index::Lookup;
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
    let key = state.store.account_key(id);
    match state.gates.gate(state.store.policy(), key, state.now()) {
        Lookup::Live(gate) => Ok(Some(gate)),
        Lookup::Erased => Err(Refusal::AccountErased(id.clone()).into()),
        Lookup::Unknown => Ok(None),
    }
}

/// Gate(a, now) from memory, or the problem of an unknown or erased account.
///
/// Memory may answer `allow` and `not_applicable` at once. Before it answers `prompt` or
/// `block`, the index catches up with the store's change feed, so that a choice or a move to a
/// business plan committed through any server is never answered with a prompt (while the store
/// can't be read, memory answers). An id the index does not hold (an account made through
/// another server a moment ago) is looked up once in the store.
pub async fn gate_from_memory(state: &Arc<AppState>, id: &AccountId) -> Result<Gate, Problem> {
    match remembered_gate(state, id)? {
        Some(gate) if !asks_or_stops(gate) => return Ok(gate),
        Some(_) => {
            state.catch_up().await;
        }
        None => state.look_up_gate(id).await?,
    }
    remembered_gate(state, id)?.ok_or_else(|| Refusal::UnknownAccount(id.clone()).into())
}

/// Whether the gate asks the user (`prompt`) or stops them (`block`): the answers a choice
/// committed elsewhere would change.
fn asks_or_stops(gate: Gate) -> bool {
    matches!(gate.decision, GateDecision::Prompt | GateDecision::Block)
}

/// Refuses an unknown or erased account.
pub async fn known_live(state: &Arc<AppState>, id: &AccountId) -> Result<(), Problem> {
    gate_from_memory(state, id).await.map(|_| ())
}

/// Runs a sweep at `at` on a thread of its own at a lower CPU priority (nice 10): a sweep is
/// background work, and on a small machine it must not take the cores the gate answers on.
/// `by` is `scheduled`, or who asked; the store records the sweep for every instance's
/// dashboard, and answers `sweep-running` (409) while another instance's sweep holds the lease.
pub async fn sweep_now(
    state: &AppState,
    at: Timestamp,
    by: String,
) -> Result<SweepReport, Problem> {
    let store = Arc::clone(&state.store);
    let run = custos_store::SweepRun::new(by);
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("custos-sweep".into())
        .spawn(move || {
            lower_this_threads_priority();
            let swept = store.sweep(&run, at, custos_store::SWEEP_BATCH, &mut |_, _| {});
            let _ = done.send((run, swept));
        })
        .map_err(|_| Problem::internal())?;
    let (run, swept) = result.await.map_err(|_| Problem::internal())?;
    let report = swept.map_err(Problem::from)?;
    tracing::info!(
        %at,
        by = %run.by,
        purged = report.purged_total(),
        held_back = report.held_back,
        "sweep"
    );
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
        match sweep_now(&state, at, "scheduled".into()).await {
            Ok(_) => {}
            // Another instance sweeps this turn: one sweep at a time is the point.
            Err(problem) if problem.kind == "sweep-running" => {
                tracing::info!(%at, detail = %problem.detail, "scheduled sweep skipped");
            }
            Err(problem) => {
                let cause = problem.cause.as_deref().unwrap_or(&problem.detail);
                tracing::error!(%at, cause, "scheduled sweep failed");
            }
        }
    }
}
