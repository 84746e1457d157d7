//! The client side of a base's operations API, shared by every command that talks to a running
//! base (`install`, `ls`, `show`, `switch`, `top`...): where the base is (`--admin`), its token
//! (`--token`, or the data directory's `admin-token`), how to print (`--output`), and the
//! requests themselves, whose refusals come back as the API's `CODE: message`.

use std::{
    io::BufRead,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use pedestal_fleet::render::{Output, Printer};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The operations API's address when neither `--admin` nor the environment names one.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:7071";

/// Where the base is, how to prove the right to ask it, and how to print its answers.
#[derive(Clone, clap::Args)]
pub struct ApiArgs {
    /// The base's operations API (also read from PEDESTAL_ADMIN_URL) [default:
    /// http://127.0.0.1:7071].
    #[arg(long, env = "PEDESTAL_ADMIN", value_name = "URL")]
    admin: Option<String>,
    /// Bearer token (default: `<data-dir>/admin-token`, read only for a base on this machine).
    #[arg(long, env = "PEDESTAL_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The base's data directory, to read its `admin-token` from (default: `./pedestal-data`).
    #[arg(long, env = "PEDESTAL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// `table` for people, `json` for the API's answers as they are.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

impl ApiArgs {
    /// A client of the base these arguments name.
    pub fn client(&self) -> anyhow::Result<Client> {
        let url = self.url();
        let token = self.token(&url)?;
        Ok(Client::new(&url, token))
    }

    /// How answers are printed.
    pub fn printer(&self) -> Printer {
        Printer::new(self.output)
    }

    /// `--admin`, else `PEDESTAL_ADMIN` (both through clap), else `PEDESTAL_ADMIN_URL` (what
    /// `install` read first), else the loopback default; `http://` is added to a bare
    /// `host:port`.
    fn url(&self) -> String {
        let named = self
            .admin
            .clone()
            .or_else(|| std::env::var("PEDESTAL_ADMIN_URL").ok())
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ADMIN.to_owned());
        let url = if named.contains("://") { named } else { format!("http://{named}") };
        url.trim_end_matches('/').to_owned()
    }

    /// `--token`, else `PEDESTAL_ADMIN_TOKEN` (both through clap), else the data directory's
    /// `admin-token` file: `--data-dir`'s, or `./pedestal-data`'s when it exists.
    fn token(&self, url: &str) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_owned()));
        }
        // A token found on this machine is only sent to a base on this machine: `--admin`
        // pointing elsewhere (over plain HTTP) must not carry the local base's token there.
        if !is_loopback_url(url) {
            return Ok(None);
        }
        let file = self.data_dir.as_deref().unwrap_or(Path::new("pedestal-data")).join("admin-token");
        match std::fs::read_to_string(&file) {
            Ok(token) => Ok(Some(token.trim().to_owned()).filter(|t| !t.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }
}

/// Why a request did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The base answered with an error: the API's stable code and its message.
    #[error("{code}: {message}{}", hint(*.status))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// `NOT_FOUND`, `NOT_RUNNING`... (`HTTP_<status>` when the body was not the API's).
        code: String,
        /// What happened.
        message: String,
        /// The error's `details`.
        details: Value,
    },
    /// Nothing answered: no base listens there, or the connection failed.
    #[error("cannot reach the base at {url}: {message} (is `pedestal serve` running?)")]
    Unreachable {
        /// The operations API's URL.
        url: String,
        /// What the transport said.
        message: String,
    },
    /// An answer that is not what the API promises.
    #[error("BAD_ANSWER: {url} answered something that is not the operations API's: {message}")]
    BadAnswer {
        /// The request's URL.
        url: String,
        /// What was wrong with it.
        message: String,
    },
}

impl ApiError {
    /// The exit status of a command that failed with it: 2 when no base answered (as
    /// `pedestal fleet` does for its controller), 1 when the base refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApiError::Unreachable { .. } => 2,
            ApiError::Refused { .. } | ApiError::BadAnswer { .. } => 1,
        }
    }
}

/// What to do about a refusal that is the caller's to fix.
fn hint(status: u16) -> &'static str {
    match status {
        401 => {
            " (give the base's token with --token, PEDESTAL_ADMIN_TOKEN, or --data-dir for its admin-token)"
        }
        _ => "",
    }
}

/// A blocking client of one base's operations API.
pub struct Client {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the operations API at `url` (`http://host:port`), sending `token` as
    /// `authorization: Bearer <token>`.
    pub fn new(url: &str, token: Option<String>) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            // Uninstalls drain, uploads of large modules take their time: no read timeout
            // shorter than the base's own (its drain and stop timeouts bound them).
            .timeout_read(Duration::from_secs(300))
            .build();
        Self { url: url.trim_end_matches('/').to_owned(), token, agent }
    }

    /// The operations API's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET path`, the answer as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.answer(self.request("GET", path).call())
    }

    /// `method path` with a JSON body.
    pub fn send_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<T, ApiError> {
        self.answer(self.request(method, path).send_json(body))
    }

    /// `method path` without a body (`DELETE`, `POST .../retry`).
    pub fn send<T: DeserializeOwned>(&self, method: &str, path: &str) -> Result<T, ApiError> {
        self.answer(self.request(method, path).call())
    }

    /// `POST path` with `bytes` as `application/octet-stream` and extra headers.
    pub fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        let mut request = self.request("POST", path).set("content-type", "application/octet-stream");
        for (name, value) in headers {
            request = request.set(name, value);
        }
        self.answer(request.send_bytes(bytes))
    }

    /// `GET path` read as it comes (a server-sent event stream): no read timeout, the stream
    /// lasts as long as the base keeps it open.
    pub fn stream(&self, path: &str) -> Result<Box<dyn BufRead + Send>, ApiError> {
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).build();
        let mut request = agent.get(&format!("{}{path}", self.url)).set("accept", "text/event-stream");
        if let Some(token) = &self.token {
            request = request.set("authorization", &format!("Bearer {token}"));
        }
        let response = request.call().map_err(|e| self.error(e))?;
        Ok(Box::new(std::io::BufReader::new(response.into_reader())))
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.agent.request(method, &format!("{}{path}", self.url));
        match &self.token {
            Some(token) => request.set("authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    fn answer<T: DeserializeOwned>(
        &self,
        answer: Result<ureq::Response, ureq::Error>,
    ) -> Result<T, ApiError> {
        let response = answer.map_err(|e| self.error(e))?;
        let url = response.get_url().to_owned();
        response.into_json().map_err(|e| ApiError::BadAnswer { url, message: e.to_string() })
    }

    fn error(&self, error: ureq::Error) -> ApiError {
        match error {
            ureq::Error::Status(status, response) => {
                let text = response.into_string().unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match (body["code"].as_str(), body["message"].as_str()) {
                    (Some(code), Some(message)) => ApiError::Refused {
                        status,
                        code: code.to_owned(),
                        message: message.to_owned(),
                        details: body["details"].clone(),
                    },
                    // Something answered that is not a base (a proxy, another server).
                    _ => ApiError::Refused {
                        status,
                        code: format!("HTTP_{status}"),
                        message: if text.trim().is_empty() {
                            "no error body (is this a pedestal base's operations API?)".to_owned()
                        } else {
                            text.trim().chars().take(200).collect()
                        },
                        details: Value::Null,
                    },
                }
            }
            ureq::Error::Transport(transport) => {
                ApiError::Unreachable { url: self.url.clone(), message: transport.to_string() }
            }
        }
    }
}

/// `text` as one URL path segment or query value: everything but the unreserved characters
/// percent-encoded, so a name never reaches another route.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether the operations URL (`http://host:port`, or `host:port`) names this machine. A URL
/// with a user part (`http://localhost:1@elsewhere/`) never does: its host is after the `@`, and
/// the local token must not leave for it.
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_is_loopback() {
        for url in ["http://127.0.0.1:7071", "127.0.0.2:7071", "http://[::1]:7071/", "http://LOCALHOST:1"] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in
            ["http://localhost:1@192.0.2.2:17999", "localhost@192.0.2.2", "http://127.0.0.1@example.com/"]
        {
            assert!(!is_loopback_url(url), "{url}: the host is after the user part");
        }
        for url in ["http://10.0.0.1:7071", "http://example.com", "http://127.0.0.1.evil.example:7071"] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }

    #[test]
    fn names_and_values_are_one_segment() {
        assert_eq!(encode("fx-good"), "fx-good");
        assert_eq!(encode("a/b?c=d e"), "a%2Fb%3Fc%3Dd%20e");
    }

    #[test]
    fn refusals_read_as_the_api_wrote_them() {
        let refused = |status| ApiError::Refused {
            status,
            code: "NOT_FOUND".into(),
            message: "module nope not found".into(),
            details: Value::Null,
        };
        assert_eq!(refused(404).to_string(), "NOT_FOUND: module nope not found");
        assert!(refused(401).to_string().contains("--token"));
        assert_eq!(refused(404).exit_code(), 1);
        let unreachable =
            ApiError::Unreachable { url: "http://127.0.0.1:1".into(), message: "refused".into() };
        assert_eq!(unreachable.exit_code(), 2);
    }
}
