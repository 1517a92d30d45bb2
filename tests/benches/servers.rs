//! Throughput of Server sprites: 16 and 64 frames on one and two local InvokeAI servers
//! (the tiny SD1 fixture, 64×64, 4 steps, on this machine's CPU), drawn through pixelgen's
//! pipeline (fan-out, fetch, pixelize, cache) beside the same frames enqueued on the
//! servers directly as one batch each and waited for (the peer: what the servers alone
//! take). Every run uses fresh prompts, so InvokeAI's node cache cannot answer.
//!
//! ```text
//! PIXELGEN_INVOKEAI_WEB=/path/to/invokeai-web cargo bench --profile dev -p pixelgen-tests --bench servers
//! ```
//!
//! Each server computes on one thread (`OMP_NUM_THREADS=1`), so on a machine with two or
//! more cores two servers stand for two machines; pixelgen's own work (fetching,
//! pixelizing, caching) shares the cores with them.

use std::time::{Duration, Instant};

use pixelgen_build::Environment;
use pixelgen_build::FileHasher;
use pixelgen_build::Quiet;
use pixelgen_build::{Project, Session};
use pixelgen_test_support::fixtures;
use pixelgen_tests::invokeai::{self, InvokeAi};
use serde_json::{Value, json};

fn pixelgen_run(urls: &[String], frames: u32, tag: &str) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let urls = urls
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.path().join("sprites.ron"),
        format!(
            r#"(sprites: {{ "coins": (prompt: "gold coins {tag}", seed: 1, frames: {frames}, size: (16, 16),
                generator: Server(url: [{urls}], model: "{model}", steps: 4, guidance: 5.0, scheduler: "ddim", resolution: (64, 64))) }})"#,
            model = invokeai::MODEL
        ),
    )
    .unwrap();
    let project = Project {
        manifest_path: dir.path().join("sprites.ron"),
        lock_path: dir.path().join("sprites.lock"),
        cache_dir: dir.path().join("cache"),
    };
    let start = Instant::now();
    let mut session = Session::open(
        project,
        FileHasher::in_memory(),
        &Environment::default(),
        false,
    )
    .unwrap();
    let summary = session.realize(false, &mut Quiet).unwrap();
    assert_eq!(summary.generated, 1);
    start.elapsed()
}

/// The same frames straight to the servers: one batch per server (an even split), a
/// graph like pixelgen's, waited for by polling the batch's status.
fn direct_run(servers: &[&InvokeAi], frames: u32, tag: &str) -> Duration {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let start = Instant::now();
    let mut batches = Vec::new();
    for (index, server) in servers.iter().enumerate() {
        let models = server.get(&format!(
            "/api/v2/models/?model_name={}&model_type=main",
            invokeai::MODEL
        ));
        let m = &models["models"][0];
        let model = json!({"key": m["key"], "hash": m["hash"], "name": m["name"], "base": m["base"], "type": m["type"]});
        let seeds: Vec<u64> = (0..frames)
            .filter(|f| *f as usize % servers.len() == index)
            .map(|f| 1 + f as u64)
            .collect();
        let edge = |a: &str, af: &str, b: &str, bf: &str| json!({"source": {"node_id": a, "field": af}, "destination": {"node_id": b, "field": bf}});
        let graph = json!({"id": "direct", "nodes": {
            "loader": {"id": "loader", "type": "main_model_loader", "model": model},
            "positive": {"id": "positive", "type": "compel", "prompt": format!("gold coins {tag} direct")},
            "negative": {"id": "negative", "type": "compel", "prompt": ""},
            "noise": {"id": "noise", "type": "noise", "seed": 0, "width": 64, "height": 64, "use_cpu": true},
            "denoise": {"id": "denoise", "type": "denoise_latents", "steps": 4, "cfg_scale": 5.0, "scheduler": "ddim", "denoising_start": 0.0, "denoising_end": 1.0},
            "l2i": {"id": "l2i", "type": "l2i", "is_intermediate": false, "fp32": true},
        }, "edges": [
            edge("loader", "clip", "positive", "clip"), edge("loader", "clip", "negative", "clip"),
            edge("loader", "unet", "denoise", "unet"), edge("positive", "conditioning", "denoise", "positive_conditioning"),
            edge("negative", "conditioning", "denoise", "negative_conditioning"), edge("noise", "noise", "denoise", "noise"),
            edge("denoise", "latents", "l2i", "latents"), edge("loader", "vae", "l2i", "vae"),
        ]});
        let body = json!({"batch": {"graph": graph, "runs": 1, "data": [[{"node_path": "noise", "field_name": "seed", "items": seeds}]]}, "prepend": false});
        let answer: Value = agent
            .post(&format!(
                "{}/api/v1/queue/default/enqueue_batch",
                server.url()
            ))
            .send_json(body)
            .unwrap()
            .into_json()
            .unwrap();
        batches.push((
            server.url(),
            answer["batch"]["batch_id"].as_str().unwrap().to_string(),
        ));
    }
    for (url, batch) in batches {
        loop {
            let status: Value = agent
                .get(&format!("{url}/api/v1/queue/default/b/{batch}/status"))
                .call()
                .unwrap()
                .into_json()
                .unwrap();
            if status["pending"] == 0 && status["in_progress"] == 0 {
                assert_eq!(status["failed"], 0, "{status}");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    start.elapsed()
}

fn main() {
    let Some(web) = invokeai::executable() else {
        return;
    };
    let model = fixtures::tiny_model("sd1");
    let mut a = InvokeAi::start(&web);
    let mut b = InvokeAi::start(&web);
    a.ready(&model, &[]);
    b.ready(&model, &[]);
    // Warm both: the first graph loads the model.
    pixelgen_run(&[a.url()], 1, "warm a");
    pixelgen_run(&[b.url()], 1, "warm b");

    println!(
        "Server sprites, tiny SD1 64x64, 4 steps, CPU (InvokeAI 6.14 on loopback, one thread each)"
    );
    println!("median of 3 runs for 16 frames, 1 run for 64; pixelgen and direct runs alternate");
    println!(
        "{:>6}  {:>7}  {:>12}  {:>10}  {:>12}  {:>10}  {:>8}",
        "frames", "servers", "pixelgen s", "frames/s", "direct s", "frames/s", "ratio"
    );
    let median = |mut runs: Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    };
    for (frames, reps) in [(16u32, 3), (64, 1)] {
        for count in [1usize, 2] {
            let servers: Vec<&InvokeAi> = [&a, &b].into_iter().take(count).collect();
            let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
            let (mut ours, mut direct) = (Vec::new(), Vec::new());
            for rep in 0..reps {
                let tag = format!("{frames}x{count} run {rep}");
                ours.push(pixelgen_run(&urls, frames, &tag).as_secs_f64());
                direct.push(direct_run(&servers, frames, &tag).as_secs_f64());
            }
            let (ours, direct) = (median(ours), median(direct));
            println!(
                "{frames:>6}  {count:>7}  {ours:>12.2}  {:>10.2}  {direct:>12.2}  {:>10.2}  {:>8.2}",
                frames as f64 / ours,
                frames as f64 / direct,
                ours / direct
            );
        }
    }
}
