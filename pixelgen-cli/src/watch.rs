//! `cargo pixelgen watch`: regenerates and republishes a crate's sprites whenever
//! `sprites.ron`, a palette file, a LoRA it names or a trained LoRA's image changes, so that a running game (and
//! anyone reading the live atlases) sees new pixels without `cargo build`.
//!
//! Invariants: one rebuild at a time; events that arrive during a rebuild start at most one
//! more, and none when the inputs are as the last rebuild saw them (a save's late events, or
//! an editor touching a file without changing it, rebuild nothing); a manifest that does not parse (half typed) is reported and the live atlases stay
//! as they were (they are written atomically, only after a whole rebuild succeeded).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use pixelgen_build::Quiet;
use pixelgen_build::{Environment, Error, Project, Session};

#[derive(clap::Args)]
pub struct Watch {
    /// The game crate's Cargo.toml (or its sprites.ron, or its folder). Default: ./Cargo.toml
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// How long to wait for a burst of saves to settle before rebuilding.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    debounce_ms: u64,
}

/// Watches until interrupted (or until a watch itself fails).
pub fn run(args: Watch, crate_dir: &Path, environment: &Environment) -> Result<(), Error> {
    let project = Project::discover(crate_dir, None, environment, None)?;
    let live = project.live_dir();
    let (sender, events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let _ = sender.send(event.paths);
        }
    })
    .map_err(|e| Error::Environment(format!("cannot watch files: {e}")))?;
    let mut watched_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut seen = BTreeMap::new();
    let mut inputs = rebuild(&project, environment, &live);
    loop {
        // Watch the folders of every input (editors save by renaming a new file into
        // place, which a watch on the file itself would miss).
        for dir in inputs
            .iter()
            .filter_map(|p| p.parent())
            .map(Path::to_path_buf)
        {
            if !watched_dirs.contains(&dir) && dir.is_dir() {
                watcher
                    .watch(&dir, RecursiveMode::NonRecursive)
                    .map_err(|e| {
                        Error::Environment(format!("cannot watch {}: {e}", dir.display()))
                    })?;
                watched_dirs.insert(dir);
            }
        }
        println!(
            "pixelgen watch: watching {} file(s); live atlases in {}; Ctrl-C to stop",
            inputs.len(),
            live.display()
        );
        // Wait for a change to an input, then let the burst settle.
        loop {
            let Ok(paths) = events.recv() else {
                return Ok(());
            };
            // A folder among the inputs (a trained LoRA's images) stands for what is in it.
            if !paths
                .iter()
                .any(|p| inputs.contains(p) || p.parent().is_some_and(|d| inputs.contains(d)))
            {
                continue;
            }
            let settle = Duration::from_millis(args.debounce_ms);
            while events.recv_timeout(settle).is_ok() {}
            if inputs
                .iter()
                .any(|path| seen.get(path) != Some(&stat(path)))
            {
                break;
            }
        }
        // Stat before reading, so that a save during the rebuild is seen as a change.
        seen = inputs
            .iter()
            .map(|path| (path.clone(), stat(path)))
            .collect();
        inputs = rebuild(&project, environment, &live);
    }
}

/// What an input looks like on disk: its size, modification time and, for files small
/// enough to read at every event (manifests, palettes), a hash of its bytes, since a
/// same-length save within one tick of the file system's clock keeps size and time; `None`
/// when missing. When every input looks as it did before the last rebuild read it, another
/// rebuild would see the same files. Inputs that a rebuild found for the first time have no
/// earlier look, so their first event always rebuilds.
fn stat(path: &Path) -> Option<(u64, std::time::SystemTime, Option<u64>)> {
    use std::hash::{Hash, Hasher};
    const READ_BELOW: u64 = 1 << 20;
    let metadata = std::fs::metadata(path).ok()?;
    // Only regular files: reading a FIFO put in a palette's place would block.
    let content = (metadata.is_file() && metadata.len() < READ_BELOW)
        .then(|| std::fs::read(path).ok())
        .flatten()
        .map(|bytes| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            hasher.finish()
        });
    Some((metadata.len(), metadata.modified().ok()?, content))
}

/// Regenerates what is stale and republishes the atlases; prints what happened. Returns
/// the files to watch: the manifest, and the palettes and LoRAs it names (the previous
/// manifest's too when this one does not parse, so that fixing it is seen).
fn rebuild(project: &Project, environment: &Environment, live: &Path) -> BTreeSet<PathBuf> {
    let started = Instant::now();
    let mut inputs = BTreeSet::from([project.manifest_path.clone()]);
    let result = (|| -> Result<(Session, pixelgen_build::Summary), Error> {
        let mut session = crate::open_to_generate(project.clone(), environment)?;
        inputs.extend(session.plan.input_files.iter().cloned());
        inputs.extend(
            session
                .plan
                .lora_inputs()
                .into_iter()
                .map(Path::to_path_buf),
        );
        // A trained LoRA's images and captions (a caption may be added later).
        for image in session.plan.loras.iter().flat_map(|t| &t.images) {
            inputs.insert(image.path.clone());
            inputs.insert(image.path.with_extension("txt"));
        }
        let summary = session.realize(false, &mut Quiet)?;
        pixelgen_build::emit::emit(&session, live)?;
        Ok((session, summary))
    })();
    match result {
        Ok((_, summary)) => {
            println!("{summary} ({} ms)", started.elapsed().as_millis());
            for note in &summary.notes {
                eprintln!("{note}");
            }
        }
        Err(error) => {
            eprintln!("{error}");
            eprintln!(
                "pixelgen watch: the live atlases stay as they were; fix the error and save again"
            );
        }
    }
    // Paths as the watcher reports them (absolute).
    inputs
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect()
}
