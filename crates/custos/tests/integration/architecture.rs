//! Architecture invariants checked on every test run (ARCHITECTURE.md).

use std::collections::{BTreeSet, HashMap};

use crate::support::repo_root;

/// custos-core does no I/O: it must never depend, even transitively, on a runtime, a database
/// driver or a web framework. Read from Cargo.lock, which lists every dependency edge.
#[test]
fn the_core_crate_depends_on_no_runtime_database_or_web_crate() {
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap()).unwrap();
    let mut edges: HashMap<String, Vec<String>> = HashMap::new();
    for package in lock["package"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap().to_owned();
        let deps: Vec<String> = package
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|deps| {
                deps.iter()
                    // An entry is "name" or "name version" when several versions are locked.
                    .map(|d| d.as_str().unwrap().split(' ').next().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        edges.entry(name).or_default().extend(deps);
    }
    let mut reached = BTreeSet::new();
    let mut queue = vec!["custos-core".to_owned()];
    while let Some(name) = queue.pop() {
        if reached.insert(name.clone()) {
            queue.extend(edges.get(&name).cloned().unwrap_or_default());
        }
    }
    assert!(reached.len() > 1, "custos-core was not found in Cargo.lock");
    let forbidden = [
        "tokio",
        "rusqlite",
        "libsqlite3-sys",
        "postgres",
        "tokio-postgres",
        "axum",
        "hyper",
        "mio",
        "reqwest",
    ];
    let found: Vec<_> = forbidden.iter().filter(|f| reached.contains(**f)).collect();
    assert!(
        found.is_empty(),
        "custos-core depends on {found:?}; the core must stay pure"
    );
}

/// The modules of one crate and the modules each takes names from, read from its sources.
struct ModuleGraph {
    /// Module path (`pages::person`; the crate root is empty) → its file, relative to `src/`.
    files: std::collections::BTreeMap<String, String>,
    /// (from, to) → the names `from` takes from `to`.
    edges: std::collections::BTreeMap<(String, String), BTreeSet<String>>,
}

/// The text with comments, strings and character literals blanked (line breaks kept), so that
/// only code is read.
fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize, s: &str| {
        s.chars()
            .enumerate()
            .all(|(k, c)| chars.get(i + k) == Some(&c))
    };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let skip = if at(i, "//") {
            (i..chars.len())
                .find(|&k| chars[k] == '\n')
                .unwrap_or(chars.len())
                - i
        } else if at(i, "/*") {
            (i + 2..chars.len())
                .find(|&k| at(k, "*/"))
                .map_or(chars.len(), |k| k + 2)
                - i
        } else if at(i, "r\"") || at(i, "r#") {
            let hashes = (i + 1..chars.len())
                .take_while(|&k| chars[k] == '#')
                .count();
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            (i + 2 + hashes..chars.len())
                .find(|&k| at(k, &close))
                .map_or(chars.len(), |k| k + close.chars().count())
                - i
        } else if chars[i] == '"' {
            let mut k = i + 1;
            while k < chars.len() && chars[k] != '"' {
                k += if chars[k] == '\\' { 2 } else { 1 };
            }
            (k + 1).min(chars.len()) - i
        } else if chars[i] == '\'' && chars.get(i + 1) == Some(&'\\') {
            (i + 2..chars.len())
                .find(|&k| chars[k] == '\'')
                .map_or(0, |k| k + 1 - i)
        } else if chars[i] == '\'' && chars.get(i + 2) == Some(&'\'') {
            3 // a character literal; 'a alone is a lifetime
        } else {
            0
        };
        if skip == 0 {
            out.push(chars[i]);
            i += 1;
        } else {
            out.extend(
                chars[i..i + skip]
                    .iter()
                    .map(|c| if *c == '\n' { '\n' } else { ' ' }),
            );
            i += skip;
        }
    }
    out
}

fn tokens_of(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            tokens.push("::".into());
        } else if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    tokens.extend((!word.is_empty()).then_some(word));
    tokens
}

/// A path as written (`crate::a::b::C`), with the inline modules (`mod tests { … }`) it is
/// written inside.
struct WrittenPath {
    inside: Vec<String>,
    segments: Vec<String>,
}

/// Every path in `tokens`, each `use` group expanded: `crate::a::{b::C, d}` gives
/// `crate::a::b::C` and `crate::a::d`.
fn paths_of(tokens: &[String]) -> Vec<WrittenPath> {
    let mut found = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i].as_str();
        if token == "mod" && tokens.get(i + 2).is_some_and(|t| t == "{") {
            inline.push((tokens[i + 1].clone(), depth));
            depth += 1;
            i += 3;
            continue;
        }
        if token == "{" {
            depth += 1;
        } else if token == "}" {
            depth = depth.saturating_sub(1);
            if inline.last().is_some_and(|(_, at)| *at == depth) {
                inline.pop();
            }
        }
        let starts = tokens.get(i + 1).is_some_and(|t| t == "::")
            && (i == 0 || tokens[i - 1] != "::")
            && token.starts_with(|c: char| c.is_alphabetic() || c == '_');
        if starts {
            let inside: Vec<String> = inline.iter().map(|(name, _)| name.clone()).collect();
            let mut at = i + 1;
            path_rest(tokens, &mut at, vec![token.to_owned()], &inside, &mut found);
            i = at;
        } else {
            i += 1;
        }
    }
    found
}

/// Reads a path on from `at` (a `::`), given the segments so far.
fn path_rest(
    tokens: &[String],
    at: &mut usize,
    mut segments: Vec<String>,
    inside: &[String],
    found: &mut Vec<WrittenPath>,
) {
    while tokens.get(*at).is_some_and(|t| t == "::") {
        let Some(next) = tokens.get(*at + 1) else {
            break;
        };
        if next == "{" {
            *at += 2;
            while let Some(item) = tokens.get(*at) {
                match item.as_str() {
                    "}" => break,
                    "," => *at += 1,
                    _ => {
                        let mut inner = segments.clone();
                        inner.push(item.clone());
                        *at += 1;
                        path_rest(tokens, at, inner, inside, found);
                        // Past an `as` rename, up to the next item.
                        while tokens.get(*at).is_some_and(|t| t != "," && t != "}") {
                            *at += 1;
                        }
                    }
                }
            }
            *at += 1;
            return;
        }
        if !next.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            break;
        }
        segments.push(next.clone());
        *at += 2;
    }
    found.push(WrittenPath {
        inside: inside.to_vec(),
        segments,
    });
}

impl ModuleGraph {
    fn of_crate(src: &std::path::Path) -> ModuleGraph {
        let root = ["lib.rs", "main.rs"]
            .into_iter()
            .find(|f| src.join(f).exists())
            .unwrap();
        let mut files = std::collections::BTreeMap::new();
        let mut tokens = std::collections::BTreeMap::new();
        let mut pending = vec![(String::new(), root.to_owned())];
        while let Some((module, file)) = pending.pop() {
            let these = tokens_of(&code_of(&std::fs::read_to_string(src.join(&file)).unwrap()));
            // Children of `a.rs` live in `a/`; of `lib.rs`, `main.rs` and `mod.rs` beside them.
            let folder = match file.rsplit_once('/') {
                _ if file == root => String::new(),
                Some((folder, "mod.rs")) => format!("{folder}/"),
                _ => format!("{}/", file.trim_end_matches(".rs")),
            };
            for window in these.windows(3) {
                if window[0] == "mod" && window[2] == ";" {
                    let name = &window[1];
                    let child = if module.is_empty() {
                        name.clone()
                    } else {
                        format!("{module}::{name}")
                    };
                    let as_file = format!("{folder}{name}.rs");
                    let path = if src.join(&as_file).exists() {
                        as_file
                    } else {
                        format!("{folder}{name}/mod.rs")
                    };
                    assert!(
                        src.join(&path).exists(),
                        "{}: `mod {name};` has no file",
                        src.display()
                    );
                    pending.push((child, path));
                }
            }
            files.insert(module.clone(), file);
            tokens.insert(module, these);
        }
        let mut edges: std::collections::BTreeMap<(String, String), BTreeSet<String>> =
            Default::default();
        for (module, these) in &tokens {
            let mine: Vec<String> = module
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            for path in paths_of(these) {
                let Some(target) = resolve(&mine, &path, &files) else {
                    continue;
                };
                if target != *module {
                    let name = path.segments.last().cloned().unwrap_or_default();
                    edges
                        .entry((module.clone(), target))
                        .or_default()
                        .insert(name);
                }
            }
        }
        ModuleGraph { files, edges }
    }

    /// Each group of two or more modules that import one another, directly or not.
    fn circles(&self) -> Vec<Vec<String>> {
        let reaches = |from: &String| {
            let mut seen = BTreeSet::new();
            let mut queue = vec![from.clone()];
            while let Some(next) = queue.pop() {
                for (a, b) in self.edges.keys() {
                    if *a == next && seen.insert(b.clone()) {
                        queue.push(b.clone());
                    }
                }
            }
            seen
        };
        let reach: HashMap<&String, BTreeSet<String>> =
            self.files.keys().map(|m| (m, reaches(m))).collect();
        let mut circles: Vec<Vec<String>> = Vec::new();
        for module in self.files.keys() {
            let circle: Vec<String> = self
                .files
                .keys()
                .filter(|other| reach[module].contains(*other) && reach[*other].contains(module))
                .cloned()
                .collect();
            if circle.len() > 1 && !circles.contains(&circle) {
                circles.push(circle);
            }
        }
        circles
    }

    fn describe(&self, circle: &[String]) -> String {
        let file = |m: &String| self.files.get(m).cloned().unwrap_or_default();
        self.edges
            .iter()
            .filter(|((a, b), _)| circle.contains(a) && circle.contains(b))
            .map(|((a, b), names)| format!("  {} -> {}: {names:?}", file(a), file(b)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The module a path written in module `mine` takes its last name from, if it is one of this
/// crate's: the longest prefix of the path, made absolute, that names a module. A path that
/// starts elsewhere (another crate, a type, a variant) names none.
fn resolve(
    mine: &[String],
    path: &WrittenPath,
    files: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    let mut here: Vec<String> = mine.to_vec();
    here.extend(path.inside.iter().cloned());
    let mut segments = path.segments.iter().peekable();
    let mut absolute = match segments.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segments.next();
            Vec::new()
        }
        Some("super") | Some("self") => {
            while let Some(step) = segments.peek() {
                match step.as_str() {
                    "super" => here.pop(),
                    "self" => None,
                    _ => break,
                };
                segments.next();
            }
            here
        }
        Some(first) => {
            let mut child = here.clone();
            child.push(first.to_owned());
            files.contains_key(&child.join("::")).then_some(())?;
            here
        }
        None => return None,
    };
    absolute.extend(segments.cloned());
    (0..=absolute.len())
        .rev()
        .map(|n| absolute[..n].join("::"))
        .find(|m| files.contains_key(m))
}

/// No module of any crate imports, directly or through others, a module that imports it back:
/// each crate reads as layers, from its root down.
#[test]
fn no_crate_has_a_module_import_circle() {
    let mut found = Vec::new();
    let mut modules = 0;
    for entry in std::fs::read_dir(repo_root().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        let graph = ModuleGraph::of_crate(&src);
        modules += graph.files.len();
        // A reader that found no imports would find no circles either.
        assert!(
            graph.files.len() == 1 || graph.edges.len() >= graph.files.len() - 1,
            "{}: only {} imports read between {} modules",
            src.display(),
            graph.edges.len(),
            graph.files.len()
        );
        for circle in graph.circles() {
            found.push(format!(
                "{}: {circle:?}\n{}",
                src.display(),
                graph.describe(&circle)
            ));
        }
    }
    assert!(modules > 40, "only {modules} modules were read");
    assert!(
        found.is_empty(),
        "module import circles:\n{}",
        found.join("\n")
    );
}

/// The reader above finds a circle when there is one: two modules that name each other, one
/// through a `use` group and one through a path in an expression, but not through a comment, a
/// string, or an inline test module whose `super::*` names only its own file.
#[test]
fn the_circle_check_sees_a_circle_and_only_a_circle() {
    let folder = tempfile::tempdir().unwrap();
    let src = folder.path();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\npub use a::Thing;\n").unwrap();
    std::fs::write(
        src.join("a.rs"),
        "use crate::{b::{inner::Other as O}, b};\npub struct Thing;\n#[cfg(test)]\nmod tests { use super::*; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("b/mod.rs"),
        "pub mod inner;\n// crate::a::Thing, in a comment\n",
    )
    .unwrap();
    let inner = "pub struct Other;\nfn f() -> u8 { let s = \"crate::b\"; let c = '{'; crate::a::Thing; 0 }\n";
    std::fs::write(src.join("b/inner.rs"), inner).unwrap();
    let graph = ModuleGraph::of_crate(src);
    assert_eq!(graph.files.len(), 4, "{:?}", graph.files);
    assert_eq!(
        graph.circles(),
        vec![vec!["a".to_owned(), "b::inner".to_owned()]],
        "{:?}",
        graph.edges
    );
    std::fs::write(src.join("b/inner.rs"), "pub struct Other;\n").unwrap();
    let graph = ModuleGraph::of_crate(src);
    assert!(graph.circles().is_empty(), "{:?}", graph.edges);
    assert!(
        graph
            .edges
            .contains_key(&("a".to_owned(), "b::inner".to_owned()))
    );
    assert!(graph.edges.contains_key(&(String::new(), "a".to_owned())));
}
