//! The gate's in-memory index (SPEC §4 invariant 6: no request waits on disk to learn a choice).
//!
//! It keeps, per account, only the two facts Gate needs and whether the account was erased. It
//! is built from the store at start and updated only after a write commits.

use std::collections::HashMap;
use std::sync::RwLock;

use custos_core::{AccountId, Gate, Policy, Timestamp};
use custos_store::GateState;

#[derive(Debug, Default)]
pub struct GateIndex {
    accounts: RwLock<HashMap<Box<str>, GateState>>,
}

/// What the index knows of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Unknown,
    Erased,
    Live(Gate),
}

impl GateIndex {
    pub fn build(states: Vec<(AccountId, GateState)>) -> GateIndex {
        let accounts = states
            .into_iter()
            .map(|(id, state)| (Box::from(id.as_str()), state))
            .collect();
        GateIndex {
            accounts: RwLock::new(accounts),
        }
    }

    pub fn len(&self) -> usize {
        self.accounts.read().map_or(0, |a| a.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gate(a, t) from memory, through the core's rule table.
    pub fn gate(&self, policy: &Policy, account: &AccountId, at: Timestamp) -> Lookup {
        let Ok(accounts) = self.accounts.read() else {
            return Lookup::Unknown;
        };
        match accounts.get(account.as_str()) {
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

    /// Records an account's state after a committed write.
    pub fn update(&self, account: &AccountId, state: GateState) {
        if let Ok(mut accounts) = self.accounts.write() {
            accounts.insert(Box::from(account.as_str()), state);
        }
    }
}
