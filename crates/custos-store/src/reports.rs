//! Figures for auditors: retention and consent, counted in the database, read from one
//! snapshot. Counts only: no account id or content appears in a report.

use custos_core::{AccountHistory, Channel, EventKey, Policy, Preference, Timestamp};
use serde_json::{Map, Value, json};

use crate::StoreError;
use crate::engine::{HistoriesInOrder, LEDGER_COLUMNS, entry_from_row};
use crate::sql::Tx;

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
/// How far back the per-day series go.
const DAYS_BACK: i64 = 90;

fn day(millis: i64) -> String {
    Timestamp::from_unix_millis(millis.div_euclid(DAY_MS) * DAY_MS)
        .map(|t| t.to_string()[..10].to_owned())
        .unwrap_or_default()
}

/// Conversations per retention class; purges due per week for the next 12 weeks (and those
/// already due); purges per reason per day over the last 90 days; legal holds.
pub fn retention(tx: &mut dyn Tx, now: Timestamp) -> Result<Value, StoreError> {
    let now_ms = now.unix_millis();
    let mut classes = Map::new();
    for row in tx.query(
        "SELECT retention_class, COUNT(*) FROM conversations WHERE purged_at IS NULL GROUP BY retention_class",
        &[],
    )? {
        let class = row.optional_text(0)?.unwrap_or_else(|| "none".to_owned());
        classes.insert(class, json!(row.int(1)?));
    }
    let overdue = tx
        .query_one(
            "SELECT COUNT(*) FROM conversations WHERE purged_at IS NULL AND expires_at <= ?",
            &[now_ms.into()],
        )?
        .map_or(Ok(0), |r| r.int(0))?;
    let mut weeks = [0i64; 12];
    for row in tx.query(
        "SELECT (expires_at - ?) / ?, COUNT(*) FROM conversations \
         WHERE purged_at IS NULL AND expires_at > ? AND expires_at <= ? GROUP BY 1",
        &[
            now_ms.into(),
            WEEK_MS.into(),
            now_ms.into(),
            (now_ms + 12 * WEEK_MS).into(),
        ],
    )? {
        // A conversation due exactly at the end of week N (relative) counts in week N.
        let index = usize::try_from(row.int(0)?).unwrap_or(usize::MAX).min(11);
        if let Some(slot) = weeks.get_mut(index) {
            *slot += row.int(1)?;
        }
    }
    let due_by_week: Vec<Value> = weeks
        .iter()
        .enumerate()
        .map(|(index, count)| {
            let starts = now_ms + i64::try_from(index).unwrap_or(0) * WEEK_MS;
            json!({"week_starting": Timestamp::from_unix_millis(starts).map(|t| t.to_string()), "due": count})
        })
        .collect();
    let mut purged = Vec::new();
    for row in tx.query(
        "SELECT purged_at / ?, reason, COUNT(*) FROM tombstones WHERE purged_at > ? \
         GROUP BY 1, 2 ORDER BY 1, 2",
        &[DAY_MS.into(), (now_ms - DAYS_BACK * DAY_MS).into()],
    )? {
        purged.push(json!({"day": day(row.int(0)? * DAY_MS), "reason": row.text(1)?, "purged": row.int(2)?}));
    }
    let holds = tx
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE released_at IS NULL AND account_id IS NOT NULL), \
             COUNT(*) FILTER (WHERE released_at IS NULL AND conversation_id IS NOT NULL), \
             COUNT(*) FILTER (WHERE released_at IS NOT NULL) FROM holds",
            &[],
        )?
        .map(|r| -> Result<Value, StoreError> {
            Ok(json!({"active_on_accounts": r.int(0)?, "active_on_conversations": r.int(1)?, "released": r.int(2)?}))
        })
        .transpose()?;
    Ok(json!({
        "at": now.to_string(),
        "conversations_by_class": classes,
        "due_now": overdue,
        "due_by_week": due_by_week,
        "purged_by_day": purged,
        "holds": holds,
    }))
}

/// Accounts per plan and training preference; choices per channel per day over the last 90
/// days; consumer accounts still undecided, against the policy's deadline.
pub fn consent(tx: &mut dyn Tx, policy: &Policy, now: Timestamp) -> Result<Value, StoreError> {
    let now_ms = now.unix_millis();
    let mut accounts = Vec::new();
    let mut undecided = 0i64;
    for row in tx.query(
        "SELECT plan, preference, COUNT(*) FROM accounts WHERE erased_at IS NULL \
         GROUP BY plan, preference ORDER BY plan, preference",
        &[],
    )? {
        let plan = row.optional_text(0)?.unwrap_or_default();
        let preference = row.optional_text(1)?.unwrap_or_else(|| "unset".to_owned());
        let count = row.int(2)?;
        let consumer = policy.is_consumer_plan_named(&plan);
        if consumer && preference == "unset" {
            undecided += count;
        }
        accounts.push(json!({"plan": plan, "consumer": consumer, "preference": preference, "accounts": count}));
    }
    let erased = tx
        .query_one(
            "SELECT COUNT(*) FROM accounts WHERE erased_at IS NOT NULL",
            &[],
        )?
        .map_or(Ok(0), |r| r.int(0))?;
    let mut choices = Vec::new();
    for row in tx.query(
        "SELECT at / ?, channel, preference, COUNT(*) FROM ledger WHERE kind = 'choice' AND at > ? \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        &[DAY_MS.into(), (now_ms - DAYS_BACK * DAY_MS).into()],
    )? {
        choices.push(json!({
            "day": day(row.int(0)? * DAY_MS),
            "channel": row.optional_text(1)?,
            "preference": row.optional_text(2)?,
            "choices": row.int(3)?,
        }));
    }
    let remaining_ms = policy.choose_by.unix_millis() - now_ms;
    Ok(json!({
        "at": now.to_string(),
        "accounts_by_plan_and_preference": accounts,
        "erased_accounts": erased,
        "choices_by_day": choices,
        "deadline": {
            "notice": policy.id,
            "choose_by": policy.choose_by.to_string(),
            "passed": remaining_ms <= 0,
            "days_left": if remaining_ms > 0 { (remaining_ms + DAY_MS - 1) / DAY_MS } else { 0 },
            "undecided_consumer_accounts": undecided,
        },
    }))
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
