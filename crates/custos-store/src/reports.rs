//! Figures for auditors: retention and consent, counted in the database, read from one
//! snapshot. Counts only: no account id or content appears in a report.

use std::collections::BTreeMap;

use custos_core::{
    AccountHistory, Channel, Deadline, EventKey, Policy, Preference, Timestamp, deadline,
};
use serde::Serialize;

use crate::codec::{LEDGER_COLUMNS, entry_from_row};
use crate::error::StoreError;
use crate::records::HistoriesInOrder;
use crate::sql::Tx;

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
/// How far back the per-day series go.
const DAYS_BACK: i64 = 90;
/// How many weeks ahead purges due are counted.
const WEEKS_AHEAD: usize = 12;

fn day(millis: i64) -> String {
    Timestamp::from_unix_millis(millis.div_euclid(DAY_MS) * DAY_MS)
        .map(|t| t.to_string().get(..10).unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// Retention figures (`GET /v1/reports/retention`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub at: Timestamp,
    /// Conversations not purged, per retention class (`none` for those without activity).
    pub conversations_by_class: BTreeMap<String, u64>,
    /// Conversations due now, waiting for the next sweep.
    pub due_now: u64,
    /// Purges due in each of the next 12 weeks, counted from `at`.
    pub due_by_week: Vec<DueInWeek>,
    /// Conversations purged per day and reason over the last 90 days (from the tombstones).
    pub purged_by_day: Vec<PurgedOnDay>,
    pub holds: HoldCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DueInWeek {
    pub week_starting: Timestamp,
    pub due: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgedOnDay {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub reason: String,
    pub purged: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HoldCounts {
    pub active_on_accounts: u64,
    pub active_on_conversations: u64,
    pub released: u64,
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Conversations per retention class; purges due per week for the next 12 weeks (and those
/// already due); purges per reason per day over the last 90 days; legal holds.
pub fn retention(tx: &mut dyn Tx, now: Timestamp) -> Result<RetentionReport, StoreError> {
    let now_ms = now.unix_millis();
    let mut conversations_by_class = BTreeMap::new();
    for row in tx.query(
        "SELECT retention_class, COUNT(*) FROM conversations WHERE purged_at IS NULL GROUP BY retention_class",
        &[],
    )? {
        let class = row.optional_text(0)?.unwrap_or_else(|| "none".to_owned());
        conversations_by_class.insert(class, count(row.int(1)?));
    }
    let due_now = crate::sweep::count_due(tx, now)?;
    let mut weeks = [0u64; WEEKS_AHEAD];
    let weeks_ms = i64::try_from(WEEKS_AHEAD).unwrap_or(0) * WEEK_MS;
    for row in tx.query(
        "SELECT (expires_at - ?) / ?, COUNT(*) FROM conversation_expiry \
         WHERE expires_at > ? AND expires_at <= ? GROUP BY 1",
        &[
            now_ms.into(),
            WEEK_MS.into(),
            now_ms.into(),
            (now_ms + weeks_ms).into(),
        ],
    )? {
        // A conversation due exactly at the end of week N (relative) counts in week N.
        let index = usize::try_from(row.int(0)?)
            .unwrap_or(usize::MAX)
            .min(WEEKS_AHEAD - 1);
        if let Some(slot) = weeks.get_mut(index) {
            *slot += count(row.int(1)?);
        }
    }
    let due_by_week = weeks
        .iter()
        .enumerate()
        .filter_map(|(index, due)| {
            let starts = now_ms + i64::try_from(index).unwrap_or(0) * WEEK_MS;
            Some(DueInWeek {
                week_starting: Timestamp::from_unix_millis(starts)?,
                due: *due,
            })
        })
        .collect();
    let mut purged_by_day = Vec::new();
    for row in tx.query(
        "SELECT purged_at / ?, reason, COUNT(*) FROM tombstones WHERE purged_at > ? \
         GROUP BY 1, 2 ORDER BY 1, 2",
        &[DAY_MS.into(), (now_ms - DAYS_BACK * DAY_MS).into()],
    )? {
        purged_by_day.push(PurgedOnDay {
            day: day(row.int(0)? * DAY_MS),
            reason: row.text(1)?,
            purged: count(row.int(2)?),
        });
    }
    let holds = tx
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE released_at IS NULL AND account_id IS NOT NULL), \
             COUNT(*) FILTER (WHERE released_at IS NULL AND conversation_id IS NOT NULL), \
             COUNT(*) FILTER (WHERE released_at IS NOT NULL) FROM holds",
            &[],
        )?
        .map(|r| -> Result<HoldCounts, StoreError> {
            Ok(HoldCounts {
                active_on_accounts: count(r.int(0)?),
                active_on_conversations: count(r.int(1)?),
                released: count(r.int(2)?),
            })
        })
        .transpose()?
        .unwrap_or_default();
    Ok(RetentionReport {
        at: now,
        conversations_by_class,
        due_now,
        due_by_week,
        purged_by_day,
        holds,
    })
}

/// Consent figures (`GET /v1/reports/consent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentReport {
    pub at: Timestamp,
    pub accounts_by_plan_and_preference: Vec<AccountsOnPlan>,
    pub erased_accounts: u64,
    /// Choices made per day, channel and answer over the last 90 days.
    pub choices_by_day: Vec<ChoicesOnDay>,
    pub deadline: DeadlineFigures,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountsOnPlan {
    pub plan: String,
    pub consumer: bool,
    pub preference: String,
    pub accounts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChoicesOnDay {
    pub day: String,
    pub channel: Option<String>,
    pub preference: Option<String>,
    pub choices: u64,
}

/// The consumer accounts still undecided, against the deadline of the notice in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadlineFigures {
    pub notice: String,
    pub choose_by: Timestamp,
    pub passed: bool,
    pub days_left: u64,
    pub undecided_consumer_accounts: u64,
}

/// Accounts per plan and training preference; choices per channel per day over the last 90
/// days; consumer accounts still undecided, against the policy's deadline.
pub fn consent(
    tx: &mut dyn Tx,
    policy: &Policy,
    now: Timestamp,
) -> Result<ConsentReport, StoreError> {
    let now_ms = now.unix_millis();
    let mut accounts = Vec::new();
    let mut undecided = 0u64;
    for row in tx.query(
        "SELECT plan, preference, COUNT(*) FROM accounts WHERE erased_at IS NULL \
         GROUP BY plan, preference ORDER BY plan, preference",
        &[],
    )? {
        let plan = row.optional_text(0)?.unwrap_or_default();
        let preference = row
            .optional_text(1)?
            .unwrap_or_else(|| Preference::Unset.as_str().to_owned());
        let count = count(row.int(2)?);
        let consumer = policy.is_consumer_plan_named(&plan);
        if consumer && preference == Preference::Unset.as_str() {
            undecided += count;
        }
        accounts.push(AccountsOnPlan {
            plan,
            consumer,
            preference,
            accounts: count,
        });
    }
    let erased_accounts = tx
        .query_one(
            "SELECT COUNT(*) FROM accounts WHERE erased_at IS NOT NULL",
            &[],
        )?
        .map_or(Ok(0), |r| r.int(0))?;
    let mut choices_by_day = Vec::new();
    for row in tx.query(
        "SELECT at / ?, channel, preference, COUNT(*) FROM ledger WHERE kind = 'choice' AND at > ? \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        &[DAY_MS.into(), (now_ms - DAYS_BACK * DAY_MS).into()],
    )? {
        choices_by_day.push(ChoicesOnDay {
            day: day(row.int(0)? * DAY_MS),
            channel: row.optional_text(1)?,
            preference: row.optional_text(2)?,
            choices: count(row.int(3)?),
        });
    }
    let Deadline {
        choose_by,
        passed,
        days_left,
    } = deadline(policy, now);
    Ok(ConsentReport {
        at: now,
        accounts_by_plan_and_preference: accounts,
        erased_accounts: count(erased_accounts),
        choices_by_day,
        deadline: DeadlineFigures {
            notice: policy.id.clone(),
            choose_by,
            passed,
            days_left,
            undecided_consumer_accounts: undecided,
        },
    })
}

/// How the consumer accounts' choices stood at the end of each of the last weeks, replayed from
/// the ledger (the evidence itself, not a counter kept beside it), and the choices made in each
/// week by channel. For the operator dashboard; counts only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsentOverTime {
    /// The end of each week, oldest first; the last is `now`.
    pub week_ends: Vec<Timestamp>,
    /// Per consumer plan: per week, accounts `[allowed, declined, undecided]` on it then.
    pub by_plan: Vec<(String, Vec<[u64; 3]>)>,
    /// Accounts on a business plan at each week's end (never asked).
    pub business: Vec<u64>,
    /// Per channel (`signup`, `notice`, `settings`): choices made in each week.
    pub choices_by_channel: Vec<(String, Vec<u64>)>,
}

/// Each account's ledger is rebuilt into the core's `AccountHistory`, and each week's end asks
/// it `plan_at` and `preference_at`, as every decision does: the report restates no rule.
pub fn consent_over_time(
    tx: &mut dyn Tx,
    policy: &Policy,
    now: Timestamp,
    weeks: usize,
) -> Result<ConsentOverTime, StoreError> {
    let now_ms = now.unix_millis();
    let week_ends: Vec<Timestamp> = (0..weeks)
        .rev()
        .filter_map(|back| {
            Timestamp::from_unix_millis(now_ms - i64::try_from(back).unwrap_or(0) * WEEK_MS)
        })
        .collect();
    // A week's end sees every event timed at or before it.
    let as_of: Vec<EventKey> = week_ends
        .iter()
        .map(|end| EventKey::new(*end, u64::MAX))
        .collect();
    let first_week_starts = week_ends
        .first()
        .map_or(now_ms, |end| end.unix_millis() - WEEK_MS);
    let mut out = ConsentOverTime {
        by_plan: policy
            .consumer_plans()
            .iter()
            .map(|p| (p.as_str().to_owned(), vec![[0; 3]; week_ends.len()]))
            .collect(),
        business: vec![0; week_ends.len()],
        choices_by_channel: [Channel::Signup, Channel::Notice, Channel::Settings]
            .iter()
            .map(|c| (c.as_str().to_owned(), vec![0; week_ends.len()]))
            .collect(),
        week_ends,
    };
    let tally = |history: &AccountHistory, out: &mut ConsentOverTime| {
        for (week, &key) in as_of.iter().enumerate() {
            if history.created() >= key || history.erased_before(key).is_some() {
                continue;
            }
            let plan = history.plan_at(key);
            let count = if policy.is_consumer(plan) {
                let slot = match history.preference_at(key) {
                    Preference::Allowed => 0,
                    Preference::Declined => 1,
                    Preference::Unset => 2,
                };
                out.by_plan
                    .iter_mut()
                    .find(|(p, _)| p == plan.as_str())
                    .and_then(|(_, counts)| counts.get_mut(week)?.get_mut(slot))
            } else {
                out.business.get_mut(week)
            };
            if let Some(count) = count {
                *count += 1;
            }
        }
        for choice in history.choices() {
            let at = choice.key.at.unix_millis();
            if at <= first_week_starts || at > now_ms {
                continue;
            }
            let week = usize::try_from((at - first_week_starts - 1) / WEEK_MS).unwrap_or(0);
            let slot = out
                .choices_by_channel
                .iter_mut()
                .find(|(c, _)| c == choice.channel.as_str())
                .and_then(|(_, counts)| counts.get_mut(week));
            if let Some(slot) = slot {
                *slot += 1;
            }
        }
    };
    // One account's history at a time.
    let mut histories = HistoriesInOrder::default();
    tx.query_each(
        &format!("SELECT {LEDGER_COLUMNS} FROM ledger ORDER BY account_id, idx"),
        &[],
        &mut |row| {
            if let Some(history) = histories.push(entry_from_row(row)?)? {
                tally(&history, &mut out);
            }
            Ok(())
        },
    )?;
    if let Some(history) = histories.finish()? {
        tally(&history, &mut out);
    }
    Ok(out)
}
