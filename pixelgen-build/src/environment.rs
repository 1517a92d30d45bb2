//! The process environment, read in one place.
//!
//! Invariants:
//! - Nothing else in pixelgen-build or the CLI reads environment variables: the build
//!   script ([`crate::Build`]) and `cargo pixelgen` call [`Environment::read`] once and
//!   pass the result down. (The one write is [`crate::generate::settle_cpu_threads`], for
//!   candle's and rayon's thread count.)
//! - Every variable that changes what a build produces, or where it looks for its
//!   inputs, is in [`VARIABLES`]; the builder declares each with `rerun-if-env-changed`,
//!   so cargo runs the build script again when one changes.
//! - Tests and library users build an `Environment` by hand ([`Environment::default`] is
//!   an empty environment), so nothing they run depends on the shell it runs in.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

pub use pixelgen_diffusion::files::{HubSettings, Secret};

/// Every variable pixelgen reads: [`Environment::read`]'s, and `RAYON_NUM_THREADS`, which
/// [`crate::generate::settle_cpu_threads`] reads (and sets when it is missing).
pub const VARIABLES: &[&str] = &[
    "PIXELGEN_OFFLINE",
    "CI",
    "PIXELGEN_CACHE_DIR",
    "PIXELGEN_SERVER",
    "XDG_RUNTIME_DIR",
    "PIXELGEN_TIMINGS",
    "PIXELGEN_DEVICE",
    "PIXELGEN_DTYPE",
    "PIXELGEN_BATCH",
    "PIXELGEN_LOCK_DIR",
    "HF_HUB_CACHE",
    "HF_HOME",
    "XDG_CACHE_HOME",
    "HOME",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "RAYON_NUM_THREADS",
    "PIXELGEN_IMAGE_SERVERS",
    "PIXELGEN_ALLOW_HTTP",
    "PIXELGEN_IMAGE_SERVER_TOKEN",
    "PIXELGEN_IMAGE_SERVER_TIMEOUT",
];

/// What cargo sets for a build script; it reruns the script itself when they change.
#[cfg(test)]
const CARGO_VARIABLES: &[&str] = &["CARGO_MANIFEST_DIR", "OUT_DIR"];

/// What the environment asks of pixelgen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// `CARGO_MANIFEST_DIR`, set by cargo for a build script.
    pub cargo_manifest_dir: Option<PathBuf>,
    /// `OUT_DIR`, set by cargo for a build script.
    pub out_dir: Option<PathBuf>,
    /// `PIXELGEN_OFFLINE` or `CI` set truthy: never generate.
    pub offline: bool,
    /// `PIXELGEN_CACHE_DIR`, as given (relative paths are taken from the crate folder).
    pub cache_dir: Option<PathBuf>,
    /// Where a warm `cargo pixelgen serve` listens.
    pub server: ServerAddress,
    /// `PIXELGEN_TIMINGS` set truthy: print per-stage timings.
    pub timings: bool,
    /// `PIXELGEN_DEVICE`, `PIXELGEN_DTYPE`, `PIXELGEN_BATCH`.
    pub device: DeviceRequest,
    /// The folder of the machine-wide device lock: `PIXELGEN_LOCK_DIR`, else the
    /// temporary folder.
    pub lock_dir: PathBuf,
    /// The Hugging Face hub cache and whether downloading is allowed.
    pub hub: HubSettings,
    /// The system's temporary folder.
    pub temp_dir: PathBuf,
    /// Where `Server` sprites are drawn, and how they may be reached.
    pub image_servers: ImageServerSettings,
}

/// `PIXELGEN_IMAGE_SERVERS`, `PIXELGEN_ALLOW_HTTP`, `PIXELGEN_IMAGE_SERVER_TOKEN` and
/// `PIXELGEN_IMAGE_SERVER_TIMEOUT`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageServerSettings {
    /// Replaces every Server sprite's URL list (a workspace's servers in one place:
    /// `.cargo/config.toml`'s `[env]`); separated by commas or spaces.
    pub urls: Option<Vec<String>>,
    /// Hosts that may be reached over plain HTTP besides loopback.
    pub allow_http: Vec<String>,
    /// Sent as `Authorization: Bearer …` to every image server.
    pub token: Option<Secret>,
    /// Seconds a server may hold work without finishing a frame before it is given up.
    pub stall_timeout_secs: Option<u64>,
}

impl Default for Environment {
    /// An empty environment: every default, nothing from the shell.
    fn default() -> Self {
        Environment::from_lookup(|_| None, std::env::temp_dir())
    }
}

impl Environment {
    /// Reads the process environment.
    pub fn read() -> Environment {
        Environment::from_lookup(|name| std::env::var_os(name), std::env::temp_dir())
    }

    /// The environment that `lookup` describes (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>, temp_dir: PathBuf) -> Self {
        let text = |name: &str| lookup(name).map(|v| v.to_string_lossy().trim().to_string());
        let hub_cache = lookup("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| lookup("HF_HOME").map(|home| PathBuf::from(home).join("hub")))
            .or_else(|| {
                lookup("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| lookup("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .map(|cache| cache.join("huggingface").join("hub"))
            });
        Environment {
            cargo_manifest_dir: lookup("CARGO_MANIFEST_DIR").map(PathBuf::from),
            out_dir: lookup("OUT_DIR").map(PathBuf::from),
            offline: truthy(lookup("PIXELGEN_OFFLINE").as_deref())
                || truthy(lookup("CI").as_deref()),
            cache_dir: lookup("PIXELGEN_CACHE_DIR").map(PathBuf::from),
            server: ServerAddress {
                socket: lookup("PIXELGEN_SERVER"),
                runtime_dir: lookup("XDG_RUNTIME_DIR"),
            },
            timings: truthy(lookup("PIXELGEN_TIMINGS").as_deref()),
            device: DeviceRequest {
                device: text("PIXELGEN_DEVICE")
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "auto".to_string()),
                dtype: text("PIXELGEN_DTYPE").filter(|d| !d.is_empty()),
                batch: text("PIXELGEN_BATCH").and_then(|b| b.parse().ok()),
            },
            lock_dir: lookup("PIXELGEN_LOCK_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| temp_dir.clone()),
            hub: HubSettings {
                cache_dir: hub_cache,
                downloads_allowed: !matches!(
                    text("HF_HUB_OFFLINE").as_deref(),
                    Some("1" | "true" | "TRUE" | "True" | "yes" | "on")
                ),
                endpoint: text("HF_ENDPOINT").filter(|e| !e.is_empty()),
                token: text("HF_TOKEN").filter(|t| !t.is_empty()).map(Secret),
            },
            temp_dir,
            image_servers: ImageServerSettings {
                urls: text("PIXELGEN_IMAGE_SERVERS")
                    .map(|urls| list(&urls))
                    .filter(|urls| !urls.is_empty()),
                allow_http: text("PIXELGEN_ALLOW_HTTP")
                    .map(|hosts| list(&hosts))
                    .unwrap_or_default(),
                token: text("PIXELGEN_IMAGE_SERVER_TOKEN")
                    .filter(|t| !t.is_empty())
                    .map(Secret),
                stall_timeout_secs: text("PIXELGEN_IMAGE_SERVER_TIMEOUT")
                    .and_then(|t| t.parse().ok())
                    .filter(|t| *t > 0),
            },
        }
    }

    /// The sprite cache folder for a crate at `crate_dir`, when `PIXELGEN_CACHE_DIR` names one.
    pub fn cache_dir_for(&self, crate_dir: &Path) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|dir| crate_dir.join(dir))
    }
}

/// Where builds look for a warm server: `PIXELGEN_SERVER` (a socket path, or `off`),
/// else a socket under `XDG_RUNTIME_DIR` or the temporary folder.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerAddress {
    pub socket: Option<OsString>,
    pub runtime_dir: Option<OsString>,
}

impl ServerAddress {
    pub fn socket(&self) -> Option<&OsStr> {
        self.socket.as_deref()
    }
    pub fn runtime_dir(&self) -> Option<&OsStr> {
        self.runtime_dir.as_deref()
    }
}

/// Which device, precision and batch size a Diffusion run asks for (`PIXELGEN_DEVICE`,
/// `PIXELGEN_DTYPE`, `PIXELGEN_BATCH`). The warm server is sent this rather than using
/// its own environment, so a build gets the same pixels through it as in-process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DeviceRequest {
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `f32`, `f16` or `bf16`; `None` takes the device's default.
    pub dtype: Option<String>,
    /// Images per UNet batch; `None` takes the device's default.
    pub batch: Option<usize>,
}

impl Default for DeviceRequest {
    fn default() -> Self {
        DeviceRequest {
            device: "auto".to_string(),
            dtype: None,
            batch: None,
        }
    }
}

/// A list written with commas or spaces.
fn list(text: &str) -> Vec<String> {
    text.split([',', ' ', '\n', '\t'])
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether a variable is set to something other than empty, 0, false or no.
pub fn truthy(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| {
        let v = v.to_string_lossy().trim().to_ascii_lowercase();
        !v.is_empty() && v != "0" && v != "false" && v != "no"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Environment::from_lookup(|name| map.get(name).cloned(), PathBuf::from("/tmp"))
    }

    #[test]
    fn an_empty_environment_takes_every_default() {
        let e = env(&[]);
        assert!(!e.offline && !e.timings);
        assert_eq!(e.device, DeviceRequest::default());
        assert_eq!(e.lock_dir, PathBuf::from("/tmp"));
        assert_eq!(e.hub.cache_dir, None);
        assert!(e.hub.downloads_allowed);
        assert_eq!(e.cache_dir_for(Path::new("/game")), None);
    }

    #[test]
    fn image_server_settings_are_lists_and_a_secret() {
        let e = env(&[
            (
                "PIXELGEN_IMAGE_SERVERS",
                "http://127.0.0.1:9091, http://127.0.0.1:9092",
            ),
            ("PIXELGEN_ALLOW_HTTP", "gpu-1 gpu-2"),
            ("PIXELGEN_IMAGE_SERVER_TOKEN", "hunter2"),
            ("PIXELGEN_IMAGE_SERVER_TIMEOUT", "30"),
        ]);
        let servers = &e.image_servers;
        assert_eq!(
            servers.urls.as_deref(),
            Some(
                &[
                    "http://127.0.0.1:9091".to_string(),
                    "http://127.0.0.1:9092".to_string()
                ][..]
            )
        );
        assert_eq!(servers.allow_http, ["gpu-1", "gpu-2"]);
        assert_eq!(servers.stall_timeout_secs, Some(30));
        assert!(
            !format!("{e:?}").contains("hunter2"),
            "the token is not printed"
        );
        assert_eq!(
            env(&[("PIXELGEN_IMAGE_SERVERS", " ")]).image_servers.urls,
            None
        );
    }

    #[test]
    fn flags_accept_the_usual_spellings() {
        for yes in ["1", "true", "TRUE", "yes", " on "] {
            assert!(env(&[("PIXELGEN_OFFLINE", yes)]).offline, "{yes}");
        }
        for no in ["", "0", "false", "No"] {
            assert!(!env(&[("PIXELGEN_OFFLINE", no)]).offline, "{no:?}");
        }
        assert!(env(&[("CI", "true")]).offline);
        assert!(env(&[("PIXELGEN_TIMINGS", "1")]).timings);
    }

    #[test]
    fn the_hub_cache_follows_huggingface_hub_precedence() {
        let home = env(&[("HOME", "/h")]);
        assert_eq!(
            home.hub.cache_dir,
            Some(PathBuf::from("/h/.cache/huggingface/hub"))
        );
        let xdg = env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(xdg.hub.cache_dir, Some(PathBuf::from("/x/huggingface/hub")));
        let hf_home = env(&[("HOME", "/h"), ("HF_HOME", "/hf")]);
        assert_eq!(hf_home.hub.cache_dir, Some(PathBuf::from("/hf/hub")));
        let explicit = env(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]);
        assert_eq!(explicit.hub.cache_dir, Some(PathBuf::from("/c")));
        assert!(!env(&[("HF_HUB_OFFLINE", "1")]).hub.downloads_allowed);
    }

    #[test]
    fn a_token_is_never_printed() {
        let e = env(&[("HF_TOKEN", "hf_secret123")]);
        assert_eq!(
            e.hub.token.as_ref().map(Secret::expose),
            Some("hf_secret123")
        );
        assert!(!format!("{e:?}").contains("hf_secret123"));
    }

    #[test]
    fn device_settings_are_read_as_given() {
        let e = env(&[
            ("PIXELGEN_DEVICE", "cuda:1"),
            ("PIXELGEN_DTYPE", "bf16"),
            ("PIXELGEN_BATCH", "8"),
            ("PIXELGEN_LOCK_DIR", "/locks"),
            ("PIXELGEN_CACHE_DIR", "../cache"),
        ]);
        assert_eq!(
            e.device,
            DeviceRequest {
                device: "cuda:1".into(),
                dtype: Some("bf16".into()),
                batch: Some(8),
            }
        );
        assert_eq!(e.lock_dir, PathBuf::from("/locks"));
        assert_eq!(
            e.cache_dir_for(Path::new("/game")),
            Some(PathBuf::from("/game/../cache"))
        );
    }

    #[test]
    fn every_variable_read_is_declared() {
        use std::cell::RefCell;
        let read = RefCell::new(Vec::new());
        Environment::from_lookup(
            |name| {
                read.borrow_mut().push(name.to_string());
                None
            },
            PathBuf::from("/tmp"),
        );
        for name in read.into_inner() {
            assert!(
                VARIABLES.contains(&name.as_str()) || CARGO_VARIABLES.contains(&name.as_str()),
                "{name} is not in VARIABLES"
            );
        }
    }
}
