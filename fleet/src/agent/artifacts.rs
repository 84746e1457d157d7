//! Artifacts: the bytes an assignment names, found by hash, and this base's store served to
//! peers at `GET /.pedestal/artifacts/{sha256}` on the traffic port (`.` is not valid in a
//! module name, so the path never shadows a module).

use std::{io::Read, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use pedestal_base::Registry;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::ErrorBody;

/// The path peers fetch artifacts at, below a base's traffic URL.
pub(crate) const PEER_PATH: &str = "/.pedestal/artifacts/";

/// How long one fetch from one source may take in all (connect, headers and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether `headers` carry `authorization: Bearer <token>` (the scheme in any case), compared
/// in constant time.
pub(crate) fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some((scheme, given)) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
    else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    bool::from(given.trim_start_matches(' ').as_bytes().ct_eq(token.as_bytes()))
}

/// The store's route, for [`pedestal_base::BaseBuilder::routes_with`].
pub(crate) fn routes(registry: Arc<Registry>, token: String) -> Router {
    Router::new().route("/.pedestal/artifacts/{sha256}", get(serve)).with_state((registry, Arc::new(token)))
}

fn refusal(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(ErrorBody { code: code.into(), message })).into_response()
}

/// `GET /.pedestal/artifacts/{sha256}`: the stored bytes, for peers holding the fleet token.
async fn serve(
    State((registry, token)): State<(Arc<Registry>, Arc<String>)>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, &token) {
        return refusal(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "the fleet token is required".into());
    }
    let Some(artifact) = registry.artifact(&sha256) else {
        return refusal(StatusCode::NOT_FOUND, "ARTIFACT_NOT_FOUND", format!("no artifact {sha256} here"));
    };
    let opened = match tokio::fs::File::open(&artifact.path).await {
        Ok(file) => file.metadata().await.map(|m| (file, m.len())),
        Err(e) => Err(e),
    };
    match opened {
        Ok((file, length)) => {
            // Streamed: an artifact may be as large as the base accepts.
            let chunks = futures_util::stream::unfold(file, |mut file| async move {
                use tokio::io::AsyncReadExt;
                let mut buffer = vec![0; 64 * 1024];
                match file.read(&mut buffer).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buffer.truncate(n);
                        Some((Ok(bytes::Bytes::from(buffer)), file))
                    }
                    Err(e) => Some((Err(e), file)),
                }
            });
            (
                [
                    (http::header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (http::header::CONTENT_LENGTH, length.to_string()),
                ],
                axum::body::Body::from_stream(chunks),
            )
                .into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            refusal(StatusCode::NOT_FOUND, "ARTIFACT_NOT_FOUND", format!("no artifact {sha256} here"))
        }
        Err(e) => refusal(StatusCode::INTERNAL_SERVER_ERROR, "IO_ERROR", format!("reading {sha256}: {e}")),
    }
}

/// Where an artifact may be fetched, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Source {
    /// A peer base's store (`<traffic_url>/.pedestal/artifacts/<sha>`, fleet token).
    Peer(String),
    /// A controller's store (`<url>/api/v1/artifacts/<sha>`, fleet token).
    Controller(String),
    /// The assignment's own URL (no token: it is outside the fleet).
    External(String),
}

/// Why no bytes were found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unavailable {
    /// `SHA256_MISMATCH` when some source answered bytes but none had the hash, otherwise
    /// `ARTIFACT_UNAVAILABLE`.
    pub(crate) code: &'static str,
    /// What each source said.
    pub(crate) message: String,
}

/// The bytes of artifact `sha256`: the base's store first (no transfer), then each source in
/// order; every answer is checked against the hash.
pub(crate) fn fetch(
    registry: &Registry,
    sha256: &str,
    sources: &[Source],
    token: &str,
) -> Result<Vec<u8>, Unavailable> {
    if let Some(artifact) = registry.artifact(sha256)
        && let Ok(bytes) = std::fs::read(&artifact.path)
        && hex::encode(Sha256::digest(&bytes)) == sha256
    {
        return Ok(bytes);
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout_read(Duration::from_secs(30))
        .timeout(FETCH_TIMEOUT)
        .build();
    // No artifact is larger than the base accepts.
    let max_bytes = registry.config().max_upload_bytes;
    let mut tried = Vec::new();
    let mut mismatched = false;
    for source in &shuffled_peers(sources) {
        let (url, bearer) = match source {
            Source::Peer(base) => (format!("{}{PEER_PATH}{sha256}", base.trim_end_matches('/')), true),
            Source::Controller(url) => {
                (format!("{}/api/v1/artifacts/{sha256}", url.trim_end_matches('/')), true)
            }
            Source::External(url) => (url.clone(), false),
        };
        let mut request = agent.get(&url);
        if bearer {
            request = request.set("authorization", &format!("Bearer {token}"));
        }
        let bytes = match request.call() {
            Ok(response) => {
                let mut bytes = Vec::new();
                match response.into_reader().take(max_bytes + 1).read_to_end(&mut bytes) {
                    Ok(_) if bytes.len() as u64 > max_bytes => {
                        tried.push(format!("{url}: over {max_bytes} bytes (the base's upload limit)"));
                        continue;
                    }
                    Ok(_) => bytes,
                    Err(e) => {
                        tried.push(format!("{url}: {e}"));
                        continue;
                    }
                }
            }
            Err(ureq::Error::Status(status, _)) => {
                tried.push(format!("{url}: HTTP {status}"));
                continue;
            }
            Err(e) => {
                tried.push(format!("{url}: {e}"));
                continue;
            }
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual == sha256 {
            return Ok(bytes);
        }
        mismatched = true;
        tried.push(format!("{url}: the bytes have sha256 {actual}"));
    }
    let message = if tried.is_empty() {
        format!("artifact {sha256} is in no store this base can reach, and the assignment has no url")
    } else {
        format!("artifact {sha256} not found: {}", tried.join("; "))
    };
    Err(Unavailable { code: if mismatched { "SHA256_MISMATCH" } else { "ARTIFACT_UNAVAILABLE" }, message })
}

/// `sources` with the peers in a random order (still first): the load of a new artifact
/// spreads over the bases that have it, not on the first in key order.
fn shuffled_peers(sources: &[Source]) -> Vec<Source> {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new();
    let (mut peers, others): (Vec<Source>, Vec<Source>) =
        sources.iter().cloned().partition(|s| matches!(s, Source::Peer(_)));
    peers.sort_by_cached_key(|peer| seed.hash_one(peer));
    peers.into_iter().chain(others).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers, "0123456789abcdef"));
        headers.insert("authorization", "Bearer 0123456789abcdef".parse().unwrap());
        assert!(authorized(&headers, "0123456789abcdef"));
        assert!(!authorized(&headers, "0123456789abcdeX"));
        assert!(!authorized(&headers, "0123456789abcdef0"));
        headers.insert("authorization", "Basic 0123456789abcdef".parse().unwrap());
        assert!(!authorized(&headers, "0123456789abcdef"));
        headers.insert("authorization", "bearer 0123456789abcdef".parse().unwrap());
        assert!(authorized(&headers, "0123456789abcdef"), "the scheme in any case");
        headers.insert("authorization", "BEARER  0123456789abcdef".parse().unwrap());
        assert!(authorized(&headers, "0123456789abcdef"));
        headers.insert("authorization", "Bearer".parse().unwrap());
        assert!(!authorized(&headers, "0123456789abcdef"));
    }

    #[test]
    fn peers_come_first_in_any_order_then_controllers_then_the_url() {
        let sources: Vec<Source> = (0..8)
            .map(|i| Source::Peer(format!("http://peer{i}")))
            .chain([Source::Controller("http://c".into()), Source::External("http://x".into())])
            .collect();
        let orders: std::collections::BTreeSet<Vec<Source>> =
            (0..20).map(|_| shuffled_peers(&sources)).collect();
        assert!(orders.len() > 1, "shuffled");
        for order in orders {
            assert!(order[..8].iter().all(|s| matches!(s, Source::Peer(_))));
            assert_eq!(order[8..], sources[8..]);
        }
    }
}
