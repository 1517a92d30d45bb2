//! InvokeAI's queue API (tested against InvokeAI 6.14): models are looked up in the model
//! manager, frames are enqueued as one batch per submission (one graph, the per-frame
//! values zipped), polled by queue item, and fetched from the image store.
//!
//! Invariants:
//! - A model's identity is the hash the server reports (`blake3:…`, the content of its
//!   files); a LoRA is found by the blake3 of the file pixelgen has, so a server's LoRA
//!   is used only when its bytes are the ones the key covers.
//! - Each queue item carries its frame's index in a string node (`pixelgen_frame`), and
//!   results are matched by it, not by the order the server returns items in.
//! - An image is accepted only when it decodes and has the size asked for; pixelgen
//!   deletes it from the server's gallery once fetched.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::http::{Client, HttpError, percent_encode};
use super::{DrawSettings, Endpoint, FrameRequest, ImageServer, Outcome};

mod conditioning;
use super::uploads::Uploads;
use conditioning::{INIT_NODE, MASK_NODE, control_node};

/// The largest seed InvokeAI's noise node takes.
pub const MAX_SEED: u64 = u32::MAX as u64;
const QUEUE: &str = "/api/v1/queue/default";
/// The graph node whose value is the frame's index.
const TAG_NODE: &str = "pixelgen_frame";

/// A model as the server's model manager describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub key: String,
    /// `blake3:…` (or whatever hashing the server is configured with).
    pub hash: String,
    pub name: String,
    /// `sd-1`, `sd-2`, `sdxl`, …
    pub base: String,
    /// `main`, `lora`, …
    pub kind: String,
    /// The model's default width and height, when its settings give them.
    pub default_size: Option<(u32, u32)>,
}

impl ModelInfo {
    fn from_json(value: &Value) -> Option<ModelInfo> {
        let text = |field: &str| value.get(field)?.as_str().map(str::to_string);
        let settings = value.get("default_settings");
        let side = |field: &str| {
            settings?
                .get(field)?
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
        };
        Some(ModelInfo {
            key: text("key")?,
            hash: text("hash").unwrap_or_default(),
            name: text("name").unwrap_or_default(),
            base: text("base").unwrap_or_default(),
            kind: text("type").unwrap_or_default(),
            default_size: side("width").zip(side("height")),
        })
    }

    /// The `ModelIdentifierField` graphs name models with.
    fn identifier(&self) -> Value {
        json!({"key": self.key, "hash": self.hash, "name": self.name, "base": self.base, "type": self.kind})
    }

    /// The size this model draws at when the manifest gives no resolution.
    pub fn draw_size(&self) -> (u32, u32) {
        self.default_size.unwrap_or(match self.base.as_str() {
            "sd-1" => (512, 512),
            "sd-2" => (768, 768),
            _ => (1024, 1024),
        })
    }
}

/// The main model `model` (a name, or a key) on the server.
pub fn find_model(client: &Client, model: &str) -> Result<ModelInfo, HttpError> {
    let listed = client.get_json(
        "/api/v2/models/",
        &[("model_name", model), ("model_type", "main")],
    )?;
    let mut found: Vec<ModelInfo> = models(&listed)
        .iter()
        .filter_map(ModelInfo::from_json)
        .collect();
    if found.is_empty() {
        // Perhaps a key.
        match client.get_json(&format!("/api/v2/models/i/{}", percent_encode(model)), &[]) {
            Ok(value) => found.extend(ModelInfo::from_json(&value).filter(|m| m.kind == "main")),
            Err(HttpError::Status { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => {
            // Installed, but not as a main model (InvokeAI's probe could not classify it)?
            let named = client.get_json("/api/v2/models/", &[("model_name", model)])?;
            if let Some(other) = models(&named)
                .iter()
                .filter_map(ModelInfo::from_json)
                .next()
            {
                return Err(client.unexpected(
                    "the model lookup",
                    format!(
                        "its model `{model}` is installed as type `{}`, base `{}`, not as a main model; set its type and base in the model manager (or `PATCH /api/v2/models/i/{}` with {{\"type\": \"main\", \"base\": \"sd-1\"}} and the right base)",
                        other.kind, other.base, other.key
                    ),
                ));
            }
            let all = client.get_json("/api/v2/models/", &[("model_type", "main")])?;
            let names: Vec<String> = models(&all)
                .iter()
                .filter_map(ModelInfo::from_json)
                .map(|m| format!("{} ({})", m.name, m.base))
                .collect();
            Err(client.unexpected(
                "the model lookup",
                format!(
                    "it has no main model named `{model}`; its main models: {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ))
        }
        _ => Err(client.unexpected(
            "the model lookup",
            format!(
                "it has {} main models named `{model}` ({}); name one by its key",
                found.len(),
                found
                    .iter()
                    .map(|m| format!("{} {}", m.key, m.base))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The ControlNet named `name` of base `base` on the server, if any. ControlNets are
/// found by name (InvokeAI's hash of a folder is its own), as ComfyUI's models are.
pub fn find_controlnet(
    client: &Client,
    name: &str,
    base: &str,
) -> Result<Option<ModelInfo>, HttpError> {
    let listed = client.get_json(
        "/api/v2/models/",
        &[("model_name", name), ("model_type", "controlnet")],
    )?;
    Ok(models(&listed)
        .iter()
        .filter_map(ModelInfo::from_json)
        .find(|m| m.name == name && m.base == base))
}

/// The LoRA on the server whose file has this blake3 hash (hex), if any.
pub fn find_lora(client: &Client, blake3_hex: &str) -> Result<Option<ModelInfo>, HttpError> {
    let listed = client.get_json("/api/v2/models/", &[("model_type", "lora")])?;
    let wanted = format!("blake3:{blake3_hex}");
    Ok(models(&listed)
        .iter()
        .filter_map(ModelInfo::from_json)
        .find(|m| m.hash == wanted))
}

fn models(listed: &Value) -> &[Value] {
    listed
        .get("models")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// One InvokeAI server, ready to draw with one model, its LoRAs and settings.
pub struct InvokeAi {
    client: Client,
    graph: Value,
    sdxl: bool,
    settings: DrawSettings,
    /// Queue items of this run not yet finished.
    outstanding: Vec<u64>,
    batches: Vec<String>,
    /// Items the whole queue had finished (everyone's) at the last `queue_length`, and
    /// that count when this run's items were last fetched: the (large) items are fetched
    /// only when it changed.
    finished_total: Option<u64>,
    fetched_at: Option<u64>,
    /// Images uploaded to this server for this group.
    uploaded: Uploads,
}

impl InvokeAi {
    /// Checks that the server can draw with `model` and `loras` (server-side identities)
    /// and builds the graph every submission uses.
    pub fn new(
        client: Client,
        model: &ModelInfo,
        loras: &[(ModelInfo, f32)],
        controlnets: &[ModelInfo],
        settings: DrawSettings,
    ) -> Result<InvokeAi, String> {
        let sdxl = match model.base.as_str() {
            "sd-1" | "sd-2" => false,
            "sdxl" => true,
            other => {
                return Err(format!(
                    "model `{}` on {} is of base `{other}`; pixelgen's InvokeAI graph draws sd-1, sd-2 and sdxl models",
                    model.name, client.endpoint
                ));
            }
        };
        Ok(InvokeAi {
            graph: graph(model, loras, controlnets, &settings, sdxl),
            client,
            sdxl,
            settings,
            outstanding: Vec::new(),
            batches: Vec::new(),
            finished_total: None,
            fetched_at: None,
            uploaded: Uploads::default(),
        })
    }
}

/// main model loader → LoRA loaders → prompts (positive, negative) → noise → denoise →
/// latents to image, and the frame tag. The per-frame values are filled in by the batch.
fn graph(
    model: &ModelInfo,
    loras: &[(ModelInfo, f32)],
    controlnets: &[ModelInfo],
    settings: &DrawSettings,
    sdxl: bool,
) -> Value {
    let (width, height) = (settings.width, settings.height);
    let mut nodes = serde_json::Map::new();
    let mut edges = Vec::new();
    let mut edge = |from: &str, field: &str, to: &str, to_field: &str| {
        edges.push(json!({"source": {"node_id": from, "field": field}, "destination": {"node_id": to, "field": to_field}}));
    };
    let (loader_type, lora_type) = if sdxl {
        ("sdxl_model_loader", "sdxl_lora_loader")
    } else {
        ("main_model_loader", "lora_loader")
    };
    nodes.insert(
        "loader".into(),
        json!({"id": "loader", "type": loader_type, "model": model.identifier()}),
    );
    // Each LoRA loader takes the previous one's UNet and text encoder(s).
    let mut from = "loader".to_string();
    for (index, (lora, weight)) in loras.iter().enumerate() {
        let id = format!("lora{index}");
        nodes.insert(
            id.clone(),
            json!({"id": id, "type": lora_type, "lora": lora.identifier(), "weight": weight}),
        );
        edge(&from, "unet", &id, "unet");
        edge(&from, "clip", &id, "clip");
        if sdxl {
            edge(&from, "clip2", &id, "clip2");
        }
        from = id;
    }
    for prompt in ["positive", "negative"] {
        if sdxl {
            nodes.insert(prompt.into(), json!({
                "id": prompt, "type": "sdxl_compel_prompt", "prompt": "", "style": "",
                "original_width": width, "original_height": height, "crop_top": 0, "crop_left": 0,
                "target_width": width, "target_height": height,
            }));
            edge(&from, "clip2", prompt, "clip2");
        } else {
            nodes.insert(
                prompt.into(),
                json!({"id": prompt, "type": "compel", "prompt": ""}),
            );
        }
        edge(&from, "clip", prompt, "clip");
    }
    // A tile: the UNet and VAE pad circularly on its axes (InvokeAI's `seamless` node).
    let (mut unet_from, mut vae_from) = (from.clone(), "loader".to_string());
    let conditioning = &settings.conditioning;
    if let Some(tiling) = conditioning.tiling {
        nodes.insert(
            "seamless".into(),
            json!({
                "id": "seamless", "type": "seamless",
                "seamless_x": tiling.wraps_x(), "seamless_y": tiling.wraps_y(),
            }),
        );
        edge(&unet_from, "unet", "seamless", "unet");
        edge(&vae_from, "vae", "seamless", "vae");
        (unet_from, vae_from) = ("seamless".to_string(), "seamless".to_string());
    }
    nodes.insert("noise".into(), json!({"id": "noise", "type": "noise", "seed": 0, "width": width, "height": height, "use_cpu": true}));
    // From an init image, the last `strength` of the schedule runs.
    let denoising_start = conditioning
        .init
        .as_ref()
        .map_or(0.0, |init| 1.0 - init.strength);
    nodes.insert("denoise".into(), json!({
        "id": "denoise", "type": "denoise_latents", "steps": settings.steps, "cfg_scale": settings.guidance,
        "scheduler": settings.scheduler, "denoising_start": denoising_start, "denoising_end": 1.0,
    }));
    // ControlNets, each with the frame's control image (the batch's data); several go to
    // the denoiser through a collect node.
    let guides: Vec<String> = controlnets
        .iter()
        .zip(&conditioning.controlnets)
        .enumerate()
        .map(|(index, (info, spec))| {
            let id = control_node(index);
            nodes.insert(id.clone(), json!({
                "id": id, "type": "controlnet", "control_model": info.identifier(),
                "control_weight": spec.scale, "begin_step_percent": spec.start,
                "end_step_percent": spec.end, "control_mode": "balanced", "resize_mode": "just_resize",
            }));
            id
        })
        .collect();
    match guides.as_slice() {
        [] => {}
        [one] => edge(one, "control", "denoise", "control"),
        several => {
            nodes.insert(
                "controls".into(),
                json!({"id": "controls", "type": "collect"}),
            );
            for id in several {
                edge(id, "control", "controls", "item");
            }
            edge("controls", "collection", "denoise", "control");
        }
    }
    if let Some(init) = &conditioning.init {
        // The images themselves come with each frame (the batch's data).
        nodes.insert(
            INIT_NODE.into(),
            json!({"id": INIT_NODE, "type": "i2l", "fp32": true}),
        );
        edge("loader", "vae", INIT_NODE, "vae");
        edge(INIT_NODE, "latents", "denoise", "latents");
        if init.mask.is_some() {
            nodes.insert(
                MASK_NODE.into(),
                json!({"id": MASK_NODE, "type": "create_denoise_mask", "fp32": true}),
            );
            edge("loader", "vae", MASK_NODE, "vae");
            edge(MASK_NODE, "denoise_mask", "denoise", "denoise_mask");
        }
    }
    nodes.insert(
        "l2i".into(),
        json!({"id": "l2i", "type": "l2i", "is_intermediate": false, "fp32": true}),
    );
    nodes.insert(
        TAG_NODE.into(),
        json!({"id": TAG_NODE, "type": "string", "value": ""}),
    );
    edge(&unet_from, "unet", "denoise", "unet");
    edge(
        "positive",
        "conditioning",
        "denoise",
        "positive_conditioning",
    );
    edge(
        "negative",
        "conditioning",
        "denoise",
        "negative_conditioning",
    );
    edge("noise", "noise", "denoise", "noise");
    edge("denoise", "latents", "l2i", "latents");
    edge(&vae_from, "vae", "l2i", "vae");
    json!({"id": "pixelgen", "nodes": nodes, "edges": edges})
}

impl ImageServer for InvokeAi {
    fn endpoint(&self) -> &Endpoint {
        &self.client.endpoint
    }

    fn queue_length(&mut self) -> Result<usize, HttpError> {
        let status = self.client.get_json(&format!("{QUEUE}/status"), &[])?;
        let count = |field: &str| status["queue"][field].as_u64().unwrap_or(0);
        self.finished_total = Some(count("completed") + count("failed") + count("canceled"));
        Ok((count("pending") + count("in_progress")) as usize)
    }

    fn submit(&mut self, frames: &[(usize, &FrameRequest)]) -> Result<(), HttpError> {
        let images = self.frame_images(frames)?;
        let column = |node: &str, field: &str, items: Vec<Value>| json!({"node_path": node, "field_name": field, "items": items});
        let prompts: Vec<Value> = frames.iter().map(|(_, f)| json!(f.prompt)).collect();
        let negatives: Vec<Value> = frames
            .iter()
            .map(|(_, f)| json!(f.negative_prompt))
            .collect();
        let mut data = vec![
            column(
                "noise",
                "seed",
                frames.iter().map(|(_, f)| json!(f.seed)).collect(),
            ),
            column("positive", "prompt", prompts.clone()),
            column("negative", "prompt", negatives.clone()),
            column(
                TAG_NODE,
                "value",
                frames.iter().map(|(i, _)| json!(i.to_string())).collect(),
            ),
        ];
        if self.sdxl {
            data.push(column("positive", "style", prompts));
            data.push(column("negative", "style", negatives));
        }
        // Each frame's images: in the batch's data, and the first frame's in the graph
        // (whose nodes must be complete before the data is applied).
        let mut graph = self.graph.clone();
        for (node, field, names) in images {
            graph["nodes"][&node][field] = json!({"image_name": names[0]});
            let items = names
                .iter()
                .map(|name| json!({"image_name": name}))
                .collect();
            data.push(column(&node, field, items));
        }
        let body = json!({
            "batch": {"graph": graph, "runs": 1, "origin": "pixelgen", "data": [data]},
            "prepend": false,
        });
        let answer = self
            .client
            .send_json("POST", &format!("{QUEUE}/enqueue_batch"), &body)?;
        let ids: Vec<u64> = answer["item_ids"]
            .as_array()
            .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        if ids.len() != frames.len() {
            return Err(self.client.unexpected(
                "enqueue_batch",
                format!("{} queue items for {} frames", ids.len(), frames.len()),
            ));
        }
        let Some(batch) = answer["batch"]["batch_id"].as_str() else {
            return Err(self.client.unexpected("enqueue_batch", "no batch id"));
        };
        self.batches.push(batch.to_string());
        self.outstanding.extend(ids);
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<(usize, Outcome)>, HttpError> {
        // Polled often while the server computes: nothing but the queue's (small) status
        // until its count of finished items changes (a full item carries its whole session; serving
        // them several times a second slowed InvokeAI's own work by about a tenth here).
        if self.outstanding.is_empty()
            || (self.fetched_at.is_some() && self.fetched_at == self.finished_total)
        {
            return Ok(Vec::new());
        }
        self.fetched_at = self.finished_total;
        let to_fetch = self.outstanding.clone();
        let items = self.client.send_json(
            "POST",
            &format!("{QUEUE}/items_by_ids"),
            &json!({"item_ids": to_fetch}),
        )?;
        let items = items
            .as_array()
            .ok_or_else(|| self.client.unexpected("items_by_ids", "not a list"))?;
        let mut finished = Vec::new();
        let mut seen: HashSet<u64> = HashSet::new();
        for item in items {
            let Some(id) = item["item_id"].as_u64() else {
                continue;
            };
            seen.insert(id);
            let status = item["status"].as_str().unwrap_or("");
            if !matches!(status, "completed" | "failed" | "canceled") {
                continue;
            }
            let frame = item["field_values"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["node_path"] == TAG_NODE)
                .and_then(|v| v["value"].as_str()?.parse::<usize>().ok());
            self.outstanding.retain(|&o| o != id);
            let Some(frame) = frame else {
                return Err(self
                    .client
                    .unexpected("a queue item", format!("item {id} has no frame tag")));
            };
            let outcome = match status {
                "completed" => self.fetch(item),
                "failed" => Outcome::Failed(format!(
                    "{} failed it: {}: {}",
                    self.client.endpoint,
                    item["error_type"].as_str().unwrap_or("error"),
                    item["error_message"]
                        .as_str()
                        .unwrap_or("(no message)")
                        .trim()
                )),
                _ => Outcome::Failed(format!(
                    "{} cancelled it (queue item {id})",
                    self.client.endpoint
                )),
            };
            finished.push((frame, outcome));
        }
        // Items the server no longer knows (deleted by someone) cannot finish.
        let lost: Vec<u64> = to_fetch
            .into_iter()
            .filter(|id| !seen.contains(id))
            .collect();
        if !lost.is_empty() {
            return Err(self.client.unexpected(
                "items_by_ids",
                format!("queue items {lost:?} are gone from the queue"),
            ));
        }
        Ok(finished)
    }

    fn cancel(&mut self) {
        if self.batches.is_empty() {
            return;
        }
        let _ = self.client.send_json(
            "PUT",
            &format!("{QUEUE}/cancel_by_batch_ids"),
            &json!({"batch_ids": self.batches}),
        );
        self.outstanding.clear();
    }
}

impl InvokeAi {
    /// The finished item's image, checked; deleted from the server's gallery after.
    fn fetch(&self, item: &Value) -> Outcome {
        let name = item["session"]["results"]
            .as_object()
            .into_iter()
            .flat_map(|results| results.values())
            .find(|r| r["type"] == "image_output")
            .and_then(|r| r["image"]["image_name"].as_str());
        let Some(name) = name else {
            return Outcome::Unusable(format!(
                "{} finished queue item {} without an image",
                self.client.endpoint, item["item_id"]
            ));
        };
        let path = format!("/api/v1/images/i/{}", percent_encode(name));
        let bytes = match self.client.get_bytes(&format!("{path}/full")) {
            Ok(bytes) => bytes,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let _ = self.client.delete(&path);
        decode_checked(&bytes, &self.settings, &self.client.endpoint)
    }
}

/// An image the server sent, as RGBA, when it decodes and has the size asked for.
pub fn decode_checked(bytes: &[u8], settings: &DrawSettings, endpoint: &Endpoint) -> Outcome {
    match image::load_from_memory(bytes) {
        Ok(image) if (image.width(), image.height()) == (settings.width, settings.height) => {
            Outcome::Image(image.to_rgba8())
        }
        Ok(image) => Outcome::Unusable(format!(
            "{endpoint} sent a {}×{} image for a {}×{} request",
            image.width(),
            image.height(),
            settings.width,
            settings.height
        )),
        Err(error) => Outcome::Unusable(format!(
            "{endpoint} sent something that is not an image ({} bytes: {error})",
            bytes.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Conditioning;

    fn settings(width: u32, height: u32) -> DrawSettings {
        DrawSettings {
            steps: 4,
            guidance: 5.0,
            scheduler: "ddim".into(),
            width,
            height,
            conditioning: Conditioning::default(),
        }
    }

    fn model(base: &str) -> ModelInfo {
        ModelInfo {
            key: "k".into(),
            hash: "blake3:00".into(),
            name: "m".into(),
            base: base.into(),
            kind: "main".into(),
            default_size: None,
        }
    }

    #[test]
    fn the_graph_chains_loras_between_the_loader_and_the_prompts() {
        let settings = settings(64, 48);
        let lora = ModelInfo {
            kind: "lora".into(),
            ..model("sd-1")
        };
        let g = graph(
            &model("sd-1"),
            &[(lora.clone(), 0.8), (lora, 0.5)],
            &[],
            &settings,
            false,
        );
        let edges = g["edges"].as_array().unwrap();
        let has = |from: &str, field: &str, to: &str| {
            edges.iter().any(|e| {
                e["source"]["node_id"] == from
                    && e["source"]["field"] == field
                    && e["destination"]["node_id"] == to
            })
        };
        assert!(
            has("loader", "unet", "lora0")
                && has("lora0", "unet", "lora1")
                && has("lora1", "unet", "denoise")
        );
        assert!(has("lora1", "clip", "positive") && has("lora1", "clip", "negative"));
        assert!(has("loader", "vae", "l2i"));
        assert_eq!(g["nodes"]["lora1"]["weight"], 0.5);
        assert_eq!(
            (
                g["nodes"]["noise"]["width"].as_u64(),
                g["nodes"]["noise"]["height"].as_u64()
            ),
            (Some(64), Some(48))
        );
        let sdxl = graph(&model("sdxl"), &[], &[], &settings, true);
        assert_eq!(sdxl["nodes"]["loader"]["type"], "sdxl_model_loader");
        assert_eq!(sdxl["nodes"]["positive"]["type"], "sdxl_compel_prompt");
    }

    #[test]
    fn unsupported_bases_are_refused_by_name() {
        let client = Client::new(
            Endpoint::parse("http://127.0.0.1:1").unwrap(),
            None,
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(1),
        );
        let settings = settings(64, 64);
        let error = InvokeAi::new(client, &model("flux"), &[], &[], settings)
            .err()
            .unwrap();
        assert!(error.contains("base `flux`"), "{error}");
    }

    #[test]
    fn images_of_the_wrong_size_or_not_images_are_refused() {
        let endpoint = Endpoint::parse("http://127.0.0.1:1").unwrap();
        let settings = settings(64, 64);
        let mut png = Vec::new();
        image::RgbImage::new(32, 32)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(
            matches!(decode_checked(&png, &settings, &endpoint), Outcome::Unusable(m) if m.contains("32×32 image for a 64×64"))
        );
        assert!(
            matches!(decode_checked(b"<html>502</html>", &settings, &endpoint), Outcome::Unusable(m) if m.contains("not an image"))
        );
        let mut ok = Vec::new();
        image::RgbImage::new(64, 64)
            .write_to(&mut std::io::Cursor::new(&mut ok), image::ImageFormat::Png)
            .unwrap();
        assert!(
            matches!(decode_checked(&ok, &settings, &endpoint), Outcome::Image(i) if i.dimensions() == (64, 64))
        );
    }
}
