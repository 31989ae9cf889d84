//! The training scan: every conversation with its owner's history, read from one consistent
//! snapshot in bounded memory, for exports and revocations.
//!
//! Every table's key starts with the account, so the scan walks accounts in key order, a few
//! hundred at a time, and reads each table's rows for that range of accounts with one range
//! query. Memory holds one chunk, whatever the store's size. It decides nothing: it lends each
//! conversation and its owner to a visitor, which asks the core.

use std::collections::HashMap;

use custos_core::model::{Feedback, Message};
use custos_core::{AccountHistory, Conversation, EventKey, Timestamp};

use crate::codec::{
    CONVERSATION_COLUMNS, FEEDBACK_COMMENT, LEDGER_COLUMNS, MESSAGE_TEXT, conversation_from_row,
    entry_from_row, feedback_columns, feedback_head, message_columns, message_head,
};
use crate::error::StoreError;
use crate::records::HistoriesInOrder;
use crate::sql::{Columns, RowView, Rows, Tx};

/// Accounts read per chunk: enough that each range query is worth its round trip, few enough
/// that a chunk's rows stay small.
const ACCOUNTS_PER_CHUNK: i64 = 512;

/// One conversation as the scan lends it, with the keys that see its owner's events up to the
/// cutoff and up to now.
///
/// The conversation's messages and feedback come without their texts: those stay in the
/// chunk's buffers, lent beside it ([`Scanned::message_text`], [`Scanned::comment`]), and a
/// visitor copies only the ones it keeps. Most conversations are not exported, and their texts
/// are never copied.
#[derive(Debug)]
pub struct Scanned<'a> {
    pub owner: &'a AccountHistory,
    pub conversation: &'a Conversation,
    pub cutoff: EventKey,
    pub now: EventKey,
    /// The texts of `conversation.messages`, index for index.
    message_texts: &'a [&'a str],
    /// The comments of `conversation.feedback`, index for index.
    comments: &'a [Option<&'a str>],
}

impl<'a> Scanned<'a> {
    /// The text of one of the conversation's messages, lent from the chunk.
    pub fn message_text(&self, message: &Message) -> Result<&'a str, StoreError> {
        self.conversation
            .messages
            .binary_search_by_key(&message.key, |m| m.key)
            .ok()
            .and_then(|i| self.message_texts.get(i).copied())
            .ok_or_else(|| StoreError::corrupt("a message the conversation does not hold"))
    }

    /// The comment of one of the conversation's feedback, lent from the chunk.
    pub fn comment(&self, feedback: &Feedback) -> Result<Option<&'a str>, StoreError> {
        self.conversation
            .feedback
            .binary_search_by_key(&feedback.key, |f| f.key)
            .ok()
            .and_then(|i| self.comments.get(i).copied())
            .ok_or_else(|| StoreError::corrupt("feedback the conversation does not hold"))
    }

    /// One of the conversation's messages, with its text.
    pub fn message(&self, message: &Message) -> Result<Message, StoreError> {
        Ok(Message {
            text: self.message_text(message)?.to_owned(),
            ..message.clone()
        })
    }

    /// One of the conversation's feedback, with its comment.
    pub fn feedback(&self, feedback: &Feedback) -> Result<Feedback, StoreError> {
        Ok(Feedback {
            comment: self.comment(feedback)?.map(str::to_owned),
            ..feedback.clone()
        })
    }
}

/// Visits every conversation, in (account, conversation) key order. `with_text` reads message
/// texts and feedback comments; without it they are empty (revocations need only times).
pub fn scan_conversations(
    tx: &mut dyn Tx,
    cutoff: Timestamp,
    now: Timestamp,
    with_text: bool,
    visit: &mut dyn FnMut(Scanned<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    scan_chunks(tx, cutoff, now, with_text, &mut |raw| {
        raw.parse()?.visit(visit)?;
        Ok(Some(raw))
    })
}

/// Reads every conversation in chunks of a few hundred accounts, in key order, and hands each
/// chunk over as read: the caller may parse and visit it on another thread while the next one
/// is read.
pub fn scan_chunks(
    tx: &mut dyn Tx,
    cutoff: Timestamp,
    now: Timestamp,
    with_text: bool,
    each: &mut dyn FnMut(RawChunk) -> Result<Option<RawChunk>, StoreError>,
) -> Result<(), StoreError> {
    // Account ids are never empty, so every id sorts after "".
    let mut after = String::new();
    // A chunk `each` is done with: its buffers are filled again rather than allocated afresh
    // (fresh pages cost the reader a tenth of its time in the kernel, zeroing them).
    let mut spare = None;
    loop {
        let accounts = chunk_accounts(
            tx,
            "SELECT account_id, next_seq FROM accounts WHERE account_id > ? ORDER BY account_id LIMIT ?",
            &[after.as_str().into(), ACCOUNTS_PER_CHUNK.into()],
        )?;
        let Some((last, _)) = accounts.last() else {
            return Ok(());
        };
        let last = last.clone();
        let mut chunk = read_raw(tx, &after, &last, accounts, with_text, spare.take())?;
        (chunk.cutoff, chunk.now) = (cutoff, now);
        spare = each(chunk)?;
        after = last;
    }
}

/// Where the chunks of [`scan_chunks`] end: the last account of every [`ACCOUNTS_PER_CHUNK`]
/// accounts in key order, and the very last. Chunk i holds the accounts after bound i-1 up to
/// bound i, so that readers of one snapshot can read chunks apart ([`read_chunk`]).
pub fn chunk_bounds(tx: &mut dyn Tx) -> Result<Vec<String>, StoreError> {
    let mut bounds = Vec::new();
    tx.query_each(
        "SELECT account_id FROM (SELECT account_id, ROW_NUMBER() OVER (ORDER BY account_id) AS n, \
         COUNT(*) OVER () AS total FROM accounts) AS numbered \
         WHERE n % ? = 0 OR n = total ORDER BY account_id",
        &[ACCOUNTS_PER_CHUNK.into()],
        &mut |row| {
            bounds.push(row.text(0)?);
            Ok(())
        },
    )?;
    Ok(bounds)
}

/// Chunk `index` of [`chunk_bounds`]: the same rows [`scan_chunks`] hands over for it.
/// `spare` is a chunk whose buffers are filled again.
pub fn read_chunk(
    tx: &mut dyn Tx,
    bounds: &[String],
    index: usize,
    cutoff: Timestamp,
    now: Timestamp,
    spare: Option<RawChunk>,
) -> Result<RawChunk, StoreError> {
    let after = match index.checked_sub(1) {
        Some(before) => bounds.get(before).map_or("", String::as_str),
        None => "",
    };
    let last = bounds
        .get(index)
        .ok_or_else(|| StoreError::corrupt("a chunk past the last"))?;
    let accounts = chunk_accounts(
        tx,
        "SELECT account_id, next_seq FROM accounts WHERE account_id > ? AND account_id <= ? ORDER BY account_id",
        &[after.into(), last.as_str().into()],
    )?;
    let mut chunk = read_raw(tx, after, last, accounts, true, spare)?;
    (chunk.cutoff, chunk.now) = (cutoff, now);
    Ok(chunk)
}

/// A chunk's accounts, each with its event counter.
fn chunk_accounts(
    tx: &mut dyn Tx,
    sql: &str,
    params: &[crate::sql::Value],
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut accounts = Vec::new();
    tx.query_each(sql, params, &mut |row| {
        accounts.push((row.text(0)?, row.int(1)?));
        Ok(())
    })?;
    Ok(accounts)
}

/// The conversations of a range of accounts, with their owners' histories, as read in one
/// snapshot; their texts are lent from the [`RawChunk`] they were parsed from.
#[derive(Debug)]
pub struct Chunk<'r> {
    /// Account id → (index in `histories`, the account's event counter).
    accounts: HashMap<String, (usize, i64)>,
    histories: Vec<AccountHistory>,
    /// In (account, conversation) order, each with its activity in key order and without texts.
    conversations: Vec<Conversation>,
    /// Every message's text, conversation after conversation, each conversation's in key order.
    message_texts: Vec<&'r str>,
    /// Every feedback's comment, in the same order.
    comments: Vec<Option<&'r str>>,
    cutoff: Timestamp,
    now: Timestamp,
}

impl Chunk<'_> {
    /// Lends each conversation, in key order, with its owner, its texts, and the keys that see
    /// the owner's events up to the cutoff and up to now.
    pub fn visit(
        &self,
        visit: &mut dyn FnMut(Scanned<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let (mut messages, mut feedback) = (0, 0);
        // Conversations come grouped by owner: the owner is looked up once per group.
        let mut owner: Option<(&AccountHistory, u64)> = None;
        for conversation in &self.conversations {
            let (owner, next_seq) = match owner {
                Some(same) if same.0.id == conversation.owner => same,
                _ => *owner.insert(self.owner_of(conversation)?),
            };
            visit(Scanned {
                owner,
                conversation,
                cutoff: EventKey::new(self.cutoff, next_seq),
                now: EventKey::new(self.now, next_seq),
                message_texts: next_run(
                    &self.message_texts,
                    &mut messages,
                    conversation.messages.len(),
                )?,
                comments: next_run(&self.comments, &mut feedback, conversation.feedback.len())?,
            })?;
        }
        Ok(())
    }

    fn owner_of(&self, conversation: &Conversation) -> Result<(&AccountHistory, u64), StoreError> {
        let &(account, next_seq) =
            self.accounts
                .get(conversation.owner.as_str())
                .ok_or_else(|| {
                    StoreError::corrupt(format!(
                        "conversation `{}` has no account",
                        conversation.id
                    ))
                })?;
        let owner = self.histories.get(account).ok_or_else(|| {
            StoreError::corrupt(format!("account `{}` has no ledger", conversation.owner))
        })?;
        let next_seq =
            u64::try_from(next_seq).map_err(|_| StoreError::corrupt("a negative event counter"))?;
        Ok((owner, next_seq))
    }
}

/// The next `len` values of `all` from `from`, which moves past them: one conversation's texts.
fn next_run<'s, T>(all: &'s [T], from: &mut usize, len: usize) -> Result<&'s [T], StoreError> {
    let run = all.get(*from..*from + len);
    *from += len;
    run.ok_or_else(|| StoreError::corrupt("a chunk's texts do not match its rows"))
}

/// The tables a chunk reads, in the order they are read.
#[derive(Debug, Clone, Copy)]
enum Table {
    Ledger,
    Conversations,
    Messages,
    Feedback,
}

const TABLES: [Table; 4] = [
    Table::Ledger,
    Table::Conversations,
    Table::Messages,
    Table::Feedback,
];

/// The query of one table for the accounts in (`?`, `?`].
fn query(table: Table, with_text: bool) -> String {
    let within = "WHERE account_id > ? AND account_id <= ?";
    match table {
        Table::Ledger => {
            format!("SELECT {LEDGER_COLUMNS} FROM ledger {within} ORDER BY account_id, idx")
        }
        Table::Conversations => format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations {within} ORDER BY account_id, conversation_id"
        ),
        Table::Messages => format!(
            "SELECT conversation_id, {} FROM messages {within}",
            message_columns(with_text)
        ),
        Table::Feedback => format!(
            "SELECT conversation_id, {} FROM feedback {within}",
            feedback_columns(with_text)
        ),
    }
}

/// The rows of a chunk's accounts as the database gave them, not yet parsed: reading them is
/// all the reading thread does, and parsing them into histories and conversations
/// ([`RawChunk::parse`]) can happen on another.
#[derive(Debug)]
pub struct RawChunk {
    accounts: Vec<(String, i64)>,
    tables: [Rows; 4],
    cutoff: Timestamp,
    now: Timestamp,
}

fn read_raw(
    tx: &mut dyn Tx,
    after: &str,
    last: &str,
    accounts: Vec<(String, i64)>,
    with_text: bool,
    spare: Option<RawChunk>,
) -> Result<RawChunk, StoreError> {
    let range = [after.into(), last.into()];
    let mut tables: [Rows; 4] = spare.map(|chunk| chunk.tables).unwrap_or_default();
    for (table, rows) in TABLES.into_iter().zip(&mut tables) {
        rows.clear();
        tx.query_rows(&query(table, with_text), &range, rows)?;
    }
    Ok(RawChunk {
        accounts,
        tables,
        cutoff: Timestamp::MIN,
        now: Timestamp::MIN,
    })
}

impl RawChunk {
    /// The chunk's histories and conversations, each conversation with its activity in key
    /// order.
    pub fn parse(&self) -> Result<Chunk<'_>, StoreError> {
        let rows = |table: Table| {
            self.tables
                .get(table as usize)
                .ok_or_else(|| StoreError::corrupt("a chunk without a table"))
        };
        let mut histories = Vec::with_capacity(self.accounts.len());
        let mut in_order = HistoriesInOrder::default();
        rows(Table::Ledger)?.replay(&mut |row| {
            histories.extend(in_order.push(entry_from_row(row)?)?);
            Ok(())
        })?;
        histories.extend(in_order.finish()?);
        let index: HashMap<&str, usize> = histories
            .iter()
            .enumerate()
            .map(|(i, h)| (h.id.as_str(), i))
            .collect();
        let accounts = self
            .accounts
            .iter()
            .filter_map(|(id, next_seq)| {
                index
                    .get(id.as_str())
                    .map(|i| (id.clone(), (*i, *next_seq)))
            })
            .collect();

        let mut conversations = Vec::new();
        rows(Table::Conversations)?.replay(&mut |row| {
            conversations.push(conversation_from_row(row)?);
            Ok(())
        })?;
        // Messages and feedback come in the conversations' own key order, so each finds its
        // conversation by walking forward from the last one's (a merge join). An index by id
        // is built only if a row is ever out of that order.
        let mut by_id: Option<HashMap<String, usize>> = None;
        let mut place = |row: &RowView<'_>, cursor: &mut usize| -> Result<usize, StoreError> {
            let id = row.optional_str(0)?.unwrap_or("");
            // Once rows were out of order, the index answers from then on.
            let ahead = match by_id {
                Some(_) => None,
                None => conversations
                    .get(*cursor..)
                    .unwrap_or_default()
                    .iter()
                    .position(|c| c.id.as_str() == id),
            };
            let index = match ahead {
                Some(offset) => *cursor + offset,
                None => {
                    let by_id = by_id.get_or_insert_with(|| {
                        conversations
                            .iter()
                            .enumerate()
                            .map(|(i, c)| (c.id.as_str().to_owned(), i))
                            .collect()
                    });
                    by_id.get(id).copied().ok_or_else(|| {
                        StoreError::corrupt(format!("activity of `{id}` has no conversation"))
                    })?
                }
            };
            *cursor = index;
            Ok(index)
        };
        // Each message and feedback with its conversation's index and its text, lent in place.
        let mut messages = Vec::new();
        let mut cursor = 0;
        rows(Table::Messages)?.replay(&mut |row| {
            let text = row
                .lent_str(1 + MESSAGE_TEXT)?
                .ok_or_else(|| StoreError::corrupt("a message without text"))?;
            messages.push((place(row, &mut cursor)?, message_head(row, 1)?, text));
            Ok(())
        })?;
        let mut feedback = Vec::new();
        let mut cursor = 0;
        rows(Table::Feedback)?.replay(&mut |row| {
            let comment = row.lent_str(1 + FEEDBACK_COMMENT)?;
            feedback.push((place(row, &mut cursor)?, feedback_head(row, 1)?, comment));
            Ok(())
        })?;
        // Out-of-order arrival can leave seq and time orders apart; the core wants each
        // conversation's activity in key order. The rows nearly always come in that order
        // already, which a stable sort checks in one pass.
        messages.sort_by_key(|(index, message, _)| (*index, message.key));
        feedback.sort_by_key(|(index, item, _)| (*index, item.key));
        let mut message_texts = Vec::with_capacity(messages.len());
        for (index, message, text) in messages {
            if let Some(c) = conversations.get_mut(index) {
                c.messages.push(message);
                message_texts.push(text);
            }
        }
        let mut comments = Vec::with_capacity(feedback.len());
        for (index, item, comment) in feedback {
            if let Some(c) = conversations.get_mut(index) {
                c.feedback.push(item);
                comments.push(comment);
            }
        }
        Ok(Chunk {
            accounts,
            histories,
            conversations,
            message_texts,
            comments,
            cutoff: self.cutoff,
            now: self.now,
        })
    }
}
