//! What every request handler may reach, and the few things they all do with it: read the
//! clock, authenticate a token, run store work on a blocking thread, and keep the gate index in
//! step with what a write committed.

use std::sync::Arc;

use custos_core::{AccountId, Timestamp};
use custos_export::{ExportError, Exports};
use custos_store::{Store, StoreError, Written};

use crate::access::{Caller, Role, TokenCache};
use crate::clock::Clock;
use crate::feed::GateFeed;
use crate::figures::DashboardCache;
use crate::gate_index::GateIndex;
use crate::jobs::{ExportPlace, Running};
use crate::metrics::Metrics;
use crate::problem::Problem;

/// `/readyz` fails when the gate index is further behind the store than this, by default.
pub const DEFAULT_MAX_GATE_LAG: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub gates: Arc<GateIndex>,
    /// How the index follows what other servers (and this one) commit.
    pub feed: Arc<GateFeed>,
    /// How far behind the store the gate index may be before `/readyz` fails.
    pub max_gate_lag: std::time::Duration,
    pub clock: Clock,
    pub metrics: Metrics,
    pub tokens: TokenCache,
    /// Where exports are written and recorded.
    pub exports: ExportPlace,
    /// Exports this process started that have not finished well.
    pub running: Running,
    /// The operator dashboard's figures.
    pub dashboard: DashboardCache,
}

impl AppState {
    /// Starts the gate index and the feed it follows the store by. The index loads on a thread
    /// of its own while the server already answers: an account not read in yet is looked up in
    /// the store, so a new instance is ready at once, whatever the store's size.
    pub fn open(
        store: Arc<Store>,
        clock: Clock,
        exports: ExportPlace,
    ) -> Result<AppState, StoreError> {
        // The feed goes on from before the load's snapshot: what commits while the index
        // loads is read by the feed too, and the newer state of each account is kept.
        let position = store.feed_position()?;
        let gates = Arc::new(GateIndex::empty());
        load_in_background(Arc::clone(&store), Arc::clone(&gates));
        Ok(AppState {
            store,
            gates,
            feed: Arc::new(GateFeed::new(position)),
            max_gate_lag: DEFAULT_MAX_GATE_LAG,
            clock,
            metrics: Metrics::default(),
            tokens: TokenCache::default(),
            exports,
            running: Running::default(),
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
            self.gates
                .update(self.store.account_key(account), *state, *version);
        }
    }

    /// Waits until the gate index holds every change committed before this call, by any
    /// server; false if the store could not be read in time (the index then answers as it is).
    pub async fn catch_up(&self) -> bool {
        self.feed
            .catch_up(&self.store, &self.gates, crate::feed::CONFIRM_WITHIN)
            .await
    }

    /// Reads an account's gate facts from the store into the index (for an id the index does
    /// not hold: an account erased before this server started is stored under its pseudonym).
    pub async fn look_up_gate(&self, account: &AccountId) -> Result<(), Problem> {
        let id = account.clone();
        if let Some((state, version)) = self.blocking(move |store| store.gate_state(&id)).await? {
            self.gates
                .update(self.store.account_key(account), state, version);
        }
        Ok(())
    }
}

/// Loads the gate index on a thread of its own, trying again every second if the store can't
/// be read (until then, every account is looked up in the store).
fn load_in_background(store: Arc<Store>, gates: Arc<GateIndex>) {
    let spawned = std::thread::Builder::new()
        .name("custos-gate-load".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            loop {
                match gates.load(&store) {
                    Ok(()) => {
                        tracing::info!(
                            accounts = gates.len(),
                            seconds = started.elapsed().as_secs_f64(),
                            "gate index loaded"
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(cause = %error, "loading the gate index failed; trying again");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(cause = %error, "no thread to load the gate index");
    }
}
