//! Rows and records: how each record the core reads is stored, and read back.
//!
//! Reading checks what it reads: a value the schema can't hold is reported as a damaged
//! database, never taken for something else.

use custos_core::{
    AccountId, Conversation, ConversationId, EventKey, Feedback, Hold, HoldId, HoldTarget, Message,
    Rating, Role, Surface, Timestamp,
};

use crate::error::StoreError;
use crate::ledger::{Entry, EntryKind};
use crate::sql::{Columns, Row, Tx, Value, insert_row};
use custos_core::{Channel, Preference};

pub(crate) fn seq(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("negative sequence {value}")))
}

pub(crate) fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn time(millis: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_unix_millis(millis)
        .ok_or_else(|| StoreError::corrupt(format!("time {millis} is out of range")))
}

pub(crate) fn hash32(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::corrupt("a hash is not 32 bytes"))
}

pub(crate) fn account_id(text: String) -> Result<AccountId, StoreError> {
    AccountId::parse(&text).map_err(|e| StoreError::corrupt(e.to_string()))
}

pub(crate) fn conversation_id(text: String) -> Result<ConversationId, StoreError> {
    ConversationId::parse(&text).map_err(|e| StoreError::corrupt(e.to_string()))
}

pub(crate) const LEDGER_COLUMNS: &str = "account_id, idx, at, seq, kind, plan, preference, channel, \
                              notice_id, policy_id, actor, prev_hash, hash";

pub fn entry_from_row(row: &impl Columns) -> Result<Entry, StoreError> {
    let kind_text = row.text(4)?;
    Ok(Entry {
        account: account_id(row.text(0)?)?,
        idx: row.int(1)?,
        key: EventKey::new(time(row.int(2)?)?, seq(row.int(3)?)?),
        kind: EntryKind::parse(&kind_text)
            .ok_or_else(|| StoreError::corrupt(format!("unknown ledger kind `{kind_text}`")))?,
        plan: row.optional_text(5)?,
        preference: row
            .optional_text(6)?
            .map(|t| parse_or_corrupt(&t, Preference::parse))
            .transpose()?,
        channel: row
            .optional_text(7)?
            .map(|t| parse_or_corrupt(&t, Channel::parse))
            .transpose()?,
        notice_id: row.text(8)?,
        policy_id: row.text(9)?,
        actor: row.text(10)?,
        prev_hash: hash32(row.bytes(11)?)?,
        hash: hash32(row.bytes(12)?)?,
    })
}

pub(crate) fn parse_or_corrupt<T>(
    text: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, StoreError> {
    parse(text).ok_or_else(|| StoreError::corrupt(format!("unknown stored value `{text}`")))
}

/// The columns [`conversation_from_row`] reads, in its order.
pub(crate) const CONVERSATION_COLUMNS: &str =
    "account_id, conversation_id, surface, incognito, deleted_at, deleted_seq, purged_at";

/// A conversation's row, without its activity.
pub(crate) fn conversation_from_row(row: &impl Columns) -> Result<Conversation, StoreError> {
    let owner = account_id(row.text(0)?)?;
    let id = conversation_id(row.text(1)?)?;
    let surface = parse_or_corrupt(&row.text(2)?, Surface::parse)?;
    let mut conversation = Conversation::new(id, owner, surface, row.bool(3)?);
    if let (Some(at), Some(s)) = (row.optional_int(4)?, row.optional_int(5)?) {
        conversation.deleted = Some(EventKey::new(time(at)?, seq(s)?));
    }
    if let Some(at) = row.optional_int(6)? {
        // A sweep is not an account event; it is ordered by time alone.
        conversation.purged = Some(EventKey::new(time(at)?, 0));
    }
    Ok(conversation)
}

/// The columns after the conversation id that [`message_from_row`] reads; without text, the
/// text is read as empty.
pub(crate) fn message_columns(with_text: bool) -> &'static str {
    if with_text {
        "seq, at, role, text"
    } else {
        "seq, at, role, ''"
    }
}

pub(crate) fn feedback_columns(with_text: bool) -> &'static str {
    if with_text {
        "seq, at, rating, comment"
    } else {
        "seq, at, rating, NULL"
    }
}

/// A message from the columns of [`message_columns`], starting at column `from`.
pub(crate) fn message_from_row(row: &impl Columns, from: usize) -> Result<Message, StoreError> {
    Ok(Message {
        text: row.text(from + MESSAGE_TEXT)?,
        ..message_head(row, from)?
    })
}

/// Where the text is among [`message_columns`] (and the comment among [`feedback_columns`]).
pub(crate) const MESSAGE_TEXT: usize = 3;
pub(crate) const FEEDBACK_COMMENT: usize = 3;

/// A message without its text (left empty), from the columns of [`message_columns`].
pub(crate) fn message_head(row: &impl Columns, from: usize) -> Result<Message, StoreError> {
    Ok(Message {
        key: EventKey::new(time(row.int(from + 1)?)?, seq(row.int(from)?)?),
        role: parse_or_corrupt(row.optional_str(from + 2)?.unwrap_or(""), Role::parse)?,
        text: String::new(),
    })
}

pub(crate) fn feedback_from_row(row: &impl Columns, from: usize) -> Result<Feedback, StoreError> {
    Ok(Feedback {
        comment: row.optional_text(from + FEEDBACK_COMMENT)?,
        ..feedback_head(row, from)?
    })
}

/// Feedback without its comment (left out), from the columns of [`feedback_columns`].
pub(crate) fn feedback_head(row: &impl Columns, from: usize) -> Result<Feedback, StoreError> {
    Ok(Feedback {
        key: EventKey::new(time(row.int(from + 1)?)?, seq(row.int(from)?)?),
        rating: parse_or_corrupt(row.optional_str(from + 2)?.unwrap_or(""), Rating::parse)?,
        comment: None,
    })
}

/// Out-of-order arrival can leave seq and time orders apart; the core wants key order.
pub(crate) fn in_key_order(conversation: &mut Conversation) {
    conversation.messages.sort_by_key(|m| m.key);
    conversation.feedback.sort_by_key(|f| f.key);
}

pub(crate) const HOLD_COLUMNS: &str =
    "hold_id, account_id, conversation_id, placed_at, released_at";

pub(crate) fn hold_from_row(row: &Row) -> Result<Hold, StoreError> {
    let target = match (row.optional_text(1)?, row.optional_text(2)?) {
        (Some(account), None) => HoldTarget::Account(account_id(account)?),
        (None, Some(conversation)) => HoldTarget::Conversation(conversation_id(conversation)?),
        _ => {
            return Err(StoreError::corrupt(
                "a hold must name one account or one conversation",
            ));
        }
    };
    Ok(Hold {
        id: HoldId::parse(&row.text(0)?).map_err(|e| StoreError::corrupt(e.to_string()))?,
        target,
        // Holds are not account events; they are ordered by time alone.
        placed: EventKey::new(time(row.int(3)?)?, 0),
        released: row
            .optional_int(4)?
            .map(|at| time(at).map(|t| EventKey::new(t, 0)))
            .transpose()?,
    })
}

/// The ledger's columns, in the order of [`entry_values`].
pub(crate) const LEDGER_ROW: &[&str] = &[
    "account_id",
    "idx",
    "at",
    "seq",
    "kind",
    "plan",
    "preference",
    "channel",
    "notice_id",
    "policy_id",
    "actor",
    "prev_hash",
    "hash",
];

pub(crate) fn entry_values(entry: &Entry) -> Vec<Value> {
    vec![
        entry.account.as_str().into(),
        entry.idx.into(),
        entry.key.at.unix_millis().into(),
        as_i64(entry.key.seq).into(),
        entry.kind.as_str().into(),
        entry.plan.clone().into(),
        entry.preference.map(Preference::as_str).into(),
        entry.channel.map(Channel::as_str).into(),
        entry.notice_id.clone().into(),
        entry.policy_id.clone().into(),
        entry.actor.clone().into(),
        entry.prev_hash.as_slice().into(),
        entry.hash.as_slice().into(),
    ]
}

pub(crate) fn insert_entry(tx: &mut dyn Tx, entry: &Entry) -> Result<(), StoreError> {
    insert_row(tx, "ledger", LEDGER_ROW, &entry_values(entry))
}

/// The messages' columns, in the order of [`message_values`].
pub(crate) const MESSAGE_ROW: &[&str] =
    &["account_id", "conversation_id", "seq", "at", "role", "text"];

pub(crate) fn message_values(
    account: &AccountId,
    conversation: &ConversationId,
    key: EventKey,
    role: Role,
    text: &str,
) -> Vec<Value> {
    vec![
        account.as_str().into(),
        conversation.as_str().into(),
        as_i64(key.seq).into(),
        key.at.unix_millis().into(),
        role.as_str().into(),
        text.into(),
    ]
}

/// The feedback's columns, in the order of [`feedback_values`].
pub(crate) const FEEDBACK_ROW: &[&str] = &[
    "account_id",
    "conversation_id",
    "seq",
    "at",
    "rating",
    "comment",
];

pub(crate) fn feedback_values(
    account: &AccountId,
    conversation: &ConversationId,
    key: EventKey,
    rating: Rating,
    comment: Option<&str>,
) -> Vec<Value> {
    vec![
        account.as_str().into(),
        conversation.as_str().into(),
        as_i64(key.seq).into(),
        key.at.unix_millis().into(),
        rating.as_str().into(),
        comment.into(),
    ]
}
