//! CLIP's byte-level BPE tokenizer, built from the model's own `tokenizer/vocab.json` and
//! `merges.txt` with the `tokenizers` crate, arranged exactly as transformers' `CLIPTokenizer`
//! arranges it (NFC, whitespace runs to one space, lowercase; CLIP's word pattern; byte-level
//! BPE with `</w>` word ends), so the ids are the ones diffusers feeds its text encoders.

use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as Normalizers};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

const START: &str = "<|startoftext|>";
const END: &str = "<|endoftext|>";
/// CLIP's word pattern (transformers' `CLIPTokenizer.pat`).
const WORDS: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A CLIP tokenizer: text to a fixed-length row of ids with start, end and padding.
#[derive(Debug)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    start: u32,
    end: u32,
    pad: u32,
    max_length: usize,
}

impl ClipTokenizer {
    /// Loads the BPE vocabulary and merges (`vocab.json` + `merges.txt`, or the model of
    /// `tokenizer.json` as transformers 5 saves it alone) and the pad token and length from
    /// `special_tokens_map.json` / `tokenizer_config.json` in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, String> {
        let model = bpe_model(dir)?;
        let mut inner = Tokenizer::new(model);
        let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".to_string()), " ")
            .map_err(|e| e.to_string())?;
        inner
            .with_normalizer(Some(Normalizers::new(vec![
                NFC.into(),
                whitespace.into(),
                Lowercase.into(),
            ])))
            .map_err(|e| e.to_string())?;
        let words = Split::new(
            SplitPattern::Regex(WORDS.to_string()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| e.to_string())?;
        inner.with_pre_tokenizer(Some(PreTokenizers::new(vec![
            words.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        let settings = Settings::read(dir);
        // transformers adds every special token, the pad token included, as a token that
        // is split out of the text before BPE: with SD2's pad `!`, "wow!!" is "wow" then
        // three separate `!` tokens. Doing the same keeps the ids identical.
        let pad = settings
            .pad_token
            .clone()
            .unwrap_or_else(|| END.to_string());
        inner
            .add_special_tokens([
                AddedToken::from(START, true),
                AddedToken::from(END, true),
                AddedToken::from(pad, true),
            ])
            .map_err(|e| e.to_string())?;

        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| format!("{}: the vocabulary has no `{token}` token", dir.display()))
        };
        Ok(Self {
            start: id(START)?,
            end: id(END)?,
            pad: id(settings.pad_token.as_deref().unwrap_or(END))?,
            max_length: settings.max_length.unwrap_or(77),
            inner,
        })
    }

    /// `[start] tokens… [end] [pad]…`, truncated and padded to the model's length (77).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let encoding = self.inner.encode(text, false).map_err(|e| e.to_string())?;
        let body = self.max_length.saturating_sub(2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.start);
        ids.extend(encoding.get_ids().iter().take(body));
        ids.push(self.end);
        ids.resize(self.max_length.max(ids.len()), self.pad);
        Ok(ids)
    }
}

/// CLIP's BPE from `vocab.json` + `merges.txt` when both are there (the files transformers
/// 4 writes), else from the `model` of `tokenizer.json` (what transformers 5 writes). The
/// normaliser and pre-tokeniser are CLIP's own either way (see [`ClipTokenizer::from_dir`]).
fn bpe_model(dir: &Path) -> Result<BPE, String> {
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    if vocab.is_file() && merges.is_file() {
        return BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .unk_token(END.to_string())
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".to_string())
            .build()
            .map_err(|e| format!("{}: {e}", dir.display()));
    }
    let json = dir.join("tokenizer.json");
    if !json.is_file() {
        return Err(format!(
            "{} has neither vocab.json + merges.txt nor tokenizer.json: the tokenizer is incomplete; copy the model's tokenizer folder again",
            dir.display()
        ));
    }
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let document: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let model = document.get("model").cloned().unwrap_or_default();
    if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
        return Err(format!(
            "{}: the tokenizer is not a BPE model, so it is not CLIP's",
            json.display()
        ));
    }
    // From text, not from the `Value`: the BPE's deserializer borrows its strings.
    let bpe: BPE =
        serde_json::from_str(&model.to_string()).map_err(|e| format!("{}: {e}", json.display()))?;
    // CLIP's BPE marks word ends and has no continuation prefix; another setting would
    // silently give other ids.
    if bpe.end_of_word_suffix.as_deref() != Some("</w>") || bpe.unk_token.as_deref() != Some(END) {
        return Err(format!(
            "{}: the BPE model is not CLIP's (it needs end_of_word_suffix `</w>` and unk_token `{END}`)",
            json.display()
        ));
    }
    Ok(bpe)
}

/// The few tokenizer settings that change ids.
#[derive(Default)]
struct Settings {
    pad_token: Option<String>,
    max_length: Option<usize>,
}

impl Settings {
    fn read(dir: &Path) -> Self {
        let json = |name: &str| -> Option<serde_json::Value> {
            serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
        };
        let token = |value: &serde_json::Value| -> Option<String> {
            match value {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let config = json("tokenizer_config.json");
        let special = json("special_tokens_map.json");
        let pad_token = special
            .as_ref()
            .and_then(|s| s.get("pad_token"))
            .and_then(token)
            .or_else(|| config.as_ref()?.get("pad_token").and_then(token));
        let max_length = config
            .as_ref()
            .and_then(|c| c.get("model_max_length")?.as_u64())
            // Tokenizers without a limit store a huge sentinel; CLIP's is 77.
            .filter(|&n| n <= 4096)
            .map(|n| n as usize);
        Settings {
            pad_token,
            max_length,
        }
    }
}
