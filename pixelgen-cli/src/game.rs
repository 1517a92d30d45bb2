//! A running game, reached over the Bevy Remote Protocol: JSON-RPC 2.0 over HTTP on
//! 127.0.0.1, as the game's `RemoteHttpPlugin` serves it in dev builds. The MCP server asks
//! it to reload the atlases it just published (`pixelgen.reload`) and for screenshots
//! (`pixelgen.screenshot`); both methods come with `pixelgen`'s `remote` feature.
//!
//! Invariants: only loopback is ever contacted (the port is the only choice); every call
//! has a deadline, so a game that hangs or a port that something else answers costs the
//! caller a clear error, never a hang.

use std::time::Duration;

use serde_json::{Value, json};

/// Where Bevy's `RemoteHttpPlugin` listens unless told otherwise.
pub const DEFAULT_PORT: u16 = 15702;

/// A game's BRP endpoint on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Game {
    pub port: u16,
}

/// Why a call did not get a result.
#[derive(Debug)]
pub enum CallError {
    /// Nothing answers on the port: the game is not running, is a release build, or runs
    /// with its remote protocol off or on another port.
    NotRunning(String),
    /// The game answered with an error (or something that is not a BRP answer).
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotRunning(message) | CallError::Failed(message) => f.write_str(message),
        }
    }
}

impl Game {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Calls `method` and returns its `result`.
    pub fn call(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, CallError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2).min(timeout))
            .timeout(timeout)
            .build();
        let request = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        let response = agent.post(&self.url()).send_json(request);
        let body: Value = match response {
            Ok(response) => response.into_json().map_err(|e| {
                CallError::Failed(format!(
                    "the game on port {} answered {method} with something that is not JSON: {e}",
                    self.port
                ))
            })?,
            // BRP answers errors with an HTTP error status and a JSON-RPC error body.
            Err(ureq::Error::Status(_, response)) => response.into_json().map_err(|e| {
                CallError::Failed(format!("{method}: an error without a JSON body: {e}"))
            })?,
            Err(ureq::Error::Transport(transport)) => {
                return Err(CallError::NotRunning(format!(
                    "no game answers the Bevy Remote Protocol on 127.0.0.1:{} ({transport}); \
                     run a dev build of the game with the remote plugin (the example game: \
                     `cargo run -p example-game`), or give the port it listens on",
                    self.port
                )));
            }
        };
        if let Some(error) = body.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)");
            let hint = if error.get("code").and_then(Value::as_i64) == Some(-32601) {
                " (the game runs without pixelgen's remote methods: enable pixelgen's `remote` feature and add Bevy's RemotePlugin)"
            } else {
                ""
            };
            return Err(CallError::Failed(format!(
                "the game answered {method} with an error: {message}{hint}"
            )));
        }
        body.get("result").cloned().ok_or_else(|| {
            CallError::Failed(format!(
                "the game on port {} answered {method} without a result: {body}",
                self.port
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_nobody_listens_on_is_a_clear_error_at_once() {
        // Bind and drop: the port was free a moment ago and nothing listens now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        let error = Game { port }
            .call("pixelgen.reload", Value::Null, Duration::from_secs(5))
            .unwrap_err();
        assert!(matches!(error, CallError::NotRunning(_)), "{error}");
        assert!(error.to_string().contains(&format!("127.0.0.1:{port}")));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_server_that_never_answers_costs_the_deadline_not_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let error = Game { port }
            .call(
                "pixelgen.screenshot",
                Value::Null,
                Duration::from_millis(300),
            )
            .unwrap_err();
        assert!(matches!(error, CallError::NotRunning(_)), "{error}");
        drop(listener);
    }
}
