use super::*;
use crate::manifest::{LoraSource, parse};

fn groups(text: &str) -> Vec<GroupKey> {
    let manifest = parse(Path::new("/game/sprites.ron"), text).unwrap();
    // The LoRA files do not exist, so they are resolved here as the plan would.
    manifest
        .sprites
        .iter()
        .map(|sprite| {
            let loras: Vec<ResolvedLora> = sprite
                .loras
                .iter()
                .map(|l| match &l.source {
                    LoraSource::File { resolved, .. } => ResolvedLora {
                        file: resolved.clone(),
                        weight: l.weight,
                        hash: String::new(),
                        trained: None,
                        content_hash: None,
                    },
                    LoraSource::Trained(_) => unreachable!(),
                })
                .collect();
            sprite
                .generator
                .backend()
                .group(&loras, &sprite.conditioning)
        })
        .collect()
}

#[test]
fn sprites_naming_the_same_model_and_loras_share_a_group() {
    // Same LoRA written at different places (and spelled differently) in the file.
    let k = groups(
        r#"(sprites: {
            "a": (prompt: "a", generator: Diffusion(model: "m", steps: 4), loras: [(path: "style.safetensors", weight: 0.8)]),
            "b": (prompt: "b", seed: 9, size: (8, 8), generator: Diffusion(model: "m", steps: 4),
                  loras: [(path: "./style.safetensors", weight: 0.8)]),
            "c": (prompt: "c", generator: Server(url: "http://127.0.0.1:9090", model: "m", steps: 4)),
            "d": (prompt: "d", seed: 3, generator: Server(url: "http://127.0.0.1:9090", model: "m", steps: 4)),
        })"#,
    );
    assert_eq!(k[0], k[1]);
    assert_eq!(k[2], k[3]);
}

#[test]
fn any_sampling_setting_lora_weight_backend_or_server_splits_groups() {
    let k = groups(
        r#"(sprites: {
            "a": (prompt: "a", generator: Diffusion(model: "m", steps: 4)),
            "b": (prompt: "a", generator: Diffusion(model: "m", steps: 5)),
            "c": (prompt: "a", generator: Diffusion(model: "m", steps: 4, guidance: 7.5)),
            "d": (prompt: "a", generator: Diffusion(model: "m", steps: 4, scheduler: Ddim)),
            "e": (prompt: "a", generator: Diffusion(model: "m", steps: 4), loras: [(path: "s.safetensors", weight: 0.5)]),
            "f": (prompt: "a", generator: Diffusion(model: "m", steps: 4), loras: [(path: "s.safetensors", weight: 0.6)]),
            "g": (prompt: "a", generator: Diffusion(model: "other", steps: 4)),
            "h": (prompt: "a", generator: Diffusion(model: "m", steps: 4, resolution: (256, 256))),
            "i": (prompt: "a"),
            "j": (prompt: "a", generator: Server(url: "http://127.0.0.1:9090", model: "m", steps: 4)),
            "k": (prompt: "a", generator: Server(url: "http://127.0.0.1:9091", model: "m", steps: 4)),
            "l": (prompt: "a", generator: Server(url: "http://127.0.0.1:9090", model: "m", steps: 5)),
        })"#,
    );
    for i in 0..k.len() {
        for j in i + 1..k.len() {
            assert_ne!(k[i], k[j], "sprites {i} and {j}");
        }
    }
}
