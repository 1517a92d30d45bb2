//! The Server backend's own settings check: URLs it can reach, a scheduler name, a model
//! for InvokeAI, and for ComfyUI an API-format workflow whose named nodes take the inputs
//! pixelgen sets.

use serde::Deserialize;

use super::spec::{
    ControlNetInputs, Endpoint, SERVER_DEFAULT_GUIDANCE, SERVER_DEFAULT_SCHEDULER,
    SERVER_DEFAULT_STEPS, ServerKind, ServerSpec, WorkflowInputs, WorkflowSpec,
};
use crate::generate::settings::{Refusal, SettingsContext, check_sampling};

/// Largest ComfyUI workflow file read.
const MAX_WORKFLOW_BYTES: u64 = 8 << 20;

/// ComfyUI: the workflow's nodes that take each input (`"6"`, or `"6.text"` to name the
/// input), as the manifest writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename = "Inputs")]
pub struct WorkflowNodes {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    pub seed: String,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub sampler: Option<String>,
    /// A `LoadImage` node (or `node.input`) that takes a sprite's init image.
    #[serde(default)]
    pub init_image: Option<String>,
    /// The input that takes the init's strength (`node.input`; a `KSampler`'s `denoise`).
    #[serde(default)]
    pub strength: Option<String>,
    /// A `LoadImageMask` node (or `node.input`) that takes a sprite's mask.
    #[serde(default)]
    pub mask: Option<String>,
    /// The nodes of each ControlNet a sprite may use, in the order of its `controlnet`
    /// list.
    #[serde(default)]
    pub controlnets: Vec<ControlNetNodes>,
}

/// ComfyUI: the nodes that take one ControlNet's values, as the manifest writes them.
/// The workflow's own `ControlNetLoader` picks the model on the server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename = "ControlNet")]
pub struct ControlNetNodes {
    /// A `LoadImage` node (or `node.input`) that takes the uploaded control image.
    pub image: String,
    /// The input that takes the scale (`ControlNetApplyAdvanced`'s `strength`).
    #[serde(default)]
    pub strength: Option<String>,
    /// The inputs that take `start` and `end` (its `start_percent` and `end_percent`).
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
}

/// A `Server(...)` generator's settings as written.
pub struct ServerSettings<'a> {
    pub urls: Vec<&'a str>,
    pub kind: ServerKind,
    pub model: Option<&'a str>,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub scheduler: Option<&'a str>,
    pub resolution: Option<(u32, u32)>,
    pub workflow: Option<&'a str>,
    pub inputs: Option<&'a WorkflowNodes>,
}

impl ServerSpec {
    /// Checks `settings`; the spec a Server sprite draws with (defaults applied).
    pub fn check(
        settings: ServerSettings<'_>,
        context: &SettingsContext<'_>,
    ) -> Result<ServerSpec, Refusal> {
        let ServerSettings {
            urls,
            kind,
            model,
            steps,
            guidance,
            scheduler,
            resolution,
            workflow,
            inputs,
        } = settings;
        let settings_written = steps.is_some() || guidance.is_some() || scheduler.is_some();
        if urls.is_empty() {
            return Err(Refusal::new(
                "url",
                "the Server generator needs at least one URL",
                "no server",
                "write `url: \"http://127.0.0.1:9090\"` or a list `url: [\"https://gpu-1:9090\", \"https://gpu-2:9090\"]`",
            ));
        }
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in urls {
            let endpoint = Endpoint::parse(url).map_err(|message| {
                Refusal::new(
                    "url",
                    format!("server URL {message}"),
                    "not a server URL",
                    "write the server's base URL, e.g. `http://127.0.0.1:9090` or `https://gpu-1.studio.lan`",
                )
                .at_literal(url)
            })?;
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        let steps = steps.unwrap_or(SERVER_DEFAULT_STEPS);
        let guidance = guidance.unwrap_or(SERVER_DEFAULT_GUIDANCE);
        check_sampling(steps, guidance, resolution)?;
        let scheduler = scheduler.unwrap_or(SERVER_DEFAULT_SCHEDULER).to_string();
        if scheduler.trim().is_empty()
            || !scheduler
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
        {
            return Err(Refusal::new(
                "scheduler",
                format!("scheduler `{scheduler}` is not a scheduler name"),
                "scheduler",
                "use the server's name for it, e.g. `\"euler\"`, `\"ddim\"` or `\"dpmpp_2m_k\"` (InvokeAI)",
            ));
        }
        let model = model.unwrap_or_default().to_string();
        let workflow = match kind {
            ServerKind::InvokeAI => {
                if model.trim().is_empty() {
                    return Err(Refusal::new(
                        "model",
                        "an InvokeAI Server generator needs a model",
                        "no model",
                        "write `model: \"name\"` with the model's name (or key) in the server's model manager",
                    ));
                }
                for (field, written) in [
                    ("workflow", workflow.is_some()),
                    ("inputs", inputs.is_some()),
                ] {
                    if written {
                        return Err(Refusal::new(
                            field,
                            format!("`{field}` is for ComfyUI servers"),
                            "ComfyUI only",
                            "InvokeAI servers take a model, steps, guidance and scheduler; add `kind: ComfyUI` for a ComfyUI workflow",
                        ));
                    }
                }
                None
            }
            ServerKind::ComfyUI => Some(check_workflow(
                workflow,
                inputs,
                !model.is_empty(),
                settings_written,
                context,
            )?),
        };
        Ok(ServerSpec {
            kind,
            endpoints,
            model,
            steps,
            guidance,
            scheduler,
            resolution,
            workflow,
        })
    }
}

/// A ComfyUI generator's workflow: an API-format JSON file whose named nodes have the
/// inputs pixelgen sets.
fn check_workflow(
    workflow: Option<&str>,
    inputs: Option<&WorkflowNodes>,
    model_written: bool,
    settings_written: bool,
    context: &SettingsContext<'_>,
) -> Result<WorkflowSpec, Refusal> {
    let (Some(path), Some(inputs)) = (workflow, inputs) else {
        return Err(Refusal::new(
            if workflow.is_none() {
                "kind"
            } else {
                "workflow"
            },
            "a ComfyUI Server generator needs a workflow and its input nodes",
            "ComfyUI",
            "export the workflow with ComfyUI's \"Save (API Format)\" and write `workflow: \"workflows/sprite.json\", inputs: (prompt: \"6\", negative_prompt: \"7\", seed: \"3\", size: \"5\")` (node ids from that file)",
        ));
    };
    let (resolved, text) = context.read(path, MAX_WORKFLOW_BYTES, "workflow");
    let text = text.map_err(|e| {
        Refusal::new(
            "workflow",
            format!("workflow `{path}`: {e}"),
            "unreadable",
            "the path is relative to the folder of sprites.ron",
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
            return Err(Refusal::new(
                "workflow",
                format!("workflow `{path}` is not a ComfyUI workflow in API format"),
                "not API format",
                "in ComfyUI, use \"Save (API Format)\" (an object of node ids, each with `class_type` and `inputs`), not the UI's \"Save\"",
            ));
        }
    };
    let input = |role: &str, written: &str, default_input: &str| {
        node_input(&nodes, path, role, written, default_input)
    };
    let node_with = |role: &str, node: &str, names: &[&str]| -> Result<String, Refusal> {
        for name in names {
            input(role, &format!("{node}.{name}"), name)?;
        }
        Ok(node.to_string())
    };
    if model_written && inputs.model.is_none() {
        return Err(Refusal::new(
            "model",
            "`model` needs the workflow node that takes it",
            "no model input",
            "add `model: \"4\"` (the checkpoint loader's id) to `inputs`, or leave `model` out to use the workflow's own",
        ));
    }
    if settings_written && inputs.sampler.is_none() {
        return Err(Refusal::new(
            "inputs",
            "steps, guidance and scheduler need the workflow's sampler node",
            "no sampler input",
            "add `sampler: \"3\"` (the KSampler's id) to `inputs`, or leave the settings out to use the workflow's own",
        ));
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
            init_image: inputs
                .init_image
                .as_deref()
                .map(|n| input("init image", n, "image"))
                .transpose()?,
            strength: inputs
                .strength
                .as_deref()
                .map(|n| input("strength", n, "denoise"))
                .transpose()?,
            mask: inputs
                .mask
                .as_deref()
                .map(|n| input("mask", n, "image"))
                .transpose()?,
            controlnets: inputs
                .controlnets
                .iter()
                .map(|nodes| {
                    let optional = |written: &Option<String>, role: &str, default: &str| {
                        written
                            .as_deref()
                            .map(|n| input(role, n, default))
                            .transpose()
                    };
                    Ok(ControlNetInputs {
                        image: input("control image", &nodes.image, "image")?,
                        strength: optional(&nodes.strength, "ControlNet strength", "strength")?,
                        start: optional(&nodes.start, "ControlNet start", "start_percent")?,
                        end: optional(&nodes.end, "ControlNet end", "end_percent")?,
                    })
                })
                .collect::<Result<_, Refusal>>()?,
        },
    })
}

/// The `(node, input)` that `written` (`"6"` or `"6.text"`) names for `role`, checked
/// against the workflow's nodes.
fn node_input(
    nodes: &serde_json::Map<String, serde_json::Value>,
    path: &str,
    role: &str,
    written: &str,
    default_input: &str,
) -> Result<(String, String), Refusal> {
    let (node, name) = match written.split_once('.') {
        Some((node, name)) => (node, name),
        None => (written, default_input),
    };
    match nodes.get(node) {
        Some(n) if n["inputs"].get(name).is_some() => Ok((node.to_string(), name.to_string())),
        Some(n) => Err(Refusal::new(
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
        None => Err(Refusal::new(
            "inputs",
            format!("workflow `{path}` has no node `{node}` for the {role}"),
            "no such node",
            format!(
                "its nodes: {}",
                nodes
                    .iter()
                    .map(|(id, n)| format!("{id} ({})", n["class_type"].as_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
