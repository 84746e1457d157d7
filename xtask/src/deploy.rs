//! `cargo xtask deploy <module dir or package> [--admin URL] [--token TOKEN]`

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{cargo, flag};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(target) = args.first().filter(|a| !a.starts_with("--")) else {
        bail!("usage: cargo xtask deploy <module dir or package> [--admin URL] [--token TOKEN]");
    };
    let admin = flag(args, "--admin").unwrap_or_else(|| "http://127.0.0.1:7071".into());
    let token = flag(args, "--token").or_else(|| std::env::var("PEDESTAL_ADMIN_TOKEN").ok());
    let library = build(target)?;
    let reply = install(&admin, token.as_deref(), &library)?;
    println!(
        "deployed {}@{} sha256 {} in {:.2} ms (interface {})",
        reply["name"].as_str().unwrap_or("?"),
        reply["version"].as_str().unwrap_or("?"),
        reply["sha256"].as_str().unwrap_or("?"),
        reply["install_ms"].as_f64().unwrap_or(f64::NAN),
        reply["interface_version"].as_str().unwrap_or("?"),
    );
    Ok(())
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

/// Uploads a built module to a base's operations API.
pub fn install(admin: &str, token: Option<&str>, library: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(library).with_context(|| format!("reading {}", library.display()))?;
    let mut request =
        ureq::post(&format!("{admin}/api/v1/modules")).set("content-type", "application/octet-stream");
    if let Some(token) = token {
        request = request.set("authorization", &format!("Bearer {token}"));
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
