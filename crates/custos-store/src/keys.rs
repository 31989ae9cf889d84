//! The store's three secrets, given to every instance that serves the store (as a secret store
//! would mount them), and bound to the store by their ids:
//!
//! - the **signing key** (Ed25519) signs checkpoints, receipts and export manifests; it can be
//!   rotated, and every signature names the id of the key that made it;
//! - the **pseudonym key** (HMAC-SHA-256) names accounts in the ledger and erased accounts in
//!   every table; it can't be replaced, since every chain's hashes and every erased account's
//!   stored name are made with it;
//! - the **export key** (HMAC-SHA-256) keys the row pseudonyms of training exports; it can't be
//!   replaced either, since revocations match rows of earlier snapshots by those keys.
//!
//! Each comes from an environment variable (hex) or a file in the keys folder (32 raw bytes, or
//! 64 hex digits); a store made before keys had a folder keeps them in the data folder
//! (`ledger-signing.key`, from which the pseudonym key was derived, and `export-keys.secret`).

use std::path::{Path, PathBuf};

use custos_core::Timestamp;
use custos_core::policy::{from_hex, hex};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use crate::codec::{hash32, time};
use crate::error::StoreError;
use crate::ledger::{Hmac, LedgerKey, signing_key_id, verify_signature};
use crate::sql::{Dialect, Tx, Value};

/// The keys folder inside the data folder, unless one is configured.
pub const KEY_FOLDER: &str = "keys";

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Purpose {
    Signing,
    Pseudonym,
    Export,
}

impl Purpose {
    pub const ALL: [Purpose; 3] = [Purpose::Signing, Purpose::Pseudonym, Purpose::Export];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Signing => "signing",
            Purpose::Pseudonym => "pseudonym",
            Purpose::Export => "export",
        }
    }

    pub fn parse(text: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// Its file in the keys folder.
    pub fn file(self) -> &'static str {
        match self {
            Purpose::Signing => "signing.key",
            Purpose::Pseudonym => "pseudonym.key",
            Purpose::Export => "export.key",
        }
    }

    /// The environment variable that gives it (hex), before any file.
    pub fn variable(self) -> &'static str {
        match self {
            Purpose::Signing => "CUSTOS_SIGNING_KEY",
            Purpose::Pseudonym => "CUSTOS_PSEUDONYM_KEY",
            Purpose::Export => "CUSTOS_EXPORT_KEY",
        }
    }
}

/// The three secrets, with where they came from (for messages; never their bytes).
#[derive(Clone)]
pub struct Keys {
    signing: [u8; 32],
    pseudonym: [u8; 32],
    export: [u8; 32],
    pub origin: String,
}

impl std::fmt::Debug for Keys {
    /// Names the keys by id, never by their bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("signing", &self.id(Purpose::Signing))
            .field("pseudonym", &self.id(Purpose::Pseudonym))
            .field("export", &self.id(Purpose::Export))
            .field("origin", &self.origin)
            .finish()
    }
}

/// Where an instance looks for its keys: the environment first, then the keys folder, then
/// (for a store made before keys had a folder) the data folder's own files.
#[derive(Debug, Clone)]
pub struct KeySource {
    pub folder: PathBuf,
    pub data: PathBuf,
    /// The environment's hex keys, by purpose (read by the binary, so that this crate reads no
    /// environment of its own).
    pub variables: Vec<(Purpose, String)>,
}

impl KeySource {
    /// The default: `DATA/keys`, no environment.
    pub fn in_data(data: &Path) -> KeySource {
        KeySource {
            folder: data.join(KEY_FOLDER),
            data: data.to_owned(),
            variables: Vec::new(),
        }
    }

    /// The keys this source gives, or None if it gives none at all. Some but not all is an
    /// error naming what is missing.
    pub fn find(&self) -> Result<Option<Keys>, StoreError> {
        let mut found: Vec<Option<([u8; 32], String)>> = Vec::new();
        for purpose in Purpose::ALL {
            let from_variable = self
                .variables
                .iter()
                .find(|(p, _)| *p == purpose)
                .map(|(_, text)| {
                    parse_secret(text.trim().as_bytes())
                        .map(|secret| (secret, format!("${}", purpose.variable())))
                        .ok_or_else(|| {
                            StoreError::Key(format!("${} is not 64 hex digits", purpose.variable()))
                        })
                })
                .transpose()?;
            let found_here = match from_variable {
                Some(found) => Some(found),
                None => read_secret(&self.folder.join(purpose.file()))?
                    .map(|secret| (secret, self.folder.display().to_string())),
            };
            found.push(found_here);
        }
        if found.iter().all(Option::is_none) {
            return self.legacy();
        }
        let mut secrets = Vec::new();
        let mut origins = Vec::new();
        for (purpose, found) in Purpose::ALL.into_iter().zip(found) {
            let Some((secret, origin)) = found else {
                return Err(StoreError::Key(format!(
                    "the {} key is missing: give {} in {} or ${}",
                    purpose.as_str(),
                    purpose.file(),
                    self.folder.display(),
                    purpose.variable()
                )));
            };
            secrets.push(secret);
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        let [signing, pseudonym, export] = <[[u8; 32]; 3]>::try_from(secrets)
            .map_err(|_| StoreError::Key("three keys were expected".into()))?;
        Ok(Some(Keys {
            signing,
            pseudonym,
            export,
            origin: origins.join(", "),
        }))
    }

    /// The keys of a store made before keys had a folder, kept in the data folder.
    fn legacy(&self) -> Result<Option<Keys>, StoreError> {
        let Some(signing) = read_secret(&self.data.join(LEGACY_SIGNING_FILE))? else {
            return Ok(None);
        };
        let export = match read_secret(&self.data.join(LEGACY_EXPORT_FILE))? {
            Some(export) => export,
            // Made on the first export, so a store that never exported has none yet.
            None => {
                let export = random_secret()?;
                write_secret(&self.data.join(LEGACY_EXPORT_FILE), &export)?;
                export
            }
        };
        let pseudonym = Sha256::new()
            .chain_update(b"custos.pseudonym-key.v1")
            .chain_update(signing)
            .finalize()
            .into();
        Ok(Some(Keys {
            signing,
            pseudonym,
            export,
            origin: format!("{} (the data folder's own key files)", self.data.display()),
        }))
    }
}

/// The files a store made before keys had a folder keeps its secrets in.
pub const LEGACY_SIGNING_FILE: &str = "ledger-signing.key";
pub const LEGACY_EXPORT_FILE: &str = "export-keys.secret";

impl Keys {
    /// Three new random keys.
    pub fn generate(origin: String) -> Result<Keys, StoreError> {
        Ok(Keys {
            signing: random_secret()?,
            pseudonym: random_secret()?,
            export: random_secret()?,
            origin,
        })
    }

    pub fn secret(&self, purpose: Purpose) -> &[u8; 32] {
        match purpose {
            Purpose::Signing => &self.signing,
            Purpose::Pseudonym => &self.pseudonym,
            Purpose::Export => &self.export,
        }
    }

    /// A key's id: what the store records, and what signatures and messages name. It reveals
    /// nothing of the secret: a signing key's id hashes its public half, the others are a MAC
    /// of a fixed label.
    pub fn id(&self, purpose: Purpose) -> String {
        match purpose {
            Purpose::Signing => signing_key_id(
                SigningKey::from_bytes(self.secret(purpose))
                    .verifying_key()
                    .as_bytes(),
            ),
            Purpose::Pseudonym | Purpose::Export => {
                let mac = Hmac::new(self.secret(purpose))
                    .mac(&[b"custos.key-id.v1.", purpose.as_str().as_bytes()]);
                format!("hmac:{}", hex(mac.get(..8).unwrap_or_default()))
            }
        }
    }

    /// Writes the keys into `folder` (made if needed, mode 0700), each file new and mode 0600.
    pub fn write_to(&self, folder: &Path) -> Result<(), StoreError> {
        create_private_folder(folder)?;
        for purpose in Purpose::ALL {
            write_secret(&folder.join(purpose.file()), self.secret(purpose))?;
        }
        Ok(())
    }
}

fn random_secret() -> Result<[u8; 32], StoreError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| StoreError::Key(format!("no randomness for a new key: {e}")))?;
    Ok(secret)
}

/// 32 raw bytes, or 64 hex digits (with an optional line end).
fn parse_secret(bytes: &[u8]) -> Option<[u8; 32]> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Some(raw);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim_end();
    from_hex::<32>(text)
}

fn read_secret(path: &Path) -> Result<Option<[u8; 32]>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => parse_secret(&bytes).map(Some).ok_or_else(|| {
            StoreError::Key(format!(
                "{} is not a key: it must hold 32 bytes, or 64 hex digits",
                path.display()
            ))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StoreError::io(path, error)),
    }
}

fn create_private_folder(folder: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
        .map_err(|e| StoreError::io(folder, e))
}

/// Writes a key file that must not exist yet (mode 0600), as 64 hex digits, synced with its
/// folder, so that a key is never half-written or silently replaced.
pub fn write_secret(path: &Path, secret: &[u8; 32]) -> Result<(), StoreError> {
    write_new_file(path, format!("{}\n", hex(secret)).as_bytes(), 0o600)
}

/// Writes a file that must not exist yet, and syncs it and its folder, so that a key is never
/// half-written or silently replaced.
fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io(path, e))?;
    if let Some(folder) = path.parent() {
        fs::File::open(folder)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::io(folder, e))?;
    }
    Ok(())
}

/// A key the store has recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedKey {
    pub purpose: Purpose,
    pub id: String,
    /// A signing key's public half.
    pub public: Option<[u8; 32]>,
    pub since: Timestamp,
    pub retired_at: Option<Timestamp>,
    /// For a signing key that replaced another: the one it replaced, and the rotation's
    /// certificate (both keys' signatures of [`rotation_message`]).
    pub previous: Option<String>,
    pub certificate: Option<Vec<u8>>,
}

/// Every key the store has recorded, oldest first.
pub fn recorded_keys(tx: &mut dyn Tx) -> Result<Vec<RecordedKey>, StoreError> {
    let rows = tx.query(
        "SELECT purpose, key_id, public_key, since, retired_at, previous, certificate \
         FROM store_keys ORDER BY since, key_id",
        &[],
    )?;
    rows.iter()
        .map(|row| {
            let purpose = row.text(0)?;
            Ok(RecordedKey {
                purpose: Purpose::parse(&purpose).ok_or_else(|| {
                    StoreError::corrupt(format!("a recorded key has purpose `{purpose}`"))
                })?,
                id: row.text(1)?,
                public: match row.0.get(2) {
                    Some(Value::Null) | None => None,
                    Some(_) => Some(hash32(row.bytes(2)?)?),
                },
                since: time(row.int(3)?)?,
                retired_at: row.optional_int(4)?.map(time).transpose()?,
                previous: row.optional_text(5)?,
                certificate: match row.0.get(6) {
                    Some(Value::Null) | None => None,
                    Some(_) => Some(row.bytes(6)?),
                },
            })
        })
        .collect()
}

/// Binds the store to `keys`: a store that has recorded none records theirs; a store that has
/// answers whether these are its current keys, and refuses, saying which it expects, if not.
/// Runs in the transaction that migrates the schema, so that a refused instance changes nothing.
pub fn bind(tx: &mut dyn Tx, keys: &Keys, now: Timestamp) -> Result<(), StoreError> {
    if tx.dialect() == Dialect::Postgres {
        // Two first instances at once must not both record their own keys.
        tx.execute("LOCK TABLE store_keys IN SHARE ROW EXCLUSIVE MODE", &[])?;
    }
    let recorded = recorded_keys(tx)?;
    if recorded.is_empty() {
        for purpose in Purpose::ALL {
            let public = (purpose == Purpose::Signing).then(|| {
                SigningKey::from_bytes(keys.secret(purpose))
                    .verifying_key()
                    .to_bytes()
            });
            tx.execute(
                "INSERT INTO store_keys (purpose, key_id, public_key, since) VALUES (?, ?, ?, ?)",
                &[
                    purpose.as_str().into(),
                    keys.id(purpose).into(),
                    public.as_ref().map(<[u8; 32]>::as_slice).into(),
                    now.unix_millis().into(),
                ],
            )?;
        }
        return Ok(());
    }
    for purpose in Purpose::ALL {
        let given = keys.id(purpose);
        let current = recorded
            .iter()
            .find(|k| k.purpose == purpose && k.retired_at.is_none())
            .ok_or_else(|| {
                StoreError::corrupt(format!(
                    "the store records no current {} key",
                    purpose.as_str()
                ))
            })?;
        if current.id == given {
            continue;
        }
        let retired = recorded
            .iter()
            .find(|k| k.purpose == purpose && k.id == given)
            .and_then(|k| k.retired_at);
        let what = match retired {
            Some(at) => format!(
                "the {} key given ({}) is {given}, which this store retired at {at}",
                purpose.as_str(),
                keys.origin
            ),
            None => format!(
                "the {} key given ({}) is {given}, which this store has never used",
                purpose.as_str(),
                keys.origin
            ),
        };
        return Err(StoreError::Key(format!(
            "this store expects {} key {}; {what}. Give every instance the store's own keys \
             (--keys DIR, or ${}); nothing was changed",
            purpose.as_str(),
            current.id,
            purpose.variable()
        )));
    }
    Ok(())
}

/// What both keys of a rotation sign: the old key hands over to the new one at `at`.
pub fn rotation_message(previous: &str, public: &[u8; 32], at: Timestamp) -> Vec<u8> {
    let mut out = Vec::new();
    for field in [
        b"custos.key-rotation.v1".as_slice(),
        previous.as_bytes(),
        public.as_slice(),
        &at.unix_millis().to_be_bytes(),
    ] {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// Records that `next` signs from `at` on, in place of `current` (which must still be the
/// store's current signing key), with a certificate both keys signed.
pub fn rotate(
    tx: &mut dyn Tx,
    current: &LedgerKey,
    next: &LedgerKey,
    at: Timestamp,
) -> Result<(), StoreError> {
    ensure_current(tx, current)?;
    let public = next.public().to_bytes();
    let message = rotation_message(current.id(), &public, at);
    let mut certificate = current.sign(&message).to_vec();
    certificate.extend_from_slice(&next.sign(&message));
    tx.execute(
        "UPDATE store_keys SET retired_at = ? WHERE purpose = 'signing' AND key_id = ?",
        &[at.unix_millis().into(), current.id().into()],
    )?;
    tx.execute(
        "INSERT INTO store_keys (purpose, key_id, public_key, since, previous, certificate) \
         VALUES ('signing', ?, ?, ?, ?, ?)",
        &[
            next.id().into(),
            public.as_slice().into(),
            at.unix_millis().into(),
            current.id().into(),
            certificate.as_slice().into(),
        ],
    )?;
    Ok(())
}

/// Refuses to sign with a key the store has retired (another instance rotated it): the
/// instance must be restarted with the new key.
pub fn ensure_current(tx: &mut dyn Tx, key: &LedgerKey) -> Result<(), StoreError> {
    let current = tx
        .query_one(
            "SELECT key_id FROM store_keys WHERE purpose = 'signing' AND retired_at IS NULL",
            &[],
        )?
        .map(|row| row.text(0))
        .transpose()?;
    match current {
        Some(id) if id == key.id() => Ok(()),
        Some(id) => Err(StoreError::Key(format!(
            "this instance's signing key {} was retired; the store signs with {id} now: restart \
             it with the store's current keys",
            key.id()
        ))),
        None => Err(StoreError::corrupt(
            "the store records no current signing key",
        )),
    }
}

/// Every signing key a store has used, checked: the first, and each with its public half.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    pub first: String,
    pub chain: Vec<(String, [u8; 32])>,
}

/// The public halves of every signing key the store has used, by id, after checking the chain
/// of rotations: the first key stands alone, and each later one was handed over by the key
/// before it (both signed its certificate). Answers the first key's id too (checkpoints signed
/// before keys had ids name none).
pub fn signing_keys(tx: &mut dyn Tx) -> Result<Result<SigningKeys, String>, StoreError> {
    let recorded: Vec<RecordedKey> = recorded_keys(tx)?
        .into_iter()
        .filter(|k| k.purpose == Purpose::Signing)
        .collect();
    let Some(first) = recorded.iter().find(|k| k.previous.is_none()) else {
        return Ok(Err("the store records no first signing key".into()));
    };
    let mut chain = Vec::new();
    let mut at = first;
    loop {
        let Some(public) = at.public else {
            return Ok(Err(format!("signing key {} has no public half", at.id)));
        };
        if signing_key_id(&public) != at.id {
            return Ok(Err(format!(
                "signing key {}: its public half has another id",
                at.id
            )));
        }
        chain.push((at.id.clone(), public));
        let Some(next) = recorded
            .iter()
            .find(|k| k.previous.as_deref() == Some(&at.id))
        else {
            break;
        };
        let (Some(certificate), Some(next_public)) = (&next.certificate, next.public) else {
            return Ok(Err(format!(
                "signing key {} has no rotation certificate",
                next.id
            )));
        };
        let message = rotation_message(&at.id, &next_public, next.since);
        let (old, new) = certificate.split_at(certificate.len().min(64));
        if !verify_signature(&hex(&public), &message, old)
            || !verify_signature(&hex(&next_public), &message, new)
        {
            return Ok(Err(format!(
                "the rotation from signing key {} to {} does not verify",
                at.id, next.id
            )));
        }
        at = next;
    }
    if chain.len() != recorded.len() {
        return Ok(Err(
            "a recorded signing key is not in the chain of rotations".into(),
        ));
    }
    Ok(Ok(SigningKeys {
        first: first.id.clone(),
        chain,
    }))
}
