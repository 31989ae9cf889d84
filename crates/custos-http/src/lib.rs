//! custos-http: the service a chat product calls (docs/API.md §2), and the pages people see.
//!
//! Thin adapters in layers: `state` (what handlers reach), `access` (callers and roles),
//! `extract` (the caller, the path, the JSON body, each refusing with problem+json),
//! `actions` (what the API and the pages both do), `api` (the handlers by resource), `pages`,
//! and `routes` (the table the router and the OpenAPI document are both built from). No handler
//! restates a rule of docs/POLICY.md: the gate, admission, expiry and eligibility are the core's.
//!
//! It must never listen beyond loopback unless told to, log a token, or answer an error with
//! anything but problem+json (the pages answer theirs as pages).

mod access;
mod actions;
mod api;
pub mod charts;
mod clock;
mod extract;
mod feed;
mod figures;
mod gate_index;
mod jobs;
mod metrics;
mod middleware;
mod pages;
mod problem;
mod routes;
mod schemas;
mod server;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

pub use access::Role;
pub use clock::{Clock, system_now};
pub use gate_index::GateIndex;
pub use jobs::ExportPlace;
pub use problem::Problem;
pub use routes::{openapi_document, router};
pub use state::AppState;

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
    // The dashboard's figures are counted when an operator first opens it, not at start: a
    // replica that never serves the dashboard never reads the whole store for it.
    let follower = tokio::spawn(
        Arc::clone(&state.feed).follow(Arc::clone(&state.store), Arc::clone(&state.gates)),
    );
    let sweeper = sweep_every
        .map(|interval| tokio::spawn(actions::sweep_periodically(Arc::clone(&state), interval)));
    let served = server::serve(listener, router(Arc::clone(&state)), shutdown).await;
    follower.abort();
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
