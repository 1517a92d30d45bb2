//! Generating on image servers a studio already runs (InvokeAI, ComfyUI), spread over
//! several of them.
//!
//! pixelgen keeps what only it does — keys, the cache, pixelizing, atlases, typed code,
//! offline CI — and sends the drawing to the servers: [`Connections`] finds the model
//! on each server and the identity the key covers, [`fanout`] spreads the frames and
//! collects the images, which the pipeline pixelizes and caches like any raw image.
//!
//! Invariants:
//! - A URL is never part of a key; the server kind, the model's identity as the server
//!   reports it, the LoRAs by content and every setting are. The same model on another
//!   server is the same art, so servers that report a different identity for the model
//!   than the key covers are left out of the run (with a note).
//! - Offline builds never get here: nothing in this module runs unless the pipeline
//!   generates, and it never generates offline.
//! - Every URL passes [`Endpoint::check_transport`] before the first request to it.
//! - The token (`PIXELGEN_IMAGE_SERVER_TOKEN`) goes only into request headers
//!   ([`http`]); keys, the lock, notes and messages never contain it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use image::RgbaImage;

mod backend;
pub mod comfyui;
mod endpoint;
pub mod fanout;
pub mod http;
pub mod invokeai;
mod settings;
mod spec;
mod uploads;

use http::{Client, HttpError};
pub use settings::{ServerSettings, WorkflowNodes};
pub use spec::{
    Endpoint, SERVER_DEFAULT_GUIDANCE, SERVER_DEFAULT_SCHEDULER, SERVER_DEFAULT_STEPS, Scheme,
    ServerKind, ServerSpec, WorkflowInputs, WorkflowSpec,
};

use crate::environment::ImageServerSettings;
use crate::generate::Conditioning;

/// Version of the server backends' requests, part of every key they make: bump it when
/// the graphs or workflows pixelgen sends change what is drawn.
pub const SERVER_VERSION: &str = "server-1";

/// One frame to draw: the values that change from frame to frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    /// The frame's own images (init image, mask), paths as the manifest resolved them.
    pub conditioning: Conditioning,
}

/// What every frame of a group shares.
#[derive(Debug, Clone, PartialEq)]
pub struct DrawSettings {
    pub steps: u32,
    pub guidance: f32,
    pub scheduler: String,
    pub width: u32,
    pub height: u32,
    /// The group's batch-wide conditioning: which nodes the graph has (strength,
    /// whether there is a mask, tiling).
    pub conditioning: Conditioning,
}

/// How a frame ended on a server.
#[derive(Debug)]
pub enum Outcome {
    /// The image, of the size asked for.
    Image(RgbaImage),
    /// The server reported an error for it (another server may succeed).
    Failed(String),
    /// The server sent something that is not the image asked for.
    Unusable(String),
}

/// One server drawing one group's frames. Implementations keep track of their own queued
/// work; [`fanout`] owns one per server, on its own thread.
pub trait ImageServer: Send {
    fn endpoint(&self) -> &Endpoint;
    /// Everyone's work waiting or running on the server.
    fn queue_length(&mut self) -> Result<usize, HttpError>;
    /// Queues `frames` (index, request).
    fn submit(&mut self, frames: &[(usize, &FrameRequest)]) -> Result<(), HttpError>;
    /// The frames that finished since the last call.
    fn poll(&mut self) -> Result<Vec<(usize, Outcome)>, HttpError>;
    /// Drops this run's queued work, as far as the server allows (best effort).
    fn cancel(&mut self);
}

/// The identity of a Server sprite's model in its key, from what the server reported
/// (InvokeAI: the model's hash, and its default size when the manifest gives none).
pub fn invokeai_identity(model: &invokeai::ModelInfo) -> blake3::Hash {
    let (width, height) = model.draw_size();
    let mut hasher = blake3::Hasher::new_derive_key("pixelgen server model identity v1");
    hasher
        .update(ServerKind::InvokeAI.name().as_bytes())
        .update(&[0])
        .update(model.hash.as_bytes())
        .update(&[0])
        .update(&width.to_le_bytes())
        .update(&height.to_le_bytes());
    hasher.finalize()
}

/// A sprite LoRA as a server sees it: the blake3 of the file's bytes, and its weight.
#[derive(Debug, Clone)]
pub struct ServerLora {
    pub file: PathBuf,
    pub content_hash: String,
    pub weight: f32,
}

/// The servers that can draw a group, and why the others cannot.
pub struct Ready {
    pub servers: Vec<Box<dyn ImageServer>>,
    pub left_out: Vec<String>,
}

/// The servers of one run: what each said about each model, asked once; a server that
/// did not answer is not asked again in this run (each try can cost a connect timeout).
pub struct Connections {
    settings: ImageServerSettings,
    models: BTreeMap<(Endpoint, String), Result<invokeai::ModelInfo, String>>,
    unreachable: BTreeMap<Endpoint, String>,
}

impl Connections {
    pub fn new(settings: ImageServerSettings) -> Connections {
        Connections {
            settings,
            models: BTreeMap::new(),
            unreachable: BTreeMap::new(),
        }
    }

    /// The servers a sprite's frames go to: `PIXELGEN_IMAGE_SERVERS` when set, else the
    /// manifest's; each checked for its transport.
    pub fn endpoints(&self, spec: &ServerSpec) -> Result<Vec<Endpoint>, String> {
        let endpoints = match &self.settings.urls {
            Some(urls) => urls
                .iter()
                .map(|url| Endpoint::parse(url).map_err(|e| format!("PIXELGEN_IMAGE_SERVERS: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
            None => spec.endpoints.clone(),
        };
        for endpoint in &endpoints {
            endpoint.check_transport(&self.settings.allow_http)?;
        }
        Ok(endpoints)
    }

    fn client(&self, endpoint: &Endpoint) -> Client {
        Client::new(
            endpoint.clone(),
            self.settings.token.clone(),
            Duration::from_secs(5),
            Duration::from_secs(120),
        )
    }

    /// What `endpoint` says about the main model `model` (asked once per run).
    fn model_on(
        &mut self,
        endpoint: &Endpoint,
        model: &str,
    ) -> Result<invokeai::ModelInfo, String> {
        let key = (endpoint.clone(), model.to_string());
        if let Some(known) = self.models.get(&key) {
            return known.clone();
        }
        if let Some(error) = self.unreachable.get(endpoint) {
            return Err(error.clone());
        }
        let client = self.client(endpoint);
        let found = invokeai::find_model(&client, model).map_err(|e| {
            if e.is_server_trouble() {
                self.unreachable.insert(endpoint.clone(), e.to_string());
            }
            e.to_string()
        });
        self.models.insert(key, found.clone());
        found
    }

    /// The identity of an InvokeAI sprite's model, as its servers report it: `Ok(None)`
    /// when none answered (the caller then takes the lock's). Servers that disagree
    /// hold different models under one name, which would mix art: an error.
    pub fn identity(
        &mut self,
        spec: &ServerSpec,
    ) -> Result<(Option<blake3::Hash>, Vec<String>), String> {
        let mut seen: Vec<(Endpoint, invokeai::ModelInfo)> = Vec::new();
        let mut unreachable = Vec::new();
        for endpoint in self.endpoints(spec)? {
            match self.model_on(&endpoint, &spec.model) {
                Ok(info) => seen.push((endpoint, info)),
                Err(error) => unreachable.push(error),
            }
        }
        let identities: Vec<(String, blake3::Hash)> = seen
            .iter()
            .map(|(endpoint, info)| {
                (
                    format!("{endpoint} has `{}` with hash {}", info.name, info.hash),
                    invokeai_identity(info),
                )
            })
            .collect();
        if identities.windows(2).any(|w| w[0].1 != w[1].1) {
            return Err(format!(
                "the servers hold different models named `{}`, whose images would not match: {}\nhelp: install the same model on every server in the list, or give each model its own name",
                spec.model,
                identities
                    .iter()
                    .map(|(what, _)| what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        Ok((identities.first().map(|(_, id)| *id), unreachable))
    }

    /// Servers ready to draw a group's frames with `spec` and its LoRAs (by content),
    /// and a note for each server left out (unreachable, another model, a LoRA missing).
    /// `identity` is the model identity the frames' keys cover.
    pub fn servers(
        &mut self,
        spec: &ServerSpec,
        loras: &[ServerLora],
        identity: blake3::Hash,
        conditioning: &Conditioning,
    ) -> Result<Ready, String> {
        let mut servers: Vec<Box<dyn ImageServer>> = Vec::new();
        let mut left_out = Vec::new();
        // ComfyUI: one workflow for every server (the manifest refused `loras` with it).
        let workflow = match spec.kind {
            ServerKind::ComfyUI => Some(comfyui::Workflow::load(spec)?),
            ServerKind::InvokeAI => None,
        };
        for endpoint in self.endpoints(spec)? {
            let client = self.client(&endpoint);
            if let Some(workflow) = &workflow {
                servers.push(Box::new(comfyui::ComfyUi::new(client, workflow.clone())));
                continue;
            }
            match self.invokeai_on(&endpoint, client, spec, loras, identity, conditioning) {
                Ok(server) => servers.push(Box::new(server)),
                Err(error) => left_out.push(error),
            }
        }
        Ok(Ready { servers, left_out })
    }

    /// `endpoint` ready to draw with `spec`'s model (the one the keys cover) and `loras`
    /// (found there by content), or why it cannot.
    fn invokeai_on(
        &mut self,
        endpoint: &Endpoint,
        client: Client,
        spec: &ServerSpec,
        loras: &[ServerLora],
        identity: blake3::Hash,
        conditioning: &Conditioning,
    ) -> Result<invokeai::InvokeAi, String> {
        let model = self.model_on(endpoint, &spec.model)?;
        if invokeai_identity(&model) != identity {
            return Err(format!(
                "{endpoint}'s `{}` (hash {}) is not the model these sprites' keys cover",
                model.name, model.hash
            ));
        }
        let mut server_loras = Vec::with_capacity(loras.len());
        for lora in loras {
            let found = invokeai::find_lora(&client, &lora.content_hash)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "{endpoint} has no LoRA whose file is {} (blake3:{}); install that file in its model manager",
                        lora.file.display(),
                        lora.content_hash
                    )
                })?;
            server_loras.push((found, lora.weight));
        }
        let mut controlnets = Vec::with_capacity(conditioning.controlnets.len());
        for controlnet in &conditioning.controlnets {
            let name = controlnet
                .resolved
                .file_name()
                .map_or(controlnet.model.clone(), |n| {
                    n.to_string_lossy().into_owned()
                });
            let found = invokeai::find_controlnet(&client, &name, &model.base)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "{endpoint} has no ControlNet named `{name}` of base `{}`; install {} in its model manager under that name",
                        model.base,
                        controlnet.resolved.display()
                    )
                })?;
            controlnets.push(found);
        }
        let (width, height) = spec.resolution.unwrap_or(model.draw_size());
        invokeai::InvokeAi::new(
            client,
            &model,
            &server_loras,
            &controlnets,
            DrawSettings {
                steps: spec.steps,
                guidance: spec.guidance,
                scheduler: spec.scheduler.clone(),
                width,
                height,
                conditioning: conditioning.clone(),
            },
        )
    }
}
