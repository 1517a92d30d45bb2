//! Files and folders: copying a folder, listing the files below one (and their bytes),
//! pixelgen's cache entries, and reading a JSON file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Copies the folder `from` with everything below it to `to` (created as needed).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    let entries = std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| {
                panic!("{} → {}: {e}", entry.path().display(), target.display())
            });
        }
    }
}

/// Every file below `dir` (in its subfolders too), sorted; none when `dir` is missing.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Every file below `dir` by its path relative to `dir`, with its bytes: two folders
/// compare equal when they hold the same files with the same bytes.
pub fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files(dir)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path
                .strip_prefix(dir)
                .expect("below dir")
                .display()
                .to_string();
            (name, bytes)
        })
        .collect()
}

/// The entries of a pixelgen cache folder (`cache/ab/<key>.png`, or `cache/raw/ab/…` given
/// `cache/raw`): the files in its two-letter subfolders, sorted; not what else it holds
/// (`live/`, `raw/`, `loras/`, …). None when `cache` is missing.
pub fn cache_entries(cache: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(dirs) = std::fs::read_dir(cache) else {
        return files;
    };
    for dir in dirs.flatten() {
        if dir.file_name().len() != 2 {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(dir.path()) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    files.sort();
    files
}

/// The JSON file at `path`, parsed as `T` (a `serde_json::Value` for any JSON).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_folder_has_the_same_contents() {
        let from = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("a/b")).unwrap();
        std::fs::write(from.path().join("top.txt"), "top").unwrap();
        std::fs::write(from.path().join("a/b/deep.bin"), [0, 1, 2]).unwrap();
        let to = tempfile::tempdir().unwrap();
        copy_dir(from.path(), &to.path().join("copy"));
        let copied = contents(&to.path().join("copy"));
        assert_eq!(copied, contents(from.path()));
        assert_eq!(
            copied.keys().collect::<Vec<_>>(),
            [&"a/b/deep.bin".to_string(), &"top.txt".to_string()]
        );
        assert_eq!(files(&to.path().join("copy")).len(), 2);
        assert!(files(&to.path().join("missing")).is_empty());
    }

    #[test]
    fn cache_entries_are_the_files_of_two_letter_folders() {
        let cache = tempfile::tempdir().unwrap();
        for file in [
            "ab/abcd.png",
            "cd/cdef.png",
            "live/index.json",
            "raw/ef/ef01.png",
        ] {
            let path = cache.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        let names = |files: Vec<PathBuf>| -> Vec<String> {
            files
                .iter()
                .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(cache_entries(cache.path())), ["abcd.png", "cdef.png"]);
        assert_eq!(
            names(cache_entries(&cache.path().join("raw"))),
            ["ef01.png"]
        );
        assert!(cache_entries(&cache.path().join("missing")).is_empty());
    }

    #[test]
    fn read_json_reads_values_and_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        std::fs::write(&path, r#"{"n": [1, 2]}"#).unwrap();
        let value: serde_json::Value = read_json(&path);
        assert_eq!(value["n"][1], 2);
        let map: BTreeMap<String, Vec<u32>> = read_json(&path);
        assert_eq!(map["n"], [1, 2]);
    }
}
