//! Unit tests of the manifest's generators and LoRAs: Diffusion settings and models, Server
//! URLs and kinds, ComfyUI workflows, LoRA files and `trained_loras`, and paths that are
//! not files.

use super::*;
use crate::generate::diffusion::{DiffusionSpec, Scheduler};
use crate::generate::image_servers::{
    SERVER_DEFAULT_GUIDANCE, SERVER_DEFAULT_SCHEDULER, SERVER_DEFAULT_STEPS, ServerKind,
};

#[test]
fn diffusion_generator_parses_with_parameters() {
    let m = parse_ok(
        r#"(defaults: (generator: Diffusion(model: "stabilityai/sd-turbo", steps: 4, guidance: 0.0), loras: [(path: "art/px.safetensors", weight: 0.8)]),
        sprites: { "a": (prompt: "x") })"#,
    );
    match &m.sprites[0].generator {
        GeneratorSpec::Diffusion(DiffusionSpec {
            model,
            steps,
            scheduler,
            ..
        }) => {
            assert_eq!(model, "stabilityai/sd-turbo");
            assert_eq!(*steps, 4);
            assert_eq!(*scheduler, Scheduler::EulerAncestral);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        m.sprites[0].loras[0].source,
        LoraSource::File {
            path: "art/px.safetensors".into(),
            resolved: "game/art/px.safetensors".into()
        }
    );
    assert_eq!(m.sprites[0].loras[0].weight, 0.8);
}

/// `trained_loras` declares LoRAs trained from a folder, with defaults for every setting;
/// sprites name them with `(trained: "…")`.
#[test]
fn trained_loras_parse_with_defaults_and_sprites_name_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("art/style")).unwrap();
    let text = r##"(
    trained_loras: {
        "style": (images: "art/style", model: "m", rank: 4, steps: 300, resolution: (64, 64), background: "#102030", conv: true),
        "plain": (images: "art/style", model: "m"),
    },
    sprites: { "a": (prompt: "x", loras: [(trained: "style", weight: 0.7), (path: "f.safetensors")]) },
)"##;
    let m = parse(&dir.path().join("sprites.ron"), text).unwrap();
    let names: Vec<&str> = m.trained_loras.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["plain", "style"], "sorted by name");
    let style = &m.trained_loras[1];
    assert_eq!(style.images_dir, dir.path().join("art/style"));
    assert_eq!(style.settings.rank, 4);
    assert_eq!(style.settings.alpha, 4.0, "alpha defaults to the rank");
    assert_eq!(style.settings.steps, 300);
    assert_eq!(style.settings.resolution, Some((64, 64)));
    assert_eq!(style.settings.background, [0x10, 0x20, 0x30]);
    assert!(style.settings.conv && !style.settings.text_encoder);
    assert_eq!(
        m.trained_loras[0].settings,
        crate::manifest::TrainingSettings::default()
    );
    assert_eq!(
        m.sprites[0].loras[0].source,
        LoraSource::Trained("style".into())
    );
    assert_eq!(m.sprites[0].loras[0].weight, 0.7);
    assert!(matches!(
        m.sprites[0].loras[1].source,
        LoraSource::File { .. }
    ));
    assert_eq!(
        m.lora_inputs().len(),
        2,
        "the LoRA file and the image folder"
    );
}

/// Mistakes in `trained_loras` and in the LoRAs that name them are errors at the value.
#[test]
fn trained_lora_mistakes_are_pointed_at() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("art")).unwrap();
    std::fs::write(dir.path().join("file.png"), b"x").unwrap();
    let manifest = dir.path().join("sprites.ron");
    let lora = |settings: &str| {
        format!(
            "(trained_loras: {{\n \"s\": (images: \"art\", model: \"m\"{settings}) }},\n sprites: {{ \"a\": (prompt: \"b\", loras: [(trained: \"s\")]) }})"
        )
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            r#"(sprites: {
 "a": (prompt: "b", loras: [(trained: "nope")]) })"#
                .into(),
            "\"nope\"",
            "uses trained LoRA `nope`, which is not declared",
        ),
        (
            r#"(trained_loras: {
 "s": (images: "art", model: "m") },
 sprites: {
 "a": (prompt: "b", loras: [(trained: "style")]) })"#
                .into(),
            "\"style\"",
            "declared trained LoRAs: s",
        ),
        (
            r#"(trained_loras: {
 "s": (images: "missing", model: "m") },
 sprites: { "a": (prompt: "b") })"#
                .into(),
            "\"missing\"",
            "`missing` is not a folder",
        ),
        (
            r#"(trained_loras: {
 "s": (images: "file.png", model: "m") },
 sprites: { "a": (prompt: "b") })"#
                .into(),
            "\"file.png\"",
            "is not a folder",
        ),
        (lora(", rank: 0"), "0", "rank 0 is out of range"),
        (lora(", steps: 0"), "0", "0 training steps"),
        (
            lora(", learning_rate: 2.0"),
            "2.0",
            "learning rate 2 is out of range",
        ),
        (
            lora(", resolution: (60, 64)"),
            "(60, 64)",
            "cannot be trained at",
        ),
        (
            lora(", background: \"blue\""),
            "\"blue\"",
            "is not a colour",
        ),
        (
            lora(", caption: \" \""),
            "\" \"",
            "the default caption is empty",
        ),
        (
            r#"(trained_loras: {
 "s": (images: "art", model: "m"),
 "s": (images: "art", model: "m") },
 sprites: { "a": (prompt: "b") })"#
                .into(),
            "\"s\": (images",
            "duplicate trained LoRA name",
        ),
        (
            r#"(sprites: {
 "a": (prompt: "b", loras: [(path: "a.safetensors", trained: "s")]) })"#
                .into(),
            "[(path",
            "has both `path` and `trained`",
        ),
    ];
    for (text, value, words) in cases {
        let (message, at) = match parse(&manifest, &text) {
            Ok(_) => panic!("{text}: accepted"),
            Err(ManifestError::Invalid(d)) => (d.to_string(), d.line_column()),
            Err(e) => panic!("{text}: {e}"),
        };
        assert!(message.contains(words), "{text}: {message}");
        assert!(points_at(&text, at, value), "{text}: {at:?}: {message}");
    }
}

#[test]
fn diffusion_settings_that_cannot_run_are_refused_where_written() {
    for (setting, value, words) in [
        ("resolution: (511, 513)", "(511, 513)", "resolution 511×513"),
        ("resolution: (0, 512)", "(0, 512)", "resolution 0×512"),
        (
            "resolution: (8192, 512)",
            "(8192, 512)",
            "resolution 8192×512",
        ),
        ("guidance: NaN", "NaN", "guidance NaN"),
        ("guidance: inf", "inf", "guidance inf"),
        ("guidance: -1.0", "-1.0", "guidance -1"),
        ("steps: 0", "0", "0 diffusion steps"),
        ("steps: 5000", "5000", "5000 diffusion steps"),
    ] {
        let text = format!(
            "(defaults: (seed: 1),\n sprites: {{ \"a\": (prompt: \"b\", generator: Diffusion(model: \"m\", {setting})) }})"
        );
        let (message, at) = parse_err(&text);
        assert!(message.contains(words), "{setting}: {message}");
        assert!(points_at(&text, at, value), "{setting}: {at:?}: {message}");
    }
    parse_ok(
        "(sprites: { \"a\": (prompt: \"b\", generator: Diffusion(model: \"m\", resolution: (512, 768), guidance: 7.5, steps: 30)) })",
    );
}

#[test]
fn pickle_weight_files_are_refused_wherever_they_are_named() {
    let text = "(sprites: {\n \"a\": (prompt: \"b\", generator: Diffusion(model: \"old.ckpt\")) })";
    let (message, at) = parse_err(text);
    assert!(message.contains("pickle"), "{message}");
    assert!(points_at(text, at, "\"old.ckpt\""), "{at:?}: {message}");
    for lora in ["style.pt", "style.PTH", "style.bin", "style.pkl"] {
        let text = format!(
            "(defaults: (loras: [(path: \"{lora}\", weight: 0.5)]),\n sprites: {{ \"a\": (prompt: \"b\") }})"
        );
        let (message, at) = parse_err(&text);
        assert!(message.contains("is a pickle file"), "{message}");
        assert!(
            points_at(&text, at, &format!("\"{lora}\"")),
            "{at:?}: {message}"
        );
    }
}

/// LoRA, palette and model paths that name a FIFO, a device or a directory are refused
/// when the manifest is read, at the path, without opening them (which would block).
#[cfg(unix)]
#[test]
fn paths_that_are_not_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mkfifo = |name: &str| {
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join(name))
            .status()
            .unwrap();
        assert!(status.success());
    };
    mkfifo("style.safetensors");
    mkfifo("colors.hex");
    mkfifo("model.safetensors");
    std::fs::create_dir(dir.path().join("folder.gpl")).unwrap();
    let manifest = dir.path().join("sprites.ron");
    // On a thread with a deadline: a read of the FIFO would block forever.
    let parse_in = |text: &str| {
        let (send, receive) = std::sync::mpsc::channel();
        let (manifest, owned) = (manifest.clone(), text.to_owned());
        std::thread::spawn(move || {
            let _ = send.send(match parse(&manifest, &owned) {
                Ok(_) => Err("accepted".to_owned()),
                Err(ManifestError::Invalid(d)) => Ok((d.to_string(), d.line_column())),
                Err(e) => Err(e.to_string()),
            });
        });
        match receive.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(Ok(found)) => found,
            Ok(Err(other)) => panic!("{text}: {other}"),
            Err(_) => panic!("{text}: still reading after 10 s"),
        }
    };
    for (text, value, words) in [
        (
            "(sprites: {\n \"a\": (prompt: \"b\", loras: [(path: \"style.safetensors\", weight: 1.0)]) })",
            "\"style.safetensors\"",
            "named pipe (FIFO)",
        ),
        (
            "(sprites: {\n \"a\": (prompt: \"b\", loras: [(path: \"/dev/zero\", weight: 1.0)]) })",
            "\"/dev/zero\"",
            "character device",
        ),
        (
            "(sprites: {\n \"a\": (prompt: \"b\", palette: \"colors.hex\") })",
            "\"colors.hex\"",
            "named pipe (FIFO)",
        ),
        (
            "(sprites: {\n \"a\": (prompt: \"b\", palette: \"folder.gpl\") })",
            "\"folder.gpl\"",
            "is a directory",
        ),
        (
            "(sprites: {\n \"a\": (prompt: \"b\", generator: Diffusion(model: \"model.safetensors\")) })",
            "\"model.safetensors\"",
            "named pipe (FIFO)",
        ),
    ] {
        let (message, at) = parse_in(text);
        assert!(message.contains(words), "{text}: {message}");
        assert!(points_at(text, at, value), "{text}: {at:?}: {message}");
    }
}

#[test]
fn the_server_generator_takes_designs_form_a_url_list_and_defaults() {
    let m = parse_ok(
        r#"(sprites: {
            "a": (prompt: "a", generator: Server(url: "http://127.0.0.1:9091", model: "tiny-sd1", steps: 4, guidance: 5.0, scheduler: "ddim")),
            "b": (prompt: "b", generator: Server(url: ["http://127.0.0.1:9091", "https://gpu-2.lan/invokeai"], model: "xl")),
        })"#,
    );
    let GeneratorSpec::Server(a) = &m.sprites[0].generator else {
        panic!()
    };
    assert_eq!(
        (
            a.kind,
            a.model.as_str(),
            a.steps,
            a.guidance,
            a.scheduler.as_str()
        ),
        (ServerKind::InvokeAI, "tiny-sd1", 4, 5.0, "ddim")
    );
    assert_eq!(a.endpoints.len(), 1);
    assert_eq!(a.endpoints[0].port, 9091);
    let GeneratorSpec::Server(b) = &m.sprites[1].generator else {
        panic!()
    };
    assert_eq!(b.endpoints.len(), 2);
    assert_eq!(b.endpoints[1].base_path, "/invokeai");
    assert_eq!(
        (b.steps, b.guidance, b.scheduler.as_str()),
        (
            SERVER_DEFAULT_STEPS,
            SERVER_DEFAULT_GUIDANCE,
            SERVER_DEFAULT_SCHEDULER
        )
    );
    assert!(m.sprites.iter().all(|s| s.generator.draws_raw_images()));
}

#[test]
fn server_generator_mistakes_are_located() {
    let cases: &[(&str, &str, (usize, usize))] = &[
        (
            r#"(sprites: {
  "a": (prompt: "a", generator: Server(url: "127.0.0.1:9091", model: "m")),
})"#,
            "not an http:// or https:// URL",
            (2, 45),
        ),
        (
            r#"(sprites: {
  "a": (prompt: "a", generator: Server(url: ["http://127.0.0.1:1", "http://bob:hunter2@gpu:1"], model: "m")),
})"#,
            "PIXELGEN_IMAGE_SERVER_TOKEN",
            (2, 68),
        ),
        (
            r#"(sprites: {
  "a": (prompt: "a", generator: Server(url: "http://127.0.0.1:1")),
})"#,
            "needs a model",
            (2, 33),
        ),
        (
            r#"(sprites: {
  "a": (prompt: "a", generator: Server(url: "http://127.0.0.1:1", model: "m", steps: 0)),
})"#,
            "0 diffusion steps",
            (2, 86),
        ),
        (
            r#"(sprites: {
  "a": (prompt: "a", generator: Server(url: "http://127.0.0.1:1", model: "m", scheduler: "")),
})"#,
            "not a scheduler name",
            (2, 90),
        ),
        (
            r#"(sprites: {
  "a": (prompt: "a", generator: Server(url: "http://127.0.0.1:1", model: "m", workflow: "w.json")),
})"#,
            "for ComfyUI servers",
            (2, 89),
        ),
        (
            r#"(sprites: {
  "a": (prompt: "a", generator: Server(kind: ComfyUI, url: "http://127.0.0.1:8188")),
})"#,
            "needs a workflow and its input nodes",
            (2, 46),
        ),
    ];
    let mut wrong = Vec::new();
    for (text, says, at) in cases {
        let (message, line_column) = parse_err(text);
        assert!(message.contains(says), "{says}: {message}");
        // The quoted source line is the user's own; pixelgen's words never repeat it.
        assert!(
            !message.lines().next().unwrap().contains("hunter2"),
            "{message}"
        );
        if line_column != *at {
            wrong.push(format!(
                "{says}: at {line_column:?}, expected {at:?}\n{message}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn comfyui_workflows_are_checked_against_the_named_nodes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("w.json"),
        r#"{"3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7, "sampler_name": "euler"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}}}"#,
    )
    .unwrap();
    let path = dir.path().join("sprites.ron");
    let manifest = |inputs: &str, extra: &str| {
        format!(
            r#"(sprites: {{ "a": (prompt: "a", generator: Server(kind: ComfyUI, url: "http://127.0.0.1:8188", workflow: "w.json", inputs: ({inputs}){extra})) }})"#
        )
    };
    let ok = parse(
        &path,
        &manifest(
            r#"prompt: "6", negative_prompt: "7", seed: "3", size: "5""#,
            "",
        ),
    )
    .unwrap();
    let GeneratorSpec::Server(spec) = &ok.sprites[0].generator else {
        panic!()
    };
    let inputs = &spec.workflow.as_ref().unwrap().inputs;
    assert_eq!(inputs.prompt, ("6".to_string(), "text".to_string()));
    assert_eq!(inputs.seed, ("3".to_string(), "seed".to_string()));
    assert_eq!(inputs.size.as_deref(), Some("5"));
    assert!(
        ok.input_files.contains(&dir.path().join("w.json")),
        "a changed workflow reruns the build"
    );
    for (inputs, extra, says) in [
        (
            r#"prompt: "9", seed: "3", size: "5""#,
            "",
            "has no node `9`",
        ),
        (
            r#"prompt: "6", seed: "3.noise_seed", size: "5""#,
            "",
            "has no input `noise_seed`",
        ),
        (
            r#"prompt: "6", seed: "3", size: "6""#,
            "",
            "has no input `width`",
        ),
        (
            r#"prompt: "6", seed: "3", size: "5""#,
            ", steps: 4",
            "need the workflow's sampler node",
        ),
        (
            r#"prompt: "6", seed: "3", size: "5""#,
            r#", model: "x.safetensors""#,
            "needs the workflow node",
        ),
    ] {
        let error = parse(&path, &manifest(inputs, extra))
            .unwrap_err()
            .to_string();
        assert!(error.contains(says), "{says}: {error}");
    }
    let with_lora = r#"(sprites: { "a": (prompt: "a", loras: [(path: "s.safetensors")], generator: Server(kind: ComfyUI, url: "http://127.0.0.1:8188", workflow: "w.json", inputs: (prompt: "6", seed: "3", size: "5"))) })"#;
    let error = parse(&path, with_lora).unwrap_err().to_string();
    assert!(
        error.contains("takes its LoRAs from its own LoraLoader"),
        "{error}"
    );
    std::fs::write(dir.path().join("ui.json"), r#"{"nodes": [], "links": []}"#).unwrap();
    let error = parse(
        &path,
        &manifest(r#"prompt: "6", seed: "3", size: "5""#, "").replace("w.json", "ui.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("not a ComfyUI workflow in API format"),
        "{error}"
    );
}
