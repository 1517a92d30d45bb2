//! Each crate is compiled once per `cargo test --workspace`, and the end-to-end tests'
//! nested game builds compile only the game: two properties of the dependency graph that a
//! dependency change can break silently (nothing fails, CI just takes minutes longer). Both
//! are read off `cargo tree`, which lists a crate once per feature set cargo compiles it
//! with; the fix for either failure is a line in `tests/Cargo.toml`'s `[build-dependencies]`.

use std::collections::{BTreeMap, BTreeSet};

use pixelgen_tests::GameCrate;

/// `name vX.Y.Z` of a `name vX.Y.Z [features]` line.
fn package(unit: &str) -> &str {
    unit.split(" [").next().unwrap_or(unit)
}

#[test]
fn the_workspace_test_build_compiles_each_dependency_once() {
    let mut feature_sets: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let units = pixelgen_tests::workspace_test_units();
    for unit in &units {
        feature_sets.entry(package(unit)).or_default().push(unit);
    }
    let twice: Vec<String> = feature_sets
        .values()
        .filter(|sets| sets.len() > 1)
        .map(|sets| sets.join("\n  "))
        .collect();
    assert!(
        twice.is_empty(),
        "these crates are compiled twice (for build scripts and proc macros, and for the \
         rest) with different features, and so is every crate above them; add each to \
         tests/Cargo.toml's [build-dependencies] with the union of its features:\n  {}",
        twice.join("\n  ")
    );
}

/// The nested `cargo build`s of the end-to-end tests share the workspace's target folder
/// and profiles, so they compile only the game itself, as long as every crate a test game
/// needs has the features the workspace's test build gave it.
#[test]
fn test_games_need_no_crate_the_workspace_did_not_compile() {
    let game = GameCrate::new("units_probe", "(sprites: {})");
    game.depend_on("pixelgen-macros");
    let workspace = pixelgen_tests::workspace_test_units();
    let game_units = pixelgen_tests::compiled_units(game.path(), &["--edges", "normal,build"]);
    let missing: BTreeSet<&String> = game_units
        .iter()
        .filter(|unit| !unit.starts_with("units_probe ") && !workspace.contains(*unit))
        .collect();
    let workspace_has = |unit: &&String| -> Vec<&String> {
        let name = package(unit);
        workspace.iter().filter(|w| package(w) == name).collect()
    };
    assert!(
        missing.is_empty(),
        "a test game would compile these crates again, with other features than the \
         workspace's test build gives them (add each to tests/Cargo.toml's \
         [build-dependencies] with the workspace's features):\n{}",
        missing
            .iter()
            .map(|unit| format!("  {unit}: the workspace has {:?}", workspace_has(unit)))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
