//! The module graph of pixelgen-build, read from the code's own `crate::` paths: data
//! flows one way through the stages, and so do the imports. No module imports one that
//! imports it back (no circle, however long), and the backends under `generate/` see
//! none of the stages above them. Test code (`tests.rs` files and `#[cfg(test)]`
//! modules) is left out: a test may use any stage to build its input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module a source file belongs to at the crate's top level (`generate`, `plan`...).
fn top_module(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The file's text without `#[cfg(test)]` items (a module or function written inline).
fn without_tests(text: &str) -> String {
    let mut kept = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            // Skip the item: up to the line that closes it at its own indentation
            // (or the `mod tests;` declaration itself).
            let indent = line.len() - line.trim_start().len();
            for item in lines.by_ref() {
                let closes = item.len() - item.trim_start().len() == indent
                    && (item.trim() == "}" || item.trim_end().ends_with(';'));
                if closes {
                    break;
                }
            }
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

/// Every top-level module a file names through `crate::` (in `use` lines and paths).
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if rest.starts_with('{') {
            // `use crate::{a, b::c}`: each entry's first segment.
            let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
            for entry in group.split(',') {
                let name: String = entry
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Module → the modules it imports (itself and the crate root's re-exports left out).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = top_module(&src, &file);
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let imported = imports(&without_tests(&text));
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(imported.into_iter().filter(|m| *m != module));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for imported in graph.values_mut() {
        imported.retain(|m| modules.contains(m));
    }
    graph
}

/// A circle through `from`, if there is one.
fn circle_from(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in &graph[at] {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_owned()];
    walk(graph, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = module_graph();
    assert!(graph.len() > 10, "the graph was not read: {graph:?}");
    let circles: Vec<String> = graph
        .keys()
        .filter_map(|module| circle_from(&graph, module))
        .map(|circle| circle.join(" → "))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles in pixelgen-build:\n  {}",
        circles.join("\n  ")
    );
}

#[test]
fn the_backends_see_none_of_the_stages_above_them() {
    let graph = module_graph();
    let above = [
        "manifest", "plan", "status", "lock", "pipeline", "emit", "gc", "builder", "train",
        "pixelize", "error",
    ];
    let seen: Vec<&String> = graph["generate"]
        .iter()
        .filter(|m| above.contains(&m.as_str()))
        .collect();
    assert!(seen.is_empty(), "generate/ imports {seen:?}");
}

#[test]
fn the_reader_finds_imports_and_circles() {
    let text = "use crate::a::B;\nuse crate::{c, d::E};\n// crate::commented\nfn f() { crate::g::h(); }\n#[cfg(test)]\nmod tests {\n    use crate::t;\n}\n";
    let found = imports(&without_tests(text));
    assert_eq!(
        found,
        ["a", "c", "d", "g"].map(String::from).into_iter().collect()
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, i)| (m.to_owned(), i.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        circle_from(&graph, "a"),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
    assert_eq!(circle_from(&graph, "d"), None);
}

/// Prints the floors (floor 1 imports nothing of the crate; every other module stands one
/// floor above the highest module it imports): `cargo test -p pixelgen-build --test
/// layers -- --nocapture floors`.
#[test]
fn floors() {
    let graph = module_graph();
    fn floor(
        graph: &BTreeMap<String, BTreeSet<String>>,
        module: &str,
        known: &mut BTreeMap<String, usize>,
        depth: usize,
    ) -> usize {
        if let Some(floor) = known.get(module) {
            return *floor;
        }
        // A circle (reported by the test above) would recurse forever: stop at its length.
        if depth > graph.len() {
            return 0;
        }
        let below = graph[module]
            .iter()
            .map(|m| floor(graph, m, known, depth + 1))
            .max()
            .unwrap_or(0);
        known.insert(module.to_owned(), below + 1);
        below + 1
    }
    let mut known = BTreeMap::new();
    for module in graph.keys() {
        floor(&graph, module, &mut known, 0);
    }
    let mut floors: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (module, floor) in &known {
        floors.entry(*floor).or_default().push(module);
    }
    for (floor, modules) in floors.iter().rev() {
        eprintln!("floor {floor:2}: {}", modules.join(", "));
    }
    assert!(!floors.is_empty());
}
