//! Server sprites against real InvokeAI servers (two, on loopback, started and stopped
//! here): builds through `cargo build`, rebuilds, edits, fan-out over both servers, a
//! server killed mid-batch, and an offline build from the cache.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use pixelgen_test_support::fixtures;
use pixelgen_tests::GameCrate;
use pixelgen_tests::invokeai::{self, InvokeAi};
use serde_json::Value;

fn manifest(urls: &[String], coins_prompt: &str, hero_prompt: &str, lora: &Path) -> String {
    let urls = urls
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"(
    defaults: (
        size: (16, 16),
        palette: "pico-8",
        generator: Server(url: [{urls}], model: "{model}", steps: 4, guidance: 5.0, scheduler: "ddim", resolution: (64, 64)),
    ),
    sprites: {{
        "hero":  (prompt: "{hero_prompt}", seed: 3),
        "coins": (prompt: "{coins_prompt}", seed: 100, frames: 16),
        "gem":   (prompt: "a blue gem", seed: 9, loras: [(path: {lora:?}, weight: 0.8)]),
        "tree":  (prompt: "a tree", seed: 5, generator: Procedural),
        "castle": (prompt: "a castle", seed: 4, frames: 2,
                   generator: Server(url: [{urls}], model: "tiny-sdxl", steps: 3, guidance: 5.0, scheduler: "euler", resolution: (64, 64))),
    }},
)"#,
        model = invokeai::MODEL,
        lora = lora.display().to_string(),
    )
}

/// Every (prompt, seed) the servers drew for pixelgen, counting repeats.
fn drawn(servers: &[&InvokeAi]) -> Vec<Vec<(String, u64)>> {
    servers.iter().map(|s| s.drawn()).collect()
}

#[test]
fn server_sprites_build_fan_out_survive_a_dead_server_and_build_offline() {
    let Some(web) = invokeai::executable() else {
        return;
    };
    let model = fixtures::tiny_model("sd1");
    let lora = fixtures::family("sd1").join("lora_kohya.safetensors");
    // Both start at once; each then gets the model and the LoRA.
    let mut a = InvokeAi::start(&web);
    let mut b = InvokeAi::start(&web);
    a.ready(&model, &[&lora]);
    b.ready(&model, &[&lora]);
    // Only server a has the SDXL model: b is left out of its sprite's frames.
    let sdxl = fixtures::tiny_model("sdxl");
    a.install_main(&sdxl, "tiny-sdxl", "sdxl");
    let urls = vec![a.url(), b.url()];

    let game = GameCrate::new(
        "e2e_servers",
        &manifest(&urls, "gold coins", "a knight with a red shield", &lora),
    );
    let first = game.build(&[]);
    assert!(first.success, "{}", first.stderr);
    assert_eq!(first.summary, Some((5, 5, 0)), "{}", first.stderr);
    // 1 + 16 + 1 + 2 frames, each drawn once, on both servers between them; the SDXL
    // castle only on a, and the build says why b drew none of it.
    let per_server = drawn(&[&a, &b]);
    let all: Vec<&(String, u64)> = per_server.iter().flatten().collect();
    let distinct: BTreeSet<&(String, u64)> = all.iter().copied().collect();
    assert_eq!(all.len(), 20, "{per_server:?}");
    assert_eq!(distinct.len(), 20, "no frame drawn twice: {per_server:?}");
    assert_eq!(
        per_server[0]
            .iter()
            .filter(|(p, _)| p == "a castle")
            .count(),
        2,
        "{per_server:?}"
    );
    assert!(
        first.stderr.contains("left out of this run")
            && first.stderr.contains("no main model named `tiny-sdxl`"),
        "{}",
        first.stderr
    );
    let coins: Vec<usize> = per_server
        .iter()
        .map(|s| s.iter().filter(|(p, _)| p == "gold coins").count())
        .collect();
    assert_eq!(coins.iter().sum::<usize>(), 16);
    assert!(
        coins.iter().all(|&c| c > 0),
        "both servers drew coins: {coins:?}"
    );
    assert!(
        first.stderr.contains(&format!(
            "127.0.0.1:{} drew {}",
            a.port,
            per_server[0].len()
        )) && first.stderr.contains(&format!(
            "127.0.0.1:{} drew {}",
            b.port,
            per_server[1].len()
        )),
        "the note says what each server drew: {}",
        first.stderr
    );
    let lock = game.lock();
    assert!(lock.contains("\"server-model:tiny-sd1\""), "{lock}");
    assert!(!lock.contains("127.0.0.1"), "no URL in the lock: {lock}");
    let index = game.index(&first);
    assert!(index.to_string().contains("coins"));

    // Nothing changed: nothing drawn.
    let again = game.build(&[]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(again.summary, Some((5, 0, 5)), "{}", again.stderr);
    assert_eq!(drawn(&[&a, &b]).iter().map(Vec::len).sum::<usize>(), 20);

    // One edited prompt: exactly that frame.
    game.write_manifest(&manifest(
        &urls,
        "gold coins",
        "a knight with a blue shield",
        &lora,
    ));
    let edited = game.build(&[]);
    assert!(edited.success, "{}", edited.stderr);
    assert_eq!(edited.summary, Some((5, 1, 4)), "{}", edited.stderr);
    assert_eq!(drawn(&[&a, &b]).iter().map(Vec::len).sum::<usize>(), 21);

    // The servers' order in the manifest (not part of any key) changes nothing.
    game.write_manifest(&manifest(
        &[b.url(), a.url()],
        "gold coins",
        "a knight with a blue shield",
        &lora,
    ));
    let reordered = game.build(&[]);
    assert_eq!(reordered.summary, Some((5, 0, 5)), "{}", reordered.stderr);

    // 16 new coin frames; server b is killed once it has drawn one of them. The build
    // succeeds with a on its own, and no coin frame is drawn twice.
    game.write_manifest(&manifest(
        &urls,
        "silver coins",
        "a knight with a blue shield",
        &lora,
    ));
    let build = std::thread::scope(|scope| {
        let build = scope.spawn(|| game.build(&[]));
        let start = Instant::now();
        while !b.drawn().iter().any(|(p, _)| p == "silver coins") {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "b never drew a silver coin"
            );
            assert!(
                !build.is_finished(),
                "the build ended before b drew a silver coin"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let by_b_before_kill: Vec<u64> = b
            .drawn()
            .into_iter()
            .filter(|(p, _)| p == "silver coins")
            .map(|(_, seed)| seed)
            .collect();
        b.kill();
        (build.join().expect("build thread"), by_b_before_kill)
    });
    let (killed, by_b) = build;
    assert!(killed.success, "{}", killed.stderr);
    assert_eq!(killed.summary, Some((5, 1, 4)), "{}", killed.stderr);
    assert!(
        killed
            .stderr
            .contains(&format!("image server 127.0.0.1:{} was given up", b.port)),
        "{}",
        killed.stderr
    );
    let by_a: Vec<u64> = a
        .drawn()
        .into_iter()
        .filter(|(p, _)| p == "silver coins")
        .map(|(_, seed)| seed)
        .collect();
    let covered: BTreeSet<u64> = by_a.iter().chain(&by_b).copied().collect();
    assert_eq!(
        covered,
        (100..116).collect(),
        "every frame drawn: a {by_a:?}, b {by_b:?}"
    );
    assert_eq!(
        by_a.iter().collect::<BTreeSet<_>>().len(),
        by_a.len(),
        "a drew no frame twice: {by_a:?}"
    );

    // Offline (CI), with no server at all: the cache is the truth.
    a.kill();
    let offline = game.build(&[("CI", "true")]);
    assert!(offline.success, "{}", offline.stderr);
    assert_eq!(offline.summary, Some((5, 0, 5)), "{}", offline.stderr);
    // Online with every server down and nothing stale: the lock's identity keeps it fresh.
    let down = game.build(&[]);
    assert!(down.success, "{}", down.stderr);
    assert_eq!(down.summary, Some((5, 0, 5)), "{}", down.stderr);
    assert!(
        down.stderr.contains("no image server answered"),
        "{}",
        down.stderr
    );
}

/// InvokeAI draws conditioned sprites with its own nodes: an init image (`i2l` and
/// `denoising_start = 1 − strength`), a mask (`create_denoise_mask`, inverted: InvokeAI's
/// masks keep white), a ControlNet installed on it under the folder's name (`controlnet`)
/// and a tile (`seamless`), each image uploaded once per group. A ControlNet scale InvokeAI
/// does not take is refused at the field when the manifest is read.
#[test]
fn invokeai_draws_from_an_init_image_a_mask_a_controlnet_and_tiles() {
    let Some(web) = invokeai::executable() else {
        return;
    };
    let mut server = InvokeAi::start(&web);
    server.ready(&fixtures::tiny_model("sd1"), &[]);
    let controlnet = fixtures::diffusion().join("conditioned/sd1-controlnet");
    server.install_controlnet(&controlnet, "sd1-controlnet", "sd-1");
    let url = server.url();
    let manifest = format!(
        r#"(
    defaults: (
        size: (16, 16),
        generator: Server(url: {url:?}, model: "{model}", steps: 4, guidance: 5.0, scheduler: "ddim", resolution: (64, 64)),
    ),
    sprites: {{
        "sketch": (prompt: "a knight", seed: 3, frames: 2, init: (image: "art/sketch.png", strength: 0.5)),
        "fixed":  (prompt: "a knight", seed: 10, init: (image: "art/sketch.png", mask: "art/mask.png")),
        "tile":   (prompt: "grass", seed: 20, tiling: XY),
        "posed":  (prompt: "a knight", seed: 30,
                   controlnet: [(model: {controlnet:?}, image: "art/pose.png", scale: 0.8, end: 0.5)]),
    }},
)"#,
        model = invokeai::MODEL,
        controlnet = controlnet.display().to_string(),
    );
    let game = GameCrate::new("e2e_invokeai_conditioned", &manifest);
    let art = game.path().join("art");
    std::fs::create_dir_all(&art).unwrap();
    image::RgbImage::from_fn(16, 16, |x, _| image::Rgb([x as u8 * 15, 40, 90]))
        .save(art.join("sketch.png"))
        .unwrap();
    image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 0 } else { 255 }]))
        .save(art.join("mask.png"))
        .unwrap();
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([if x == y { 255 } else { 0 }; 3]))
        .save(art.join("pose.png"))
        .unwrap();
    let first = game.build(&[]);
    assert!(first.success, "{}\n{}", first.stderr, server.log());
    assert_eq!(first.summary, Some((4, 4, 0)), "{}", first.stderr);

    // The graphs the server ran, by the sprite's prompt and seed.
    let items = server.get("/api/v1/queue/default/list_all");
    let graphs: Vec<(u64, Value)> = items
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["origin"] == "pixelgen" && item["status"] == "completed")
        .map(|item| {
            let detail = server.get(&format!(
                "/api/v1/queue/default/i/{}",
                item["item_id"].as_u64().unwrap()
            ));
            let seed = detail["session"]["graph"]["nodes"]["noise"]["seed"]
                .as_u64()
                .unwrap_or(u64::MAX);
            (seed, detail["session"]["graph"].clone())
        })
        .collect();
    assert_eq!(graphs.len(), 5, "{graphs:#?}");
    let graph_of = |seed: u64| &graphs.iter().find(|(s, _)| *s == seed).unwrap().1;
    let node = |graph: &Value, id: &str| graph["nodes"][id].clone();
    let sketch = graph_of(3);
    assert_eq!(node(sketch, "init")["type"], "i2l");
    assert_eq!(node(sketch, "denoise")["denoising_start"], 0.5);
    assert!(node(sketch, "mask").is_null());
    let fixed = graph_of(10);
    assert_eq!(node(fixed, "mask")["type"], "create_denoise_mask");
    assert_eq!(node(fixed, "denoise")["denoising_start"], 0.0);
    // pixelgen's mask repaints where white; InvokeAI's keeps where white: sent inverted,
    // at the drawing's size.
    let mask_name = node(fixed, "mask")["mask"]["image_name"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = ureq::get(&format!("{url}/api/v1/images/i/{mask_name}/full"))
        .call()
        .unwrap();
    let mut png = Vec::new();
    std::io::Read::read_to_end(&mut bytes.into_reader(), &mut png).unwrap();
    let mask = image::load_from_memory(&png).unwrap().to_luma8();
    assert_eq!(mask.dimensions(), (64, 64));
    assert_eq!(
        (mask.get_pixel(0, 0)[0], mask.get_pixel(63, 0)[0]),
        (255, 0)
    );
    let posed = graph_of(30);
    let control = node(posed, "control0");
    assert_eq!(control["type"], "controlnet");
    assert_eq!(control["control_model"]["name"], "sd1-controlnet");
    assert_eq!(
        (
            control["control_weight"].as_f64(),
            control["end_step_percent"].as_f64()
        ),
        (Some(0.8), Some(0.5))
    );
    let tile = graph_of(20);
    assert_eq!(node(tile, "seamless")["seamless_x"], true);
    assert_eq!(node(tile, "seamless")["seamless_y"], true);
    // Each distinct image goes up once per group: the sketch once for its two frames,
    // once with the inpainted sprite's (inverted) mask, and the pose.
    let uploads = server.get("/api/v1/images/?is_intermediate=true&categories=user&limit=100");
    assert_eq!(uploads["total"], 4, "{uploads}");

    game.write_manifest(&manifest.replace("scale: 0.8", "scale: 3.0"));
    let output = game.build(&[]);
    assert!(!output.success);
    assert!(
        output.stderr.contains("which InvokeAI does not take"),
        "{}",
        output.stderr
    );
}
