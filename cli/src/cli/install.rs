//! `pedestal install FILE.so [--name N] [--activate] [--replace] [--sha256 HEX] [--sign KEY]
//! [--admin URL] [--token T] [--data-dir DIR]`: uploads a module to a running base.
//!
//! It always pins the upload to the sha256 of the bytes it read (`?sha256=`, or the one given
//! with `--sha256`), and sends a signature when it has one: made on the fly with `--sign KEY`,
//! else `FILE.so.sig` when it exists.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};
use pedestal_base::signing::{SIGNATURE_HEADER, SecretKey, Signature, sha256, signature_beside};
use serde_json::Value;

#[derive(clap::Args)]
pub struct InstallArgs {
    /// The module's `.so` file.
    file: PathBuf,
    /// Install under this name instead of the package's.
    #[arg(long)]
    name: Option<String>,
    /// Make the new version active even when another one is.
    #[arg(long)]
    activate: bool,
    /// Replace the running version (`strategy=replace`): it takes the traffic, the old one is
    /// drained and unloaded.
    #[arg(long)]
    replace: bool,
    /// The sha256 the file must have (default: the sha256 of what was read).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Sign the file with this secret key now (otherwise FILE.sig is sent when it exists).
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// The base's operations API.
    #[arg(long, env = "PEDESTAL_ADMIN_URL", value_name = "URL", default_value = "http://127.0.0.1:7071")]
    admin: String,
    /// Bearer token (default: `<data-dir>/admin-token`, when that file exists).
    #[arg(long, env = "PEDESTAL_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The base's data directory, to read its `admin-token` from (default: `./pedestal-data`).
    #[arg(long, env = "PEDESTAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

pub fn run(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let digest = sha256(&bytes);
    let signature = match &args.sign {
        Some(key) => {
            let key = SecretKey::load(key).context("reading the secret key")?;
            Some(key.sign(&digest))
        }
        None => signature_beside(&args.file)?,
    };
    let mut query = vec![("sha256", args.sha256.clone().unwrap_or_else(|| hex::encode(digest)))];
    if let Some(name) = &args.name {
        query.push(("name", name.clone()));
    }
    if args.activate {
        query.push(("activate", "true".into()));
    }
    if args.replace {
        query.push(("strategy", "replace".into()));
    }
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    let admin =
        if args.admin.contains("://") { args.admin.clone() } else { format!("http://{}", args.admin) };
    let url = format!("{}/api/v1/modules?{}", admin.trim_end_matches('/'), query.join("&"));

    let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).build();
    let mut request = agent.post(&url).set("content-type", "application/octet-stream");
    if let Some(token) = token(&args)? {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    if let Some(signature) = &signature {
        request = request.set(SIGNATURE_HEADER, &signature.to_line());
    }
    match request.send_bytes(&bytes) {
        Ok(response) => {
            let reply: Value = response.into_json().context("reading the base's answer")?;
            report(&reply, signature.as_ref());
            Ok(ExitCode::SUCCESS)
        }
        Err(ureq::Error::Status(status, response)) => {
            let body: Value = response.into_json().unwrap_or(Value::Null);
            let code = body["code"].as_str().unwrap_or("?");
            let message = body["message"].as_str().unwrap_or("");
            eprintln!("error: {code}: {message} (HTTP {status})");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => bail!("cannot reach the base at {admin}: {e} (is `pedestal serve` running?)"),
    }
}

fn report(reply: &Value, signature: Option<&Signature>) {
    let text = |key: &str| reply[key].as_str().unwrap_or("?").to_owned();
    let signed = match (reply["signed_by"].as_str(), signature) {
        (Some(key), _) => format!("signed by {key}"),
        (None, Some(signature)) => {
            format!("signature by {} sent, not checked (the base has no --trusted-keys)", signature.key_id())
        }
        (None, None) => "unsigned".into(),
    };
    println!(
        "installed {}@{} ({}) sha256 {}, {signed}, in {:.2} ms",
        text("name"),
        text("version"),
        text("state"),
        text("sha256"),
        reply["install_ms"].as_f64().unwrap_or(f64::NAN)
    );
    if let Some(replaced) = reply["replaced"]["version"].as_str() {
        println!("  replaced {replaced} (drained and unloaded)");
    }
}

/// `--token`, else `PEDESTAL_ADMIN_TOKEN` (both through clap), else the data directory's
/// `admin-token` file: `--data-dir`'s, or `./pedestal-data`'s when it exists.
fn token(args: &InstallArgs) -> anyhow::Result<Option<String>> {
    if let Some(token) = &args.token {
        return Ok(Some(token.clone()));
    }
    // A token found on this machine is only sent to a base on this machine: `--admin` pointing
    // elsewhere (over plain HTTP) must not carry the local base's token there.
    if !is_loopback_url(&args.admin) {
        return Ok(None);
    }
    let file = args.data_dir.as_deref().unwrap_or(Path::new("pedestal-data")).join("admin-token");
    match std::fs::read_to_string(&file) {
        Ok(token) => Ok(Some(token.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Whether the operations URL (`http://host:port`, or `host:port`) names this machine.
pub(crate) fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Percent-encodes a query value (everything but the unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::is_loopback_url;

    #[test]
    fn only_this_machine_is_loopback() {
        for url in ["http://127.0.0.1:7071", "127.0.0.2:7071", "http://[::1]:7071/", "http://LOCALHOST:1"] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in ["http://10.0.0.1:7071", "http://example.com", "http://127.0.0.1.evil.example:7071"] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }
}
