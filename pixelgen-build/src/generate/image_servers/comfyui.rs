//! ComfyUI's API (`POST /prompt`, `GET /history/{id}`, `GET /view`, `GET /queue`,
//! `POST /upload/image`) with the user's workflow in API format. The request and answer
//! shapes follow ComfyUI's `server.py` and `execution.py`; `tests/tests/comfyui.rs` runs
//! them against a real ComfyUI, `pixelgen-build/tests/comfyui.rs` its failure paths
//! against a replay server.
//!
//! Invariants:
//! - The workflow is sent as the user wrote it but for the inputs named in the manifest
//!   (prompt, negative prompt, seed, size, model and sampler settings when given, a
//!   frame's uploaded init image, mask and strength, and each ControlNet's uploaded control
//!   image, scale, start and end); its bytes are part of the sprites' keys ([`identity`]).
//! - One prompt per frame (ComfyUI has no batch of differing prompts); results are matched
//!   by prompt id.
//! - The first image of the finished prompt's outputs (by node id) is the frame, accepted
//!   only when it decodes and has the size asked for.

use serde_json::{Value, json};
use std::collections::HashMap;

use super::http::{Client, HttpError, percent_encode};
use super::invokeai::decode_checked;
use super::uploads::{MaskWhite, Uploads};
use super::{DrawSettings, Endpoint, FrameRequest, ImageServer, Outcome, ServerKind};
use super::{ServerSpec, WorkflowInputs};
use crate::generate::Conditioning;
use crate::generate::conditioning::ImageFile;

/// A workflow with the manifest's settings applied, ready for per-frame values.
#[derive(Debug, Clone)]
pub struct Workflow {
    nodes: Value,
    inputs: WorkflowInputs,
    /// The size frames are drawn at (checked on every image).
    pub draw: DrawSettings,
}

/// The identity of a ComfyUI sprite's drawing in its key: the workflow file's content,
/// the model name written into it and which inputs pixelgen sets. No server is asked:
/// ComfyUI reports no model hashes.
pub fn identity(workflow_hash: &blake3::Hash, spec: &ServerSpec) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_derive_key("pixelgen server model identity v1");
    hasher
        .update(ServerKind::ComfyUI.name().as_bytes())
        .update(&[0])
        .update(workflow_hash.as_bytes())
        .update(spec.model.as_bytes())
        .update(&[0]);
    if let Some(workflow) = &spec.workflow {
        hasher.update(workflow.inputs.identity_text().as_bytes());
    }
    hasher.finalize()
}

impl Workflow {
    /// Reads the spec's workflow (the manifest checked its shape and nodes) and writes the
    /// model and sampler settings into it.
    pub fn load(spec: &ServerSpec) -> Result<Workflow, String> {
        let Some(workflow) = &spec.workflow else {
            return Err("a ComfyUI generator without a workflow".into());
        };
        let path = &workflow.resolved;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("workflow {}: {e}", path.display()))?;
        let nodes: Value =
            serde_json::from_str(&text).map_err(|e| format!("workflow {}: {e}", path.display()))?;
        Workflow::new(nodes, spec)
    }

    pub fn new(mut nodes: Value, spec: &ServerSpec) -> Result<Workflow, String> {
        let Some(workflow) = &spec.workflow else {
            return Err("a ComfyUI generator without a workflow".into());
        };
        let inputs = workflow.inputs.clone();
        if let Some((node, input)) = &inputs.model {
            nodes[node]["inputs"][input] = json!(spec.model);
        }
        if let Some(node) = &inputs.sampler {
            nodes[node]["inputs"]["steps"] = json!(spec.steps);
            nodes[node]["inputs"]["cfg"] = json!(spec.guidance);
            nodes[node]["inputs"]["sampler_name"] = json!(spec.scheduler);
        }
        let (width, height) = match (spec.resolution, &inputs.size) {
            (Some((w, h)), Some(node)) => {
                nodes[node]["inputs"]["width"] = json!(w);
                nodes[node]["inputs"]["height"] = json!(h);
                (w, h)
            }
            (None, Some(node)) => {
                let side = |name: &str| {
                    nodes[node]["inputs"][name]
                        .as_u64()
                        .and_then(|v| u32::try_from(v).ok())
                };
                side("width").zip(side("height")).ok_or_else(|| {
                    format!("the workflow's size node {node} has no numeric width and height; set `resolution`")
                })?
            }
            (_, None) => {
                return Err("a ComfyUI generator needs `size` among its inputs (the node with width and height)".into());
            }
        };
        Ok(Workflow {
            nodes,
            inputs,
            draw: DrawSettings {
                steps: spec.steps,
                guidance: spec.guidance,
                scheduler: spec.scheduler.clone(),
                width,
                height,
                conditioning: Conditioning::default(),
            },
        })
    }

    /// The workflow with one frame's values set: its prompts and seed, the names its
    /// uploaded init image, mask and control images have on the server, the strength and
    /// each ControlNet's scale and window.
    pub fn for_frame(&self, frame: &FrameRequest, uploaded: &FrameUploads) -> Value {
        let mut nodes = self.nodes.clone();
        let controls = self.inputs.controlnets.iter().zip(&uploaded.controls);
        for ((inputs, name), spec) in controls.zip(&frame.conditioning.controlnets) {
            let (node, input) = &inputs.image;
            nodes[node]["inputs"][input] = json!(name);
            for (target, value) in [
                (&inputs.strength, spec.scale),
                (&inputs.start, spec.start),
                (&inputs.end, spec.end),
            ] {
                if let Some((node, input)) = target {
                    nodes[node]["inputs"][input] = json!(value);
                }
            }
        }
        if let (Some((node, input)), Some(name)) = (&self.inputs.init_image, &uploaded.init) {
            nodes[node]["inputs"][input] = json!(name);
        }
        if let (Some((node, input)), Some(name)) = (&self.inputs.mask, &uploaded.mask) {
            nodes[node]["inputs"][input] = json!(name);
        }
        if let (Some((node, input)), Some(init)) = (&self.inputs.strength, &frame.conditioning.init)
        {
            nodes[node]["inputs"][input] = json!(init.strength);
        }
        let (node, input) = &self.inputs.prompt;
        nodes[node]["inputs"][input] = json!(frame.prompt);
        if let Some((node, input)) = &self.inputs.negative_prompt {
            nodes[node]["inputs"][input] = json!(frame.negative_prompt);
        }
        let (node, input) = &self.inputs.seed;
        nodes[node]["inputs"][input] = json!(frame.seed);
        nodes
    }
}

/// What a frame uploaded: its init image's, mask's and control images' names on the
/// server.
#[derive(Debug, Default)]
pub struct FrameUploads {
    pub init: Option<String>,
    pub mask: Option<String>,
    /// One per ControlNet, in order.
    pub controls: Vec<String>,
}

/// One ComfyUI server drawing one workflow.
pub struct ComfyUi {
    client: Client,
    workflow: Workflow,
    /// Prompt id → frame, for this run's unfinished prompts.
    outstanding: HashMap<String, usize>,
    /// Images uploaded to this server for this group.
    uploaded: Uploads,
}

impl ComfyUi {
    pub fn new(client: Client, workflow: Workflow) -> ComfyUi {
        ComfyUi {
            client,
            workflow,
            outstanding: HashMap::new(),
            uploaded: Uploads::default(),
        }
    }

    /// One image on the server, uploaded through `/upload/image` the first time (named
    /// by its content); brought to the drawing's size when `drawing_sized`.
    fn upload(
        &mut self,
        file: &ImageFile,
        mask: Option<MaskWhite>,
        drawing_sized: bool,
    ) -> Result<String, HttpError> {
        let size = drawing_sized.then_some((self.workflow.draw.width, self.workflow.draw.height));
        let client = &self.client;
        self.uploaded
            .name_of(client, file, size, mask, |bytes, file_name| {
                let answer =
                    client.upload("/upload/image", &[], "image", file_name, "image/png", bytes)?;
                let name = answer["name"]
                    .as_str()
                    .ok_or_else(|| client.unexpected("/upload/image", "no name in the answer"))?;
                // An upload into a subfolder is named `subfolder/name` in a LoadImage input.
                Ok(
                    match answer["subfolder"].as_str().filter(|s| !s.is_empty()) {
                        Some(subfolder) => format!("{subfolder}/{name}"),
                        None => name.to_string(),
                    },
                )
            })
    }

    /// A frame's init image, mask and control images on the server. A control image goes
    /// as it is: ComfyUI's ControlNet nodes resize it to the drawing.
    fn uploads(&mut self, frame: &FrameRequest) -> Result<FrameUploads, HttpError> {
        let mut uploads = FrameUploads::default();
        if let Some(init) = &frame.conditioning.init {
            uploads.init = Some(self.upload(&init.image, None, true)?);
            if let Some(mask) = &init.mask {
                uploads.mask = Some(self.upload(mask, Some(MaskWhite::Repaints), true)?);
            }
        }
        for controlnet in &frame.conditioning.controlnets {
            let name = self.upload(&controlnet.image, None, false)?;
            uploads.controls.push(name);
        }
        Ok(uploads)
    }

    fn fetch(&self, entry: &Value) -> Outcome {
        let mut outputs: Vec<(&String, &Value)> = entry["outputs"]
            .as_object()
            .map(|o| o.iter().collect())
            .unwrap_or_default();
        outputs.sort_by(|a, b| a.0.cmp(b.0));
        let image = outputs
            .iter()
            .find_map(|(_, output)| output["images"].as_array()?.first());
        let Some(image) = image else {
            return Outcome::Unusable(format!(
                "{} finished the workflow without an image (add a SaveImage node)",
                self.client.endpoint
            ));
        };
        let field = |name: &str| image[name].as_str().unwrap_or("").to_string();
        let query = [
            ("filename", field("filename")),
            ("subfolder", field("subfolder")),
            ("type", field("type")),
        ];
        let path = format!(
            "/view?{}",
            query
                .iter()
                .map(|(k, v)| format!("{k}={}", percent_encode(v)))
                .collect::<Vec<_>>()
                .join("&")
        );
        match self.client.get_bytes(&path) {
            Ok(bytes) => decode_checked(&bytes, &self.workflow.draw, &self.client.endpoint),
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }
}

impl ImageServer for ComfyUi {
    fn endpoint(&self) -> &Endpoint {
        &self.client.endpoint
    }

    fn queue_length(&mut self) -> Result<usize, HttpError> {
        let queue = self.client.get_json("/queue", &[])?;
        let count = |field: &str| queue[field].as_array().map_or(0, Vec::len);
        Ok(count("queue_running") + count("queue_pending"))
    }

    fn submit(&mut self, frames: &[(usize, &FrameRequest)]) -> Result<(), HttpError> {
        for (index, frame) in frames {
            let uploads = self.uploads(frame)?;
            let answer = self.client.send_json(
                "POST",
                "/prompt",
                &json!({"prompt": self.workflow.for_frame(frame, &uploads), "client_id": "pixelgen"}),
            )?;
            let Some(id) = answer["prompt_id"].as_str() else {
                return Err(self
                    .client
                    .unexpected("/prompt", "no prompt_id in the answer"));
            };
            self.outstanding.insert(id.to_string(), *index);
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<(usize, Outcome)>, HttpError> {
        let mut finished = Vec::new();
        let ids: Vec<String> = self.outstanding.keys().cloned().collect();
        for id in ids {
            let history = self.client.get_json(&format!("/history/{id}"), &[])?;
            let Some(entry) = history.get(&id) else {
                continue; // Not finished yet.
            };
            let status = &entry["status"];
            let outcome = match status["status_str"].as_str() {
                Some("success") => self.fetch(entry),
                Some("error") => {
                    let error = status["messages"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|m| m[0] == "execution_error")
                        .map(|m| {
                            format!(
                                "{} ({}): {}",
                                m[1]["node_type"].as_str().unwrap_or("node"),
                                m[1]["node_id"].as_str().unwrap_or("?"),
                                m[1]["exception_message"].as_str().unwrap_or("").trim()
                            )
                        })
                        .unwrap_or_else(|| "the workflow failed".into());
                    Outcome::Failed(format!("{} failed it: {error}", self.client.endpoint))
                }
                // Present but not completed: still running.
                _ if status["completed"] != json!(true)
                    && entry["outputs"].as_object().is_none_or(|o| o.is_empty()) =>
                {
                    continue;
                }
                _ => self.fetch(entry),
            };
            if let Some(frame) = self.outstanding.remove(&id) {
                finished.push((frame, outcome));
            }
        }
        Ok(finished)
    }

    fn cancel(&mut self) {
        if self.outstanding.is_empty() {
            return;
        }
        let ids: Vec<&String> = self.outstanding.keys().collect();
        let _ = self
            .client
            .send_json("POST", "/queue", &json!({"delete": ids}));
        self.outstanding.clear();
    }
}
