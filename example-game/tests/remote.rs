//! The example game's dev build on the Bevy Remote Protocol, for real: the game runs
//! headless (offscreen through wgpu, on Mesa's lavapipe where there is no GPU) and
//! answers pixelgen's methods over HTTP on 127.0.0.1, as `cargo pixelgen mcp` calls them.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use pixelgen_test_support::fs::read_json;
use pixelgen_test_support::process::KillOnDrop;
use pixelgen_test_support::{headless, images, net};
use serde_json::{Value, json};

mod common;

/// One JSON-RPC call; `Err` when nothing answers.
fn call(port: u16, method: &str, params: Value) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let response = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
        .post(&format!("http://127.0.0.1:{port}/"))
        .send_json(body);
    match response {
        Ok(response) => Ok(response.into_json().unwrap()),
        Err(ureq::Error::Status(_, response)) => Ok(response.into_json().unwrap()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn the_running_game_answers_screenshot_and_reload_over_brp() {
    if !common::can_render() {
        return;
    }
    let port = net::free_port();
    let mut child =
        headless::without_display(&mut Command::new(env!("CARGO_BIN_EXE_example-game")))
            .args(["--headless", "--remote-port", &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run example-game");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // The game, killed when the test ends (passing or not).
    let _game = KillOnDrop(child);
    let announced = stdout
        .lines()
        .map_while(Result::ok)
        .find(|line| line.contains("remote protocol on"));
    assert_eq!(
        announced.as_deref(),
        Some(format!("example-game: remote protocol on http://127.0.0.1:{port}").as_str())
    );

    // The server starts with the app; wait until it answers.
    let deadline = Instant::now() + Duration::from_secs(120);
    let reload = loop {
        match call(port, "pixelgen.reload", Value::Null) {
            Ok(answer) => break answer,
            Err(e) if Instant::now() > deadline => panic!("no BRP answer within 120 s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    // The game reloads the atlases its build published (cache/live/…/index.json).
    let set = &reload["result"]["sets"][0];
    assert_eq!(set["status"], "reloaded", "{reload}");
    let index: Value = read_json(Path::new(set["index"].as_str().unwrap()));
    assert_eq!(set["stamp"], index["stamp"]);
    assert_eq!(
        set["atlases"],
        json!(["characters", "items", "tiles"]),
        "{reload}"
    );

    // Screenshots: the game's picture. The first frames after start may still be the clear
    // colour (the scene is spawned and its atlases uploaded over a few frames); from then
    // on every screenshot is the scene.
    let screenshot = |ticket: u32| -> image::RgbImage {
        let answer = call(port, "pixelgen.screenshot", json!({ "ticket": ticket })).unwrap();
        let result = &answer["result"];
        assert_eq!(
            (result["width"].as_u64(), result["height"].as_u64()),
            (Some(800), Some(600)),
            "{answer:.300}"
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(result["png"].as_str().unwrap())
            .unwrap();
        image::load_from_memory(&png).unwrap().into_rgb8()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ticket = 0;
    while images::colour_count(&screenshot(ticket)) < 8 {
        assert!(Instant::now() < deadline, "only blank frames for 30 s");
        ticket += 1;
    }
    for ticket in ticket + 1..ticket + 3 {
        common::check_picture(&screenshot(ticket));
    }

    // An unknown method is BRP's own error, not a hang.
    let answer = call(port, "pixelgen.nothing", Value::Null).unwrap();
    assert_eq!(answer["error"]["code"], -32601, "{answer}");
}
