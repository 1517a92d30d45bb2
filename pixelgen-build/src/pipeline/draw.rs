//! Drawing the stale frames: grouped by their backend's `GroupKey`, one drawer per group,
//! each frame pixelized and stored as it arrives.

use super::*;

impl Session {
    /// Generates every stale frame, one drawer per group of sprites that share a
    /// backend, its settings and LoRAs ([`GroupKey`]). Returns the backends' notes.
    pub(super) fn generate_stale(
        &mut self,
        statuses: &mut [(SpriteStatus, Vec<Lookup>)],
        progress: &mut dyn Progress,
    ) -> Result<Vec<String>, Error> {
        let mut groups: BTreeMap<GroupKey, Vec<(usize, u32)>> = BTreeMap::new();
        for (i, (status, lookups)) in statuses.iter().enumerate() {
            if status.status == Freshness::Fresh {
                continue;
            }
            let planned = &self.plan[i];
            let backend = self.manifest.sprites[planned.sprite].generator.backend();
            for (frame, lookup) in lookups.iter().enumerate() {
                if !matches!(lookup, Lookup::Hit { .. }) {
                    groups
                        .entry(backend.group(&planned.loras))
                        .or_default()
                        .push((i, frame as u32));
                }
            }
        }
        progress.start(groups.values().map(Vec::len).sum());
        let mut notes = Vec::new();
        let mut timings = Timings::new();
        // Frames each image server drew, for one note at the end.
        let mut drawn_by: BTreeMap<String, usize> = BTreeMap::new();
        for jobs in groups.values() {
            // Frames whose raw image is cached (only the palette, size or background
            // changed) are finished from it without the generator.
            let mut to_draw = Vec::with_capacity(jobs.len());
            for &(i, frame) in jobs {
                let raw_key = self.plan[i].frames[frame as usize].raw;
                match raw_key.and_then(|key| self.cache.read_raw(&key)) {
                    Some(raw) => {
                        self.store_finished(statuses, i, frame, raw, progress, &mut timings)?
                    }
                    None => to_draw.push((i, frame)),
                }
            }
            if to_draw.is_empty() {
                continue;
            }
            let drawn =
                self.draw_group(&to_draw, statuses, progress, &mut timings, &mut drawn_by)?;
            for note in drawn {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        self.timings.merge(&timings);
        if !drawn_by.is_empty() {
            notes.push(format!(
                "image servers: {}",
                drawn_by
                    .iter()
                    .map(|(server, count)| format!("{server} drew {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(notes)
    }

    /// Planned sprite `i`'s LoRAs, with each trained one's content hash (its file in the
    /// cache, trained by now).
    pub(super) fn group_loras(&mut self, i: usize) -> Vec<ResolvedLora> {
        let mut loras = self.plan[i].loras.clone();
        for lora in &mut loras {
            let Some(index) = lora
                .trained
                .as_ref()
                .and_then(|name| self.manifest.trained_lora_index(name))
            else {
                continue;
            };
            if let Lookup::Hit { output } = self.lora_lookup(index) {
                lora.content_hash = Some(output.to_hex().to_string());
            }
        }
        loras
    }

    /// Draws `jobs` (frames of sprites that share a [`GroupKey`]) with one drawer of their
    /// backend, storing each frame as it arrives. Frames the backend could not draw fail
    /// together at the end, after every other frame is stored.
    pub(super) fn draw_group(
        &mut self,
        jobs: &[(usize, u32)],
        statuses: &mut [(SpriteStatus, Vec<Lookup>)],
        progress: &mut dyn Progress,
        timings: &mut Timings,
        drawn_by: &mut BTreeMap<String, usize>,
    ) -> Result<Vec<String>, Error> {
        let first = jobs[0].0;
        let mut drawer = self.open_drawer(first, timings)?;
        self.draw_with(drawer.as_mut(), jobs, statuses, progress, timings, drawn_by)
    }

    /// A drawer of planned sprite `i`'s backend for its group (its LoRAs, trained ones
    /// with their content hash, and its input files).
    fn open_drawer(
        &mut self,
        i: usize,
        timings: &mut Timings,
    ) -> Result<Box<dyn generate::Drawer>, Error> {
        let loras = self.group_loras(i);
        let planned = &self.plan[i];
        let sprite = &self.manifest.sprites[planned.sprite];
        let group = GroupInputs {
            sprite: &sprite.name,
            loras: &loras,
            files: &planned.files,
        };
        Ok(sprite
            .generator
            .backend()
            .open(&group, &mut self.workshop, timings)?)
    }

    /// Draws `jobs` with `drawer` and stores what it draws (see [`Self::draw_group`]).
    pub(super) fn draw_with(
        &self,
        drawer: &mut dyn generate::Drawer,
        jobs: &[(usize, u32)],
        statuses: &mut [(SpriteStatus, Vec<Lookup>)],
        progress: &mut dyn Progress,
        timings: &mut Timings,
        drawn_by: &mut BTreeMap<String, usize>,
    ) -> Result<Vec<String>, Error> {
        let this = self;
        let frames: Vec<Frame> = jobs
            .iter()
            .map(|&(i, frame)| {
                let sprite = &this.manifest.sprites[this.plan[i].sprite];
                frame_of(sprite, sprite.seed, frame)
            })
            .collect();
        let mut failures: Vec<(FrameId, String)> = Vec::new();
        let mut stored: Result<(), Error> = Ok(());
        let mut local = Timings::new();
        let drawn = drawer.draw(&frames, timings, &mut |index, drawn| {
            let (i, frame) = jobs[index];
            match drawn {
                Drawn::Image { image, server } => {
                    if let Some(server) = server {
                        progress.server_frame_done(&server);
                        *drawn_by.entry(server).or_default() += 1;
                    }
                    match this.store_drawn(statuses, i, frame, image, progress, &mut local) {
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
        timings.merge(&local);
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
    pub(super) fn store_drawn(
        &self,
        statuses: &mut [(SpriteStatus, Vec<Lookup>)],
        i: usize,
        frame: u32,
        raw: image::RgbaImage,
        progress: &mut dyn Progress,
        timings: &mut Timings,
    ) -> Result<(), Error> {
        if let Some(key) = self.plan[i].frames[frame as usize].raw {
            let start = std::time::Instant::now();
            self.cache
                .write_raw(&key, &raw)
                .map_err(|source| Error::Cache {
                    path: self.cache.raw_path_of(&key),
                    source,
                })?;
            timings.add(Stage::EncodeWrite, start.elapsed());
        }
        self.store_finished(statuses, i, frame, raw, progress, timings)
    }

    /// Pixelizes a raw frame and stores the finished sprite frame in the cache.
    pub(super) fn store_finished(
        &self,
        statuses: &mut [(SpriteStatus, Vec<Lookup>)],
        i: usize,
        frame: u32,
        raw: image::RgbaImage,
        progress: &mut dyn Progress,
        timings: &mut Timings,
    ) -> Result<(), Error> {
        let sprite = &self.manifest.sprites[self.plan[i].sprite];
        let finished = timings.time(Stage::Pixelize, || pixelize::finish(raw, sprite));
        let planned = &self.plan[i].frames[frame as usize];
        let key = &planned.key;
        let output = timings
            .time(Stage::EncodeWrite, || self.cache.write(key, &finished))
            .map_err(|source| Error::Cache {
                path: self.cache.path_of(key),
                source,
            })?;
        statuses[i].1[frame as usize] = Lookup::Hit { output };
        progress.frame_done(&planned.id);
        Ok(())
    }

    /// Frame 0 of sprite `index` (in `plan` order) drawn with each of `seeds` and
    /// pixelized, in seed order, through the sprite's backend as a build draws it;
    /// nothing is stored. What an assistant's `variations` shows.
    pub fn draw_seeds(
        &mut self,
        index: usize,
        seeds: &[u64],
    ) -> Result<Vec<image::RgbaImage>, Error> {
        let mut timings = Timings::new();
        let mut drawer = self.open_drawer(index, &mut timings)?;
        let sprite = &self.manifest.sprites[self.plan[index].sprite];
        let frames: Vec<Frame> = seeds
            .iter()
            .map(|&seed| frame_of(sprite, seed, 0))
            .collect();
        let mut drawn: Vec<Option<Result<image::RgbaImage, String>>> = vec![None; seeds.len()];
        drawer.draw(&frames, &mut timings, &mut |index, frame| {
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
    }
}
