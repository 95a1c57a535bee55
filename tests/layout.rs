//! The shape of the source tree holds: no module of any crate depends on itself through others
//! (a cycle), and the README's layout table names every crate there is.
//!
//! A module is a file (`a.rs`, `a/mod.rs`); it depends on the modules it names through
//! `crate::…`, `super::…` and `self::…` paths outside its `#[cfg(test)] mod tests`. The crate root
//! (`lib.rs`, `main.rs`) only declares and re-exports, so it is no node of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every crate's `src/` directory: the workspace members and the root package.
fn source_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/") {
        let dir = entry.expect("a crates/ entry").path().join("src");
        if dir.is_dir() {
            dirs.push(dir);
        }
    }
    dirs.sort();
    dirs
}

/// The modules of one crate: path (`a::b`, the root is `""`) → file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, src, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut segs: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if segs.last().is_some_and(|s| s == "mod") {
                segs.pop();
            }
            if segs == ["lib"] || segs == ["main"] {
                segs.clear();
            }
            out.insert(segs.join("::"), path);
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The code of a file without comments and without its inline test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("a source file");
    let text = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifiers of the path that starts at `rest` (`a::b::C` → `[a, b, C]`).
fn path_segments(rest: &str) -> Vec<&str> {
    let mut segs = Vec::new();
    let mut s = rest;
    loop {
        let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
        if end == 0 {
            break;
        }
        segs.push(&s[..end]);
        match s[end..].strip_prefix("::") {
            Some(next) => s = next,
            None => break,
        }
    }
    segs
}

/// Where `keyword` (`crate::`, `super::`, `self::`) starts a path in `code`.
fn occurrences<'a>(code: &'a str, keyword: &'a str) -> impl Iterator<Item = usize> + 'a {
    code.match_indices(keyword).filter_map(move |(i, _)| {
        let before = code[..i].chars().next_back();
        (!before.is_some_and(|c| is_ident(c) || c == ':')).then_some(i)
    })
}

/// The modules `module` depends on.
fn dependencies(module: &str, code: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let own: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    // The longest known module that `segs` (from `base`) names.
    let longest = |base: &[&str], segs: &[&str]| -> String {
        for n in (0..=segs.len()).rev() {
            let candidate: Vec<&str> = base.iter().chain(&segs[..n]).copied().collect();
            let key = candidate.join("::");
            if known.contains_key(&key) {
                return key;
            }
        }
        base.join("::")
    };
    let mut deps = BTreeSet::new();
    for i in occurrences(code, "crate::") {
        deps.insert(longest(&[], &path_segments(&code[i + 7..])));
    }
    for i in occurrences(code, "super::") {
        let mut up = 0;
        let mut rest = &code[i..];
        while let Some(r) = rest.strip_prefix("super::") {
            up += 1;
            rest = r;
        }
        let base = &own[..own.len().saturating_sub(up)];
        deps.insert(longest(base, &path_segments(rest)));
    }
    for i in occurrences(code, "self::") {
        let segs = path_segments(&code[i + 6..]);
        let target = longest(&own, &segs);
        if target != module {
            deps.insert(target);
        }
    }
    deps.remove(module);
    deps.remove("");
    deps
}

/// The cycles of a graph: its strongly connected components with more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one cycle when each reaches the other.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for (m, r) in &reaches {
        if !r.contains(*m) {
            continue;
        }
        let component: Vec<String> = r
            .iter()
            .filter(|o| reaches.get(o).is_some_and(|back| back.contains(*m)))
            .cloned()
            .collect();
        found.insert(component);
    }
    found.into_iter().collect()
}

fn graph_of(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(src);
    known
        .iter()
        .filter(|(m, _)| !m.is_empty())
        .map(|(m, path)| (m.clone(), dependencies(m, &code(path), &known)))
        .collect()
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let mut faults = Vec::new();
    for src in source_dirs() {
        for cycle in cycles(&graph_of(&src)) {
            faults.push(format!("{}: {}", src.display(), cycle.join(" → ")));
        }
    }
    assert!(faults.is_empty(), "module cycles:\n{}", faults.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle_and_resolves_super_and_self() {
    let known: BTreeMap<String, PathBuf> = ["a", "a::b", "a::c", "d"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::new()))
        .collect();
    assert_eq!(
        dependencies("a::b", "use super::c::X; use crate::d::Y;", &known),
        BTreeSet::from(["a::c".to_string(), "d".to_string()])
    );
    assert_eq!(
        dependencies("a", "use self::b::Z; fn f() { super::nothing() }", &known),
        BTreeSet::from(["a::b".to_string()])
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["a::b"]),
        ("a::b", vec!["a::c"]),
        ("a::c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, ds)| (m.to_string(), ds.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        cycles(&graph),
        vec![vec![
            "a".to_string(),
            "a::b".to_string(),
            "a::c".to_string()
        ]]
    );
}

#[test]
fn the_readme_layout_table_names_every_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let mut missing = Vec::new();
    for src in source_dirs() {
        let dir = src.parent().expect("a crate directory");
        let rel = dir.strip_prefix(root).expect("under the root");
        let cell = if rel.as_os_str().is_empty() {
            "| `src/` |".to_string()
        } else {
            format!("| `{}/` |", rel.display())
        };
        if !readme.contains(&cell) {
            missing.push(cell);
        }
    }
    assert!(
        missing.is_empty(),
        "README's layout table lacks rows starting {missing:?}"
    );
}
