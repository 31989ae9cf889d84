//! Work that outlives the request that started it, as the service remembers it: training
//! exports running on threads of their own (sweeps are recorded in the store, for every
//! instance).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use custos_export::Progress;

/// Where exports go: the data folder (records and the key secret) and the configured output
/// location, outside which nothing is written (R9).
#[derive(Debug, Clone)]
pub struct ExportPlace {
    pub data: PathBuf,
    pub root: Option<PathBuf>,
}

impl ExportPlace {
    /// The folder exports are written under.
    pub fn root(&self) -> PathBuf {
        self.root
            .clone()
            .unwrap_or_else(|| self.data.join(custos_export::DEFAULT_ROOT))
    }
}

/// Exports started by this process that have not finished well: running, or failed.
#[derive(Debug, Default)]
pub struct Running {
    exports: Mutex<HashMap<String, Run>>,
    /// Set at shutdown: running exports stop between two chunks and remove what they wrote.
    pub stop: AtomicBool,
    /// The export threads, so that shutdown can wait for them to end cleanly.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, Clone)]
pub enum Run {
    Running(Progress),
    Failed(String),
}

impl Running {
    pub fn set(&self, id: &str, run: Option<Run>) {
        if let Ok(mut exports) = self.exports.lock() {
            match run {
                Some(run) => exports.insert(id.to_owned(), run),
                None => exports.remove(id),
            };
        }
    }

    pub fn get(&self, id: &str) -> Option<Run> {
        self.exports.lock().ok()?.get(id).cloned()
    }

    /// Keeps an export's thread, so that shutdown can wait for it.
    pub fn track(&self, thread: std::thread::JoinHandle<()>) {
        if let Ok(mut threads) = self.threads.lock() {
            // Finished ones are let go of here, so the list stays as long as what runs.
            threads.retain(|t| !t.is_finished());
            threads.push(thread);
        }
    }

    /// Stops every running export and waits until each has ended: none leaves partial files
    /// behind, and each stays recorded as incomplete. Called once the server stops serving.
    pub fn stop_all(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = self
            .threads
            .lock()
            .map(|mut threads| std::mem::take(&mut *threads))
            .unwrap_or_default();
        for thread in threads {
            let _ = thread.join();
        }
    }
}
