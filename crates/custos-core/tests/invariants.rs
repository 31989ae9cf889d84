//! Property tests: the core against an independent model, and the invariants of docs/POLICY.md, Invariants.
//!
//! The [`oracle`] replays a random timeline as a plain state machine — it tracks the current plan
//! and choice and stamps each activity as covered when it happens — which is a different
//! construction from the core's event-keyed histories. Every admission, gate, expiry and
//! eligibility answer of the core must match it, after every step.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on a broken fixture; that is its job"
)]

mod support;

use custos_core::{
    Command, Duration, EligibilityReason, GateDecision, GateReason, Policy, Timeline, Timestamp,
};
use proptest::prelude::*;
use support::{Op, account_id, command, conversation_id, start, timeline};

mod oracle {
    use std::collections::HashMap;

    use custos_core::{Duration, EligibilityReason as R, GateDecision, GateReason, Timestamp};

    use crate::support::{Event, PLANS};

    fn class(plan: &str) -> Option<bool> {
        match plan {
            "free" | "pro" | "max" => Some(true),
            "team" | "api" => Some(false),
            _ => None,
        }
    }

    #[derive(Debug, Clone)]
    pub struct Account {
        pub consumer: bool,
        pub pref: Option<bool>,
        pub erased_at: Option<Timestamp>,
        /// (order, time) of each withdrawal.
        pub withdrawals: Vec<(usize, Timestamp)>,
    }

    #[derive(Debug, Clone)]
    pub struct Activity {
        pub order: usize,
        pub at: Timestamp,
        pub covered: bool,
        pub on_consumer_plan: bool,
        pub is_message: bool,
    }

    #[derive(Debug, Clone)]
    pub struct Conversation {
        pub owner: usize,
        pub incognito: bool,
        pub activities: Vec<Activity>,
        pub deleted_at: Option<Timestamp>,
        pub purged: bool,
    }

    #[derive(Debug, Clone)]
    pub struct Hold {
        pub account: Option<usize>,
        pub conversation: Option<usize>,
        pub active: bool,
    }

    #[derive(Debug, Clone)]
    pub struct Oracle {
        pub effective: Timestamp,
        pub choose_by: Timestamp,
        pub accounts: HashMap<usize, Account>,
        pub conversations: HashMap<usize, Conversation>,
        pub holds: HashMap<usize, Hold>,
        order: usize,
    }

    const FIVE_YEARS: Duration = Duration::Years(5);
    const THIRTY_DAYS: Duration = Duration::Days(30);

    impl Oracle {
        pub fn new(effective: Timestamp, choose_by: Timestamp) -> Oracle {
            Oracle {
                effective,
                choose_by,
                accounts: HashMap::new(),
                conversations: HashMap::new(),
                holds: HashMap::new(),
                order: 0,
            }
        }

        fn live(&self, account: usize) -> Option<&Account> {
            self.accounts
                .get(&account)
                .filter(|a| a.erased_at.is_none())
        }

        pub fn is_live_consumer(&self, account: usize) -> bool {
            self.live(account).is_some_and(|a| a.consumer)
        }

        /// (expiry, extended?) of a conversation that still has content.
        pub fn expiry(&self, conversation: usize) -> Option<(Timestamp, bool)> {
            let c = self.conversations.get(&conversation)?;
            let last = c.activities.last()?;
            let extended = c.activities.iter().any(|a| a.at == last.at && a.covered);
            let mut at = last
                .at
                .saturating_add(if extended { FIVE_YEARS } else { THIRTY_DAYS });
            let owner = &self.accounts[&c.owner];
            for (order, w) in &owner.withdrawals {
                if *order > last.order {
                    at = at.min(w.saturating_add(THIRTY_DAYS));
                }
            }
            if let Some(deleted) = c.deleted_at {
                at = at.min(deleted.saturating_add(THIRTY_DAYS));
            }
            if let Some(erased) = owner.erased_at {
                at = at.min(erased);
            }
            Some((at, extended))
        }

        pub fn held(&self, conversation: usize) -> bool {
            let owner = self.conversations[&conversation].owner;
            self.holds.values().any(|h| {
                h.active && (h.conversation == Some(conversation) || h.account == Some(owner))
            })
        }

        pub fn eligibility(&self, conversation: usize, now: Timestamp) -> R {
            let c = &self.conversations[&conversation];
            let owner = &self.accounts[&c.owner];
            if c.purged {
                return R::Purged;
            }
            if owner.erased_at.is_some() {
                return R::AccountErased;
            }
            if c.deleted_at.is_some() {
                return R::Deleted;
            }
            if self.expiry(conversation).is_none_or(|(at, _)| at <= now) {
                return R::Expired;
            }
            if c.incognito {
                return R::Incognito;
            }
            if !owner.consumer {
                return R::NotConsumerPlan;
            }
            match owner.pref {
                Some(false) => return R::TrainingDeclined,
                None => return R::TrainingUndecided,
                Some(true) => {}
            }
            if !c.activities.iter().any(|a| a.covered) {
                return R::NotCovered;
            }
            if let Some((last_withdrawal, _)) = owner.withdrawals.last()
                && !c
                    .activities
                    .iter()
                    .any(|a| a.covered && a.order > *last_withdrawal)
            {
                return R::Withdrawn;
            }
            R::Eligible
        }

        pub fn gate(&self, account: usize, now: Timestamp) -> (GateDecision, GateReason) {
            let a = &self.accounts[&account];
            if !a.consumer {
                (GateDecision::Allow, GateReason::NotApplicable)
            } else if a.pref.is_some() {
                (GateDecision::Allow, GateReason::Decided)
            } else if now < self.choose_by {
                (GateDecision::Prompt, GateReason::ChoicePending)
            } else {
                (GateDecision::Block, GateReason::ChoiceRequired)
            }
        }

        /// Whether the conversation is still there for its owner to add to.
        fn open_for_activity(&self, account: usize, conversation: usize, now: Timestamp) -> bool {
            let c = &self.conversations[&conversation];
            c.owner == account
                && !c.purged
                && c.deleted_at.is_none()
                && self.expiry(conversation).is_some_and(|(at, _)| at > now)
        }

        /// A message (which may start a conversation, with its incognito flag) or feedback
        /// (which may not); returns whether it was admitted.
        fn record_activity(
            &mut self,
            order: usize,
            now: Timestamp,
            account: usize,
            conversation: usize,
            starts_with_incognito: Option<bool>,
        ) -> bool {
            let Some(a) = self.live(account) else {
                return false;
            };
            let allowed_now = a.consumer && a.pref == Some(true);
            let on_consumer_plan = a.consumer;
            let exists = self.conversations.contains_key(&conversation);
            if exists && !self.open_for_activity(account, conversation, now) {
                return false;
            }
            let Some(incognito) = starts_with_incognito.or(exists.then_some(false)) else {
                return false; // feedback needs an existing conversation
            };
            let c = self
                .conversations
                .entry(conversation)
                .or_insert(Conversation {
                    owner: account,
                    incognito,
                    activities: vec![],
                    deleted_at: None,
                    purged: false,
                });
            let covered = allowed_now && !c.incognito;
            let is_message = starts_with_incognito.is_some();
            c.activities.push(Activity {
                order,
                at: now,
                covered,
                on_consumer_plan,
                is_message,
            });
            true
        }

        /// Applies an event if the rules admit it; returns whether they did.
        pub fn apply(&mut self, now: Timestamp, event: &Event) -> bool {
            self.order += 1;
            let order = self.order;
            match *event {
                Event::Create {
                    account,
                    plan,
                    choice,
                } => {
                    let Some(consumer) = class(PLANS[plan]) else {
                        return false;
                    };
                    if self.accounts.contains_key(&account)
                        || (consumer && choice.is_none() && now >= self.effective)
                        || (!consumer && choice.is_some())
                    {
                        return false;
                    }
                    let a = Account {
                        consumer,
                        pref: choice,
                        erased_at: None,
                        withdrawals: vec![],
                    };
                    self.accounts.insert(account, a);
                }
                Event::Choose { account, allowed } => {
                    if !self.is_live_consumer(account) {
                        return false;
                    }
                    let Some(a) = self.accounts.get_mut(&account) else {
                        return false;
                    };
                    if a.pref == Some(true) && !allowed {
                        a.withdrawals.push((order, now));
                    }
                    a.pref = Some(allowed);
                }
                Event::NoticeShown { account } => return self.live(account).is_some(),
                Event::ChangePlan { account, plan } => {
                    let Some(consumer) = class(PLANS[plan]) else {
                        return false;
                    };
                    if self.live(account).is_none() {
                        return false;
                    }
                    let Some(a) = self.accounts.get_mut(&account) else {
                        return false;
                    };
                    if a.consumer && !consumer && a.pref == Some(true) {
                        a.withdrawals.push((order, now));
                    }
                    a.consumer = consumer;
                }
                Event::Message {
                    account,
                    conversation,
                    incognito,
                    ..
                } => {
                    return self.record_activity(
                        order,
                        now,
                        account,
                        conversation,
                        Some(incognito),
                    );
                }
                Event::Feedback {
                    account,
                    conversation,
                    ..
                } => return self.record_activity(order, now, account, conversation, None),
                Event::Delete { conversation } => {
                    let Some(c) = self.conversations.get_mut(&conversation) else {
                        return false;
                    };
                    if c.purged || c.deleted_at.is_some() {
                        return false;
                    }
                    c.deleted_at = Some(now);
                }
                Event::Hold {
                    hold,
                    on_account,
                    target,
                } => {
                    let account_target = target % crate::support::ACCOUNTS;
                    let known = if on_account {
                        self.accounts.contains_key(&account_target)
                    } else {
                        self.conversations.contains_key(&target)
                    };
                    if self.holds.contains_key(&hold) || !known {
                        return false;
                    }
                    let h = Hold {
                        account: on_account.then_some(account_target),
                        conversation: (!on_account).then_some(target),
                        active: true,
                    };
                    self.holds.insert(hold, h);
                }
                Event::Release { hold } => match self.holds.get_mut(&hold) {
                    Some(h) if h.active => h.active = false,
                    _ => return false,
                },
                Event::Erase { account } => {
                    if self.live(account).is_none() {
                        return false;
                    }
                    if let Some(a) = self.accounts.get_mut(&account) {
                        a.erased_at = Some(now);
                    }
                }
                Event::Sweep => {
                    let due: Vec<usize> = self
                        .conversations
                        .iter()
                        .filter(|(id, c)| {
                            !c.purged
                                && self.expiry(**id).is_some_and(|(at, _)| at <= now)
                                && !self.held(**id)
                        })
                        .map(|(id, _)| *id)
                        .collect();
                    for id in due {
                        if let Some(c) = self.conversations.get_mut(&id) {
                            c.purged = true;
                            c.activities.clear();
                        }
                    }
                }
            }
            true
        }
    }
}

/// Replays `ops` through the core and the oracle side by side, calling `check` after each step.
/// Messages are labelled with the plan class the oracle sees when they are sent, so that a
/// test can look for business-plan text in an export.
fn replay(
    ops: &[Op],
    policy: Policy,
    mut check: impl FnMut(&Timeline, &oracle::Oracle, Timestamp),
) {
    let mut core = Timeline::new(policy.clone());
    let mut model = oracle::Oracle::new(policy.effective, policy.choose_by);
    let mut now = start();
    for (index, op) in ops.iter().enumerate() {
        now = Timestamp::from_unix_millis(now.unix_millis() + op.advance_ms).unwrap_or(now);
        let mut cmd = command(&op.event);
        let label = |account: &custos_core::AccountId| {
            let index: usize = account.as_str()[1..].parse().unwrap();
            if model.is_live_consumer(index) {
                "consumer plan"
            } else {
                "business plan"
            }
        };
        match &mut cmd {
            Command::Message { account, text, .. } => *text = label(account).to_owned(),
            Command::Feedback {
                account, comment, ..
            } => *comment = Some(label(account).to_owned()),
            _ => {}
        }
        let core_result = core.apply(now, cmd.clone());
        let model_accepted = model.apply(now, &op.event);
        assert_eq!(
            core_result.is_ok(),
            model_accepted,
            "step {index} at {now}: {cmd:?} → core {core_result:?}, oracle accepted: {model_accepted}"
        );
        check(&core, &model, now);
    }
}

/// Every answer of the core equals the oracle's, after every step.
fn assert_same_answers(core: &Timeline, model: &oracle::Oracle, now: Timestamp) {
    for (index, account) in &model.accounts {
        if account.erased_at.is_none() {
            let gate = core.gate(&account_id(*index), now).unwrap();
            assert_eq!(
                (gate.decision, gate.reason),
                model.gate(*index, now),
                "gate of a{index} at {now}"
            );
        }
    }
    let mut eligible = Vec::new();
    for index in model.conversations.keys() {
        let status = core
            .conversation_status(&conversation_id(*index), now)
            .unwrap();
        let reason = model.eligibility(*index, now);
        assert_eq!(
            status.eligibility, reason,
            "eligibility of c{index} at {now}"
        );
        let expected = model.expiry(*index);
        assert_eq!(
            status.expiry.map(|e| e.at),
            expected.map(|(at, _)| at),
            "expiry of c{index}"
        );
        assert_eq!(
            status
                .expiry
                .map(|e| e.class == custos_core::RetentionClass::Extended),
            expected.map(|(_, extended)| extended),
            "class of c{index}"
        );
        if !model.conversations[index].purged {
            assert_eq!(status.held, model.held(*index), "held of c{index}");
        }
        if reason == EligibilityReason::Eligible {
            eligible.push(conversation_id(*index));
        }
    }
    eligible.sort();
    let snapshot = core.snapshot(now);
    let included: Vec<_> = snapshot
        .included
        .iter()
        .map(|(id, _)| (*id).clone())
        .collect();
    assert_eq!(included, eligible, "export at {now}");
    for (id, content) in &snapshot.included {
        let index: usize = id.as_str()[1..].parse().unwrap();
        let activities = &model.conversations[&index].activities;
        let count = |message: bool| {
            activities
                .iter()
                .filter(|a| a.is_message == message && a.on_consumer_plan)
                .count()
        };
        assert_eq!(
            (content.messages.len(), content.feedback.len()),
            (count(true), count(false)),
            "content of {id}"
        );
    }
}

/// invariant 1 of docs/POLICY.md, stated as absences and checked on the core's own export.
fn assert_export_holds_only_allowed_data(core: &Timeline, model: &oracle::Oracle, now: Timestamp) {
    for (id, content) in core.snapshot(now).included {
        let index: usize = id.as_str()[1..].parse().unwrap();
        let conversation = &model.conversations[&index];
        let owner = &model.accounts[&conversation.owner];
        assert!(
            owner.consumer,
            "{id}: exported while its account is on a business plan"
        );
        assert_eq!(
            owner.pref,
            Some(true),
            "{id}: exported while the choice is not `allowed`"
        );
        assert!(owner.erased_at.is_none(), "{id}: exported after erasure");
        assert!(
            !conversation.incognito,
            "{id}: incognito conversation exported"
        );
        assert!(
            conversation.deleted_at.is_none() && !conversation.purged,
            "{id}: deleted or purged"
        );
        assert!(
            model.expiry(index).is_some_and(|(at, _)| at > now),
            "{id}: expired"
        );
        let latest_withdrawal = owner.withdrawals.last().map_or(0, |(order, _)| *order);
        assert!(
            conversation
                .activities
                .iter()
                .any(|a| a.covered && a.order > latest_withdrawal),
            "{id}: every covered activity precedes the latest withdrawal"
        );
        assert!(
            content
                .messages
                .iter()
                .all(|m| m.text == "consumer plan" && m.key.at <= now)
        );
        assert!(
            content
                .feedback
                .iter()
                .all(|f| f.comment.as_deref() == Some("consumer plan"))
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_core_agrees_with_an_independent_model_after_every_step(ops in timeline(60)) {
        replay(&ops, Policy::bundled(), assert_same_answers);
    }

    #[test]
    fn no_export_ever_contains_data_the_user_did_not_allow(ops in timeline(80)) {
        replay(&ops, Policy::bundled(), assert_export_holds_only_allowed_data);
    }

    #[test]
    fn business_plans_are_never_prompted(ops in timeline(60), later_days in 0i64..2000) {
        replay(&ops, Policy::bundled(), |core, model, now| {
            let later = Timestamp::from_unix_millis(now.unix_millis() + later_days * 86_400_000).unwrap();
            for (index, account) in &model.accounts {
                if account.erased_at.is_none() && !account.consumer {
                    for at in [now, later] {
                        let gate = core.gate(&account_id(*index), at).unwrap();
                        assert_eq!((gate.decision, gate.reason), (GateDecision::Allow, GateReason::NotApplicable), "a{index} at {at}");
                    }
                }
            }
        });
    }

    #[test]
    fn a_refusal_is_never_turned_into_a_prompt(ops in timeline(60), later_days in 0i64..2000) {
        // Under the bundled policy and under a new notice version with later dates alike.
        let next = Policy::parse("next.toml", &Policy::bundled_text()
            .replace("id = \"consumer-terms-2025\"", "id = \"consumer-terms-2027\"")
            .replace("effective = 2025-08-28T00:00:00Z", "effective = 2027-01-01T00:00:00Z")
            .replace("choose_by = 2025-09-29T00:00:00Z", "choose_by = 2027-02-01T00:00:00Z")).unwrap();
        for policy in [Policy::bundled(), next] {
            replay(&ops, policy, |core, model, now| {
                let later = Timestamp::from_unix_millis(now.unix_millis() + later_days * 86_400_000).unwrap();
                for (index, account) in &model.accounts {
                    if account.erased_at.is_none() && account.pref == Some(false) {
                        for at in [now, later] {
                            let gate = core.gate(&account_id(*index), at).unwrap();
                            assert_eq!(gate.decision, GateDecision::Allow, "a{index} refused yet asked again at {at}");
                        }
                    }
                }
            });
        }
    }

    #[test]
    fn a_withdrawal_never_lengthens_an_expiry(ops in timeline(60), advance_ms in 0i64..(40 * 86_400_000), to_business in any::<bool>()) {
        let mut core = Timeline::new(Policy::bundled());
        let mut now = start();
        for op in &ops {
            now = Timestamp::from_unix_millis(now.unix_millis() + op.advance_ms).unwrap();
            let _ = core.apply(now, command(&op.event));
        }
        let at = Timestamp::from_unix_millis(now.unix_millis() + advance_ms).unwrap();
        let accounts: Vec<_> = core.accounts().filter(|a| a.erased().is_none()).map(|a| a.id.clone()).collect();
        for account in accounts {
            let withdrawal = if to_business {
                Command::ChangePlan { account: account.clone(), plan: "team".into() }
            } else {
                Command::Choose { account: account.clone(), allowed: false, channel: custos_core::Channel::Settings }
            };
            let mut after = core.clone();
            if after.apply(at, withdrawal).is_err() {
                continue;
            }
            for conversation in core.conversations().filter(|c| c.owner == account) {
                let before = core.conversation_status(&conversation.id, at).unwrap();
                let later = after.conversation_status(&conversation.id, at).unwrap();
                if let (Some(b), Some(l)) = (before.expiry, later.expiry) {
                    prop_assert!(l.at <= b.at, "{}: {} → {}", conversation.id, b.at, l.at);
                }
                prop_assert_eq!(before.expiry.is_some(), later.expiry.is_some());
            }
        }
    }

    #[test]
    fn a_deletion_never_makes_anything_eligible(ops in timeline(60), advance_ms in 0i64..(40 * 86_400_000)) {
        let mut core = Timeline::new(Policy::bundled());
        let mut now = start();
        for op in &ops {
            now = Timestamp::from_unix_millis(now.unix_millis() + op.advance_ms).unwrap();
            let _ = core.apply(now, command(&op.event));
        }
        let at = Timestamp::from_unix_millis(now.unix_millis() + advance_ms).unwrap();
        let before = core.snapshot(at);
        let before_ids: Vec<_> = before.included.iter().map(|(id, _)| (*id).clone()).collect();
        for conversation in core.conversations() {
            let mut after = core.clone();
            if after.apply(at, Command::DeleteConversation { conversation: conversation.id.clone() }).is_err() {
                continue;
            }
            let after_ids: Vec<_> = after.snapshot(at).included.iter().map(|(id, _)| (*id).clone()).collect();
            prop_assert!(after_ids.iter().all(|id| before_ids.contains(id)), "a deletion made something eligible");
            prop_assert!(!after_ids.contains(&conversation.id), "the deleted conversation is still eligible");
            let reason = after.conversation_status(&conversation.id, at).unwrap().eligibility;
            prop_assert!(!reason.is_eligible());
        }
    }

    #[test]
    fn five_years_from_a_leap_day_ends_on_the_last_day_of_february(
        four_years in 1i32..2000, years in 1u32..=100, hour in 0u32..24, millis in 0u32..3_600_000,
    ) {
        let year = four_years * 4; // every multiple of 4 here is a leap year unless a century
        let is_leap = |y: i32| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        prop_assume!(is_leap(year));
        let text = format!("{year:04}-02-29T{hour:02}:{:02}:{:02}.{:03}Z", millis / 60_000, millis / 1000 % 60, millis % 1000);
        let start = Timestamp::parse(&text).unwrap();
        let target = year + i32::try_from(years).unwrap();
        let expected_day = if is_leap(target) { 29 } else { 28 };
        let expected = format!("{target:04}-02-{expected_day}{}", &text[10..]);
        prop_assert_eq!(start.saturating_add(Duration::Years(years)).to_string(), expected);
    }
}
