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
}
