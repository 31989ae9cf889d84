//! Figures for auditors: retention and consent, counted in the database, read from one
//! snapshot. Counts only: no account id or content appears in a report.

use custos_core::{Policy, Timestamp};
use serde_json::{Map, Value, json};

use crate::StoreError;
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

/// Where an account stood at one moment, as its ledger says.
#[derive(Debug, Clone, Copy, Default)]
struct Standing<'a> {
    plan: Option<&'a str>,
    preference: Option<&'a str>,
    erased: bool,
}

pub fn consent_over_time(
    tx: &mut dyn Tx,
    policy: &Policy,
    now: Timestamp,
    weeks: usize,
) -> Result<ConsentOverTime, StoreError> {
    let now_ms = now.unix_millis();
    let week_ends: Vec<i64> = (0..weeks)
        .rev()
        .map(|back| now_ms - i64::try_from(back).unwrap_or(0) * WEEK_MS)
        .collect();
    let plans: Vec<String> = policy
        .consumer_plans()
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    let channels = ["signup", "notice", "settings"];
    let mut out = ConsentOverTime {
        week_ends: week_ends
            .iter()
            .filter_map(|&ms| Timestamp::from_unix_millis(ms))
            .collect(),
        by_plan: plans
            .iter()
            .map(|p| (p.clone(), vec![[0; 3]; weeks]))
            .collect(),
        business: vec![0; weeks],
        choices_by_channel: channels
            .iter()
            .map(|c| ((*c).to_owned(), vec![0; weeks]))
            .collect(),
    };
    let first_week_starts = week_ends.first().map_or(now_ms, |end| end - WEEK_MS);
    // One account's entries at a time, in chain order; each week's end takes the standing
    // after every entry at or before it.
    let mut account = String::new();
    let mut entries: Vec<(i64, String, Option<String>, Option<String>)> = Vec::new();
    let tally = |entries: &[(i64, String, Option<String>, Option<String>)],
                 out: &mut ConsentOverTime| {
        for (week, &end) in week_ends.iter().enumerate() {
            let mut standing = Standing::default();
            for (_, kind, plan, preference) in entries.iter().filter(|e| e.0 <= end) {
                match kind.as_str() {
                    "created" | "plan_changed" => standing.plan = plan.as_deref(),
                    "choice" => standing.preference = preference.as_deref(),
                    "erased" => standing.erased = true,
                    _ => {}
                }
            }
            let Some(plan) = standing.plan.filter(|_| !standing.erased) else {
                continue;
            };
            match out.by_plan.iter_mut().find(|(p, _)| p == plan) {
                Some((_, counts)) => {
                    let slot = match standing.preference {
                        Some("allowed") => 0,
                        Some("declined") => 1,
                        _ => 2,
                    };
                    if let Some(count) = counts.get_mut(week).and_then(|c| c.get_mut(slot)) {
                        *count += 1;
                    }
                }
                None => {
                    if let Some(count) = out.business.get_mut(week) {
                        *count += 1;
                    }
                }
            }
        }
    };
    tx.query_each(
        "SELECT account_id, at, kind, plan, preference, channel FROM ledger \
         ORDER BY account_id, idx",
        &[],
        &mut |row| {
            let id = row.optional_str(0)?.unwrap_or_default();
            if id != account {
                tally(&entries, &mut out);
                entries.clear();
                account.clear();
                account.push_str(id);
            }
            let at = row.int(1)?;
            let kind = row.text(2)?;
            if kind == "choice" && at > first_week_starts && at <= now_ms {
                let week = usize::try_from((at - first_week_starts - 1) / WEEK_MS).unwrap_or(0);
                let channel = row.optional_str(5)?.unwrap_or_default();
                if let Some((_, counts)) = out
                    .choices_by_channel
                    .iter_mut()
                    .find(|(c, _)| c == channel)
                {
                    if let Some(slot) = counts.get_mut(week) {
                        *slot += 1;
                    }
                }
            }
            entries.push((at, kind, row.optional_text(3)?, row.optional_text(4)?));
            Ok(())
        },
    )?;
    tally(&entries, &mut out);
    Ok(out)
}
