//! Image servers behind the backend seam: what a `Server(...)` sprite's key covers, the
//! identity of its model as the servers report it, and a drawer that fans a group's
//! frames out over the servers ready for it.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::fanout::{self, FanOutOptions};
use super::{
    FrameRequest, ImageServer, Ready, SERVER_VERSION, ServerKind, ServerLora, ServerSpec, comfyui,
    invokeai,
};
use crate::generate::{
    Backend, Conditioning, Drawer, Drawn, Frame, GenerateError, GroupInputs, GroupKey, KeyError,
    KeyInputs, KeyParts, Reported, ResolvedLora, Workshop, encode_loras, encode_path, frame_seed,
    settings,
};
use crate::key::{Canonical, InputFile};
use crate::timings::{Stage, Timings};

impl Backend for ServerSpec {
    fn name(&self) -> &'static str {
        "Server"
    }

    fn refuses_loras(&self) -> Option<crate::generate::settings::Refusal> {
        // A workflow's LoRAs are its own LoraLoader nodes; pixelgen gives InvokeAI LoRAs
        // by content.
        (self.kind == ServerKind::ComfyUI).then(|| {
            crate::generate::settings::Refusal::new(
                "loras",
                "draws with a ComfyUI workflow, which takes its LoRAs from its own LoraLoader nodes",
                "not applied by ComfyUI",
                "put the LoRA in the workflow (its file's bytes are then covered by the workflow's hash only through its name), or use an InvokeAI server, which pixelgen gives LoRAs by content",
            )
        })
    }

    fn draws_raw_images(&self) -> bool {
        true
    }

    /// InvokeAI draws from an init image (its `i2l` node and `denoising_start`), repaints
    /// under a mask (`create_denoise_mask`), follows ControlNets installed on it under the
    /// folder's name (`controlnet`) and draws tiles (`seamless`); a ComfyUI workflow takes
    /// what its named inputs take.
    fn refuses_conditioning(
        &self,
        conditioning: &Conditioning,
        sprite_size: (u32, u32),
        _: &settings::SettingsContext<'_>,
    ) -> Option<settings::Refusal> {
        if self.kind == ServerKind::ComfyUI {
            return self.comfyui_refuses(conditioning, sprite_size);
        }
        // InvokeAI's `controlnet` node takes weights from -1 to 2.
        if let Some(controlnet) = conditioning.controlnets.iter().find(|c| {
            !(-1.0..=2.0).contains(&c.scale)
                || !(0.0..=1.0).contains(&c.start)
                || !(c.start..=1.0).contains(&c.end)
        }) {
            return Some(
                settings::Refusal::new(
                    "controlnet",
                    format!(
                        "has ControlNet `{}` with scale {}, start {} and end {}, which InvokeAI does not take",
                        controlnet.model, controlnet.scale, controlnet.start, controlnet.end
                    ),
                    "out of range",
                    "InvokeAI takes a scale from -1 to 2 and 0 ≤ start ≤ end ≤ 1",
                )
                .at_literal(&controlnet.model),
            );
        }
        let init = conditioning.init.as_ref()?;
        settings::check_init(init, self.steps, self.resolution, sprite_size).err()
    }

    fn key(&self, inputs: &mut dyn KeyInputs) -> Result<KeyParts, KeyError> {
        // The URLs are not here: the same model on another server draws the same art.
        // The model's identity is the Model group.
        let mut generator = Canonical::new();
        generator
            .str("server")
            .str(SERVER_VERSION)
            .str(self.kind.name())
            .u64(self.steps.into())
            .f32(self.guidance)
            .str(&self.scheduler);
        match self.resolution {
            Some((w, h)) => generator.u64(w.into()).u64(h.into()),
            None => generator.str("default-resolution"),
        };
        let mut files = Vec::new();
        let identity = match (&self.kind, &self.workflow) {
            (ServerKind::ComfyUI, Some(workflow)) => {
                let file = InputFile::Workflow(workflow.path.clone());
                let hash =
                    inputs
                        .file_hash(file.clone(), &workflow.resolved)
                        .map_err(|source| KeyError {
                            message: format!(
                                "cannot read workflow {}: {source}",
                                workflow.resolved.display()
                            ),
                            help: "workflow paths are relative to the folder of sprites.ron",
                        })?;
                files.push((file, hash));
                comfyui::identity(&hash, self)
            }
            _ => {
                // What the servers reported this run (online builds ask them first), else
                // what the lock file recorded; with neither, an identity that matches no
                // cache entry (the sprite is stale, and generating it asks the servers).
                let file = InputFile::ServerModel(self.model.clone());
                let hash = inputs.known_hash(&file).unwrap_or_else(|| {
                    blake3::hash(
                        format!("pixelgen unresolved server model {}", self.model).as_bytes(),
                    )
                });
                files.push((file, hash));
                hash
            }
        };
        Ok(KeyParts {
            generator,
            model: Some(identity),
            files,
        })
    }

    fn group(&self, loras: &[ResolvedLora], conditioning: &Conditioning) -> GroupKey {
        // Frames for the same servers, model, settings and LoRAs go out as one fan-out.
        let mut encoding = Canonical::new();
        encoding.str(self.kind.name());
        encoding.u64(self.endpoints.len() as u64);
        for endpoint in &self.endpoints {
            encoding.str(&endpoint.to_string());
        }
        encoding
            .str(&self.model)
            .u64(self.steps.into())
            .u64(self.guidance.to_bits().into())
            .str(&self.scheduler);
        match self.resolution {
            Some((w, h)) => encoding.u64(w.into()).u64(h.into()),
            None => encoding.str("default-resolution"),
        };
        match &self.workflow {
            Some(workflow) => {
                encode_path(&mut encoding, &workflow.resolved);
                encoding.str(&format!("{:?}", workflow.inputs))
            }
            None => encoding.str("no-workflow"),
        };
        encode_loras(&mut encoding, loras);
        conditioning.encode_group(&mut encoding);
        GroupKey::new("server", &encoding)
    }

    fn open(
        &self,
        group: &GroupInputs<'_>,
        workshop: &mut Workshop,
        _: &mut Timings,
    ) -> Result<Box<dyn Drawer>, GenerateError> {
        let failed = |message: String| GenerateError::Failed {
            sprite: group.sprite.clone(),
            message,
        };
        let mut loras = Vec::with_capacity(group.loras.len());
        for lora in group.loras {
            let Some(content_hash) = lora.content_hash.clone() else {
                let name = lora.trained.as_ref().map_or("?", |name| name.as_str());
                return Err(failed(format!(
                    "trained LoRA `{name}` is not in the cache ({})",
                    lora.file.display()
                )));
            };
            loras.push(ServerLora {
                file: lora.file.clone(),
                content_hash,
                weight: lora.weight,
            });
        }
        // The identity the keys cover (what the servers reported, or the lock's).
        let identity = group
            .files
            .get(&InputFile::ServerModel(self.model.clone()))
            .and_then(|hex| blake3::Hash::from_hex(hex).ok())
            .unwrap_or(blake3::hash(b"no identity"));
        let Ready { servers, left_out } = workshop
            .image_servers
            .servers(self, &loras, identity, group.conditioning)
            .map_err(failed)?;
        if servers.is_empty() {
            return Err(failed(format!(
                "no image server can draw it:\n  {}\nhelp: fix what each server says above (start it, install the model or LoRA it lacks, or correct `url` or PIXELGEN_IMAGE_SERVERS) and build again; sprites already in cache/ build without a server",
                left_out.join("\n  ")
            )));
        }
        let options = FanOutOptions {
            stall_timeout: workshop
                .environment
                .image_servers
                .stall_timeout_secs
                .map_or(FanOutOptions::default().stall_timeout, Duration::from_secs),
            ..FanOutOptions::default()
        };
        Ok(Box::new(FanOut {
            kind: self.kind,
            servers,
            left_out,
            options,
        }))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "server": self.kind.name(),
            "url": self.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            "model": self.model, "steps": self.steps, "guidance": self.guidance,
            "scheduler": self.scheduler, "resolution": self.resolution,
            "workflow": self.workflow.as_ref().map(|w| w.path.clone()),
        })
    }

    fn summary(&self) -> String {
        format!("server ({}): {}", self.kind.name(), self.model)
    }

    /// InvokeAI: the servers' identity of the model (ComfyUI's is its workflow file).
    fn report_identities(&self, workshop: &mut Workshop) -> Result<Reported, String> {
        if self.kind != ServerKind::InvokeAI {
            return Ok(Reported::default());
        }
        let (identity, unreachable) = workshop.image_servers.identity(self)?;
        Ok(match identity {
            Some(identity) => Reported {
                identities: vec![(InputFile::ServerModel(self.model.clone()), identity)],
                notes: unreachable,
            },
            None => Reported {
                identities: Vec::new(),
                notes: vec![format!(
                    "no image server answered about model `{}` ({}); its identity comes from sprites.lock",
                    self.model,
                    unreachable.join("; ")
                )],
            },
        })
    }
}

impl ServerSpec {
    /// A ComfyUI workflow draws from an init image (and a mask) through the inputs the
    /// manifest names; ControlNets and tiles are the workflow's own business (its nodes),
    /// not fields pixelgen fills.
    fn comfyui_refuses(
        &self,
        conditioning: &Conditioning,
        sprite_size: (u32, u32),
    ) -> Option<settings::Refusal> {
        if conditioning.tiling.is_some() {
            return Some(settings::Refusal::new(
                "tiling",
                "uses a ComfyUI server, whose built-in nodes draw no seamless tiles",
                "not available with this generator",
                "draw tiles with `generator: Diffusion(...)` or an InvokeAI server (its `seamless` node), or remove `tiling`",
            ));
        }
        let inputs = self.workflow.as_ref().map(|w| &w.inputs)?;
        let missing = |field: &'static str, what: &str, help: &str| {
            settings::Refusal::new(
                field,
                format!("draws with a ComfyUI workflow whose `inputs` name no {what}"),
                "no such workflow input",
                help,
            )
        };
        let controlnets = &conditioning.controlnets;
        if let Some(unnamed) = controlnets.get(inputs.controlnets.len()) {
            return Some(
                missing(
                    "controlnet",
                    &format!("nodes for its ControlNet number {}", inputs.controlnets.len() + 1),
                    "add `controlnets: [(image: \"12\", strength: \"13\", start: \"13\", end: \"13\")]` to the generator's `inputs`, one entry per ControlNet (a LoadImage node for the control image; a ControlNetApplyAdvanced node for the rest)",
                )
                .at_literal(&unnamed.model),
            );
        }
        for (spec, nodes) in controlnets.iter().zip(&inputs.controlnets) {
            let refusal = if spec.scale != 1.0 && nodes.strength.is_none() {
                missing(
                    "controlnet",
                    &format!(
                        "strength for ControlNet `{}` (scale {})",
                        spec.model, spec.scale
                    ),
                    "add `strength: \"13\"` (a ControlNetApplyAdvanced node) to its entry in `controlnets`, or leave the scale at 1",
                )
            } else if (spec.start != 0.0 || spec.end != 1.0)
                && (nodes.start.is_none() || nodes.end.is_none())
            {
                missing(
                    "controlnet",
                    &format!("start and end for ControlNet `{}`", spec.model),
                    "add `start: \"13\", end: \"13\"` (a ControlNetApplyAdvanced node's start_percent and end_percent) to its entry in `controlnets`, or leave start 0 and end 1",
                )
            } else {
                continue;
            };
            return Some(refusal.at_literal(&spec.model));
        }
        let init = conditioning.init.as_ref()?;
        if inputs.init_image.is_none() {
            return Some(missing(
                "init",
                "init image",
                "add `init_image: \"10\"` (a LoadImage node's id) to the generator's `inputs`",
            ));
        }
        if init.strength < 1.0 && inputs.strength.is_none() {
            return Some(missing(
                "init",
                "strength",
                "add `strength: \"3.denoise\"` (the KSampler's denoise) to the generator's `inputs`",
            ));
        }
        if init.mask.is_some() && inputs.mask.is_none() {
            return Some(missing(
                "init",
                "mask",
                "add `mask: \"11\"` (a LoadImageMask node with channel `red`; white repaints) to the generator's `inputs`",
            ));
        }
        settings::check_init(init, self.steps, self.resolution, sprite_size).err()
    }
}

/// One group's frames, spread over the servers ready for it.
struct FanOut {
    kind: ServerKind,
    servers: Vec<Box<dyn ImageServer>>,
    /// Why the other servers cannot draw this group.
    left_out: Vec<String>,
    options: FanOutOptions,
}

impl Drawer for FanOut {
    fn draw(
        &mut self,
        frames: &[Frame<'_>],
        timings: &mut Timings,
        done: &mut dyn FnMut(usize, Drawn) -> ControlFlow<()>,
    ) -> Result<Vec<String>, GenerateError> {
        let mut notes: Vec<String> = self
            .left_out
            .drain(..)
            .map(|why| format!("left out of this run: {why}"))
            .collect();
        let servers = std::mem::take(&mut self.servers);
        let names: Vec<String> = servers.iter().map(|s| s.endpoint().short()).collect();
        let mut requests = Vec::with_capacity(frames.len());
        let mut sent = Vec::with_capacity(frames.len());
        for (index, frame) in frames.iter().enumerate() {
            let seed = frame_seed(frame.seed, frame.frame);
            if self.kind == ServerKind::InvokeAI && seed > invokeai::MAX_SEED {
                let message = format!(
                    "seed {seed} is above InvokeAI's largest seed, {}; give the sprite a smaller seed",
                    invokeai::MAX_SEED
                );
                if done(index, Drawn::Failed(message)).is_break() {
                    return Ok(notes);
                }
                continue;
            }
            requests.push(FrameRequest {
                prompt: frame.prompt.to_owned(),
                negative_prompt: frame.negative_prompt.to_owned(),
                seed,
                conditioning: frame.conditioning.clone(),
            });
            sent.push(index);
        }
        // Time spent in `done` (the caller pixelizing and storing) is not the servers'.
        let start = Instant::now();
        let mut callers = Duration::ZERO;
        let mut report = |index: usize, drawn: Drawn| -> Result<(), ()> {
            let started = Instant::now();
            let flow = done(index, drawn);
            callers += started.elapsed();
            match flow {
                ControlFlow::Continue(()) => Ok(()),
                ControlFlow::Break(()) => Err(()),
            }
        };
        let _stopped = fanout::fan_out(servers, &requests, &self.options, |event| match event {
            fanout::Event::Done {
                frame,
                server,
                image,
            } => report(
                sent[frame],
                Drawn::Image {
                    image,
                    server: Some(names[server].clone()),
                },
            ),
            fanout::Event::Failed { frame, message } => report(sent[frame], Drawn::Failed(message)),
            fanout::Event::ServerLost {
                server,
                message,
                returned,
            } => {
                notes.push(format!(
                    "image server {} was given up ({message}); its {returned} queued frame(s) went to the others",
                    names[server]
                ));
                Ok(())
            }
        });
        timings.add_runs(
            Stage::ImageServers,
            start.elapsed().saturating_sub(callers),
            requests.len() as u64,
        );
        Ok(notes)
    }
}
