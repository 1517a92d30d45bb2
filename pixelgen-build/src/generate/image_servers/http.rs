//! The one HTTP client the server backends share: timeouts, the bearer token, size
//! limits, and errors that keep the server's own message.
//!
//! Invariants:
//! - The token is sent as `Authorization: Bearer …` and appears nowhere else: not in
//!   URLs, errors, notes or the lock.
//! - Every call has a connect and a read timeout, so a dead server never hangs a build.
//! - A response body is read up to a limit ([`MAX_JSON_BYTES`], [`MAX_IMAGE_BYTES`]).
//! - [`HttpError::Transport`] (nothing answered) and [`HttpError::Status`] (the server
//!   answered with an error) stay apart: the fan-out moves work off a server that does
//!   not answer or answers 5xx, and reports a 4xx refusal as the frames' failure.

use std::io::Read;
use std::time::Duration;

use super::Endpoint;
use crate::environment::Secret;

/// Largest JSON answer read (a queue item with its session is tens of kB).
pub const MAX_JSON_BYTES: u64 = 32 << 20;
/// Largest image read.
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    /// Nothing usable came back: connection refused or reset, a timeout, TLS.
    #[error("{endpoint} did not answer: {source}")]
    Transport {
        endpoint: String,
        /// ureq's or the socket's error (shared: a frame's error is cloned to each
        /// server that tries it).
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an error status; `message` is its own explanation.
    #[error("{endpoint} answered {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
    },
    /// The server answered, but not with what its API promises.
    #[error("{endpoint} sent an unexpected answer to {what}: {message}")]
    Unexpected {
        endpoint: String,
        what: String,
        message: String,
    },
}

impl HttpError {
    /// Whether the server itself is in trouble — unreachable, or answering 5xx (itself,
    /// or the proxy in front of it) — as opposed to refusing one request (4xx): work
    /// moves off it to another server.
    pub fn is_server_trouble(&self) -> bool {
        match self {
            HttpError::Transport { .. } => true,
            HttpError::Status { status, .. } => *status >= 500,
            HttpError::Unexpected { .. } => false,
        }
    }
}

/// A client for one server.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    pub endpoint: Endpoint,
    token: Option<Secret>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint.to_string())
            .field("token", &self.token)
            .finish()
    }
}

impl Client {
    /// A client with these timeouts (`read` bounds each request, not a whole generation).
    pub fn new(
        endpoint: Endpoint,
        token: Option<Secret>,
        connect: Duration,
        read: Duration,
    ) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(connect)
            .timeout_read(read)
            .timeout_write(read)
            .user_agent(concat!("pixelgen/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent,
            endpoint,
            token,
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.agent.request(method, &self.endpoint.url(path));
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {}", token.expose())),
            None => request,
        }
    }

    /// `GET path?query` → JSON (the query's values are URL-encoded here).
    pub fn get_json(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<serde_json::Value, HttpError> {
        let mut request = self.request("GET", path);
        for (name, value) in query {
            request = request.query(name, value);
        }
        let response = self.call(path, request.call())?;
        self.json(path, response)
    }

    /// `DELETE path`, its answer ignored but for errors.
    pub fn delete(&self, path: &str) -> Result<(), HttpError> {
        self.call(path, self.request("DELETE", path).call())
            .map(drop)
    }

    /// `method path` with a JSON body → JSON (`null` for an empty answer).
    pub fn send_json(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, HttpError> {
        let response = self.call(
            path,
            self.request(method, path)
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
        )?;
        self.json(path, response)
    }

    /// `POST path?query` with one file as `multipart/form-data` (in form field `field`)
    /// → JSON.
    pub fn upload(
        &self,
        path: &str,
        query: &[(&str, &str)],
        field: &str,
        file_name: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<serde_json::Value, HttpError> {
        // A boundary that cannot occur in the file: derived from its own hash.
        let boundary = format!("pixelgen-{}", &blake3::hash(bytes).to_hex()[..32]);
        let mut body = Vec::with_capacity(bytes.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut request = self.request("POST", path).set(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        );
        for (name, value) in query {
            request = request.query(name, value);
        }
        let response = self.call(path, request.send_bytes(&body))?;
        self.json(path, response)
    }

    /// `GET path` → bytes (an image).
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, HttpError> {
        let response = self.call(path, self.request("GET", path).call())?;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(MAX_IMAGE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.transport(e.into()))?;
        if bytes.len() as u64 > MAX_IMAGE_BYTES {
            return Err(self.unexpected(path, format!("more than {MAX_IMAGE_BYTES} bytes")));
        }
        Ok(bytes)
    }

    fn call(
        &self,
        path: &str,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, HttpError> {
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => {
                let mut body = String::new();
                let _ = response
                    .into_reader()
                    .take(64 << 10)
                    .read_to_string(&mut body);
                Err(HttpError::Status {
                    endpoint: self.endpoint.to_string(),
                    status,
                    message: format!("{} ({path})", server_message(&body)),
                })
            }
            Err(ureq::Error::Transport(transport)) => Err(self.transport(transport.into())),
        }
    }

    fn json(&self, path: &str, response: ureq::Response) -> Result<serde_json::Value, HttpError> {
        let mut text = String::new();
        response
            .into_reader()
            .take(MAX_JSON_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| self.transport(e.into()))?;
        if text.len() as u64 > MAX_JSON_BYTES {
            return Err(self.unexpected(path, format!("more than {MAX_JSON_BYTES} bytes")));
        }
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| self.unexpected(path, format!("not JSON ({e})")))
    }

    fn transport(&self, source: Box<dyn std::error::Error + Send + Sync>) -> HttpError {
        // ureq's message names the URL; the URL carries no secret (tokens travel in a header).
        HttpError::Transport {
            endpoint: self.endpoint.to_string(),
            source: source.into(),
        }
    }

    /// An answer that does not follow the API.
    pub fn unexpected(&self, what: &str, message: impl Into<String>) -> HttpError {
        HttpError::Unexpected {
            endpoint: self.endpoint.to_string(),
            what: what.to_string(),
            message: message.into(),
        }
    }
}

/// Percent-encodes a path segment or query value (RFC 3986's unreserved characters stay).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The human part of an error body: FastAPI's `detail` (InvokeAI), ComfyUI's
/// `error.message` with its node errors, else the text itself (shortened).
pub fn server_message(body: &str) -> String {
    let text = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(json) => {
            if let Some(detail) = json.get("detail") {
                match detail {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            } else if let Some(error) = json.get("error") {
                let mut message = error
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| error.to_string());
                if let Some(details) = error.get("details").and_then(|d| d.as_str())
                    && !details.is_empty()
                {
                    message.push_str(": ");
                    message.push_str(details);
                }
                if let Some(nodes) = json.get("node_errors").and_then(|n| n.as_object()) {
                    for (node, errors) in nodes {
                        for e in errors
                            .get("errors")
                            .and_then(|e| e.as_array())
                            .into_iter()
                            .flatten()
                        {
                            message.push_str(&format!(
                                "; node {node}: {} {}",
                                e.get("message").and_then(|m| m.as_str()).unwrap_or(""),
                                e.get("details").and_then(|m| m.as_str()).unwrap_or("")
                            ));
                        }
                    }
                }
                message
            } else {
                body.to_string()
            }
        }
        Err(_) => body.to_string(),
    };
    let text = text.trim();
    if text.chars().count() > 600 {
        format!("{}…", text.chars().take(600).collect::<String>())
    } else if text.is_empty() {
        "(no message)".to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_servers_own_words() {
        assert_eq!(
            server_message(r#"{"detail":"Model not found"}"#),
            "Model not found"
        );
        let comfy = r#"{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": ""}, "node_errors": {"4": {"errors": [{"message": "Value not in list", "details": "ckpt_name: 'x.safetensors' not in []"}]}}}"#;
        let message = server_message(comfy);
        assert!(
            message.starts_with(
                "Prompt outputs failed validation; node 4: Value not in list ckpt_name"
            ),
            "{message}"
        );
        assert_eq!(server_message(""), "(no message)");
        assert_eq!(server_message(&"x".repeat(1000)).chars().count(), 601);
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let client = Client::new(
            Endpoint::parse("http://127.0.0.1:1").unwrap(),
            Some(Secret("hunter2".into())),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert!(!format!("{client:?}").contains("hunter2"));
    }

    #[test]
    fn an_unreachable_server_is_a_transport_error() {
        // A port nothing listens on: bind one, then drop it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(
            Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            None,
            Duration::from_secs(2),
            Duration::from_secs(2),
        );
        let error = client.get_json("/api/v1/app/version", &[]).unwrap_err();
        assert!(error.is_server_trouble(), "{error}");
    }
}
