//! What every request handler may reach, and the few things they all do with it: read the
//! clock, authenticate a token, run store work on a blocking thread, and keep the gate index in
//! step with what a write committed.

use std::sync::Arc;

use custos_core::{AccountId, Timestamp};
use custos_export::{ExportError, Exports};
use custos_store::{Store, StoreError, Written};

use crate::access::{Caller, Role, TokenCache};
use crate::clock::Clock;
use crate::figures::DashboardCache;
use crate::gate_index::GateIndex;
use crate::jobs::{ExportPlace, Running, SweepLog};
use crate::metrics::Metrics;
use crate::problem::Problem;

#[derive(Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub gates: GateIndex,
    pub clock: Clock,
    pub metrics: Metrics,
    pub tokens: TokenCache,
    /// Where exports are written and recorded.
    pub exports: ExportPlace,
    /// Exports this process started that have not finished well.
    pub running: Running,
    /// This server's recent sweeps.
    pub sweeps: SweepLog,
    /// The operator dashboard's figures.
    pub dashboard: DashboardCache,
}

impl AppState {
    /// Builds the gate index from the store, so that the gate never waits on disk.
    pub fn open(
        store: Arc<Store>,
        clock: Clock,
        exports: ExportPlace,
    ) -> Result<AppState, StoreError> {
        let gates = GateIndex::load(&store)?;
        Ok(AppState {
            store,
            gates,
            clock,
            metrics: Metrics::default(),
            tokens: TokenCache::default(),
            exports,
            running: Running::default(),
            sweeps: SweepLog::default(),
            dashboard: DashboardCache::default(),
        })
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Runs store work on a blocking thread: SQLite and the PostgreSQL client both block.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Problem> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|_| Problem::internal())?
            .map_err(Problem::from)
    }

    /// Runs `work` on this server's exports, on a blocking thread (it reads files and the
    /// store).
    pub async fn on_exports<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Exports<'_>) -> Result<T, ExportError> + Send + 'static,
    ) -> Result<T, Problem> {
        let state = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&state.export_jobs()))
            .await
            .map_err(|_| Problem::internal())?
            .map_err(Problem::from)
    }

    /// The exports of this server's store, folders and records.
    pub fn export_jobs(&self) -> Exports<'_> {
        Exports::new(
            &self.store,
            &self.exports.data,
            self.exports.root.as_deref(),
        )
    }

    /// Who a token speaks for: from the cache of recent answers, or asked of the store.
    pub async fn authenticate(&self, token: String) -> Result<Caller, Problem> {
        let now = self.now();
        let hash = custos_store::token_hash(&token);
        if let Some(caller) = self.tokens.get(&hash, now) {
            return Ok(caller);
        }
        let principal = self
            .blocking(move |store| store.authenticate(&token, now))
            .await?
            .ok_or_else(Problem::unauthorized)?;
        let role = Role::parse(&principal.role).ok_or_else(Problem::unauthorized)?;
        let caller = Caller {
            role,
            account: principal.account,
            token: custos_core::policy::hex(hash.get(..6).unwrap_or_default()),
        };
        self.tokens.keep(hash, caller.clone(), principal.expires_at);
        Ok(caller)
    }

    /// Brings the gate index up to what a committed write says of its account.
    pub fn remember(&self, written: &Written) {
        if let Some((account, state, version)) = &written.gate {
            self.gates.update(account, *state, *version);
        }
    }

    /// Reads an account's gate facts from the store into the index (for an id the index does
    /// not hold: an account erased before this server started is stored under its pseudonym).
    pub async fn look_up_gate(&self, account: &AccountId) -> Result<(), Problem> {
        let id = account.clone();
        if let Some((state, version)) = self.blocking(move |store| store.gate_state(&id)).await? {
            self.gates.update(account, state, version);
        }
        Ok(())
    }
}
