//! `custos export`: a training snapshot from the command line, its revocations, and checking a
//! received export.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Subcommand};
use custos_core::Timestamp;
use custos_export::{Exports, Format, Request};
use custos_store::Store;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::cli::{Failure, StoreArgs, export_failure, parse_now, print};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The cutoff T (RFC 3339): what users allowed as of T, and still allow now.
    #[arg(long)]
    pub cutoff: Option<String>,
    /// The folder to write: new or empty, inside the export root.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_parser = ["parquet", "jsonl"], default_value = "parquet")]
    pub format: String,
    /// Start a new data file once one holds this many bytes (at least 1).
    #[arg(long, default_value_t = custos_export::DEFAULT_MAX_FILE_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_file_bytes: u64,
    /// Only `model_training` exists (R9); any other purpose is refused.
    #[arg(long, default_value = custos_core::Purpose::ModelTraining.as_str())]
    pub purpose: String,
    /// The configured output location: no export is written outside it [default: DATA/exports].
    #[arg(long, env = "CUSTOS_EXPORT_ROOT")]
    pub export_root: Option<PathBuf>,
    /// The snapshot's present (RFC 3339) [default: the wall clock].
    #[arg(long)]
    pub now: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// List the rows of an earlier snapshot that may no longer be used, and why (JSON lines).
    Revocations {
        #[command(flatten)]
        store: StoreArgs,
        /// The snapshot id from its manifest.
        #[arg(long)]
        snapshot: String,
        /// As of this time (RFC 3339) [default: the wall clock].
        #[arg(long)]
        now: Option<String>,
    },
    /// Check a received export: the manifest's signature and every file's SHA-256.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// The export's folder.
        folder: PathBuf,
        /// The trusted public key (hex) [default: the data folder's ledger-signing.pub].
        #[arg(long)]
        public_key: Option<String>,
    },
}

/// mimalloc's `mi_option_purge_delay` (option 15 of its v2, which the crate builds; the
/// crate names 14 and 16 but not 15).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc not to hand freed pages back to the OS. An export frees and allocates the
/// same few hundred MiB over and over on three threads; returning the pages made the kernel
/// zero them again on each reuse, 3% of an export's time (BENCHMARKS.md). The command ends with
/// the export, so its memory is only held as long as it runs; `serve` keeps the default.
#[allow(
    unsafe_code,
    reason = "the one call that sets an allocator option; it takes two integers"
)]
fn keep_freed_memory_for_reuse() {
    // SAFETY: `mi_option_set` takes an option number and a value, and touches no memory of
    // ours; -1 means "never purge". An unknown option number is ignored by mimalloc.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// A flag that Ctrl-C or SIGTERM sets, so that an interrupted export stops between two chunks
/// and removes what it wrote, rather than dying mid-file and leaving partial files. Returns
/// once the handlers are in place. Without them (no signal support), the flag is never set and
/// a signal ends the process as usual.
fn stop_on_interrupt() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready, installed) = std::sync::mpsc::channel();
    let flag = Arc::clone(&stop);
    // The thread lives as long as the process: it waits for a signal that may never come.
    let spawned = std::thread::Builder::new()
        .name("export-signals".into())
        .spawn(move || {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let (Ok(mut interrupt), Ok(mut terminate)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                let _ = ready.send(());
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                flag.store(true, Ordering::Relaxed);
            });
        });
    if spawned.is_ok() {
        // An error means the thread gave up without handlers; nothing then waits for it.
        let _ = installed.recv();
    }
    stop
}

/// `custos export` and its subcommands.
pub fn command(
    command: Option<ExportCommand>,
    store: StoreArgs,
    args: ExportArgs,
) -> Result<(), Failure> {
    match command {
        None => export(&store, &args),
        Some(ExportCommand::Revocations {
            store,
            snapshot,
            now,
        }) => revocations(&store, &snapshot, now),
        Some(ExportCommand::Verify {
            store,
            folder,
            public_key,
        }) => verify(&store, &folder, public_key),
    }
}

fn export(store: &StoreArgs, args: &ExportArgs) -> Result<(), Failure> {
    let (Some(cutoff), Some(_)) = (&args.cutoff, &args.out) else {
        return Err(Failure::invalid_input(anyhow::anyhow!(
            "`custos export` needs --cutoff T and --out DIR"
        )));
    };
    let cutoff = Timestamp::parse(cutoff)
        .map_err(|e| Failure::invalid_input(anyhow::anyhow!("--cutoff: {e}")))?;
    let now = parse_now(args.now.clone())?;
    let opened = store.open_existing()?;
    let started = std::time::Instant::now();
    let manifest = run(&opened, &store.data, args, cutoff, now).map_err(export_failure)?;
    print(&format!(
        "{} in {:.1} s\n",
        describe(&manifest),
        started.elapsed().as_secs_f64()
    ))
}

fn revocations(store: &StoreArgs, snapshot: &str, now: Option<String>) -> Result<(), Failure> {
    let now = parse_now(now)?;
    let opened = store.open_existing()?;
    let exports = Exports::new(&opened, &store.data, None);
    let revocations = exports.revocations(snapshot, now).map_err(export_failure)?;
    let mut out = String::new();
    for (key, reason) in &revocations.revoked {
        out.push_str(&format!(
            "{{\"conversation_key\":\"{key}\",\"reason\":\"{}\"}}\n",
            reason.as_str()
        ));
    }
    print(&out)?;
    eprintln!(
        "{} of {} rows of {snapshot} revoked as of {now}",
        revocations.revoked.len(),
        revocations.rows
    );
    Ok(())
}

fn verify(store: &StoreArgs, folder: &Path, public_key: Option<String>) -> Result<(), Failure> {
    let public_key = match public_key {
        Some(key) => key,
        None => signer_of(&store.open_existing()?, folder)?,
    };
    let verified = custos_export::verify(folder, &public_key)
        .map_err(|e| Failure::operational(anyhow::anyhow!("export verification FAILED: {e}")))?;
    print(&format!(
        "{}: signature valid, {} file(s) and {} rows match the manifest\n",
        verified.snapshot, verified.files, verified.rows
    ))
}

/// The public half of the store's signing key that signed the export in `folder`: the one its
/// signature names, or (an export signed before keys had ids) the store's first.
fn signer_of(store: &Store, folder: &Path) -> Result<String, Failure> {
    let path = folder.join(custos_export::SIGNATURE);
    let named = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|signature| signature.get("key_id")?.as_str().map(str::to_owned));
    let recorded = store.recorded_keys().map_err(Failure::operational)?;
    let mut signing = recorded
        .iter()
        .filter(|k| k.purpose == custos_store::Purpose::Signing);
    let key = match &named {
        Some(id) => signing.find(|k| k.id == *id),
        None => signing.find(|k| k.previous.is_none()),
    };
    key.and_then(|k| k.public)
        .map(|public| custos_core::policy::hex(&public))
        .ok_or_else(|| {
            Failure::operational(anyhow::anyhow!(
                "export verification FAILED: it names signing key {}, which is not one of this store's (pass --public-key to check it against another)",
                named.as_deref().unwrap_or("(none)")
            ))
        })
}

/// Runs an export with a progress bar on stderr; returns the manifest. Ctrl-C or SIGTERM stops
/// it cleanly ([`custos_export::ExportError::Stopped`]).
fn run(
    store: &Store,
    data: &Path,
    args: &ExportArgs,
    cutoff: Timestamp,
    now: Timestamp,
) -> Result<Value, custos_export::ExportError> {
    keep_freed_memory_for_reuse();
    let stop = stop_on_interrupt();
    let exports = Exports::new(store, data, args.export_root.as_deref());
    let request = Request {
        purpose: args.purpose.clone(),
        cutoff,
        format: Format::parse(&args.format).unwrap_or(Format::Parquet),
        out: args.out.clone(),
        max_file_bytes: args.max_file_bytes,
    };
    let prepared = exports.prepare(&request, now)?;
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} export [{bar:40}] {pos}/{len} conversations, {msg} ({eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let manifest = exports.run_until(
        &prepared,
        &mut |progress| {
            bar.set_length(progress.total.max(1));
            bar.set_position(progress.scanned);
            bar.set_message(format!("{} included", progress.included));
        },
        &stop,
    );
    bar.finish_and_clear();
    manifest
}

/// One line saying what an export holds.
fn describe(manifest: &Value) -> String {
    let conversations = &manifest["conversations"];
    let excluded: Vec<String> = conversations["excluded"]
        .as_object()
        .map(|m| m.iter().map(|(r, n)| format!("{n} {r}")).collect())
        .unwrap_or_default();
    format!(
        "snapshot {}: {} of {} conversations included ({} messages, {} feedback) in {} file(s); excluded: {}",
        manifest["snapshot_id"].as_str().unwrap_or(""),
        conversations["included"],
        conversations["total"],
        manifest
            .pointer("/content/messages")
            .unwrap_or(&Value::Null),
        manifest
            .pointer("/content/feedback")
            .unwrap_or(&Value::Null),
        manifest["files"].as_array().map_or(0, Vec::len),
        if excluded.is_empty() {
            "none".to_owned()
        } else {
            excluded.join(", ")
        },
    )
}
