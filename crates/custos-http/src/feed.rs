//! Following the store's change feed, so that this server's gate index learns of every
//! committed change that moves a gate answer, whichever server wrote it.
//!
//! The feed is exact (`Store::gate_changes` misses no commit, in whatever order commits finish,
//! across lost connections and restarts), and it is polled: every [`POLL_EVERY`] in the
//! background, and on demand before the gate answers `prompt` or `block` ([`GateFeed::catch_up`]),
//! so that no user is asked again, or stopped, after a choice committed anywhere. Polls are
//! single-flight: requests that wait at the same time share one read of the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use custos_store::{FeedPosition, Store, StoreError};

use crate::gate_index::GateIndex;

/// How often the index reads the feed when nothing asks it to: the bound on how late a change
/// that lets a user continue (or moves them to a prompt) is seen at rest.
pub const POLL_EVERY: Duration = Duration::from_millis(25);

/// How long a gate answer waits for the store to confirm a `prompt` or `block`; when the store
/// can't answer in that time (it is down), the answer comes from memory.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct GateFeed {
    /// Where the next poll reads from; held for the whole poll, so that polls run one at a time.
    position: tokio::sync::Mutex<FeedPosition>,
    /// The number of the last poll begun. A poll numbered `n` reads a snapshot taken after it
    /// was numbered: a caller that sees `n` here knows poll `n + 1` will see what it saw.
    begun: AtomicU64,
    /// The number of the last poll that finished, and whether it read the store.
    finished: tokio::sync::watch::Sender<(u64, bool)>,
    /// When the last successful poll began: every change committed before then is in the index.
    fresh_as_of: std::sync::Mutex<Instant>,
    polls: AtomicU64,
    failures: AtomicU64,
}

/// What `/metrics` and `/readyz` show of the feed.
#[derive(Debug, Clone, Copy)]
pub struct FeedFigures {
    /// How far behind the store the index may be: the time since the last successful poll began.
    pub lag: Duration,
    pub polls: u64,
    pub failures: u64,
}

impl GateFeed {
    /// A feed that goes on from `position`, the one the index was loaded at.
    pub fn new(position: FeedPosition) -> GateFeed {
        GateFeed {
            position: tokio::sync::Mutex::new(position),
            begun: AtomicU64::new(0),
            finished: tokio::sync::watch::Sender::new((0, true)),
            fresh_as_of: std::sync::Mutex::new(Instant::now()),
            polls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub fn figures(&self) -> FeedFigures {
        let fresh_as_of = self
            .fresh_as_of
            .lock()
            .map_or_else(|_| Instant::now(), |t| *t);
        FeedFigures {
            lag: fresh_as_of.elapsed(),
            polls: self.polls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Waits until the index holds every change committed before this call (true), or answers
    /// false when the store could not be read within `within`.
    pub async fn catch_up(
        &self,
        store: &Arc<Store>,
        gates: &Arc<GateIndex>,
        within: Duration,
    ) -> bool {
        let needed = self.begun.load(Ordering::SeqCst) + 1;
        tokio::time::timeout(within, self.poll_unless_done(needed, store, gates))
            .await
            .unwrap_or(false)
    }

    /// Runs poll `needed` or a later one, unless one already finished while this waited its
    /// turn; answers whether it read the store.
    async fn poll_unless_done(
        &self,
        needed: u64,
        store: &Arc<Store>,
        gates: &Arc<GateIndex>,
    ) -> bool {
        let mut position = self.position.lock().await;
        let (last, read) = *self.finished.borrow();
        if last >= needed {
            return read;
        }
        // Numbered under the lock, before its snapshot is taken: it is at least `needed`.
        let number = self.begun.fetch_add(1, Ordering::SeqCst) + 1;
        let began = Instant::now();
        let since = *position;
        let (store, gates) = (Arc::clone(store), Arc::clone(gates));
        let outcome = tokio::task::spawn_blocking(move || read_changes(&store, &gates, since))
            .await
            .unwrap_or_else(|_| Err(StoreError::Database("the feed's reader stopped".into())));
        self.polls.fetch_add(1, Ordering::Relaxed);
        let read = match outcome {
            Ok(next) => {
                *position = next;
                if let Ok(mut fresh) = self.fresh_as_of.lock() {
                    *fresh = began;
                }
                true
            }
            Err(error) => {
                // Logged once per outage, not once per poll.
                if self.failures.fetch_add(1, Ordering::Relaxed) == 0 || self.finished.borrow().1 {
                    tracing::warn!(cause = %error, "the gate's change feed can't read the store");
                }
                false
            }
        };
        self.finished.send_replace((number, read));
        read
    }

    /// Reads the feed every [`POLL_EVERY`] for as long as the service runs.
    pub async fn follow(self: Arc<Self>, store: Arc<Store>, gates: Arc<GateIndex>) {
        let mut ticks = tokio::time::interval(POLL_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // A store that is down is asked again at the next tick, and no sooner.
            self.catch_up(&store, &gates, CONFIRM_WITHIN).await;
        }
    }
}

/// One read of the feed, on a blocking thread: the changes go into the index, the position to
/// read from next comes back.
fn read_changes(
    store: &Store,
    gates: &GateIndex,
    since: FeedPosition,
) -> Result<FeedPosition, StoreError> {
    let mut changes = Vec::new();
    let next = store.gate_changes(since, &mut |key, state, version| {
        changes.push((key, state, version));
    })?;
    gates.update_all(&changes);
    Ok(next)
}
