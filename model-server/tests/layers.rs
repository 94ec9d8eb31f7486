//! Keeps every crate of the workspace free of import circles between its files. A
//! circle (`a.rs` uses `b.rs`, which uses `a.rs`) is two modules that can only be read,
//! changed and tested together; layered modules point one way only (in this crate:
//! `service` → `oip` → `state`, never back up).
//!
//! The graph is the one the `import_circles.py` review tool builds, with the same
//! rules, read from the sources at test time: files are nodes; every
//! `crate::…`/`super::…`/`self::…` path is an edge to the file that defines the
//! longest prefix of that module path, `use crate::{a, b::C}` groups included; comments
//! and everything from the first `#[cfg(test)] mod … {` on are left out. Each crate is
//! its own `#[test]`, so a failure names the crate, and prints its circles with the
//! path that makes each edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every crate of the workspace, as its directory relative to the workspace root (`.`
/// is the `abgate` binary at the root).
const CRATES: [&str; 6] = ["router", "model-server", "common", "stats", "benches", "."];

#[test]
fn the_model_server_has_no_import_circles() {
    assert_no_circles("model-server");
}

#[test]
fn common_has_no_import_circles() {
    assert_no_circles("common");
}

#[test]
fn stats_has_no_import_circles() {
    assert_no_circles("stats");
}

#[test]
fn the_benches_have_no_import_circles() {
    assert_no_circles("benches");
}

#[test]
fn the_abgate_binary_has_no_import_circles() {
    assert_no_circles(".");
}

/// Its own test: it fails, naming the circles, until the router's are removed.
#[test]
fn the_router_has_no_import_circles() {
    assert_no_circles("router");
}

/// A crate added to the workspace is checked too: [`CRATES`] is the workspace's
/// `members` plus the root package.
#[test]
fn every_workspace_crate_is_checked() {
    let manifest = read(&workspace().join("Cargo.toml"));
    let start = manifest
        .find("members")
        .and_then(|i| manifest[i..].find('[').map(|j| i + j + 1))
        .unwrap_or_else(|| panic!("no `members = [...]` in the workspace's Cargo.toml"));
    let end = manifest[start..]
        .find(']')
        .map(|j| start + j)
        .unwrap_or_else(|| panic!("unterminated `members` in the workspace's Cargo.toml"));
    let mut members: BTreeSet<&str> = manifest[start..end]
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .collect();
    if manifest.lines().any(|line| line.trim() == "[package]") {
        members.insert(".");
    }
    let checked: BTreeSet<&str> = CRATES.into_iter().collect();
    assert_eq!(
        checked, members,
        "CRATES must list every crate of the workspace"
    );
}

/// The graph rules on a small made-up crate: a `use` group, `self::`,
/// `super::super::` and inline `crate::` paths make edges (to the file of the longest
/// known prefix); a commented-out import and one in the test module do not.
#[test]
fn the_import_graph_follows_the_rules_of_import_circles_py() {
    let files: BTreeMap<String, String> = [
        (
            "lib.rs",
            "pub mod a;\npub mod b;\npub mod c;\npub const NAME: &str = \"x\";\n",
        ),
        (
            "a.rs",
            "//! Uses b and c.\nuse crate::{b, c::Thing as Other};\n",
        ),
        (
            "b.rs",
            "// use crate::a;\n/* crate::a::f() */\npub fn f() -> &'static str { crate::NAME }\n\
             #[cfg(test)]\nmod tests {\n    use crate::a;\n}\n",
        ),
        (
            "c/mod.rs",
            "pub mod inner;\nuse self::inner::X;\npub fn g() {}\n",
        ),
        ("c/inner.rs", "pub struct X;\nuse super::super::a::f;\n"),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_owned(), text.to_owned()))
    .collect();
    let graph = graph(&files);
    let targets = |file: &str| -> Vec<&str> { graph[file].keys().map(String::as_str).collect() };
    assert_eq!(targets("lib.rs"), Vec::<&str>::new());
    assert_eq!(targets("a.rs"), ["b.rs", "c/mod.rs"]);
    assert_eq!(targets("b.rs"), ["lib.rs"]);
    assert_eq!(targets("c/mod.rs"), ["c/inner.rs"]);
    assert_eq!(targets("c/inner.rs"), ["a.rs"]);
    assert_eq!(
        circles(&graph),
        [vec!["a.rs", "c/inner.rs", "c/mod.rs"]],
        "{}",
        describe("made-up", &graph, &circles(&graph))
    );
}

/// Fails, listing each circle and the paths that make its edges, if the crate in
/// `dir` (relative to the workspace root) has any.
fn assert_no_circles(dir: &str) {
    assert!(CRATES.contains(&dir), "{dir} is not in CRATES");
    let src = workspace().join(dir).join("src");
    let files = sources(&src);
    assert!(
        files.contains_key("lib.rs") || files.contains_key("main.rs"),
        "{} has no lib.rs or main.rs",
        src.display()
    );
    let graph = graph(&files);
    let found = circles(&graph);
    let name = format!("{dir}/src");
    let name = name.trim_start_matches("./");
    assert!(found.is_empty(), "{}", describe(name, &graph, &found));
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Every `.rs` file under `src`, by its `/`-separated path relative to `src`.
fn sources(src: &Path) -> BTreeMap<String, String> {
    fn walk(src: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                walk(src, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(src)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(rel, read(&path));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// File → the files it imports, each with the first path (as written) that imports it.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn graph(files: &BTreeMap<String, String>) -> Graph {
    let mut graph = Graph::new();
    for (file, text) in files {
        let module = module_of(file);
        let edges = graph.entry(file.clone()).or_default();
        for (root, rest) in paths(&strip(text)) {
            let mut parts: Vec<&str> = rest.split("::").filter(|p| !p.is_empty()).collect();
            let base: Vec<&str> = match root {
                "crate" => Vec::new(),
                "self" => module.clone(),
                _ => {
                    let mut base = module[..module.len().saturating_sub(1)].to_vec();
                    while parts.first() == Some(&"super") {
                        base.pop();
                        parts.remove(0);
                    }
                    base
                }
            };
            let full: Vec<&str> = base.into_iter().chain(parts).collect();
            if let Some(target) = file_of(files, &full) {
                if target != *file {
                    edges
                        .entry(target)
                        .or_insert_with(|| format!("{root}{rest}"));
                }
            }
        }
    }
    graph
}

/// The module path of a file: `oip/mod.rs` → `[oip]`, `lib.rs` → `[]`.
fn module_of(file: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = file
        .strip_suffix(".rs")
        .unwrap_or(file)
        .split('/')
        .collect();
    if matches!(parts.last(), Some(&("mod" | "lib" | "main"))) {
        parts.pop();
    }
    parts
}

/// The file that defines module path `parts` or the longest prefix of it.
fn file_of(files: &BTreeMap<String, String>, parts: &[&str]) -> Option<String> {
    for n in (0..=parts.len()).rev() {
        if n == 0 {
            return ["lib.rs", "main.rs"]
                .into_iter()
                .find(|f| files.contains_key(*f))
                .map(str::to_owned);
        }
        let path = parts[..n].join("/");
        for candidate in [format!("{path}.rs"), format!("{path}/mod.rs")] {
            if files.contains_key(&candidate) {
                return Some(candidate);
            }
        }
    }
    None
}

/// The text without `//` and `/* */` comments, cut at the first
/// `#[cfg(test)] [pub] mod name {`.
fn strip(text: &str) -> String {
    let mut no_lines = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("//") {
        no_lines.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = &rest[rest.find('\n').unwrap_or(rest.len())..];
    }
    no_lines.push_str(rest);

    let mut out = String::with_capacity(no_lines.len());
    let mut rest = no_lines.as_str();
    while let Some(i) = rest.find("/*") {
        let Some(j) = rest[i + 2..].find("*/") else {
            break;
        };
        out.push_str(&rest[..i]);
        rest = &rest[i + 2 + j + 2..];
    }
    out.push_str(rest);

    let mut from = 0;
    while let Some(i) = out[from..].find("#[cfg(test)]").map(|i| from + i) {
        if test_module_at(&out[i + "#[cfg(test)]".len()..]) {
            out.truncate(i);
            break;
        }
        from = i + 1;
    }
    out
}

/// Whether `text` starts with `\s*(pub\s+)?mod\s+\w+\s*\{`.
fn test_module_at(text: &str) -> bool {
    let mut rest = text.trim_start();
    if let Some(after) = rest.strip_prefix("pub") {
        if after.starts_with(char::is_whitespace) {
            rest = after.trim_start();
        }
    }
    let Some(after) = rest.strip_prefix("mod") else {
        return false;
    };
    if !after.starts_with(char::is_whitespace) {
        return false;
    }
    let after = after.trim_start();
    let name = after.len() - after.trim_start_matches(is_word).len();
    name > 0 && after[name..].trim_start().starts_with('{')
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether a word starts at byte `i` (`\b` before a word character).
fn word_starts(text: &str, i: usize) -> bool {
    !text[..i].chars().next_back().is_some_and(is_word)
}

const ROOTS: [&str; 3] = ["crate", "super", "self"];

/// The root (`crate`, `super`, `self`) at byte `i` of `text`, if any.
fn root_at(text: &str, i: usize) -> Option<&'static str> {
    ROOTS
        .into_iter()
        .find(|r| text.as_bytes()[i..].starts_with(r.as_bytes()))
}

/// The end of the `(::identifier)*` run that starts at byte `i`.
fn idents_end(text: &str, mut i: usize) -> usize {
    let b = text.as_bytes();
    while b[i..].starts_with(b"::")
        && b.get(i + 2)
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        i += 3;
        while b
            .get(i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            i += 1;
        }
    }
    i
}

/// Every module path of the (stripped) text as (root, `::a::b…`): the items of each
/// `use root::…::{…};` group, then every `root::ident…` path.
fn paths(text: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let b = text.as_bytes();

    // `use (crate|super|self)(::ident)*::{items};`
    let mut i = 0;
    while i < b.len() {
        if let Some((root, prefix, items, end)) = use_group_at(text, i) {
            for item in items.split(',') {
                let item = item.trim();
                let item = item.split(" as ").next().unwrap_or("").trim();
                if item == "self" {
                    out.push((root, prefix.to_owned()));
                } else if !item.is_empty() {
                    out.push((root, format!("{prefix}::{}", drop_groups(item))));
                }
            }
            i = end;
        } else {
            i += 1;
        }
    }

    // `(crate|super|self)(::ident)+`
    let mut i = 0;
    while i < b.len() {
        if let Some(root) = root_at(text, i).filter(|_| word_starts(text, i)) {
            let start = i + root.len();
            let end = idents_end(text, start);
            if end > start {
                out.push((root, text[start..end].to_owned()));
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// A `use` group at byte `i`: its root, the path before `::{`, the text between the
/// braces, and the byte after `};`.
fn use_group_at(text: &str, i: usize) -> Option<(&'static str, &str, &str, usize)> {
    let b = text.as_bytes();
    if !b[i..].starts_with(b"use") || !word_starts(text, i) {
        return None;
    }
    let after_use = &text[i + 3..];
    let spaced = after_use.trim_start();
    if spaced.len() == after_use.len() {
        return None;
    }
    let at = text.len() - spaced.len();
    let root = root_at(text, at)?;
    let prefix_start = at + root.len();
    let prefix_end = idents_end(text, prefix_start);
    if !b[prefix_end..].starts_with(b"::{") {
        return None;
    }
    let items_start = prefix_end + 3;
    let semicolon = items_start + text[items_start..].find(';')?;
    if semicolon == items_start || b[semicolon - 1] != b'}' {
        return None;
    }
    Some((
        root,
        &text[prefix_start..prefix_end],
        &text[items_start..semicolon - 1],
        semicolon + 1,
    ))
}

/// `item` with each nested group (`::{` to the end of its line) dropped, as
/// `import_circles.py` does.
fn drop_groups(item: &str) -> String {
    let mut out = String::new();
    let mut rest = item;
    while let Some(i) = rest.find("::{") {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = &rest[rest.find('\n').unwrap_or(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// The circles of the graph: each set of two or more files that all reach one another,
/// sorted.
fn circles(graph: &Graph) -> Vec<Vec<&str>> {
    let reach: BTreeMap<&str, BTreeSet<&str>> = graph
        .keys()
        .map(|from| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.as_str()];
            while let Some(file) = todo.pop() {
                for to in graph.get(file).into_iter().flat_map(BTreeMap::keys) {
                    if seen.insert(to.as_str()) {
                        todo.push(to);
                    }
                }
            }
            (from.as_str(), seen)
        })
        .collect();
    let mut out: Vec<Vec<&str>> = Vec::new();
    for (&file, reached) in &reach {
        if out.iter().any(|c| c.contains(&file)) {
            continue;
        }
        let circle: Vec<&str> = reach
            .keys()
            .copied()
            .filter(|other| {
                *other == file || (reached.contains(other) && reach[other].contains(file))
            })
            .collect();
        if circle.len() > 1 {
            out.push(circle);
        }
    }
    out
}

/// The circles as `import_circles.py` prints them, each followed by its edges and the
/// path that makes each.
fn describe(name: &str, graph: &Graph, circles: &[Vec<&str>]) -> String {
    let mut out = format!("{} import circle(s) in {name}\n", circles.len());
    for circle in circles {
        out += &format!("{name} circle: {}\n", circle.join(" -> "));
        for from in circle {
            for (to, path) in &graph[*from] {
                if circle.contains(&to.as_str()) {
                    out += &format!("    {from} -> {to}  ({path})\n");
                }
            }
        }
    }
    out
}
