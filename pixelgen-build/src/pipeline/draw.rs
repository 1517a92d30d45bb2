//! The work and drawing stages: the stale frames grouped by their backend's
//! [`GroupKey`] ([`Work`]), one drawer per group, each frame pixelized and stored as it
//! arrives, its entry's lookup becoming a hit.

use super::check::Entry;
use super::*;

/// One frame to draw: the entry (its index in the run's entries) and the frame.
#[derive(Debug, Clone, Copy)]
pub(super) struct Job {
    pub entry: usize,
    pub frame: u32,
}

/// The work stage's value: the missing frames of the entries to draw, grouped so that
/// each group is drawn by one drawer (same backend, settings and LoRAs).
pub(super) struct Work {
    pub groups: BTreeMap<GroupKey, Vec<Job>>,
}

impl Work {
    pub fn of(entries: &[Entry<'_>]) -> Work {
        let mut groups: BTreeMap<GroupKey, Vec<Job>> = BTreeMap::new();
        for (index, entry) in entries.iter().enumerate() {
            if !entry.to_draw() {
                continue;
            }
            let planned = entry.planned;
            let group = planned
                .spec
                .generator
                .backend()
                .group(&planned.loras, &planned.spec.conditioning);
            for (frame, lookup) in entry.lookups.iter().enumerate() {
                if !matches!(lookup, Lookup::Hit { .. }) {
                    groups.entry(group.clone()).or_default().push(Job {
                        entry: index,
                        frame: frame as u32,
                    });
                }
            }
        }
        Work { groups }
    }

    pub fn frames(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }
}

/// What drawing reads and writes besides the entries.
pub(super) struct Drawing<'a> {
    pub cache: &'a Cache,
    pub workshop: &'a mut Workshop,
    /// The content hash (hex) of each trained LoRA in the cache.
    pub trained: &'a BTreeMap<LoraName, String>,
    pub progress: &'a mut dyn Progress,
    pub timings: Timings,
    /// Frames each image server drew, for one note at the end.
    drawn_by: BTreeMap<String, usize>,
}

impl<'a> Drawing<'a> {
    pub fn new(
        cache: &'a Cache,
        workshop: &'a mut Workshop,
        trained: &'a BTreeMap<LoraName, String>,
        progress: &'a mut dyn Progress,
    ) -> Drawing<'a> {
        Drawing {
            cache,
            workshop,
            trained,
            progress,
            timings: Timings::new(),
            drawn_by: BTreeMap::new(),
        }
    }

    /// Draws every frame of `work` into the cache. Returns the backends' notes.
    pub fn draw(&mut self, work: &Work, entries: &mut [Entry<'_>]) -> Result<Vec<String>, Error> {
        self.progress.start(work.frames());
        let mut notes = Vec::new();
        for jobs in work.groups.values() {
            // Frames whose raw image is cached (only the palette, size or background
            // changed) are finished from it without the generator.
            let mut to_draw = Vec::with_capacity(jobs.len());
            for &job in jobs {
                let raw_key = entries[job.entry].planned.frames[job.frame as usize].raw;
                match raw_key.and_then(|key| self.cache.read_raw(&key)) {
                    Some(raw) => self.store_finished(&mut entries[job.entry], job.frame, raw)?,
                    None => to_draw.push(job),
                }
            }
            if to_draw.is_empty() {
                continue;
            }
            let first = entries[to_draw[0].entry].planned;
            let mut drawer = self.open_drawer(first)?;
            for note in self.draw_with(drawer.as_mut(), &to_draw, entries)? {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        if !self.drawn_by.is_empty() {
            notes.push(format!(
                "image servers: {}",
                self.drawn_by
                    .iter()
                    .map(|(server, count)| format!("{server} drew {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(notes)
    }

    /// A drawer of `planned`'s backend for its group: its LoRAs (trained ones with their
    /// content hash) and its input files.
    pub fn open_drawer(
        &mut self,
        planned: &PlannedSprite,
    ) -> Result<Box<dyn generate::Drawer>, Error> {
        let loras: Vec<ResolvedLora> = planned
            .loras
            .iter()
            .map(|lora| {
                let mut lora = lora.clone();
                if let Some(hash) = lora.trained.as_ref().and_then(|n| self.trained.get(n)) {
                    lora.content_hash = Some(hash.clone());
                }
                lora
            })
            .collect();
        let group = GroupInputs {
            sprite: &planned.spec.name,
            loras: &loras,
            conditioning: &planned.spec.conditioning,
            files: &planned.files,
        };
        Ok(planned
            .spec
            .generator
            .backend()
            .open(&group, self.workshop, &mut self.timings)?)
    }

    /// Draws `jobs` (frames that share a [`GroupKey`]) with `drawer`, storing each frame
    /// as it arrives. Frames the backend could not draw fail together at the end, after
    /// every other frame is stored.
    pub(super) fn draw_with(
        &mut self,
        drawer: &mut dyn generate::Drawer,
        jobs: &[Job],
        entries: &mut [Entry<'_>],
    ) -> Result<Vec<String>, Error> {
        let frames: Vec<Frame> = jobs
            .iter()
            .map(|job| {
                let sprite = &entries[job.entry].planned.spec;
                frame_of(sprite, sprite.seed, job.frame)
            })
            .collect();
        let mut failures: Vec<(FrameId, String)> = Vec::new();
        let mut stored: Result<(), Error> = Ok(());
        let mut timings = std::mem::take(&mut self.timings);
        let drawn = drawer.draw(&frames, &mut timings, &mut |index, drawn| {
            let job = jobs[index];
            match drawn {
                Drawn::Image { image, server } => {
                    if let Some(server) = server {
                        self.progress.server_frame_done(&server);
                        *self.drawn_by.entry(server).or_default() += 1;
                    }
                    match self.store_drawn(&mut entries[job.entry], job.frame, image) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(error) => {
                            stored = Err(error);
                            ControlFlow::Break(())
                        }
                    }
                }
                Drawn::Failed(message) => {
                    failures.push((frames[index].id(), message));
                    ControlFlow::Continue(())
                }
            }
        });
        self.timings.merge(&timings);
        stored?;
        let notes = drawn?;
        if !failures.is_empty() {
            failures.sort();
            return Err(Error::Generate(GenerateError::Servers { failures }));
        }
        Ok(notes)
    }

    /// Stores a frame a generator drew: the raw image (when the sprite's raw images are
    /// kept), then the finished frame.
    fn store_drawn(
        &mut self,
        entry: &mut Entry<'_>,
        frame: u32,
        raw: image::RgbaImage,
    ) -> Result<(), Error> {
        if let Some(key) = entry.planned.frames[frame as usize].raw {
            let start = std::time::Instant::now();
            self.cache
                .write_raw(&key, &raw)
                .map_err(|source| Error::Cache {
                    path: self.cache.raw_path_of(&key),
                    source,
                })?;
            self.timings.add(Stage::EncodeWrite, start.elapsed());
        }
        self.store_finished(entry, frame, raw)
    }

    /// Pixelizes a raw frame and stores the finished sprite frame in the cache.
    fn store_finished(
        &mut self,
        entry: &mut Entry<'_>,
        frame: u32,
        raw: image::RgbaImage,
    ) -> Result<(), Error> {
        let planned = entry.planned;
        let finished = self
            .timings
            .time(Stage::Pixelize, || pixelize::finish(raw, &planned.spec));
        let planned_frame = &planned.frames[frame as usize];
        let key = &planned_frame.key;
        let output = self
            .timings
            .time(Stage::EncodeWrite, || self.cache.write(key, &finished))
            .map_err(|source| Error::Cache {
                path: self.cache.path_of(key),
                source,
            })?;
        entry.lookups[frame as usize] = Lookup::Hit { output };
        self.progress.frame_done(&planned_frame.id);
        Ok(())
    }
}

impl Session {
    /// Frame 0 of the sprite `name` drawn with each of `seeds` and pixelized, in seed
    /// order, through the sprite's backend as a build draws it; nothing is stored. What
    /// an assistant's `variations` shows.
    pub fn draw_seeds(
        &mut self,
        name: &SpriteName,
        seeds: &[u64],
    ) -> Result<Vec<image::RgbaImage>, Error> {
        let Some(planned) = self.plan.sprite(name.as_str()) else {
            return Err(Error::Generate(GenerateError::Failed {
                sprite: name.clone(),
                message: "no such sprite in sprites.ron".into(),
            }));
        };
        let mut checker = Checker {
            cache: &self.cache,
            hasher: &mut self.hasher,
            lock: &self.lock,
        };
        let trained = trained_hashes(&self.plan, planned.loras.iter(), &mut checker);
        let mut progress = Quiet;
        let mut drawing = Drawing::new(&self.cache, &mut self.workshop, &trained, &mut progress);
        let mut drawer = drawing.open_drawer(planned)?;
        let sprite = &planned.spec;
        let frames: Vec<Frame> = seeds
            .iter()
            .map(|&seed| frame_of(sprite, seed, 0))
            .collect();
        let mut drawn: Vec<Option<Result<image::RgbaImage, String>>> = vec![None; seeds.len()];
        drawer.draw(&frames, &mut drawing.timings, &mut |index, frame| {
            drawn[index] = Some(match frame {
                Drawn::Image { image, .. } => Ok(pixelize::finish(image, sprite)),
                Drawn::Failed(message) => Err(message),
            });
            ControlFlow::Continue(())
        })?;
        drawn
            .into_iter()
            .zip(seeds)
            .map(|(frame, seed)| match frame {
                Some(Ok(image)) => Ok(image),
                failed => Err(Error::Generate(GenerateError::Failed {
                    sprite: sprite.name.clone(),
                    message: format!(
                        "seed {seed}: {}",
                        failed.and_then(Result::err).unwrap_or("not drawn".into())
                    ),
                })),
            })
            .collect()
    }
}

/// The content hash (hex) of each trained LoRA among `loras` that is in the cache.
pub(super) fn trained_hashes<'l>(
    plan: &Plan,
    loras: impl Iterator<Item = &'l ResolvedLora>,
    checker: &mut Checker<'_>,
) -> BTreeMap<LoraName, String> {
    let mut hashes = BTreeMap::new();
    for name in loras.filter_map(|lora| lora.trained.as_ref()) {
        if hashes.contains_key(name) {
            continue;
        }
        if let Some(planned) = plan.lora(name)
            && let Lookup::Hit { output } = checker.lora_lookup(planned)
        {
            hashes.insert(name.clone(), output.to_hex().to_string());
        }
    }
    hashes
}

/// Frame `frame` of `sprite`, drawn from `seed` (the sprite's own, or a variation's).
fn frame_of(sprite: &manifest::SpriteSpec, seed: u64, frame: u32) -> Frame<'_> {
    Frame {
        sprite: &sprite.name,
        prompt: &sprite.prompt,
        negative_prompt: &sprite.negative_prompt,
        seed,
        frame,
        frames: sprite.frames,
        width: sprite.width,
        height: sprite.height,
        conditioning: &sprite.conditioning,
    }
}
