//! The warm server's wire format: one request per connection, answered by a stream of
//! messages.
//!
//! A frame is a little-endian `u32` length and that many bytes of JSON (the header),
//! then a little-endian `u32` length and that many bytes of binary payload (often none).
//! Images travel as raw RGB8 rows in the payload, their size in the header.
//!
//! Invariants:
//! - Every request carries [`Versions`]; a server answers a request whose versions differ
//!   from its own only with an error, so a client never gets pixels from other generation
//!   code than its own.
//! - Lengths are bounded ([`MAX_HEADER`], [`MAX_PAYLOAD`]) and checked before anything is
//!   allocated, so a malformed frame is an error, never a huge allocation or a panic.
//! - Floats that decide pixels (guidance, LoRA weights) travel as their bits, so JSON
//!   number formatting cannot move them.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::generate::{Conditioning, DeviceRequest};
use crate::timings::Timings;

/// Bumped when the messages below change shape or meaning.
pub const PROTOCOL_VERSION: u32 = 2;

/// The largest JSON header a peer may send (a request lists prompts; 1 MiB is thousands).
pub const MAX_HEADER: usize = 1 << 20;

/// The largest payload: an RGB8 image of 4096×4096.
pub const MAX_PAYLOAD: usize = 4096 * 4096 * 3;

/// What decides whether a server may serve a client: the wire protocol, pixelgen-build's
/// version and the Diffusion backend's version (`DIFFUSION_VERSION`, bumped whenever the
/// backend's pixels change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub protocol: u32,
    pub build: String,
    pub diffusion: String,
}

impl Versions {
    /// This build's versions.
    pub fn ours() -> Versions {
        Versions {
            protocol: PROTOCOL_VERSION,
            build: env!("CARGO_PKG_VERSION").to_string(),
            diffusion: crate::generate::diffusion::DIFFUSION_VERSION.to_string(),
        }
    }

    /// Why a server with these versions must not serve a client with `client`'s.
    pub fn refuse(&self, client: &Versions) -> Option<String> {
        (self != client).then(|| {
            format!(
                "this server runs pixelgen-build {} ({}, protocol {}) but the client is pixelgen-build {} ({}, protocol {}), so their pixels could differ: restart `cargo pixelgen serve` with the pixelgen that builds this game",
                self.build,
                self.diffusion,
                self.protocol,
                client.build,
                client.diffusion,
                client.protocol
            )
        })
    }
}

/// Every request's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestHeader {
    pub versions: Versions,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The server's state; with `device`, also the batch size it would use for it.
    Status { device: Option<DeviceRequest> },
    /// Draw `jobs` with one model.
    Generate(Box<GenerateRequest>),
}

/// Jobs that share one model, LoRAs and sampler settings: what one in-process `Diffusion`
/// backend would draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub model: ModelRef,
    pub loras: Vec<LoraRef>,
    pub device: DeviceRequest,
    /// The sprite's resolution; `None` is the model's training size.
    pub resolution: Option<(u32, u32)>,
    pub steps: u32,
    /// `f32::to_bits` of the guidance scale.
    pub guidance_bits: u32,
    /// `ddim`, `euler` or `euler-a` (`Scheduler::name`).
    pub scheduler: String,
    /// The batch-wide conditioning (strength, tiling, ControlNets), paths absolute.
    #[serde(default)]
    pub conditioning: Conditioning,
    pub jobs: Vec<JobRef>,
}

/// A model by absolute path, with the content hash the client's keys were made with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    pub path: PathBuf,
    /// A single `.safetensors` checkpoint rather than a diffusers folder.
    pub single_file: bool,
    pub hash: String,
}

/// A LoRA by absolute path, with its weight (`f32::to_bits`) and content hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoraRef {
    pub path: PathBuf,
    pub weight_bits: u32,
    pub hash: String,
}

/// One image: prompts and the frame's seed (the sprite's seed plus the frame index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRef {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    /// The frame's own images (init image, mask, control images), paths absolute.
    #[serde(default)]
    pub conditioning: Conditioning,
}

/// What a server sends back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Job `index`'s image, sent as soon as its batch is drawn; the payload is
    /// `width × height` RGB8 pixels, row by row.
    Image {
        index: usize,
        width: u32,
        height: u32,
    },
    /// Every image was sent. `timings` are the server's stages for this request (model
    /// load when it loaded one, text encoding, UNet steps, VAE decode), for the client to
    /// merge into its own.
    Done {
        timings: Timings,
    },
    /// The request failed; nothing more follows. The server has let go of the device.
    Error {
        message: String,
    },
    Status(StatusReply),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub versions: Versions,
    pub pid: u32,
    /// Models loaded since the server started (a warm request loads none).
    pub loads: u64,
    /// ControlNets loaded since the server started (each is kept with the model it was
    /// loaded for, and read again when its folder's files change).
    #[serde(default)]
    pub controlnet_loads: u64,
    /// Generate requests served.
    pub requests: u64,
    /// The models held now, least recently used first.
    pub models: Vec<String>,
    /// The batch size for the asked-for device (what an in-process backend would use).
    pub batch: Option<usize>,
    /// The stages of the last generate request served (as in `Done`).
    pub last_timings: Timings,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("a frame's {what} is {len} bytes, more than the {max} allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("a frame's header is not valid: {0}")]
    Header(#[source] serde_json::Error),
}

/// Writes one frame.
pub fn write_frame(to: &mut impl Write, header: &impl Serialize, payload: &[u8]) -> io::Result<()> {
    let header = serde_json::to_vec(header).map_err(io::Error::other)?;
    if header.len() > MAX_HEADER || payload.len() > MAX_PAYLOAD {
        return Err(io::Error::other(format!(
            "a message of {} + {} bytes is larger than the protocol allows",
            header.len(),
            payload.len()
        )));
    }
    // One buffer, one write: small messages go out whole.
    let mut frame = Vec::with_capacity(8 + header.len() + payload.len());
    frame.extend_from_slice(&(header.len() as u32).to_le_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    to.write_all(&frame)?;
    to.flush()
}

/// Reads one frame's header bytes and payload, checking both lengths before allocating.
pub fn read_raw_frame(from: &mut impl Read) -> Result<(Vec<u8>, Vec<u8>), FrameError> {
    let header_len = read_len(from, "header", MAX_HEADER, true)?;
    let mut header = vec![0; header_len];
    from.read_exact(&mut header).map_err(eof_is_closed)?;
    let payload_len = read_len(from, "payload", MAX_PAYLOAD, false)?;
    let mut payload = vec![0; payload_len];
    from.read_exact(&mut payload).map_err(eof_is_closed)?;
    Ok((header, payload))
}

/// Reads one frame whose header is a `T`.
pub fn read_frame<T: DeserializeOwned>(from: &mut impl Read) -> Result<(T, Vec<u8>), FrameError> {
    let (header, payload) = read_raw_frame(from)?;
    let header = serde_json::from_slice(&header).map_err(FrameError::Header)?;
    Ok((header, payload))
}

fn read_len(
    from: &mut impl Read,
    what: &'static str,
    max: usize,
    first: bool,
) -> Result<usize, FrameError> {
    let mut bytes = [0u8; 4];
    match from.read_exact(&mut bytes) {
        Ok(()) => {}
        Err(e) if first && e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Closed);
        }
        Err(e) => return Err(eof_is_closed(e)),
    }
    let len = u32::from_le_bytes(bytes) as usize;
    if len > max {
        return Err(FrameError::TooLong { what, len, max });
    }
    Ok(len)
}

fn eof_is_closed(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_lengths_are_refused_before_allocating() {
        let mut wire = Vec::new();
        let header = Response::Image {
            index: 3,
            width: 2,
            height: 1,
        };
        write_frame(&mut wire, &header, &[1, 2, 3, 4, 5, 6]).unwrap();
        let (back, payload): (Response, _) = read_frame(&mut wire.as_slice()).unwrap();
        assert_eq!(back, header);
        assert_eq!(payload, [1, 2, 3, 4, 5, 6]);

        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            read_raw_frame(&mut huge.as_slice()),
            Err(FrameError::TooLong { what: "header", .. })
        ));
        assert!(matches!(
            read_raw_frame(&mut [].as_slice()),
            Err(FrameError::Closed)
        ));
        // Cut inside the header.
        assert!(matches!(
            read_raw_frame(&mut &wire[..6]),
            Err(FrameError::Closed)
        ));
        let mut not_json = Vec::new();
        not_json.extend_from_slice(&3u32.to_le_bytes());
        not_json.extend_from_slice(b"{{{");
        not_json.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            read_frame::<Response>(&mut not_json.as_slice()),
            Err(FrameError::Header(_))
        ));
    }

    #[test]
    fn other_versions_are_refused_with_the_fix() {
        let ours = Versions::ours();
        assert_eq!(ours.refuse(&ours), None);
        let other = Versions {
            diffusion: "pixelgen-diffusion-0".into(),
            ..ours.clone()
        };
        let why = ours.refuse(&other).unwrap();
        assert!(
            why.contains("restart `cargo pixelgen serve`") && why.contains("pixelgen-diffusion-0"),
            "{why}"
        );
    }
}
