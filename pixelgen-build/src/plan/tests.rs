use super::*;
use crate::manifest::parse;

fn no_cache() -> Cache {
    Cache::new("cache")
}

struct NoneKnown;
impl KnownFileHashes for NoneKnown {
    fn known_hash(&self, _: &InputFile) -> Option<blake3::Hash> {
        None
    }
}

/// The plan of the manifest `text` read as `path`, with no lock file and no cache.
fn plan_at(path: &Path, text: &str) -> Plan {
    let m = parse(path, text).unwrap();
    plan(
        m,
        PlanInputs {
            hasher: &mut FileHasher::in_memory(),
            known: &NoneKnown,
            allow_missing_files: false,
            hub_cache: None,
            cache: &no_cache(),
        },
    )
    .unwrap()
}

fn keys(text: &str) -> Vec<(String, Vec<Key>)> {
    plan_at(Path::new("sprites.ron"), text)
        .sprites
        .into_iter()
        .map(|p| {
            let keys = p.frames.iter().map(|f| f.key).collect();
            (p.spec.name.to_string(), keys)
        })
        .collect()
}

const BASE: &str = r#"(sprites: { "a": (prompt: "red slime", seed: 1), "b": (prompt: "bat", seed: 2, frames: 3) })"#;

/// Keys of server sprites, with `reported` as the model identity the servers gave.
fn server_keys(
    text: &str,
    reported: Option<blake3::Hash>,
) -> Vec<(Vec<Key>, BTreeMap<InputFile, String>)> {
    struct Reported(Option<blake3::Hash>);
    impl KnownFileHashes for Reported {
        fn known_hash(&self, file: &InputFile) -> Option<blake3::Hash> {
            matches!(file, InputFile::ServerModel(_))
                .then_some(self.0)
                .flatten()
        }
    }
    let m = parse(Path::new("sprites.ron"), text).unwrap();
    plan(
        m,
        PlanInputs {
            hasher: &mut FileHasher::in_memory(),
            known: &Reported(reported),
            allow_missing_files: false,
            hub_cache: None,
            cache: &no_cache(),
        },
    )
    .unwrap()
    .sprites
    .into_iter()
    .map(|p| (p.frames.iter().map(|f| f.key).collect(), p.files))
    .collect()
}

#[test]
fn server_keys_cover_the_reported_model_and_settings_but_not_the_url() {
    let sprite = |generator: &str| {
        format!(r#"(sprites: {{ "a": (prompt: "slime", seed: 1, generator: {generator}) }})"#)
    };
    let reported = blake3::hash(b"model on the server");
    let identity = Some(reported);
    let base = server_keys(
        &sprite(r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4)"#),
        identity,
    );
    let (keys, files) = &base[0];
    assert_eq!(
        files.get(&InputFile::ServerModel("m".into())),
        Some(&reported.to_hex().to_string()),
        "the lock records the reported identity"
    );
    // Another URL, or several: the same art.
    for same in [
        r#"Server(url: "http://127.0.0.1:9092", model: "m", steps: 4)"#,
        r#"Server(url: ["https://gpu-1.lan", "http://127.0.0.1:1"], model: "m", steps: 4)"#,
    ] {
        assert_eq!(&server_keys(&sprite(same), identity)[0].0, keys, "{same}");
    }
    // Another model on the server, another setting, or no identity known: other keys.
    assert_ne!(
        &server_keys(
            &sprite(r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4)"#),
            Some(blake3::hash(b"retrained"))
        )[0]
        .0,
        keys
    );
    assert_ne!(
        &server_keys(
            &sprite(r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4)"#),
            None
        )[0]
        .0,
        keys
    );
    for other in [
        r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 5)"#,
        r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4, guidance: 6.0)"#,
        r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4, scheduler: "ddim")"#,
        r#"Server(url: "http://127.0.0.1:9091", model: "m", steps: 4, resolution: (64, 64))"#,
    ] {
        assert_ne!(&server_keys(&sprite(other), identity)[0].0, keys, "{other}");
    }
}

#[test]
fn keys_are_stable_and_distinct() {
    let first = keys(BASE);
    assert_eq!(first, keys(BASE));
    assert_eq!(first[1].1.len(), 3);
    let mut all: Vec<Key> = first.iter().flat_map(|(_, k)| k.clone()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "every frame has its own key");
}

#[test]
fn each_input_changes_only_its_sprite() {
    let base = keys(BASE);
    for changed in [
        BASE.replace("red slime", "blue slime"),
        BASE.replace("seed: 1", "seed: 9"),
        BASE.replace("seed: 1)", "seed: 1, size: (16, 16))"),
        BASE.replace("seed: 1)", "seed: 1, negative_prompt: \"eyes\")"),
        BASE.replace("seed: 1)", "seed: 1, palette: \"pico-8\")"),
        BASE.replace("seed: 1)", "seed: 1, background: Color(\"#000000\"))"),
        BASE.replace("seed: 1)", "seed: 1, max_colors: 4)"),
        BASE.replace("seed: 1)", "seed: 1, outline: \"#000000\")"),
    ] {
        let now = keys(&changed);
        assert_ne!(now[0].1, base[0].1, "{changed}");
        assert_eq!(now[1].1, base[1].1, "{changed}");
    }
    // Where a sprite sits in the file, and its atlas, do not change its pixels.
    let reordered = r#"(sprites: { "b": (prompt: "bat", seed: 2, frames: 3), "a": (prompt: "red slime", seed: 1) })"#;
    assert_eq!(keys(reordered), base);
}

#[test]
fn lora_contents_and_weight_are_in_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("style.safetensors");
    std::fs::write(&lora, b"one").unwrap();
    let text = r#"(sprites: { "a": (prompt: "x", loras: [(path: "style.safetensors", weight: 0.5)]), "b": (prompt: "y") })"#;
    let manifest_path = dir.path().join("sprites.ron");
    let run = |text: &str| {
        let m = parse(&manifest_path, text).unwrap();
        plan(
            m,
            PlanInputs {
                hasher: &mut FileHasher::in_memory(),
                known: &NoneKnown,
                allow_missing_files: false,
                hub_cache: None,
                cache: &no_cache(),
            },
        )
        .unwrap()
        .sprites
    };
    let before = run(text);
    std::fs::write(&lora, b"two").unwrap();
    let after = run(text);
    assert_ne!(before[0].frames, after[0].frames);
    assert_eq!(before[1].frames, after[1].frames);
    assert_ne!(before[0].files, after[0].files);
    assert_ne!(run(&text.replace("0.5", "0.6"))[0].frames, after[0].frames);
    std::fs::remove_file(&lora).unwrap();
    let m = parse(&manifest_path, text).unwrap();
    let error = plan(
        m,
        PlanInputs {
            hasher: &mut FileHasher::in_memory(),
            known: &NoneKnown,
            allow_missing_files: true,
            hub_cache: None,
            cache: &no_cache(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("style.safetensors"), "{error}");
    assert!(
        error.contains("sprites.ron:1:"),
        "located in the manifest: {error}"
    );
}

/// A trained LoRA's key covers each image's bytes and caption, the image list and the
/// settings; its sprites' keys follow it and no other sprite's do; what changed is
/// named per image.
#[test]
fn trained_lora_inputs_are_in_its_key_and_its_sprites_keys() {
    let dir = tempfile::tempdir().unwrap();
    let art = dir.path().join("art");
    std::fs::create_dir_all(&art).unwrap();
    std::fs::write(art.join("a.png"), b"a").unwrap();
    std::fs::write(art.join("b.png"), b"b").unwrap();
    let manifest_path = dir.path().join("sprites.ron");
    let text = r#"(trained_loras: { "s": (images: "art", model: "m", rank: 4) },
        sprites: { "x": (prompt: "x", loras: [(trained: "s", weight: 0.5)]), "y": (prompt: "y") })"#;
    let run = |text: &str| {
        let m = parse(&manifest_path, text).unwrap();
        plan(
            m,
            PlanInputs {
                hasher: &mut FileHasher::in_memory(),
                known: &NoneKnown,
                allow_missing_files: false,
                hub_cache: None,
                cache: &Cache::new(dir.path().join("cache")),
            },
        )
        .unwrap()
    };
    let before = run(text);
    let lora = &before.loras[0];
    assert_eq!(lora.images.len(), 2);
    assert_eq!(
        lora.file,
        dir.path()
            .join("cache/lora")
            .join(format!("{}.safetensors", lora.key.to_hex()))
    );
    assert_eq!(before.sprites[0].loras[0].trained, Some("s".into()));
    assert_eq!(before.sprites[0].loras[0].file, lora.file);

    let changed = |after: &Plan, what: &[&str]| {
        assert_ne!(after.loras[0].key, before.loras[0].key, "{what:?}");
        assert_ne!(
            after.sprites[0].frames, before.sprites[0].frames,
            "{what:?}"
        );
        assert_eq!(
            after.sprites[1].frames, before.sprites[1].frames,
            "{what:?}"
        );
        assert_eq!(
            after.loras[0].inputs.changes_since(&before.loras[0].inputs),
            what
        );
    };
    std::fs::write(art.join("a.png"), b"a2").unwrap();
    changed(&run(text), &["image a.png changed"]);
    std::fs::write(art.join("a.png"), b"a").unwrap();
    std::fs::write(art.join("a.txt"), "a knight").unwrap();
    changed(&run(text), &["image a.png changed"]);
    std::fs::remove_file(art.join("a.txt")).unwrap();
    std::fs::write(art.join("c.png"), b"c").unwrap();
    changed(&run(text), &["image c.png added"]);
    std::fs::remove_file(art.join("c.png")).unwrap();
    changed(
        &run(&text.replace("rank: 4", "rank: 8")),
        &["training settings changed"],
    );
    changed(
        &run(&text.replace("model: \"m\"", "model: \"n\"")),
        &["base model changed"],
    );
    // Back as it was: the same keys.
    let again = run(text);
    assert_eq!(again.loras[0].key, before.loras[0].key);
    assert_eq!(again.sprites[0].frames, before.sprites[0].frames);
    // The weight changes the sprite, not the LoRA.
    let weighted = run(&text.replace("0.5", "0.6"));
    assert_eq!(weighted.loras[0].key, before.loras[0].key);
    assert_ne!(weighted.sprites[0].frames, before.sprites[0].frames);
}

/// Keying again the entries an outside input concerns (a server's reported model) gives
/// the keys a whole new plan with that input would, and leaves every other entry as it
/// was: the pipeline plans once and keys again only what changed.
#[test]
fn rekeying_what_a_server_reported_matches_a_new_plan_and_touches_nothing_else() {
    struct Reported(Option<blake3::Hash>);
    impl KnownFileHashes for Reported {
        fn known_hash(&self, file: &InputFile) -> Option<blake3::Hash> {
            matches!(file, InputFile::ServerModel(_))
                .then_some(self.0)
                .flatten()
        }
    }
    let text = r#"(sprites: {
        "bat": (prompt: "bat", seed: 2, frames: 2),
        "hero": (prompt: "knight", generator: Server(url: "http://127.0.0.1:9091", model: "m")),
    })"#;
    let cache = no_cache();
    let planned = |known: &Reported| {
        plan(
            parse(Path::new("sprites.ron"), text).unwrap(),
            PlanInputs {
                hasher: &mut FileHasher::in_memory(),
                known,
                allow_missing_files: false,
                hub_cache: None,
                cache: &cache,
            },
        )
        .unwrap()
    };
    let mut before = planned(&Reported(None));
    let bat = before.sprite("bat").unwrap().frames.clone();
    let reported = Reported(Some(blake3::hash(b"the server's model")));
    let changed = Changed {
        files: BTreeSet::from([InputFile::ServerModel("m".into())]),
        ..Changed::default()
    };
    let count = before
        .rekey(
            PlanInputs {
                hasher: &mut FileHasher::in_memory(),
                known: &reported,
                allow_missing_files: false,
                hub_cache: None,
                cache: &cache,
            },
            &changed,
        )
        .unwrap();
    assert_eq!(count, 1, "only the server sprite is keyed again");
    let fresh = planned(&reported);
    for name in ["bat", "hero"] {
        let (rekeyed, new) = (before.sprite(name).unwrap(), fresh.sprite(name).unwrap());
        assert_eq!(rekeyed.frames, new.frames, "{name}");
        assert_eq!(rekeyed.inputs, new.inputs, "{name}");
        assert_eq!(rekeyed.files, new.files, "{name}");
    }
    assert_eq!(before.sprite("bat").unwrap().frames, bat);
    assert_ne!(
        before.sprite("hero").unwrap().frames,
        planned(&Reported(None)).sprite("hero").unwrap().frames
    );
}

/// Every image's bytes, the ControlNet's files and every conditioning setting are in the
/// key of the sprite that uses them, and only in its key; the lock file records each file.
#[test]
fn conditioning_inputs_are_in_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let art = dir.path().join("art");
    std::fs::create_dir(&art).unwrap();
    let save = |name: &str, value: u8| {
        image::RgbImage::from_pixel(32, 32, image::Rgb([value, 10, 10]))
            .save(art.join(name))
            .unwrap()
    };
    save("sketch.png", 1);
    save("other.png", 2);
    save("pose.png", 3);
    let controlnet = pixelgen_test_support::fixtures::diffusion()
        .join("conditioned/sd1-controlnet")
        .display()
        .to_string();
    let manifest = |conditioning: &str| {
        format!(
            r#"(sprites: {{
                "a": (prompt: "knight", generator: Diffusion(model: "m", steps: 10), {conditioning}),
                "b": (prompt: "bat", generator: Diffusion(model: "m", steps: 10)),
            }})"#
        )
    };
    let plan_of = |text: &str| plan_at(&dir.path().join("sprites.ron"), text);
    let keys_of = |text: &str| -> (Key, Key) {
        let plan = plan_of(text);
        (
            plan.sprite("a").unwrap().frames[0].key,
            plan.sprite("b").unwrap().frames[0].key,
        )
    };
    let base = format!(
        r#"init: (image: "art/sketch.png", strength: 0.6), tiling: X, controlnet: [(model: "{controlnet}", image: "art/pose.png", scale: 0.8)]"#
    );
    let (a, b) = keys_of(&manifest(&base));
    let (plain, b_plain) = keys_of(&manifest("seed: 0"));
    assert_ne!(a, plain, "conditioning is in the key");
    assert_eq!(b, b_plain, "and only in its sprite's key");
    let variants = [
        base.replace("0.6", "0.7"),
        base.replace("sketch.png", "other.png"),
        base.replace("tiling: X", "tiling: XY"),
        base.replace("scale: 0.8", "scale: 0.5"),
        base.replace(
            "image: \"art/sketch.png\"",
            "image: \"art/sketch.png\", mask: \"art/pose.png\"",
        ),
    ];
    for variant in &variants {
        let (key, other) = keys_of(&manifest(variant));
        assert_ne!(key, a, "{variant}");
        assert_eq!(other, b, "{variant}");
    }
    // A control image's bytes, not its name.
    save("pose.png", 4);
    assert_ne!(keys_of(&manifest(&base)).0, a, "the control image's bytes");
    let plan = plan_of(&manifest(&base));
    let files = &plan.sprite("a").unwrap().files;
    assert!(files.contains_key(&InputFile::Image("art/sketch.png".into())));
    assert!(files.contains_key(&InputFile::Image("art/pose.png".into())));
    assert!(files.contains_key(&InputFile::ControlNet(controlnet.clone())));
}
