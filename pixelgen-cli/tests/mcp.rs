//! `cargo pixelgen mcp` driven by a real MCP client: the official Python SDK (`mcp` on
//! PyPI) runs `tests/mcp/client.py`, which lists the tools and calls each on a temporary
//! game crate. The client's Python comes from `PIXELGEN_MCP_PYTHON` (`.ci/run` makes a
//! venv with `mcp` and sets it); without one the test says so and passes, unless
//! `PIXELGEN_REQUIRE_MCP_CLIENT=1` (CI) makes that a failure.
//!
//! The `screenshot` tool and `generate`'s reload go to a running game over the Bevy Remote
//! Protocol: the example game's dev binary, run headless, when the workspace built it and a
//! Vulkan driver is there (required with `PIXELGEN_REQUIRE_SCREENSHOT`, as in CI);
//! otherwise to a port nothing listens on, where the tools must say so.

use std::path::{Path, PathBuf};
use std::process::Command;

use pixelgen_test_support::process::{self, KillOnDrop};
use pixelgen_test_support::{game, headless, net};

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
    let dir = game::temp_crate("mcp-game", MANIFEST);

    let game = Game::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let output = process::without_pixelgen_settings(&mut Command::new(python))
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_cargo-pixelgen"))
        .arg(dir.path().join("Cargo.toml"))
        .arg(game.port.to_string())
        .output()
        .unwrap();
    process::assert_success(&output);
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
            "screenshot",
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
            "{:>15} {:<45} {:>7} ms  {}",
            call["tool"].as_str().unwrap(),
            call["arguments"].to_string(),
            call["ms"],
            if failed(i) { "tool error" } else { "ok" }
        );
    }
    // The first generate reported each of its four frames (hero has two).
    let progress = call(4)["progress"].as_array().unwrap();
    assert_eq!(progress.len(), 5, "{progress:?}");
    assert_eq!(progress[0][0], 0.0);
    assert!(progress.iter().all(|p| p[1] == 4.0), "{progress:?}");
    assert_eq!(progress[4][0], 4.0);
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
    // (Read after every call: the coin's prompt is the last one set, at call 19.)
    let manifest = std::fs::read_to_string(dir.path().join("sprites.ron")).unwrap();
    assert!(manifest.contains("// Written by hand; set_sprite keeps this."));
    assert!(
        manifest.contains(r#""coin":   (prompt: "copper coin", seed: 3),"#),
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

    // generate with names: only the coin; the hero (new seed) is held back, so nothing is
    // published yet.
    assert!(!failed(19), "{}", text(19));
    assert!(
        text(20).contains("3 sprites: 1 generated, 1 cached"),
        "{}",
        text(20)
    );
    assert!(
        text(20).contains("1 other sprite(s) are still stale"),
        "{}",
        text(20)
    );
    assert_eq!(
        call(20)["progress"],
        serde_json::json!([[0.0, 1.0, null], [1.0, 1.0, "coin#0 done"]])
    );
    assert!(
        failed(21) && text(21).contains("no sprite `dragon`"),
        "{}",
        text(21)
    );
    // The rest, published, and the running game asked to reload (or said to be absent).
    assert!(
        text(22).contains("3 sprites: 1 generated, 2 cached")
            && text(22).contains("live atlases published"),
        "{}",
        text(22)
    );
    if game.running() {
        assert!(text(22).contains("the game: reloaded"), "{}", text(22));
        assert!(!failed(23), "{}", text(23));
        assert_eq!(call(23)["images"], serde_json::json!([[800, 600]]));
    } else {
        let absent = format!("no running game answers on 127.0.0.1:{}", game.port);
        assert!(text(22).contains(&absent), "{}", text(22));
        assert!(failed(23) && text(23).contains(&format!("127.0.0.1:{}", game.port)));
    }

    // Resources: the manifest as text, the published atlas page as a PNG.
    assert_eq!(
        report["resources"],
        serde_json::json!([
            ["pixelgen://manifest/sprites.ron", "text/plain"],
            ["pixelgen://atlas/main/0.png", "image/png"]
        ])
    );
    let read = &report["read"];
    assert!(
        read["pixelgen://manifest/sprites.ron"]["text"]
            .as_str()
            .unwrap()
            .contains("copper coin")
    );
    assert!(
        read["pixelgen://atlas/main/0.png"]["png"].is_array(),
        "{read}"
    );
    assert!(
        read["pixelgen://atlas/main/9.png"]["error"]
            .as_str()
            .unwrap()
            .contains("no resource"),
        "{read}"
    );
}

/// The example game's dev binary, headless with BRP on a free port, when it can run here.
struct Game {
    port: u16,
    child: Option<KillOnDrop>,
}

impl Game {
    fn start() -> Game {
        let port = net::free_port();
        let binary = Path::new(env!("CARGO_BIN_EXE_cargo-pixelgen")).with_file_name("example-game");
        let vulkan = headless::vulkan_driver_installed();
        let required = std::env::var_os("PIXELGEN_REQUIRE_SCREENSHOT").is_some();
        if !binary.is_file() || !vulkan {
            assert!(
                !required || !vulkan,
                "PIXELGEN_REQUIRE_SCREENSHOT is set but {} is missing (run `cargo test --workspace`)",
                binary.display()
            );
            eprintln!("no game: the screenshot tool is tested against an empty port");
            return Game { port, child: None };
        }
        let child = headless::without_display(&mut Command::new(binary))
            .args(["--headless", "--remote-port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let child = KillOnDrop(child);
        // Wait until its BRP server accepts connections.
        assert!(
            net::wait_for_port(port, std::time::Duration::from_secs(120)),
            "the example game did not listen on {port} within 120 s"
        );
        Game {
            port,
            child: Some(child),
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }
}
