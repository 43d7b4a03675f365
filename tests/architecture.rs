//! The module graph: no module imports a module that imports it back, layers point down
//! only, and `docs/architecture.md` shows the graph as it is.
//!
//! The graph is read from the sources: every `use` and every inline `crate::` / `super::`
//! path outside comments, resolved to the file that defines it. A module's own children
//! (`mod x;`) count as edges only when it imports from them (a re-export does).
//!
//! Regenerate the graph in `docs/architecture.md` after a change with
//! `UPDATE_ARCHITECTURE=1 cargo test --test architecture` (or `scripts/module-graph.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A module may use modules of its own layer
/// or of a lower one, never of a higher one.
const LAYERS: &[&[&str]] = &[
    &["core"],
    &["config", "protocol", "strategy", "telemetry"],
    &["backend"],
    &["balancer"],
    &["server", "admin"],
    &["cli", "daemon", "error"],
    &["lib", "main"],
];

const BEGIN: &str = "<!-- module-graph:begin (generated: scripts/module-graph.sh) -->";
const END: &str = "<!-- module-graph:end -->";

/// `a::b::c` for each file under `src/` (`lib` and `main` for the crate roots).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .expect("src/ is readable")
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.to_vec();
                if name != "mod" {
                    p.push(name);
                }
                out.insert(p.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

/// The text without comments (line comments and doc comments; block comments are not used
/// in this crate) and without an inline unit-test module at its end (its `super` is the
/// file itself).
fn code_of(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or(text);
    text.lines()
        .map(|line| match line.find("//") {
            // Keep `://` inside strings (URLs) from cutting a line short.
            Some(i) if !line[..i].ends_with(':') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Drops renames: `a::{b as c, d}` → `a::{b, d}`.
fn strip_renames(tree: &str) -> String {
    let tree = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut parts = tree.split(" as ");
    let mut out = parts.next().unwrap_or_default().to_string();
    for part in parts {
        out.push_str(part.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = strip_renames(tree)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.len() - 1];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |s| format!("{prefix}{s}")))
        .collect()
}

/// Every path a file mentions: `use` trees and inline paths that start at `crate::`,
/// `super::`, `self::` or one of the file's own child modules.
fn paths_in(code: &str, children: &BTreeSet<String>) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(end) = rest.find(';') {
            paths.extend(expand(&rest[..end]));
        }
    }
    let roots = ["crate::", "super::", "self::"].map(String::from);
    let children = children.iter().map(|c| format!("{c}::"));
    for root in roots.into_iter().chain(children) {
        let mut rest = code;
        while let Some(i) = rest.find(root.as_str()) {
            let before = rest[..i].chars().last();
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            // `pub(in crate::x)` is a visibility, not a use.
            let visibility = rest[..i].ends_with("pub(in ");
            if !visibility && !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                paths.push(tail[..end].trim_end_matches(':').to_string());
            }
            rest = &rest[i + root.len()..];
        }
    }
    paths
}

/// The module of the file that defines `path`, seen from module `here` (whose own child
/// modules are `children`).
fn resolve(
    path: &str,
    here: &str,
    children: &BTreeSet<String>,
    known: &BTreeMap<String, PathBuf>,
) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<&str> = if here == "lib" || here == "main" {
        Vec::new()
    } else {
        here.split("::").collect()
    };
    let from_root = matches!(segments.first(), Some(&"crate") | Some(&"elastic_lb"));
    match segments.first().copied() {
        Some("crate") | Some("elastic_lb") => {
            base.clear();
            segments.remove(0);
        }
        Some("super") => {
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
        }
        Some("self") => {
            segments.remove(0);
        }
        Some(first) if children.contains(first) => {}
        _ => return None,
    }
    let mut full: Vec<&str> = base;
    full.extend(segments);
    // The longest prefix that is a file; an item of the crate root lives in lib.rs.
    (1..=full.len())
        .rev()
        .map(|n| full[..n].join("::"))
        .find(|m| known.contains_key(m))
        .or_else(|| from_root.then(|| "lib".to_string()))
}

/// Module-level edges `from → to` (file granularity).
fn file_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(src);
    let mut graph = BTreeMap::new();
    for (module, path) in &known {
        let code = code_of(&fs::read_to_string(path).expect("source is readable"));
        let children: BTreeSet<String> = code
            .lines()
            .filter_map(|l| {
                let l = l
                    .trim()
                    .trim_start_matches("pub ")
                    .trim_start_matches("pub(crate) ");
                l.strip_prefix("mod ")?
                    .strip_suffix(';')
                    .map(str::to_string)
            })
            .collect();
        let mut deps = BTreeSet::new();
        for p in paths_in(&code, &children) {
            if let Some(target) = resolve(&p, module, &children, &known) {
                if &target != module {
                    deps.insert(target);
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The top-level module of `m` (`lib`/`main` for the roots).
fn top(m: &str) -> &str {
    m.split("::").next().unwrap_or(m)
}

fn layer_graph(files: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, deps) in files {
        let entry = graph.entry(top(from).to_string()).or_default();
        for to in deps {
            if top(to) != top(from) {
                entry.insert(top(to).to_string());
            }
        }
    }
    graph
}

/// Every pair `a → b → … → a`, as one line each (empty when there are none).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            if m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                stack.extend(graph.get(&m).into_iter().flatten().cloned());
            }
        }
        false
    }
    let mut found = Vec::new();
    for (from, deps) in graph {
        for to in deps {
            if reaches(graph, to, from) {
                found.push(format!("{from} → {to} → … → {from}"));
            }
        }
    }
    found
}

fn rank(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("top-level module `{module}` is in no layer of LAYERS"))
}

/// The generated part of `docs/architecture.md`.
fn render(layers: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut out = String::from("```mermaid\nflowchart BT\n");
    for (from, deps) in layers {
        for to in deps {
            out.push_str(&format!("    {from} --> {to}\n"));
        }
    }
    out.push_str("```\n\nEach module and what it uses (layer order, lowest first):\n\n");
    out.push_str("| module | uses |\n| --- | --- |\n");
    let mut rows: Vec<_> = layers.iter().collect();
    rows.sort_by_key(|(m, _)| (rank(m), m.to_string()));
    for (m, deps) in rows {
        let deps: Vec<_> = deps.iter().map(|d| format!("`{d}`")).collect();
        let deps = if deps.is_empty() {
            "—".to_string()
        } else {
            deps.join(", ")
        };
        out.push_str(&format!("| `{m}` | {deps} |\n"));
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let files = file_graph(&root().join("src"));
    let found = cycles(&files);
    assert!(
        found.is_empty(),
        "import cycles between files:\n{}",
        found.join("\n")
    );
    let found = cycles(&layer_graph(&files));
    assert!(
        found.is_empty(),
        "import cycles between modules:\n{}",
        found.join("\n")
    );
}

#[test]
fn layers_point_down_only() {
    let layers = layer_graph(&file_graph(&root().join("src")));
    let mut upward = Vec::new();
    for (from, deps) in &layers {
        for to in deps {
            if rank(to) > rank(from) {
                upward.push(format!("{from} → {to}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports pointing up a layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn core_imports_nothing_from_the_crate() {
    let files = file_graph(&root().join("src"));
    for (m, deps) in &files {
        if top(m) == "core" {
            let outside: Vec<_> = deps.iter().filter(|d| top(d) != "core").collect();
            assert!(outside.is_empty(), "{m} imports {outside:?}");
        }
    }
}

#[test]
fn architecture_doc_shows_the_current_graph() {
    let doc_path = root().join("docs/architecture.md");
    let doc = fs::read_to_string(&doc_path).expect("docs/architecture.md exists");
    let graph = render(&layer_graph(&file_graph(&root().join("src"))));
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/architecture.md lacks the {BEGIN} … {END} markers");
    };
    let current = &doc[b + BEGIN.len()..e];
    let wanted = format!("\n{graph}");
    if current != wanted {
        if std::env::var_os("UPDATE_ARCHITECTURE").is_some() {
            let updated = format!("{}{BEGIN}{wanted}{}", &doc[..b], &doc[e..]);
            fs::write(&doc_path, updated).expect("docs/architecture.md is writable");
        } else {
            panic!(
                "docs/architecture.md shows an old module graph; regenerate it with \
                 scripts/module-graph.sh\n--- wanted:\n{wanted}"
            );
        }
    }
}

#[test]
fn no_source_file_is_longer_than_600_lines_outside_tests() {
    let mut long = Vec::new();
    for (m, path) in modules(&root().join("src")) {
        let text = fs::read_to_string(&path).expect("source is readable");
        // Unit tests at the end of a file do not count.
        let code = text
            .split("\n#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or(&text);
        let n = code.lines().count();
        if n > 600 {
            long.push(format!("{m}: {n} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "files over 600 lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_graph_reader_sees_nested_use_trees_and_renames() {
    assert_eq!(
        expand("crate::a::{b, c::{d, e as f}}"),
        ["crate::a::b", "crate::a::c::d", "crate::a::c::e"]
    );
    assert_eq!(expand("super::x as y"), ["super::x"]);
}
