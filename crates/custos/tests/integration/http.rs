//! The HTTP service, started as the real binary on port 0 with a temporary data folder and a
//! manual clock, and spoken to over a plain TCP socket.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::{assert_no_partial_files, custos, stderr};

/// A running `custos serve` and the tokens made for it.
pub struct Server {
    child: Child,
    pub address: String,
    pub tokens: std::collections::HashMap<&'static str, String>,
    database: Option<FreshDatabase>,
    _folder: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.database.take());
    }
}

/// With `CUSTOS_TEST_HTTP_DATABASE_URL` (libpq key=value form) set, every server of these tests
/// runs on a fresh PostgreSQL database of its own instead of SQLite; CI runs them both ways.
const POSTGRES_URL: &str = "CUSTOS_TEST_HTTP_DATABASE_URL";

/// A PostgreSQL database made for one server (or one fleet of them) and dropped with it.
pub struct FreshDatabase {
    base: String,
    name: String,
}

impl FreshDatabase {
    fn create() -> Option<FreshDatabase> {
        Some(FreshDatabase::on(&std::env::var(POSTGRES_URL).ok()?))
    }

    /// A new database on the server `base` (libpq key=value form) names.
    pub fn on(base: &str) -> FreshDatabase {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let base = base.to_owned();
        let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("custos_http_{}_{number}", std::process::id());
        let mut admin = postgres::Client::connect(&base, postgres::NoTls).unwrap_or_else(|e| {
            panic!("{POSTGRES_URL} is set but PostgreSQL can't be reached: {e}")
        });
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        FreshDatabase { base, name }
    }

    pub fn url(&self) -> String {
        format!("{} dbname={}", self.base, self.name)
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.base, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl Server {
    /// Starts a server whose clock reads `now`, with one token per role; `user` is bound to
    /// account `u1` and `other-user` to `u2`.
    pub fn start(now: &str) -> Server {
        Server::start_with(now, &[], None)
    }

    /// The same, with more `serve` arguments, and its log (stderr) written to `log`.
    pub fn start_with(now: &str, serve_args: &[&str], log: Option<&std::path::Path>) -> Server {
        let folder = tempfile::tempdir().unwrap();
        let data = folder.path().join("data");
        let database = FreshDatabase::create();
        let database_args: Vec<String> = database
            .iter()
            .flat_map(|d| ["--database".to_owned(), d.url()])
            .collect();
        let mut tokens = std::collections::HashMap::new();
        for (name, role, account) in [
            ("service", "service", None),
            ("trainer", "trainer", None),
            ("auditor", "auditor", None),
            ("admin", "admin", None),
            ("user", "user", Some("u1")),
            ("other-user", "user", Some("u2")),
        ] {
            let mut command = custos();
            command
                .args(["token", "create", "--data"])
                .arg(&data)
                .args(["--role", role])
                .args(&database_args);
            if let Some(account) = account {
                command.args(["--account", account]);
            }
            let output = command.output().unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            tokens.insert(
                name,
                String::from_utf8(output.stdout).unwrap().trim().to_owned(),
            );
        }
        let mut args = database_args;
        args.extend(serve_args.iter().map(|a| (*a).to_owned()));
        let (child, address) = spawn_serve(&data, &args, now, log);
        Server {
            child,
            address,
            tokens,
            database,
            _folder: folder,
        }
    }

    /// Sends one request; `token` names an entry of `tokens`, or is used as is if unknown.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        let (status, content_type, payload) = self.call_raw(method, path, token, body);
        Reply {
            status,
            content_type,
            body: serde_json::from_str(&payload).unwrap_or(Value::Null),
        }
    }

    /// The text of an unauthenticated GET (e.g. `/metrics`).
    pub fn call_text(&self, path: &str) -> String {
        self.call_raw("GET", path, None, None).2
    }

    /// The data folder this server runs on.
    pub fn data(&self) -> std::path::PathBuf {
        self._folder.path().join("data")
    }

    fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String, String) {
        let authorization = token.map(|token| {
            let secret = self.tokens.get(token).map_or(token, String::as_str);
            format!("Bearer {secret}")
        });
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        let reply = crate::support::http(&self.address, method, path, &headers, body);
        (reply.status, reply.header("content-type"), reply.body)
    }

    /// Stops the server (SIGKILL) and starts a new one on the same store, its clock at `now`.
    pub fn restart(&mut self, now: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let database_args: Vec<String> = self
            .database
            .iter()
            .flat_map(|d| ["--database".to_owned(), d.url()])
            .collect();
        let data = self._folder.path().join("data");
        (self.child, self.address) = spawn_serve(&data, &database_args, now, None);
    }

    /// Counts rows with `sql` in this server's database, SQLite or PostgreSQL.
    pub fn count(&self, sql: &str) -> i64 {
        match &self.database {
            Some(database) => postgres::Client::connect(&database.url(), postgres::NoTls)
                .unwrap()
                .query_one(sql, &[])
                .unwrap()
                .get(0),
            None => rusqlite::Connection::open(
                self._folder
                    .path()
                    .join("data")
                    .join(custos_store::SQLITE_FILE),
            )
            .unwrap()
            .query_row(sql, [], |row| row.get(0))
            .unwrap(),
        }
    }

    /// Runs `sql` on this server's database behind its back, SQLite or PostgreSQL (to damage
    /// it on purpose).
    pub fn execute(&self, sql: &str) {
        match &self.database {
            Some(database) => {
                postgres::Client::connect(&database.url(), postgres::NoTls)
                    .unwrap()
                    .batch_execute(sql)
                    .unwrap();
            }
            None => {
                let path = self
                    ._folder
                    .path()
                    .join("data")
                    .join(custos_store::SQLITE_FILE);
                rusqlite::Connection::open(path)
                    .unwrap()
                    .execute_batch(sql)
                    .unwrap();
            }
        }
    }

    /// The arguments that point a `custos` command at this server's store.
    pub fn store_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--data".into(), self._folder.path().join("data").into()];
        if let Some(database) = &self.database {
            args.extend(["--database".into(), database.url().into()]);
        }
        args
    }

    pub fn set_clock(&self, now: &str) {
        let reply = self.call(
            "PUT",
            "/v1/admin/clock",
            Some("admin"),
            Some(&json!({"now": now}).to_string()),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

/// Starts `custos serve` on a manual clock and returns it with the address it serves.
pub fn spawn_serve(
    data: &std::path::Path,
    database_args: &[String],
    now: &str,
    log: Option<&std::path::Path>,
) -> (Child, String) {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    let mut child = custos()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--clock",
            "manual",
            "--now",
            now,
            "--data",
        ])
        .arg(data)
        .args(database_args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in `{line}`"))
        .to_owned();
    (child, address)
}

pub const NOTICE: &str = "consumer-terms-2025";

/// Writer `writer`'s write of round `trial` in the concurrency tests: a choice for every third
/// writer, else a move to a plan (consumer and business plans in turn), on one of `accounts`.
pub fn mixed_write(
    accounts: &[&str],
    writer: usize,
    trial: usize,
) -> (&'static str, String, Value) {
    const PLANS: [&str; 6] = ["free", "api", "team", "max", "pro", "enterprise"];
    let account = accounts[writer % accounts.len()];
    if writer % 3 == 0 {
        let choice =
            json!({"allowed": (writer + trial) % 2 == 0, "channel": "settings", "notice": NOTICE});
        (
            "PUT",
            format!("/v1/accounts/{account}/training-preference"),
            choice,
        )
    } else {
        let plan = PLANS[(writer * 7 + trial) % PLANS.len()];
        (
            "PATCH",
            format!("/v1/accounts/{account}"),
            json!({"plan": plan}),
        )
    }
}

/// The account's ledger holds `entries` entries (nothing refused was recorded).
pub fn assert_ledger_length(server: &Server, account: &str, entries: usize) {
    let path = format!("/v1/accounts/{account}/training-preference/history");
    let history = server.call("GET", &path, Some("service"), None);
    assert_eq!(
        history.body["entries"].as_array().map(Vec::len),
        Some(entries),
        "{}",
        history.body
    );
}

pub fn signup(server: &Server, id: &str, plan: &str, allowed: Option<bool>) -> Reply {
    let mut body = json!({"id": id, "plan": plan});
    if let Some(allowed) = allowed {
        body["choice"] = json!({"allowed": allowed, "channel": "signup", "notice": NOTICE});
    }
    server.call(
        "POST",
        "/v1/accounts",
        Some("service"),
        Some(&body.to_string()),
    )
}

/// Records a message from `account` in `conversation` at `at`, through the service API.
pub fn message(
    server: &Server,
    id: &str,
    account: &str,
    conversation: &str,
    surface: &str,
    at: &str,
) {
    let event = json!({"events": [{"id": id, "type": "message", "at": at, "account": account,
        "conversation": conversation, "surface": surface, "role": "user", "text": "hello"}]});
    let reply = server.call(
        "POST",
        "/v1/events",
        Some("service"),
        Some(&event.to_string()),
    );
    assert_eq!(
        reply.body["results"][0]["status"], "accepted",
        "{}",
        reply.body
    );
}

#[test]
fn the_gate_follows_the_deadline_and_choices_as_the_scenario_runner_does() {
    // deadline-and-signup.json, over HTTP: the same answers as `custos scenario run`.
    let server = Server::start("2025-07-01T00:00:00Z");
    assert_eq!(signup(&server, "a", "pro", None).status, 201);
    assert_eq!(signup(&server, "b", "team", None).status, 201);
    let gate = |id: &str| {
        let reply = server.call(
            "GET",
            &format!("/v1/accounts/{id}/gate"),
            Some("service"),
            None,
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        (
            reply.body["decision"].as_str().unwrap().to_owned(),
            reply.body["reason"].as_str().unwrap().to_owned(),
        )
    };
    server.set_clock("2025-09-28T12:00:00Z");
    assert_eq!(gate("a"), ("prompt".into(), "choice_pending".into()));
    server.set_clock("2025-09-29T00:00:00Z");
    assert_eq!(gate("a"), ("block".into(), "choice_required".into()));
    assert_eq!(gate("b"), ("allow".into(), "not_applicable".into()));
    server.set_clock("2025-09-30T00:00:00Z");
    let choice = json!({"allowed": false, "channel": "notice", "notice": NOTICE}).to_string();
    let reply = server.call(
        "PUT",
        "/v1/accounts/a/training-preference",
        Some("service"),
        Some(&choice),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["state"], "declined");
    assert_eq!(reply.body["receipt"].as_str().map(str::len), Some(64));
    assert_eq!(gate("a"), ("allow".into(), "decided".into()));
    server.set_clock("2025-10-01T00:00:00Z");
    let reply = signup(&server, "n", "max", None);
    assert_eq!(
        (reply.status, reply.body["type"].as_str()),
        (422, Some("choice-required"))
    );
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(signup(&server, "c", "free", Some(true)).status, 201);
    assert_eq!(gate("c"), ("allow".into(), "decided".into()));
    let reply = server.call("GET", "/v1/accounts/n/gate", Some("service"), None);
    assert_eq!(
        (reply.status, reply.body["type"].as_str()),
        (404, Some("unknown-account"))
    );
}

/// Every route × every kind of caller, each with the status it must get.
#[test]
fn every_route_checks_its_role() {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    assert_eq!(signup(&server, "u2", "pro", Some(true)).status, 201);
    let counter = std::cell::Cell::new(0);
    let fresh = |prefix: &str| {
        counter.set(counter.get() + 1);
        format!("{prefix}{}", counter.get())
    };
    let message = |conversation: &str| {
        message(
            &server,
            &fresh("e"),
            "u1",
            conversation,
            "chat",
            "2025-10-01T00:00:00Z",
        );
    };
    let choice = json!({"allowed": true, "channel": "settings", "notice": NOTICE}).to_string();
    let finished_export = export_and_wait(&server, json!({"purpose": "model_training"}));

    // (route, who may call it); "user" means u1's own token, "other-user" is u2's.
    let callers = [
        "none",
        "service",
        "user",
        "other-user",
        "trainer",
        "auditor",
        "admin",
    ];
    type Route<'a> = (
        &'a str,
        Box<dyn Fn() -> (String, Option<String>) + 'a>,
        &'a [&'a str],
    );
    let routes: Vec<Route<'_>> = vec![
        (
            "POST /v1/accounts",
            Box::new(|| {
                (
                    "/v1/accounts".into(),
                    Some(json!({"id": fresh("n"), "plan": "team"}).to_string()),
                )
            }),
            &["service", "admin"],
        ),
        (
            "GET /v1/accounts/{id}",
            Box::new(|| ("/v1/accounts/u1".into(), None)),
            &["service", "user", "admin"],
        ),
        (
            "PATCH /v1/accounts/{id}",
            Box::new(|| {
                (
                    "/v1/accounts/u1".into(),
                    Some(json!({"plan": "pro"}).to_string()),
                )
            }),
            &["service", "admin"],
        ),
        (
            "GET /v1/accounts/{id}/gate",
            Box::new(|| ("/v1/accounts/u1/gate".into(), None)),
            &["service", "user", "admin"],
        ),
        (
            "PUT /v1/accounts/{id}/training-preference",
            Box::new(|| {
                (
                    "/v1/accounts/u1/training-preference".into(),
                    Some(choice.clone()),
                )
            }),
            &["service", "user", "admin"],
        ),
        (
            "GET /v1/accounts/{id}/training-preference/history",
            Box::new(|| ("/v1/accounts/u1/training-preference/history".into(), None)),
            &["service", "user", "auditor", "admin"],
        ),
        (
            "POST /v1/events",
            Box::new(|| ("/v1/events".into(), Some(json!({"events": []}).to_string()))),
            &["service", "admin"],
        ),
        (
            "GET /v1/accounts/{id}/conversations",
            Box::new(|| ("/v1/accounts/u1/conversations".into(), None)),
            &["service", "user", "admin"],
        ),
        (
            "DELETE /v1/conversations/{id}",
            Box::new(|| {
                let id = fresh("c");
                message(&id);
                (format!("/v1/conversations/{id}"), None)
            }),
            &["service", "user", "admin"],
        ),
        (
            "GET /v1/ledger/verify",
            Box::new(|| ("/v1/ledger/verify".into(), None)),
            &["auditor", "admin"],
        ),
        (
            "GET /v1/accounts/{id}/receipts/{receipt}",
            Box::new(|| {
                (
                    format!("/v1/accounts/u1/receipts/{}", first_receipt(&server)),
                    None,
                )
            }),
            &["user", "auditor", "admin"],
        ),
        (
            "PUT /v1/admin/clock",
            Box::new(|| {
                (
                    "/v1/admin/clock".into(),
                    Some(json!({"now": "2025-10-01T00:00:00Z"}).to_string()),
                )
            }),
            &["admin"],
        ),
        (
            "POST /v1/accounts/{id}/notice-shown",
            Box::new(|| ("/v1/accounts/u1/notice-shown".into(), None)),
            &["service", "user", "admin"],
        ),
        (
            "GET /v1/conversations/{id}",
            Box::new(|| {
                let id = fresh("c");
                message(&id);
                (format!("/v1/conversations/{id}"), None)
            }),
            &["service", "user", "auditor", "admin"],
        ),
        (
            // A fresh account each time, so "user" (u1's token) is never its owner here; a
            // user erasing its own account is shown in its own test.
            "DELETE /v1/accounts/{id}",
            Box::new(|| {
                let id = fresh("gone");
                assert_eq!(signup(&server, &id, "team", None).status, 201);
                (format!("/v1/accounts/{id}"), None)
            }),
            &["admin"],
        ),
        (
            "GET /v1/accounts/{id}/data",
            Box::new(|| ("/v1/accounts/u1/data".into(), None)),
            &["user", "admin"],
        ),
        (
            "GET /v1/reports/retention",
            Box::new(|| ("/v1/reports/retention".into(), None)),
            &["auditor", "admin"],
        ),
        (
            "GET /v1/reports/consent",
            Box::new(|| ("/v1/reports/consent".into(), None)),
            &["auditor", "admin"],
        ),
        (
            "POST /v1/retention/sweeps",
            Box::new(|| ("/v1/retention/sweeps".into(), None)),
            &["admin"],
        ),
        (
            "POST /v1/legal-holds",
            Box::new(|| {
                let body = json!({"id": fresh("h"), "account": "u2", "reason": "litigation"});
                ("/v1/legal-holds".into(), Some(body.to_string()))
            }),
            &["admin"],
        ),
        (
            "GET /v1/legal-holds",
            Box::new(|| ("/v1/legal-holds".into(), None)),
            &["admin"],
        ),
        (
            "DELETE /v1/legal-holds/{id}",
            Box::new(|| {
                let id = fresh("h");
                let body = json!({"id": id, "account": "u2", "reason": "litigation"});
                let reply = server.call(
                    "POST",
                    "/v1/legal-holds",
                    Some("admin"),
                    Some(&body.to_string()),
                );
                assert_eq!(reply.status, 201, "{}", reply.body);
                (format!("/v1/legal-holds/{id}"), None)
            }),
            &["admin"],
        ),
        (
            "GET /v1/exports/preview",
            Box::new(|| ("/v1/exports/preview".into(), None)),
            &["trainer", "admin"],
        ),
        (
            "POST /v1/exports",
            Box::new(|| {
                (
                    "/v1/exports".into(),
                    Some(json!({"purpose": "model_training", "format": "jsonl"}).to_string()),
                )
            }),
            &["trainer", "admin"],
        ),
        (
            "GET /v1/exports",
            Box::new(|| ("/v1/exports".into(), None)),
            &["trainer", "auditor", "admin"],
        ),
        (
            "GET /v1/exports/{id}",
            Box::new(|| (format!("/v1/exports/{finished_export}"), None)),
            &["trainer", "auditor", "admin"],
        ),
        (
            "GET /v1/exports/{id}/revocations",
            Box::new(|| (format!("/v1/exports/{finished_export}/revocations"), None)),
            &["trainer", "admin"],
        ),
        (
            "GET /metrics",
            Box::new(|| ("/metrics".into(), None)),
            &[
                "none",
                "service",
                "user",
                "other-user",
                "trainer",
                "auditor",
                "admin",
            ],
        ),
        (
            "GET /openapi.json",
            Box::new(|| ("/openapi.json".into(), None)),
            &[
                "none",
                "service",
                "user",
                "other-user",
                "trainer",
                "auditor",
                "admin",
            ],
        ),
        (
            "GET /healthz",
            Box::new(|| ("/healthz".into(), None)),
            &[
                "none",
                "service",
                "user",
                "other-user",
                "trainer",
                "auditor",
                "admin",
            ],
        ),
        (
            "GET /readyz",
            Box::new(|| ("/readyz".into(), None)),
            &[
                "none",
                "service",
                "user",
                "other-user",
                "trainer",
                "auditor",
                "admin",
            ],
        ),
    ];
    let document = server.call("GET", "/openapi.json", None, None).body;
    let mut wrong = Vec::new();
    for (name, make, allowed) in &routes {
        let (method, template) = name.split_once(' ').unwrap();
        for caller in callers {
            let (path, body) = make();
            let token = (caller != "none").then_some(caller);
            let reply = server.call(method, &path, token, body.as_deref());
            let expected: &[u16] = if allowed.contains(&caller) {
                &[200, 201, 202, 204]
            } else if caller == "none" {
                &[401]
            } else if caller == "other-user" && name.contains(" /v1/conversations/") {
                &[404] // another account's conversation looks like none at all
            } else {
                &[403]
            };
            if !expected.contains(&reply.status) {
                wrong.push(format!(
                    "{name} as {caller}: {} (wanted {expected:?}) {}",
                    reply.status, reply.body
                ));
            }
            // Every success body matches the schema documented for it.
            let documented = &document["paths"][template][method.to_lowercase()]["responses"]
                [reply.status.to_string()]["content"]["application/json"]["schema"];
            if (200..300).contains(&reply.status) && !documented.is_null() {
                for problem in schema_problems(&reply.body, documented, &document, "body") {
                    wrong.push(format!("{name} as {caller}: {problem}"));
                }
            }
            if reply.status >= 400 && reply.content_type != "application/problem+json" {
                wrong.push(format!(
                    "{name} as {caller}: error without problem+json ({})",
                    reply.content_type
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The matrix covers every operation the service documents, and no other.
    let mut documented: Vec<String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, operations)| {
            operations
                .as_object()
                .unwrap()
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    let mut tested: Vec<String> = routes
        .iter()
        .map(|(name, _, _)| (*name).to_owned())
        .collect();
    documented.sort();
    tested.sort();
    assert_eq!(documented, tested);
    let reply = server.call(
        "GET",
        "/v1/accounts/u1/gate",
        Some("custos_not-a-real-token"),
        None,
    );
    assert_eq!(reply.status, 401);
}

#[test]
fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    let huge = json!({"id": "x", "plan": "pro", "pad": "a".repeat(2 << 20)}).to_string();
    let cases: Vec<(&str, &str, &str, String, u16, &str)> = vec![
        ("service", "POST", "/v1/accounts", "{not json".into(), 400, "invalid-body"),
        ("service", "POST", "/v1/accounts", json!({"id": "x", "plan": "pro", "colour": "blue"}).to_string(), 422, "invalid-body"),
        ("service", "POST", "/v1/accounts", json!({"id": "x", "plan": 7}).to_string(), 422, "invalid-body"),
        ("service", "POST", "/v1/accounts", json!({"id": "x y", "plan": "pro"}).to_string(), 400, "invalid-id"),
        ("service", "POST", "/v1/accounts", json!({"id": "x", "plan": "platinum"}).to_string(), 422, "unknown-plan"),
        ("service", "POST", "/v1/accounts", json!({"id": "u1", "plan": "team"}).to_string(), 409, "account-exists"),
        ("service", "POST", "/v1/accounts", json!({"id": "x", "plan": "pro", "choice": {"allowed": true, "channel": "email", "notice": NOTICE}}).to_string(), 422, "invalid-body"),
        ("service", "POST", "/v1/accounts", json!({"id": "x", "plan": "pro", "choice": {"allowed": true, "channel": "signup", "notice": "old-terms"}}).to_string(), 422, "unknown-notice"),
        ("service", "POST", "/v1/accounts", json!({"id": "x", "plan": "team", "choice": {"allowed": true, "channel": "signup", "notice": NOTICE}}).to_string(), 422, "no-choice-on-business-plan"),
        ("service", "POST", "/v1/accounts", huge, 413, "body-too-large"),
        ("service", "PATCH", "/v1/accounts/u1", json!({"plan": "Pro"}).to_string(), 422, "unknown-plan"),
        ("service", "PATCH", "/v1/accounts/nobody", json!({"plan": "pro"}).to_string(), 404, "unknown-account"),
        ("service", "PUT", "/v1/accounts/u1/training-preference", json!({"allowed": "yes", "channel": "settings", "notice": NOTICE}).to_string(), 422, "invalid-body"),
        ("service", "PUT", "/v1/accounts/u1/training-preference", json!({"allowed": true, "channel": "settings"}).to_string(), 422, "invalid-body"),
        ("service", "POST", "/v1/events", json!({"events": "none"}).to_string(), 422, "invalid-body"),
        ("service", "GET", "/v1/accounts/%20bad/gate", String::new(), 400, "invalid-id"),
        ("service", "GET", "/v1/nothing-here", String::new(), 404, "no-such-route"),
        ("admin", "POST", "/v1/legal-holds", json!({"id": "h1", "reason": "court order"}).to_string(), 422, "invalid-body"),
        ("admin", "POST", "/v1/legal-holds", json!({"id": "h1", "account": "u1", "conversation": "c1", "reason": "court order"}).to_string(), 422, "invalid-body"),
        ("admin", "POST", "/v1/legal-holds", json!({"id": "h1", "account": "u1", "reason": " "}).to_string(), 422, "invalid-body"),
        ("admin", "POST", "/v1/legal-holds", json!({"id": "h 1", "account": "u1", "reason": "court order"}).to_string(), 422, "invalid-body"),
        ("admin", "POST", "/v1/legal-holds", json!({"id": "h1", "account": "nobody", "reason": "court order"}).to_string(), 404, "unknown-account"),
        ("admin", "POST", "/v1/legal-holds", json!({"id": "h1", "account": "u1", "reason": "court order", "until": "forever"}).to_string(), 422, "invalid-body"),
        ("admin", "DELETE", "/v1/legal-holds/never-placed", String::new(), 409, "hold-not-active"),
        ("admin", "PUT", "/v1/admin/clock", json!({"now": "yesterday"}).to_string(), 422, "invalid-body"),
        ("auditor", "GET", "/v1/conversations/never-seen", String::new(), 404, "unknown-conversation"),
        ("service", "DELETE", "/v1/accounts/u1", String::new(), 403, "forbidden"),
    ];
    for (token, method, path, body, status, kind) in cases {
        let reply = server.call(
            method,
            path,
            Some(token),
            (!body.is_empty()).then_some(body.as_str()),
        );
        assert_eq!(
            (reply.status, reply.body["type"].as_str()),
            (status, Some(kind)),
            "{method} {path} {}: {}",
            body.chars().take(80).collect::<String>(),
            reply.body
        );
        assert_eq!(
            reply.content_type, "application/problem+json",
            "{method} {path}"
        );
        assert!(!reply.body["detail"].as_str().unwrap_or("").is_empty());
    }
    // Nothing of the refused requests was recorded.
    assert_ledger_length(&server, "u1", 2);
    let reply = server.call("GET", "/v1/accounts/x", Some("service"), None);
    assert_eq!(reply.status, 404);
    let holds = server.call("GET", "/v1/legal-holds", Some("admin"), None);
    assert_eq!(holds.body["holds"], json!([]), "{}", holds.body);
}

#[test]
fn each_event_of_a_batch_stands_alone_and_ids_make_it_idempotent() {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    assert_eq!(signup(&server, "u2", "pro", Some(true)).status, 201);
    let batch = json!({"events": [
        {"id": "m1", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "c1", "text": "hello"},
        {"id": "m1", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "c1", "text": "hello"},
        {"id": "m2", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "u2", "conversation": "c1"},
        {"id": "m3", "type": "message", "at": "2025-10-01T00:06:00Z", "account": "u1", "conversation": "c2"},
        {"id": "m4", "type": "message", "at": "2025-10-01T00:04:00Z", "account": "u1", "conversation": "c3", "surface": "code"},
        {"id": "f1", "type": "feedback", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "c1", "rating": "up", "comment": "good"},
        {"id": "f2", "type": "feedback", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "c9", "rating": "up"},
        {"id": "d1", "type": "conversation_deleted", "at": "2025-10-01T00:00:00Z", "conversation": "c3"},
        {"type": "message"},
    ]});
    let reply = server.call(
        "POST",
        "/v1/events",
        Some("service"),
        Some(&batch.to_string()),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let statuses: Vec<_> = reply.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses,
        [
            "accepted",
            "duplicate",
            "rejected",
            "rejected",
            "accepted",
            "accepted",
            "rejected",
            "accepted",
            "rejected"
        ]
    );
    let kinds: Vec<_> = reply.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["problem"]["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "conversation-of-another-account",
            "event-in-future",
            "unknown-conversation",
            "invalid-body"
        ]
    );
    // The same batch again changes nothing: every accepted event is now a duplicate.
    let again = server.call(
        "POST",
        "/v1/events",
        Some("service"),
        Some(&batch.to_string()),
    );
    let duplicates = again.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "duplicate")
        .count();
    assert_eq!(duplicates, 5);
    let list = server.call("GET", "/v1/accounts/u1/conversations", Some("user"), None);
    let ids: Vec<_> = list.body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["c1"], "c3 was deleted and is hidden at once");
    assert_eq!(list.body["conversations"][0]["eligible"], true);
    assert_eq!(list.body["conversations"][0]["retention_class"], "extended");
}

#[test]
fn the_clock_can_be_set_only_in_manual_mode() {
    let server = Server::start("2025-10-01T00:00:00Z");
    let reply = server.call(
        "PUT",
        "/v1/admin/clock",
        Some("service"),
        Some(&json!({"now": "2030-01-01T00:00:00Z"}).to_string()),
    );
    assert_eq!(reply.status, 403);
    server.set_clock("2030-01-01T00:00:00Z");

    let folder = tempfile::tempdir().unwrap();
    let mut child = custos()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(folder.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("http://127.0.0.1:"),
        "listens on loopback by default: {line}"
    );
    let system = Server {
        child,
        address: line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .unwrap()
            .to_owned(),
        tokens: Default::default(),
        database: None,
        _folder: folder,
    };
    let reply = system.call(
        "PUT",
        "/v1/admin/clock",
        Some("anything"),
        Some(&json!({"now": "2030-01-01T00:00:00Z"}).to_string()),
    );
    assert_eq!(reply.status, 404, "no clock route on the system clock");
}

#[test]
fn sigterm_stops_the_server_gracefully_keeping_every_acknowledged_write() {
    let mut server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    terminate(&mut server);
    let output = custos()
        .args(["ledger", "verify"])
        .args(server.store_args())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("checked 1 accounts, 2 ledger entries")
    );
}

/// Sends SIGTERM to the server and waits for it to exit, which it must do cleanly.
pub fn terminate(server: &mut Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit}");
}

/// SIGTERM while an export runs: the server stops it (or lets it finish) and exits cleanly,
/// and no partial file is left: the export either is whole and verifies, or left nothing and
/// is recorded as incomplete.
#[test]
fn sigterm_during_an_export_leaves_no_partial_files() {
    let mut server = Server::start("2025-10-01T00:00:00Z");
    let demo = custos()
        .arg("demo")
        .args(server.store_args())
        .args(["--accounts", "5000", "--conversations", "50000"])
        .args(["--now", "2025-10-01T00:00:00Z"])
        .output()
        .unwrap();
    assert!(demo.status.success(), "{}", stderr(&demo));
    let request =
        json!({"purpose": "model_training", "format": "parquet", "destination": "at-shutdown"});
    let id = start_export(&server, &request);
    terminate(&mut server);

    let root = server.data().join("exports");
    assert_no_partial_files(&root);
    let folder = root.join("at-shutdown");
    let recorded = |condition: &str| {
        server.count(&format!(
            "SELECT count(*) FROM exports WHERE snapshot_id = '{id}' AND {condition}"
        ))
    };
    if folder.exists() {
        // It finished before the signal reached it: whole, signed, and listed.
        assert_export_verifies(&server, &folder);
        assert_eq!(recorded("status = 'done' AND manifest IS NOT NULL"), 1);
    } else {
        assert_eq!(
            recorded("status = 'failed' AND manifest IS NULL"),
            1,
            "the export stays recorded, stopped, without a manifest"
        );
    }
    assert!(
        !server.data().join("export-records").join(&id).exists(),
        "no scratch file is left"
    );
}

/// The receipt id of u1's first choice, read from its history.
fn first_receipt(server: &Server) -> String {
    let history = server.call(
        "GET",
        "/v1/accounts/u1/training-preference/history",
        Some("admin"),
        None,
    );
    history.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "choice")
        .and_then(|e| e["hash"].as_str())
        .unwrap()
        .to_owned()
}

#[test]
fn a_consent_receipt_is_signed_and_verifies_offline() {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(false)).status, 201);
    let choice = json!({"allowed": true, "channel": "notice", "notice": NOTICE}).to_string();
    let reply = server.call(
        "PUT",
        "/v1/accounts/u1/training-preference",
        Some("user"),
        Some(&choice),
    );
    let receipt_id = reply.body["receipt"].as_str().unwrap().to_owned();
    let reply = server.call(
        "GET",
        &format!("/v1/accounts/u1/receipts/{receipt_id}"),
        Some("user"),
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let receipt = &reply.body["receipt"];
    for field in [
        "version",
        "consentReceiptID",
        "consentTimestamp",
        "collectionMethod",
        "piiPrincipalId",
        "piiControllers",
        "policyUrl",
        "services",
        "jurisdiction",
        "language",
        "withdrawalMethod",
    ] {
        assert!(
            !receipt[field].is_null(),
            "the receipt lacks {field}: {receipt}"
        );
    }
    assert_eq!(receipt["consentReceiptID"], receipt_id.as_str());
    assert_eq!(receipt["collectionMethod"], "notice");
    assert_eq!(receipt["thirdPartyDisclosure"], "none");
    assert_eq!(receipt["services"][0]["purposes"][0]["consentGiven"], true);
    assert_eq!(
        receipt["services"][0]["purposes"][0]["thirdPartyDisclosure"],
        false
    );
    assert_eq!(receipt["notice"]["id"], NOTICE);

    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("receipt.json");
    std::fs::write(&file, reply.body.to_string()).unwrap();
    let public_key = reply.body["signature"]["publicKey"].as_str().unwrap();
    let output = custos()
        .args(["receipt", "verify"])
        .arg(&file)
        .args(["--public-key", public_key])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut forged = reply.body.clone();
    forged["receipt"]["services"][0]["purposes"][0]["consentGiven"] = json!(false);
    std::fs::write(&file, forged.to_string()).unwrap();
    let output = custos()
        .args(["receipt", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("receipt verification FAILED"));

    let other_key = "00".repeat(32);
    std::fs::write(&file, reply.body.to_string()).unwrap();
    let output = custos()
        .args(["receipt", "verify"])
        .arg(&file)
        .args(["--public-key", &other_key])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a receipt signed by another key is refused when a key is pinned"
    );

    let reply = server.call("GET", "/v1/accounts/u1/receipts/0000", Some("user"), None);
    assert_eq!(
        (reply.status, reply.body["type"].as_str()),
        (404, Some("unknown-receipt"))
    );
}

/// 50 callers change one account's choice at once over HTTP, alternating allowed and declined.
/// Each is answered with its own write: the state it asked for, and a receipt that verifies
/// with the store's key and says the same. No two share a receipt, and every choice in the
/// ledger was answered to exactly one caller.
#[test]
fn each_of_many_concurrent_choices_is_answered_with_its_own_receipt() {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    const CALLERS: usize = 50;
    let answers: Vec<(bool, Reply)> =
        std::thread::scope(|scope| {
            let calls: Vec<_> =
                (0..CALLERS)
                    .map(|caller| {
                        let server = &server;
                        scope.spawn(move || {
                    let allowed = caller % 2 == 0;
                    let body = json!({"allowed": allowed, "channel": "settings", "notice": NOTICE});
                    let token = if caller % 3 == 0 { "user" } else { "service" };
                    let path = "/v1/accounts/u1/training-preference";
                    (allowed, server.call("PUT", path, Some(token), Some(&body.to_string())))
                })
                    })
                    .collect();
            calls.into_iter().map(|call| call.join().unwrap()).collect()
        });
    let public_key = crate::support::stdout(
        &custos()
            .args(["ledger", "public-key"])
            .args(server.store_args())
            .output()
            .unwrap(),
    );
    let mut receipts = std::collections::BTreeSet::new();
    for (allowed, reply) in &answers {
        assert_eq!(reply.status, 200, "{}", reply.body);
        let asked = if *allowed { "allowed" } else { "declined" };
        assert_eq!(
            reply.body["state"], asked,
            "answered another's state: {}",
            reply.body
        );
        let receipt = reply.body["receipt"].as_str().unwrap().to_owned();
        let signed = server.call(
            "GET",
            &format!("/v1/accounts/u1/receipts/{receipt}"),
            Some("auditor"),
            None,
        );
        assert_eq!(signed.status, 200, "{}", signed.body);
        assert_eq!(
            custos_store::receipt::verify(&signed.body, Some(public_key.trim())),
            Ok(receipt.clone())
        );
        assert_eq!(
            signed.body["receipt"]["services"][0]["purposes"][0]["consentGiven"], *allowed,
            "the receipt is of another's choice"
        );
        assert!(receipts.insert(receipt), "a receipt answered twice");
    }
    let history = server.call(
        "GET",
        "/v1/accounts/u1/training-preference/history",
        Some("auditor"),
        None,
    );
    let written: std::collections::BTreeSet<String> = history.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "choice" && e["channel"] == "settings")
        .map(|e| e["hash"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(written.len(), CALLERS);
    assert_eq!(
        written, receipts,
        "every choice answered to exactly one caller"
    );
    let verified = server.call("GET", "/v1/ledger/verify", Some("auditor"), None);
    assert_eq!(verified.body["intact"], true, "{}", verified.body);
}

/// Many concurrent plan changes and choices on the same accounts: once every write is answered,
/// the gate the instance answers from memory equals the gate over the stored history, for every
/// account, in every trial. Two writes of one account may finish in either order; the index
/// keeps the newer one's facts.
#[test]
fn the_gate_from_memory_equals_the_stored_histories_after_concurrent_writes() {
    let server = Server::start("2025-10-01T00:00:00Z");
    let accounts = ["g0", "g1", "g2"];
    for account in accounts {
        assert_eq!(signup(&server, account, "pro", Some(true)).status, 201);
    }
    let mut differences = Vec::new();
    for trial in 0..24 {
        std::thread::scope(|scope| {
            for writer in 0..36usize {
                let server = &server;
                scope.spawn(move || {
                    let (method, path, body) = mixed_write(&accounts, writer, trial);
                    let reply =
                        server.call(method, &path, Some("service"), Some(&body.to_string()));
                    // A choice on a business plan is refused; every other write is answered.
                    assert!(
                        reply.status == 200 || reply.body["type"] == "no-choice-on-business-plan",
                        "{method} {path}: {} {}",
                        reply.status,
                        reply.body
                    );
                });
            }
        });
        for account in accounts {
            let memory = server.call(
                "GET",
                &format!("/v1/accounts/{account}/gate"),
                Some("service"),
                None,
            );
            let stored = server.call(
                "GET",
                &format!("/v1/accounts/{account}"),
                Some("service"),
                None,
            );
            let (from_memory, from_store) = (
                (
                    memory.body["decision"].clone(),
                    memory.body["reason"].clone(),
                ),
                (
                    stored.body["gate"]["decision"].clone(),
                    stored.body["gate"]["reason"].clone(),
                ),
            );
            if from_memory != from_store {
                differences.push(format!(
                    "trial {trial}, {account}: memory {from_memory:?}, stored {from_store:?} (plan {})",
                    stored.body["plan"]
                ));
            }
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

#[test]
fn the_openapi_document_covers_every_route_and_every_documented_route_is_served() {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    let reply = server.call("GET", "/openapi.json", None, None);
    assert_eq!(reply.status, 200);
    let document = reply.body;
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    // The routes of docs/API.md §2 this service has so far; each must be documented.
    for (method, path) in [
        ("post", "/v1/accounts"),
        ("get", "/v1/accounts/{id}"),
        ("patch", "/v1/accounts/{id}"),
        ("get", "/v1/accounts/{id}/gate"),
        ("put", "/v1/accounts/{id}/training-preference"),
        ("get", "/v1/accounts/{id}/training-preference/history"),
        ("get", "/v1/accounts/{id}/receipts/{receipt}"),
        ("post", "/v1/events"),
        ("get", "/v1/accounts/{id}/conversations"),
        ("delete", "/v1/conversations/{id}"),
        ("get", "/v1/ledger/verify"),
        ("get", "/v1/conversations/{id}"),
        ("delete", "/v1/accounts/{id}"),
        ("post", "/v1/retention/sweeps"),
        ("get", "/v1/accounts/{id}/data"),
        ("get", "/v1/reports/retention"),
        ("get", "/v1/reports/consent"),
        ("post", "/v1/legal-holds"),
        ("delete", "/v1/legal-holds/{id}"),
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not documented"
        );
    }
    // Every documented operation is served (never the fallback's 404 or a 405), and documents
    // its path parameters and its problem responses.
    let receipt = first_receipt(&server);
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            let placeholders = path.matches('{').count();
            assert_eq!(
                operation["parameters"].as_array().unwrap().len(),
                placeholders,
                "{method} {path}"
            );
            assert!(
                operation["responses"].as_object().unwrap().len() >= 2,
                "{method} {path}"
            );
            let concrete = path.replace("{receipt}", &receipt).replace("{id}", "u1");
            let body = operation.get("requestBody").map(|_| "{}");
            let reply = server.call(&method.to_uppercase(), &concrete, Some("admin"), body);
            assert!(
                reply.status != 405 && reply.body["type"] != "no-such-route",
                "{method} {path} is documented but not served: {}",
                reply.status
            );
        }
    }
}

#[test]
fn metrics_count_requests_gate_reasons_and_event_outcomes() {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    for _ in 0..3 {
        assert_eq!(
            server
                .call("GET", "/v1/accounts/u1/gate", Some("service"), None)
                .status,
            200
        );
    }
    let batch = json!({"events": [
        {"id": "m1", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "c1"},
        {"id": "m1", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "c1"},
        {"id": "m2", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "nobody", "conversation": "c2"},
    ]});
    server.call(
        "POST",
        "/v1/events",
        Some("service"),
        Some(&batch.to_string()),
    );
    let reply = crate::support::http(&server.address, "GET", "/metrics", &[], None);
    let raw = format!("{}\r\n\r\n{}", reply.head, reply.body);
    for line in [
        "custos_http_requests_total{route=\"/v1/accounts/{id}/gate\",method=\"GET\",status=\"200\"} 3",
        "custos_gate_decisions_total{reason=\"decided\"} 3",
        "custos_events_total{outcome=\"accepted\"} 1",
        "custos_events_total{outcome=\"duplicate\"} 1",
        "custos_events_total{outcome=\"rejected\"} 1",
        "custos_http_request_duration_seconds_count{route=\"/v1/accounts/{id}/gate\"} 3",
        "custos_gate_index_accounts 1",
    ] {
        assert!(raw.contains(line), "/metrics lacks `{line}`:\n{raw}");
    }
    assert!(
        !raw.contains(server.tokens["service"].as_str()),
        "a token reached the metrics"
    );
}

#[test]
fn serve_demo_starts_on_fresh_demo_data_and_prints_working_tokens() {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("demo");
    let mut child = custos()
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut tokens = std::collections::HashMap::new();
    let address = loop {
        let line = lines
            .next()
            .expect("the server stopped before serving")
            .unwrap();
        if let Some((role, token)) = line.trim().split_once(" token")
            && ["service", "user", "trainer", "auditor", "admin"].contains(&role.trim())
        {
            tokens.insert(
                role.trim().to_owned(),
                token.rsplit(' ').next().unwrap().to_owned(),
            );
        }
        if line.starts_with("custos: serving")
            && let Some(address) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("http://"))
        {
            break address.to_owned();
        }
    };
    assert_eq!(tokens.len(), 5, "one token per role: {tokens:?}");
    let server = Server {
        child,
        address,
        tokens: Default::default(),
        database: None,
        _folder: folder,
    };
    let reply = server.call(
        "GET",
        "/v1/accounts/demo-00000000/gate",
        Some(&tokens["service"]),
        None,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = server.call(
        "GET",
        "/v1/accounts/demo-00000000/conversations",
        Some(&tokens["user"]),
        None,
    );
    assert_eq!(reply.status, 200);
    let reply = server.call(
        "GET",
        "/v1/accounts/demo-00000001/conversations",
        Some(&tokens["user"]),
        None,
    );
    assert_eq!(
        reply.status, 403,
        "the demo user token reaches only its own account"
    );
    let reply = server.call("GET", "/v1/ledger/verify", Some(&tokens["auditor"]), None);
    assert_eq!(reply.body["intact"], true, "{}", reply.body);
    assert!(reply.body["accounts"].as_u64().unwrap() >= 1000);
}

#[test]
fn demo_data_is_realistic_deterministic_and_verifiable() {
    let folder = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let data = folder.path().join(name);
        let output = custos()
            .args([
                "demo",
                "--accounts",
                "300",
                "--conversations",
                "1500",
                "--now",
                "2026-11-28T00:00:00Z",
                "--data",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("300 accounts, 1500 conversations")
        );
        data
    };
    let (first, second) = (make("one"), make("two"));
    let rows = |data: &std::path::Path, sql: &str| -> Vec<String> {
        let db = rusqlite::Connection::open(data.join("custos.sqlite3")).unwrap();
        let mut statement = db.prepare(sql).unwrap();
        statement
            .query_map([], |row| row.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    // Hashes differ between folders: each names accounts by a pseudonym keyed by its own
    // folder's key. Everything the hashes cover is the same.
    let ledger = "SELECT account_id || idx || at || seq || kind || coalesce(plan, '') || coalesce(preference, '') \
                  || coalesce(channel, '') FROM ledger ORDER BY account_id, idx";
    assert_eq!(
        rows(&first, ledger),
        rows(&second, ledger),
        "the same seed makes the same ledger"
    );
    let mix = |sql: &str| {
        rows(&first, sql)
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
    };
    let plans = mix("SELECT DISTINCT plan FROM ledger WHERE kind = 'created'");
    for plan in ["free", "pro", "max", "team"] {
        assert!(plans.contains(plan), "no {plan} accounts: {plans:?}");
    }
    let channels = mix("SELECT DISTINCT channel FROM ledger WHERE kind = 'choice'");
    assert_eq!(
        channels.len(),
        3,
        "choices at signup, in the notice and in settings: {channels:?}"
    );
    assert!(!mix("SELECT conversation_id FROM conversations WHERE surface = 'code'").is_empty());
    assert!(!mix("SELECT conversation_id FROM conversations WHERE incognito").is_empty());
    assert!(
        !mix("SELECT conversation_id FROM conversations WHERE deleted_at IS NOT NULL").is_empty()
    );
    assert!(
        !mix("SELECT text FROM messages WHERE text LIKE '%@%'").is_empty(),
        "some text holds an email"
    );
    assert!(
        !mix("SELECT text FROM messages WHERE text LIKE '%sk-live-%'").is_empty(),
        "some text holds a key"
    );
    let output = custos()
        .args(["ledger", "verify", "--data"])
        .arg(&first)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_revoked_token_stops_working_within_seconds() {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    assert_eq!(
        server
            .call("GET", "/v1/accounts/u1/gate", Some("service"), None)
            .status,
        200
    );
    let output = custos()
        .args(["token", "revoke"])
        .args(server.store_args())
        .arg(&server.tokens["service"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let started = std::time::Instant::now();
    loop {
        let status = server
            .call("GET", "/v1/accounts/u1/gate", Some("service"), None)
            .status;
        if status == 401 {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 7,
            "the revoked token still works after {:?}",
            started.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let again = custos()
        .args(["token", "revoke"])
        .args(server.store_args())
        .arg(&server.tokens["service"])
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "revoking twice says there is no such active token"
    );
}

#[test]
fn a_user_erases_its_account_and_a_sweep_purges_all_but_what_a_hold_keeps() {
    let mut server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "u1", "pro", Some(true)).status, 201);
    let events = json!({"events": [
        {"id": "e1", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "kept", "text": "hello"},
        {"id": "e2", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "u1", "conversation": "gone", "text": "hello"},
    ]});
    let reply = server.call(
        "POST",
        "/v1/events",
        Some("service"),
        Some(&events.to_string()),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let hold = json!({"id": "case-7", "conversation": "kept", "reason": "case 7: preserve"});
    let reply = server.call(
        "POST",
        "/v1/legal-holds",
        Some("admin"),
        Some(&hold.to_string()),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["reason"], "case 7: preserve");
    assert!(
        reply.body["placed_by"]
            .as_str()
            .unwrap()
            .starts_with("admin:")
    );

    // Another user may not erase u1; u1 may.
    assert_eq!(
        server
            .call("DELETE", "/v1/accounts/u1", Some("other-user"), None)
            .status,
        403
    );
    assert_eq!(
        server
            .call("DELETE", "/v1/accounts/u1", Some("user"), None)
            .status,
        204
    );
    for path in [
        "/v1/accounts/u1/gate",
        "/v1/accounts/u1",
        "/v1/accounts/u1/conversations",
    ] {
        let reply = server.call("GET", path, Some("service"), None);
        assert_eq!(
            (reply.status, reply.body["type"].as_str()),
            (404, Some("account-erased")),
            "{path}"
        );
    }
    assert_eq!(
        server
            .call("DELETE", "/v1/accounts/u1", Some("admin"), None)
            .status,
        404
    );
    let status = |id: &str| {
        server
            .call(
                "GET",
                &format!("/v1/conversations/{id}"),
                Some("auditor"),
                None,
            )
            .body
    };
    assert_eq!(status("gone")["visible"], false);
    assert_eq!(status("gone")["reason"], "account_erased");

    let sweep = server.call("POST", "/v1/retention/sweeps", Some("admin"), None);
    assert_eq!(sweep.status, 200, "{}", sweep.body);
    assert_eq!(
        (
            sweep.body["purged"].as_u64(),
            sweep.body["held_back"].as_u64()
        ),
        (Some(1), Some(1)),
        "{}",
        sweep.body
    );
    assert_eq!(status("gone")["exists"], false);
    assert_eq!(status("kept")["exists"], true);
    assert_eq!(status("kept")["held"], true);

    // Released, the held conversation goes at the next sweep; the audit trail keeps both acts.
    let reply = server.call("DELETE", "/v1/legal-holds/case-7", Some("admin"), None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        server
            .call("DELETE", "/v1/legal-holds/case-7", Some("admin"), None)
            .status,
        409
    );
    let sweep = server.call("POST", "/v1/retention/sweeps", Some("admin"), None);
    assert_eq!(sweep.body["purged"].as_u64(), Some(1), "{}", sweep.body);
    assert_eq!(status("kept")["exists"], false);
    let holds = server
        .call("GET", "/v1/legal-holds", Some("admin"), None)
        .body;
    let trail = &holds["holds"][0];
    assert_eq!(
        (trail["active"].as_bool(), trail["reason"].as_str()),
        (Some(false), Some("case 7: preserve"))
    );
    assert!(
        trail["released_by"].as_str().unwrap().starts_with("admin:"),
        "{trail}"
    );
    let verify = server.call("GET", "/v1/ledger/verify", Some("auditor"), None);
    assert_eq!(verify.body["intact"], true, "{}", verify.body);

    // The id is gone from every table; the ledger keeps the chain under the pseudonym.
    for table in [
        "accounts",
        "ledger",
        "conversations",
        "holds",
        "checkpoint_heads",
        "tokens",
    ] {
        assert_eq!(
            server.count(&format!(
                "SELECT COUNT(*) FROM {table} WHERE account_id = 'u1'"
            )),
            0,
            "{table}"
        );
    }
    assert_eq!(
        server.count(
            "SELECT COUNT(*) FROM ledger WHERE account_id LIKE 'erased:%' AND kind = 'erased'"
        ),
        1
    );
    assert_eq!(
        server.count("SELECT COUNT(*) FROM ledger WHERE actor LIKE '%u1%'"),
        0
    );
    // Yet the id can't be created again, and the user's token stopped working.
    let reply = signup(&server, "u1", "pro", Some(true));
    assert_eq!(
        (reply.status, reply.body["type"].as_str()),
        (409, Some("account-exists"))
    );
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(
        server
            .call("GET", "/v1/accounts/u1/data", Some("user"), None)
            .status,
        401
    );
    // A server started afresh, which finds only the pseudonym, still answers account-erased.
    server.restart("2025-12-01T00:00:00Z");
    let reply = server.call("GET", "/v1/accounts/u1/gate", Some("service"), None);
    assert_eq!(
        (reply.status, reply.body["type"].as_str()),
        (404, Some("account-erased"))
    );
    let verify = server.call("GET", "/v1/ledger/verify", Some("auditor"), None);
    assert_eq!(verify.body["intact"], true, "{}", verify.body);
}

/// Where `value` departs from `schema`: the subset of JSON Schema the service's document uses
/// (`type`, `const`, `enum`, `required`, `properties`, `additionalProperties`, `items`, `$ref`).
fn schema_problems(value: &Value, schema: &Value, document: &Value, at: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return schema_problems(
            value,
            &document["components"]["schemas"][name],
            document,
            at,
        );
    }
    let type_of = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.contains(&type_of(value)) {
        problems.push(format!("{at} is {value}, not of type {types:?}"));
    }
    if let Some(constant) = schema.get("const")
        && constant != value
    {
        problems.push(format!("{at} is {value}, not {constant}"));
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        problems.push(format!("{at} is {value}, not one of {options:?}"));
    }
    if let Value::Object(fields) = value {
        for key in schema["required"].as_array().into_iter().flatten() {
            if !fields.contains_key(key.as_str().unwrap_or_default()) {
                problems.push(format!("{at} lacks `{key}`"));
            }
        }
        for (key, field) in fields {
            let path = format!("{at}.{key}");
            match schema["properties"].get(key) {
                Some(property) => {
                    problems.extend(schema_problems(field, property, document, &path))
                }
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => problems.push(format!("{path} is not documented")),
                    Value::Object(_) => problems.extend(schema_problems(
                        field,
                        &schema["additionalProperties"],
                        document,
                        &path,
                    )),
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (index, item) in items.iter().enumerate() {
            problems.extend(schema_problems(
                item,
                item_schema,
                document,
                &format!("{at}[{index}]"),
            ));
        }
    }
    problems
}

#[test]
fn reports_count_classes_purges_holds_preferences_and_undecided_accounts() {
    let server = Server::start("2025-07-01T00:00:00Z");
    // Before the policy took effect an account needs no choice: it stays undecided.
    assert_eq!(signup(&server, "early", "pro", None).status, 201);
    server.set_clock("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "yes", "pro", Some(true)).status, 201);
    assert_eq!(signup(&server, "no", "free", Some(false)).status, 201);
    assert_eq!(signup(&server, "firm", "team", None).status, 201);
    let events = json!({"events": [
        {"id": "e1", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "yes", "conversation": "long"},
        {"id": "e2", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "no", "conversation": "short"},
        {"id": "e3", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "firm", "conversation": "work"},
    ]});
    server.call(
        "POST",
        "/v1/events",
        Some("service"),
        Some(&events.to_string()),
    );
    let hold = json!({"id": "h1", "conversation": "work", "reason": "audit"});
    assert_eq!(
        server
            .call(
                "POST",
                "/v1/legal-holds",
                Some("admin"),
                Some(&hold.to_string())
            )
            .status,
        201
    );

    let report = server
        .call("GET", "/v1/reports/retention", Some("auditor"), None)
        .body;
    assert_eq!(
        report["conversations_by_class"],
        json!({"extended": 1, "standard": 2}),
        "{report}"
    );
    let due: i64 = report["due_by_week"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["due"].as_i64().unwrap())
        .sum();
    assert_eq!((report["due_now"].as_i64(), due), (Some(0), 2), "{report}");
    assert_eq!(report["holds"]["active_on_conversations"], 1);

    server.set_clock("2025-11-01T00:00:00Z");
    server.call("POST", "/v1/retention/sweeps", Some("admin"), None);
    let report = server
        .call("GET", "/v1/reports/retention", Some("auditor"), None)
        .body;
    assert_eq!(
        report["conversations_by_class"],
        json!({"extended": 1, "standard": 1}),
        "{report}"
    );
    assert_eq!(
        report["purged_by_day"],
        json!([{"day": "2025-11-01", "reason": "retention", "purged": 1}]),
        "{report}"
    );
    assert_eq!(
        report["due_now"], 1,
        "the held conversation stays due: {report}"
    );

    let consent = server
        .call("GET", "/v1/reports/consent", Some("auditor"), None)
        .body;
    let rows = consent["accounts_by_plan_and_preference"]
        .as_array()
        .unwrap();
    for (plan, preference, accounts) in [
        ("pro", "allowed", 1),
        ("pro", "unset", 1),
        ("free", "declined", 1),
        ("team", "unset", 1),
    ] {
        assert!(
            rows.iter().any(|r| r["plan"] == plan
                && r["preference"] == preference
                && r["accounts"] == accounts),
            "{plan} {preference}: {consent}"
        );
    }
    assert_eq!(
        consent["deadline"]["undecided_consumer_accounts"], 1,
        "{consent}"
    );
    assert_eq!(consent["deadline"]["passed"], true);
    let signups: i64 = consent["choices_by_day"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["channel"] == "signup")
        .map(|c| c["choices"].as_i64().unwrap())
        .sum();
    assert_eq!(signups, 2, "{consent}");
    // Counts only: no account id appears in either report.
    for id in ["early", "yes", "\"no\"", "firm", "long", "short", "work"] {
        assert!(
            !report.to_string().contains(id) && !consent.to_string().contains(id),
            "{id}"
        );
    }
}

/// `custos export verify` accepts the folder: its manifest is signed by the server's store, and
/// every file matches it.
fn assert_export_verifies(server: &Server, folder: &std::path::Path) {
    let verify = custos()
        .args(["export", "verify"])
        .args(server.store_args())
        .arg(folder)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", stderr(&verify));
}

/// Starts an export as the trainer; returns its snapshot id.
fn start_export(server: &Server, request: &Value) -> String {
    let started = server.call(
        "POST",
        "/v1/exports",
        Some("trainer"),
        Some(&request.to_string()),
    );
    assert_eq!(started.status, 202, "{}", started.body);
    started.body["snapshot_id"].as_str().unwrap().to_owned()
}

/// Starts an export as the trainer and waits for it to finish; returns its snapshot id.
pub fn export_and_wait(server: &Server, request: Value) -> String {
    let id = start_export(server, &request);
    for _ in 0..600 {
        let status = server.call("GET", &format!("/v1/exports/{id}"), Some("trainer"), None);
        match status.body["status"].as_str() {
            Some("done") => return id,
            Some("running") => std::thread::sleep(std::time::Duration::from_millis(20)),
            _ => panic!("export {id}: {}", status.body),
        }
    }
    panic!("export {id} did not finish in 12 s");
}

#[test]
fn exports_over_http_write_a_signed_snapshot_refuse_other_purposes_and_list_revocations() {
    let server = Server::start("2025-10-01T00:00:00Z");
    assert_eq!(signup(&server, "yes", "pro", Some(true)).status, 201);
    assert_eq!(signup(&server, "also", "max", Some(true)).status, 201);
    assert_eq!(signup(&server, "no", "free", Some(false)).status, 201);
    let events = json!({"events": [
        {"id": "e1", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "yes", "conversation": "c-yes", "text": "my email is a@b.co"},
        {"id": "e2", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "also", "conversation": "c-also", "text": "hello"},
        {"id": "e3", "type": "message", "at": "2025-10-01T00:00:00Z", "account": "no", "conversation": "c-no", "text": "private"},
    ]});
    server.call(
        "POST",
        "/v1/events",
        Some("service"),
        Some(&events.to_string()),
    );
    server.set_clock("2025-10-02T00:00:00Z");

    let id = export_and_wait(
        &server,
        json!({"purpose": "model_training", "format": "jsonl", "destination": "weekly/one"}),
    );
    let status = server.call("GET", &format!("/v1/exports/{id}"), Some("auditor"), None);
    let manifest = &status.body["manifest"];
    assert_eq!(manifest["conversations"]["included"], 2, "{manifest}");
    assert_eq!(
        manifest["conversations"]["excluded"]["training_declined"],
        1
    );
    assert_eq!(manifest["redactions"]["email"], 1);
    assert_eq!(manifest["cutoff"], "2025-10-02T00:00:00.000Z");
    let listed = server.call("GET", "/v1/exports", Some("auditor"), None);
    assert_eq!(listed.body["exports"][0]["snapshot_id"], id.as_str());

    // The files are where the destination said, inside the export root, and verify.
    let folder = server.data().join("exports/weekly/one");
    assert_export_verifies(&server, &folder);
    let text = std::fs::read_to_string(folder.join("part-00000.jsonl")).unwrap();
    assert!(
        text.contains("[REDACTED:email]") && !text.contains("a@b.co") && !text.contains("\"yes\"")
    );

    // Refused: other purposes, destinations outside the root, a cutoff in the future.
    for (request, kind) in [
        (json!({"purpose": "advertising"}), "purpose-refused"),
        (
            json!({"purpose": "model_training", "destination": "../../elsewhere"}),
            "destination-refused",
        ),
        (
            json!({"purpose": "model_training", "destination": "/tmp/custos-elsewhere"}),
            "destination-refused",
        ),
        (
            json!({"purpose": "model_training", "destination": "weekly/one"}),
            "destination-refused",
        ),
        (
            json!({"purpose": "model_training", "cutoff": "2025-10-03T00:00:00Z"}),
            "cutoff-in-future",
        ),
        (
            json!({"purpose": "model_training", "format": "csv"}),
            "invalid-body",
        ),
        (
            json!({"purpose": "model_training", "recipient": "partner"}),
            "invalid-body",
        ),
    ] {
        let reply = server.call(
            "POST",
            "/v1/exports",
            Some("trainer"),
            Some(&request.to_string()),
        );
        assert_eq!(
            (reply.status, reply.body["type"].as_str().unwrap_or("")),
            (422, kind),
            "{request}: {}",
            reply.body
        );
        assert!(
            !reply
                .body
                .to_string()
                .contains(&server.data().display().to_string()),
            "a refusal names no server path"
        );
    }
    assert!(!std::path::Path::new("/tmp/custos-elsewhere").exists());
    let unknown = server.call(
        "GET",
        "/v1/exports/exp-0123456789abcdef",
        Some("trainer"),
        None,
    );
    assert_eq!(
        (unknown.status, unknown.body["type"].as_str()),
        (404, Some("unknown-export"))
    );

    // A withdrawal and a deletion later, the snapshot's revocations name both rows.
    let withdraw = json!({"allowed": false, "channel": "settings", "notice": NOTICE});
    assert_eq!(
        server
            .call(
                "PUT",
                "/v1/accounts/yes/training-preference",
                Some("service"),
                Some(&withdraw.to_string())
            )
            .status,
        200
    );
    assert_eq!(
        server
            .call("DELETE", "/v1/conversations/c-also", Some("service"), None)
            .status,
        204
    );
    let revocations = server.call(
        "GET",
        &format!("/v1/exports/{id}/revocations"),
        Some("trainer"),
        None,
    );
    assert_eq!(revocations.body["rows"], 2);
    assert_eq!(
        revocations.body["counts"],
        json!({"withdrawn": 1, "deleted": 1}),
        "{}",
        revocations.body
    );
    // A new export holds neither.
    let next = export_and_wait(&server, json!({"purpose": "model_training"}));
    let next = server.call("GET", &format!("/v1/exports/{next}"), Some("trainer"), None);
    assert_eq!(next.body["manifest"]["conversations"]["included"], 0);

    let metrics = server.call_text("/metrics");
    assert!(
        metrics.contains("custos_exports_total{outcome=\"done\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("custos_exports_total{outcome=\"refused\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("custos_export_conversations_total{result=\"included\"} 2"),
        "{metrics}"
    );
}
