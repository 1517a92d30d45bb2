//! The generator checks: a Diffusion generator's model, a Server generator's URLs and
//! kind, the sampling settings both share, and a ComfyUI server's workflow file (kept
//! together here, ready to move beside a ComfyUI backend).

use std::path::Path;

use crate::generate::GeneratorSpec;
use crate::generate::diffusion::DiffusionSpec;
use crate::generate::image_servers::{
    Endpoint, SERVER_DEFAULT_GUIDANCE, SERVER_DEFAULT_SCHEDULER, SERVER_DEFAULT_STEPS, ServerKind,
    ServerSpec, WorkflowInputs, WorkflowSpec,
};
use crate::input_file::{FileKind, InputFileError, MAX_MODEL_FILE_BYTES};
use crate::manifest::merge::Merged;
use crate::manifest::raw::{RawGenerator, RawWorkflowInputs};
use crate::manifest::{MAX_GUIDANCE, MAX_RESOLUTION, MAX_STEPS};

use super::{Invalid, SpriteEntry, Validator};

impl Validator<'_> {
    pub(super) fn generator(
        &self,
        entry: &SpriteEntry<'_>,
        generator: Merged<&RawGenerator>,
    ) -> Result<GeneratorSpec, Invalid> {
        let Some(raw) = generator.value else {
            return Ok(GeneratorSpec::Procedural);
        };
        // Each setting is located inside the `Diffusion(...)` or `Server(...)` that wrote it.
        let generator_at = self.field_span(entry, "generator", &generator);
        let at = |field: &str| {
            self.locator
                .field_after(generator_at.start, field)
                .filter(|f| f.start < generator_at.end)
                .map(|f| self.locator.value_after(&f))
                .unwrap_or(generator_at.clone())
        };
        let refuse = |field: &str, message: String, label: &str, help: String| -> Invalid {
            self.error(at(field), message)
                .label(label)
                .help(help)
                .into()
        };
        match raw {
            RawGenerator::Procedural => Ok(GeneratorSpec::Procedural),
            RawGenerator::Diffusion {
                model,
                steps,
                guidance,
                scheduler,
                resolution,
            } => {
                self.diffusion_model(model, &refuse)?;
                sampling_settings(*steps, *guidance, *resolution, &refuse)?;
                Ok(GeneratorSpec::Diffusion(DiffusionSpec {
                    model: model.clone(),
                    steps: *steps,
                    guidance: *guidance,
                    scheduler: *scheduler,
                    resolution: *resolution,
                }))
            }
            RawGenerator::Server {
                url,
                kind,
                model,
                steps,
                guidance,
                scheduler,
                resolution,
                workflow,
                inputs,
            } => {
                let settings_written = steps.is_some() || guidance.is_some() || scheduler.is_some();
                let urls = url.list();
                if urls.is_empty() {
                    return Err(refuse(
                        "url",
                        "the Server generator needs at least one URL".into(),
                        "no server",
                        "write `url: \"http://127.0.0.1:9090\"` or a list `url: [\"https://gpu-1:9090\", \"https://gpu-2:9090\"]`".into(),
                    ));
                }
                let mut endpoints = Vec::with_capacity(urls.len());
                for url in urls {
                    let endpoint = Endpoint::parse(url).map_err(|message| {
                        let located = self
                            .locator
                            .string_literals(url)
                            .into_iter()
                            .find(|r| r.start >= generator_at.start && r.end <= generator_at.end)
                            .unwrap_or(at("url"));
                        Invalid::from(
                            self.error(located, format!("server URL {message}"))
                                .label("not a server URL")
                                .help("write the server's base URL, e.g. `http://127.0.0.1:9090` or `https://gpu-1.studio.lan`"),
                        )
                    })?;
                    if !endpoints.contains(&endpoint) {
                        endpoints.push(endpoint);
                    }
                }
                let steps = steps.unwrap_or(SERVER_DEFAULT_STEPS);
                let guidance = guidance.unwrap_or(SERVER_DEFAULT_GUIDANCE);
                sampling_settings(steps, guidance, *resolution, &refuse)?;
                let scheduler = scheduler
                    .clone()
                    .unwrap_or_else(|| SERVER_DEFAULT_SCHEDULER.to_string());
                if scheduler.trim().is_empty()
                    || !scheduler
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
                {
                    return Err(refuse(
                        "scheduler",
                        format!("scheduler `{scheduler}` is not a scheduler name"),
                        "scheduler",
                        "use the server's name for it, e.g. `\"euler\"`, `\"ddim\"` or `\"dpmpp_2m_k\"` (InvokeAI)".into(),
                    ));
                }
                let model = model.clone().unwrap_or_default();
                let workflow = match kind {
                    ServerKind::InvokeAI => {
                        if model.trim().is_empty() {
                            return Err(refuse(
                                "model",
                                "an InvokeAI Server generator needs a model".into(),
                                "no model",
                                "write `model: \"name\"` with the model's name (or key) in the server's model manager".into(),
                            ));
                        }
                        for (field, written) in [
                            ("workflow", workflow.is_some()),
                            ("inputs", inputs.is_some()),
                        ] {
                            if written {
                                return Err(refuse(
                                    field,
                                    format!("`{field}` is for ComfyUI servers"),
                                    "ComfyUI only",
                                    "InvokeAI servers take a model, steps, guidance and scheduler; add `kind: ComfyUI` for a ComfyUI workflow".into(),
                                ));
                            }
                        }
                        None
                    }
                    ServerKind::ComfyUI => Some(self.workflow(
                        workflow.as_deref(),
                        inputs.as_ref(),
                        !model.is_empty(),
                        settings_written,
                        &refuse,
                    )?),
                };
                Ok(GeneratorSpec::Server(Box::new(ServerSpec {
                    kind: *kind,
                    endpoints,
                    model,
                    steps,
                    guidance,
                    scheduler,
                    resolution: *resolution,
                    workflow,
                })))
            }
        }
    }

    /// A ComfyUI generator's workflow: an API-format JSON file whose named nodes have the
    /// inputs pixelgen sets.
    fn workflow(
        &self,
        workflow: Option<&str>,
        inputs: Option<&RawWorkflowInputs>,
        model_written: bool,
        settings_written: bool,
        refuse: &dyn Fn(&str, String, &str, String) -> Invalid,
    ) -> Result<WorkflowSpec, Invalid> {
        let (Some(path), Some(inputs)) = (workflow, inputs) else {
            return Err(refuse(
                if workflow.is_none() { "kind" } else { "workflow" },
                "a ComfyUI Server generator needs a workflow and its input nodes".into(),
                "ComfyUI",
                "export the workflow with ComfyUI's \"Save (API Format)\" and write `workflow: \"workflows/sprite.json\", inputs: (prompt: \"6\", negative_prompt: \"7\", seed: \"3\", size: \"5\")` (node ids from that file)".into(),
            ));
        };
        let resolved = self.dir.join(path);
        self.input_files.borrow_mut().push(resolved.clone());
        let text = crate::input_file::read_to_string(&resolved, MAX_WORKFLOW_BYTES, "workflow")
            .map_err(|e| {
                refuse(
                    "workflow",
                    format!("workflow `{path}`: {e}"),
                    "unreadable",
                    "the path is relative to the folder of sprites.ron".into(),
                )
            })?;
        let nodes: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(nodes))
                if nodes.values().all(|n| {
                    n.get("class_type").is_some() && n.get("inputs").is_some_and(|i| i.is_object())
                }) =>
            {
                nodes
            }
            _ => {
                return Err(refuse(
                    "workflow",
                    format!("workflow `{path}` is not a ComfyUI workflow in API format"),
                    "not API format",
                    "in ComfyUI, use \"Save (API Format)\" (an object of node ids, each with `class_type` and `inputs`), not the UI's \"Save\"".into(),
                ));
            }
        };
        let input = |role: &str,
                     written: &str,
                     default_input: &str|
         -> Result<(String, String), Invalid> {
            let (node, name) = match written.split_once('.') {
                Some((node, name)) => (node, name),
                None => (written, default_input),
            };
            match nodes.get(node) {
                Some(n) if n["inputs"].get(name).is_some() => {
                    Ok((node.to_string(), name.to_string()))
                }
                Some(n) => Err(refuse(
                    "inputs",
                    format!(
                        "workflow `{path}`: node {node} ({}) has no input `{name}` for the {role}",
                        n["class_type"].as_str().unwrap_or("?")
                    ),
                    "no such input",
                    format!(
                        "its inputs: {}; write `{role}: \"{node}.<input>\"`",
                        n["inputs"]
                            .as_object()
                            .map(|i| i.keys().cloned().collect::<Vec<_>>().join(", "))
                            .unwrap_or_default()
                    ),
                )),
                None => Err(refuse(
                    "inputs",
                    format!("workflow `{path}` has no node `{node}` for the {role}"),
                    "no such node",
                    format!(
                        "its nodes: {}",
                        nodes
                            .iter()
                            .map(|(id, n)| format!(
                                "{id} ({})",
                                n["class_type"].as_str().unwrap_or("?")
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        };
        let node_with = |role: &str, node: &str, names: &[&str]| -> Result<String, Invalid> {
            for name in names {
                input(role, &format!("{node}.{name}"), name)?;
            }
            Ok(node.to_string())
        };
        if model_written && inputs.model.is_none() {
            return Err(refuse("model", "`model` needs the workflow node that takes it".into(), "no model input", "add `model: \"4\"` (the checkpoint loader's id) to `inputs`, or leave `model` out to use the workflow's own".into()));
        }
        if settings_written && inputs.sampler.is_none() {
            return Err(refuse("inputs", "steps, guidance and scheduler need the workflow's sampler node".into(), "no sampler input", "add `sampler: \"3\"` (the KSampler's id) to `inputs`, or leave the settings out to use the workflow's own".into()));
        }
        Ok(WorkflowSpec {
            path: path.to_string(),
            resolved,
            inputs: WorkflowInputs {
                prompt: input("prompt", &inputs.prompt, "text")?,
                negative_prompt: inputs
                    .negative_prompt
                    .as_deref()
                    .map(|n| input("negative prompt", n, "text"))
                    .transpose()?,
                seed: input("seed", &inputs.seed, "seed")?,
                size: inputs
                    .size
                    .as_deref()
                    .map(|n| node_with("size", n, &["width", "height"]))
                    .transpose()?,
                model: inputs
                    .model
                    .as_deref()
                    .filter(|_| model_written)
                    .map(|n| input("model", n, "ckpt_name"))
                    .transpose()?,
                sampler: inputs
                    .sampler
                    .as_deref()
                    .filter(|_| settings_written)
                    .map(|n| node_with("sampler", n, &["steps", "cfg", "sampler_name"]))
                    .transpose()?,
            },
        })
    }

    /// A Diffusion model's name: not empty, a folder, file or repo id, never a pickle.
    fn diffusion_model(
        &self,
        model: &str,
        refuse: &dyn Fn(&str, String, &str, String) -> Invalid,
    ) -> Result<(), Invalid> {
        if model.trim().is_empty() {
            return Err(refuse(
                "model",
                "the Diffusion generator needs a model".into(),
                "empty model",
                "set `model: \"stabilityai/sd-turbo\"` or a local folder".into(),
            ));
        }
        // A local model is a diffusers folder or a single .safetensors file; anything else
        // there (a FIFO, a device) is refused before anything tries to read it.
        let local = self.dir.join(model);
        match crate::input_file::non_file_kind(&local) {
            Some(FileKind::Directory) | None => {}
            Some(kind) => {
                return Err(refuse(
                    "model",
                    format!("model `{model}` is {kind}"),
                    "not a model",
                    "name a diffusers folder, a .safetensors checkpoint or a Hugging Face id"
                        .into(),
                ));
            }
        }
        if let Err(error @ InputFileError::TooLarge { .. }) =
            crate::input_file::check(&local, MAX_MODEL_FILE_BYTES, "model file")
        {
            return Err(refuse(
                "model",
                format!("model `{model}`: {error}"),
                "too large",
                "name the model's .safetensors checkpoint".into(),
            ));
        }
        if pixelgen_diffusion::files::is_pickle(Path::new(model)) {
            return Err(refuse(
                "model",
                format!("model `{model}` is a pickle checkpoint, which pixelgen refuses: loading one can run arbitrary code"),
                "pickle",
                "use the model's .safetensors file or a diffusers folder; convert once in Python with `safetensors.torch.save_file(torch.load(path, weights_only=True), \"model.safetensors\")`".into(),
            ));
        }
        Ok(())
    }
}

/// Largest ComfyUI workflow file read.
const MAX_WORKFLOW_BYTES: u64 = 8 << 20;

/// Steps, guidance and draw resolution, shared by the Diffusion and Server generators.
fn sampling_settings(
    steps: u32,
    guidance: f32,
    resolution: Option<(u32, u32)>,
    refuse: &dyn Fn(&str, String, &str, String) -> Invalid,
) -> Result<(), Invalid> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(refuse(
            "steps",
            format!("{steps} diffusion steps is out of range"),
            "steps",
            format!("use 1 to {MAX_STEPS} steps (1–4 for Turbo models, 20–50 for others)"),
        ));
    }
    if !guidance.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&guidance) {
        return Err(refuse(
            "guidance",
            format!("guidance {guidance} is out of range"),
            "guidance",
            format!(
                "use a guidance scale from 0 to {MAX_GUIDANCE} (0 or 1 for Turbo models, 5–9 for others)"
            ),
        ));
    }
    if let Some((width, height)) = resolution {
        let drawable = |side: u32| side.is_multiple_of(8) && (8..=MAX_RESOLUTION).contains(&side);
        if !drawable(width) || !drawable(height) {
            return Err(refuse(
                "resolution",
                format!("resolution {width}×{height} cannot be drawn"),
                "not a multiple of 8 in range",
                format!(
                    "each side is a multiple of 8 from 8 to {MAX_RESOLUTION}, as diffusers requires (the latents are 1/8 of the image); e.g. `resolution: (512, 512)`"
                ),
            ));
        }
    }
    Ok(())
}
