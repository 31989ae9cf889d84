//! The gate's in-memory index (invariant 6 of docs/POLICY.md: no request waits on disk to learn a choice).
//!
//! It keeps, per account, only the two facts Gate needs and whether the account was erased, and
//! answers through the core's rule table. It is built from the store at start and updated only
//! after a write commits. Each entry keeps the ledger length its facts are as of: two writes of
//! one account may reach the index in either order, and only the newer one's facts are kept.
//!
//! Compact by design (goal: at most 64 resident bytes per account): every id lives in one byte
//! arena; an entry is 12 bytes (arena offset, ledger length, id length, packed state); an
//! open-addressing table of `u32` entry numbers, at most 70% full, finds them. No per-account
//! allocation.

use std::hash::{BuildHasher, Hasher};
use std::sync::RwLock;

use custos_core::{AccountId, Gate, Policy, Preference, Timestamp};
use custos_store::GateState;

/// What the index knows of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Unknown,
    Erased,
    Live(Gate),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u32,
    /// The ledger length the state is as of (saturated at `u32::MAX`).
    version: u32,
    length: u8,
    state: u8,
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
    ids: Vec<u8>,
    entries: Vec<Entry>,
    /// Entry numbers by hash; `EMPTY` where free. Its length is a power of two.
    slots: Vec<u32>,
}

/// A fixed, seedless hasher: the table holds only our own account ids.
#[derive(Debug, Default, Clone, Copy)]
struct IdHash;

impl BuildHasher for IdHash {
    type Hasher = std::hash::DefaultHasher;
    fn build_hasher(&self) -> Self::Hasher {
        std::hash::DefaultHasher::new()
    }
}

fn hash(id: &[u8]) -> usize {
    let mut hasher = IdHash.build_hasher();
    hasher.write(id);
    // Truncation is fine: only the low bits pick a slot.
    hasher.finish() as usize
}

impl Table {
    fn id_of(&self, entry: Entry) -> &[u8] {
        let start = entry.offset as usize;
        self.ids
            .get(start..start + usize::from(entry.length))
            .unwrap_or_default()
    }

    /// The slot holding `id`, or the free slot where it would go.
    fn find(&self, id: &[u8]) -> Option<(usize, Option<usize>)> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut slot = hash(id) & mask;
        loop {
            match *self.slots.get(slot)? {
                EMPTY => return Some((slot, None)),
                number => {
                    let entry = *self.entries.get(number as usize)?;
                    if self.id_of(entry) == id {
                        return Some((slot, Some(number as usize)));
                    }
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    fn get(&self, id: &[u8]) -> Option<GateState> {
        let (_, number) = self.find(id)?;
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
            let start = entry.offset as usize;
            let id = self
                .ids
                .get(start..start + usize::from(entry.length))
                .unwrap_or_default();
            let mut slot = hash(id) & mask;
            while self.slots.get(slot).is_some_and(|s| *s != EMPTY) {
                slot = (slot + 1) & mask;
            }
            if let Some(free) = self.slots.get_mut(slot) {
                *free = u32::try_from(number).unwrap_or(EMPTY);
            }
        }
    }

    /// Adds an entry for an id known to be new, without a slot: for the load at start, which
    /// reads each account once and then builds the slots in one pass ([`Table::index`]).
    fn push_new(&mut self, id: &[u8], state: GateState, version: u64) {
        let (Ok(offset), Ok(length)) = (u32::try_from(self.ids.len()), u8::try_from(id.len()))
        else {
            return;
        };
        self.ids.extend_from_slice(id);
        self.entries.push(Entry {
            offset,
            version: version_of(version),
            length,
            state: pack(state),
        });
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
    fn set(&mut self, id: &[u8], state: GateState, version: u64) {
        // Keep the table at most 70% full.
        if (self.entries.len() + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        let version = version_of(version);
        match self.find(id) {
            Some((_, Some(number))) => {
                if let Some(entry) = self.entries.get_mut(number)
                    && version >= entry.version
                {
                    entry.state = pack(state);
                    entry.version = version;
                }
            }
            Some((slot, None)) => {
                let (Ok(offset), Ok(length), Ok(number)) = (
                    u32::try_from(self.ids.len()),
                    u8::try_from(id.len()),
                    u32::try_from(self.entries.len()),
                ) else {
                    return;
                };
                self.ids.extend_from_slice(id);
                self.entries.push(Entry {
                    offset,
                    version,
                    length,
                    state: pack(state),
                });
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
}

impl GateIndex {
    /// Builds the index by streaming every account's gate state from the store.
    pub fn load(store: &custos_store::Store) -> Result<GateIndex, custos_store::StoreError> {
        let mut table = Table::default();
        // Account ids are unique in the store, so each row is appended without a lookup and
        // the hash slots are built once at the end, at their final size.
        store.for_each_gate_state(&mut |id, state, version| {
            table.push_new(id.as_bytes(), state, version);
        })?;
        table.ids.shrink_to_fit();
        table.entries.shrink_to_fit();
        table.index();
        Ok(GateIndex {
            table: RwLock::new(table),
        })
    }

    pub fn len(&self) -> usize {
        self.table.read().map_or(0, |t| t.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gate(a, t) from memory, through the core's rule table.
    pub fn gate(&self, policy: &Policy, account: &AccountId, at: Timestamp) -> Lookup {
        let Ok(table) = self.table.read() else {
            return Lookup::Unknown;
        };
        match table.get(account.as_str().as_bytes()) {
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
    pub fn update(&self, account: &AccountId, state: GateState, version: u64) {
        if let Ok(mut table) = self.table.write() {
            table.set(account.as_str().as_bytes(), state, version);
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

    #[test]
    fn the_table_finds_every_id_it_was_given_and_no_other_across_growth() {
        let mut table = Table::default();
        let state = |i: usize| GateState {
            consumer_plan: i % 2 == 0,
            preference: [Preference::Unset, Preference::Allowed, Preference::Declined][i % 3],
            erased: i % 7 == 0,
        };
        for i in 0..50_000 {
            table.set(format!("account-{i}").as_bytes(), state(i), 1);
        }
        for i in (0..50_000).step_by(3) {
            table.set(format!("account-{i}").as_bytes(), state(i + 1), 2);
        }
        for i in 0..50_000 {
            let expected = if i % 3 == 0 { state(i + 1) } else { state(i) };
            assert_eq!(
                table.get(format!("account-{i}").as_bytes()),
                Some(expected),
                "account-{i}"
            );
        }
        assert_eq!(table.get(b"account-50000"), None);
        let mut loaded = Table::default();
        for i in 0..50_000 {
            loaded.push_new(format!("account-{i}").as_bytes(), state(i), 1);
        }
        loaded.index();
        for i in (0..50_000).step_by(7) {
            assert_eq!(
                loaded.get(format!("account-{i}").as_bytes()),
                Some(state(i))
            );
        }
        assert_eq!(loaded.get(b"account-50000"), None);
        loaded.set(b"account-50000", state(1), 1);
        assert_eq!(loaded.get(b"account-50000"), Some(state(1)));
        assert_eq!(table.get(b""), None);
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
        table.set(b"a", undecided, 1);
        table.set(b"a", business, 3);
        table.set(b"a", allowed, 2);
        assert_eq!(table.get(b"a"), Some(business));
        table.set(b"a", allowed, 3);
        assert_eq!(
            table.get(b"a"),
            Some(allowed),
            "the same version may restate"
        );
        table.set(b"a", undecided, 4);
        assert_eq!(table.get(b"a"), Some(undecided));
    }
}
