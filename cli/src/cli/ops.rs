//! The operator's commands for one running base, each a request or two to its operations API:
//! `ls`, `show`, `switch`, `traffic`, `rm`, `retry`, `limits`, `rollback`, `logs`, `health`,
//! `spis`, `call` and `top`. Tables for people (`views.rs`), the API's JSON as is with
//! `--output json`; a refusal is the API's `CODE: message` on stderr and exit status 1 (2 when
//! no base answers).

use std::{collections::BTreeMap, process::ExitCode, str::FromStr, time::SystemTime};

use anyhow::Context;
use pedestal_fleet::render::{Output, emit};
use serde_json::{Value, json};

use super::{
    admin::{ApiArgs, Client, encode},
    answers::{Health, LimitsPage, ModuleList, ModulePage, Spis, Weights},
    logs::LogsArgs,
    top::TopArgs,
    views,
};

/// The commands for one base.
#[derive(clap::Subcommand)]
pub enum OpsCommand {
    /// Every module instance: version, state, traffic share, requests, 5xx, p99, heap, CPU
    /// time and uptime; quarantined artifacts too.
    Ls(ApiArgs),
    /// One module: its versions side by side, their history, limits (with where each comes
    /// from) and health, and its quarantined artifacts, crashes and retired instances.
    Show(ModuleArgs),
    /// Make another running version of a module active (one routing swap).
    Switch(SwitchArgs),
    /// Split a module's traffic over running versions (`1.0.0=90 1.1.0=10`), go back to the
    /// active version alone (`--clear`), or show the split (no weights).
    Traffic(TrafficArgs),
    /// Uninstall one version: drain, stop, unload (another version takes the traffic).
    Rm(RmArgs),
    /// Load a quarantined version again (one that crashed the base, or died loading).
    Retry(TargetArgs),
    /// Show a module's limits, or change the API's overrides of them (other overrides stay).
    Limits(LimitsArgs),
    /// Return a module to the build that had its traffic before the last switch or replace.
    Rollback(ModuleArgs),
    /// A module's recent log lines, or (`-f`) its new lines as they come, until Ctrl-C.
    Logs(LogsArgs),
    /// The base's health: each running instance's verdict with its reasons, what needs an
    /// operator, recent crashes.
    Health(ApiArgs),
    /// The SPIs the base declares, and which running modules implement or require them.
    Spis(ApiArgs),
    /// Call an SPI method from the operations API: `pedestal call echo echo '["hi"]'`.
    Call(CallArgs),
    /// A live view of every instance, refreshed every second: requests/s, 5xx/s, latency,
    /// heap and CPU (`q` quits).
    Top(TopArgs),
}

#[derive(clap::Args)]
pub struct ModuleArgs {
    /// The module's name.
    module: String,
    /// Do it even to a module a fleet manages (the fleet may undo it).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
pub struct SwitchArgs {
    /// The module's name.
    module: String,
    /// The running version to make active.
    version: String,
    /// Do it even to a module a fleet manages (the fleet may undo it).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
pub struct TrafficArgs {
    /// The module's name.
    module: String,
    /// `VERSION=WEIGHT` for each running version that should get traffic.
    #[arg(value_name = "VERSION=WEIGHT", conflicts_with = "clear")]
    weights: Vec<Weight>,
    /// Drop the split: every request goes to the active version.
    #[arg(long)]
    clear: bool,
    /// Do it even to a module a fleet manages (the fleet may undo it).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// `MODULE@VERSION`.
    target: Target,
    /// Even the last implementation of an SPI running modules require, or a module a fleet
    /// manages.
    #[arg(long)]
    force: bool,
    /// Refuse to remove the version with the traffic while others run (instead of handing the
    /// traffic to one of them).
    #[arg(long)]
    keep_active: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
pub struct TargetArgs {
    /// `MODULE@VERSION`.
    target: Target,
    /// Do it even to a module a fleet manages (the fleet may undo it).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Each flag replaces one of the API's overrides; `default` drops it (the value falls back to
/// the config file, the manifest, then the base's default). `0` lifts a count or size limit.
#[derive(clap::Args)]
pub struct LimitsArgs {
    /// The module's name.
    module: String,
    /// Requests it may run at once.
    #[arg(long, value_name = "N|default")]
    max_concurrent: Option<Setting<u64>>,
    /// How long a request may take inside it, in milliseconds.
    #[arg(long, value_name = "MS|default")]
    request_timeout_ms: Option<Setting<u64>>,
    /// Largest request body forwarded to it (`1048576`, `1MiB`).
    #[arg(long, value_name = "BYTES|default")]
    max_request_body: Option<Setting<Bytes>>,
    /// Heap above which the memory action is taken (`268435456`, `256MiB`).
    #[arg(long, value_name = "BYTES|default")]
    memory_soft_limit: Option<Setting<Bytes>>,
    /// What crossing the soft limit does: `log`, `deactivate` or `restart`.
    #[arg(long, value_name = "ACTION|default")]
    memory_action: Option<Setting<String>>,
    /// What staying unhealthy does: `none`, `deactivate` or `restart`.
    #[arg(long, value_name = "ACTION|default")]
    unhealthy_action: Option<Setting<String>>,
    /// How long it must stay unhealthy first, in milliseconds.
    #[arg(long, value_name = "MS|default")]
    unhealthy_grace_ms: Option<Setting<u64>>,
    /// Drop every override set through the API first.
    #[arg(long)]
    clear: bool,
    /// Do it even to a module a fleet manages (the fleet may undo it).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
pub struct CallArgs {
    /// The SPI (`echo`).
    spi: String,
    /// Its method (`echo`).
    method: String,
    /// The arguments, a JSON array (`'["hi"]'`).
    #[arg(default_value = "[]")]
    args: String,
    /// Call only this module's implementation (default: every implementation).
    #[arg(long)]
    module: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Runs one command.
pub fn run(command: OpsCommand) -> anyhow::Result<ExitCode> {
    match command {
        OpsCommand::Ls(api) => ls(&api),
        OpsCommand::Show(args) => show(&args),
        OpsCommand::Switch(args) => switch(&args),
        OpsCommand::Traffic(args) => traffic(&args),
        OpsCommand::Rm(args) => rm(&args),
        OpsCommand::Retry(args) => retry(&args),
        OpsCommand::Limits(args) => limits(&args),
        OpsCommand::Rollback(args) => rollback(&args),
        OpsCommand::Logs(args) => return super::logs::run(&args),
        OpsCommand::Health(api) => health(&api),
        OpsCommand::Spis(api) => spis(&api),
        OpsCommand::Call(args) => call(&args),
        OpsCommand::Top(args) => return super::top::run(&args),
    }?;
    Ok(ExitCode::SUCCESS)
}

fn ls(api: &ApiArgs) -> anyhow::Result<()> {
    let client = api.client()?;
    let raw: Value = client.get("/api/v1/modules")?;
    let printer = api.printer();
    if printer.output == Output::Json {
        printer.print(&raw, String::new);
        return Ok(());
    }
    let list: ModuleList = serde_json::from_value(raw).context("reading the listing")?;
    // Weights only mean something with more than one running version.
    let mut versions: BTreeMap<&str, usize> = BTreeMap::new();
    for instance in &list.modules {
        *versions.entry(&instance.name).or_default() += 1;
    }
    let mut splits = BTreeMap::new();
    for (name, _) in versions.into_iter().filter(|(_, n)| *n > 1) {
        let split: Weights = client.get(&format!("/api/v1/modules/{}/traffic", encode(name)))?;
        splits.insert(name.to_owned(), split);
    }
    emit(&views::render_list(&list, &splits, SystemTime::now(), printer.color));
    Ok(())
}

fn show(args: &ModuleArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let name = encode(&args.module);
    let raw: Value = client.get(&format!("/api/v1/modules/{name}"))?;
    let printer = args.api.printer();
    if printer.output == Output::Json {
        printer.print(&raw, String::new);
        return Ok(());
    }
    let page: ModulePage = serde_json::from_value(raw).context("reading the module's page")?;
    let split: Option<Weights> = match page.versions.len() {
        0 | 1 => None,
        _ => Some(client.get(&format!("/api/v1/modules/{name}/traffic"))?),
    };
    let health: Health = client.get("/api/v1/health")?;
    emit(&views::render_module(&page, split.as_ref(), &health, SystemTime::now(), printer.color));
    Ok(())
}

fn switch(args: &SwitchArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let path = format!("/api/v1/modules/{}/switch{}", encode(&args.module), force(args.force));
    let answer: Value = client.send_json("POST", &path, &json!({ "version": args.version }))?;
    args.api.printer().print(&answer, || {
        format!(
            "switched {} to {} (from {}) in {:.2} ms\n",
            args.module,
            text(&answer["active_version"]),
            text(&answer["previous_version"]),
            answer["switch_ms"].as_f64().unwrap_or(f64::NAN)
        )
    });
    Ok(())
}

fn traffic(args: &TrafficArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let path = format!("/api/v1/modules/{}/traffic", encode(&args.module));
    let answer: Value = if args.weights.is_empty() && !args.clear {
        client.get(&path)?
    } else {
        let weights: serde_json::Map<String, Value> =
            args.weights.iter().map(|w| (w.version.clone(), json!(w.weight))).collect();
        client.send_json("PUT", &format!("{path}{}", force(args.force)), &Value::Object(weights))?
    };
    let split: Weights = serde_json::from_value(answer.clone()).context("reading the weights")?;
    args.api.printer().print(&answer, || views::render_weights(&args.module, &split));
    Ok(())
}

fn rm(args: &RmArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let mut query = Vec::new();
    if args.force {
        query.push("force=true");
    }
    if args.keep_active {
        query.push("keep_active=true");
    }
    let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
    let answer: Value = client.send("DELETE", &format!("{}{query}", args.target.path()))?;
    args.api.printer().print(&answer, || {
        let state = text(&answer["state"]);
        let mut out = format!("removed {} ({state})", args.target);
        if state == "pinned" {
            let why = answer["history"].as_array().and_then(|h| h.last()).map(|t| text(&t["message"]));
            out.push_str(&format!(": {}", why.unwrap_or_else(|| "its threads still run".into())));
        }
        match answer["active_version"].as_str() {
            Some(active) => out.push_str(&format!("; {active} has the traffic\n")),
            None => out.push_str(&format!("; no version of {} runs\n", args.target.module)),
        }
        out
    });
    Ok(())
}

fn retry(args: &TargetArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let answer: Value = client.send("POST", &format!("{}/retry{}", args.target.path(), force(args.force)))?;
    args.api.printer().print(&answer, || format!("retried {}: {}\n", args.target, text(&answer["state"])));
    Ok(())
}

fn limits(args: &LimitsArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let path = format!("/api/v1/modules/{}/limits", encode(&args.module));
    let changes: Vec<(&str, Option<Value>)> = [
        ("max_concurrent_requests", args.max_concurrent.as_ref().map(Setting::to_json)),
        ("request_timeout_ms", args.request_timeout_ms.as_ref().map(Setting::to_json)),
        ("max_request_body_bytes", args.max_request_body.as_ref().map(Setting::to_json)),
        ("memory_soft_limit_bytes", args.memory_soft_limit.as_ref().map(Setting::to_json)),
        ("memory_action", args.memory_action.as_ref().map(Setting::to_json)),
        ("unhealthy_action", args.unhealthy_action.as_ref().map(Setting::to_json)),
        ("unhealthy_grace_ms", args.unhealthy_grace_ms.as_ref().map(Setting::to_json)),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, Some(v))))
    .collect();
    let answer: Value = if changes.is_empty() && !args.clear {
        client.get(&path)?
    } else {
        // The API replaces its overrides whole: start from the ones it has, so a flag changes
        // one limit and leaves the others as they were set.
        let mut overrides = if args.clear {
            serde_json::Map::new()
        } else {
            let current: LimitsPage = client.get(&path)?;
            current.overrides.into_iter().filter(|(_, v)| !v.is_null()).collect()
        };
        for (name, value) in changes {
            overrides.insert(name.to_owned(), value.unwrap_or(Value::Null));
        }
        client.send_json("PUT", &format!("{path}{}", force(args.force)), &Value::Object(overrides))?
    };
    let page: LimitsPage = serde_json::from_value(answer.clone()).context("reading the limits")?;
    let printer = args.api.printer();
    printer.print(&answer, || views::render_limits(&page, printer.color));
    Ok(())
}

fn rollback(args: &ModuleArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let path = format!("/api/v1/modules/{}/rollback{}", encode(&args.module), force(args.force));
    let answer: Value = client.send("POST", &path)?;
    args.api.printer().print(&answer, || {
        let previous = match answer["previous_version"].as_str() {
            Some(version) => format!("; {version} is now {}", text(&answer["previous_state"])),
            None => String::new(),
        };
        format!(
            "rolled back {} to {} ({}{previous}) in {:.2} ms\n",
            args.module,
            text(&answer["active_version"]),
            text(&answer["how"]),
            answer["rollback_ms"].as_f64().unwrap_or(f64::NAN)
        )
    });
    Ok(())
}

fn health(api: &ApiArgs) -> anyhow::Result<()> {
    let raw: Value = api.client()?.get("/api/v1/health")?;
    let health: Health = serde_json::from_value(raw.clone()).context("reading the health")?;
    let printer = api.printer();
    printer.print(&raw, || views::render_health(&health, printer.color));
    Ok(())
}

fn spis(api: &ApiArgs) -> anyhow::Result<()> {
    let raw: Value = api.client()?.get("/api/v1/spis")?;
    let spis: Spis = serde_json::from_value(raw.clone()).context("reading the SPIs")?;
    let printer = api.printer();
    printer.print(&raw, || views::render_spis(&spis, printer.color));
    Ok(())
}

fn call(args: &CallArgs) -> anyhow::Result<()> {
    let client: Client = args.api.client()?;
    let arguments: Value = serde_json::from_str(&args.args)
        .map_err(|e| anyhow::anyhow!("BAD_ARGUMENTS: {:?} is not JSON: {e}", args.args))?;
    let mut path = format!("/api/v1/spis/{}/{}", encode(&args.spi), encode(&args.method));
    if let Some(module) = &args.module {
        path.push_str(&format!("?module={}", encode(module)));
    }
    let answer: Value = client.send_json("POST", &path, &arguments)?;
    args.api.printer().print(&answer, || match answer["results"].as_array() {
        // A fan-out: one line per implementation, its result or its error.
        Some(results) => results
            .iter()
            .map(|r| match r.get("error") {
                Some(error) => format!(
                    "{}: error {}: {}\n",
                    text(&r["module"]),
                    text(&error["code"]),
                    text(&error["message"])
                ),
                None => format!("{}: {}\n", text(&r["module"]), r["result"]),
            })
            .collect(),
        None => format!(
            "{}: {}\n",
            text(&answer["module"]),
            serde_json::to_string_pretty(&answer["result"]).unwrap_or_default()
        ),
    });
    Ok(())
}

/// `?force=true` when asked.
fn force(force: bool) -> &'static str {
    if force { "?force=true" } else { "" }
}

/// A JSON string as text, `?` for anything else.
fn text(value: &Value) -> String {
    value.as_str().unwrap_or("?").to_owned()
}

/// `MODULE@VERSION`.
#[derive(Debug, Clone)]
pub struct Target {
    module: String,
    version: String,
}

impl Target {
    /// `/api/v1/modules/{module}/{version}`.
    fn path(&self) -> String {
        format!("/api/v1/modules/{}/{}", encode(&self.module), encode(&self.version))
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.rsplit_once('@') {
            Some((module, version)) if !module.is_empty() && !version.is_empty() => {
                Ok(Self { module: module.to_owned(), version: version.to_owned() })
            }
            _ => Err(format!("{text:?} is not MODULE@VERSION (say greeter@1.0.0)")),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.module, self.version)
    }
}

/// `VERSION=WEIGHT`.
#[derive(Debug, Clone)]
pub struct Weight {
    version: String,
    weight: u64,
}

impl FromStr for Weight {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (version, weight) =
            text.split_once('=').ok_or_else(|| format!("{text:?} is not VERSION=WEIGHT (say 1.1.0=10)"))?;
        let weight = weight.parse().map_err(|_| format!("{text:?}: the weight is not a whole number"))?;
        Ok(Self { version: version.to_owned(), weight })
    }
}

/// A limit's new value, or `default` to drop the API's override of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting<T> {
    Set(T),
    Default,
}

impl<T: FromStr<Err: std::fmt::Display> + serde::Serialize> Setting<T> {
    fn to_json(&self) -> Value {
        match self {
            Setting::Set(value) => json!(value),
            Setting::Default => Value::Null,
        }
    }
}

impl<T: FromStr<Err: std::fmt::Display>> FromStr for Setting<T> {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "default" {
            return Ok(Setting::Default);
        }
        text.parse::<T>().map(Setting::Set).map_err(|e| e.to_string())
    }
}

/// A size in bytes, written as a number or with a unit (`256MiB`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct Bytes(u64);

impl FromStr for Bytes {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        pedestal_fleet::spec::parse_size(text).map(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_weights_parse() {
        let target: Target = "fx-good@0.1.0".parse().unwrap();
        assert_eq!((target.module.as_str(), target.version.as_str()), ("fx-good", "0.1.0"));
        assert_eq!(target.path(), "/api/v1/modules/fx-good/0.1.0");
        for bad in ["fx-good", "@1.0.0", "fx-good@"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        let weight: Weight = "1.1.0=10".parse().unwrap();
        assert_eq!((weight.version.as_str(), weight.weight), ("1.1.0", 10));
        assert!("1.1.0".parse::<Weight>().is_err());
        assert!("1.1.0=ten".parse::<Weight>().is_err());
    }

    #[test]
    fn settings_take_a_value_or_default() {
        assert_eq!("4".parse::<Setting<u64>>(), Ok(Setting::Set(4)));
        assert_eq!("default".parse::<Setting<u64>>(), Ok(Setting::Default));
        assert_eq!("256MiB".parse::<Setting<Bytes>>(), Ok(Setting::Set(Bytes(256 << 20))));
        assert!("lots".parse::<Setting<u64>>().is_err());
        assert_eq!(Setting::Set(Bytes(1024)).to_json(), json!(1024));
        assert_eq!(Setting::<u64>::Default.to_json(), Value::Null);
    }
}
