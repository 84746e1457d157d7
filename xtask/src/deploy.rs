//! `cargo xtask deploy <module dir or package> [--admin URL] [--token TOKEN | --token-file FILE |
//! --data-dir DIR] [--sign KEY] [--inactive] [--allow-downgrade] [--watch]`
//!
//! Builds the module in release and deploys it as the developer means it, from what the base
//! runs (`GET /api/v1/modules/NAME`):
//! - the same bytes already taking the traffic: nothing to do (`unchanged`);
//! - the same version with new bytes: replaces the running build in its seat (`strategy=replace`);
//! - a newer version: takes the traffic, and the one that had it is drained and unloaded
//!   (`strategy=replace`); with `--inactive` it is installed beside it, without traffic;
//! - an older version: refused unless `--allow-downgrade`;
//! - nothing running: installed and active.
//!
//! It prints the version that now takes the traffic and the previous one, with the install
//! time. The directory may be anywhere (a module in its own repository); a name is a package of
//! this workspace.
//!
//! The operations token is, in this order: `--token`, `PEDESTAL_ADMIN_TOKEN`, `--token-file`,
//! the `admin-token` file the base generated in `--data-dir` (or `PEDESTAL_DATA_DIR`), else in
//! `./pedestal-data` (the base's default) or the demo's `target/demo-data`. It is checked with a
//! request without a body before anything is built, so a missing token reads as one.
//!
//! With `--watch`, keeps running: every change under the module's directory rebuilds it and
//! deploys it the same way, one line per round (build time, deploy time, outcome); a build that
//! fails leaves what ran before serving.
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
pub struct Upload {
    admin: String,
    token: Option<String>,
    /// Signs each build before it is uploaded.
    key: Option<SecretKey>,
}

/// What the developer asked for besides the build.
#[derive(Clone, Copy, Default)]
struct Intent {
    /// Install a new version beside the active one, which keeps the traffic (`--inactive`).
    inactive: bool,
    /// Deploy a version older than the active one (`--allow-downgrade`).
    downgrade: bool,
}

const USAGE: &str = "usage: cargo xtask deploy <module dir or package> [--admin URL] \
     [--token TOKEN | --token-file FILE | --data-dir DIR] [--sign KEY] [--inactive] \
     [--allow-downgrade] [--watch]\n       cargo xtask deploy --sha256 HEX [--name NAME] [--inactive] (an artifact in the base's store)";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(sha256) = flag(args, "--sha256") {
        return reinstall(
            &connect(args)?,
            &sha256,
            flag(args, "--name").as_deref(),
            args.iter().any(|a| a == "--inactive"),
        );
    }
    let Some(target) = args.first().filter(|a| !a.starts_with("--")) else {
        bail!("{USAGE}");
    };
    let target = Target::parse(target)?;
    let upload = connect(args)?;
    let intent = Intent {
        inactive: args.iter().any(|a| a == "--inactive"),
        downgrade: args.iter().any(|a| a == "--allow-downgrade"),
    };
    if args.iter().any(|a| a == "--watch") {
        return watch(&target, &upload, intent);
    }
    let build = build(&target)?;
    let outcome = deploy(&build, &upload, intent)?;
    println!("{}", outcome.describe());
    Ok(())
}

/// The base's address and token from the flags, checked with a request without a body first:
/// a missing or wrong token is told apart from a dead base.
fn connect(args: &[String]) -> anyhow::Result<Upload> {
    let admin = flag(args, "--admin").unwrap_or_else(|| "http://127.0.0.1:7071".into());
    let token = token(args)?;
    let key = flag(args, "--sign")
        .map(|path| {
            SecretKey::load(Path::new(&path)).with_context(|| format!("reading the secret key {path}"))
        })
        .transpose()?;
    let upload = Upload { admin, token, key };
    upload.check_access()?;
    Ok(upload)
}

/// `cargo xtask deploy --sha256 HEX [--name NAME] [--inactive]`: installs an artifact still in
/// the base's store again, by its hash; it takes the traffic (the version that had it drained
/// and unloaded) unless `--inactive`.
fn reinstall(upload: &Upload, sha256: &str, name: Option<&str>, inactive: bool) -> anyhow::Result<()> {
    let mut query = vec![if inactive { "strategy=install" } else { "strategy=replace" }.to_owned()];
    if let Some(name) = name {
        query.push(format!("name={name}"));
    }
    let path = format!("/api/v1/modules?{}", query.join("&"));
    let reply =
        upload.post_json(&path, &serde_json::json!({ "sha256": sha256 }), &format!("artifact {sha256}"))?;
    let outcome = Outcome::Deployed {
        active: reply["state"] == "active",
        previous: reply["replaced"]["version"]
            .as_str()
            .map(|v| (format!("{}@{v}", reply["name"].as_str().unwrap_or("?")), "drained and unloaded")),
        reply,
    };
    println!("{}", outcome.describe());
    Ok(())
}

/// `cargo xtask rollback NAME [--admin URL] [--token ...]`: returns a module to the build that
/// had its traffic before the last switch, replace or hand-over.
pub fn rollback(args: &[String]) -> anyhow::Result<()> {
    let Some(name) = args.first().filter(|a| !a.starts_with("--")) else {
        bail!(
            "usage: cargo xtask rollback NAME [--admin URL] [--token TOKEN | --token-file FILE | --data-dir DIR]"
        );
    };
    let upload = connect(args)?;
    let reply =
        upload.post_json(&format!("/api/v1/modules/{name}/rollback"), &serde_json::json!({}), name)?;
    let previous = match (reply["previous_version"].as_str(), reply["previous_state"].as_str()) {
        (Some(version), Some(state)) => format!("; previous: {name}@{version} ({state})"),
        _ => String::new(),
    };
    println!(
        "rolled back: {name}@{} takes the traffic again ({}, sha256 {}, in {:.1} ms){previous}",
        reply["active_version"].as_str().unwrap_or("?"),
        reply["how"].as_str().unwrap_or("?"),
        reply["sha256"].as_str().unwrap_or("?").get(..12).unwrap_or("?"),
        reply["rollback_ms"].as_f64().unwrap_or(f64::NAN),
    );
    Ok(())
}

impl Upload {
    /// An upload to `admin` with `token`, unsigned.
    pub fn new(admin: &str, token: Option<String>) -> Self {
        Self { admin: admin.to_owned(), token, key: None }
    }
}

/// Deploys a build the default way (see the module docs) and says what it did.
pub fn deploy_build(build: &Build, upload: &Upload) -> anyhow::Result<String> {
    Ok(deploy(build, upload, Intent::default())?.describe())
}

/// What `deploy` is given: a crate's directory (anything with a `/`, or an existing directory)
/// or the name of a package of this workspace.
pub enum Target {
    Dir(PathBuf),
    Package(String),
}

impl Target {
    pub fn parse(target: &str) -> anyhow::Result<Self> {
        let path = Path::new(target);
        let looks_like_path = target.contains('/') || target.starts_with('.') || path.is_dir();
        if !looks_like_path {
            return Ok(Self::Package(target.to_owned()));
        }
        if !path.is_dir() {
            bail!("no such directory: {target} (give a module's directory, or a package of this workspace)");
        }
        if !path.join("Cargo.toml").is_file() {
            bail!("{target} has no Cargo.toml: is it a module's directory?");
        }
        Ok(Self::Dir(path.canonicalize()?))
    }

    fn describe(&self) -> String {
        match self {
            Self::Dir(dir) => dir.display().to_string(),
            Self::Package(name) => name.clone(),
        }
    }
}

/// A module built: its library, and the package's name and version (the module's identity).
pub struct Build {
    pub library: PathBuf,
    pub name: String,
    pub version: semver::Version,
}

/// What one deploy did.
enum Outcome {
    /// These bytes already take the traffic.
    Unchanged { id: String, since: String },
    /// These bytes were installed inactive: now they take the traffic.
    Switched { id: String, previous: Option<String>, switch_ms: f64 },
    /// Installed; `previous` is the version that had the traffic, if any, and what became of it.
    Deployed { reply: Value, active: bool, previous: Option<(String, &'static str)> },
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Self::Unchanged { id, since } => {
                format!("unchanged: {id} already serves these bytes (since {since})")
            }
            Self::Switched { id, previous, switch_ms } => {
                let previous = previous.as_deref().unwrap_or("nothing");
                format!(
                    "{id} (installed inactive, same bytes) now takes the traffic, switched in {switch_ms:.2} ms; previous: {previous} (still loaded, inactive)"
                )
            }
            Self::Deployed { reply, active, previous } => {
                let id = format!(
                    "{}@{}",
                    reply["name"].as_str().unwrap_or("?"),
                    reply["version"].as_str().unwrap_or("?")
                );
                let how = format!(
                    "sha256 {}, installed in {:.1} ms",
                    reply["sha256"].as_str().unwrap_or("?").get(..12).unwrap_or("?"),
                    reply["install_ms"].as_f64().unwrap_or(f64::NAN)
                );
                match (active, previous) {
                    (true, Some((previous, fate))) => {
                        format!("{id} now takes the traffic ({how}); previous: {previous} ({fate})")
                    }
                    (true, None) => format!("{id} now takes the traffic ({how}); nothing served it before"),
                    (false, Some((previous, _))) => {
                        format!("{id} installed inactive ({how}); {previous} keeps the traffic")
                    }
                    (false, None) => format!("{id} installed inactive ({how})"),
                }
            }
        }
    }
}

/// One version of the module as the base reports it.
struct Running {
    version: semver::Version,
    sha256: String,
    active: bool,
    installed_at: String,
}

/// Deploys a build as the developer means it: the same bytes change nothing; the same version
/// with new bytes replaces the running build; a newer version takes the traffic (drained and
/// unloaded the old one), or is installed beside it with `--inactive`; an older one is refused
/// without `--allow-downgrade`.
fn deploy(build: &Build, upload: &Upload, intent: Intent) -> anyhow::Result<Outcome> {
    let bytes =
        std::fs::read(&build.library).with_context(|| format!("reading {}", build.library.display()))?;
    let sha256 = hex(&pedestal_signing::sha256(&bytes));
    let running = upload.running(&build.name)?;
    let active = running.iter().find(|r| r.active);
    let same = running.iter().find(|r| r.version == build.version);
    let id = format!("{}@{}", build.name, build.version);
    // cargo names a cdylib without a hash: going back to a version whose sources did not change
    // can leave the later build in the file. Those bytes run under their own version.
    if let Some(other) = running.iter().find(|r| r.sha256 == sha256 && r.version != build.version) {
        bail!(
            "{} holds the build of {}@{}, not {id}: a stale file (cargo reused it); `cargo clean -p {}` \
             and deploy again",
            build.library.display(),
            build.name,
            other.version,
            build.name
        );
    }
    // Whatever would move the traffic to an older version than the one that has it is refused
    // unless asked for.
    let older = active.filter(|a| build.version < a.version);
    let refuse_older = |active: &Running| {
        anyhow::anyhow!(
            "refused: {id} is older than {}@{}, which takes the traffic; pass --allow-downgrade to deploy \
             it anyway (or --inactive to install it beside)",
            build.name,
            active.version
        )
    };
    let takes_traffic = !intent.inactive;
    if let Some(active) = older
        && takes_traffic
        && !intent.downgrade
    {
        return Err(refuse_older(active));
    }
    let other_active = active.filter(|a| a.version != build.version);
    let query = match same {
        Some(same) if same.sha256 == sha256 && (same.active || intent.inactive) => {
            return Ok(Outcome::Unchanged { id, since: same.installed_at.clone() });
        }
        Some(same) if same.sha256 == sha256 => {
            let switched = upload.switch(&build.name, &build.version)?;
            let previous = switched["previous_version"].as_str().map(|v| format!("{}@{v}", build.name));
            return Ok(Outcome::Switched {
                id,
                previous,
                switch_ms: switched["switch_ms"].as_f64().unwrap_or(f64::NAN),
            });
        }
        Some(same) if intent.inactive && !same.active => bail!(
            "{id} is installed inactive with other bytes: uninstall it first, or deploy without --inactive"
        ),
        // The same version rebuilt: it takes its own seat (and the traffic).
        Some(_) => "strategy=replace",
        None if intent.inactive => "",
        None if active.is_some() => "strategy=replace",
        None => "activate=true",
    };
    let reply = upload.send(&build.library, &bytes, &sha256, query)?;
    if reply["version"].as_str() != Some(build.version.to_string().as_str()) {
        bail!(
            "{} held {}@{}, not {id}, and the base now runs it ({}); `cargo xtask rollback {}` goes back",
            build.library.display(),
            reply["name"].as_str().unwrap_or("?"),
            reply["version"].as_str().unwrap_or("?"),
            reply["state"].as_str().unwrap_or("?"),
            build.name
        );
    }
    let unloaded = reply["replaced"]["state"].as_str().unwrap_or("still loaded");
    let previous = match (same, other_active) {
        // A rebuild of the active version: its earlier build made way.
        (Some(same), _) if same.active => Some((format!("{id} (its previous build)"), unloaded_or(unloaded))),
        // A rebuild of an inactive version took the traffic from another one, which stays.
        (Some(_), Some(other)) => {
            Some((format!("{}@{}", build.name, other.version), "still loaded, inactive"))
        }
        (None, Some(other)) if query == "strategy=replace" => {
            Some((format!("{}@{}", build.name, other.version), unloaded_or(unloaded)))
        }
        (None, Some(other)) => Some((format!("{}@{}", build.name, other.version), "")),
        _ => None,
    };
    let active = reply["state"] == "active";
    Ok(Outcome::Deployed { reply, active, previous })
}

/// What became of a replaced build, as the base's answer says (`stopped`: drained and unloaded).
fn unloaded_or(state: &str) -> &'static str {
    match state {
        "stopped" => "drained and unloaded",
        "pinned" => "drained; pinned: its library stays in the process",
        _ => "still loaded",
    }
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
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // `http://127.0.0.1:7071@elsewhere/` names `elsewhere`: credentials in the URL never count.
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

/// Reads a token file (`<data-dir>/admin-token`, say).
pub fn read_token(file: &Path) -> anyhow::Result<String> {
    let token =
        std::fs::read_to_string(file).with_context(|| format!("reading the token {}", file.display()))?;
    Ok(token.trim().to_owned())
}

/// Deploys `target` now and again after every change to its sources, until interrupted: one
/// line per round with the build time, the deploy time and what it did.
fn watch(target: &Target, upload: &Upload, intent: Intent) -> anyhow::Result<()> {
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
        let started = Instant::now();
        match build(target) {
            Ok(built) => {
                let build_time = started.elapsed();
                let deploying = Instant::now();
                match deploy(&built, upload, intent) {
                    Ok(outcome) => println!(
                        "built in {:.2} s, deployed in {:.0} ms: {}",
                        build_time.as_secs_f64(),
                        deploying.elapsed().as_secs_f64() * 1e3,
                        outcome.describe()
                    ),
                    Err(e) => println!(
                        "built in {:.2} s, not deployed: {e:#} (what ran before keeps serving)",
                        build_time.as_secs_f64()
                    ),
                }
            }
            Err(e) => println!(
                "build failed after {:.2} s: {e:#} (what ran before keeps serving)",
                started.elapsed().as_secs_f64()
            ),
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
        while changes.recv_timeout(Duration::from_millis(100)).is_ok() {}
    }
}

/// The directory holding `target`'s sources: the directory itself, or the package's.
fn source_dir(target: &Target) -> anyhow::Result<PathBuf> {
    let name = match target {
        Target::Dir(dir) => return Ok(dir.clone()),
        Target::Package(name) => name,
    };
    let output = cargo().args(["metadata", "--format-version", "1", "--no-deps"]).output()?;
    let metadata: Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name.as_str())
        .and_then(|p| p["manifest_path"].as_str())
        .with_context(|| format!("no package named {name} in this workspace"))?;
    Ok(Path::new(manifest).parent().unwrap().to_owned())
}

/// Builds the module in release: its `.so`, name and version.
pub fn build(target: &Target) -> anyhow::Result<Build> {
    let mut command = cargo();
    command.args(["build", "--release", "--message-format=json-render-diagnostics"]);
    match target {
        Target::Dir(dir) => {
            // A module in its own project builds in its own directory (its `.cargo/config.toml`,
            // its lock file).
            command.current_dir(dir).arg("--manifest-path").arg(dir.join("Cargo.toml"));
        }
        Target::Package(name) => {
            command.args(["-p", name]);
        }
    }
    let mut child = command.stdout(Stdio::piped()).spawn().context("running cargo build")?;
    let mut built = None;
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
        if let (Some(so), Some(id)) = (so, message["package_id"].as_str()) {
            built = Some((PathBuf::from(so), id.to_owned()));
        }
    }
    if !child.wait()?.success() {
        bail!("building {} failed", target.describe());
    }
    let (library, package_id) = built.with_context(|| {
        format!("{} did not produce a cdylib (is `crate-type = [\"cdylib\"]` set?)", target.describe())
    })?;
    let (name, version) = parse_package_id(&package_id)
        .with_context(|| format!("cargo named the package {package_id:?}: no name and version in it"))?;
    Ok(Build { library, name, version })
}

/// A package id's name and version, in cargo's package id spec: `path+file:///dir/my-mod#0.1.0`
/// (the package named like the last segment of its URL), `path+file:///dir#my-mod@0.1.0`, and
/// the same for `git+https://host/repo.git?branch=main#…` and `registry+…` sources, whose URL
/// may carry a query and a `.git` suffix.
fn parse_package_id(id: &str) -> Option<(String, semver::Version)> {
    let (source, fragment) = id.rsplit_once('#')?;
    let (name, version) = match fragment.split_once('@') {
        Some((name, version)) => (name.to_owned(), version),
        None => {
            let url = source.split_once('?').map_or(source, |(url, _)| url).trim_end_matches('/');
            let last = url.rsplit('/').next()?;
            (last.strip_suffix(".git").unwrap_or(last).to_owned(), fragment)
        }
    };
    Some((name, semver::Version::parse(version).ok()?))
        .filter(|(name, _)| !name.is_empty() && !name.contains(':'))
}

impl Upload {
    fn authorized(&self, request: ureq::Request) -> ureq::Request {
        match &self.token {
            Some(token) => request.set("authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// Fails with what to do when the base cannot be reached or refuses the token.
    fn check_access(&self) -> anyhow::Result<()> {
        self.get("/api/v1/modules").map(drop)
    }

    fn get(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let url = format!("{}{path}", self.admin);
        match self.authorized(ureq::get(&url)).call() {
            Ok(response) => Ok(Some(response.into_json()?)),
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(ureq::Error::Status(status, response)) => Err(self.refusal(status, response, path)),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// The versions of `name` the base runs.
    fn running(&self, name: &str) -> anyhow::Result<Vec<Running>> {
        let Some(module) = self.get(&format!("/api/v1/modules/{name}"))? else {
            return Ok(Vec::new());
        };
        let live = |state: &str| !matches!(state, "stopped" | "broken" | "pinned");
        Ok(module["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["state"].as_str().is_some_and(live))
            .filter_map(|v| {
                Some(Running {
                    version: semver::Version::parse(v["version"].as_str()?).ok()?,
                    sha256: v["sha256"].as_str()?.to_owned(),
                    active: v["active"] == true,
                    installed_at: v["installed_at"].as_str().unwrap_or("?").to_owned(),
                })
            })
            .collect())
    }

    /// Makes an installed version take the traffic.
    fn switch(&self, name: &str, version: &semver::Version) -> anyhow::Result<Value> {
        let path = format!("/api/v1/modules/{name}/switch");
        self.post_json(&path, &serde_json::json!({ "version": version.to_string() }), &path)
    }

    fn post_json(&self, path: &str, body: &Value, what: &str) -> anyhow::Result<Value> {
        let request = self.authorized(ureq::post(&format!("{}{path}", self.admin)));
        match request.send_json(body) {
            Ok(response) => Ok(response.into_json()?),
            Err(ureq::Error::Status(status, response)) => Err(self.refusal(status, response, what)),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    /// Signs (with `--sign`) and uploads a built module's bytes (whose sha256 is `sha256`).
    fn send(&self, library: &Path, bytes: &[u8], sha256: &str, query: &str) -> anyhow::Result<Value> {
        let signature = match &self.key {
            Some(key) => {
                let signed = pedestal_signing::sign_file(key, library)?;
                println!("signed with key {} ({})", key.id(), signed.path.display());
                Some(signed.signature.to_line())
            }
            None => None,
        };
        upload_bytes(
            &self.admin,
            self.token.as_deref(),
            (bytes, sha256),
            &library.display().to_string(),
            query,
            signature.as_deref(),
        )
    }

    fn refusal(&self, status: u16, response: ureq::Response, what: &str) -> anyhow::Error {
        let body: Value = response.into_json().unwrap_or(Value::Null);
        refusal(&self.admin, self.token.is_some(), status, &body, what)
    }

    fn unreachable(&self, error: ureq::Error) -> anyhow::Error {
        anyhow::anyhow!("cannot reach the base at {}: {error} (is `pedestal serve` running?)", self.admin)
    }
}

/// A base's refusal, saying what to do about a missing or wrong token.
fn refusal(admin: &str, had_token: bool, status: u16, body: &Value, what: &str) -> anyhow::Error {
    let code = body["code"].as_str().unwrap_or("?");
    let message = body["message"].as_str().unwrap_or("");
    if status == 401 {
        let fix = "pass --token, set PEDESTAL_ADMIN_TOKEN, or point --token-file (or --data-dir) at the \
                   base's admin-token file";
        return if had_token {
            anyhow::anyhow!("the base at {admin} refused the operations token (401 {code}): {fix}")
        } else {
            anyhow::anyhow!(
                "the base at {admin} needs its operations token and none was found (401 {code}): {fix}"
            )
        };
    }
    anyhow::anyhow!("the base refused {what} ({status} {code}): {message}")
}

/// Uploads `bytes` pinned to their sha256 (hashed once, by the caller), with an optional
/// signature line for the `X-Pedestal-Signature` header.
fn upload_bytes(
    admin: &str,
    token: Option<&str>,
    (bytes, sha256): (&[u8], &str),
    what: &str,
    query: &str,
    signature: Option<&str>,
) -> anyhow::Result<Value> {
    let pin = format!("sha256={sha256}");
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
    match request.send_bytes(bytes) {
        Ok(response) => Ok(response.into_json()?),
        Err(ureq::Error::Status(status, response)) => {
            let body: Value = response.into_json().unwrap_or(Value::Null);
            Err(refusal(admin, token.is_some(), status, &body, what))
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

#[cfg(test)]
mod tests {
    use super::parse_package_id;

    #[test]
    fn package_ids_of_every_source_kind_give_the_name_and_version() {
        let cases = [
            ("path+file:///home/me/hello#0.1.0", "hello", "0.1.0"),
            ("path+file:///home/me/dir#hello@0.2.0", "hello", "0.2.0"),
            ("git+https://github.com/me/hello.git?branch=main#0.3.0", "hello", "0.3.0"),
            ("git+https://github.com/me/mods?rev=abc123#hello@1.0.0-rc.1", "hello", "1.0.0-rc.1"),
            ("registry+https://github.com/rust-lang/crates.io-index#hello@0.4.0", "hello", "0.4.0"),
        ];
        for (id, name, version) in cases {
            let parsed = parse_package_id(id).unwrap_or_else(|| panic!("{id} did not parse"));
            assert_eq!((parsed.0.as_str(), parsed.1.to_string().as_str()), (name, version), "{id}");
        }
        for id in ["hello 0.1.0 (path+file:///x)", "path+file:///x#not-a-version", "file:///#0.1.0"] {
            assert_eq!(parse_package_id(id), None, "{id}");
        }
    }
}
