//! One test per rule of docs/POLICY.md, The decisions and per reason code, each on the smallest timeline that shows it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on a broken fixture; that is its job"
)]

use custos_core::{
    AccountId, Channel, Command, ConversationId, EligibilityReason, ExpiryBound, GateDecision,
    GateReason, HoldId, HoldTarget, Policy, Rating, RetentionClass, Role, Surface, SweepAction,
    Timeline, Timestamp, sweep_action,
};

fn ts(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn account(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

fn conversation(id: &str) -> ConversationId {
    ConversationId::parse(id).unwrap()
}

/// A timeline under the bundled policy, written one event per line.
struct Story(Timeline);

impl Story {
    fn new() -> Story {
        Story(Timeline::new(Policy::bundled()))
    }

    fn with_policy(policy: Policy) -> Story {
        Story(Timeline::new(policy))
    }

    fn apply(&mut self, at: &str, command: Command) -> &mut Self {
        self.0
            .apply(ts(at), command)
            .unwrap_or_else(|r| panic!("{at}: refused: {r}"));
        self
    }

    fn create(&mut self, at: &str, id: &str, plan: &str, allowed: Option<bool>) -> &mut Self {
        let choice = allowed.map(|a| (a, Channel::Signup));
        self.apply(
            at,
            Command::CreateAccount {
                account: account(id),
                plan: plan.into(),
                choice,
            },
        )
    }

    fn choose(&mut self, at: &str, id: &str, allowed: bool) -> &mut Self {
        self.apply(
            at,
            Command::Choose {
                account: account(id),
                allowed,
                channel: Channel::Settings,
            },
        )
    }

    fn plan(&mut self, at: &str, id: &str, plan: &str) -> &mut Self {
        self.apply(
            at,
            Command::ChangePlan {
                account: account(id),
                plan: plan.into(),
            },
        )
    }

    fn say(&mut self, at: &str, id: &str, conv: &str) -> &mut Self {
        self.message(at, id, conv, false)
    }

    fn message(&mut self, at: &str, id: &str, conv: &str, incognito: bool) -> &mut Self {
        self.apply(
            at,
            Command::Message {
                account: account(id),
                conversation: conversation(conv),
                surface: Surface::Chat,
                role: Role::User,
                text: format!("text at {at}"),
                incognito,
            },
        )
    }

    fn rate(&mut self, at: &str, id: &str, conv: &str) -> &mut Self {
        self.apply(
            at,
            Command::Feedback {
                account: account(id),
                conversation: conversation(conv),
                rating: Rating::Up,
                comment: None,
            },
        )
    }

    fn delete(&mut self, at: &str, conv: &str) -> &mut Self {
        self.apply(
            at,
            Command::DeleteConversation {
                conversation: conversation(conv),
            },
        )
    }

    fn erase(&mut self, at: &str, id: &str) -> &mut Self {
        self.apply(
            at,
            Command::EraseAccount {
                account: account(id),
            },
        )
    }

    fn hold(&mut self, at: &str, hold: &str, target: HoldTarget) -> &mut Self {
        self.apply(
            at,
            Command::PlaceHold {
                hold: HoldId::parse(hold).unwrap(),
                target,
            },
        )
    }

    fn sweep(&mut self, at: &str) -> &mut Self {
        self.apply(at, Command::Sweep)
    }

    fn gate(&self, at: &str, id: &str) -> (GateDecision, GateReason) {
        let gate = self.0.gate(&account(id), ts(at)).unwrap();
        (gate.decision, gate.reason)
    }

    fn reason(&self, at: &str, conv: &str) -> EligibilityReason {
        self.0
            .conversation_status(&conversation(conv), ts(at))
            .unwrap()
            .eligibility
    }

    /// (expires_at, class, bound) of a conversation.
    fn expiry(&self, at: &str, conv: &str) -> (String, RetentionClass, ExpiryBound) {
        let status = self
            .0
            .conversation_status(&conversation(conv), ts(at))
            .unwrap();
        let expiry = status.expiry.unwrap();
        (expiry.at.to_string(), expiry.class, expiry.bound)
    }
}

// ---- Gate ----

#[test]
fn gate_rule_1_business_plans_are_not_applicable_even_after_the_deadline() {
    let mut story = Story::new();
    story.create("2025-07-01T00:00:00Z", "b", "enterprise", None);
    assert_eq!(
        story.gate("2026-01-01T00:00:00Z", "b"),
        (GateDecision::Allow, GateReason::NotApplicable)
    );
}

#[test]
fn gate_rule_2_either_answer_unblocks() {
    let mut story = Story::new();
    story
        .create("2025-07-01T00:00:00Z", "y", "pro", None)
        .create("2025-07-01T00:00:00Z", "n", "pro", None);
    story
        .choose("2025-10-01T00:00:00Z", "y", true)
        .choose("2025-10-01T00:00:00Z", "n", false);
    for id in ["y", "n"] {
        assert_eq!(
            story.gate("2025-10-01T00:00:00Z", id),
            (GateDecision::Allow, GateReason::Decided)
        );
    }
}

#[test]
fn gate_rules_3_and_4_prompt_strictly_before_choose_by_and_block_from_it() {
    let mut story = Story::new();
    story.create("2025-07-01T00:00:00Z", "u", "free", None);
    assert_eq!(
        story.gate("2025-09-28T23:59:59.999Z", "u"),
        (GateDecision::Prompt, GateReason::ChoicePending)
    );
    assert_eq!(
        story.gate("2025-09-29T00:00:00Z", "u"),
        (GateDecision::Block, GateReason::ChoiceRequired)
    );
}

#[test]
fn gate_sees_a_choice_made_at_the_same_instant_before_the_request() {
    let mut story = Story::new();
    story
        .create("2025-07-01T00:00:00Z", "u", "free", None)
        .choose("2025-10-01T00:00:00Z", "u", false);
    assert_eq!(
        story.gate("2025-10-01T00:00:00Z", "u"),
        (GateDecision::Allow, GateReason::Decided)
    );
}

#[test]
fn a_refusal_carries_over_to_a_new_notice_version() {
    let text = Policy::bundled_text()
        .replace(
            "id = \"consumer-terms-2025\"",
            "id = \"consumer-terms-2026\"",
        )
        .replace(
            "effective = 2025-08-28T00:00:00Z",
            "effective = 2026-03-01T00:00:00Z",
        )
        .replace(
            "choose_by = 2025-09-29T00:00:00Z",
            "choose_by = 2026-04-01T00:00:00Z",
        );
    let mut story = Story::with_policy(Policy::parse("next.toml", &text).unwrap());
    story.create("2025-07-01T00:00:00Z", "refused", "pro", Some(false));
    story.create("2025-07-01T00:00:00Z", "silent", "pro", None);
    assert_eq!(
        story.gate("2026-03-15T00:00:00Z", "refused"),
        (GateDecision::Allow, GateReason::Decided)
    );
    assert_eq!(
        story.gate("2026-03-15T00:00:00Z", "silent"),
        (GateDecision::Prompt, GateReason::ChoicePending)
    );
}

// ---- Expiry ----

#[test]
fn expiry_step_1_covered_activity_keeps_five_years_and_other_activity_thirty_days() {
    let mut story = Story::new();
    story.create("2025-07-01T00:00:00Z", "u", "pro", None).say(
        "2025-07-02T00:00:00Z",
        "u",
        "early",
    );
    story
        .choose("2025-07-03T00:00:00Z", "u", true)
        .say("2025-07-04T00:00:00Z", "u", "late");
    story.message("2025-07-04T00:00:00Z", "u", "ghost", true);
    let at = "2025-07-04T00:00:00Z";
    assert_eq!(
        story.expiry(at, "early"),
        (
            "2025-08-01T00:00:00.000Z".into(),
            RetentionClass::Standard,
            ExpiryBound::Retention
        )
    );
    assert_eq!(
        story.expiry(at, "late"),
        (
            "2030-07-04T00:00:00.000Z".into(),
            RetentionClass::Extended,
            ExpiryBound::Retention
        )
    );
    assert_eq!(
        story.expiry(at, "ghost"),
        (
            "2025-08-03T00:00:00.000Z".into(),
            RetentionClass::Standard,
            ExpiryBound::Retention
        )
    );
}

#[test]
fn expiry_step_1_counts_any_covered_activity_at_the_latest_time() {
    // Same instant: a covered message, a withdrawal, then an uncovered one. The latest activity's
    // time had a covered activity, and the withdrawal precedes the latest activity in event order.
    let mut story = Story::new();
    story.create("2025-10-01T00:00:00Z", "u", "pro", Some(true));
    story
        .say("2025-10-02T00:00:00Z", "u", "c")
        .choose("2025-10-02T00:00:00Z", "u", false);
    story.say("2025-10-02T00:00:00Z", "u", "c");
    assert_eq!(
        story.expiry("2025-10-02T00:00:00Z", "c"),
        (
            "2030-10-02T00:00:00.000Z".into(),
            RetentionClass::Extended,
            ExpiryBound::Retention
        )
    );
}

#[test]
fn expiry_step_1_feedback_is_activity_too() {
    let mut story = Story::new();
    story
        .create("2025-07-01T00:00:00Z", "u", "pro", None)
        .say("2025-07-02T00:00:00Z", "u", "c");
    story
        .choose("2025-07-05T00:00:00Z", "u", true)
        .rate("2025-07-06T00:00:00Z", "u", "c");
    assert_eq!(
        story.expiry("2025-07-06T00:00:00Z", "c").0,
        "2030-07-06T00:00:00.000Z"
    );
}

#[test]
fn expiry_step_2_withdrawal_caps_retention_at_thirty_days() {
    let mut story = Story::new();
    story
        .create("2025-10-01T00:00:00Z", "u", "pro", Some(true))
        .say("2025-10-02T00:00:00Z", "u", "c");
    story.choose("2025-10-10T00:00:00Z", "u", false);
    assert_eq!(
        story.expiry("2025-10-10T00:00:00Z", "c"),
        (
            "2025-11-09T00:00:00.000Z".into(),
            RetentionClass::Extended,
            ExpiryBound::WithdrawalCap
        )
    );
}

#[test]
fn expiry_step_2_a_move_to_a_business_plan_while_allowed_is_a_withdrawal() {
    let mut story = Story::new();
    story
        .create("2025-10-01T00:00:00Z", "u", "max", Some(true))
        .say("2025-10-02T00:00:00Z", "u", "c");
    story.plan("2025-10-03T00:00:00Z", "u", "api");
    assert_eq!(
        story.expiry("2025-10-03T00:00:00Z", "c").0,
        "2025-11-02T00:00:00.000Z"
    );
}

#[test]
fn expiry_step_2_uses_the_earliest_of_several_withdrawals_after_the_latest_activity() {
    let mut story = Story::new();
    story
        .create("2025-10-01T00:00:00Z", "u", "pro", Some(true))
        .say("2025-10-02T00:00:00Z", "u", "c");
    story
        .choose("2025-10-03T00:00:00Z", "u", false)
        .choose("2025-10-04T00:00:00Z", "u", true);
    story.choose("2025-10-05T00:00:00Z", "u", false);
    assert_eq!(
        story.expiry("2025-10-05T00:00:00Z", "c").0,
        "2025-11-02T00:00:00.000Z"
    );
}

#[test]
fn expiry_step_2_ignores_a_withdrawal_before_the_latest_activity() {
    let mut story = Story::new();
    story
        .create("2025-10-01T00:00:00Z", "u", "pro", Some(true))
        .say("2025-10-02T00:00:00Z", "u", "c");
    story
        .choose("2025-10-03T00:00:00Z", "u", false)
        .choose("2025-10-04T00:00:00Z", "u", true);
    story.say("2025-10-05T00:00:00Z", "u", "c");
    assert_eq!(
        story.expiry("2025-10-05T00:00:00Z", "c").0,
        "2030-10-05T00:00:00.000Z"
    );
}

#[test]
fn expiry_step_3_deletion_grace_caps_retention() {
    let mut story = Story::new();
    story
        .create("2025-10-01T00:00:00Z", "u", "pro", Some(true))
        .say("2025-10-02T00:00:00Z", "u", "c");
    story.delete("2025-10-03T12:00:00Z", "c");
    assert_eq!(
        story.expiry("2025-10-03T12:00:00Z", "c"),
        (
            "2025-11-02T12:00:00.000Z".into(),
            RetentionClass::Extended,
            ExpiryBound::DeletionGrace
        )
    );
}

#[test]
fn expiry_step_3_never_lengthens_a_shorter_expiry() {
    let mut story = Story::new();
    story
        .create("2025-07-01T00:00:00Z", "u", "pro", None)
        .say("2025-07-02T00:00:00Z", "u", "c");
    story.delete("2025-07-20T00:00:00Z", "c");
    assert_eq!(
        story.expiry("2025-07-20T00:00:00Z", "c"),
        (
            "2025-08-01T00:00:00.000Z".into(),
            RetentionClass::Standard,
            ExpiryBound::Retention
        )
    );
}

#[test]
fn expiry_step_4_erasure_expires_everything_at_once() {
    let mut story = Story::new();
    story
        .create("2025-10-01T00:00:00Z", "u", "pro", Some(true))
        .say("2025-10-02T00:00:00Z", "u", "c");
    story.erase("2025-10-03T00:00:00Z", "u");
    assert_eq!(
        story.expiry("2025-10-03T00:00:00Z", "c"),
        (
            "2025-10-03T00:00:00.000Z".into(),
            RetentionClass::Extended,
            ExpiryBound::AccountErased
        )
    );
}

// ---- Purge ----

#[test]
fn purge_happens_at_expiry_not_before_and_never_under_a_hold() {
    let expiry = custos_core::Expiry {
        at: ts("2025-11-01T00:00:00Z"),
        class: RetentionClass::Standard,
        bound: ExpiryBound::Retention,
    };
    assert_eq!(
        sweep_action(Some(expiry), false, ts("2025-10-31T23:59:59.999Z")),
        SweepAction::Keep
    );
    assert_eq!(
        sweep_action(Some(expiry), false, ts("2025-11-01T00:00:00Z")),
        SweepAction::Purge(ExpiryBound::Retention)
    );
    assert_eq!(
        sweep_action(Some(expiry), true, ts("2026-01-01T00:00:00Z")),
        SweepAction::HeldBack
    );
    assert_eq!(
        sweep_action(None, false, ts("2026-01-01T00:00:00Z")),
        SweepAction::Keep
    );
}

#[test]
fn a_released_hold_lets_the_next_sweep_purge() {
    let mut story = Story::new();
    story
        .create("2025-07-01T00:00:00Z", "u", "pro", None)
        .say("2025-07-02T00:00:00Z", "u", "c");
    story.hold(
        "2025-07-03T00:00:00Z",
        "h",
        HoldTarget::Conversation(conversation("c")),
    );
    story.sweep("2025-09-01T00:00:00Z");
    assert_eq!(
        story.reason("2025-09-01T00:00:00Z", "c"),
        EligibilityReason::Expired
    );
    story.apply(
        "2025-09-02T00:00:00Z",
        Command::ReleaseHold {
            hold: HoldId::parse("h").unwrap(),
        },
    );
    story.sweep("2025-09-02T00:00:00Z");
    assert_eq!(
        story.reason("2025-09-02T00:00:00Z", "c"),
        EligibilityReason::Purged
    );
}

#[test]
fn an_account_hold_covers_conversations_started_after_it() {
    let mut story = Story::new();
    story.create("2025-07-01T00:00:00Z", "u", "pro", None);
    story.hold(
        "2025-07-01T00:00:00Z",
        "h",
        HoldTarget::Account(account("u")),
    );
    story.say("2025-07-02T00:00:00Z", "u", "later");
    story.sweep("2026-01-01T00:00:00Z");
    let status = story
        .0
        .conversation_status(&conversation("later"), ts("2026-01-01T00:00:00Z"))
        .unwrap();
    assert!(status.exists && status.held);
}

// ---- Eligible: one test per reason, in rule order ----

#[test]
fn every_eligibility_reason_is_reachable_by_its_own_rule() {
    let mut story = Story::new();
    for (id, allowed) in [
        ("ok", Some(true)),
        ("gone", Some(true)),
        ("biz", Some(true)),
        ("no", Some(false)),
        ("unset", None),
        ("late", None),
        ("back", Some(true)),
    ] {
        story.create("2025-07-01T00:00:00Z", id, "pro", allowed);
    }
    story
        .say("2025-10-01T00:00:00Z", "ok", "purged")
        .delete("2025-10-01T00:00:00Z", "purged");
    story.say("2025-10-02T00:00:00Z", "no", "expired"); // standard: expires 11-01
    for (id, conv) in [
        ("gone", "erased"),
        ("ok", "deleted"),
        ("biz", "business"),
        ("no", "declined"),
        ("unset", "undecided"),
        ("late", "uncovered"),
        ("back", "withdrawn"),
        ("ok", "eligible"),
    ] {
        story.say("2025-10-05T00:00:00Z", id, conv);
    }
    story.message("2025-10-05T00:00:00Z", "ok", "incognito", true);

    story.sweep("2025-10-31T00:00:00Z"); // the deletion grace of "purged" ends now
    story.erase("2025-10-31T00:00:00Z", "gone");
    story.delete("2025-10-31T00:00:00Z", "deleted");
    story.plan("2025-10-31T00:00:00Z", "biz", "team");
    story.choose("2025-10-31T00:00:00Z", "late", true);
    story.choose("2025-10-31T00:00:00Z", "back", false).choose(
        "2025-10-31T00:00:00Z",
        "back",
        true,
    );

    let at = "2025-11-01T00:00:00Z";
    let expected = [
        ("purged", EligibilityReason::Purged),
        ("erased", EligibilityReason::AccountErased),
        ("deleted", EligibilityReason::Deleted),
        ("expired", EligibilityReason::Expired),
        ("incognito", EligibilityReason::Incognito),
        ("business", EligibilityReason::NotConsumerPlan),
        ("declined", EligibilityReason::TrainingDeclined),
        ("undecided", EligibilityReason::TrainingUndecided),
        ("uncovered", EligibilityReason::NotCovered),
        ("withdrawn", EligibilityReason::Withdrawn),
        ("eligible", EligibilityReason::Eligible),
    ];
    let mut seen = Vec::new();
    for (conv, reason) in expected {
        assert_eq!(story.reason(at, conv), reason, "{conv}");
        seen.push(reason);
    }
    assert_eq!(
        seen,
        EligibilityReason::ALL,
        "every reason code is covered, in rule order"
    );
    let snapshot = story.0.snapshot(ts(at));
    let included: Vec<_> = snapshot
        .included
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(included, ["eligible"]);
    assert_eq!(snapshot.excluded.values().sum::<usize>(), 10);
}

#[test]
fn eligibility_rules_are_tried_in_order() {
    // A deleted, incognito conversation of an erased account reports the first matching rule.
    let mut story = Story::new();
    story.create("2025-10-01T00:00:00Z", "u", "pro", Some(false));
    story.message("2025-10-02T00:00:00Z", "u", "c", true);
    assert_eq!(
        story.reason("2025-10-02T00:00:00Z", "c"),
        EligibilityReason::Incognito
    );
    story.delete("2025-10-03T00:00:00Z", "c");
    assert_eq!(
        story.reason("2025-10-03T00:00:00Z", "c"),
        EligibilityReason::Deleted
    );
    story.erase("2025-10-04T00:00:00Z", "u");
    assert_eq!(
        story.reason("2025-10-04T00:00:00Z", "c"),
        EligibilityReason::AccountErased
    );
    story.sweep("2025-10-04T00:00:00Z");
    assert_eq!(
        story.reason("2025-10-04T00:00:00Z", "c"),
        EligibilityReason::Purged
    );
}

#[test]
fn expired_is_reported_at_expiry_even_before_a_sweep() {
    let mut story = Story::new();
    story
        .create("2025-07-01T00:00:00Z", "u", "pro", None)
        .say("2025-07-02T00:00:00Z", "u", "c");
    story.choose("2025-07-03T00:00:00Z", "u", true);
    assert_eq!(
        story.reason("2025-08-01T00:00:00Z", "c"),
        EligibilityReason::Expired
    );
    assert_eq!(
        story.reason("2025-07-31T23:59:59.999Z", "c"),
        EligibilityReason::NotCovered
    );
}

// ---- Content ----

#[test]
fn whole_content_takes_consumer_plan_activity_and_covered_only_takes_covered_activity() {
    let build = |policy: Policy| {
        let mut story = Story::with_policy(policy);
        story.create("2025-07-01T00:00:00Z", "u", "pro", None);
        story.say("2025-07-02T00:00:00Z", "u", "c"); // undecided, consumer
        story
            .choose("2025-07-03T00:00:00Z", "u", true)
            .plan("2025-07-04T00:00:00Z", "u", "team");
        story.say("2025-07-05T00:00:00Z", "u", "c"); // business plan
        story
            .plan("2025-07-06T00:00:00Z", "u", "pro")
            .say("2025-07-07T00:00:00Z", "u", "c");
        story.rate("2025-07-07T00:00:00Z", "u", "c");
        story
    };
    let counts = |story: &Story| {
        let snapshot = story.0.snapshot(ts("2025-07-08T00:00:00Z"));
        let (_, content) = &snapshot.included[0];
        let times: Vec<_> = content
            .messages
            .iter()
            .map(|m| m.key.at.to_string())
            .collect();
        (times, content.feedback.len())
    };
    let whole = build(Policy::bundled());
    assert_eq!(
        counts(&whole),
        (
            vec![
                "2025-07-02T00:00:00.000Z".into(),
                "2025-07-07T00:00:00.000Z".into()
            ],
            1
        )
    );
    let covered_only = Policy::parse(
        "p.toml",
        &Policy::bundled_text().replace("content = \"whole\"", "content = \"covered_only\""),
    )
    .unwrap();
    assert_eq!(
        counts(&build(covered_only)),
        (vec!["2025-07-07T00:00:00.000Z".into()], 1)
    );
}

#[test]
fn content_excludes_activity_after_the_cutoff() {
    let mut story = Story::new();
    story
        .create("2025-10-01T00:00:00Z", "u", "pro", Some(true))
        .say("2025-10-02T00:00:00Z", "u", "c");
    story.say("2025-10-03T00:00:00Z", "u", "c");
    // A snapshot at 10-02 taken after the 10-03 message arrived still sees only the first one.
    let earlier = story.0.snapshot(ts("2025-10-02T00:00:00Z"));
    assert_eq!(earlier.included[0].1.messages.len(), 1);
    let later = story.0.snapshot(ts("2025-10-03T00:00:00Z"));
    assert_eq!(later.included[0].1.messages.len(), 2);
}

/// Events can arrive late and carry an earlier time, but never one before their account existed.
#[test]
fn activity_timed_before_the_account_was_created_is_refused() {
    let mut model = Timeline::new(Policy::bundled());
    let a = account("a");
    model
        .apply(
            ts("2025-10-01T00:00:00Z"),
            Command::CreateAccount {
                account: a.clone(),
                plan: "pro".into(),
                choice: Some((true, Channel::Signup)),
            },
        )
        .unwrap();
    let message = |at: &str, id: &str| {
        (
            ts(at),
            Command::Message {
                account: a.clone(),
                conversation: conversation(id),
                surface: Surface::Chat,
                role: Role::User,
                text: "hi".into(),
                incognito: false,
            },
        )
    };
    let (at, early) = message("2025-09-30T23:59:59.999Z", "c1");
    let refused = model.apply(at, early).unwrap_err();
    assert_eq!(refused.slug(), "before-account-created");
    assert!(model.conversation_status(&conversation("c1"), at).is_err());
    let (at, on_time) = message("2025-10-01T00:00:00Z", "c1");
    model.apply(at, on_time).unwrap();
}

/// No store can keep U+0000 in every backend, so texts holding it are refused, saying where,
/// and nothing of the event is recorded.
#[test]
fn a_text_or_comment_holding_nul_is_refused_and_says_where() {
    let mut model = Timeline::new(Policy::bundled());
    let a = account("a");
    let at = ts("2025-10-01T00:00:00Z");
    let create = Command::CreateAccount {
        account: a.clone(),
        plan: "pro".into(),
        choice: Some((true, Channel::Signup)),
    };
    model.apply(at, create).unwrap();
    let message = |text: &str| Command::Message {
        account: a.clone(),
        conversation: conversation("c1"),
        surface: Surface::Chat,
        role: Role::User,
        text: text.into(),
        incognito: false,
    };
    let refused = model.apply(at, message("é\u{0}b")).unwrap_err();
    assert_eq!(refused.slug(), "nul-in-text");
    assert!(refused.to_string().contains("`text`"), "{refused}");
    assert!(refused.to_string().contains("character 1;"), "{refused}");
    assert!(model.conversation_status(&conversation("c1"), at).is_err());
    model.apply(at, message("a\u{1}b")).unwrap();
    let feedback = |comment: &str| Command::Feedback {
        account: a.clone(),
        conversation: conversation("c1"),
        rating: Rating::Up,
        comment: Some(comment.into()),
    };
    let refused = model.apply(at, feedback("\u{0}")).unwrap_err();
    assert_eq!(refused.slug(), "nul-in-text");
    assert!(refused.to_string().contains("`comment`"), "{refused}");
    model.apply(at, feedback("fine")).unwrap();
}

// ---- Refusal slugs ----

#[test]
fn refusal_slugs_are_distinct_and_kebab_case() {
    use custos_core::Refusal;
    let a = account("a");
    let c = conversation("c");
    let h = HoldId::parse("h").unwrap();
    let (plan, _) = Policy::bundled().plan("pro").unwrap();
    let refusals = [
        Refusal::UnknownAccount(a.clone()),
        Refusal::AccountErased(a.clone()),
        Refusal::AccountExists(a.clone()),
        Refusal::UnknownPlan(custos_core::policy::UnknownPlan("x".into())),
        Refusal::ChoiceRequired {
            account: a.clone(),
            plan: plan.clone(),
            effective: ts("2025-08-28T00:00:00Z"),
        },
        Refusal::NoChoiceOnBusinessPlan {
            account: a.clone(),
            plan,
        },
        Refusal::UnknownConversation(c.clone()),
        Refusal::NotOwner {
            conversation: c.clone(),
            account: a,
        },
        Refusal::ConversationDeleted(c.clone()),
        Refusal::ConversationPurged(c.clone()),
        Refusal::ConversationExpired {
            conversation: c,
            expired_at: ts("2025-08-28T00:00:00Z"),
        },
        Refusal::BeforeAccountCreated {
            account: account("a"),
            at: ts("2025-08-27T00:00:00Z"),
            created: ts("2025-08-28T00:00:00Z"),
        },
        Refusal::HoldExists(h.clone()),
        Refusal::HoldNotActive(h),
        Refusal::NulInText {
            field: "text",
            at: 0,
        },
    ];
    let slugs: std::collections::BTreeSet<_> = refusals.iter().map(|r| r.slug()).collect();
    assert_eq!(slugs.len(), refusals.len());
    assert!(
        slugs
            .iter()
            .all(|s| s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
    );
}
