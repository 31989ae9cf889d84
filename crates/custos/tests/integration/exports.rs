//! Training exports from the command line: `custos export`, `export verify` and `export
//! revocations` on demo data, and the refusals (R9) with their exit codes.

use std::path::Path;

use serde_json::Value;

use crate::support::{assert_no_partial_files, custos, stderr, stdout};

const NOW: &str = "2026-06-01T00:00:00Z";

fn custos_in(data: &Path, args: &[&str]) -> std::process::Output {
    custos()
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}

#[test]
fn the_cli_exports_verifies_and_lists_revocations_and_refuses_outside_the_root() {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    let demo = custos()
        .args([
            "demo",
            "--accounts",
            "300",
            "--conversations",
            "1500",
            "--now",
            NOW,
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(demo.status.success(), "{}", stderr(&demo));
    let root = folder.path().join("training");
    let out = root.join("june");
    let export = custos()
        .args([
            "export",
            "--cutoff",
            "2026-05-01T00:00:00Z",
            "--now",
            NOW,
            "--format",
            "parquet",
            "--data",
        ])
        .arg(&data)
        .arg("--export-root")
        .arg(&root)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", stderr(&export));
    assert!(
        stdout(&export).contains("conversations included"),
        "{}",
        stdout(&export)
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let included = manifest["conversations"]["included"].as_u64().unwrap();
    assert!(included > 100, "{manifest}");
    assert_eq!(manifest["policy"]["id"], "consumer-terms-2025");
    assert!(
        manifest["ledger_checkpoint"]["root"].is_string(),
        "{manifest}"
    );

    let verify = custos_in(&data, &["export", "verify", out.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert!(stdout(&verify).contains("signature valid"));

    // Five years on, every row has expired; now, none is revoked.
    let id = manifest["snapshot_id"].as_str().unwrap();
    let none = custos_in(
        &data,
        &["export", "revocations", "--snapshot", id, "--now", NOW],
    );
    assert!(none.status.success(), "{}", stderr(&none));
    assert_eq!(stdout(&none), "");
    let later = custos_in(
        &data,
        &[
            "export",
            "revocations",
            "--snapshot",
            id,
            "--now",
            "2032-01-01T00:00:00Z",
        ],
    );
    let lines: Vec<Value> = stdout(&later)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, included);
    assert!(lines.iter().all(|l| l["reason"] == "expired"));

    // Outside the root, another purpose, or a cutoff after now: refused with exit code 2, and
    // nothing written.
    let elsewhere = folder.path().join("elsewhere");
    for extra in [
        vec!["--out", elsewhere.to_str().unwrap()],
        vec!["--out", out.to_str().unwrap()],
        vec![
            "--out",
            root.join("x").to_str().unwrap(),
            "--purpose",
            "advertising",
        ],
        vec![
            "--out",
            root.join("y").to_str().unwrap(),
            "--cutoff",
            "2026-07-01T00:00:00Z",
        ],
    ] {
        let mut command = custos();
        command
            .args(["export", "--now", NOW, "--data"])
            .arg(&data)
            .arg("--export-root")
            .arg(&root);
        if !extra.contains(&"--cutoff") {
            command.args(["--cutoff", NOW]);
        }
        let refused = command.args(&extra).output().unwrap();
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{extra:?}: {}",
            stderr(&refused)
        );
        assert!(
            stderr(&refused).contains("refused") || stderr(&refused).contains("later than now"),
            "{}",
            stderr(&refused)
        );
    }
    assert!(!elsewhere.exists() && !root.join("x").exists() && !root.join("y").exists());
    let unknown = custos_in(&data, &["export", "revocations", "--snapshot", "exp-00"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
}

/// Ctrl-C during `custos export` stops it cleanly: it exits with an error that says so, and
/// leaves no partial file (or, had it finished first, a whole export that verifies).
#[test]
fn an_interrupted_cli_export_removes_what_it_wrote() {
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("data");
    let demo = custos()
        .args(["demo", "--accounts", "5000", "--conversations", "50000"])
        .args(["--now", NOW, "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(demo.status.success(), "{}", stderr(&demo));
    let out = data.join("exports/interrupted");
    let child = custos()
        .args(["export", "--cutoff", NOW, "--now", NOW, "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The folder appears once the request is accepted, after the signal handlers are in place.
    let waiting = std::time::Instant::now();
    while !out.exists() && waiting.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = child.wait_with_output().unwrap();

    assert_no_partial_files(&data.join("exports"));
    if output.status.success() {
        let verify = custos_in(&data, &["export", "verify", out.to_str().unwrap()]);
        assert!(verify.status.success(), "{}", stderr(&verify));
    } else {
        assert!(
            stderr(&output).contains("stopped before it finished"),
            "{}",
            stderr(&output)
        );
        assert!(!out.exists(), "the stopped export removed its folder");
    }
}
