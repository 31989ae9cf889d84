//! docs/API.md against the service itself: its routes with who may call them against
//! `/openapi.json`, its problem slugs against those the code answers, its reason codes against
//! the core's. A route, slug or code added on one side and not the other fails here.

use std::collections::BTreeSet;

use custos_core::{
    EligibilityReason, ExpiryBound, GateDecision, GateReason, RetentionClass, RevocationReason,
};

use crate::http::Server;
use crate::support::repo_root;

fn api_doc() -> String {
    std::fs::read_to_string(repo_root().join("docs/API.md")).unwrap()
}

/// The cells of each row of the table whose header row starts with `first_header`.
fn table(doc: &str, first_header: &str) -> Vec<Vec<String>> {
    let mut lines = doc
        .lines()
        .skip_while(|l| !l.starts_with(&format!("| {first_header} |")));
    lines
        .next()
        .unwrap_or_else(|| panic!("no table headed `{first_header}`"));
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

fn unquoted(cell: &str) -> &str {
    cell.trim_matches('`')
}

#[test]
fn every_route_and_who_may_call_it_is_documented_as_served() {
    let server = Server::start("2025-10-01T00:00:00Z");
    let document = server.call("GET", "/openapi.json", None, None).body;
    let mut served = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let description = operation["description"].as_str().unwrap();
            let who = description
                .strip_prefix("Who may call it: ")
                .and_then(|rest| rest.split_once(". "))
                .map(|(who, _)| who.to_owned())
                .unwrap();
            served.insert((method.to_uppercase(), path.clone(), who));
        }
    }
    let documented: BTreeSet<(String, String, String)> = table(&api_doc(), "method and path")
        .iter()
        .map(|row| {
            let (method, path) = unquoted(&row[0]).split_once(' ').unwrap();
            (method.to_owned(), path.to_owned(), row[1].clone())
        })
        .collect();
    assert!(served.len() > 25, "{served:?}");
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "documented in docs/API.md but not served so"
    );
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "served but not documented so in docs/API.md"
    );
}

/// The slugs the code can answer with: the core's refusals, and every problem the service makes.
fn slugs_in_code() -> BTreeSet<String> {
    let root = repo_root().join("crates");
    let mut sources = Vec::new();
    let mut pending = vec![root.join("custos-http/src")];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push(path);
            }
        }
    }
    let patterns = [
        regex::Regex::new(r#"StatusCode::[A-Z_]+,\s*"([a-z][a-z-]*)""#).unwrap(),
        regex::Regex::new(r#"not_found\(\s*"([a-z][a-z-]*)""#).unwrap(),
        regex::Regex::new(r#"unavailable\(\s*"([a-z][a-z-]*)""#).unwrap(),
    ];
    let arms = regex::Regex::new(r#"=> "([a-z][a-z-]*)""#).unwrap();
    let mut slugs = BTreeSet::new();
    for path in &sources {
        let text = std::fs::read_to_string(path).unwrap();
        for pattern in &patterns {
            slugs.extend(pattern.captures_iter(&text).map(|c| c[1].to_owned()));
        }
        // The match arms that name slugs: the rejections of extractors and of other layers.
        let name = path.file_name().unwrap().to_str().unwrap();
        if ["problem.rs", "middleware.rs", "extract.rs"].contains(&name) {
            slugs.extend(arms.captures_iter(&text).map(|c| c[1].to_owned()));
        }
    }
    let admission = std::fs::read_to_string(root.join("custos-core/src/admission.rs")).unwrap();
    slugs.extend(arms.captures_iter(&admission).map(|c| c[1].to_owned()));
    slugs
}

#[test]
fn every_problem_slug_the_service_answers_is_documented_and_no_other() {
    let documented: BTreeSet<String> = table(&api_doc(), "slug")
        .iter()
        .map(|row| unquoted(&row[0]).to_owned())
        .collect();
    let answered = slugs_in_code();
    assert!(
        answered.len() > 30,
        "only {} slugs found in the code: {answered:?}",
        answered.len()
    );
    assert_eq!(
        documented, answered,
        "docs/API.md's problem slugs and the code's differ"
    );
}

#[test]
fn every_reason_code_of_the_core_is_documented_in_rule_order() {
    let rows = table(&api_doc(), "decision");
    let codes = |decision: &str| -> Vec<String> {
        let row = rows
            .iter()
            .find(|row| row[0].starts_with(decision))
            .unwrap_or_else(|| panic!("no reason codes of `{decision}`"));
        row[1].split(", ").map(|c| unquoted(c).to_owned()).collect()
    };
    let names = |all: &[&str]| all.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        codes("gate `reason`"),
        names(
            &GateReason::ALL
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        codes("gate `decision`"),
        names(
            &GateDecision::ALL
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        codes("eligibility"),
        names(
            &EligibilityReason::ALL
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        codes("`retention_class`"),
        names(
            &RetentionClass::ALL
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        codes("the step of Expiry"),
        names(
            &ExpiryBound::ALL
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        codes("revocation"),
        names(
            &RevocationReason::ALL
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
        )
    );
}

/// The repository's docs stand alone: no link or path leads out of it.
#[test]
fn no_doc_of_the_repository_points_outside_it() {
    let mut docs = vec![
        repo_root().join("README.md"),
        repo_root().join("ARCHITECTURE.md"),
        repo_root().join("BENCHMARKS.md"),
    ];
    for entry in std::fs::read_dir(repo_root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        for outside in [
            "../shared",
            "SPEC.md",
            "SPEC §",
            "(../",
            "DEVELOPERS.md",
            "issue 1",
            "issue 2",
            "issue 3",
            "issue 4",
            "issue 5",
            "issue 6",
            "issue 7",
            "issue 8",
            "issue 9",
        ] {
            assert!(
                !text.contains(outside),
                "{} points outside the repository: `{outside}`",
                doc.display()
            );
        }
    }
}
