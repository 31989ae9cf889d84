//! Several `custos serve` processes over one PostgreSQL database, as an operator runs them: each
//! with its own data folder and the same keys. Writes go to random instances; after every write
//! each instance's gate is asked directly.
//!
//! These tests need PostgreSQL. `CUSTOS_TEST_DATABASE_URL` (libpq key=value form) names it, and
//! CI sets it, so that they fail if it can't be reached; without it they try the local default
//! and, if nothing answers, say on stderr that they did not run.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{FreshDatabase, NOTICE, mixed_write, spawn_serve};
use crate::support::{custos, stderr, try_http};

const DEFAULT: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3";

/// How long any instance may take to see a change another committed, in these tests (the
/// promised bound is much tighter; `bench/replicas.sh` measures it).
const SEEN_WITHIN: Duration = Duration::from_secs(3);

/// The PostgreSQL server to make the fleet's database on, or None (said loudly) if there is none
/// and none was required.
fn postgres() -> Option<String> {
    let required = std::env::var("CUSTOS_TEST_DATABASE_URL").ok();
    let base = required.clone().unwrap_or_else(|| DEFAULT.to_owned());
    match (postgres::Client::connect(&base, postgres::NoTls), required) {
        (Ok(_), _) => Some(base),
        (Err(error), Some(_)) => {
            panic!("CUSTOS_TEST_DATABASE_URL is set but PostgreSQL can't be reached: {error}")
        }
        (Err(error), None) => {
            // Straight to the file descriptor: the test runner captures `eprintln!`.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "replicas: these tests did NOT run: no PostgreSQL at `{DEFAULT}` ({error}); \
                 set CUSTOS_TEST_DATABASE_URL to require them"
            );
            None
        }
    }
}

/// One `custos serve` of the fleet.
struct Replica {
    child: Child,
    address: String,
    data: PathBuf,
}

/// Three (or more) instances on one database, with tokens that every one of them accepts.
struct Fleet {
    database: FreshDatabase,
    folder: tempfile::TempDir,
    replicas: Vec<Replica>,
    service: String,
    admin: String,
    now: &'static str,
    started: usize,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            let _ = replica.child.kill();
            let _ = replica.child.wait();
        }
    }
}

impl Fleet {
    fn start(base: &str, instances: usize, now: &'static str) -> Fleet {
        let database = FreshDatabase::on(base);
        let folder = tempfile::tempdir().unwrap();
        // The keys every instance is given, as a secret store would mount them.
        let output = custos()
            .args(["keys", "create", "--out"])
            .arg(folder.path().join("keys"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let mut fleet = Fleet {
            database,
            folder,
            replicas: Vec::new(),
            service: String::new(),
            admin: String::new(),
            now,
            started: 0,
        };
        for _ in 0..instances {
            let replica = fleet.spawn();
            fleet.replicas.push(replica);
        }
        fleet.service = fleet.token("service");
        fleet.admin = fleet.token("admin");
        fleet
    }

    /// A token of `role`, made once in the shared store: every instance accepts it.
    fn token(&self, role: &str) -> String {
        let output = custos()
            .args(["token", "create", "--role", role])
            .args(self.store_args(0))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// A new instance on a data folder of its own, with the fleet's keys.
    fn spawn(&mut self) -> Replica {
        let data = self.folder.path().join(format!("data-{}", self.started));
        self.started += 1;
        let args = [
            "--database".to_owned(),
            self.database.url(),
            "--keys".to_owned(),
            self.keys().display().to_string(),
        ];
        let (child, address) = spawn_serve(&data, &args, self.now, None);
        Replica {
            child,
            address,
            data,
        }
    }

    fn keys(&self) -> PathBuf {
        self.folder.path().join("keys")
    }

    fn store_args(&self, replica: usize) -> Vec<std::ffi::OsString> {
        vec![
            "--data".into(),
            self.replicas[replica].data.clone().into(),
            "--database".into(),
            self.database.url().into(),
            "--keys".into(),
            self.keys().into(),
        ]
    }

    /// Kills instance `replica` with SIGKILL and starts a new one in its place, on a fresh data
    /// folder with the same keys.
    fn replace(&mut self, replica: usize) {
        let _ = self.replicas[replica].child.kill();
        let _ = self.replicas[replica].child.wait();
        let fresh = self.spawn();
        self.replicas[replica] = fresh;
    }

    /// A request with the service's token; an erasure, which the service may not ask for, with
    /// the admin's.
    fn call(&self, replica: usize, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let token = if method == "DELETE" {
            &self.admin
        } else {
            &self.service
        };
        call(&self.replicas[replica].address, token, method, path, body)
            .unwrap_or_else(|e| panic!("instance {replica}: {method} {path}: {e}"))
    }
}

fn call(
    address: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> std::io::Result<(u16, Value)> {
    let authorization = format!("Bearer {token}");
    let body = body.map(|b| b.to_string());
    let reply = try_http(
        address,
        method,
        path,
        &[("Authorization", &authorization)],
        body.as_deref(),
    )?;
    Ok((
        reply.status,
        serde_json::from_str(&reply.body).unwrap_or(Value::Null),
    ))
}

/// What an instance's gate says of an account: (decision, reason), or the problem's type.
fn gate_of(fleet: &Fleet, replica: usize, account: &str) -> (String, String) {
    let (status, body) = fleet.call(
        replica,
        "GET",
        &format!("/v1/accounts/{account}/gate"),
        None,
    );
    match status {
        200 => (
            body["decision"].as_str().unwrap_or_default().to_owned(),
            body["reason"].as_str().unwrap_or_default().to_owned(),
        ),
        _ => (
            format!("{status}"),
            body["type"].as_str().unwrap_or_default().to_owned(),
        ),
    }
}

/// The gate the core answers over an account's stored history (its view, read from the
/// store), in the form of [`gate_of`].
fn stored_gate(fleet: &Fleet, account: &str) -> (String, String) {
    let (status, body) = fleet.call(0, "GET", &format!("/v1/accounts/{account}"), None);
    match status {
        200 => (
            body["gate"]["decision"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            body["gate"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        _ => (
            format!("{status}"),
            body["type"].as_str().unwrap_or_default().to_owned(),
        ),
    }
}

/// A new account on a consumer plan whose user allowed training at signup.
fn allowing_signup(id: &str) -> Value {
    json!({"id": id, "plan": "pro", "choice": {"allowed": true, "channel": "signup", "notice": NOTICE}})
}

/// `custos ledger verify` passes through instance `replica`'s data folder.
fn assert_ledger_verifies(fleet: &Fleet, replica: usize) {
    let output = custos()
        .args(["ledger", "verify"])
        .args(fleet.store_args(replica))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "verify through instance {replica}: {}",
        stderr(&output)
    );
}

/// A decided consumer user or a business plan: the answers no instance may turn into a prompt
/// or a block.
fn settled(answer: &(String, String)) -> bool {
    matches!(answer.0.as_str(), "allow" | "not_applicable")
}

fn asks_or_stops(answer: &(String, String)) -> bool {
    matches!(answer.0.as_str(), "prompt" | "block")
}

/// nginx in front of the fleet, running the repository's own `deploy/nginx.conf` with its
/// instance and listen lines pointed at the fleet's ports.
struct Nginx {
    child: Child,
    address: String,
    _prefix: tempfile::TempDir,
}

impl Drop for Nginx {
    /// SIGTERM, which its master passes on to its workers (SIGKILL would leave them behind).
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn before(fleet: &Fleet) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or_else(|| {
                panic!("these tests need nginx (scripts/test.sh installs Debian's nginx-light)")
            });
        let template =
            std::fs::read_to_string(crate::support::repo_root().join("deploy/nginx.conf")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let mut config = String::new();
        let mut instances = fleet.replicas.iter();
        for line in template.lines() {
            if line.trim_end().ends_with("# instance") {
                // The template's instance lines, one per instance of the fleet.
                if let Some(replica) = instances.next() {
                    config.push_str(&format!(
                        "        server {} max_fails=1 fail_timeout=10s;\n",
                        replica.address
                    ));
                }
            } else if line.trim_end().ends_with("# listen") {
                config.push_str(&format!("        listen {address};\n"));
            } else {
                config.push_str(line);
                config.push('\n');
            }
        }
        assert!(
            instances.next().is_none(),
            "deploy/nginx.conf names fewer instances than the fleet has"
        );
        let prefix = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(prefix.path().join("logs")).unwrap();
        std::fs::write(prefix.path().join("nginx.conf"), config).unwrap();
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(prefix.path())
            .args(["-e", "stderr", "-c"])
            .arg(prefix.path().join("nginx.conf"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let since = Instant::now();
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "nginx did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            address,
            _prefix: prefix,
        }
    }
}

/// A server a test started by itself, killed when the test ends, whether it passes or fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A small deterministic generator: the same seed makes the same run.
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Signups, choices, plan changes and erasures sent to random instances, half of them through
/// nginx (the repository's `deploy/nginx.conf`); after each one, every
/// instance's gate. None answers `prompt` or `block` for a user whose choice (or business plan)
/// has committed, and each sees every other change within the bound; the lags are reported.
/// Midway, one instance is killed with SIGKILL while a writer is using it, and replaced by a
/// new one on a fresh data folder: every write it acknowledged is in the store, the new
/// instance's gate agrees with the others, and the ledger verifies from every instance.
#[test]
fn every_instance_agrees_on_every_committed_change_and_a_killed_one_loses_nothing() {
    let Some(base) = postgres() else { return };
    let mut fleet = Fleet::start(&base, 3, "2025-09-10T00:00:00Z");
    let nginx = Nginx::before(&fleet);
    let instances = fleet.replicas.len();
    let mut random = Random(14);
    let mut live: Vec<String> = Vec::new();
    let mut erased: Vec<String> = Vec::new();
    let (mut stale, mut lags) = (Vec::new(), Vec::new());
    let consumer = ["free", "pro", "max"];
    let business = ["api", "team", "enterprise"];
    for step in 0..240usize {
        let writer = random.below(instances);
        let pick = random.below(100);
        let (account, method, path, body) = if live.is_empty() || pick < 25 {
            let id = format!("r{step}");
            let body = if random.below(2) == 0 {
                let plan = consumer[random.below(3)];
                json!({"id": id, "plan": plan, "choice": {"allowed": random.below(2) == 0, "channel": "signup", "notice": NOTICE}})
            } else {
                json!({"id": id, "plan": business[random.below(3)]})
            };
            (id, "POST", "/v1/accounts".to_owned(), Some(body))
        } else {
            let account = live[random.below(live.len())].clone();
            match pick {
                25..=59 => (
                    account.clone(),
                    "PUT",
                    format!("/v1/accounts/{account}/training-preference"),
                    Some(
                        json!({"allowed": random.below(2) == 0, "channel": "settings", "notice": NOTICE}),
                    ),
                ),
                60..=91 => {
                    let plans = if random.below(2) == 0 {
                        consumer
                    } else {
                        business
                    };
                    (
                        account.clone(),
                        "PATCH",
                        format!("/v1/accounts/{account}"),
                        Some(json!({"plan": plans[random.below(3)]})),
                    )
                }
                _ => (
                    account.clone(),
                    "DELETE",
                    format!("/v1/accounts/{account}"),
                    None,
                ),
            }
        };
        // Half the writes go through nginx, to whichever instance it picks; the others to a
        // random instance directly.
        let through_nginx = step % 2 == 0;
        let (status, answer) = if through_nginx {
            let token = if method == "DELETE" {
                &fleet.admin
            } else {
                &fleet.service
            };
            call(&nginx.address, token, method, &path, body).unwrap()
        } else {
            fleet.call(writer, method, &path, body)
        };
        let acknowledged = Instant::now();
        match (method, status) {
            ("POST", 201) => live.push(account.clone()),
            ("DELETE", 204) => {
                live.retain(|a| *a != account);
                erased.push(account.clone());
            }
            (_, 200) => {}
            // A choice on a business plan is refused, and changes nothing.
            ("PUT", 422) if answer["type"] == "no-choice-on-business-plan" => continue,
            _ => panic!("step {step}: {method} {path} on instance {writer}: {status} {answer}"),
        }
        // The truth as of the write: the writer's own gate, or, through nginx, the core's
        // answer over the stored history (the account view, read from the store).
        let expected = if through_nginx {
            stored_gate(&fleet, &account)
        } else {
            gate_of(&fleet, writer, &account)
        };
        for replica in (0..instances).filter(|r| through_nginx || *r != writer) {
            let first = gate_of(&fleet, replica, &account);
            if settled(&expected) && asks_or_stops(&first) {
                stale.push(format!(
                    "step {step}: {account} is {expected:?} (written through {writer}), instance {replica} answered {first:?}"
                ));
            }
            let mut seen = first;
            while seen != expected {
                assert!(
                    acknowledged.elapsed() < SEEN_WITHIN,
                    "step {step}: instance {replica} still answers {seen:?} for {account}, {expected:?} through {writer}"
                );
                std::thread::sleep(Duration::from_millis(2));
                seen = gate_of(&fleet, replica, &account);
            }
            lags.push(acknowledged.elapsed());
        }
        if step == 120 {
            kill_one_mid_load(&mut fleet, &live);
        }
    }
    assert!(
        stale.is_empty(),
        "stale prompts or blocks:\n{}",
        stale.join("\n")
    );
    lags.sort();
    // Straight to the file descriptor, so that the figures show in the test's output.
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "replicas: {} cross-instance reads after a write: lag p50 {:?}, p99 {:?}, max {:?} (each includes an HTTP round trip)",
            lags.len(),
            percentile(&lags, 0.5),
            percentile(&lags, 0.99),
            lags.last().copied().unwrap_or_default()
        );
    }
    for replica in 0..instances {
        for account in live.iter().chain(&erased) {
            assert_eq!(
                gate_of(&fleet, replica, account),
                gate_of(&fleet, 0, account),
                "instance {replica}, {account}"
            );
        }
        assert_ledger_verifies(&fleet, replica);
    }
}

/// Kills instance 1 with SIGKILL while a writer sends it choices, and puts a new one on a fresh
/// data folder in its place: every choice it acknowledged is in the store, and the new instance
/// answers as the others do.
fn kill_one_mid_load(fleet: &mut Fleet, live: &[String]) {
    let consumers: Vec<String> = live
        .iter()
        .filter(|a| gate_of(fleet, 0, a).1 != "not_applicable")
        .cloned()
        .collect();
    assert!(!consumers.is_empty());
    let address = fleet.replicas[1].address.clone();
    let token = fleet.service.clone();
    let writer = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for i in 0.. {
            let account = &consumers[i % consumers.len()];
            let body = json!({"allowed": i % 2 == 0, "channel": "settings", "notice": NOTICE});
            let path = format!("/v1/accounts/{account}/training-preference");
            match call(&address, &token, "PUT", &path, Some(body)) {
                Ok((200, answer)) => acknowledged.push((
                    account.clone(),
                    answer["receipt"].as_str().unwrap().to_owned(),
                )),
                // No answer at all: the instance was killed with the request in flight.
                Ok((0, _)) | Err(_) => return acknowledged,
                Ok((status, answer)) => panic!("{path}: {status} {answer}"),
            }
        }
        acknowledged
    });
    std::thread::sleep(Duration::from_millis(300));
    fleet.replace(1);
    let acknowledged = writer.join().unwrap();
    assert!(
        !acknowledged.is_empty(),
        "the writer was killed before any write"
    );
    // A receipt's id is the hash of its choice's ledger entry.
    for (account, receipt) in &acknowledged {
        let path = format!("/v1/accounts/{account}/training-preference/history");
        let (status, history) = fleet.call(1, "GET", &path, None);
        assert_eq!(status, 200, "{history}");
        assert!(
            history["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["hash"] == receipt.as_str()),
            "acknowledged choice {receipt} of {account} is lost"
        );
    }
    for account in live {
        assert_eq!(
            gate_of(fleet, 1, account),
            gate_of(fleet, 0, account),
            "{account} on the new instance"
        );
    }
}

/// Many concurrent plan changes and choices on the same accounts, through every instance at
/// once; then every instance's gate equals the core's answer over the stored history (the
/// account view, read from the store), every time.
#[test]
fn concurrent_writes_through_three_instances_leave_every_gate_equal_to_the_stored_history() {
    let Some(base) = postgres() else { return };
    let fleet = Fleet::start(&base, 3, "2025-09-10T00:00:00Z");
    let accounts = ["g0", "g1", "g2"];
    for account in accounts {
        let body = allowing_signup(account);
        assert_eq!(fleet.call(0, "POST", "/v1/accounts", Some(body)).0, 201);
    }
    let mut differences = Vec::new();
    for trial in 0..12 {
        std::thread::scope(|scope| {
            for writer in 0..36usize {
                let fleet = &fleet;
                scope.spawn(move || {
                    let (method, path, body) = mixed_write(&accounts, writer, trial);
                    let (status, reply) = fleet.call(writer % 3, method, &path, Some(body));
                    assert!(
                        status == 200 || reply["type"] == "no-choice-on-business-plan",
                        "{method} {path}: {status} {reply}"
                    );
                });
            }
        });
        for account in accounts {
            let (_, stored) = fleet.call(0, "GET", &format!("/v1/accounts/{account}"), None);
            let from_store = (
                stored["gate"]["decision"].as_str().unwrap().to_owned(),
                stored["gate"]["reason"].as_str().unwrap().to_owned(),
            );
            for replica in 0..3 {
                let since = Instant::now();
                let mut from_memory = gate_of(&fleet, replica, account);
                while from_memory != from_store && since.elapsed() < SEEN_WITHIN {
                    std::thread::sleep(Duration::from_millis(5));
                    from_memory = gate_of(&fleet, replica, account);
                }
                if from_memory != from_store {
                    differences.push(format!(
                        "trial {trial}, {account}, instance {replica}: memory {from_memory:?}, stored {from_store:?} (plan {})",
                        stored["plan"]
                    ));
                }
            }
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// Every row of every table of the fleet's database, as text: what "nothing changed" compares.
fn dump(fleet: &Fleet) -> Vec<String> {
    let mut client = postgres::Client::connect(&fleet.database.url(), postgres::NoTls).unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(tables.contains(&"store_keys".to_owned()), "{tables:?}");
    let mut rows = Vec::new();
    for table in tables {
        for row in client
            .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
            .unwrap()
        {
            rows.push(format!("{table}: {}", row.get::<_, String>(0)));
        }
    }
    rows
}

/// An instance started with keys other than the store's refuses to start, says which key the
/// store expects, and changes nothing in the store; so does one given no keys at all.
#[test]
fn an_instance_given_other_keys_refuses_to_start_and_changes_nothing() {
    let Some(base) = postgres() else { return };
    let fleet = Fleet::start(&base, 1, "2025-09-10T00:00:00Z");
    let body = allowing_signup("k1");
    assert_eq!(fleet.call(0, "POST", "/v1/accounts", Some(body)).0, 201);
    let expected = String::from_utf8(
        custos()
            .args(["keys", "show"])
            .args(fleet.store_args(0))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let signing_id = expected
        .lines()
        .find_map(|line| line.strip_prefix("this instance signs with "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let before = dump(&fleet);
    let other_keys = fleet.folder.path().join("other-keys");
    let made = custos()
        .args(["keys", "create", "--out"])
        .arg(&other_keys)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    for keys in [Some(other_keys.as_path()), None] {
        let fresh = tempfile::tempdir().unwrap();
        let mut command = custos();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(fresh.path())
            .args(["--database", &fleet.database.url()]);
        if let Some(keys) = keys {
            command.arg("--keys").arg(keys);
        }
        let output = command.output().unwrap();
        assert!(
            !output.status.success(),
            "an instance with {keys:?} started"
        );
        let said = stderr(&output);
        assert!(
            said.contains(&format!("expects signing key {signing_id}")),
            "{said}"
        );
        assert_eq!(
            dump(&fleet),
            before,
            "the refused instance changed the store"
        );
    }
}

/// `custos keys rotate` while two instances run: the store signs with the new key from then
/// on; an instance still holding the old one refuses to sign until restarted with the new one;
/// after restarts, writes and a checkpoint, every checkpoint and receipt verifies from every
/// instance, each naming its key.
#[test]
fn a_rotation_hands_signing_over_and_everything_still_verifies_from_every_instance() {
    let Some(base) = postgres() else { return };
    let mut fleet = Fleet::start(&base, 2, "2025-09-10T00:00:00Z");
    let body = allowing_signup("k1");
    assert_eq!(fleet.call(0, "POST", "/v1/accounts", Some(body)).0, 201);
    let choose = |fleet: &Fleet, replica: usize, allowed: bool| {
        let body = json!({"allowed": allowed, "channel": "settings", "notice": NOTICE});
        let (status, answer) = fleet.call(
            replica,
            "PUT",
            "/v1/accounts/k1/training-preference",
            Some(body),
        );
        assert_eq!(status, 200, "{answer}");
        answer["receipt"].as_str().unwrap().to_owned()
    };
    let first = choose(&fleet, 0, false);
    let checkpoint = |fleet: &Fleet, replica: usize| {
        custos()
            .args(["ledger", "checkpoint"])
            .args(fleet.store_args(replica))
            .output()
            .unwrap()
    };
    assert!(checkpoint(&fleet, 0).status.success());
    let rotated = custos()
        .args(["keys", "rotate"])
        .args(fleet.store_args(0))
        .output()
        .unwrap();
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let said = String::from_utf8(rotated.stdout).unwrap();
    let (old_id, new_id) = said
        .strip_prefix("rotated: ")
        .and_then(|rest| rest.split_once(" → "))
        .map(|(old, rest)| {
            (
                old.to_owned(),
                rest.split_whitespace().next().unwrap().to_owned(),
            )
        })
        .unwrap_or_else(|| panic!("{said}"));
    // Instance 1 still runs with the old key: it records choices, and signs nothing.
    let second = choose(&fleet, 1, true);
    let (status, refused) = fleet.call(
        1,
        "GET",
        &format!("/v1/accounts/k1/receipts/{second}"),
        None,
    );
    assert!(status >= 400, "a retired key signed a receipt: {refused}");
    fleet.replace(0);
    fleet.replace(1);
    let third = choose(&fleet, 1, false);
    assert!(checkpoint(&fleet, 1).status.success());
    for replica in 0..2 {
        assert_ledger_verifies(&fleet, replica);
    }
    let mut client = postgres::Client::connect(&fleet.database.url(), postgres::NoTls).unwrap();
    let named: Vec<String> = client
        .query("SELECT key_id FROM checkpoints ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(named, [old_id.clone(), new_id.clone()]);
    // Receipts are made on demand, by the current key; each verifies offline.
    let admin = fleet.token("auditor");
    for receipt in [first, second, third] {
        let (status, document) = call(
            &fleet.replicas[0].address,
            &admin,
            "GET",
            &format!("/v1/accounts/k1/receipts/{receipt}"),
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "{document}");
        assert_eq!(document["signature"]["keyId"], new_id.as_str());
        let file = fleet.folder.path().join(format!("{receipt}.json"));
        std::fs::write(&file, document.to_string()).unwrap();
        let verified = custos()
            .args(["receipt", "verify"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(verified.status.success(), "{}", stderr(&verified));
    }
}

/// A TCP relay between custos and PostgreSQL that the test can cut (every connection dropped,
/// new ones refused) and mend: the network failing under a running instance.
struct Relay {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn to(upstream: &str) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (accepting, kept, upstream) = (open.clone(), connections.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !accepting.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut list = kept.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay {
            port,
            open,
            connections,
        }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn mend(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// With its database out of reach, an instance keeps answering the gate from memory, answers
/// writes with 503 `store-unavailable` and `Retry-After` (promptly: no 500, no hang), fails
/// readiness but not liveness; when the database is back it reconnects by itself, and nothing
/// it acknowledged is lost.
#[test]
fn with_the_database_out_of_reach_the_gate_answers_writes_say_retry_and_all_recovers() {
    let Some(base) = postgres() else { return };
    let fleet = Fleet::start(&base, 1, "2025-09-10T00:00:00Z");
    let config: postgres::Config = fleet.database.url().parse().unwrap();
    let upstream = match (config.get_hosts().first(), config.get_ports().first()) {
        (Some(postgres::config::Host::Tcp(host)), Some(port)) => format!("{host}:{port}"),
        _ => "127.0.0.1:5432".to_owned(),
    };
    let relay = Relay::to(&upstream);
    // libpq form adds a host for each `host=`: the relayed URL is written whole.
    let url = format!(
        "host=127.0.0.1 port={} user={} dbname={} connect_timeout=2",
        relay.port,
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap()
    );
    let data = fleet.folder.path().join("relayed");
    let args = [
        "--database".to_owned(),
        url,
        "--keys".to_owned(),
        fleet.keys().display().to_string(),
        "--max-gate-lag".to_owned(),
        "500ms".to_owned(),
    ];
    let (child, address) = spawn_serve(&data, &args, fleet.now, None);
    let _server = Killed(child);
    let ask = |method: &str, path: &str, body: Option<Value>| {
        let started = Instant::now();
        let (status, answer) = call(&address, &fleet.service, method, path, body).unwrap();
        (status, answer, started.elapsed())
    };
    let signup = |id: &str| {
        let body = allowing_signup(id);
        ask("POST", "/v1/accounts", Some(body))
    };
    assert_eq!(signup("before").0, 201);
    relay.cut();
    let (status, answer, took) = signup("during");
    assert_eq!(
        (status, answer["type"].as_str()),
        (503, Some("store-unavailable")),
        "{answer}"
    );
    assert!(
        took < Duration::from_secs(5),
        "a write waited {took:?} for a database out of reach"
    );
    let head = try_http(
        &address,
        "POST",
        "/v1/accounts",
        &[("Authorization", &format!("Bearer {}", fleet.service))],
        Some(&json!({"id": "during", "plan": "api"}).to_string()),
    )
    .unwrap();
    assert_eq!(head.status, 503);
    assert!(
        head.header("retry-after").parse::<u32>().is_ok(),
        "{}",
        head.head
    );
    let (status, gate, _) = ask("GET", "/v1/accounts/before/gate", None);
    assert_eq!(
        (status, gate["decision"].as_str()),
        (200, Some("allow")),
        "{gate}"
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        try_http(&address, "GET", "/readyz", &[], None)
            .unwrap()
            .status,
        503
    );
    assert_eq!(
        try_http(&address, "GET", "/healthz", &[], None)
            .unwrap()
            .status,
        200
    );
    relay.mend();
    let since = Instant::now();
    let mut status = 0;
    while since.elapsed() < Duration::from_secs(10) {
        status = signup("after").0;
        if status == 201 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status, 201, "the instance did not reconnect by itself");
    let since = Instant::now();
    while try_http(&address, "GET", "/readyz", &[], None)
        .unwrap()
        .status
        != 200
    {
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still not ready after the database came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (id, expected) in [("before", 200), ("during", 404), ("after", 200)] {
        assert_eq!(
            fleet.call(0, "GET", &format!("/v1/accounts/{id}"), None).0,
            expected,
            "{id}"
        );
    }
}

/// An export taken through one instance is the store's: another instance follows it to its
/// end, lists it, verifies its files, and lists its revocations after a withdrawal it records.
#[test]
fn an_export_taken_through_one_instance_is_read_verified_and_revoked_through_another() {
    let Some(base) = postgres() else { return };
    let fleet = Fleet::start(&base, 2, "2025-09-10T00:00:00Z");
    let trainer = fleet.token("trainer");
    let body = allowing_signup("x1");
    assert_eq!(fleet.call(0, "POST", "/v1/accounts", Some(body)).0, 201);
    let events = json!({"events": [{"id": "m1", "type": "message", "at": "2025-09-10T00:00:00Z",
        "account": "x1", "conversation": "c-x1", "surface": "chat", "role": "user", "text": "hello"}]});
    let (status, answer) = fleet.call(0, "POST", "/v1/events", Some(events));
    assert_eq!(
        (status, &answer["results"][0]["status"]),
        (200, &json!("accepted")),
        "{answer}"
    );
    for replica in 0..2 {
        let clock = json!({"now": "2025-09-11T00:00:00Z"});
        let (status, answer) = call(
            &fleet.replicas[replica].address,
            &fleet.admin,
            "PUT",
            "/v1/admin/clock",
            Some(clock),
        )
        .unwrap();
        assert_eq!(status, 200, "{answer}");
    }
    let as_trainer = |replica: usize, method: &str, path: &str, body: Option<Value>| {
        call(
            &fleet.replicas[replica].address,
            &trainer,
            method,
            path,
            body,
        )
        .unwrap()
    };
    let request = json!({"purpose": "model_training", "format": "jsonl", "destination": "shared"});
    let (status, started) = as_trainer(0, "POST", "/v1/exports", Some(request));
    assert_eq!(status, 202, "{started}");
    let id = started["snapshot_id"].as_str().unwrap().to_owned();
    let since = Instant::now();
    let manifest = loop {
        let (status, read) = as_trainer(1, "GET", &format!("/v1/exports/{id}"), None);
        assert_eq!(status, 200, "{read}");
        match read["status"].as_str() {
            Some("done") => break read["manifest"].clone(),
            Some("running") | Some("incomplete") if since.elapsed() < SEEN_WITHIN * 4 => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => panic!("export {id} through the other instance: {read}"),
        }
    };
    assert_eq!(manifest["conversations"]["included"], 1, "{manifest}");
    let (_, listed) = as_trainer(1, "GET", "/v1/exports", None);
    assert!(
        listed["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["snapshot_id"] == id.as_str()),
        "{listed}"
    );
    let out = fleet.replicas[0].data.join("exports").join("shared");
    let verified = custos()
        .args(["export", "verify"])
        .args(fleet.store_args(1))
        .arg(&out)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", stderr(&verified));
    let withdraw = json!({"allowed": false, "channel": "settings", "notice": NOTICE});
    assert_eq!(
        fleet
            .call(
                1,
                "PUT",
                "/v1/accounts/x1/training-preference",
                Some(withdraw)
            )
            .0,
        200
    );
    let (status, revoked) = as_trainer(1, "GET", &format!("/v1/exports/{id}/revocations"), None);
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["rows"], 1, "{revoked}");
    assert_eq!(revoked["revoked"][0]["reason"], "withdrawn", "{revoked}");
}

/// A promoted standby takes over: with the primary stopped at once under a writer, custos
/// answers 503 with `Retry-After` (never another 5xx), reconnects by itself to the standby once
/// it is promoted (a multi-host connection string with `target_session_attrs=read-write`), and
/// every write it acknowledged is there, because the standby is synchronous.
///
/// It needs the primary and standby of `scripts/postgres-replicas.sh`, which it makes itself
/// when `CUSTOS_TEST_REPLICATION=1` (CI sets it); otherwise it says on stderr that it did not run.
#[test]
fn a_promoted_standby_takes_over_and_no_acknowledged_write_is_lost() {
    use std::io::Write;
    if std::env::var("CUSTOS_TEST_REPLICATION").as_deref() != Ok("1") {
        let _ = writeln!(
            std::io::stderr(),
            "replicas: the failover test did NOT run: set CUSTOS_TEST_REPLICATION=1 to let it make \
             a primary and standby with scripts/postgres-replicas.sh (ports 5433 and 5434)"
        );
        return;
    }
    let script = crate::support::repo_root().join("scripts/postgres-replicas.sh");
    let pair = |what: &str| {
        let output = std::process::Command::new(&script)
            .arg(what)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "postgres-replicas.sh {what}: {}",
            stderr(&output)
        );
    };
    pair("up");
    let url = "host=127.0.0.1,127.0.0.1 port=5433,5434 user=postgres dbname=postgres \
               target_session_attrs=read-write connect_timeout=2";
    let folder = tempfile::tempdir().unwrap();
    let keys = folder.path().join("keys");
    let made = custos()
        .args(["keys", "create", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let data = folder.path().join("data");
    let store_args = |data: &std::path::Path| -> Vec<std::ffi::OsString> {
        vec![
            "--data".into(),
            data.into(),
            "--database".into(),
            url.into(),
            "--keys".into(),
            keys.clone().into(),
        ]
    };
    let token = custos()
        .args(["token", "create", "--role", "service"])
        .args(store_args(&data))
        .output()
        .unwrap();
    assert!(token.status.success(), "{}", stderr(&token));
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let args = [
        "--database".to_owned(),
        url.to_owned(),
        "--keys".to_owned(),
        keys.display().to_string(),
    ];
    let (child, address) = spawn_serve(&data, &args, "2025-09-10T00:00:00Z", None);
    let _server = Killed(child);
    let signup = allowing_signup("f1");
    assert_eq!(
        call(&address, &token, "POST", "/v1/accounts", Some(signup))
            .unwrap()
            .0,
        201
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (address, token, stop) = (address.clone(), token.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut acknowledged, mut unavailable, mut after_outage) = (Vec::new(), 0, 0);
            let mut slowest = Duration::ZERO;
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let body = json!({"allowed": i % 2 == 0, "channel": "settings", "notice": NOTICE})
                    .to_string();
                let authorization = format!("Bearer {token}");
                let started = Instant::now();
                let reply = try_http(
                    &address,
                    "PUT",
                    "/v1/accounts/f1/training-preference",
                    &[("Authorization", &authorization)],
                    Some(&body),
                )
                .unwrap();
                slowest = slowest.max(started.elapsed());
                match reply.status {
                    200 => {
                        let answer: Value = serde_json::from_str(&reply.body).unwrap();
                        acknowledged.push(answer["receipt"].as_str().unwrap().to_owned());
                        if unavailable > 0 {
                            after_outage += 1;
                        }
                    }
                    503 => {
                        assert!(
                            reply.header("retry-after").parse::<u32>().is_ok(),
                            "{}",
                            reply.head
                        );
                        unavailable += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => panic!(
                        "a write during failover was answered {other}: {}",
                        reply.body
                    ),
                }
            }
            (acknowledged, unavailable, after_outage, slowest)
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    // An outage: no primary for a few seconds, then the standby is promoted.
    pair("stop-primary");
    std::thread::sleep(Duration::from_secs(3));
    pair("promote");
    // Writes go on on the promoted standby, without restarting custos.
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acknowledged, unavailable, after_outage, slowest) = writer.join().unwrap();
    let _ = writeln!(
        std::io::stderr(),
        "replicas: failover: {} writes acknowledged, {unavailable} answered 503, {after_outage} acknowledged after the outage; slowest answer {slowest:?}",
        acknowledged.len()
    );
    assert!(
        unavailable > 0,
        "no write met the outage: the test proved nothing"
    );
    assert!(
        after_outage > 0,
        "custos did not reconnect to the promoted standby"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "an answer took {slowest:?}: a write must not hang"
    );
    let (status, history) = call(
        &address,
        &token,
        "GET",
        "/v1/accounts/f1/training-preference/history",
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{history}");
    let hashes: std::collections::BTreeSet<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["hash"].as_str())
        .collect();
    for receipt in &acknowledged {
        assert!(
            hashes.contains(receipt.as_str()),
            "acknowledged choice {receipt} was lost in the failover"
        );
    }
    let verified = custos()
        .args(["ledger", "verify"])
        .args(store_args(&data))
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", stderr(&verified));
    pair("down");
}
