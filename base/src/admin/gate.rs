//! The operations API's front door: what a request must be before any handler sees it.
//!
//! In order: header fields within [`MAX_HEADER_BYTES`]; a `Host` the base answers to (DNS
//! rebinding); no browser sending it for another site (`Origin`, `Sec-Fetch-Site`); the bearer
//! token (compared in constant time, wrong guesses throttled per client); and no body of a type
//! a browser may send cross-site without asking first (`text/plain`, forms).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, Method, header},
    middleware::Next,
    response::Response,
};
use subtle::ConstantTimeEq;

use super::token::AdminToken;
use crate::{
    error::{Error, Result},
    error_response::Refusal,
};

/// The largest total of header fields (names, values, separators) the operations API reads.
/// Below hyper's own read buffer (about 400 KiB), so an oversized request meets this JSON
/// `431` rather than hyper's empty one; hyper still answers above that, and beyond its
/// 100 header fields.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Who a request was authenticated as, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// It presented the operations token.
    Token,
    /// It presented nothing valid (refused, or a route open without a token).
    Anonymous,
}

impl Identity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Anonymous => "anonymous",
        }
    }
}

/// Everything the front door checks against: shared by every request.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) token: AdminToken,
    pub(crate) hosts: AllowedHosts,
    pub(crate) throttle: Arc<Throttle>,
    /// `GET /metrics` answers without the token (`--metrics-public`).
    pub(crate) metrics_public: bool,
}

/// The middleware: refuses what must not reach a handler, and tags the answer with who asked.
pub(crate) async fn guard(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let client = client_of(&request);
    let (identity, admitted) = gate.admit(&request, client);
    match admitted {
        Ok(()) => {
            let mut response = next.run(request).await;
            response.extensions_mut().insert(identity);
            response
        }
        // Logged by the audit layer (rate-limited: a flood of refusals must not flood the log).
        Err(refusal) => {
            let mut response = axum::response::IntoResponse::into_response(Refusal(refusal));
            response.extensions_mut().insert(identity);
            response
        }
    }
}

/// The client's address, when the server recorded it (it does not for an app without a socket).
pub(crate) fn client_of(request: &Request) -> Option<SocketAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0)
}

pub(crate) fn display_client(client: Option<SocketAddr>) -> String {
    client.map_or_else(|| "unknown".to_owned(), |c| c.to_string())
}

impl Gate {
    /// Who the request is (as far as it got) and whether it may go on.
    fn admit(&self, request: &Request, client: Option<SocketAddr>) -> (Identity, Result<()>) {
        if let Err(refusal) = self.check_origin(request) {
            return (Identity::Anonymous, Err(refusal));
        }
        let identity = if is_open(request, self.metrics_public) {
            Identity::Anonymous
        } else {
            match self.authenticate(request.headers(), client) {
                Ok(()) => Identity::Token,
                Err(refusal) => return (Identity::Anonymous, Err(refusal)),
            }
        };
        if !matches!(*request.method(), Method::GET | Method::HEAD)
            && let Err(refusal) = refuse_simple_bodies(request.headers())
        {
            return (identity, Err(refusal));
        }
        (identity, Ok(()))
    }

    /// Header size, `Host`, then the browser's context: checked before the token, so neither a
    /// rebinding page nor another site ever gets to try one.
    fn check_origin(&self, request: &Request) -> Result<()> {
        let headers = request.headers();
        let size: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
        if size > MAX_HEADER_BYTES {
            return Err(Error::HeadersTooLarge { size, limit: MAX_HEADER_BYTES });
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        if !self.hosts.allows(host, 80) {
            return Err(Error::HostNotAllowed { host: host.to_owned() });
        }
        check_browser_context(headers, host, &self.hosts)
    }

    /// Checks the bearer token. Wrong guesses spend the client's throttle; what a throttled
    /// client may still do depends on the token's strength (see [`AdminToken::is_strong`]).
    fn authenticate(&self, headers: &HeaderMap, client: Option<SocketAddr>) -> Result<()> {
        let Some(presented) = bearer(headers) else {
            return Err(Error::Unauthorized);
        };
        let key = client.map(|c| c.ip());
        let now = Instant::now();
        let right = bool::from(presented.as_bytes().ct_eq(self.token.secret().as_bytes()));
        // A strong token cannot be guessed in any time the throttle could buy, so the throttle
        // only keeps the noise (and the log) down: the right token always gets in, and clears
        // its client's bucket, so wrong guesses from the same address (another local process,
        // everyone behind one proxy) can never lock the operator out.
        if right && self.token.is_strong() {
            self.throttle.forgive(key);
            return Ok(());
        }
        // A weak token is only as safe as the throttle keeps it: a throttled client is refused
        // before the comparison counts, so a right guess then is not told apart from a wrong
        // one (and the operator waits with the guesser). Nor does the right one clear the
        // bucket: a guesser sharing the operator's address would get a fresh burst with every
        // request the operator makes.
        if let Some(retry_after_secs) = self.throttle.blocked(key, now) {
            return Err(Error::TooManyAttempts { retry_after_secs });
        }
        if right {
            return Ok(());
        }
        self.throttle.failed(key, now);
        Err(Error::Unauthorized)
    }
}

/// `GET /api/v1/ready` answers without a token: probes (a kubelet's, a load balancer's) cannot
/// read the token file, and it tells no more than whether the base is ready. So does
/// `GET /metrics` when the operator chose so (`--metrics-public`), and the console's static
/// files, which hold no data (the page asks for the token and calls the API with it). The
/// OpenAPI document asks it too, for each operation's `security`.
pub(super) fn is_open(request: &Request, metrics_public: bool) -> bool {
    let path = request.uri().path();
    *request.method() == Method::GET
        && (path == "/api/v1/ready"
            || metrics_public && path == "/metrics"
            || super::console::OPEN_PATHS.contains(&path))
}

/// The credentials of an `Authorization: Bearer <token>` header (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

/// Refuses a request a browser makes for another site: `Sec-Fetch-Site: cross-site|same-site`
/// (another port of `localhost` is the same site), or an `Origin` that is neither the request's
/// own `Host` (same host and port) nor one of `--admin-allowed-hosts` (see
/// [`AllowedHosts::allows_origin`]). Tools like curl send neither header.
fn check_browser_context(headers: &HeaderMap, host: &str, hosts: &AllowedHosts) -> Result<()> {
    let text = |name| headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && (site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site"))
    {
        return Err(Error::CrossOrigin { header: "Sec-Fetch-Site", value: site });
    }
    if let Some(origin) = text(header::ORIGIN) {
        let lower = origin.to_ascii_lowercase();
        let same = match (lower.strip_prefix("http://"), lower.strip_prefix("https://")) {
            (Some(authority), _) => hosts.allows_origin(authority, 80, host),
            (_, Some(authority)) => hosts.allows_origin(authority, 443, host),
            _ => false,
        };
        if !same {
            return Err(Error::CrossOrigin { header: "Origin", value: origin });
        }
    }
    Ok(())
}

/// The types an HTML form or a `fetch` without preflight may send to any site.
const SIMPLE_TYPES: [&str; 3] = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"];

fn refuse_simple_bodies(headers: &HeaderMap) -> Result<()> {
    match media_type(headers) {
        Some(found) if SIMPLE_TYPES.contains(&found.as_str()) => {
            Err(Error::UnsupportedMediaType { found, expected: "application/json (or no body)" })
        }
        _ => Ok(()),
    }
}

/// The request's media type, lower case, without parameters (`; charset=utf-8`).
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?;
    let text = String::from_utf8_lossy(value.as_bytes());
    Some(text.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// Requires a body of type `application/json` (with any parameters); an empty body may come
/// without a type.
pub(crate) fn require_json(headers: &HeaderMap, body: &[u8]) -> Result<()> {
    match media_type(headers) {
        Some(found) if found == "application/json" => Ok(()),
        None if body.is_empty() => Ok(()),
        found => Err(Error::UnsupportedMediaType {
            found: found.unwrap_or_default(),
            expected: "application/json",
        }),
    }
}

/// The `Host` values the operations API answers to.
#[derive(Debug, Clone)]
pub(crate) struct AllowedHosts {
    listen: SocketAddr,
    /// `--admin-allowed-hosts`, lower case: `(name, Some(port))` or `(name, None)` for any port.
    extra: Vec<(String, Option<u16>)>,
}

impl AllowedHosts {
    /// The names for an operations API listening on `listen` (its bound address: the port is
    /// known only once bound), plus `extra` (`name` or `name:port`).
    pub(crate) fn new(listen: SocketAddr, extra: &[String]) -> Self {
        let extra = extra
            .iter()
            .map(|entry| entry.trim().to_ascii_lowercase())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let (name, port) = split_authority(&entry);
                (name.to_owned(), port)
            })
            .collect();
        Self { listen, extra }
    }

    /// Whether `authority` (`name[:port]`, `[v6][:port]`) is one of them; `default_port` is the
    /// scheme's, for an authority without one.
    pub(crate) fn allows(&self, authority: &str, default_port: u16) -> bool {
        let lower = authority.trim().to_ascii_lowercase();
        let (name, port) = split_authority(&lower);
        if name.is_empty() {
            return false;
        }
        if self
            .extra
            .iter()
            .any(|(allowed, allowed_port)| allowed == name && allowed_port.is_none_or(|p| Some(p) == port))
        {
            return true;
        }
        if port.unwrap_or(default_port) != self.listen.port() {
            return false;
        }
        let ip = name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
        name == "localhost"
            || ip.is_some_and(|ip| {
                ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified()
            })
    }
}

impl AllowedHosts {
    /// Whether a page at `origin` (`name[:port]`, its scheme's `default_port` if none) may call
    /// the API: it is the request's own `host` (the same name and port: the API's own origin,
    /// whatever address it listens on), or one of the extra names, on the port written with it
    /// or else the API's own port (a proxy that rewrites `Host` needs `name:443` written).
    pub(crate) fn allows_origin(&self, origin: &str, default_port: u16, host: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let (name, port) = split_authority(&origin);
        let port = port.unwrap_or(default_port);
        if name.is_empty() || origin.contains('/') {
            return false;
        }
        let host = host.trim().to_ascii_lowercase();
        let (host_name, host_port) = split_authority(&host);
        if host_name == name && host_port.unwrap_or(default_port) == port {
            return true;
        }
        self.extra.iter().any(|(allowed, allowed_port)| {
            allowed == name && allowed_port.unwrap_or(self.listen.port()) == port
        })
    }
}

/// `name:port` → (`name`, port); `[v6]:port` → (`[v6]`, port); no (numeric) port → `None`.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let port_at = match authority.rfind(':') {
        Some(at) if !authority[..at].contains(':') || authority[..at].ends_with(']') => at,
        _ => return (authority, None),
    };
    match authority[port_at + 1..].parse() {
        Ok(port) => (&authority[..port_at], Some(port)),
        Err(_) => (authority, None),
    }
}

/// Failed authentications per client: a token bucket each, [`Throttle::BURST`] failures, then
/// one more per [`Throttle::REFILL`]. Bounded: at most [`Throttle::CLIENTS`] clients are
/// remembered; a new one beyond makes the throttle forget the client it holds least against
/// (refilled buckets first, then the fullest), so many addresses cannot buy a throttled one a
/// fresh burst, and no client ever spends from another's bucket.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    buckets: Mutex<HashMap<Option<IpAddr>, Bucket>>,
}

/// Failures a client may still spend, as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    left: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / Throttle::REFILL.as_secs_f64();
        (self.left + gained).min(Throttle::BURST)
    }
}

impl Throttle {
    const BURST: f64 = 5.0;
    const REFILL: Duration = Duration::from_secs(1);
    const CLIENTS: usize = 4096;

    /// `Some(seconds to wait)` when `client` has no failure left to spend.
    fn blocked(&self, client: Option<IpAddr>, now: Instant) -> Option<u64> {
        let key = Self::key(client);
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let left = buckets.get(&key).map_or(Self::BURST, |bucket| bucket.refilled(now));
        (left < 1.0).then(|| ((1.0 - left) * Self::REFILL.as_secs_f64()).ceil().max(1.0) as u64)
    }

    fn failed(&self, client: Option<IpAddr>, now: Instant) {
        let key = Self::key(client);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= Self::CLIENTS {
            buckets.retain(|_, bucket| bucket.refilled(now) < Self::BURST);
            if buckets.len() >= Self::CLIENTS {
                let fullest = buckets
                    .iter()
                    .max_by(|a, b| a.1.refilled(now).total_cmp(&b.1.refilled(now)))
                    .map(|(key, _)| *key);
                if let Some(fullest) = fullest {
                    buckets.remove(&fullest);
                }
            }
        }
        let left = buckets.get(&key).map_or(Self::BURST, |bucket| bucket.refilled(now));
        buckets.insert(key, Bucket { left: (left - 1.0).max(0.0), at: now });
    }

    /// The right (strong) token: `client` owes nothing any more.
    fn forgive(&self, client: Option<IpAddr>) {
        let key = Self::key(client);
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }

    /// The bucket `client` spends from: its own, or its IPv6 /64's (one host holds a whole /64).
    fn key(client: Option<IpAddr>) -> Option<IpAddr> {
        client.map(|ip| match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
            v4 => v4,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(listen: &str, extra: &[&str], host: &str, allowed: bool) {
        let extra: Vec<String> = extra.iter().map(|e| e.to_string()).collect();
        let hosts = AllowedHosts::new(listen.parse().unwrap(), &extra);
        assert_eq!(hosts.allows(host, 80), allowed, "listen {listen}, extra {extra:?}, Host {host:?}");
    }

    #[test]
    fn hosts_the_base_answers_to() {
        check("127.0.0.1:7071", &[], "127.0.0.1:7071", true);
        check("127.0.0.1:7071", &[], "localhost:7071", true);
        check("127.0.0.1:7071", &[], "LOCALHOST:7071", true);
        check("127.0.0.1:7071", &[], "[::1]:7071", true);
        check("127.0.0.1:7071", &[], "rebind.evil.example:7071", false);
        check("127.0.0.1:7071", &[], "localhost:7072", false);
        check("127.0.0.1:7071", &[], "localhost", false);
        check("127.0.0.1:80", &[], "localhost", true);
        check("127.0.0.1:7071", &[], "", false);
        check("127.0.0.1:7071", &[], "10.0.0.5:7071", false);
        check("0.0.0.0:7071", &[], "10.0.0.5:7071", true);
        check("[::]:7071", &[], "[fd00::5]:7071", true);
        check("0.0.0.0:7071", &[], "ops.example.com:7071", false);
        check("10.0.0.5:7071", &[], "10.0.0.5:7071", true);
        check("127.0.0.1:7071", &["ops.example.com"], "ops.example.com", true);
        check("127.0.0.1:7071", &["ops.example.com"], "OPS.example.com:8443", true);
        check("127.0.0.1:7071", &["ops.example.com:8443"], "ops.example.com:8443", true);
        check("127.0.0.1:7071", &["ops.example.com:8443"], "ops.example.com:9443", false);
        check("127.0.0.1:7071", &["ops.example.com"], "evil.ops.example.com", false);
    }

    fn check_origin(listen: &str, extra: &[&str], host: &str, origin: &str, allowed: bool) {
        let extra: Vec<String> = extra.iter().map(|e| e.to_string()).collect();
        let hosts = AllowedHosts::new(listen.parse().unwrap(), &extra);
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, origin.parse().unwrap());
        assert_eq!(
            check_browser_context(&headers, host, &hosts).is_ok(),
            allowed,
            "listen {listen}, extra {extra:?}, Host {host:?}, Origin {origin:?}"
        );
    }

    #[test]
    fn origins_the_api_accepts() {
        check_origin("127.0.0.1:7071", &[], "127.0.0.1:7071", "http://127.0.0.1:7071", true);
        check_origin("127.0.0.1:7071", &[], "localhost:7071", "http://localhost:7071", true);
        check_origin("127.0.0.1:7071", &[], "127.0.0.1:7071", "http://localhost:7071", false);
        check_origin("127.0.0.1:7071", &[], "127.0.0.1:7071", "http://localhost:3000", false);
        check_origin("127.0.0.1:7071", &[], "127.0.0.1:7071", "http://evil.example", false);
        check_origin("127.0.0.1:7071", &[], "127.0.0.1:7071", "null", false);
        // Listening on every address, another IP literal is another site.
        check_origin("0.0.0.0:7071", &[], "10.0.0.5:7071", "http://10.0.0.5:7071", true);
        check_origin("0.0.0.0:7071", &[], "10.0.0.5:7071", "http://10.0.0.9:7071", false);
        check_origin("[::]:7071", &[], "[fd00::5]:7071", "http://[fd00::6]:7071", false);
        // Behind a proxy that keeps Host: its own origin.
        check_origin(
            "127.0.0.1:7071",
            &["ops.example.com"],
            "ops.example.com",
            "https://ops.example.com",
            true,
        );
        // An extra name without a port: only on the API's port, unless the operator wrote one.
        check_origin(
            "127.0.0.1:7071",
            &["ops.example.com"],
            "127.0.0.1:7071",
            "http://ops.example.com:3000",
            false,
        );
        check_origin(
            "127.0.0.1:7071",
            &["ops.example.com"],
            "127.0.0.1:7071",
            "http://ops.example.com:7071",
            true,
        );
        check_origin(
            "127.0.0.1:7071",
            &["ops.example.com:443"],
            "127.0.0.1:7071",
            "https://ops.example.com",
            true,
        );
        check_origin(
            "127.0.0.1:7071",
            &["ops.example.com:443"],
            "127.0.0.1:7071",
            "https://ops.example.com:8443",
            false,
        );
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer(&headers).map(str::to_owned)
        };
        assert_eq!(with("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("BEARER  abc ").as_deref(), Some("abc"));
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearerabc"), None);
    }

    #[test]
    fn the_throttle_allows_a_burst_then_one_failure_per_refill() {
        let throttle = Throttle::default();
        let client = Some("192.0.2.1".parse().unwrap());
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(throttle.blocked(client, start), None);
            throttle.failed(client, start);
        }
        assert_eq!(throttle.blocked(client, start), Some(1));
        // Another client is not affected.
        assert_eq!(throttle.blocked(Some("192.0.2.2".parse().unwrap()), start), None);
        assert_eq!(throttle.blocked(client, start + Throttle::REFILL), None);
    }

    #[test]
    fn the_throttle_table_is_bounded() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for n in 0..(Throttle::CLIENTS as u32 + 100) {
            throttle.failed(Some(IpAddr::V4(n.into())), now);
        }
        assert!(throttle.buckets.lock().unwrap().len() <= Throttle::CLIENTS);
    }

    #[test]
    fn a_full_throttle_table_forgets_the_fullest_bucket_and_never_shares_one() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for n in 0..Throttle::CLIENTS as u32 {
            throttle.failed(Some(IpAddr::V4(n.into())), now);
        }
        let guesser = Some("198.51.100.1".parse().unwrap());
        for _ in 0..5 {
            throttle.failed(guesser, now);
        }
        assert!(throttle.blocked(guesser, now).is_some());
        // A client new to the full table has a bucket of its own, not the guesser's.
        let operator = Some("198.51.100.2".parse().unwrap());
        assert_eq!(throttle.blocked(operator, now), None);
        // More new clients push out the ones with most left, never the empty one.
        for n in 0..100u32 {
            throttle.failed(Some(IpAddr::V4((0xcb00_7100 + n).into())), now);
        }
        assert!(throttle.blocked(guesser, now).is_some(), "a throttled client was forgotten");
        assert!(throttle.buckets.lock().unwrap().len() <= Throttle::CLIENTS);
    }

    fn gate_with(token: &str) -> Gate {
        let config = crate::config::Config { admin_token: Some(token.to_owned()), ..Default::default() };
        Gate {
            token: AdminToken::resolve(&config).unwrap(),
            hosts: AllowedHosts::new("127.0.0.1:7071".parse().unwrap(), &[]),
            throttle: Arc::default(),
            metrics_public: false,
        }
    }

    fn presenting(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    /// Guesses wrong until the gate throttles `client`.
    fn throttle_by_guessing(gate: &Gate, client: Option<SocketAddr>) {
        let refusal = (0..10)
            .map(|n| gate.authenticate(&presenting(&format!("wrong-guess-number-{n:04}")), client))
            .find_map(|outcome| match outcome {
                Err(e @ Error::TooManyAttempts { .. }) => Some(e),
                _ => None,
            });
        assert!(refusal.is_some(), "never throttled");
    }

    #[test]
    fn a_strong_token_gets_in_while_its_client_is_throttled_and_clears_the_bucket() {
        let token = "0123456789abcdef0123456789abcdef";
        let gate = gate_with(token);
        let client = Some("127.0.0.1:40000".parse().unwrap());
        throttle_by_guessing(&gate, client);
        assert!(gate.authenticate(&presenting(token), client).is_ok());
        // Cleared: the next wrong guess is told it is wrong, not to wait.
        let next = gate.authenticate(&presenting("another-wrong-guess-xx"), client).unwrap_err();
        assert_eq!(next.code(), "UNAUTHORIZED");
    }

    #[test]
    fn a_weak_token_is_refused_while_its_client_is_throttled() {
        let token = "sixteen-chars-ok-but-31";
        let gate = gate_with(token);
        let client = Some("127.0.0.1:40000".parse().unwrap());
        throttle_by_guessing(&gate, client);
        let refused = gate.authenticate(&presenting(token), client).unwrap_err();
        assert_eq!(refused.code(), "TOO_MANY_ATTEMPTS");
        // Another client with it is fine.
        assert!(gate.authenticate(&presenting(token), Some("127.0.0.2:40000".parse().unwrap())).is_ok());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for n in 0..5u16 {
            throttle.failed(Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n))), now);
        }
        assert!(throttle.blocked(Some("2001:db8::ffff".parse().unwrap()), now).is_some());
        assert!(throttle.blocked(Some("2001:db8:0:1::1".parse().unwrap()), now).is_none());
    }
}
