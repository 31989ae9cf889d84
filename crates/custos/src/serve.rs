//! `custos serve` and `custos token`: configuration, the log, and start-up around custos-http.
//!
//! Settings come from a TOML file (`--config`), then `CUSTOS_*` environment variables, then
//! flags; each later source overrides the earlier.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use custos_core::{AccountId, Duration, Policy, Timestamp};
use custos_http::{AppState, Clock, Role};
use custos_store::{Location, Store};
use serde::Deserialize;

use crate::cli::{Failure, StoreArgs, print};

/// A line on stdout for the person or script that started the server. A reader that has gone
/// away (a closed pipe) must not stop the server, so a failed write is let go.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The data folder [default: custos-data].
    #[arg(long, env = "CUSTOS_DATA")]
    data: Option<PathBuf>,
    /// A PostgreSQL URL; SQLite in the data folder when absent.
    #[arg(long, env = "CUSTOS_DATABASE")]
    database: Option<String>,
    /// The folder of the store's keys [default: DATA/keys]; every instance of one store must
    /// be given the same keys (`CUSTOS_SIGNING_KEY`, `CUSTOS_PSEUDONYM_KEY`,
    /// `CUSTOS_EXPORT_KEY`, in hex, override its files).
    #[arg(long, env = "CUSTOS_KEYS")]
    keys: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]. Loopback unless you say otherwise.
    #[arg(long, env = "CUSTOS_LISTEN")]
    listen: Option<String>,
    /// A TOML file with any of: data, database, keys, listen, sweep_every, export_root,
    /// max_gate_lag, log_format, log_level.
    #[arg(long, env = "CUSTOS_CONFIG")]
    config: Option<PathBuf>,
    /// `manual` makes the clock settable through `PUT /v1/admin/clock` (tests only).
    #[arg(long, value_enum, default_value = "system")]
    clock: ClockMode,
    /// With `--clock manual`: the time to start at (RFC 3339).
    #[arg(long)]
    now: Option<String>,
    /// How often to run the retention sweep: e.g. `30m`, `1h`, `1d`, or `off` [default: 1h].
    #[arg(long, env = "CUSTOS_SWEEP_EVERY")]
    sweep_every: Option<String>,
    /// The configured output location of training exports: none is written outside it
    /// [default: DATA/exports].
    #[arg(long, env = "CUSTOS_EXPORT_ROOT")]
    export_root: Option<PathBuf>,
    /// Start on a fresh folder of demo data (`--data`, which must be empty, or a new temporary
    /// folder), and print a token for each role.
    #[arg(long)]
    demo: bool,
    /// `/readyz` fails while this instance's gate index is further behind the store than
    /// this, e.g. `500ms` or `5s` [default: 5s].
    #[arg(long, env = "CUSTOS_MAX_GATE_LAG")]
    max_gate_lag: Option<String>,
    /// How the log on stderr is written: `human` (one readable line an event) or `json` (one
    /// JSON object a line) [default: human].
    #[arg(long, env = "CUSTOS_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// The least severe events logged: `error`, `warn`, `info` or `debug` (every request)
    /// [default: info].
    #[arg(long, env = "CUSTOS_LOG_LEVEL", value_enum)]
    log_level: Option<LogLevel>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// Sends the service's log to stderr, one event a line. A request's events name it by its id,
/// method and route template; no event carries a token, a body or a path (paths hold ids).
fn start_logging(format: LogFormat, level: LogLevel) {
    let level = match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    // A second call (tests run several servers in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClockMode {
    System,
    Manual,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data: Option<PathBuf>,
    database: Option<String>,
    keys: Option<PathBuf>,
    listen: Option<String>,
    sweep_every: Option<String>,
    export_root: Option<PathBuf>,
    max_gate_lag: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<LogLevel>,
}

/// `30s`, `15m`, `1h`, `1d`, or `off` (no scheduled sweeps).
fn parse_interval(text: &str) -> anyhow::Result<Option<std::time::Duration>> {
    if text == "off" {
        return Ok(None);
    }
    parse_span(text, "sweep interval", "30m, 1h or 1d, or `off`").map(Some)
}

/// A span of time written with its unit: `250ms`, `30s`, `15m`, `1h`, `1d`; more than zero.
fn parse_span(text: &str, what: &str, like: &str) -> anyhow::Result<std::time::Duration> {
    let wrong = || anyhow::anyhow!("{what} `{text}`: write it like {like}");
    let (count, millis) = [
        ("ms", 1),
        ("s", 1000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ]
    .iter()
    .find_map(|(unit, millis)| text.strip_suffix(unit).map(|count| (count, *millis)))
    .ok_or_else(wrong)?;
    let count: u64 = count.parse().ok().filter(|n| *n > 0).ok_or_else(wrong)?;
    Ok(std::time::Duration::from_millis(
        count.saturating_mul(millis),
    ))
}

fn read_config(path: &Path) -> anyhow::Result<ConfigFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = args
        .config
        .as_deref()
        .map(read_config)
        .transpose()?
        .unwrap_or_default();
    start_logging(
        args.log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Human),
        args.log_level.or(file.log_level).unwrap_or(LogLevel::Info),
    );
    let data = match (args.data.or(file.data), args.demo) {
        (Some(data), _) => data,
        (None, false) => PathBuf::from("custos-data"),
        (None, true) => tempfile::Builder::new()
            .prefix("custos-demo-")
            .tempdir()?
            .keep(),
    };
    let database = args.database.or(file.database);
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| custos_http::DEFAULT_LISTEN.to_owned());
    let address = custos_http::parse_listen(&listen).map_err(anyhow::Error::msg)?;
    let sweep_every = parse_interval(
        args.sweep_every
            .or(file.sweep_every)
            .as_deref()
            .unwrap_or("1h"),
    )?;
    let max_gate_lag = args
        .max_gate_lag
        .or(file.max_gate_lag)
        .map(|text| parse_span(&text, "--max-gate-lag", "500ms or 5s"))
        .transpose()?;
    let clock = match (args.clock, args.now) {
        (ClockMode::System, None) => Clock::System,
        (ClockMode::System, Some(_)) => anyhow::bail!("--now needs --clock manual"),
        (ClockMode::Manual, now) => {
            let start = now
                .map(|t| Timestamp::parse(&t))
                .transpose()?
                .unwrap_or_else(custos_http::system_now);
            Clock::Manual(std::sync::Mutex::new(start))
        }
    };
    if args.demo && std::fs::read_dir(&data).is_ok_and(|mut entries| entries.next().is_some()) {
        anyhow::bail!(
            "--demo needs a fresh folder, and {} is not empty",
            data.display()
        );
    }
    let keys = crate::cli::key_source(&data, args.keys.or(file.keys).as_deref());
    let store = Store::open_with(
        &Location::new(data.clone(), database),
        Policy::bundled(),
        &keys,
        true,
    )?;
    let demo = args.demo;
    if demo {
        fill_demo(&store, &data, clock.now())?;
    }
    let exports = custos_http::ExportPlace {
        data: data.clone(),
        root: args.export_root.clone().or(file.export_root),
    };
    let mut state = AppState::open(Arc::new(store), clock, exports)?;
    if let Some(limit) = max_gate_lag {
        state.max_gate_lag = limit;
    }
    let state = Arc::new(state);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // The store is dropped only after the runtime, outside it: closing a PostgreSQL connection
    // blocks, which panics on a runtime thread.
    let keep = Arc::clone(&state);
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("listening on {address}"))?;
        let bound = listener.local_addr()?;
        // The first line on stdout is the address: scripts and tests read it.
        say!(
            "custos: serving http://{bound} (data in {}; the gate index loads in the background)",
            data.display()
        );
        if demo {
            print_pages(bound);
        }
        tracing::info!(address = %bound, "serving");
        custos_http::serve(state, listener, custos_http::shutdown_signal(), sweep_every).await?;
        Ok::<(), anyhow::Error>(())
    });
    drop(runtime);
    drop(keep);
    served?;
    tracing::info!("stopped; every acknowledged write is committed");
    Ok(())
}

/// The pages a person trying the demo can open, each with the token it needs.
fn print_pages(bound: std::net::SocketAddr) {
    say!("custos demo pages (sign in with a token printed above):");
    for (what, path) in [
        ("sign in", "/signin"),
        ("sign up (a new account, with its choice)", "/signup"),
        ("privacy settings (user token)", "/privacy"),
        ("the training notice (user token)", "/notice"),
        ("operator dashboard (admin or auditor token)", "/dashboard"),
    ] {
        say!("  {what}: http://{bound}{path}");
    }
}

/// Demo data and one token per role, printed for the person trying custos.
fn fill_demo(store: &Store, data: &Path, now: Timestamp) -> anyhow::Result<()> {
    let report = crate::demo::run(store, 1000, 5000, now, 2025)?;
    say!(
        "custos demo: {} accounts and {} conversations ({} events) in {}",
        report.accounts,
        report.conversations,
        report.events,
        data.display()
    );
    let user = AccountId::parse("demo-00000000")?;
    for role in Role::ALL {
        let account = (role == Role::User).then_some(&user);
        let token = store.create_token(role.as_str(), account, now, None)?;
        let whose = if role == Role::User {
            format!(" (account {user})")
        } else {
            String::new()
        };
        say!("  {:<8} token{whose}: {token}", role.as_str());
    }
    say!(
        "  try: curl -H \"Authorization: Bearer <service token>\" http://<address>/v1/accounts/{user}/gate"
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// service, user, trainer, auditor or admin.
    #[arg(long)]
    role: String,
    /// The account a `user` token is bound to (only for `user`).
    #[arg(long)]
    account: Option<String>,
    /// How long the token lives, e.g. `90d` or `1y` [default: no expiry].
    #[arg(long)]
    ttl: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it on one line; only its hash is stored.
    Create(TokenArgs),
    /// Revoke a token; a running server stops accepting it within 5 seconds.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// The token to revoke.
        token: String,
    },
}

pub fn token(command: TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Create(args) => {
            let token = create_token(args).map_err(Failure::invalid_input)?;
            print(&format!("{token}\n"))
        }
        TokenCommand::Revoke { store, token } => {
            let opened = store.open_existing()?;
            let now = custos_http::system_now();
            if opened
                .revoke_token(&token, now)
                .map_err(Failure::operational)?
            {
                print("revoked\n")
            } else {
                Err(Failure::invalid_input(anyhow::anyhow!(
                    "no such active token"
                )))
            }
        }
    }
}

fn create_token(args: TokenArgs) -> anyhow::Result<String> {
    let role = Role::parse(&args.role).ok_or_else(|| {
        anyhow::anyhow!(
            "--role `{}` is not one of service, user, trainer, auditor, admin",
            args.role
        )
    })?;
    let account = match (role, args.account) {
        (Role::User, Some(account)) => Some(AccountId::parse(&account)?),
        (Role::User, None) => anyhow::bail!("a user token needs --account"),
        (_, Some(_)) => anyhow::bail!("--account goes only with --role user"),
        (_, None) => None,
    };
    let now = custos_http::system_now();
    let expires = args
        .ttl
        .map(|ttl| Duration::parse(&ttl).map(|d| now.saturating_add(d)))
        .transpose()?;
    let store = args.store.open().map_err(|f| f.error)?;
    Ok(store.create_token(role.as_str(), account.as_ref(), now, expires)?)
}
