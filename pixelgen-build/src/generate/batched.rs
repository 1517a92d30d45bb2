//! Backends that draw a batch of frames at a time ([`Generator`]: the procedural
//! generator, Stable Diffusion in-process or through the warm server) become a
//! [`Drawer`] through [`Batched`], which samples on a second thread while the caller
//! stores the batch before.
//!
//! Invariants: the sampler runs at most one batch ahead; when the caller stops (its
//! `done` breaks) the sampler stops after the batch in hand; a batch's images reach the
//! caller only when the whole batch arrived, so the cache only ever sees complete images.

use std::ops::ControlFlow;

use image::RgbaImage;

use super::{Drawer, Drawn, Frame, GenerateError};
use crate::timings::Timings;

/// A backend that draws frames a batch at a time. `generate` takes frames that share the
/// backend's model and settings, so that backends with a costly setup (a diffusion
/// model) pay it once. Generators are `Send`: [`Batched`] samples on one thread while
/// the pipeline pixelizes and writes the previous batch on another.
pub trait Generator: Send {
    /// Draws each frame; the images may be any size (the pixelize stage brings them to
    /// the sprite's size) and are returned in frame order. The time of each stage it
    /// runs is added to `timings`.
    fn generate(
        &mut self,
        frames: &[Frame<'_>],
        timings: &mut Timings,
    ) -> Result<Vec<RgbaImage>, GenerateError>;

    /// How many frames to give `generate` at once (progress is reported between batches).
    fn batch_size(&self) -> usize {
        16
    }

    /// Something the user should hear once about how this backend runs.
    fn take_note(&mut self) -> Option<String> {
        None
    }
}

/// A [`Generator`] as a [`Drawer`].
pub struct Batched {
    generator: Option<Box<dyn Generator>>,
}

impl Batched {
    pub fn new(generator: Box<dyn Generator>) -> Batched {
        Batched {
            generator: Some(generator),
        }
    }

    pub fn boxed(generator: impl Generator + 'static) -> Box<dyn Drawer> {
        Box::new(Batched::new(Box::new(generator)))
    }
}

impl Drawer for Batched {
    fn draw(
        &mut self,
        frames: &[Frame<'_>],
        timings: &mut Timings,
        done: &mut dyn FnMut(usize, Drawn) -> ControlFlow<()>,
    ) -> Result<Vec<String>, GenerateError> {
        let Some(mut generator) = self.generator.take() else {
            return Ok(Vec::new());
        };
        if frames.is_empty() {
            return Ok(generator.take_note().into_iter().collect());
        }
        let mut notes: Vec<String> = generator.take_note().into_iter().collect();
        let batch_size = generator.batch_size().max(1);
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let (sampler_timings, sampler_notes, failure) = std::thread::scope(|scope| {
            let sampler = scope.spawn(move || {
                let mut timings = Timings::new();
                let mut notes = Vec::new();
                for (index, batch) in frames.chunks(batch_size).enumerate() {
                    let drawn = generator.generate(batch, &mut timings).and_then(|raws| {
                        if raws.len() == batch.len() {
                            Ok(raws)
                        } else {
                            Err(GenerateError::Failed {
                                sprite: batch[0].sprite.clone(),
                                message: format!(
                                    "the backend returned {} images for {} frames",
                                    raws.len(),
                                    batch.len()
                                ),
                            })
                        }
                    });
                    // A generator may fall back from the warm server mid-group, with a note.
                    notes.extend(std::iter::from_fn(|| generator.take_note()));
                    let failed = drawn.is_err();
                    if sender.send((index, drawn)).is_err() || failed {
                        break;
                    }
                }
                // Dropping the generator here releases the model (and the device lock)
                // before the group's last batch is stored.
                drop(generator);
                (timings, notes)
            });
            let mut failure = None;
            'batches: for (index, drawn) in receiver {
                match drawn {
                    Ok(images) => {
                        for (offset, image) in images.into_iter().enumerate() {
                            let frame = index * batch_size + offset;
                            let drawn = Drawn::Image {
                                image,
                                server: None,
                            };
                            if done(frame, drawn).is_break() {
                                break 'batches;
                            }
                        }
                    }
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            // Leaving the loop drops `receiver`, so the sampler stops at its next send.
            let joined = sampler.join().map_err(|_| GenerateError::Failed {
                sprite: frames[0].sprite.clone(),
                message: "the sampling thread panicked".into(),
            });
            joined.map(|(timings, notes)| (timings, notes, failure))
        })?;
        timings.merge(&sampler_timings);
        notes.extend(sampler_notes);
        match failure {
            Some(error) => Err(error),
            None => Ok(notes),
        }
    }
}
