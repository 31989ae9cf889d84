//! The operator dashboard's figures, kept between requests: whole-table counts and a replay of
//! the ledger take seconds on a large store, and a page must answer in milliseconds. The pages
//! compute and refresh them (`pages::dashboard`); this holds them.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custos_core::Timestamp;
use custos_store::{ConsentOverTime, ConsentReport, RetentionReport, VerifyReport};

/// The figures, with the time they are as of.
#[derive(Debug)]
pub struct Figures {
    pub as_of: Timestamp,
    /// When counting began, and when it ended.
    pub started: Instant,
    pub computed: Instant,
    pub over_time: ConsentOverTime,
    pub consent: ConsentReport,
    pub retention: RetentionReport,
}

/// The latest verification of the ledger.
#[derive(Debug)]
pub struct Verification {
    pub as_of: Timestamp,
    pub finished: Instant,
    pub took: Duration,
    pub outcome: Result<VerifyReport, String>,
}

#[derive(Debug, Default)]
pub struct DashboardCache {
    pub figures: Mutex<Option<Arc<Figures>>>,
    pub verification: Mutex<Option<Arc<Verification>>>,
    /// One computation of the figures at a time.
    pub refreshing: tokio::sync::Mutex<()>,
    pub verifying: AtomicBool,
}

impl DashboardCache {
    pub fn current(&self) -> Option<Arc<Figures>> {
        self.figures.lock().ok().and_then(|f| f.clone())
    }

    pub fn keep(&self, figures: Arc<Figures>) {
        if let Ok(mut slot) = self.figures.lock() {
            *slot = Some(figures);
        }
    }

    pub fn verification(&self) -> Option<Arc<Verification>> {
        self.verification.lock().ok().and_then(|v| v.clone())
    }

    pub fn keep_verification(&self, verification: Arc<Verification>) {
        if let Ok(mut slot) = self.verification.lock() {
            *slot = Some(verification);
        }
    }
}
