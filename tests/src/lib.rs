//! Helpers for the end-to-end tests: a temporary game crate that depends on
//! pixelgen-build, built with real `cargo build`s.

use std::path::{Path, PathBuf};
use std::process::Command;

use pixelgen_test_support::fixtures::workspace_root;

pub mod comfyui;
pub mod invokeai;

/// A throwaway game crate: Cargo.toml, build.rs calling pixelgen, sprites.ron.
pub struct GameCrate {
    dir: tempfile::TempDir,
}

/// What one `cargo build` did.
#[derive(Debug)]
pub struct BuildOutput {
    pub success: bool,
    pub stderr: String,
    /// `(sprites, generated, cached)` from the summary line, when the build script ran.
    pub summary: Option<(usize, usize, usize)>,
    /// The build script's OUT_DIR, when it ran.
    pub out_dir: Option<PathBuf>,
}

/// The target folder the running test binary was built in (`<target>/debug/deps/<test>`):
/// the test games build there too, so the crates the workspace build already compiled
/// (pixelgen-build and everything under it) are not compiled a second time. Cargo releases
/// the folder's lock once the test binaries are built, so these nested builds do not wait
/// on the `cargo test` that runs them (they wait on each other, as any two builds do).
fn shared_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("test binaries live in <target>/<profile>/deps/")
        .to_path_buf()
}

/// The workspace's `[profile.*]` tables, word for word: a test game built with the same
/// settings gets the same compiled units (cargo names a unit by its package, features,
/// profile and dependencies, so one differing setting would compile everything again).
fn workspace_profiles() -> String {
    let text = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
        .expect("the workspace's Cargo.toml");
    let mut profiles = String::new();
    let mut in_profile = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_profile = line.starts_with("[profile.");
        }
        if in_profile {
            profiles.push_str(line);
            profiles.push('\n');
        }
    }
    assert!(
        profiles.contains("[profile.dev"),
        "the workspace's Cargo.toml has no [profile.dev…] table to copy"
    );
    profiles
}

/// The `[build-dependencies]` of this crate's Cargo.toml, paths made absolute, as a test
/// game's own: pixelgen-build (what the game's build.rs calls) and the crates listed there
/// for feature unification. Cargo unifies a crate's features over everything in one build,
/// so without them a test game's `syn` or `serde` would have other features than the
/// workspace's, and so would every crate above them (pixelgen-build, candle and the rest
/// would be compiled a second time for the nested builds).
fn workspace_build_dependencies() -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("tests/Cargo.toml");
    let table = text
        .split("\n[build-dependencies]\n")
        .nth(1)
        .expect("tests/Cargo.toml has a [build-dependencies] table");
    let absolute = format!("path = \"{}/", workspace_root().display());
    table
        .lines()
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| line.replace("path = \"../", &absolute) + "\n")
        .collect()
}

/// The cargo that runs these tests (`CARGO`), else the one on the PATH.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Removes what cargo sets for the test binary running this (`CARGO_MANIFEST_DIR`,
/// `CARGO_PKG_NAME`, `OUT_DIR`, …), so a nested build sees the environment of the
/// `cargo test` that started it. Build scripts watch some of these names
/// (`cargo:rerun-if-env-changed`, ring's among them): with the test's values, a nested
/// build would run such a script again and recompile its crate and everything above it in
/// the shared target folder (ring, rustls, ureq, hf-hub, pixelgen-build, …), and the next
/// `cargo test` would recompile them back.
fn remove_test_environment(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_by_cargo_for_tests = name == "OUT_DIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&name);
        if set_by_cargo_for_tests {
            command.env_remove(name);
        }
    }
}

impl GameCrate {
    /// A crate named `name` (unique per test) with this manifest.
    pub fn new(name: &str, manifest: &str) -> GameCrate {
        let dir = tempfile::Builder::new()
            .prefix("pixelgen-e2e-")
            .tempdir()
            .expect("temp dir");
        let cargo_toml = format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[build-dependencies]
{build_dependencies}
[workspace]

{profiles}"#,
            build_dependencies = workspace_build_dependencies(),
            profiles = workspace_profiles(),
        );
        std::fs::write(dir.path().join("Cargo.toml"), cargo_toml).expect("write Cargo.toml");
        std::fs::create_dir_all(dir.path().join("src")).expect("src");
        std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").expect("main.rs");
        std::fs::write(
            dir.path().join("build.rs"),
            "fn main() {\n    pixelgen_build::Build::new().run_or_exit();\n    println!(\"cargo:warning=OUT_DIR={}\", std::env::var(\"OUT_DIR\").unwrap());\n}\n",
        )
        .expect("build.rs");
        // The workspace's lock file pins the same dependency versions, so no resolution is needed.
        let _ = std::fs::copy(
            workspace_root().join("Cargo.lock"),
            dir.path().join("Cargo.lock"),
        );
        let game = GameCrate { dir };
        game.write_manifest(manifest);
        game
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a workspace crate (`pixelgen-macros`, …) to `[dependencies]`.
    pub fn depend_on(&self, workspace_crate: &str) {
        let path = workspace_root().join(workspace_crate);
        let cargo_toml = self.path().join("Cargo.toml");
        let mut text = std::fs::read_to_string(&cargo_toml).expect("read Cargo.toml");
        text.push_str(&format!(
            "\n[dependencies]\n{workspace_crate} = {{ path = {path:?} }}\n"
        ));
        std::fs::write(cargo_toml, text).expect("write Cargo.toml");
    }

    /// Replaces `src/main.rs`.
    pub fn write_main(&self, source: &str) {
        std::fs::write(self.path().join("src/main.rs"), source).expect("write main.rs");
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.path().join("cache")
    }

    pub fn write_manifest(&self, manifest: &str) {
        std::fs::write(self.path().join("sprites.ron"), manifest).expect("write sprites.ron");
    }

    pub fn manifest(&self) -> String {
        std::fs::read_to_string(self.path().join("sprites.ron")).expect("read sprites.ron")
    }

    pub fn lock(&self) -> String {
        std::fs::read_to_string(self.path().join("sprites.lock")).unwrap_or_default()
    }

    /// `cargo build` with the given extra environment (offline mode is off unless set).
    pub fn build(&self, env: &[(&str, &str)]) -> BuildOutput {
        let mut command = cargo();
        command.arg("build").current_dir(self.path());
        remove_test_environment(&mut command);
        pixelgen_test_support::process::without_pixelgen_settings(&mut command)
            .env("CARGO_TARGET_DIR", shared_target_dir())
            // A user's `cargo build`, not CI's clippy-linted one (.ci/run sets these).
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CLIPPY_ARGS")
            .env("CARGO_TERM_COLOR", "never");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("run cargo");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        BuildOutput {
            success: output.status.success(),
            summary: parse_summary(&stderr),
            out_dir: stderr.lines().find_map(|l| {
                l.split_once("OUT_DIR=")
                    .map(|(_, dir)| PathBuf::from(dir.trim()))
            }),
            stderr,
        }
    }

    /// The index the last build wrote.
    pub fn index(&self, output: &BuildOutput) -> serde_json::Value {
        let out_dir = output
            .out_dir
            .as_ref()
            .expect("the build script ran and printed OUT_DIR");
        let text = std::fs::read_to_string(out_dir.join("pixelgen/index.json"))
            .expect("index.json in OUT_DIR");
        serde_json::from_str(&text).expect("index.json is JSON")
    }

    /// Every cache entry (`cache/ab/<key>.png`), sorted; not the published live atlases
    /// in `cache/live/` or raw images in `cache/raw/`.
    pub fn cache_files(&self) -> Vec<PathBuf> {
        pixelgen_test_support::fs::cache_entries(&self.cache_dir())
    }
}

/// Every `(package, features)` cargo would compile for `cargo tree` run in `dir` with
/// `args`, one `name vX.Y.Z [f1,f2]` per unit (a crate built with two feature sets is two
/// lines; paths of path packages are dropped so a test game's copies compare equal).
pub fn compiled_units(dir: &Path, args: &[&str]) -> std::collections::BTreeSet<String> {
    let output = cargo()
        .args([
            "tree",
            "--offline",
            "--prefix",
            "none",
            "--format",
            "{p} [{f}]",
        ])
        .args(args)
        .current_dir(dir)
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let line = line.replace(" (proc-macro)", "").replace(" (*)", "");
            match (line.find(" ("), line.rfind(") [")) {
                (Some(start), Some(end)) => format!("{}{}", &line[..start], &line[end + 1..]),
                _ => line,
            }
        })
        .filter(|line| !line.is_empty())
        .collect()
}

/// [`compiled_units`] of `cargo test --workspace`: normal, build and dev dependencies of
/// every member, their features unified as that build unifies them.
pub fn workspace_test_units() -> std::collections::BTreeSet<String> {
    compiled_units(
        &workspace_root(),
        &["--workspace", "--edges", "normal,build,dev"],
    )
}

/// `(sprites, generated, cached)` from "pixelgen: N sprites: G generated, C cached".
pub fn parse_summary(stderr: &str) -> Option<(usize, usize, usize)> {
    let line = stderr
        .lines()
        .find(|l| l.contains("pixelgen: ") && l.contains(" generated, "))?;
    let rest = &line[line.find("pixelgen: ")? + "pixelgen: ".len()..];
    let numbers: Vec<usize> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match numbers[..] {
        [sprites, generated, cached, ..] => Some((sprites, generated, cached)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_summary_line() {
        let stderr = "warning: game@0.1.0: pixelgen: 12 sprites: 3 generated, 9 cached\n";
        assert_eq!(super::parse_summary(stderr), Some((12, 3, 9)));
        assert_eq!(super::parse_summary("nothing"), None);
    }
}
