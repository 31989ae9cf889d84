//! A person's pages: sign-in, signup, the notice, and privacy settings (the choice, its history
//! and receipts, the conversations, download my data, erase my account).

use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use custos_core::{
    AccountId, Channel, EligibilityReason, GateDecision, GateReason, Policy, Preference,
};
use custos_store::{AccountView, ConversationSummary, Entry, EntryKind};
use maud::{Markup, html};
use serde::Deserialize;

use super::error::PageError;
use super::layout::{date, date_time, download, in_words, page, see_other};
use super::session::{Session, end_session, form, keep_session, session, signed_in, start_page};
use crate::access::{Caller, Role};
use crate::actions;
use crate::extract::{account_id, conversation_id};
use crate::state::AppState;

type Shared = State<Arc<AppState>>;

/// How long a token made at signup lasts.
const SIGNUP_TOKEN_LASTS: custos_core::Duration = custos_core::Duration::Days(30);

/// The account of a person's session; operators have none and are sent to their own page.
fn own_account(session: &Session) -> Result<AccountId, PageError> {
    match (&session.caller.role, &session.caller.account) {
        (Role::User, Some(account)) => Ok(account.clone()),
        _ => Err(PageError::forbidden(
            "These pages show a person's own settings, and this token is not a person's. Operators: open the dashboard.",
        )),
    }
}

// ---- sign-in ----

#[derive(Debug, Deserialize)]
pub struct SigninQuery {
    role: Option<String>,
}

pub async fn signin_page(Query(query): Query<SigninQuery>) -> Response {
    let notice = (query.role.as_deref() == Some("other"))
        .then_some("That token is for a service or a training pipeline, which have no pages here.");
    signin_form(notice, StatusCode::OK)
}

fn signin_form(error: Option<&str>, status: StatusCode) -> Response {
    let content = html! {
        h1 { "Sign in" }
        @if let Some(error) = error {
            p.banner.error role="alert" { (error) }
        }
        form method="post" action="/signin" {
            p {
                label for="token" { "Access token" }
                br;
                input #token type="password" name="token" autocomplete="off" required;
            }
            p.explain {
                "Paste the token you were given. It is kept in a cookie that only this site can read, "
                "and forgotten when you sign out."
            }
            button type="submit" { "Sign in" }
        }
        p { "New here? " a href="/signup" { "Create an account" } }
    };
    let mut response = page("Sign in", None, content);
    *response.status_mut() = status;
    response
}

#[derive(Debug, Deserialize)]
pub struct SigninForm {
    token: String,
}

pub async fn signin(
    State(state): Shared,
    sent: Result<Form<SigninForm>, FormRejection>,
) -> Result<Response, PageError> {
    let token = form(sent)?.token.trim().to_owned();
    // Only a token's own characters may reach a cookie header.
    let well_formed = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    let caller = if well_formed {
        state.authenticate(token.clone()).await.ok()
    } else {
        None
    };
    let Some(caller) = caller else {
        return Ok(signin_form(
            Some("That token is not valid: it is unknown, expired or revoked."),
            StatusCode::UNAUTHORIZED,
        ));
    };
    let mut response = see_other(&first_page(&state, &caller).await?);
    keep_session(&mut response, &token);
    Ok(response)
}

/// Where a caller goes once signed in: a person whom the gate would prompt or block sees the
/// notice first; otherwise the caller's own start page. The gate is asked of memory, as the
/// API's gate route asks it.
pub async fn first_page(state: &Arc<AppState>, caller: &Caller) -> Result<String, PageError> {
    if let (Role::User, Some(account)) = (caller.role, &caller.account) {
        if actions::gate_from_memory(state, account).await?.decision != GateDecision::Allow {
            return Ok("/notice".to_owned());
        }
    }
    Ok(start_page(caller).to_owned())
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub(super) csrf: String,
}

pub async fn signout(
    State(state): Shared,
    headers: HeaderMap,
    sent: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, PageError> {
    if let Some(session) = session(&state, &headers).await? {
        session.check_form(&form(sent)?.csrf)?;
    }
    let mut response = see_other("/signin");
    end_session(&mut response);
    Ok(response)
}

// ---- what the choice means, in plain words ----

/// The plain sentences every place that asks for the choice shows, from the policy's figures.
fn what_it_means(policy: &Policy) -> Markup {
    let retention = &policy.retention;
    html! {
        ul.explain {
            li {
                strong { "Allow: " }
                "your new and resumed chats and coding sessions, and the ratings and comments you "
                "give on them, may be used to train and improve the models. They are kept for "
                (in_words(retention.extended)) " from their last activity."
            }
            li {
                strong { "Don't allow: " }
                "nothing you do is used for training. Conversations are kept for "
                (in_words(retention.standard)) " from their last activity, then deleted."
            }
            li {
                "Incognito chats and business plans are never used for training. Before anything is "
                "used, names, account ids, secrets, keys, emails, phone and card numbers are removed."
            }
            li {
                "You can change your answer at any time in Privacy settings. If you stop allowing "
                "it, none of your data goes into any later training set, and stored conversations "
                "are kept at most " (in_words(retention.withdrawal_cap)) " from then."
            }
            li { "Your data is never sold or disclosed to third parties." }
        }
    }
}

// ---- signup ----

pub async fn signup_page(State(state): Shared) -> Response {
    signup_form(&state, None, None, StatusCode::OK)
}

fn signup_form(
    state: &AppState,
    chosen_plan: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let policy = state.store.policy();
    let content = html! {
        h1 { "Create an account" }
        @if let Some(error) = error {
            p.banner.error role="alert" { (error) }
        }
        form method="post" action="/signup" {
            fieldset {
                legend { "Plan" }
                @for plan in policy.consumer_plans() {
                    label.option {
                        input type="radio" name="plan" value=(plan.as_str()) required
                            checked[chosen_plan == Some(plan.as_str())];
                        span { (plan.as_str()) }
                    }
                }
                details {
                    summary { "Plans for organizations" }
                    @for plan in policy.business_plans() {
                        label.option {
                            input type="radio" name="plan" value=(plan.as_str()) required
                                checked[chosen_plan == Some(plan.as_str())];
                            span { (plan.as_str()) " (never used for training; no choice to make)" }
                        }
                    }
                }
            }
            fieldset {
                legend { "May your chats and coding sessions be used to improve the models?" }
                p.explain { "Required for the " (plan_list(policy)) " plans. Nothing is chosen for you." }
                div.choices role="radiogroup" {
                    label.option { input type="radio" name="training" value="allow"; span { "Allow" } }
                    label.option { input type="radio" name="training" value="decline"; span { "Don't allow" } }
                }
                (what_it_means(policy))
            }
            button type="submit" { "Create account" }
        }
    };
    let mut response = page("Sign up", None, content);
    *response.status_mut() = status;
    response
}

fn plan_list(policy: &Policy) -> String {
    policy
        .consumer_plans()
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Deserialize)]
pub struct SignupForm {
    plan: Option<String>,
    training: Option<String>,
}

pub async fn signup(
    State(state): Shared,
    sent: Result<Form<SignupForm>, FormRejection>,
) -> Result<Response, PageError> {
    let sent = form(sent)?;
    let policy = state.store.policy();
    let Some(plan) = sent.plan.filter(|p| {
        policy.is_consumer_plan_named(p) || policy.business_plans().iter().any(|b| b.as_str() == p)
    }) else {
        return Ok(signup_form(
            &state,
            None,
            Some("Choose a plan."),
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    };
    let consumer = policy.is_consumer_plan_named(&plan);
    let allowed = match sent.training.as_deref() {
        Some("allow") => Some(true),
        Some("decline") => Some(false),
        _ => None,
    };
    if consumer && allowed.is_none() {
        return Ok(signup_form(
            &state,
            Some(&plan),
            Some(
                "Choose whether your chats and coding sessions may be used for training: either answer is fine.",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    }
    // A business plan has no choice to make; an answer sent with one is not recorded.
    let choice = allowed.filter(|_| consumer).map(|a| (a, Channel::Signup));
    let id = new_account_id()?;
    actions::create_account(&state, "signup".into(), id.clone(), plan, choice).await?;
    let at = state.now();
    // Saturating: a token's end is never lost to an overflow, which would read as "never".
    let expires = Some(at.saturating_add(SIGNUP_TOKEN_LASTS));
    let token = state
        .blocking(move |store| store.create_token("user", Some(&id), at, expires))
        .await?;
    let mut response = see_other("/privacy?done=welcome");
    keep_session(&mut response, &token);
    Ok(response)
}

/// A new account's id: random, so that ids say nothing and can't be guessed.
fn new_account_id() -> Result<AccountId, PageError> {
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).map_err(|_| {
        PageError::new(StatusCode::INTERNAL_SERVER_ERROR, "no randomness for an id")
    })?;
    account_id(&format!("acct_{}", custos_core::policy::hex(&bytes))).map_err(PageError::from)
}

// ---- the notice ----

async fn view_of(state: &AppState, id: &AccountId) -> Result<AccountView, PageError> {
    let at = state.now();
    let id = id.clone();
    Ok(state
        .blocking(move |store| store.account_view(&id, at))
        .await?)
}

pub async fn notice_page(State(state): Shared, headers: HeaderMap) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    let id = own_account(&session)?;
    let view = view_of(&state, &id).await?;
    let policy = state.store.policy();
    let decision = view.gate.decision;
    let content = html! {
        @match decision {
            GateDecision::Allow => {
                h1 { "Training choice" }
                @if view.gate.reason == GateReason::NotApplicable {
                    p { "Your plan (" (view.plan) ") is a business plan: nothing of yours is ever used for training, and there is nothing to choose." }
                } @else {
                    p { "You have chosen: " strong { (preference_words(view.preference)) } "." }
                    p { "You can change it at any time in " a href="/privacy" { "Privacy settings" } "." }
                }
            }
            _ => {
                @if decision == GateDecision::Block {
                    h1 { "Choose to continue" }
                    p.banner.warn role="alert" {
                        "The deadline of " (date(policy.choose_by)) " has passed. To keep using the assistant, "
                        "choose one of the two answers below. Either answer lets you continue."
                    }
                } @else {
                    h1 { "May your chats and coding sessions help improve our models?" }
                    p { "Please choose by " strong { (date(policy.choose_by)) } ". Either answer is fine, and you can change it later." }
                }
                @if let Some(text) = &policy.notice.text {
                    p { (text) }
                }
                (what_it_means(policy))
                form method="post" action="/notice" {
                    input type="hidden" name="csrf" value=(session.csrf());
                    div.choices {
                        button type="submit" name="answer" value="allow" { "Allow" }
                        button type="submit" name="answer" value="decline" { "Don't allow" }
                    }
                    @if decision == GateDecision::Prompt {
                        p.secondary {
                            button.link type="submit" name="answer" value="later" { "Not now" }
                            span.explain { " (you will be asked again; nothing is recorded but that you saw this)" }
                        }
                    }
                }
                p.explain { "Notice version " code { (policy.id) } "." }
            }
        }
    };
    Ok(page("Training notice", Some(&session.visitor()), content))
}

#[derive(Debug, Deserialize)]
pub struct NoticeForm {
    csrf: String,
    answer: String,
}

pub async fn notice_answer(
    State(state): Shared,
    headers: HeaderMap,
    sent: Result<Form<NoticeForm>, FormRejection>,
) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    let sent = form(sent)?;
    session.check_form(&sent.csrf)?;
    let id = own_account(&session)?;
    let done = match sent.answer.as_str() {
        "allow" | "decline" => {
            let allowed = sent.answer == "allow";
            actions::record_choice(&state, &session.caller, id, allowed, Channel::Notice).await?;
            if allowed { "allowed" } else { "declined" }
        }
        "later" => {
            // "Not now" exists only before the deadline.
            if actions::gate_from_memory(&state, &id).await?.decision != GateDecision::Prompt {
                return Err(PageError::new(
                    StatusCode::CONFLICT,
                    "The deadline has passed: choose Allow or Don't allow to continue.",
                ));
            }
            actions::record_notice_shown(&state, &session.caller, id).await?;
            "later"
        }
        _ => {
            return Err(PageError::new(
                StatusCode::BAD_REQUEST,
                "The answer must be Allow, Don't allow or Not now.",
            ));
        }
    };
    Ok(see_other(&format!("/privacy?done={done}")))
}

// ---- privacy settings ----

#[derive(Debug, Deserialize)]
pub struct Done {
    done: Option<String>,
}

fn done_message(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "welcome" => "Your account is ready.",
        "allowed" => "Saved: your chats and coding sessions may be used for training.",
        "declined" => "Saved: nothing of yours will be used for training.",
        "later" => "We'll ask again later.",
        "deleted" => {
            "The conversation was deleted. It is gone from your history and will never be used for training."
        }
        _ => return None,
    })
}

fn preference_words(preference: Preference) -> &'static str {
    match preference {
        Preference::Allowed => "Allowed",
        Preference::Declined => "Not allowed",
        Preference::Unset => "Not chosen yet",
    }
}

/// Why a conversation is or is not used for training, in words.
fn why(reason: EligibilityReason) -> &'static str {
    match reason {
        EligibilityReason::Eligible => {
            "You allow training, and it has activity since you allowed it."
        }
        EligibilityReason::TrainingDeclined => "You don't allow training.",
        EligibilityReason::TrainingUndecided => "You haven't chosen yet.",
        EligibilityReason::NotConsumerPlan => "Your plan is a business plan.",
        EligibilityReason::Incognito => "It is an incognito chat.",
        EligibilityReason::NotCovered => "Its activity happened while training was not allowed.",
        EligibilityReason::Withdrawn => "You stopped allowing training after its last activity.",
        EligibilityReason::Deleted => "It was deleted.",
        EligibilityReason::Expired => "Its retention period has ended.",
        EligibilityReason::Purged => "It was deleted for good.",
        EligibilityReason::AccountErased => "The account was erased.",
    }
}

fn entry_words(entry: &Entry) -> String {
    match entry.kind {
        EntryKind::Created => format!(
            "Account created on the {} plan",
            entry.plan.as_deref().unwrap_or("?")
        ),
        EntryKind::Choice => match entry.preference {
            Some(Preference::Allowed) => "Allowed training".into(),
            _ => "Did not allow training".into(),
        },
        EntryKind::NoticeShown => "Saw the notice and chose \"Not now\"".into(),
        EntryKind::PlanChanged => {
            format!("Moved to the {} plan", entry.plan.as_deref().unwrap_or("?"))
        }
        EntryKind::Erased => "Account erased".into(),
    }
}

pub async fn privacy_page(
    State(state): Shared,
    headers: HeaderMap,
    Query(done): Query<Done>,
) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    let id = own_account(&session)?;
    let at = state.now();
    let account = id.clone();
    let (view, entries, conversations) = state
        .blocking(move |store| {
            Ok((
                store.account_view(&account, at)?,
                store.ledger(&account)?,
                store.visible_conversations(&account, at)?,
            ))
        })
        .await?;
    let policy = state.store.policy();
    let consumer = policy.is_consumer_plan_named(&view.plan);
    let content = html! {
        h1 { "Privacy settings" }
        @if let Some(message) = done_message(done.done.as_deref()) {
            p.banner.ok role="status" { (message) }
        }
        @match view.gate.decision {
            GateDecision::Block => p.banner.warn role="alert" {
                "You need to choose to continue. " a href="/notice" { "Choose now" }
            },
            GateDecision::Prompt => p.banner.warn {
                "You haven't chosen yet whether your data may be used for training (by "
                (date(policy.choose_by)) "). " a href="/notice" { "Choose now" }
            },
            GateDecision::Allow => {}
        }
        p.explain { "Account " code { (id.as_str()) } " on the " (view.plan) " plan." }

        section aria-labelledby="choice" {
            h2 #choice { "Training choice" }
            @if consumer {
                p {
                    "Your choice: " strong #current-choice { (preference_words(view.preference)) }
                    @if let Some((decided, channel, _)) = &view.decided {
                        " (since " (date_time(*decided)) ", " (channel_words(*channel)) ")"
                    }
                }
                (what_it_means(policy))
                form method="post" action="/privacy/choice" {
                    input type="hidden" name="csrf" value=(session.csrf());
                    div.choices {
                        button type="submit" name="allowed" value="true" { "Allow" }
                        button type="submit" name="allowed" value="false" { "Don't allow" }
                    }
                }
            } @else {
                p { "Your plan is a business plan: nothing of yours is ever used for training, and there is nothing to choose." }
            }
        }

        section aria-labelledby="history" {
            h2 #history { "Your choices so far" }
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "When" } th scope="col" { "What" } th scope="col" { "Where" } th scope="col" { "Receipt" } } }
                    tbody {
                        @for entry in entries.iter().rev() {
                            tr {
                                td { (date_time(entry.key.at)) }
                                td { (entry_words(entry)) }
                                td { (entry.channel.map(channel_words).unwrap_or("")) }
                                td {
                                    @if entry.kind == EntryKind::Choice {
                                        @let receipt = custos_core::policy::hex(&entry.hash);
                                        a href={ "/privacy/receipts/" (receipt) } download {
                                            "Download receipt"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        section aria-labelledby="conversations" {
            h2 #conversations { "Your conversations" }
            @if conversations.is_empty() {
                p { "You have no conversations." }
            } @else {
                div.table-wrap {
                    table #conversation-list {
                        thead { tr {
                            th scope="col" { "Conversation" } th scope="col" { "Kind" }
                            th scope="col" { "Used for training?" } th scope="col" { "Why" }
                            th scope="col" { "Kept until" } th scope="col" { span.skip-label { "Delete" } }
                        } }
                        tbody {
                            @for conversation in &conversations {
                                (conversation_row(&session, conversation))
                            }
                        }
                    }
                }
            }
        }

        section aria-labelledby="your-data" {
            h2 #your-data { "Your data" }
            p { a.button href="/privacy/data" download { "Download my data" } }
            p.explain { "Everything held about you, with your consent history and receipts, as one JSON file." }
            p { a href="/privacy/erase" { "Erase my account…" } }
        }
    };
    Ok(page("Privacy settings", Some(&session.visitor()), content))
}

fn conversation_row(session: &Session, conversation: &ConversationSummary) -> Markup {
    let reason = conversation.status.eligibility;
    let used = reason.is_eligible();
    html! {
        tr data-conversation=(conversation.id.as_str()) {
            td { code { (conversation.id.as_str()) } }
            td { (if conversation.surface.as_str() == "code" { "Coding session" } else { "Chat" }) }
            td.training {
                @if used { span.yes { "Used for training" } } @else { span.no { "Not used for training" } }
            }
            td { (why(reason)) }
            td {
                @match conversation.status.expiry {
                    Some(expiry) => time datetime=(expiry.at.to_string()) { (date(expiry.at)) },
                    None => "—",
                }
                @if conversation.status.held { " (kept longer: legal hold)" }
            }
            td {
                form method="post" action={ "/privacy/conversations/" (conversation.id.as_str()) "/delete" } {
                    input type="hidden" name="csrf" value=(session.csrf());
                    button.danger type="submit" aria-label={ "Delete conversation " (conversation.id.as_str()) } { "Delete" }
                }
            }
        }
    }
}

fn channel_words(channel: Channel) -> &'static str {
    match channel {
        Channel::Signup => "at signup",
        Channel::Notice => "from the notice",
        Channel::Settings => "in settings",
    }
}

#[derive(Debug, Deserialize)]
pub struct ChoiceForm {
    csrf: String,
    allowed: String,
}

pub async fn change_choice(
    State(state): Shared,
    headers: HeaderMap,
    sent: Result<Form<ChoiceForm>, FormRejection>,
) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    let sent = form(sent)?;
    session.check_form(&sent.csrf)?;
    let id = own_account(&session)?;
    let allowed = match sent.allowed.as_str() {
        "true" => true,
        "false" => false,
        _ => {
            return Err(PageError::new(
                StatusCode::BAD_REQUEST,
                "The answer must be Allow or Don't allow.",
            ));
        }
    };
    actions::record_choice(&state, &session.caller, id, allowed, Channel::Settings).await?;
    Ok(see_other(if allowed {
        "/privacy?done=allowed"
    } else {
        "/privacy?done=declined"
    }))
}

pub async fn download_receipt(
    State(state): Shared,
    headers: HeaderMap,
    Path(receipt): Path<String>,
) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    let id = own_account(&session)?;
    let wanted = receipt.clone();
    let found = state
        .blocking(move |store| store.receipt(&id, &wanted))
        .await?;
    let receipt_json = found.ok_or_else(|| {
        PageError::new(StatusCode::NOT_FOUND, "You have no receipt with that id.")
    })?;
    let short: String = receipt
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    Ok(download(
        &format!("consent-receipt-{short}.json"),
        &receipt_json,
    ))
}

pub async fn download_data(
    State(state): Shared,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    let id = own_account(&session)?;
    let at = state.now();
    let document = state
        .blocking(move |store| store.access_document(&id, at))
        .await?;
    Ok(download("my-data.json", &document))
}

pub async fn delete_conversation(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    sent: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    session.check_form(&form(sent)?.csrf)?;
    own_account(&session)?;
    let id = conversation_id(&id)?;
    actions::delete_conversation_as(&state, &session.caller, id).await?;
    Ok(see_other("/privacy?done=deleted#conversations"))
}

// ---- erasure, with a confirmation step ----

pub async fn erase_page(State(state): Shared, headers: HeaderMap) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    let id = own_account(&session)?;
    let policy = state.store.policy();
    let content = html! {
        h1 { "Erase my account" }
        p { "Erasing account " code { (id.as_str()) } ":" }
        ul {
            li { "removes every conversation from your history now, and deletes them for good at the next clean-up (unless a legal hold requires us to keep one until it is released);" }
            li { "takes all of your data out of every future training set;" }
            li { "keeps your consent history only as evidence, under a code that no longer names you;" }
            li { "can't be undone, and the account id can't be used again." }
        }
        p { "You may want to " a href="/privacy/data" download { "download your data" } " first." }
        form method="post" action="/privacy/erase" {
            input type="hidden" name="csrf" value=(session.csrf());
            p {
                label.option {
                    input type="checkbox" name="confirm" value="yes" required;
                    span { "I understand that this erases my account and can't be undone." }
                }
            }
            button.danger type="submit" { "Erase my account" }
            " "
            a href="/privacy" { "Keep my account" }
        }
        p.explain { "Data kept after a withdrawal is held at most " (in_words(policy.retention.withdrawal_cap)) "." }
    };
    Ok(page("Erase my account", Some(&session.visitor()), content))
}

#[derive(Debug, Deserialize)]
pub struct EraseForm {
    csrf: String,
    confirm: Option<String>,
}

pub async fn erase(
    State(state): Shared,
    headers: HeaderMap,
    sent: Result<Form<EraseForm>, FormRejection>,
) -> Result<Response, PageError> {
    let session = signed_in(&state, &headers).await?;
    let sent = form(sent)?;
    session.check_form(&sent.csrf)?;
    let id = own_account(&session)?;
    if sent.confirm.as_deref() != Some("yes") {
        return Err(PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Nothing was erased: tick the box to confirm, then press Erase my account.",
        ));
    }
    actions::erase_account_as(&state, &session.caller, id).await?;
    // The session ends with the account: its token can't be used again.
    let (token, at) = (session.token.clone(), state.now());
    let hash = custos_store::token_hash(&token);
    state
        .blocking(move |store| store.revoke_token(&token, at))
        .await?;
    state.tokens.forget(&hash);
    let content = html! {
        h1 { "Your account was erased" }
        p { "Your conversations are gone from your history and will be deleted for good at the next clean-up. Nothing of yours will be used for training." }
        p { a href="/signup" { "Create a new account" } }
    };
    let mut response = page("Account erased", None, content);
    end_session(&mut response);
    Ok(response)
}
