//! A small blocking client of the controller API (`/api/v1/...`), for `pedestal fleet` and
//! anything else that drives a fleet from a plain thread.
//!
//! Any controller answers, leader or not: a standby forwards mutations to the leader.
//!
//! ```no_run
//! use pedestal_fleet::client::Client;
//!
//! let client = Client::new("http://127.0.0.1:7080", Some("a-fleet-token-of-16+-chars".into()));
//! for module in client.status(None)?.modules {
//!     println!("{} {}/{} ready", module.name, module.ready, module.wanted);
//! }
//! # Ok::<(), pedestal_fleet::client::ClientError>(())
//! ```

use std::{io::Read, time::Duration};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::model::{
    BaseView, CommandRequest, Endpoints, ErrorBody, FleetStatus, LeaderRecord, RolloutView, Spec, SpecRecord,
};

/// What a call to the controller can end in besides its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller answered with an error (`ErrorBody`).
    #[error("{code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable code (`UNAUTHORIZED`, `SPEC_INVALID`...).
        code: String,
        /// What happened.
        message: String,
    },
    /// No answer: nothing listens there, or the connection failed.
    #[error("cannot reach the controller at {url}: {message}")]
    Unreachable {
        /// The controller's URL.
        url: String,
        /// What the transport said.
        message: String,
    },
    /// An answer that is not what the API promises.
    #[error("unexpected answer from {url}: {message}")]
    Protocol {
        /// The request's URL.
        url: String,
        /// What was wrong with it.
        message: String,
    },
}

impl ClientError {
    /// The stable code: the API's, or `CONTROLLER_UNREACHABLE` / `BAD_ANSWER`.
    pub fn code(&self) -> &str {
        match self {
            Self::Api { code, .. } => code,
            Self::Unreachable { .. } => "CONTROLLER_UNREACHABLE",
            Self::Protocol { .. } => "BAD_ANSWER",
        }
    }
}

/// `Result` of a client call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// `GET /api/v1/leader`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderAnswer {
    /// The answering controller's id.
    pub id: String,
    /// Whether it leads.
    pub leading: bool,
    /// The leader, if there is one.
    #[serde(default)]
    pub leader: Option<LeaderRecord>,
}

/// `PUT /api/v1/specs/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyAnswer {
    /// The module.
    pub name: String,
    /// The stored spec's generation.
    pub generation: u64,
    /// Whether the spec differed from the stored one (otherwise nothing was written).
    pub changed: bool,
}

/// `POST /api/v1/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAnswer {
    /// Lower-case hex sha256 of the bytes.
    pub sha256: String,
    /// Their size.
    pub size: u64,
    /// Whether they were new to the fleet.
    pub stored: bool,
}

/// `DELETE /api/v1/specs/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAnswer {
    /// The module.
    pub name: String,
    /// Always true in a success.
    pub deleted: bool,
}

/// `POST /api/v1/bases/{id}/cordon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CordonAnswer {
    /// The base.
    pub base_id: String,
    /// Whether its replicas move off.
    pub drain: bool,
    /// Whether a live base has that id (a cordon of one that is not is kept all the same).
    pub registered: bool,
    /// What happened, for people.
    pub message: String,
}

/// `DELETE /api/v1/bases/{id}/cordon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncordonAnswer {
    /// The base.
    pub base_id: String,
    /// False when it was not cordoned.
    pub changed: bool,
    /// What happened, for people.
    pub message: String,
}

/// A client of one controller.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the controller at `url` (`http://host:port`; a bare `host:port` gets
    /// `http://`), sending `token` as `authorization: Bearer <token>`.
    pub fn new(url: &str, token: Option<String>) -> Self {
        let url = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            // Uploads of large artifacts and a standby's forwarding take their time.
            .timeout_read(Duration::from_secs(120))
            .timeout_write(Duration::from_secs(120))
            .build();
        Self { url: url.trim_end_matches('/').to_owned(), token, agent }
    }

    /// The controller's URL, as requests use it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET /api/v1/leader`: who answers and who leads.
    pub fn leader(&self) -> Result<LeaderAnswer> {
        self.json(self.request("GET", "/api/v1/leader").call())
    }

    /// `PUT /api/v1/specs/{name}`: stores a spec (idempotent: an identical one is unchanged).
    pub fn apply(&self, spec: &Spec) -> Result<ApplyAnswer> {
        let path = format!("/api/v1/specs/{}", segment(&spec.name));
        self.json(self.request("PUT", &path).send_json(spec))
    }

    /// `GET /api/v1/specs`.
    pub fn specs(&self) -> Result<Vec<SpecRecord>> {
        self.json(self.request("GET", "/api/v1/specs").call())
    }

    /// `GET /api/v1/specs/{name}`.
    pub fn spec(&self, name: &str) -> Result<SpecRecord> {
        self.json(self.request("GET", &format!("/api/v1/specs/{}", segment(name))).call())
    }

    /// `DELETE /api/v1/specs/{name}`.
    pub fn delete(&self, name: &str) -> Result<DeleteAnswer> {
        self.json(self.request("DELETE", &format!("/api/v1/specs/{}", segment(name))).call())
    }

    /// `POST /api/v1/artifacts?sha256=`: pushes a module's bytes, pinned to their sha256.
    pub fn push(&self, bytes: &[u8], sha256: &str) -> Result<PushAnswer> {
        let path = format!("/api/v1/artifacts?sha256={}", segment(sha256));
        let request = self.request("POST", &path).set("content-type", "application/octet-stream");
        self.json(request.send_bytes(bytes))
    }

    /// Whether the fleet has the artifact (`HEAD /api/v1/artifacts/{sha256}`; the bytes are not
    /// transferred).
    pub fn has_artifact(&self, sha256: &str) -> Result<bool> {
        match self.request("HEAD", &format!("/api/v1/artifacts/{}", segment(sha256))).call() {
            Ok(_) => Ok(true),
            // A controller (or a proxy) that does not answer HEAD: the push finds out.
            Err(ureq::Error::Status(404 | 405 | 501, _)) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// `GET /api/v1/artifacts/{sha256}`: the bytes.
    pub fn artifact(&self, sha256: &str) -> Result<Vec<u8>> {
        let path = format!("/api/v1/artifacts/{}", segment(sha256));
        let response = self.request("GET", &path).call().map_err(|e| self.error(e))?;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .read_to_end(&mut bytes)
            .map_err(|e| ClientError::Protocol { url: self.url.clone() + &path, message: e.to_string() })?;
        Ok(bytes)
    }

    /// `GET /api/v1/status[?module=M]`.
    pub fn status(&self, module: Option<&str>) -> Result<FleetStatus> {
        let path = match module {
            Some(module) => format!("/api/v1/status?module={}", segment(module)),
            None => "/api/v1/status".to_owned(),
        };
        self.json(self.request("GET", &path).call())
    }

    /// `GET /api/v1/bases`.
    pub fn bases(&self) -> Result<Vec<BaseView>> {
        self.json(self.request("GET", "/api/v1/bases").call())
    }

    /// `POST /api/v1/bases/{id}/cordon`: no new replicas on the base; with `drain`, its
    /// replicas move off (each replacement serving before the old one goes).
    pub fn cordon(&self, base: &str, drain: bool, actor: &str, reason: Option<&str>) -> Result<CordonAnswer> {
        let path = format!("/api/v1/bases/{}/cordon", segment(base));
        let body = serde_json::json!({"drain": drain, "actor": actor, "reason": reason});
        self.json(self.request("POST", &path).send_json(body))
    }

    /// `DELETE /api/v1/bases/{id}/cordon`: the base is eligible again.
    pub fn uncordon(&self, base: &str) -> Result<UncordonAnswer> {
        self.json(self.request("DELETE", &format!("/api/v1/bases/{}/cordon", segment(base))).call())
    }

    /// `GET /api/v1/endpoints/{module}`.
    pub fn endpoints(&self, module: &str) -> Result<Endpoints> {
        self.json(self.request("GET", &format!("/api/v1/endpoints/{}", segment(module))).call())
    }

    /// `GET /api/v1/rollouts/{module}`: the rollout and the ones before it.
    pub fn rollout(&self, module: &str) -> Result<RolloutView> {
        self.json(self.request("GET", &format!("/api/v1/rollouts/{}", segment(module))).call())
    }

    /// `POST /api/v1/rollouts/{module}/{action}` (`pause`, `resume`, `promote`, `abort`):
    /// answers the record once the leader applied it (or as it stands after 5 s).
    pub fn rollout_command(
        &self,
        module: &str,
        action: &str,
        command: &CommandRequest,
    ) -> Result<RolloutView> {
        let path = format!("/api/v1/rollouts/{}/{}", segment(module), segment(action));
        self.json(self.request("POST", &path).send_json(command))
    }

    /// `GET /api/v1/logs/{module}[?version=V][&tail=N][&follow=true]`: every base's lines of
    /// the module, as NDJSON (`{"base", "line"}` or `{"base", "end"}` per line). Read as they
    /// come; with `follow` the answer has no end, and no read timeout.
    pub fn logs(
        &self,
        module: &str,
        version: Option<&str>,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<Box<dyn std::io::BufRead + Send>> {
        let mut path = format!("/api/v1/logs/{}", segment(module));
        let mut query = Vec::new();
        if let Some(version) = version {
            query.push(format!("version={}", segment(version)));
        }
        if let Some(tail) = tail {
            query.push(format!("tail={tail}"));
        }
        if follow {
            query.push("follow=true".to_owned());
        }
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let agent = if follow {
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).build()
        } else {
            self.agent.clone()
        };
        let mut request = agent.request("GET", &format!("{}{path}", self.url));
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

    fn json<T: DeserializeOwned>(&self, answer: Result<ureq::Response, ureq::Error>) -> Result<T> {
        let response = answer.map_err(|e| self.error(e))?;
        let url = response.get_url().to_owned();
        response.into_json().map_err(|e| ClientError::Protocol { url, message: e.to_string() })
    }

    fn error(&self, error: ureq::Error) -> ClientError {
        match error {
            ureq::Error::Status(status, response) => {
                let text = response.into_string().unwrap_or_default();
                match serde_json::from_str::<ErrorBody>(&text) {
                    Ok(body) => ClientError::Api { status, code: body.code, message: body.message },
                    // Something answered that is not a controller (a proxy, another server).
                    Err(_) => ClientError::Api {
                        status,
                        code: format!("HTTP_{status}"),
                        message: if text.trim().is_empty() {
                            "no error body (is this a pedestal controller?)".to_owned()
                        } else {
                            text.trim().chars().take(200).collect()
                        },
                    },
                }
            }
            ureq::Error::Transport(transport) => {
                ClientError::Unreachable { url: self.url.clone(), message: transport.to_string() }
            }
        }
    }
}

/// `text` as one URL path segment or query value: what a name may not carry as is
/// (`/`, `?`, `%`, spaces...) percent-encoded, so a typo never reaches another route.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_their_path_segment() {
        assert_eq!(segment("greeter-1.0_x"), "greeter-1.0_x");
        assert_eq!(segment("../leader"), "..%2Fleader");
        assert_eq!(segment("a b?c=d"), "a%20b%3Fc%3Dd");
    }

    #[test]
    fn bare_addresses_get_http() {
        assert_eq!(Client::new("127.0.0.1:7080/", None).url(), "http://127.0.0.1:7080");
        assert_eq!(Client::new("https://c.example:443", None).url(), "https://c.example:443");
    }
}
