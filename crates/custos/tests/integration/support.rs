//! Small helpers that run the real `custos` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn custos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_custos"))
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `custos scenario run` on a scenario made of `steps` (and optional extra top-level
/// fields), written to a fresh temporary folder together with `files`.
pub fn run_scenario(document: &Value, files: &[(&str, &str)]) -> Output {
    let folder = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(folder.path().join(name), text).unwrap();
    }
    let path = folder.path().join("scenario.json");
    std::fs::write(&path, serde_json::to_vec_pretty(document).unwrap()).unwrap();
    custos()
        .args(["scenario", "run"])
        .arg(&path)
        .output()
        .unwrap()
}

pub fn run_scenario_text(text: &str) -> (Output, PathBuf, tempfile::TempDir) {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("scenario.json");
    std::fs::write(&path, text).unwrap();
    let output = custos()
        .args(["scenario", "run"])
        .arg(&path)
        .output()
        .unwrap();
    (output, path, folder)
}
