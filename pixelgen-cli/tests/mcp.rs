//! `cargo pixelgen mcp` driven by a real MCP client: the official Python SDK (`mcp` on
//! PyPI) runs `tests/mcp/client.py`, which lists the tools and calls each on a temporary
//! game crate. The client's Python comes from `PIXELGEN_MCP_PYTHON` (`.ci/run` makes a
//! venv with `mcp` and sets it); without one the test says so and passes, unless
//! `PIXELGEN_REQUIRE_MCP_CLIENT=1` (CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST: &str = r#"(
    // Written by hand; set_sprite keeps this.
    defaults: (size: (16, 16), palette: "db16"),
    sprites: {
        "hero":   (prompt: "knight", seed: 1, frames: 2),
        "potion": (prompt: "red potion", seed: 2),
        "coin":   (prompt: "gold coin", seed: 3),
    },
)"#;

fn client_python() -> Option<PathBuf> {
    let python = std::env::var_os("PIXELGEN_MCP_PYTHON").map(PathBuf::from)?;
    let works = Command::new(&python)
        .args(["-c", "import mcp.client.stdio"])
        .status()
        .is_ok_and(|s| s.success());
    works.then_some(python)
}

#[test]
fn a_real_mcp_client_lists_and_calls_every_tool() {
    let Some(python) = client_python() else {
        let required = std::env::var("PIXELGEN_REQUIRE_MCP_CLIENT").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "PIXELGEN_REQUIRE_MCP_CLIENT=1 but PIXELGEN_MCP_PYTHON does not name a Python with the `mcp` package"
        );
        eprintln!(
            "skipped: set PIXELGEN_MCP_PYTHON to a Python with `pip install mcp` (as .ci/run does)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"mcp-game\"\nversion = \"0.1.0\"\nedition = \"2024\"\n[workspace]\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(dir.path().join("sprites.ron"), MANIFEST).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let output = Command::new(python)
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_cargo-pixelgen"))
        .arg(dir.path().join("Cargo.toml"))
        .env_remove("PIXELGEN_CACHE_DIR")
        .env_remove("PIXELGEN_OFFLINE")
        .env_remove("CI")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["tools"],
        serde_json::json!([
            "generate",
            "get_sprite",
            "list_sprites",
            "pick",
            "preview_atlas",
            "preview_sprite",
            "set_sprite",
            "variations"
        ])
    );
    let preview = &report["schemas"]["preview_sprite"];
    assert_eq!(preview["required"], serde_json::json!(["name"]));
    assert!(
        preview["properties"]["scale"]["description"].is_string(),
        "{preview}"
    );

    let calls = report["calls"].as_array().unwrap();
    let call = |i: usize| &calls[i];
    let text = |i: usize| call(i)["text"].as_str().unwrap().to_owned();
    let failed = |i: usize| call(i)["error"].as_bool().unwrap();
    for (i, call) in calls.iter().enumerate() {
        eprintln!(
            "{:>15} {:<40} {:>7} ms  {}",
            call["tool"].as_str().unwrap(),
            call["arguments"].to_string(),
            call["ms"],
            if failed(i) { "tool error" } else { "ok" }
        );
    }
    // list_sprites before anything is generated: all stale, with the reason.
    assert!(!failed(0));
    let listed: serde_json::Value = serde_json::from_str(&text(0)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert_eq!(listed[0]["name"], "coin");
    assert_eq!(listed[0]["status"], "stale");
    assert_eq!(listed[0]["reasons"][0], "new sprite (not in sprites.lock)");
    // get_sprite: the fields as they apply, defaults included.
    assert!(!failed(1));
    let coin: serde_json::Value = serde_json::from_str(&text(1)).unwrap();
    assert_eq!(coin["prompt"], "gold coin");
    assert_eq!(coin["size"], serde_json::json!([16, 16]));
    assert_eq!(coin["palette"], "db16");
    // An unknown sprite and a stale preview are tool errors that say what to do.
    assert!(failed(2) && text(2).contains("its sprites are: coin, hero, potion"));
    assert!(failed(3) && text(3).contains("call `generate` first"));
    // generate, then everything is fresh.
    assert!(
        !failed(4) && text(4).contains("3 sprites: 3 generated"),
        "{}",
        text(4)
    );
    let listed: serde_json::Value = serde_json::from_str(&text(5)).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "fresh")
    );
    // Previews are PNG images: the hero's second frame ×4, and the atlas page.
    assert!(!failed(6));
    assert_eq!(call(6)["images"], serde_json::json!([[64, 64]]));
    assert!(failed(7) && text(7).contains("has 2 frame(s)"));
    assert!(
        !failed(8) && text(8).contains("4 layout index(es)"),
        "{}",
        text(8)
    );
    assert_eq!(call(8)["images"].as_array().unwrap().len(), 1);
    assert!(dir.path().join("sprites.lock").is_file());

    // set_sprite edits sprites.ron in place: the coin becomes stale for its prompt.
    assert!(!failed(9), "{}", text(9));
    let listed: serde_json::Value = serde_json::from_str(&text(10)).unwrap();
    assert_eq!(listed[0]["name"], "coin");
    assert_eq!(listed[0]["reasons"], serde_json::json!(["prompt changed"]));
    // A value the build would refuse is refused before the file is touched.
    assert!(failed(11) && text(11).contains("size 0×8"), "{}", text(11));
    assert!(text(11).contains("left as it was"));
    // A new sprite, a removed one, and generate draws exactly the changed ones.
    assert!(!failed(12) && !failed(13));
    assert!(
        text(14).contains("3 sprites: 2 generated, 1 cached"),
        "{}",
        text(14)
    );
    let manifest = std::fs::read_to_string(dir.path().join("sprites.ron")).unwrap();
    assert!(manifest.contains("// Written by hand; set_sprite keeps this."));
    assert!(
        manifest.contains(r#""coin":   (prompt: "silver coin", seed: 3),"#),
        "{manifest}"
    );
    assert!(
        manifest.contains(r#""gem": (prompt: "green gem", seed: 4),"#),
        "{manifest}"
    );
    assert!(!manifest.contains("potion"), "{manifest}");

    // Three seeds of the hero as one contact sheet (16 px ×8, 4 px apart), and picking one
    // writes its seed: the hero is stale for that reason only.
    assert!(!failed(15), "{}", text(15));
    assert!(text(15).contains("seeds 2, 3, 4"), "{}", text(15));
    assert_eq!(
        call(15)["images"],
        serde_json::json!([[3 * 128 + 2 * 4, 128]])
    );
    assert!(!failed(16), "{}", text(16));
    let listed: serde_json::Value = serde_json::from_str(&text(17)).unwrap();
    let hero = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "hero")
        .unwrap();
    assert_eq!(hero["reasons"], serde_json::json!(["seed changed"]));
    assert!(failed(18) && text(18).contains("no sprite `dragon`"));
    let manifest = std::fs::read_to_string(dir.path().join("sprites.ron")).unwrap();
    assert!(
        manifest.contains(r#""hero":   (prompt: "knight", seed: 3, frames: 2),"#),
        "{manifest}"
    );
}
