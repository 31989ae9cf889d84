//! `custos policy check`: 0 and a summary for a good file; 2 and file:line:column for a bad one.

use crate::support::{custos, repo_root, stderr, stdout};

#[test]
fn the_bundled_policy_checks_and_is_summarized() {
    let path = repo_root().join("policies/consumer-terms-2025.toml");
    let output = custos()
        .args(["policy", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let summary = stdout(&output);
    for expected in [
        ": ok",
        "consumer-terms-2025",
        "2025-08-28T00:00:00.000Z",
        "2025-09-29T00:00:00.000Z",
        "free, pro, max",
        "team, enterprise, gov, education, api, api_bedrock, api_vertex",
        "extended 5y, standard 30d, deletion grace 30d, withdrawal cap 30d",
        "content = whole",
    ] {
        assert!(
            summary.contains(expected),
            "summary lacks {expected}: {summary}"
        );
    }
}

#[test]
fn the_compiled_in_policy_is_the_file_in_the_repository() {
    let output = custos().args(["policy", "show"]).output().unwrap();
    let file =
        std::fs::read_to_string(repo_root().join("policies/consumer-terms-2025.toml")).unwrap();
    assert_eq!(stdout(&output), file);
}

#[test]
fn bad_policies_exit_2_with_file_line_column_and_what_is_wrong() {
    let good =
        std::fs::read_to_string(repo_root().join("policies/consumer-terms-2025.toml")).unwrap();
    let line_of = |needle: &str| good[..good.find(needle).unwrap()].matches('\n').count() + 1;
    let cases = [
        (
            "\"max\"",
            "\"max\", \"Max Plus\"",
            "consumer = ",
            "plan name",
        ),
        (
            "\"team\"",
            "\"free\"",
            "business = ",
            "in both the consumer and the business list",
        ),
        (
            "choose_by = 2025-09-29T00:00:00Z",
            "choose_by = 2025-08-27T00:00:00Z",
            "choose_by = ",
            "before effective",
        ),
        (
            "standard = \"30d\"",
            "standard = \"30 days\"",
            "standard = ",
            "is not a duration",
        ),
        (
            "[retention]",
            "[retention]\nforever = true",
            "[retention]",
            "unknown field `forever`",
        ),
        (
            "id = \"consumer-terms-2025\"",
            "id = \"consumer terms\"",
            "id = ",
            "not a valid policy id",
        ),
    ];
    for (from, to, marker, reason) in cases {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("bad.toml");
        std::fs::write(&path, good.replacen(from, to, 1)).unwrap();
        let output = custos()
            .args(["policy", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{to}: {err}");
        let mut line = line_of(marker);
        if marker == "[retention]" {
            line += 1; // the unknown key sits on the line after the table header
        }
        let location = format!("{}:{line}:", path.display());
        assert!(
            err.contains(&location),
            "{to}: should point at {location}: {err}"
        );
        assert!(err.contains(reason), "{to}: should say {reason}: {err}");
    }
}

#[test]
fn a_missing_policy_file_exits_2() {
    let output = custos()
        .args(["policy", "check", "/nonexistent/p.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/p.toml"));
}
