//! The documentation's links: every relative link and image in README.md, CONTRIBUTING.md,
//! ARCHITECTURE.md and the book (`docs/`) points at a file of the repository, and at one of
//! its headings when it names one (`file.md#heading`, or `#heading` in the same file). Web
//! links (`http://`, `https://`, `mailto:`) and links in code (fenced blocks, inline spans:
//! examples, not links) are not checked. Also: README.md stays short, and the book's
//! SUMMARY.md lists every chapter.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// README.md is the landing page; the rest belongs in the book.
const README_MAX_LINES: usize = 300;

/// The book's sources, relative to the workspace root.
const BOOK_SRC: &str = "docs/src";

/// What `mdbook build docs` writes (git-ignored): not sources.
const BOOK_OUTPUT: &str = "docs/book";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn read(root: &Path, file: &Path) -> String {
    fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The markdown files whose links are checked, relative to the root.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "CONTRIBUTING.md", "ARCHITECTURE.md"]
        .into_iter()
        .map(PathBuf::from)
        .collect();
    files.extend(markdown_under(root, Path::new("docs")));
    files
}

/// The `.md` files under `dir` (relative to the root), sorted, without the rendered book.
fn markdown_under(root: &Path, dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut found = Vec::new();
    for entry in entries {
        let path = dir.join(entry.expect("a readable folder entry").file_name());
        if path == Path::new(BOOK_OUTPUT) {
            continue;
        }
        if root.join(&path).is_dir() {
            found.extend(markdown_under(root, &path));
        } else if path.extension().is_some_and(|ext| ext == "md") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// `text` with its fenced code blocks blanked out; newlines stay, so line numbers do too.
fn without_fences(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fence: Option<&str> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let in_code = if let Some(marker) = fence {
            if trimmed.starts_with(marker) {
                fence = None;
            }
            true
        } else {
            fence = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
            fence.is_some()
        };
        if in_code {
            out.extend(line.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// `text` with its fenced code blocks and inline code spans blanked out.
fn without_code(text: &str) -> String {
    let chars: Vec<char> = without_fences(text).chars().collect();
    let mut out = chars.clone();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            i += 1;
            continue;
        }
        let run = backtick_run(&chars, i);
        match closing_run(&chars, i + run, run) {
            Some(end) => {
                for c in &mut out[i..end] {
                    if *c != '\n' {
                        *c = ' ';
                    }
                }
                i = end;
            }
            None => i += run,
        }
    }
    out.into_iter().collect()
}

fn backtick_run(chars: &[char], start: usize) -> usize {
    chars[start..].iter().take_while(|&&c| c == '`').count()
}

/// The end of the run of exactly `run` backticks that closes a code span; a span does not
/// cross a blank line (the end of its paragraph).
fn closing_run(chars: &[char], from: usize, run: usize) -> Option<usize> {
    let mut i = from;
    while i < chars.len() {
        if chars[i] == '`' {
            let len = backtick_run(chars, i);
            if len == run {
                return Some(i + len);
            }
            i += len;
        } else if chars[i] == '\n' && chars.get(i + 1) == Some(&'\n') {
            return None;
        } else {
            i += 1;
        }
    }
    None
}

/// `(line, target)` of every `[text](target)` and `![alt](target)` outside code.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (index, line) in without_code(text).lines().enumerate() {
        for (at, _) in line.match_indices("](") {
            let target = line[at + 2..]
                .split([')', ' ', '\t'])
                .next()
                .unwrap_or_default();
            found.push((index + 1, target.to_string()));
        }
    }
    found
}

/// A heading's anchor as GitHub and mdBook make it: lower case, spaces to `-`, other
/// punctuation than `-` and `_` dropped (backticks included, their text kept).
fn slug(title: &str) -> String {
    title
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// The anchors of `text`'s headings; a repeated heading gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for line in without_fences(text).lines() {
        let level = line.chars().take_while(|&c| c == '#').count();
        let Some(title) = line[level..].strip_prefix(' ') else {
            continue;
        };
        if !(1..=6).contains(&level) {
            continue;
        }
        let slug = slug(title.trim().trim_end_matches('#').trim());
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            slug
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// `path` (relative to the root) without `.` and `..`; `None` when it leaves the root.
fn inside_repository(path: &Path) -> Option<PathBuf> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// Whether `target`, a link in `file` (relative to `root`) whose text is `text`, resolves.
fn check_target(root: &Path, file: &Path, text: &str, target: &str) -> Result<(), String> {
    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
    if path.is_empty() && anchor.is_empty() {
        return Err("empty target".to_string());
    }
    let headings = if path.is_empty() {
        anchors(text)
    } else {
        let dir = file.parent().unwrap_or(Path::new(""));
        let resolved = inside_repository(&dir.join(path))
            .ok_or("outside the repository: readers of the repository do not have it")?;
        let full = root.join(&resolved);
        if !full.exists() {
            return Err(format!("{} does not exist", resolved.display()));
        }
        if anchor.is_empty() {
            return Ok(());
        }
        let contents =
            fs::read_to_string(&full).map_err(|e| format!("{}: {e}", resolved.display()))?;
        anchors(&contents)
    };
    if anchor.is_empty() || headings.contains(anchor) {
        Ok(())
    } else {
        Err(format!("no heading with the anchor #{anchor}"))
    }
}

/// Each relative link of `text` (the markdown file `file`, relative to `root`) that does
/// not resolve, as `file:line: target (why)`.
fn broken_links(root: &Path, file: &Path, text: &str) -> Vec<String> {
    let mut broken = Vec::new();
    for (line, target) in links(text) {
        let web = ["http://", "https://", "mailto:"]
            .iter()
            .any(|scheme| target.starts_with(scheme));
        if web {
            continue;
        }
        if let Err(why) = check_target(root, file, text, &target) {
            broken.push(format!("{}:{line}: {target} ({why})", file.display()));
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = workspace_root();
    let mut broken = Vec::new();
    for file in documents(&root) {
        let text = read(&root, &file);
        broken.extend(broken_links(&root, &file, &text));
    }
    assert!(
        broken.is_empty(),
        "{} broken link(s) in the documentation:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_readme_stays_short() {
    let lines = read(&workspace_root(), Path::new("README.md"))
        .lines()
        .count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, at most {README_MAX_LINES}: move the detail into a \
         chapter of {BOOK_SRC}"
    );
}

#[test]
fn the_summary_lists_every_chapter_and_only_chapters_that_exist() {
    let root = workspace_root();
    let src = Path::new(BOOK_SRC);
    let summary = read(&root, &src.join("SUMMARY.md"));
    let listed: BTreeSet<PathBuf> = links(&summary)
        .into_iter()
        .map(|(_, target)| src.join(target.split('#').next().unwrap_or_default()))
        .collect();
    let chapters: BTreeSet<PathBuf> = markdown_under(&root, src)
        .into_iter()
        .filter(|path| !path.ends_with("SUMMARY.md"))
        .collect();
    let unlisted: Vec<&PathBuf> = chapters.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "chapters that {BOOK_SRC}/SUMMARY.md does not list: {unlisted:?}"
    );
    let missing: Vec<&PathBuf> = listed
        .iter()
        .filter(|path| !root.join(path).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "{BOOK_SRC}/SUMMARY.md lists chapters that do not exist: {missing:?}"
    );
}

/// The checker itself: among good links, and broken ones in code (examples, not links), it
/// reports exactly the one broken link, at its line, so the tests above cannot pass by
/// finding nothing.
#[test]
fn the_checker_reports_exactly_the_broken_link() {
    let root = workspace_root();
    let text = "# Quick start\n\
                \n\
                A [good link](#quick-start), and the [workspace](Cargo.toml).\n\
                \n\
                `[in a code span](missing.md)`\n\
                \n\
                ```md\n\
                [in a code block](missing.md)\n\
                ```\n\
                \n\
                A ![broken image](missing.png).\n";
    assert_eq!(links(text).len(), 3, "{:?}", links(text));
    let broken = broken_links(&root, Path::new("virtual.md"), text);
    assert_eq!(
        broken,
        ["virtual.md:11: missing.png (missing.png does not exist)"]
    );
}
