//! A server's address, checked before anything is sent to it.
//!
//! Invariants:
//! - An [`Endpoint`] is `http` or `https`, has a host, and carries no user name, password,
//!   query or fragment: credentials come from the environment
//!   (`PIXELGEN_IMAGE_SERVER_TOKEN`), never from `sprites.ron`, which is committed.
//! - Its `Display` is what messages, progress and notes show; it never includes a token.
//! - Plain HTTP is allowed only to loopback or to hosts the user names in
//!   `PIXELGEN_ALLOW_HTTP` ([`Endpoint::check_transport`]); everything else needs HTTPS.

use std::fmt;
use std::net::IpAddr;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    Http,
    Https,
}

/// A server's base URL: scheme, host, port and an optional path prefix (for servers behind
/// a reverse proxy at `https://host/invokeai`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Lower-cased; IPv6 addresses without brackets.
    pub host: String,
    pub port: u16,
    /// Empty, or starts with `/` and has no trailing `/`.
    pub base_path: String,
}

impl Endpoint {
    /// Parses `http://host:port/prefix`. The error says what is wrong, for the manifest's
    /// located message.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let url = url.trim();
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        };
        if rest.contains(['?', '#']) {
            return Err(format!(
                "`{url}` has a query or fragment; give the server's base URL"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!(
                "`{}` carries credentials; sprites.ron is committed, so put the token in PIXELGEN_IMAGE_SERVER_TOKEN instead",
                redact(url)
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err(format!("`{url}` has an unclosed `[` in its host"));
            };
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(format!("`{url}` has no valid host name"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{url}` has an invalid port `{port}`"))?,
            None => match scheme {
                Scheme::Http => 80,
                Scheme::Https => 443,
            },
        };
        Ok(Endpoint {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// Whether the host is this machine: `localhost`, 127.0.0.0/8 or ::1.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Refuses plain HTTP to a host that is neither loopback nor named in
    /// `allowed_http_hosts` (`PIXELGEN_ALLOW_HTTP`): prompts, and the token when one is
    /// set, would cross the network in the clear.
    pub fn check_transport(&self, allowed_http_hosts: &[String]) -> Result<(), String> {
        if self.scheme == Scheme::Https
            || self.is_loopback()
            || allowed_http_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&self.host))
        {
            return Ok(());
        }
        Err(format!(
            "{self} is plain HTTP to another machine, which pixelgen refuses by default (prompts and the token would cross the network unencrypted)\nhelp: use https://, or name the host in PIXELGEN_ALLOW_HTTP=\"{}\" if this network is trusted (e.g. in .cargo/config.toml's [env])",
            self.host
        ))
    }

    /// The full URL of `path` (which starts with `/`) on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{self}{path}")
    }

    /// A short name for progress and notes: `host:port`.
    pub fn short(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.short(), self.base_path)
    }
}

/// `url` with anything between `//` and `@` replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("//"), url.find('@')) {
        (Some(start), Some(at)) if start + 2 <= at => {
            format!("{}***{}", &url[..start + 2], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_prefixes() {
        let e = Endpoint::parse("http://127.0.0.1:9091").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("127.0.0.1", 9091, "")
        );
        assert_eq!(
            e.url("/api/v1/app/version"),
            "http://127.0.0.1:9091/api/v1/app/version"
        );
        let e = Endpoint::parse("https://GPU-1.studio.lan/invokeai/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("gpu-1.studio.lan", 443, "/invokeai")
        );
        assert_eq!(e.to_string(), "https://gpu-1.studio.lan:443/invokeai");
        let e = Endpoint::parse("http://[::1]:8188").unwrap();
        assert!(e.is_loopback());
        assert_eq!(e.short(), "[::1]:8188");
    }

    #[test]
    fn refuses_what_is_not_a_plain_base_url() {
        for (url, says) in [
            ("ftp://host", "not an http"),
            ("127.0.0.1:9091", "not an http"),
            ("http://:9091", "no valid host"),
            ("http://host:99999", "invalid port"),
            ("http://host:0", "invalid port"),
            ("http://host/?x=1", "query"),
            ("http://bob:hunter2@host:9090", "credentials"),
            ("http://ho st:1", "no valid host"),
        ] {
            let error = Endpoint::parse(url).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
            assert!(
                !error.contains("hunter2"),
                "the password is not repeated: {error}"
            );
        }
    }

    #[test]
    fn plain_http_only_to_loopback_or_named_hosts() {
        let allowed = vec!["gpu-1".to_string()];
        for url in [
            "http://127.0.0.1:1",
            "http://localhost:1",
            "http://127.4.5.6:1",
            "http://[::1]:1",
            "http://GPU-1:9090",
            "https://render.example.com",
        ] {
            assert!(
                Endpoint::parse(url)
                    .unwrap()
                    .check_transport(&allowed)
                    .is_ok(),
                "{url}"
            );
        }
        let refused = Endpoint::parse("http://gpu-2:9090")
            .unwrap()
            .check_transport(&allowed)
            .unwrap_err();
        assert!(
            refused.contains("PIXELGEN_ALLOW_HTTP=\"gpu-2\""),
            "{refused}"
        );
        assert!(
            Endpoint::parse("http://10.0.0.5:9090")
                .unwrap()
                .check_transport(&[])
                .is_err()
        );
    }
}
