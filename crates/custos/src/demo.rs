//! `custos demo`: fills a data folder with realistic synthetic history, through the same store
//! path as real traffic (admission by the core, the ledger, expiries), in batched transactions.
//!
//! The data spans from before the policy took effect to `--now`: a plan mix, users who chose in
//! the notice before the deadline, after it, or never; signups with a choice; changes of mind;
//! moves between plans; chats and coding sessions, incognito chats, feedback, deletions; and text
//! that sometimes holds an email address, a phone number, an API key or a card number, so that
//! exports have something to redact. The same seed gives the same data.

use custos_core::{
    AccountId, Channel, Command, ConversationId, Policy, Rating, Role, Surface, Timestamp,
};
use custos_store::Store;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{Failure, StoreArgs, parse_now, print, store_failure};

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// How many accounts.
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    /// How many conversations, spread over the accounts.
    #[arg(long, default_value_t = 5000)]
    conversations: u64,
    /// The present of the generated history (RFC 3339) [default: the wall clock].
    #[arg(long)]
    now: Option<String>,
    /// Seed of the generator: the same seed gives the same data.
    #[arg(long, default_value_t = 2025)]
    seed: u64,
}

/// `custos demo`: fills the folder and says what it made.
pub fn command(args: DemoArgs) -> Result<(), Failure> {
    let now = parse_now(args.now)?;
    let store = args.store.open()?;
    let started = std::time::Instant::now();
    let report =
        run(&store, args.accounts, args.conversations, now, args.seed).map_err(store_failure)?;
    print(&format!(
        "demo data in {}: {} accounts, {} conversations, {} events recorded ({} refused by the rules) in {:.1} s\n",
        args.store.data.display(),
        report.accounts,
        report.conversations,
        report.events,
        report.refused,
        started.elapsed().as_secs_f64()
    ))
}

/// SplitMix64: small, fast, and enough for synthetic data.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// A time in [from, to).
    fn between(&mut self, from: Timestamp, to: Timestamp) -> Timestamp {
        let span = u64::try_from(to.unix_millis() - from.unix_millis())
            .unwrap_or(0)
            .max(1);
        let offset = i64::try_from(self.below(span)).unwrap_or(0);
        Timestamp::from_unix_millis(from.unix_millis() + offset).unwrap_or(from)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items
            .get(usize::try_from(self.below(items.len() as u64)).unwrap_or(0))
            .copied()
            .unwrap_or("")
    }
}

/// Large enough that commits are rare, small enough to keep memory flat.
const EVENTS_PER_TRANSACTION: usize = 50_000;

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

fn plus(at: Timestamp, millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(at.unix_millis().saturating_add(millis)).unwrap_or(Timestamp::MAX)
}

const PROMPTS: &[&str] = &[
    "Can you help me plan a week of vegetarian dinners?",
    "Explain the difference between TCP and UDP like I'm new to networking.",
    "Draft a polite email asking my landlord to fix the heating.",
    "Why does this Rust borrow checker error happen?",
    "Summarize the main arguments of this article for me.",
    "Write a unit test for a function that parses dates.",
    "My email is jane.doe@example.com, please format my CV header.",
    "Call me at +1 415 555 0134 if the booking changes — can you word that?",
    "This config has my key sk-live-51HxQ2bC9dT0Ez7 in it, why does it fail?",
    "I paid with card 4111 1111 1111 1111 and was charged twice, help me write a complaint.",
    "Refactor this function to avoid the nested loops.",
    "What's a good way to learn conversational Italian in three months?",
];

const REPLIES: &[&str] = &[
    "Here is a plan you can adapt.",
    "Sure — the short answer is this, and here is why.",
    "I would start by checking the error message line by line.",
    "Here is a draft you can edit before sending.",
    "That happens because the value is moved; borrow it instead.",
];

/// What `custos demo` did.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub accounts: u64,
    pub conversations: u64,
    pub events: u64,
    pub refused: u64,
}

pub fn run(
    store: &Store,
    accounts: u64,
    conversations: u64,
    now: Timestamp,
    seed: u64,
) -> Result<DemoReport, custos_store::StoreError> {
    let policy = store.policy().clone();
    let mut report = DemoReport::default();
    let progress = ProgressBar::new(conversations.max(1));
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} demo data [{bar:40}] {pos}/{len} conversations, {msg} ({eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let history_start = plus(policy.effective, -90 * DAY);
    // Whole account histories, loaded in large transactions through the bulk path (the core
    // admits every event in memory; each account is written once). One thread makes and admits
    // the next histories while this one writes the last: the database's work and ours overlap.
    let (admitted_tx, admitted_rx) = std::sync::mpsc::sync_channel(1);
    let made_conversations = store.load_into_empty(|store| {
        std::thread::scope(|scope| {
            let maker = scope.spawn(move || {
                let mut random = Random(seed);
                let mut made_conversations = 0u64;
                let mut pending: Vec<Vec<(Timestamp, Command)>> = Vec::new();
                let mut pending_events = 0;
                for index in 0..accounts {
                    let mut events = Vec::new();
                    events_of_account(
                        &policy,
                        &mut random,
                        index,
                        accounts,
                        conversations,
                        &mut made_conversations,
                        history_start,
                        now,
                        &mut events,
                    );
                    pending_events += events.len();
                    pending.push(events);
                    if pending_events >= EVENTS_PER_TRANSACTION || index + 1 == accounts {
                        let admitted = store.admit_new_accounts(&pending, "demo");
                        let stop = admitted.is_err();
                        let sent = (admitted, pending.len() as u64, made_conversations);
                        if admitted_tx.send(sent).is_err() || stop {
                            break;
                        }
                        pending.clear();
                        pending_events = 0;
                    }
                }
                made_conversations
            });
            for (admitted, accounts_in_it, made_so_far) in admitted_rx {
                // An error drops the receiver, which stops the maker at its next send.
                for outcome in store.write_new_accounts(admitted?)?.iter().flatten() {
                    match outcome {
                        Ok(()) => report.events += 1,
                        Err(_) => report.refused += 1,
                    }
                }
                report.accounts += accounts_in_it;
                progress.set_position(made_so_far);
                progress.set_message(format!("{} accounts", report.accounts));
            }
            maker.join().map_err(|_| {
                custos_store::StoreError::Database("the demo's generator failed".into())
            })
        })
    })?;
    report.conversations = made_conversations;
    progress.finish_and_clear();
    store.checkpoint(now)?;
    Ok(report)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one generator step with its running totals"
)]
fn events_of_account(
    policy: &Policy,
    random: &mut Random,
    index: u64,
    accounts: u64,
    conversations: u64,
    made: &mut u64,
    history_start: Timestamp,
    now: Timestamp,
    out: &mut Vec<(Timestamp, Command)>,
) {
    let Ok(account) = AccountId::parse(&format!("demo-{index:08}")) else {
        return;
    };
    let plan = match random.below(100) {
        0..=59 => "free",
        60..=81 => "pro",
        82..=87 => "max",
        88..=93 => "team",
        94..=96 => "enterprise",
        _ => "api",
    };
    let consumer = policy.is_consumer(&custos_core::policy::Plan::recorded(plan));
    let created = random.between(history_start, plus(now, -DAY));
    let mut events = Vec::new();
    let signup_choice =
        (consumer && created >= policy.effective).then(|| (random.chance(62), Channel::Signup));
    events.push((
        created,
        Command::CreateAccount {
            account: account.clone(),
            plan: plan.to_owned(),
            choice: signup_choice,
        },
    ));
    if consumer && signup_choice.is_none() {
        // An existing user sees the notice: most choose before the deadline, some after, some never.
        let roll = random.below(100);
        let shown = random.between(
            policy.effective.max(created),
            policy.choose_by.max(plus(created, DAY)),
        );
        if roll < 80 {
            events.push((
                shown,
                Command::NoticeShown {
                    account: account.clone(),
                },
            ));
            let chosen = if roll < 60 {
                plus(shown, random.below(20) as i64 * MINUTE)
            } else {
                random.between(policy.choose_by, now.max(plus(policy.choose_by, DAY)))
            };
            let channel = if chosen < policy.choose_by {
                Channel::Notice
            } else {
                Channel::Settings
            };
            events.push((
                chosen,
                Command::Choose {
                    account: account.clone(),
                    allowed: random.chance(58),
                    channel,
                },
            ));
        }
    }
    if consumer && random.chance(6) {
        // A change of mind in privacy settings.
        let at = random.between(plus(created, DAY), now.max(plus(created, 2 * DAY)));
        events.push((
            at,
            Command::Choose {
                account: account.clone(),
                allowed: random.chance(40),
                channel: Channel::Settings,
            },
        ));
    }
    if random.chance(3) {
        let at = random.between(plus(created, DAY), now.max(plus(created, 2 * DAY)));
        let to = if consumer { "team" } else { "pro" };
        events.push((
            at,
            Command::ChangePlan {
                account: account.clone(),
                plan: to.to_owned(),
            },
        ));
    }
    // Spread the conversations evenly over the accounts, with some users far busier than others.
    let due = (index + 1) * conversations / accounts.max(1);
    let mut count = due.saturating_sub(*made);
    while count > 0 {
        let Ok(id) = ConversationId::parse(&format!("demo-{index:08}-{count}")) else {
            break;
        };
        let started = random.between(plus(created, MINUTE), now.max(plus(created, 2 * MINUTE)));
        let surface = if random.chance(18) {
            Surface::Code
        } else {
            Surface::Chat
        };
        let incognito = random.chance(3);
        let turns = 1 + random.below(3);
        let mut at = started;
        for turn in 0..turns {
            let prompt = random.pick(PROMPTS).to_owned();
            let reply = random.pick(REPLIES).to_owned();
            let message = |role, text: String| Command::Message {
                account: account.clone(),
                conversation: id.clone(),
                surface,
                role,
                text,
                incognito,
            };
            events.push((at, message(Role::User, prompt)));
            at = plus(at, MINUTE / 2);
            events.push((at, message(Role::Assistant, reply)));
            at = plus(at, (1 + turn as i64) * 3 * MINUTE);
        }
        if random.chance(14) {
            let rating = if random.chance(75) {
                Rating::Up
            } else {
                Rating::Down
            };
            let comment = random.chance(30).then(|| "That helped, thanks.".to_owned());
            events.push((
                at,
                Command::Feedback {
                    account: account.clone(),
                    conversation: id.clone(),
                    rating,
                    comment,
                },
            ));
        }
        if random.chance(2) {
            events.push((
                plus(at, DAY),
                Command::DeleteConversation {
                    conversation: id.clone(),
                },
            ));
        }
        count -= 1;
        *made += 1;
    }
    // Apply in time order, and never in the future of `now`.
    events.retain(|(at, _)| *at <= now);
    events.sort_by_key(|(at, _)| *at);
    out.extend(events);
}
