//! `cargo xtask deploy <module dir or package> [--admin URL] [--token TOKEN | --token-file FILE |
//! --data-dir DIR] [--sign KEY] [--watch]`
//!
//! The operations token is, in this order: `--token`, `PEDESTAL_ADMIN_TOKEN`, `--token-file`,
//! the `admin-token` file the base generated in `--data-dir` (or `PEDESTAL_DATA_DIR`), else in
//! `./pedestal-data` (the base's default) or the demo's `target/demo-data`.
//!
//! With `--watch`, keeps running: every change under the module's directory rebuilds it and
//! deploys it again with `strategy=replace` (a new version takes the traffic and the old one is
//! unloaded; the same version is stopped and started again).
//!
//! Every upload is pinned to the sha256 of the bytes read (`?sha256=`). With `--sign KEY` (a
//! `pedestal keygen` secret key), each build is signed before it is uploaded: the signature is
//! written beside the library (`<lib>.so.sig`) and sent in the `X-Pedestal-Signature` header, as
//! a base with `--trusted-keys` requires.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use notify::{EventKind, RecursiveMode, Watcher};

use anyhow::{Context, bail};
use serde_json::Value;

use pedestal_signing::SecretKey;

use crate::{cargo, flag};

/// Where and how to upload.
struct Upload {
    admin: String,
    token: Option<String>,
    /// Signs each build before it is uploaded.
    key: Option<SecretKey>,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(target) = args.first().filter(|a| !a.starts_with("--")) else {
        bail!(
            "usage: cargo xtask deploy <module dir or package> [--admin URL] \
             [--token TOKEN | --token-file FILE | --data-dir DIR] [--sign KEY] [--watch]"
        );
    };
    let admin = flag(args, "--admin").unwrap_or_else(|| "http://127.0.0.1:7071".into());
    let token = token(args)?;
    let key = flag(args, "--sign")
        .map(|path| {
            SecretKey::load(Path::new(&path)).with_context(|| format!("reading the secret key {path}"))
        })
        .transpose()?;
    let upload = Upload { admin, token, key };
    if args.iter().any(|a| a == "--watch") {
        return watch(target, &upload);
    }
    let library = build(target)?;
    let reply = upload.send(&library, "")?;
    report(&reply);
    Ok(())
}

/// The operations token (see the module docs); `None` when none is found (the base then
/// answers `401`, which says so).
fn token(args: &[String]) -> anyhow::Result<Option<String>> {
    if let Some(token) = flag(args, "--token").or_else(|| std::env::var("PEDESTAL_ADMIN_TOKEN").ok()) {
        return Ok(Some(token));
    }
    if let Some(file) = flag(args, "--token-file") {
        return read_token(Path::new(&file)).map(Some);
    }
    // A token found on this machine goes only to a base on this machine.
    let admin = flag(args, "--admin").unwrap_or_else(|| "http://127.0.0.1:7071".into());
    if !is_loopback_url(&admin) {
        return Ok(None);
    }
    let data_dir = flag(args, "--data-dir").or_else(|| std::env::var("PEDESTAL_DATA_DIR").ok());
    let candidates = match data_dir {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![PathBuf::from("pedestal-data"), crate::project_root().join("target/demo-data")],
    };
    for dir in candidates {
        let file = dir.join("admin-token");
        if file.exists() {
            eprintln!("using the operations token in {}", file.display());
            return read_token(&file).map(Some);
        }
    }
    Ok(None)
}

/// Whether the operations URL names this machine (a loopback address or `localhost`).
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads a token file (`<data-dir>/admin-token`, say).
pub fn read_token(file: &Path) -> anyhow::Result<String> {
    let token =
        std::fs::read_to_string(file).with_context(|| format!("reading the token {}", file.display()))?;
    Ok(token.trim().to_owned())
}

fn report(reply: &Value) {
    println!(
        "deployed {}@{} sha256 {} in {:.2} ms (interface {})",
        reply["name"].as_str().unwrap_or("?"),
        reply["version"].as_str().unwrap_or("?"),
        reply["sha256"].as_str().unwrap_or("?"),
        reply["install_ms"].as_f64().unwrap_or(f64::NAN),
        reply["interface_version"].as_str().unwrap_or("?"),
    );
    if let Some(replaced) = reply["replaced"]["version"].as_str() {
        println!("  replaced {replaced} (drained and unloaded)");
    }
}

/// Deploys `target` now and again after every change to its sources, until interrupted.
fn watch(target: &str, upload: &Upload) -> anyhow::Result<()> {
    let dir = source_dir(target)?;
    let (events, changes) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let _ = events.send(event);
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    println!("watching {} (Ctrl-C stops)", dir.display());
    let target_dir = dir.join("target");
    loop {
        let deployed = build(target).and_then(|library| upload.send(&library, "strategy=replace"));
        match deployed {
            Ok(reply) => report(&reply),
            Err(e) if e.to_string().contains("ALREADY_INSTALLED") => println!("unchanged: already running"),
            Err(e) => eprintln!("not deployed: {e:#}"),
        }
        // Wait for a change to a source (not to build output), then for the editor to finish.
        loop {
            let event = changes.recv()?;
            let relevant =
                matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_))
                    && event.paths.iter().any(|p| !p.starts_with(&target_dir));
            if relevant {
                break;
            }
        }
        while changes.recv_timeout(Duration::from_millis(300)).is_ok() {}
    }
}

/// The directory holding `target`'s sources: the directory itself, or the package's.
fn source_dir(target: &str) -> anyhow::Result<PathBuf> {
    let dir = Path::new(target);
    if dir.join("Cargo.toml").exists() {
        return Ok(dir.canonicalize()?);
    }
    let output = cargo().args(["metadata", "--format-version", "1", "--no-deps"]).output()?;
    let metadata: Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == target)
        .and_then(|p| p["manifest_path"].as_str())
        .with_context(|| format!("no package named {target} in this workspace"))?;
    Ok(Path::new(manifest).parent().unwrap().to_owned())
}

/// Builds the module in release and returns the path of its `.so`.
pub fn build(target: &str) -> anyhow::Result<PathBuf> {
    let mut command = cargo();
    command.args(["build", "--release", "--message-format=json-render-diagnostics"]);
    let dir = Path::new(target);
    if dir.join("Cargo.toml").exists() {
        command.arg("--manifest-path").arg(dir.join("Cargo.toml").canonicalize()?);
    } else {
        command.args(["-p", target]);
    }
    let mut child = command.stdout(Stdio::piped()).spawn().context("running cargo build")?;
    let mut library = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let message: Value = serde_json::from_str(&line?).unwrap_or(Value::Null);
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib =
            message["target"]["crate_types"].as_array().is_some_and(|t| t.iter().any(|t| t == "cdylib"));
        if !is_cdylib {
            continue;
        }
        let so = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|f| f.ends_with(".so"));
        library = so.map(PathBuf::from);
    }
    if !child.wait()?.success() {
        bail!("building {target} failed");
    }
    library
        .with_context(|| format!("{target} did not produce a cdylib (is `crate-type = [\"cdylib\"]` set?)"))
}

impl Upload {
    /// Signs (with `--sign`) and uploads a built module.
    fn send(&self, library: &Path, query: &str) -> anyhow::Result<Value> {
        let signature = match &self.key {
            Some(key) => {
                let signed = pedestal_signing::sign_file(key, library)?;
                println!("signed with key {} ({})", key.id(), signed.path.display());
                Some(signed.signature.to_line())
            }
            None => None,
        };
        install_signed(&self.admin, self.token.as_deref(), library, query, signature.as_deref())
    }
}

/// Uploads a built module to a base's operations API, with an optional query string
/// (`strategy=replace`...).
pub fn install(admin: &str, token: Option<&str>, library: &Path, query: &str) -> anyhow::Result<Value> {
    install_signed(admin, token, library, query, None)
}

/// [`install`], with a signature line for the `X-Pedestal-Signature` header; the upload is
/// pinned to the sha256 of the bytes read.
fn install_signed(
    admin: &str,
    token: Option<&str>,
    library: &Path,
    query: &str,
    signature: Option<&str>,
) -> anyhow::Result<Value> {
    let bytes = std::fs::read(library).with_context(|| format!("reading {}", library.display()))?;
    let pin = format!("sha256={}", hex(&pedestal_signing::sha256(&bytes)));
    let query = if query.is_empty() { pin } else { format!("{query}&{pin}") };
    let mut request = ureq::post(&format!("{admin}/api/v1/modules?{query}"))
        .set("content-type", "application/octet-stream");
    if let Some(token) = token {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    if let Some(signature) = signature {
        request = request.set("x-pedestal-signature", signature);
    }
    let started = Instant::now();
    match request.send_bytes(&bytes) {
        Ok(response) => Ok(response.into_json()?),
        Err(ureq::Error::Status(status, response)) => {
            let body: Value = response.into_json().unwrap_or(Value::Null);
            bail!(
                "the base refused {} ({status} {}): {}",
                library.display(),
                body["code"].as_str().unwrap_or("?"),
                body["message"].as_str().unwrap_or("")
            )
        }
        Err(e) => bail!(
            "cannot reach the base at {admin} after {:?}: {e} (is `pedestal serve` running?)",
            started.elapsed()
        ),
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
