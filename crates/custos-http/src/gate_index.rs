//! The gate's in-memory index (invariant 6 of docs/POLICY.md: no request waits on disk to learn a choice).
//!
//! It keeps, per account, only the two facts Gate needs and whether the account was erased, and
//! answers through the core's rule table. It is built from the store at start and then follows
//! the store's change feed (`feed`), besides the writes this server makes. Each entry keeps
//! the ledger length its facts are as of: the same change may arrive from a write and from the
//! feed, in either order, and only the newest facts are kept.
//!
//! Accounts are named by their [`AccountKey`] (16 bytes of the keyed pseudonym), not by id:
//! an erasure read from the feed, whose row then holds only the pseudonym, finds the entry of
//! the id it erased, and the index holds no account id.
//!
//! Compact by design (goal: at most 64 resident bytes per account): an entry is 24 bytes (key,
//! ledger length, packed state); an open-addressing table of `u32` entry numbers, at most 70%
//! full, finds them. No per-account allocation.

use std::sync::RwLock;

use custos_core::{Gate, Policy, Preference, Timestamp};
use custos_store::{AccountKey, GateState};

/// What the index knows of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Unknown,
    Erased,
    Live(Gate),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: [u8; 16],
    /// The ledger length the state is as of (saturated at `u32::MAX`).
    version: u32,
    state: u8,
}

impl Entry {
    fn new(key: AccountKey, state: GateState, ledger_len: u64) -> Entry {
        Entry {
            key: key.0,
            version: version_of(ledger_len),
            state: pack(state),
        }
    }
}

fn version_of(ledger_len: u64) -> u32 {
    u32::try_from(ledger_len).unwrap_or(u32::MAX)
}

const EMPTY: u32 = u32::MAX;

fn pack(state: GateState) -> u8 {
    let preference = match state.preference {
        Preference::Unset => 0,
        Preference::Allowed => 1,
        Preference::Declined => 2,
    };
    preference | (u8::from(state.consumer_plan) << 2) | (u8::from(state.erased) << 3)
}

fn unpack(bits: u8) -> GateState {
    GateState {
        preference: match bits & 3 {
            1 => Preference::Allowed,
            2 => Preference::Declined,
            _ => Preference::Unset,
        },
        consumer_plan: bits & 4 != 0,
        erased: bits & 8 != 0,
    }
}

#[derive(Debug, Default)]
struct Table {
    entries: Vec<Entry>,
    /// Entry numbers by hash; `EMPTY` where free. Its length is a power of two.
    slots: Vec<u32>,
}

/// A key is already a keyed hash: its first bytes pick the slot.
fn hash(key: &[u8; 16]) -> usize {
    let mut low = [0u8; 8];
    low.copy_from_slice(key.get(..8).unwrap_or(&[0; 8]));
    // Truncation on a 32-bit target is fine: only the low bits pick a slot.
    u64::from_le_bytes(low) as usize
}

impl Table {
    /// The slot holding `key`, or the free slot where it would go.
    fn find(&self, key: &[u8; 16]) -> Option<(usize, Option<usize>)> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut slot = hash(key) & mask;
        loop {
            match *self.slots.get(slot)? {
                EMPTY => return Some((slot, None)),
                number => {
                    if self.entries.get(number as usize)?.key == *key {
                        return Some((slot, Some(number as usize)));
                    }
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    fn get(&self, key: &[u8; 16]) -> Option<GateState> {
        let (_, number) = self.find(key)?;
        self.entries.get(number?).map(|e| unpack(e.state))
    }

    fn grow(&mut self) {
        self.rebuild_slots((self.slots.len() * 2).max(1024));
    }

    /// Rebuilds the slots at `capacity` (a power of two) from the entries.
    fn rebuild_slots(&mut self, capacity: usize) {
        self.slots = vec![EMPTY; capacity];
        let mask = capacity - 1;
        for (number, entry) in self.entries.iter().enumerate() {
            let mut slot = hash(&entry.key) & mask;
            while self.slots.get(slot).is_some_and(|s| *s != EMPTY) {
                slot = (slot + 1) & mask;
            }
            if let Some(free) = self.slots.get_mut(slot) {
                *free = u32::try_from(number).unwrap_or(EMPTY);
            }
        }
    }

    /// Sizes the slots for the entries (at most 70% full) and fills them.
    fn index(&mut self) {
        let capacity = (self.entries.len() * 10 / 7 + 1)
            .next_power_of_two()
            .max(1024);
        self.rebuild_slots(capacity);
    }

    /// Records `state` as of ledger length `version`, unless the entry already holds a newer
    /// one.
    fn set(&mut self, key: AccountKey, state: GateState, version: u64) {
        // Keep the table at most 70% full.
        if (self.entries.len() + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        let new = Entry::new(key, state, version);
        match self.find(&key.0) {
            Some((_, Some(number))) => {
                if let Some(entry) = self.entries.get_mut(number)
                    && new.version >= entry.version
                {
                    *entry = new;
                }
            }
            Some((slot, None)) => {
                let Ok(number) = u32::try_from(self.entries.len()) else {
                    return;
                };
                self.entries.push(new);
                if let Some(free) = self.slots.get_mut(slot) {
                    *free = number;
                }
            }
            None => {}
        }
    }
}

#[derive(Debug, Default)]
pub struct GateIndex {
    table: RwLock<Table>,
    /// Whether every account of the store has been read in (see [`GateIndex::load`]). Until
    /// then, an account the index does not hold is looked up in the store.
    loaded: std::sync::atomic::AtomicBool,
}

impl GateIndex {
    /// An index that holds nothing yet: a server answers from it at once, and it fills while
    /// it answers ([`GateIndex::load`]).
    pub fn empty() -> GateIndex {
        GateIndex::default()
    }

    /// Reads every account's gate state from one snapshot of the store into the index. What
    /// the index learned meanwhile (writes, the feed, look-ups) is kept where it is newer: each
    /// state carries its version.
    pub fn load(&self, store: &custos_store::Store) -> Result<(), custos_store::StoreError> {
        // Accounts are unique in the store, so each row is appended without a lookup and the
        // hash slots are built once at the end, at their final size. Batches come from
        // several reading threads, each taking the lock once per batch. The entries are
        // allocated once, at the store's estimate of its accounts and an eighth more (pages
        // never touched take no memory): fresh memory costs the kernel's zeroing of every
        // page, a sixth of the load when the entries were gathered and then copied together.
        let expected = store.accounts_estimate().ok().flatten().unwrap_or(0);
        let room = usize::try_from(expected + expected / 8).unwrap_or(0);
        let entries = std::sync::Mutex::new(Vec::with_capacity(room));
        store.for_each_gate_state(&|batch| {
            if let Ok(mut entries) = entries.lock() {
                entries.extend(
                    batch
                        .iter()
                        .map(|(key, state, version)| Entry::new(*key, *state, *version)),
                );
            }
        })?;
        let mut loaded = Table {
            entries: entries
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            ..Table::default()
        };
        // Room a little larger than needed is pages never touched, which take no memory; an
        // estimate far off is given back.
        if loaded.entries.capacity() > loaded.entries.len() + loaded.entries.len() / 4 + 1024 {
            loaded.entries.shrink_to_fit();
        }
        loaded.index();
        if let Ok(mut table) = self.table.write() {
            for entry in &table.entries {
                loaded.set(
                    AccountKey(entry.key),
                    unpack(entry.state),
                    u64::from(entry.version),
                );
            }
            *table = loaded;
        }
        self.loaded.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn len(&self) -> usize {
        self.table.read().map_or(0, |t| t.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gate(a, t) from memory, through the core's rule table.
    pub fn gate(&self, policy: &Policy, account: AccountKey, at: Timestamp) -> Lookup {
        let Ok(table) = self.table.read() else {
            return Lookup::Unknown;
        };
        match table.get(&account.0) {
            None => Lookup::Unknown,
            Some(state) if state.erased => Lookup::Erased,
            Some(state) => Lookup::Live(custos_core::gate::decide(
                policy,
                state.consumer_plan,
                state.preference,
                at,
            )),
        }
    }

    /// Records an account's state as of ledger length `version`, after a committed write; an
    /// older state than the one held is let go.
    pub fn update(&self, account: AccountKey, state: GateState, version: u64) {
        if let Ok(mut table) = self.table.write() {
            table.set(account, state, version);
        }
    }

    /// Records many states under one lock (a batch read from the feed).
    pub fn update_all(&self, changes: &[(AccountKey, GateState, u64)]) {
        if let Ok(mut table) = self.table.write() {
            for (account, state, version) in changes {
                table.set(*account, *state, *version);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_packed_byte() {
        for preference in [Preference::Unset, Preference::Allowed, Preference::Declined] {
            for consumer_plan in [false, true] {
                for erased in [false, true] {
                    let state = GateState {
                        consumer_plan,
                        preference,
                        erased,
                    };
                    assert_eq!(unpack(pack(state)), state);
                }
            }
        }
    }

    fn key(name: &str) -> AccountKey {
        let hmac = custos_store::ledger::Hmac::new(&[7; 32]);
        AccountKey::of_stored(&hmac, name)
    }

    /// What the index learned while it loaded (a write, the feed) is kept where it is newer
    /// than the load's snapshot, and let go where it is older.
    #[test]
    fn a_load_keeps_what_the_index_learned_meanwhile_where_it_is_newer() {
        use custos_core::{AccountId, Channel, Command};
        let folder = tempfile::tempdir().unwrap();
        let location = custos_store::Location::Sqlite {
            data: folder.path().to_owned(),
        };
        let store = custos_store::Store::open(&location, Policy::bundled()).unwrap();
        let at = Timestamp::parse("2025-10-01T00:00:00Z").unwrap();
        for id in ["a", "b"] {
            let command = Command::CreateAccount {
                account: AccountId::parse(id).unwrap(),
                plan: "pro".into(),
                choice: Some((true, Channel::Signup)),
            };
            store.apply(at, &command, "test").unwrap();
        }
        let index = GateIndex::empty();
        assert!(!index.is_loaded());
        let key = |id: &str| store.account_key(&AccountId::parse(id).unwrap());
        let declined = GateState {
            consumer_plan: true,
            preference: Preference::Declined,
            erased: false,
        };
        // Newer than the store (ledger length 3 against 2): kept. Older (1): let go.
        index.update(key("a"), declined, 3);
        index.update(key("b"), declined, 1);
        index.load(&store).unwrap();
        assert!(index.is_loaded());
        assert_eq!(index.len(), 2);
        let policy = Policy::bundled();
        let decision = |id: &str| match index.gate(&policy, key(id), at) {
            Lookup::Live(gate) => gate.reason,
            other => panic!("{id}: {other:?}"),
        };
        let table = index.table.read().unwrap();
        assert_eq!(table.get(&key("a").0), Some(declined));
        assert_eq!(
            table.get(&key("b").0).map(|s| s.preference),
            Some(Preference::Allowed)
        );
        drop(table);
        assert_eq!(decision("a"), decision("b"), "both are decided");
    }

    #[test]
    fn an_erased_accounts_stored_pseudonym_has_the_key_of_its_id() {
        let secret = [7; 32];
        let erased = custos_store::ledger::pseudonym(&secret, "alice");
        assert_eq!(key(&erased), key("alice"));
        assert_ne!(key("alice"), key("bob"));
        assert_ne!(
            key("erased:not-hex"),
            key("alice"),
            "a live id that only looks erased is keyed by its HMAC"
        );
    }

    #[test]
    fn the_table_finds_every_key_it_was_given_and_no_other_across_growth() {
        let mut table = Table::default();
        let state = |i: usize| GateState {
            consumer_plan: i % 2 == 0,
            preference: [Preference::Unset, Preference::Allowed, Preference::Declined][i % 3],
            erased: i % 7 == 0,
        };
        for i in 0..50_000 {
            table.set(key(&format!("account-{i}")), state(i), 1);
        }
        for i in (0..50_000).step_by(3) {
            table.set(key(&format!("account-{i}")), state(i + 1), 2);
        }
        for i in 0..50_000 {
            let expected = if i % 3 == 0 { state(i + 1) } else { state(i) };
            assert_eq!(
                table.get(&key(&format!("account-{i}")).0),
                Some(expected),
                "account-{i}"
            );
        }
        assert_eq!(table.get(&key("account-50000").0), None);
        let mut loaded = Table::default();
        for i in 0..50_000 {
            loaded
                .entries
                .push(Entry::new(key(&format!("account-{i}")), state(i), 1));
        }
        loaded.index();
        for i in (0..50_000).step_by(7) {
            assert_eq!(loaded.get(&key(&format!("account-{i}")).0), Some(state(i)));
        }
        assert_eq!(loaded.get(&key("account-50000").0), None);
        loaded.set(key("account-50000"), state(1), 1);
        assert_eq!(loaded.get(&key("account-50000").0), Some(state(1)));
        assert_eq!(table.get(&key("").0), None);
        assert_eq!(table.entries.len(), 50_000);
    }

    #[test]
    fn an_older_state_never_replaces_a_newer_one_whatever_order_they_come_in() {
        let mut table = Table::default();
        let (undecided, allowed, business) = (
            GateState {
                consumer_plan: true,
                preference: Preference::Unset,
                erased: false,
            },
            GateState {
                consumer_plan: true,
                preference: Preference::Allowed,
                erased: false,
            },
            GateState {
                consumer_plan: false,
                preference: Preference::Allowed,
                erased: false,
            },
        );
        table.set(key("a"), undecided, 1);
        table.set(key("a"), business, 3);
        table.set(key("a"), allowed, 2);
        assert_eq!(table.get(&key("a").0), Some(business));
        table.set(key("a"), allowed, 3);
        assert_eq!(
            table.get(&key("a").0),
            Some(allowed),
            "the same version may restate"
        );
        table.set(key("a"), undecided, 4);
        assert_eq!(table.get(&key("a").0), Some(undecided));
    }
}
