//! A `Server(...)` generator's settings: which API, which servers, and how frames are
//! drawn there.

use std::path::PathBuf;

use serde::Deserialize;

pub use super::endpoint::{Endpoint, Scheme};

/// Which API a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize)]
pub enum ServerKind {
    /// InvokeAI's queue API (`/api/v1/queue/...`).
    #[default]
    InvokeAI,
    /// ComfyUI's `/prompt`, `/history` and `/view`, with the user's workflow.
    ComfyUI,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::InvokeAI => "invokeai",
            ServerKind::ComfyUI => "comfyui",
        }
    }
}

/// A `Server(...)` generator: where to send frames and how they are drawn there.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    pub kind: ServerKind,
    /// As written (one or more); `PIXELGEN_IMAGE_SERVERS` may replace them at run time.
    /// Not part of any key: the same model on another server draws the same art.
    pub endpoints: Vec<Endpoint>,
    /// InvokeAI: the model's name or key on the server. ComfyUI: the checkpoint name
    /// written into the workflow's model input (empty: the workflow's own).
    pub model: String,
    pub steps: u32,
    pub guidance: f32,
    /// The server's own scheduler name (InvokeAI: `euler`, `ddim`, `dpmpp_2m_k`, ...).
    pub scheduler: String,
    /// Resolution the server draws at; the model's default when absent.
    pub resolution: Option<(u32, u32)>,
    /// ComfyUI: the API-format workflow and where the inputs go.
    pub workflow: Option<WorkflowSpec>,
}

/// Default steps, guidance and scheduler of a Server generator (a typical non-Turbo model).
pub const SERVER_DEFAULT_STEPS: u32 = 20;
pub const SERVER_DEFAULT_GUIDANCE: f32 = 7.0;
pub const SERVER_DEFAULT_SCHEDULER: &str = "euler";

/// A ComfyUI workflow file (API format) and the nodes that take pixelgen's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSpec {
    /// As written in the manifest.
    pub path: String,
    /// Resolved against the manifest's folder.
    pub resolved: PathBuf,
    pub inputs: WorkflowInputs,
}

impl WorkflowInputs {
    /// The inputs as a ComfyUI sprite's key covers them: the text `Debug` gave before the
    /// init image, strength and mask inputs existed, those appended only when named, so
    /// the keys of workflows without them did not change.
    pub fn identity_text(&self) -> String {
        let mut text = format!(
            "WorkflowInputs {{ prompt: {:?}, negative_prompt: {:?}, seed: {:?}, size: {:?}, model: {:?}, sampler: {:?} }}",
            self.prompt, self.negative_prompt, self.seed, self.size, self.model, self.sampler
        );
        for (name, input) in [
            ("init_image", &self.init_image),
            ("strength", &self.strength),
            ("mask", &self.mask),
        ] {
            if let Some(input) = input {
                text.push_str(&format!(" {name}: {input:?}"));
            }
        }
        if !self.controlnets.is_empty() {
            text.push_str(&format!(" controlnets: {:?}", self.controlnets));
        }
        text
    }
}

/// `(node id, input name)` for each value pixelgen sets in a ComfyUI workflow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkflowInputs {
    pub prompt: (String, String),
    pub negative_prompt: Option<(String, String)>,
    pub seed: (String, String),
    /// The node whose `width` and `height` inputs take the draw size.
    pub size: Option<String>,
    pub model: Option<(String, String)>,
    /// The node whose `steps`, `cfg` and `sampler_name` take the manifest's settings.
    pub sampler: Option<String>,
    /// The input that takes an uploaded init image's name (a `LoadImage`'s `image`).
    pub init_image: Option<(String, String)>,
    /// The input that takes the init's strength (a `KSampler`'s `denoise`).
    pub strength: Option<(String, String)>,
    /// The input that takes an uploaded mask's name (a `LoadImageMask`'s `image`; white
    /// repaints, so its channel is `red`).
    pub mask: Option<(String, String)>,
    /// The inputs of each ControlNet, in the order of a sprite's `controlnet` list.
    pub controlnets: Vec<ControlNetInputs>,
}

/// `(node id, input name)` for each value of one ControlNet in a ComfyUI workflow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ControlNetInputs {
    /// Takes the uploaded control image's name (a `LoadImage`'s `image`).
    pub image: (String, String),
    /// Takes the scale (`ControlNetApplyAdvanced`'s `strength`).
    pub strength: Option<(String, String)>,
    /// Take `start` and `end` (its `start_percent` and `end_percent`).
    pub start: Option<(String, String)>,
    pub end: Option<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ComfyUI sprite's key covers its inputs as `Debug` printed them before the init
    /// image, strength and mask inputs existed: workflows without them keep their keys.
    #[test]
    fn inputs_without_the_new_ones_keep_their_identity_text() {
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        let mut inputs = WorkflowInputs {
            prompt: pair("6", "text"),
            negative_prompt: Some(pair("7", "text")),
            seed: pair("3", "seed"),
            size: Some("5".into()),
            model: None,
            sampler: Some("3".into()),
            init_image: None,
            strength: None,
            mask: None,
            controlnets: Vec::new(),
        };
        assert_eq!(
            inputs.identity_text(),
            r#"WorkflowInputs { prompt: ("6", "text"), negative_prompt: Some(("7", "text")), seed: ("3", "seed"), size: Some("5"), model: None, sampler: Some("3") }"#
        );
        let before = inputs.identity_text();
        inputs.mask = Some(pair("11", "image"));
        assert_ne!(inputs.identity_text(), before);
        let with_mask = inputs.identity_text();
        inputs.controlnets.push(ControlNetInputs {
            image: pair("12", "image"),
            strength: Some(pair("13", "strength")),
            start: None,
            end: None,
        });
        assert_ne!(inputs.identity_text(), with_mask);
    }
}
