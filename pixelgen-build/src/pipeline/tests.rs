use super::*;

const MANIFEST: &str = r#"(
    defaults: (size: (16, 16), palette: "sweetie-16"),
    sprites: {
        "slime": (prompt: "green slime", seed: 1, frames: 2),
        "coin":  (prompt: "gold coin", seed: 2),
    },
)"#;

fn project(dir: &Path, manifest: &str) -> Project {
    std::fs::write(dir.join(MANIFEST_FILE), manifest).unwrap();
    Project::for_crate(dir, Some(dir.join("cache")), None).unwrap()
}

fn session(project: &Project, offline: bool) -> Session {
    Session::open(
        project.clone(),
        FileHasher::in_memory(),
        &Environment::default(),
        offline,
    )
    .unwrap()
}

#[test]
fn realize_only_generates_the_named_sprites_and_holds_the_others_back() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path(), MANIFEST);
    session(&project, false).realize(false, &mut Quiet).unwrap();
    let before = LockFile::load(&project.lock_path).unwrap();
    // Both prompts change; only the coin is asked for.
    let edited = MANIFEST
        .replace("green slime", "blue slime")
        .replace("gold coin", "silver coin");
    let project = self::project(dir.path(), &edited);
    let mut session = session(&project, false);
    let only = std::collections::BTreeSet::from([SpriteName::from("coin")]);
    let summary = session
        .realize_only(false, Some(&only), &mut Quiet)
        .unwrap();
    assert_eq!(
        (summary.generated, summary.cached, summary.held_back),
        (1, 0, 1)
    );
    let statuses = session.status();
    let slime = statuses.iter().find(|s| s.name == "slime").unwrap();
    assert_eq!(slime.status, Freshness::Stale);
    assert!(
        slime.reasons.iter().any(|r| r.contains("prompt")),
        "{:?}",
        slime.reasons
    );
    let lock = LockFile::load(&project.lock_path).unwrap();
    assert_eq!(lock.sprites["slime"], before.sprites["slime"]);
    assert_ne!(lock.sprites["coin"], before.sprites["coin"]);
    assert_eq!(
        statuses.iter().find(|s| s.name == "coin").unwrap().status,
        Freshness::Fresh
    );
}

#[test]
fn generates_stale_sprites_once_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path(), MANIFEST);
    let mut first = session(&project, false);
    assert!(first.status().iter().all(|s| s.status == Freshness::Stale));
    let summary = first.realize(false, &mut Quiet).unwrap();
    assert_eq!(
        summary,
        Summary {
            sprites: 2,
            generated: 2,
            cached: 0,
            held_back: 0,
            notes: Vec::new(),
        }
    );
    assert_eq!(
        summary.to_string(),
        "pixelgen: 2 sprites: 2 generated, 0 cached"
    );
    let lock = LockFile::load(&project.lock_path).unwrap();
    assert_eq!(lock.sprites["slime"].keys.len(), 2);
    assert!(lock.sprites["slime"].outputs.iter().all(|o| o.len() == 64));

    let mut second = session(&project, true);
    assert!(second.status().iter().all(|s| s.status == Freshness::Fresh));
    assert_eq!(second.realize(true, &mut Quiet).unwrap().generated, 0);
}

#[test]
fn offline_lists_stale_sprites_with_reasons_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path(), MANIFEST);
    session(&project, false).realize(false, &mut Quiet).unwrap();
    let edited = MANIFEST
        .replace("seed: 2", "seed: 3")
        .replace("green slime", "blue slime");
    std::fs::write(&project.manifest_path, &edited).unwrap();
    let error = match session(&project, true).realize(true, &mut Quiet) {
        Err(Error::Stale(report)) => report,
        other => panic!("expected a stale report, got {other:?}"),
    };
    let names: Vec<&str> = error.stale.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["coin", "slime"]);
    assert_eq!(error.stale[0].reasons, ["seed changed"]);
    assert_eq!(error.stale[1].reasons, ["prompt changed"]);
    let text = error.to_string();
    assert!(
        text.contains("cargo pixelgen generate --manifest-path"),
        "{text}"
    );
}

#[test]
fn new_and_missing_entries_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path(), MANIFEST);
    let mut s = session(&project, false);
    assert_eq!(s.status()[0].reasons, ["new sprite (not in sprites.lock)"]);
    s.realize(false, &mut Quiet).unwrap();
    let key = s.plan.sprites[0].frames[0].key;
    std::fs::remove_file(s.cache().path_of(&key)).unwrap();
    let status = session(&project, true).status();
    assert_eq!(status[0].status, Freshness::Stale);
    assert!(
        status[0].reasons[0].starts_with("cache file missing"),
        "{:?}",
        status[0].reasons
    );
    assert_eq!(status[1].status, Freshness::Fresh);
}

#[cfg(unix)]
#[test]
fn the_next_generating_run_removes_what_a_killed_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path(), MANIFEST);
    session(&project, false).realize(false, &mut Quiet).unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let litter = dir
        .path()
        .join("cache/ab")
        .join(format!("{}{dead}-x", crate::atomic::TEMP_PREFIX));
    std::fs::create_dir_all(litter.parent().unwrap()).unwrap();
    std::fs::write(&litter, b"half a png").unwrap();
    // Nothing to generate: the lock is not taken, nothing is swept.
    session(&project, false).realize(false, &mut Quiet).unwrap();
    assert!(litter.exists());
    std::fs::write(
        &project.manifest_path,
        MANIFEST.replace("seed: 2", "seed: 5"),
    )
    .unwrap();
    let summary = session(&project, false).realize(false, &mut Quiet).unwrap();
    assert!(!litter.exists());
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.contains("removed 1 temporary file(s) (10 bytes)")),
        "{:?}",
        summary.notes
    );
}

#[test]
fn concurrent_runs_leave_a_consistent_cache() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path(), MANIFEST);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| session(&project, false).realize(false, &mut Quiet).unwrap());
        }
    });
    let mut check = session(&project, true);
    assert!(
        check.status().iter().all(|s| s.status == Freshness::Fresh),
        "{:?}",
        check.status()
    );
    for planned in &check.plan.sprites {
        for frame in &planned.frames {
            assert_eq!(
                check.cache().read(&frame.key).unwrap().dimensions(),
                (16, 16)
            );
        }
    }
    let leftovers: Vec<_> = pixelgen_test_support::fs::files(&dir.path().join("cache"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.ends_with(".png") && name != ".gitignore" && name != LOCK_NAME
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A backend that draws `good` batches, then fails.
struct FailsAfter {
    good: usize,
}

impl generate::batched::Generator for FailsAfter {
    fn generate(
        &mut self,
        frames: &[Frame<'_>],
        _timings: &mut Timings,
    ) -> Result<Vec<image::RgbaImage>, generate::GenerateError> {
        if self.good == 0 {
            return Err(generate::GenerateError::Failed {
                sprite: frames[0].sprite.clone(),
                message: "device lost".into(),
            });
        }
        self.good -= 1;
        Ok(frames
            .iter()
            .map(|f| {
                image::RgbaImage::from_pixel(f.width, f.height, image::Rgba([200, 10, 10, 255]))
            })
            .collect())
    }

    fn batch_size(&self) -> usize {
        1
    }
}

/// Batches that arrived before the backend failed are stored whole; the failure is
/// reported naming the sprite; nothing partial or temporary is left in the cache.
#[test]
fn a_backend_failing_midway_keeps_finished_batches_and_leaves_no_litter() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path(), MANIFEST);
    let mut s = session(&project, false);
    let mut checker = Checker {
        cache: &s.cache,
        hasher: &mut s.hasher,
        lock: &s.lock,
    };
    let mut entries = checker.check(&s.plan, &mut s.timings);
    let jobs: Vec<draw::Job> = entries
        .iter()
        .enumerate()
        .flat_map(|(entry, e)| {
            (0..e.lookups.len() as u32).map(move |frame| draw::Job { entry, frame })
        })
        .collect();
    assert_eq!(jobs.len(), 3);
    let mut drawer = generate::batched::Batched::boxed(FailsAfter { good: 2 });
    let (trained, mut progress) = (BTreeMap::new(), Quiet);
    let mut drawing = Drawing::new(&s.cache, &mut s.workshop, &trained, &mut progress);
    let error = drawing
        .draw_with(drawer.as_mut(), &jobs, &mut entries)
        .expect_err("the third batch fails")
        .to_string();
    assert!(error.contains("device lost"), "{error}");
    let stored: Vec<_> = entries
        .iter()
        .flat_map(|e| &e.lookups)
        .filter(|l| matches!(l, Lookup::Hit { .. }))
        .collect();
    assert_eq!(stored.len(), 2);
    let files: Vec<PathBuf> = pixelgen_test_support::fs::files(&dir.path().join("cache"));
    let pngs = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .count();
    assert_eq!(pngs, 2, "{files:?}");
    assert!(
        files
            .iter()
            .all(|p| !p.to_string_lossy().contains(".tmp-pixelgen")),
        "{files:?}"
    );
}

#[test]
fn a_missing_diffusion_model_fails_naming_the_sprite_and_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(
        dir.path(),
        r#"(sprites: { "hero": (prompt: "knight", generator: Diffusion(model: "./models/none")) })"#,
    );
    let error = session(&project, false)
        .realize(false, &mut Quiet)
        .unwrap_err();
    // The model's own error is kept as the source, not flattened into text.
    #[cfg(feature = "diffusion")]
    {
        let source = std::error::Error::source(&error).expect("the model error is the source");
        assert!(
            matches!(
                source.downcast_ref::<pixelgen_diffusion::DiffusionError>(),
                Some(pixelgen_diffusion::DiffusionError::Locate(_))
            ),
            "{source:?}"
        );
    }
    let error = error.to_string();
    assert!(
        error.contains("sprite `hero`") && error.contains("model `./models/none` not found"),
        "{error}"
    );
    assert!(
        error.contains(&dir.path().join("./models/none").display().to_string()),
        "{error}"
    );
}

#[cfg(feature = "diffusion")]
/// Changing only the palette re-pixelizes the cached raw image: no model is needed
/// (here it has been moved away, so loading it would fail).
#[cfg(feature = "diffusion")]
#[test]
fn a_palette_change_reuses_the_raw_diffusion_image() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../pixelgen-diffusion/tests/fixtures/diffusion/sd1/model");
    pixelgen_test_support::fs::copy_dir(&fixture, &dir.path().join("model"));
    let manifest = |palette: &str| {
        format!(
            r#"(sprites: {{ "knight": (prompt: "knight", seed: 2, size: (16, 16), palette: "{palette}", frames: 2,
                generator: Diffusion(model: "model", steps: 1, guidance: 1.0, scheduler: Euler, resolution: (64, 64))) }})"#
        )
    };
    let project = project(dir.path(), &manifest("pico-8"));
    let summary = session(&project, false).realize(false, &mut Quiet).unwrap();
    assert_eq!(summary.generated, 1);
    let raw_files = pixelgen_test_support::fs::files(&project.cache_dir.join("raw"));
    assert_eq!(raw_files.len(), 2, "one raw image per frame: {raw_files:?}");

    std::fs::rename(dir.path().join("model"), dir.path().join("moved")).unwrap();
    let project = self::project(dir.path(), &manifest("db16"));
    let mut second = session(&project, false);
    assert!(second.status().iter().all(|s| s.status == Freshness::Stale));
    let summary = second.realize(false, &mut Quiet).unwrap();
    assert_eq!(summary.generated, 1, "re-pixelized from the raw cache");
    assert_eq!(
        pixelgen_test_support::fs::files(&project.cache_dir.join("raw")).len(),
        2
    );
}
