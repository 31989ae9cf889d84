//! custos-http: the service a chat product calls (API.md §2).
//!
//! Thin adapters: each handler authenticates the caller, checks its role, parses the request
//! into core types, and asks the store (on a blocking thread) or, for the gate, the in-memory
//! index. No handler restates a rule of SPEC.md.

mod access;
pub mod charts;
mod clock;
mod exports;
mod gate_index;
mod metrics;
mod pages;
mod problem;
mod retention;
mod routes;
mod schemas;

use std::net::SocketAddr;
use std::sync::Arc;

use custos_core::{AccountId, Timestamp};
use custos_store::{Store, StoreError};

pub use access::Role;
pub use clock::{Clock, system_now};
pub use exports::ExportPlace;
pub use gate_index::GateIndex;
pub use problem::Problem;

/// Everything a request handler may reach.
#[derive(Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub gates: GateIndex,
    pub clock: Clock,
    pub metrics: metrics::Metrics,
    pub tokens: access::TokenCache,
    /// Where exports are written and recorded.
    pub exports: exports::ExportPlace,
    /// Exports this process started that have not finished well.
    pub running: exports::Running,
    /// The operator dashboard's figures and this server's recent sweeps.
    pub dashboard: pages::DashboardCache,
}

impl AppState {
    /// Builds the gate index from the store, so that the gate never waits on disk.
    pub fn open(
        store: Arc<Store>,
        clock: Clock,
        exports: exports::ExportPlace,
    ) -> Result<AppState, StoreError> {
        let gates = GateIndex::load(&store)?;
        Ok(AppState {
            store,
            gates,
            clock,
            metrics: metrics::Metrics::default(),
            tokens: access::TokenCache::default(),
            exports,
            running: exports::Running::default(),
            dashboard: pages::DashboardCache::default(),
        })
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Re-reads an account's gate inputs after a committed write.
    fn refresh_gate(&self, account: &AccountId) -> Result<(), StoreError> {
        if let Some(state) = self.store.gate_state(account)? {
            self.gates.update(account, state);
        }
        Ok(())
    }
}

pub use routes::openapi_document;

/// The service's routes over `state`.
pub fn router(state: Arc<AppState>) -> axum::Router {
    routes::router(state)
}

/// Serves until `shutdown` resolves; requests in flight then finish before this returns, and
/// running exports stop (removing their partial files).
/// With `sweep_every`, a retention sweep also runs at that interval (a sweep in progress at
/// shutdown stops between two batches of the next; each batch is whole).
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    sweep_every: Option<std::time::Duration>,
) -> std::io::Result<()> {
    pages::refresh_dashboard_in_background(&state);
    let sweeper = sweep_every
        .map(|interval| tokio::spawn(retention::sweep_periodically(Arc::clone(&state), interval)));
    let served = axum::serve(listener, router(Arc::clone(&state)).into_make_service())
        .with_graceful_shutdown(shutdown)
        .await;
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    // Exports run on threads of their own, which would die mid-file with the process.
    let exports = Arc::clone(&state);
    let _ = tokio::task::spawn_blocking(move || exports.running.stop_all()).await;
    served
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("`{text}` is not an address like 127.0.0.1:8080: {e}"))
}
