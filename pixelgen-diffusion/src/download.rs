//! Downloading a diffusers model from the Hugging Face hub into the standard hub cache
//! (so other tools share it), with hf-hub. Only online builds that must generate call this,
//! and never when `HF_HUB_OFFLINE` is set; offline builds and CI never touch the network.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;

use super::DiffusionError;
use crate::files::{HubSettings, hub_snapshot};

/// The files of a diffusers repository that pixelgen loads: configs, tokenizers and one
/// safetensors set per component (full precision if the repo has it, else the fp16
/// variant). Pickle weights, ONNX, Flax and other formats are never fetched.
pub fn files_to_download<'a>(listing: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let listing: Vec<&str> = listing.into_iter().collect();
    let mut files: Vec<String> = Vec::new();
    let tokenizer_files = [
        "vocab.json",
        "merges.txt",
        // transformers 5 saves tokenizers as this file alone.
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ];
    for name in &listing {
        let (folder, file) = name.rsplit_once('/').unwrap_or(("", name));
        let wanted = *name == "model_index.json"
            || (folder.matches('/').count() == 0 && !folder.is_empty() && file == "config.json")
            || *name == "scheduler/scheduler_config.json"
            || (folder.starts_with("tokenizer") && tokenizer_files.contains(&file));
        if wanted {
            files.push(name.to_string());
        }
    }
    for component in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        let candidates = |variant: &str| -> Vec<String> {
            let single: Vec<String> = ["diffusion_pytorch_model", "model"]
                .iter()
                .map(|stem| format!("{component}/{stem}{variant}.safetensors"))
                .filter(|f| listing.contains(&f.as_str()))
                .collect();
            if !single.is_empty() {
                return single[..1].to_vec();
            }
            // Sharded: the index and every shard it names share the stem. diffusers names
            // a variant's index `stem.safetensors.index.fp16.json` and its shards
            // `stem.fp16-00001-of-00002.safetensors`; other tools put `.fp16` elsewhere.
            for stem in ["diffusion_pytorch_model", "model"] {
                let index = [
                    format!("{component}/{stem}.safetensors.index{variant}.json"),
                    format!("{component}/{stem}{variant}.safetensors.index.json"),
                ]
                .into_iter()
                .find(|f| listing.contains(&f.as_str()));
                let Some(index) = index else {
                    continue;
                };
                let prefix = format!("{component}/{stem}");
                let mut shards: Vec<String> = listing
                    .iter()
                    .filter(|f| {
                        f.starts_with(&prefix)
                            && f.contains("-of-")
                            && f.ends_with(".safetensors")
                            && f.contains(".fp16") != variant.is_empty()
                    })
                    .map(|f| f.to_string())
                    .collect();
                shards.insert(0, index);
                return shards;
            }
            Vec::new()
        };
        let mut chosen = candidates("");
        if chosen.is_empty() {
            chosen = candidates(".fp16");
        }
        files.extend(chosen);
    }
    files.sort();
    files.dedup();
    files
}

/// Downloads `repo` (`owner/name`) into the hub cache and returns its snapshot folder.
pub fn download_model(repo: &str, hub: &HubSettings) -> Result<PathBuf, DiffusionError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        DiffusionError::Download(format!(
            "cannot download `{repo}` from the Hugging Face hub ({what}: {e}); download it yourself with `huggingface-cli download {repo}`, or set `model` to a local folder"
        ))
    };
    if !hub.downloads_allowed {
        return Err(DiffusionError::Download(format!(
            "`{repo}` is not in the Hugging Face cache and HF_HUB_OFFLINE forbids downloading it"
        )));
    }
    let cache = hub
        .cache_dir
        .clone()
        .ok_or_else(|| failed("cache folder", &"no HOME, HF_HOME or HF_HUB_CACHE"))?;
    let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(cache.clone()));
    if let Some(endpoint) = &hub.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if let Some(token) = &hub.token {
        builder = builder.with_token(Some(token.expose().to_string()));
    }
    let hub_failed = |what: &str| {
        let what = what.to_string();
        move |source| DiffusionError::Hub {
            repo: repo.to_string(),
            what,
            source: Box::new(source),
        }
    };
    let api = builder
        .with_progress(false)
        .build()
        .map_err(hub_failed("client"))?;
    let remote = api.model(repo.to_string());
    let info = remote.info().map_err(hub_failed("listing"))?;
    let files = files_to_download(info.siblings.iter().map(|s| s.rfilename.as_str()));
    if !files.iter().any(|f| f == "model_index.json") {
        return Err(DiffusionError::Download(format!(
            "`{repo}` is not a diffusers model (it has no model_index.json); for a single-file checkpoint, download the .safetensors file and give its path as `model`"
        )));
    }
    for file in &files {
        remote.get(file).map_err(hub_failed(file))?;
    }
    hub_snapshot(&cache, repo).ok_or_else(|| {
        failed(
            "cache",
            &"the snapshot folder is missing after the download",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_configs_tokenizers_and_one_safetensors_set_per_component() {
        let listing = [
            ".gitattributes",
            "README.md",
            "model_index.json",
            "feature_extractor/preprocessor_config.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "text_encoder/model.fp16.safetensors",
            "text_encoder/pytorch_model.bin",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_flax_model.msgpack",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "sd_turbo.safetensors",
            "onnx/unet/model.onnx",
        ];
        assert_eq!(
            files_to_download(listing),
            [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer_config.json",
                "tokenizer/vocab.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ]
        );
    }

    #[test]
    fn transformers_5_tokenizers_and_sharded_fp16_variants_are_fetched() {
        let listing = [
            "model_index.json",
            "tokenizer/tokenizer.json",
            "tokenizer/tokenizer_config.json",
            "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
            "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
            "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
            "unet/diffusion_pytorch_model-00001-of-00002.bin",
        ];
        assert_eq!(
            files_to_download(listing),
            [
                "model_index.json",
                "tokenizer/tokenizer.json",
                "tokenizer/tokenizer_config.json",
                "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
                "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
            ]
        );
    }

    #[test]
    fn sharded_weights_fetch_the_index_and_every_shard() {
        let listing = [
            "model_index.json",
            "unet/diffusion_pytorch_model.safetensors.index.json",
            "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
            "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
            "unet/diffusion_pytorch_model-00001-of-00002.fp16.safetensors",
        ];
        assert_eq!(
            files_to_download(listing),
            [
                "model_index.json",
                "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
                "unet/diffusion_pytorch_model.safetensors.index.json",
            ]
        );
    }
}
