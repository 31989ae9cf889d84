//! The API against its own OpenAPI document, checked by a generator we did not write:
//! schemathesis (pinned in `tests/contract/requirements.txt`) runs every check it has, in every
//! phase (examples, coverage, positive and negative fuzzing, stateful sequences through the
//! document's links), against a live server on demo data, once for each role's token, and
//! must report no failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::custos;

/// schemathesis in a virtual environment under the target folder, made from PyPI on first use
/// (`CUSTOS_TEST_SCHEMATHESIS` names another). Fails loudly if it can't be had.
fn schemathesis() -> PathBuf {
    if let Ok(path) = std::env::var("CUSTOS_TEST_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    let program = venv.join("bin/schemathesis");
    let ready = || {
        Command::new(&program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready() {
        let run = |command: &mut Command| {
            let output = command.output().unwrap_or_else(|e| {
                panic!("the contract test needs python3 with venv and pip: {e}")
            });
            assert!(
                output.status.success(),
                "installing schemathesis from PyPI failed (the contract test can't run):\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        let requirements =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract/requirements.txt");
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(requirements));
        assert!(ready(), "schemathesis was installed but does not run");
    }
    program
}

/// A `custos serve --demo` on a fresh folder: its address and the token it printed per role.
struct DemoServer {
    child: std::process::Child,
    address: String,
    tokens: Vec<(String, String)>,
    _folder: tempfile::TempDir,
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn demo_server() -> DemoServer {
    let folder = tempfile::tempdir().unwrap();
    let mut child = custos()
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--data"])
        .arg(folder.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut tokens = Vec::new();
    let address = loop {
        let line = lines.next().expect("the demo server stopped").unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [role, "token" | "token:", ..] = words.as_slice() {
            tokens.push(((*role).to_owned(), (*words.last().unwrap()).to_owned()));
        }
        if let Some(address) = line.strip_prefix("custos: serving ") {
            break address.split_whitespace().next().unwrap().to_owned();
        }
    };
    // What the server prints later (the pages' addresses) is read and let go.
    std::thread::spawn(move || lines.for_each(drop));
    DemoServer {
        child,
        address,
        tokens,
        _folder: folder,
    }
}

#[test]
fn schemathesis_finds_no_failure_for_any_role() {
    let program = schemathesis();
    let server = demo_server();
    let roles: Vec<&str> = server
        .tokens
        .iter()
        .map(|(role, _)| role.as_str())
        .collect();
    assert_eq!(roles, ["service", "user", "trainer", "auditor", "admin"]);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract/schemathesis.toml");
    let mut failed = Vec::new();
    for (number, (role, token)) in server.tokens.iter().enumerate() {
        // A fixed seed per role: a failure here can be replayed exactly.
        let seed = 2025 + number;
        let output = Command::new(&program)
            // schemathesis keeps a cache of what it found in its working folder: keep it out of
            // the checkout.
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .arg("--config-file")
            .arg(&config)
            .args(["run", &format!("{}/openapi.json", server.address)])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args([
                "--checks",
                "all",
                // One worker: with two threads, CPython 3.11's `ast.parse` (which Hypothesis
                // calls to describe its strategies) shares its depth counter between threads and
                // fails now and then with "AST constructor recursion depth mismatch"
                // (python/cpython#106905); a failure of the tool, not of custos.
                "--workers",
                "1",
                "--seed",
                &seed.to_string(),
            ])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&output.stdout);
        let summary = report
            .lines()
            .filter(|l| l.contains(" generated, ") || l.starts_with("=="))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        eprintln!("schemathesis as {role} (seed {seed}): {summary}");
        let ran = report.contains("generated") && report.contains("Stateful");
        if !output.status.success() || !ran {
            failed.push(format!(
                "--- as {role} (seed {seed}):\n{report}\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
