//! `pedestal install FILE.so [--name N] [--activate] [--replace] [--sha256 HEX] [--sign KEY]
//! [--admin URL] [--token T] [--data-dir DIR] [--output json]`: uploads a module to a running base.
//!
//! It always pins the upload to the sha256 of the bytes it read (`?sha256=`, or the one given
//! with `--sha256`), and sends a signature when it has one: made on the fly with `--sign KEY`,
//! else `FILE.so.sig` when it exists.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use pedestal_base::signing::{SIGNATURE_HEADER, SecretKey, Signature, sha256, signature_beside};
use serde_json::Value;

use super::admin::{ApiArgs, encode};

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
    #[command(flatten)]
    api: ApiArgs,
}

pub fn run(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client()?;
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
    let line = signature.as_ref().map(Signature::to_line);
    let headers: Vec<(&str, &str)> = line.iter().map(|line| (SIGNATURE_HEADER, line.as_str())).collect();
    let reply: Value = client.upload(&format!("/api/v1/modules?{}", query.join("&")), &bytes, &headers)?;
    args.api.printer().print(&reply, || report(&reply, signature.as_ref()));
    Ok(ExitCode::SUCCESS)
}

fn report(reply: &Value, signature: Option<&Signature>) -> String {
    let text = |key: &str| reply[key].as_str().unwrap_or("?").to_owned();
    let signed = match (reply["signed_by"].as_str(), signature) {
        (Some(key), _) => format!("signed by {key}"),
        (None, Some(signature)) => {
            format!("signature by {} sent, not checked (the base has no --trusted-keys)", signature.key_id())
        }
        (None, None) => "unsigned".into(),
    };
    let mut out = format!(
        "installed {}@{} ({}) sha256 {}, {signed}, in {:.2} ms\n",
        text("name"),
        text("version"),
        text("state"),
        text("sha256"),
        reply["install_ms"].as_f64().unwrap_or(f64::NAN)
    );
    if let Some(replaced) = reply["replaced"]["version"].as_str() {
        out.push_str(&format!("  replaced {replaced} (drained and unloaded)\n"));
    }
    out
}
