//! The consent ledger: every choice, notice shown, plan change and erasure, as evidence.
//!
//! Each account has its own chain: entry N stores `hash = SHA-256(prev_hash ‖ canonical(entry))`
//! with `prev_hash` the hash of entry N-1 (32 zero bytes for the first). The canonical encoding
//! is a fixed sequence of length-prefixed fields, so that no two entries encode alike. A
//! checkpoint signs, with the store's Ed25519 key, a root over every account's chain head.

use custos_core::policy::Plan;
use custos_core::{AccountChange, AccountId, Channel, EventKey, Preference, Timestamp};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// The account was created on `plan`.
    Created,
    /// A training choice (`preference`, `channel`).
    Choice,
    /// The notice was shown and the user chose "Not now".
    NoticeShown,
    /// The account moved to `plan`.
    PlanChanged,
    /// The account was erased.
    Erased,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Created => "created",
            EntryKind::Choice => "choice",
            EntryKind::NoticeShown => "notice_shown",
            EntryKind::PlanChanged => "plan_changed",
            EntryKind::Erased => "erased",
        }
    }

    pub fn parse(text: &str) -> Option<EntryKind> {
        [
            EntryKind::Created,
            EntryKind::Choice,
            EntryKind::NoticeShown,
            EntryKind::PlanChanged,
            EntryKind::Erased,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// One ledger entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub account: AccountId,
    /// Position in the account's chain, from 0.
    pub idx: i64,
    pub key: EventKey,
    pub kind: EntryKind,
    pub plan: Option<String>,
    pub preference: Option<Preference>,
    pub channel: Option<Channel>,
    pub notice_id: String,
    pub policy_id: String,
    /// Who caused it: `scenario`, `service`, `user:<account>`, `admin:<token>`…
    pub actor: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

pub const GENESIS: [u8; 32] = [0; 32];

/// The entry as the service and data-subject documents show it, hashes in hex.
impl serde::Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let hex = custos_core::policy::hex;
        let mut entry = serializer.serialize_struct("Entry", 11)?;
        entry.serialize_field("index", &self.idx)?;
        entry.serialize_field("kind", self.kind.as_str())?;
        entry.serialize_field("at", &self.key.at)?;
        entry.serialize_field("plan", &self.plan)?;
        entry.serialize_field("preference", &self.preference)?;
        entry.serialize_field("channel", &self.channel)?;
        entry.serialize_field("notice", &self.notice_id)?;
        entry.serialize_field("policy", &self.policy_id)?;
        entry.serialize_field("actor", &self.actor)?;
        entry.serialize_field("prev_hash", &hex(&self.prev_hash))?;
        entry.serialize_field("hash", &hex(&self.hash))?;
        entry.end()
    }
}

/// What an entry records, as the core reads it: the account's creation on a plan, or a change
/// after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Created(Plan),
    Changed(AccountChange),
}

impl Record {
    /// The stored fields of an entry that records this: kind, plan, preference and channel.
    pub fn fields(
        &self,
    ) -> (
        EntryKind,
        Option<String>,
        Option<Preference>,
        Option<Channel>,
    ) {
        match self {
            Record::Created(plan) => (
                EntryKind::Created,
                Some(plan.as_str().to_owned()),
                None,
                None,
            ),
            Record::Changed(AccountChange::Choice {
                preference,
                channel,
            }) => (EntryKind::Choice, None, Some(*preference), Some(*channel)),
            Record::Changed(AccountChange::NoticeShown) => {
                (EntryKind::NoticeShown, None, None, None)
            }
            Record::Changed(AccountChange::PlanChanged(plan)) => (
                EntryKind::PlanChanged,
                Some(plan.as_str().to_owned()),
                None,
                None,
            ),
            Record::Changed(AccountChange::Erased) => (EntryKind::Erased, None, None, None),
        }
    }
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// How an entry names its account inside the hash. Version 2 (current) uses the account's
/// keyed pseudonym, so that erasure can replace the stored id with the pseudonym and every hash
/// still holds; version 1 (databases before schema 4) used the id itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    V1,
    V2,
}

/// The prefix of every pseudonym. `:` and lowercase hex keep it a valid account id, and no
/// product can hit one by chance: it would have to guess an HMAC.
pub const PSEUDONYM_PREFIX: &str = "erased:";

/// The keyed pseudonym of an account id: `erased:` and the hex of
/// HMAC-SHA-256(pseudonym key, id). Without the key (which stays in the data folder, apart from
/// the database) it can't be linked back to the id; with it, the controller can show that a
/// ledger chain was a given person's.
pub fn pseudonym(key: &[u8; 32], account: &str) -> String {
    format!(
        "{PSEUDONYM_PREFIX}{}",
        custos_core::policy::hex(&hmac_sha256(key, &[account.as_bytes()]))
    )
}

/// How the gate index names an account: the first 16 bytes of its pseudonym's HMAC. A live
/// account's stored id and an erased account's stored pseudonym give the same key, so that a
/// change read back from the store finds its entry whether or not the account was erased in
/// between, and the index holds no account id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountKey(pub [u8; 16]);

impl AccountKey {
    /// The key of an account as it is stored: its id, or, once erased, its pseudonym.
    pub fn of_stored(pseudonyms: &Hmac, stored_id: &str) -> AccountKey {
        let erased = stored_id
            .strip_prefix(PSEUDONYM_PREFIX)
            .filter(|hex| hex.len() == 64)
            .and_then(|hex| hex.get(..32))
            .and_then(custos_core::policy::from_hex::<16>);
        AccountKey(erased.unwrap_or_else(|| {
            let mac = pseudonyms.mac(&[stored_id.as_bytes()]);
            let mut key = [0u8; 16];
            key.copy_from_slice(mac.get(..16).unwrap_or(&[0; 16]));
            key
        }))
    }
}

/// HMAC-SHA-256 (RFC 2104) of the concatenated `parts` under a 32-byte key.
pub fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    Hmac::new(key).mac(parts)
}

/// An HMAC-SHA-256 key with its padded blocks already absorbed: each MAC then costs two
/// compressions fewer (what keying millions of exported rows spends most on).
#[derive(Clone)]
pub struct Hmac {
    inner: Sha256,
    outer: Sha256,
}

impl std::fmt::Debug for Hmac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hmac(…)")
    }
}

impl Hmac {
    pub fn new(key: &[u8; 32]) -> Hmac {
        const BLOCK: usize = 64;
        let mut inner_pad = [0x36u8; BLOCK];
        let mut outer_pad = [0x5cu8; BLOCK];
        for (index, byte) in key.iter().enumerate() {
            if let (Some(i), Some(o)) = (inner_pad.get_mut(index), outer_pad.get_mut(index)) {
                *i ^= byte;
                *o ^= byte;
            }
        }
        Hmac {
            inner: Sha256::new().chain_update(inner_pad),
            outer: Sha256::new().chain_update(outer_pad),
        }
    }

    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        for part in parts {
            inner.update(part);
        }
        self.outer
            .clone()
            .chain_update(inner.finalize())
            .finalize()
            .into()
    }
}

impl Entry {
    /// What this entry records. A plan dropped from a later policy is kept as recorded (it is
    /// then simply not consumer); a choice without its fields reads as the privacy-protective
    /// `unset`, made in settings.
    pub fn record(&self) -> Record {
        let plan = || Plan::recorded(self.plan.as_deref().unwrap_or(""));
        match self.kind {
            EntryKind::Created => Record::Created(plan()),
            EntryKind::Choice => Record::Changed(AccountChange::Choice {
                preference: self.preference.unwrap_or(Preference::Unset),
                channel: self.channel.unwrap_or(Channel::Settings),
            }),
            EntryKind::NoticeShown => Record::Changed(AccountChange::NoticeShown),
            EntryKind::PlanChanged => Record::Changed(AccountChange::PlanChanged(plan())),
            EntryKind::Erased => Record::Changed(AccountChange::Erased),
        }
    }

    /// The canonical encoding the hash covers (everything but the hashes themselves), naming
    /// the account as `name`: its pseudonym under [`Encoding::V2`], its id under V1.
    pub fn canonical(&self, encoding: Encoding, name: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        field(
            &mut out,
            match encoding {
                Encoding::V1 => b"custos.ledger.v1",
                Encoding::V2 => b"custos.ledger.v2",
            },
        );
        field(&mut out, name.as_bytes());
        field(&mut out, &self.idx.to_be_bytes());
        field(&mut out, &self.key.at.unix_millis().to_be_bytes());
        field(&mut out, &self.key.seq.to_be_bytes());
        field(&mut out, self.kind.as_str().as_bytes());
        field(&mut out, self.plan.as_deref().unwrap_or("").as_bytes());
        field(
            &mut out,
            self.preference.map_or("", Preference::as_str).as_bytes(),
        );
        field(
            &mut out,
            self.channel.map_or("", Channel::as_str).as_bytes(),
        );
        field(&mut out, self.notice_id.as_bytes());
        field(&mut out, self.policy_id.as_bytes());
        field(&mut out, self.actor.as_bytes());
        out
    }

    /// The hash this entry must carry, given its predecessor's and its account's ledger name
    /// (the pseudonym; see [`pseudonym`]).
    pub fn chained_hash(&self, prev_hash: &[u8; 32], name: &str) -> [u8; 32] {
        self.chained_hash_as(Encoding::V2, prev_hash, name)
    }

    pub fn chained_hash_as(
        &self,
        encoding: Encoding,
        prev_hash: &[u8; 32],
        name: &str,
    ) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(prev_hash);
        hasher.update(self.canonical(encoding, name));
        hasher.finalize().into()
    }
}

/// The root a checkpoint signs: SHA-256 over the previous checkpoint's root and the chain heads
/// that changed since, as (ledger name, length, head) sorted by name bytes. By induction it
/// commits to every chain head there is. Accounts are named by pseudonym, as in entries.
pub fn heads_root<'a>(
    previous: &[u8; 32],
    heads: impl IntoIterator<Item = (&'a str, i64, &'a [u8])>,
) -> [u8; 32] {
    let mut heads: Vec<_> = heads.into_iter().collect();
    heads.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut hasher = Sha256::new();
    hasher.update(b"custos.checkpoint.v3");
    hasher.update(previous);
    for (account, length, head) in heads {
        let mut encoded = Vec::new();
        field(&mut encoded, account.as_bytes());
        field(&mut encoded, &length.to_be_bytes());
        field(&mut encoded, head);
        hasher.update(&encoded);
    }
    hasher.finalize().into()
}

/// The bytes a checkpoint's signature covers.
pub fn checkpoint_message(
    id: i64,
    at: Timestamp,
    accounts: i64,
    entries: i64,
    root: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::new();
    field(&mut out, b"custos.checkpoint.v1");
    field(&mut out, &id.to_be_bytes());
    field(&mut out, &at.unix_millis().to_be_bytes());
    field(&mut out, &accounts.to_be_bytes());
    field(&mut out, &entries.to_be_bytes());
    field(&mut out, root);
    out
}

/// The store's signing key (Ed25519) with its id, and the pseudonym key (see [`crate::keys`]).
pub struct LedgerKey {
    signing: SigningKey,
    id: String,
    pseudonym_key: [u8; 32],
}

impl std::fmt::Debug for LedgerKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LedgerKey({})", self.id)
    }
}

impl LedgerKey {
    pub fn new(signing: &[u8; 32], pseudonym_key: [u8; 32]) -> LedgerKey {
        let signing = SigningKey::from_bytes(signing);
        LedgerKey {
            id: signing_key_id(signing.verifying_key().as_bytes()),
            signing,
            pseudonym_key,
        }
    }

    /// The signing key's id, which every signature it makes names.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn pseudonym_key(&self) -> [u8; 32] {
        self.pseudonym_key
    }

    /// The ledger name of an account: its pseudonym, or, once erased, the stored id, which then
    /// is the pseudonym itself.
    pub fn ledger_name(&self, stored_id: &str, erased: bool) -> String {
        if erased {
            stored_id.to_owned()
        } else {
            pseudonym(&self.pseudonym_key, stored_id)
        }
    }

    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn public_hex(&self) -> String {
        custos_core::policy::hex(self.public().as_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        self.public()
            .verify(message, &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

/// The id of the signing key with this public half: what the store records, and what every
/// signature names. It reveals nothing of the secret.
pub fn signing_key_id(public: &[u8; 32]) -> String {
    let digest = Sha256::digest(public);
    format!(
        "ed25519:{}",
        custos_core::policy::hex(digest.get(..8).unwrap_or_default())
    )
}

/// Whether `signature` is a valid Ed25519 signature of `message` by the hex public key.
pub fn verify_signature(public_hex: &str, message: &[u8], signature: &[u8]) -> bool {
    let Some(public) = custos_core::policy::from_hex::<32>(public_hex)
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
    else {
        return false;
    };
    let Ok(signature) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    public
        .verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature))
        .is_ok()
}
