//! `pedestal fleet ...`: the operator's client of a controller (any controller, leader or not).
//!
//! `apply FILE`, `status [MODULE]`, `push FILE.so`, `delete MODULE`, `bases`, `logs MODULE`,
//! `cordon|drain|uncordon BASE`, `rollout status|history|pause|resume|promote|abort MODULE`;
//! `--output json`
//! prints the API's answers as they are. Exit status: 0 done, 1 refused or failed (the API's
//! `CODE: message` on stderr), 2 the controller could not be reached.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use crate::{
    client::{ApplyAnswer, Client, ClientError},
    model::{
        BaseView, CommandRequest, FleetStatus, ModuleView, Pause, RolloutRecord, RolloutState, RolloutView,
        StepPhase, format_duration, now_ms,
    },
    render::{Cell, Printer, Style, Table, health_style, human_bytes, millicores, state_style},
    rollout,
    spec::{ArtifactSource, Replicas, SpecFile},
};

/// `pedestal fleet`'s subcommands and flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// A controller's API, leader or not.
    #[arg(long, env = "PEDESTAL_CONTROLLER", default_value = "http://127.0.0.1:7080", global = true)]
    pub controller: String,
    /// The fleet's shared token (at least 16 characters), sent as `authorization: Bearer`.
    #[arg(long, env = "PEDESTAL_FLEET_TOKEN", hide_env_values = true, global = true)]
    pub fleet_token: Option<String>,
    /// A file holding the fleet token (trailing whitespace ignored); wins over --fleet-token.
    #[arg(long, env = "PEDESTAL_FLEET_TOKEN_FILE", global = true)]
    pub fleet_token_file: Option<PathBuf>,
    /// `table` for people, `json` for the API's answers as they are.
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// How answers are printed (shared with the base's own commands).
pub use crate::render::Output;

/// `pedestal fleet <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum FleetCommand {
    /// Declare a module deployment from a TOML spec file (pushes its local `artifact` first).
    Apply {
        /// The spec file (see README: "Run a fleet").
        file: PathBuf,
        /// Wait until every wanted replica reports serving (exit 1 if it is unschedulable).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 60, requires = "wait")]
        timeout: u64,
    },
    /// Where every module runs: its replicas on each base, their state, health, memory, CPU.
    Status {
        /// Only this module.
        module: Option<String>,
    },
    /// Make a module's `.so` available to every base; prints its sha256.
    Push {
        /// The module file.
        file: PathBuf,
    },
    /// Delete a module's spec: the bases uninstall it.
    Delete {
        /// The module.
        module: String,
    },
    /// The live bases: labels, modules, memory and CPU used of their capacity, cordons.
    Bases,
    /// Cordon a base: no new replicas go there (what it runs stays).
    Cordon {
        /// The base id (it need not be live: a restarting base stays cordoned).
        base: String,
        /// Why, for whoever looks at `pedestal fleet bases`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Drain a base: cordon it and move its replicas off, each replacement serving before the
    /// old replica goes.
    Drain {
        /// The base id.
        base: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        /// Wait until no fleet module is left on it (it can then be stopped).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (`60s`, `2m`).
        #[arg(long, default_value = "60s", requires = "wait", value_parser = crate::model::parse_duration)]
        timeout: u64,
    },
    /// Uncordon a base: it is eligible again (nothing moves back by itself).
    Uncordon {
        /// The base id.
        base: String,
    },
    /// Every base's log of a module, each line tagged with its base (`[base-a] time level
    /// message`; `--output json`: one `{"base", "line"}` object per line).
    Logs {
        /// The module.
        module: String,
        /// Only the lines of this version.
        #[arg(long)]
        version: Option<String>,
        /// Keep printing new lines as the bases write them.
        #[arg(long, short)]
        follow: bool,
        /// How many recent lines of each base (default 100).
        #[arg(long)]
        tail: Option<usize>,
    },
    /// A module's rollout: where it stands, its history, and the operator's commands.
    Rollout {
        /// What to do.
        #[command(subcommand)]
        command: RolloutAction,
    },
}

/// `pedestal fleet rollout <action> MODULE`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RolloutAction {
    /// State, step, bases upgraded, weight, phase and time left, the last analysis, and why
    /// it stopped when it did.
    Status {
        /// The module.
        module: String,
    },
    /// The current rollout's events and the finished rollouts before it.
    History {
        /// The module.
        module: String,
    },
    /// Hold the rollout where it is (a regression still rolls back).
    Pause(CommandArgs),
    /// Carry on a paused rollout, or restart a rolled-back or aborted one from its first step.
    Resume(CommandArgs),
    /// Skip the rest of the current step's hold and analysis.
    Promote(CommandArgs),
    /// Return every base to the old version.
    Abort(CommandArgs),
}

/// A rollout command's module and reason.
#[derive(Debug, Clone, clap::Args)]
pub struct CommandArgs {
    /// The module.
    pub module: String,
    /// Why (kept in the rollout's history).
    #[arg(long)]
    pub reason: Option<String>,
}

/// Runs one `pedestal fleet` command, printing its answer; errors go to stderr with their
/// stable code.
pub fn run(args: FleetArgs) -> anyhow::Result<ExitCode> {
    let printer = Printer::new(args.output);
    match execute(&args, &printer) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Failure::Client(ClientError::Unreachable { url, message })) => {
            eprintln!("cannot reach the controller at {url}: {message} (is pedestal controller running?)");
            Ok(ExitCode::from(2))
        }
        Err(Failure::Client(ClientError::Api { status: 401, code, message })) => {
            eprintln!(
                "{code}: {message} (give the fleet's token with --fleet-token, --fleet-token-file or \
                 PEDESTAL_FLEET_TOKEN)"
            );
            Ok(ExitCode::FAILURE)
        }
        Err(Failure::Client(e)) => {
            eprintln!("{}", e);
            Ok(ExitCode::FAILURE)
        }
        Err(Failure::Local { code, message }) => {
            eprintln!("{code}: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Why a command did not succeed.
enum Failure {
    /// The controller refused or could not be reached.
    Client(ClientError),
    /// Something on this side: the spec file, the artifact, a wait that ended unsatisfied.
    Local { code: &'static str, message: String },
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

fn local(code: &'static str, message: impl Into<String>) -> Failure {
    Failure::Local { code, message: message.into() }
}

fn execute(args: &FleetArgs, printer: &Printer) -> Result<(), Failure> {
    let token = fleet_token(args.fleet_token.as_deref(), args.fleet_token_file.as_deref())?;
    let client = Client::new(&args.controller, token);
    match &args.command {
        FleetCommand::Apply { file, wait, timeout } => {
            apply(&client, printer, file, wait.then(|| Duration::from_secs(*timeout)))
        }
        FleetCommand::Status { module } => {
            let status = client.status(module.as_deref())?;
            if let Some(module) = module
                && !status.modules.iter().any(|m| &m.name == module)
                && !status.unmanaged.iter().any(|u| &u.name == module)
            {
                return Err(local(
                    "MODULE_NOT_FOUND",
                    format!("no spec and no base names module {module:?}"),
                ));
            }
            printer.print(&status, || {
                let mut text = render_status(&status, printer.color);
                for view in &status.modules {
                    if let Ok(rollout) = client.rollout(&view.name)
                        && !rollout.rollout.state.is_finished()
                    {
                        let r = &rollout.rollout;
                        let steps = rollout::steps(&r.strategy).len();
                        let from = r.from.as_ref().map_or("nothing", |f| f.version.as_str());
                        let _ = writeln!(
                            text,
                            "rollout {} {from} → {}: {}, step {} of {steps}, {} bases upgraded",
                            r.module,
                            r.to.version,
                            rollout::state_name(r.state),
                            r.step + 1,
                            r.upgraded.len()
                        );
                    }
                }
                text
            });
            Ok(())
        }
        FleetCommand::Push { file } => {
            let (bytes, sha256) = read_artifact(file)?;
            let answer = push(&client, &bytes, &sha256)?;
            printer.print(&answer, || {
                let new = if answer.stored { "new" } else { "already in the fleet" };
                format!(
                    "pushed {}: sha256 {} ({}, {new})\n",
                    file.display(),
                    answer.sha256,
                    human_bytes(answer.size)
                )
            });
            Ok(())
        }
        FleetCommand::Delete { module } => {
            let answer = client.delete(module)?;
            printer.print(&answer, || format!("deleted {}\n", answer.name));
            Ok(())
        }
        FleetCommand::Bases => {
            let bases = client.bases()?;
            printer.print(&bases, || render_bases(&bases, printer.color));
            Ok(())
        }
        FleetCommand::Cordon { base, reason } => {
            let answer = client.cordon(base, false, &operator(), reason.as_deref())?;
            printer.print(&answer, || format!("{}\n", answer.message));
            Ok(())
        }
        FleetCommand::Drain { base, reason, wait, timeout } => {
            let answer = client.cordon(base, true, &operator(), reason.as_deref())?;
            printer.print(&answer, || format!("{}\n", answer.message));
            if *wait { wait_drained(&client, printer, base, Duration::from_millis(*timeout)) } else { Ok(()) }
        }
        FleetCommand::Uncordon { base } => {
            let answer = client.uncordon(base)?;
            printer.print(&answer, || format!("{}\n", answer.message));
            Ok(())
        }
        FleetCommand::Rollout { command } => rollout_command(&client, printer, command),
        FleetCommand::Logs { module, version, follow, tail } => {
            let lines = client.logs(module, version.as_deref(), *tail, *follow)?;
            print_logs(lines, printer.output)
        }
    }
}

/// `drain --wait`: polls `GET /api/v1/bases` until the base shows drained (no fleet module
/// assigned or reported), outliving transient errors.
fn wait_drained(client: &Client, printer: &Printer, base: &str, timeout: Duration) -> Result<(), Failure> {
    let start = Instant::now();
    let mut left = String::from("the controller does not list the base");
    while start.elapsed() < timeout {
        match client.bases() {
            Ok(bases) => match bases.iter().find(|b| b.record.id == base) {
                Some(view) if view.drained => {
                    if printer.output == Output::Table {
                        println!(
                            "drained {base} after {:.1} s: it can be stopped",
                            start.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(());
                }
                Some(view) => {
                    let managed: Vec<String> = view
                        .status
                        .iter()
                        .flat_map(|s| &s.modules)
                        .filter(|m| m.managed)
                        .map(|m| format!("{}@{}", m.name, m.version))
                        .collect();
                    left = format!("{} fleet modules left ({})", managed.len(), managed.join(", "));
                }
                None => {
                    // Not live: nothing of the fleet runs there.
                    if printer.output == Output::Table {
                        println!("{base} is not live: nothing to drain");
                    }
                    return Ok(());
                }
            },
            Err(e) if transient(&e) => left = format!("last asked: {e}"),
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(WAIT_POLL);
    }
    Err(local("WAIT_TIMEOUT", format!("{base} not drained after {} s: {left}", timeout.as_secs())))
}

fn rollout_command(client: &Client, printer: &Printer, command: &RolloutAction) -> Result<(), Failure> {
    let (action, args) = match command {
        RolloutAction::Status { module } => {
            let view = client.rollout(module)?;
            printer.print(&view, || render_rollout(&view.rollout, now_ms()));
            return Ok(());
        }
        RolloutAction::History { module } => {
            let view = client.rollout(module)?;
            printer.print(&view, || render_rollout_history(&view));
            return Ok(());
        }
        RolloutAction::Pause(args) => ("pause", args),
        RolloutAction::Resume(args) => ("resume", args),
        RolloutAction::Promote(args) => ("promote", args),
        RolloutAction::Abort(args) => ("abort", args),
    };
    let request = CommandRequest { actor: operator(), reason: args.reason.clone() };
    let view = client.rollout_command(&args.module, action, &request)?;
    printer.print(&view, || render_rollout(&view.rollout, now_ms()));
    Ok(())
}

/// `$USER@host`, who a rollout command says asked.
fn operator() -> String {
    let user =
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// `rollout status`: what a person needs to know of one rollout, one fact a line.
pub fn render_rollout(record: &RolloutRecord, now: u64) -> String {
    let mut out = String::new();
    let steps = rollout::steps(&record.strategy);
    let index = (record.step as usize).min(steps.len() - 1);
    let from = record.from.as_ref().map_or("nothing".to_owned(), |f| f.version.clone());
    let _ = writeln!(
        out,
        "rollout {} {from} → {} (generation {})",
        record.module, record.to.version, record.generation
    );
    let _ = writeln!(out, "state    {}", rollout::state_name(record.state));
    if let Some(who) = &record.paused_by {
        let _ = writeln!(out, "paused by {who}");
    }
    if !record.state.is_finished() {
        let step = &steps[index];
        let phase = match record.phase {
            StepPhase::Moving => "moving bases".to_owned(),
            StepPhase::Holding => {
                let hold = record.strategy.analysis.window_ms.max(match step.pause {
                    Pause::For(ms) => ms,
                    _ => 0,
                });
                let left = (record.phase_ms + hold).saturating_sub(now);
                format!("holding, about {} left", format_duration(left / 100 * 100))
            }
            StepPhase::AwaitingPromotion => "waiting for `pedestal fleet rollout promote`".to_owned(),
            StepPhase::Done => "done".to_owned(),
        };
        let _ = writeln!(out, "step     {} of {}: {phase}", index + 1, steps.len());
        let _ =
            writeln!(out, "bases    {} upgraded, step wants {}", record.upgraded.len(), step.bases_text());
        let _ = writeln!(out, "weight   {}%", rollout::weight(record, step));
    }
    if let Some(a) = &record.analysis {
        let p99 = |m: &crate::model::Measure| m.p99_us.map_or("-".to_owned(), |p| format!("{p}µs"));
        let _ = writeln!(
            out,
            "analysis step {}: {} — old {:.1}% errors p99 {} ({} req), new {:.1}% errors p99 {} ({} req): {}",
            a.step + 1,
            a.verdict,
            a.old.error_rate() * 100.0,
            p99(&a.old),
            a.old.requests,
            a.new.error_rate() * 100.0,
            p99(&a.new),
            a.new.requests,
            a.reason
        );
    }
    if matches!(record.state, RolloutState::RolledBack | RolloutState::Aborted) {
        let _ = writeln!(out, "why      {}", record.reason.as_deref().unwrap_or("(no reason recorded)"));
    }
    out
}

/// `rollout history`: the current rollout's events, then the earlier rollouts.
fn render_rollout_history(view: &RolloutView) -> String {
    let mut out = String::new();
    let record = &view.rollout;
    let _ = writeln!(
        out,
        "rollout {} → {} ({})",
        record.module,
        record.to.version,
        rollout::state_name(record.state)
    );
    for event in &record.history {
        let _ = writeln!(
            out,
            "  {} step {} {} by {}: {}",
            event.at_ms,
            event.step + 1,
            event.event,
            event.actor,
            event.message
        );
    }
    for past in &view.history {
        let from = past.from.as_ref().map_or("nothing".to_owned(), |f| f.version.clone());
        let why = past.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "earlier: generation {} {from} → {} {}{why}",
            past.generation,
            past.to.version,
            rollout::state_name(past.state)
        );
    }
    out
}

/// Prints the fan-in's NDJSON as it arrives: as is (`json`), or as `[base] time level
/// message fields`.
fn print_logs(mut lines: Box<dyn std::io::BufRead + Send>, output: Output) -> Result<(), Failure> {
    use std::io::{BufRead as _, Write as _};
    let mut stdout = std::io::stdout().lock();
    for line in (&mut lines).lines() {
        let line = line.map_err(|e| local("LOGS_INTERRUPTED", format!("the log stream broke off: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let text = match output {
            Output::Json => line,
            Output::Table => match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(object) => render_log_line(&object),
                Err(_) => line,
            },
        };
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(stdout, "{text}").and_then(|()| stdout.flush()).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// One fan-in object as `[base] time level message fields` (or `[base] -- why` for a part's end).
pub fn render_log_line(object: &serde_json::Value) -> String {
    let text = |value: &serde_json::Value, key: &str| {
        value.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned()
    };
    let base = text(object, "base");
    if let Some(end) = object.get("end").and_then(|v| v.as_str()) {
        return format!("[{base}] -- {end}");
    }
    let line = object.get("line").cloned().unwrap_or_default();
    let mut rendered =
        format!("[{base}] {} {:<5} {}", text(&line, "at"), text(&line, "level"), text(&line, "message"));
    let fields = text(&line, "fields");
    if !fields.is_empty() {
        rendered.push(' ');
        rendered.push_str(&fields);
    }
    rendered
}

fn apply(client: &Client, printer: &Printer, file: &Path, wait: Option<Duration>) -> Result<(), Failure> {
    let spec_file = SpecFile::load(file).map_err(|e| local(e.code(), e.to_string()))?;
    let sha256 = match &spec_file.artifact {
        ArtifactSource::Remote { sha256, .. } => sha256.clone(),
        ArtifactSource::Local(path) => {
            let (bytes, sha256) = read_artifact(path)?;
            let pushed = push(client, &bytes, &sha256)?;
            if printer.output == Output::Table && pushed.stored {
                println!(
                    "pushed {}: sha256 {} ({})",
                    path.display(),
                    pushed.sha256,
                    human_bytes(pushed.size)
                );
            }
            sha256
        }
    };
    let spec = spec_file.to_spec(&sha256);
    let answer = client.apply(&spec)?;
    printer.print(&answer, || apply_line(&answer, &spec.version));
    match wait {
        Some(timeout) => wait_serving(client, printer, &spec_file, &answer, timeout),
        None => Ok(()),
    }
}

/// `applied greeter@0.1.0 (generation 2, changed)` or `unchanged greeter@0.1.0 (generation 2)`.
fn apply_line(answer: &ApplyAnswer, version: &str) -> String {
    if answer.changed {
        format!("applied {}@{version} (generation {}, changed)\n", answer.name, answer.generation)
    } else {
        format!("unchanged {}@{version} (generation {})\n", answer.name, answer.generation)
    }
}

/// How long a placement must stay `unschedulable` before `--wait` believes it: the leader
/// re-places at least every second, so a verdict about the previous generation is gone by then.
const UNSCHEDULABLE_CONFIRM: Duration = Duration::from_millis(1_500);

/// How often `--wait` asks.
const WAIT_POLL: Duration = Duration::from_millis(200);

fn wait_serving(
    client: &Client,
    printer: &Printer,
    spec: &SpecFile,
    applied: &ApplyAnswer,
    timeout: Duration,
) -> Result<(), Failure> {
    let start = Instant::now();
    let mut unschedulable_since: Option<Instant> = None;
    let mut last: Option<ModuleView> = None;
    let mut last_error: Option<ClientError> = None;
    while start.elapsed() < timeout {
        let status = match client.status(Some(&spec.name)) {
            Ok(status) => {
                last_error = None;
                status
            }
            // etcd or the leader briefly away (an election, a restart): ask again until the
            // deadline.
            Err(e) if transient(&e) => {
                last_error = Some(e);
                std::thread::sleep(WAIT_POLL);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // A rollout of this version must also have completed; rolled back, it never will.
        let rolled = match client.rollout(&spec.name) {
            Ok(view) if view.rollout.to.version == spec.version => Some(view.rollout),
            _ => None,
        };
        if let Some(record) = &rolled
            && matches!(record.state, RolloutState::RolledBack | RolloutState::Aborted)
        {
            let code = if record.state == RolloutState::RolledBack { "ROLLED_BACK" } else { "ABORTED" };
            return Err(local(code, record.reason.clone().unwrap_or_else(|| "no reason recorded".into())));
        }
        let rolled_out = rolled.as_ref().is_none_or(|r| r.state == RolloutState::Complete);
        if let Some(view) = status.modules.into_iter().find(|m| m.name == spec.name) {
            let current = view.generation >= applied.generation && view.version == spec.version;
            if current && view.state == "placed" && view.ready >= view.wanted && rolled_out {
                if printer.output == Output::Table {
                    let bases: Vec<&str> =
                        view.replicas.iter().filter(|r| r.serving).map(|r| r.base_id.as_str()).collect();
                    match (spec.replicas, view.wanted) {
                        (Replicas::Peer, 0) => println!("no base matches the selector: nothing to wait for"),
                        _ => println!(
                            "serving {}@{} on {} of {} bases ({}) after {:.1} s",
                            view.name,
                            view.version,
                            view.ready,
                            view.wanted,
                            bases.join(", "),
                            start.elapsed().as_secs_f64()
                        ),
                    }
                }
                return Ok(());
            }
            if current && view.state == "unschedulable" {
                let since = *unschedulable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= UNSCHEDULABLE_CONFIRM {
                    return Err(local(
                        "UNSCHEDULABLE",
                        format!(
                            "{}@{}: {}",
                            view.name,
                            view.version,
                            view.reason.as_deref().unwrap_or("no base fits (the controller gave no reason)")
                        ),
                    ));
                }
            } else {
                unschedulable_since = None;
            }
            last = Some(view);
        }
        std::thread::sleep(WAIT_POLL);
    }
    let summary = match &last {
        Some(view) => {
            let waiting: Vec<String> = view
                .replicas
                .iter()
                .filter(|r| !r.serving || r.version != spec.version)
                .map(|r| match &r.reason {
                    Some(reason) => format!("{} {} ({reason})", r.base_id, r.state),
                    None => format!("{} {}", r.base_id, r.state),
                })
                .collect();
            let waiting = if waiting.is_empty() {
                String::new()
            } else {
                format!("; not serving: {}", waiting.join(", "))
            };
            format!("{} of {} replicas serving, placement {}{waiting}", view.ready, view.wanted, view.state)
        }
        None => "the controller does not list it yet".to_owned(),
    };
    let summary = match &last_error {
        Some(e) => format!("{summary}; last asked: {e}"),
        None => summary,
    };
    Err(local(
        "WAIT_TIMEOUT",
        format!("{}@{} after {} s: {summary}", spec.name, spec.version, timeout.as_secs()),
    ))
}

/// An error `--wait` outlives: the controller unreachable, etcd unavailable, no leader, the
/// leader unreachable from a standby.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } => true,
        ClientError::Api { status, code, .. } => {
            matches!(*status, 502..=504)
                || matches!(code.as_str(), "ETCD_UNAVAILABLE" | "NO_LEADER" | "LEADER_UNREACHABLE")
        }
        ClientError::Protocol { .. } => false,
    }
}

/// Pushes unless the fleet already has the bytes (a `HEAD` first: no transfer for known ones).
fn push(client: &Client, bytes: &[u8], sha256: &str) -> Result<crate::client::PushAnswer, Failure> {
    if client.has_artifact(sha256)? {
        return Ok(crate::client::PushAnswer {
            sha256: sha256.to_owned(),
            size: bytes.len() as u64,
            stored: false,
        });
    }
    Ok(client.push(bytes, sha256)?)
}

fn read_artifact(path: &Path) -> Result<(Vec<u8>, String), Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| local("ARTIFACT_UNREADABLE", format!("cannot read {}: {e}", path.display())))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, sha256))
}

/// The token (see [`crate::token::read`]: a file wins over the flag and the environment).
fn fleet_token(token: Option<&str>, file: Option<&Path>) -> Result<Option<String>, Failure> {
    crate::token::read(token, file).map_err(|e| local("FLEET_TOKEN_UNREADABLE", e.to_string()))
}

/// `status`: a header line per module (wanted/ready/state/reason), its replicas one per row,
/// then what bases run unmanaged.
pub fn render_status(status: &FleetStatus, color: bool) -> String {
    if status.modules.is_empty() && status.unmanaged.is_empty() {
        return "no modules: declare one with `pedestal fleet apply FILE`\n".to_owned();
    }
    let mut table = Table::new(&[
        "MODULE", "VERSION", "BASE", "STATE", "SERVING", "HEALTH", "HEAP", "CPU", "REQUESTS", "REASON",
    ]);
    for module in &status.modules {
        let mut note = format!(
            "{}@{} (generation {}): {}/{} ready, {}",
            module.name, module.version, module.generation, module.ready, module.wanted, module.state
        );
        if let Some(reason) = &module.reason {
            let _ = write!(note, ": {reason}");
        }
        table.note(note, state_style(&module.state));
        if let Some(scale) = &module.autoscale {
            table.note(format!("  autoscale: {}", scale_line(scale)), Style::Dim);
        }
        if module.replicas.is_empty() {
            table.note("  (no replica assigned)".to_owned(), Style::Dim);
        }
        for replica in &module.replicas {
            table.row(vec![
                Cell::plain(&module.name),
                Cell::plain(&replica.version),
                Cell::plain(&replica.base_id),
                Cell::new(&replica.state, state_style(&replica.state)),
                Cell::new(
                    if replica.serving { "yes" } else { "no" },
                    if replica.serving { Style::Good } else { Style::Warn },
                ),
                Cell::new(&replica.health, health_style(&replica.health)),
                Cell::plain(human_bytes(replica.heap_bytes)),
                Cell::plain(millicores(replica.cpu_millis)),
                Cell::plain(replica.requests.to_string()),
                Cell::new(replica.reason.as_deref().unwrap_or(""), Style::Bad),
            ]);
        }
    }
    if !status.unmanaged.is_empty() {
        table.note(
            "unmanaged (installed on a base by hand; the fleet never deletes them):".to_owned(),
            Style::Dim,
        );
        for module in &status.unmanaged {
            table.row(vec![
                Cell::plain(&module.name),
                Cell::plain(&module.version),
                Cell::plain(&module.base_id),
                Cell::new(&module.state, state_style(&module.state)),
                Cell::plain("-"),
                Cell::plain("-"),
                Cell::plain("-"),
                Cell::plain("-"),
                Cell::plain("-"),
                Cell::plain(""),
            ]);
        }
    }
    table.render(color)
}

/// `3 replicas (cpu 1.4 cores / target 0.6 per replica)`: an autoscaled count and its load.
pub fn scale_line(scale: &crate::model::ScaleView) -> String {
    let mut load = Vec::new();
    if let Some(target) = scale.target_cpu {
        load.push(format!("cpu {:.1} cores / target {target} per replica", scale.cpu));
    }
    if let Some(target) = scale.target_rps {
        load.push(format!("{:.1} rps / target {target} per replica", scale.rps));
    }
    format!(
        "{} {} ({}; {} to {})",
        scale.replicas,
        plural_word(scale.replicas, "replica", "replicas"),
        load.join(", "),
        scale.min,
        scale.max
    )
}

fn plural_word<'a>(n: u32, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// A base's cordon state for `bases`: `-`, `cordoned`, `draining` or `drained`.
pub fn cordon_state(base: &BaseView) -> &'static str {
    match &base.cordon {
        None => "-",
        Some(cordon) if !cordon.drain => "cordoned",
        Some(_) if base.drained => "drained",
        Some(_) => "draining",
    }
}

/// `bases`: one row per live base.
pub fn render_bases(bases: &[BaseView], color: bool) -> String {
    if bases.is_empty() {
        return "no bases: join one with `pedestal serve --fleet ETCD_URLS --base-id ID`\n".to_owned();
    }
    let mut table =
        Table::new(&["BASE", "LABELS", "MODULES", "MEMORY", "CPU", "ADDRESS", "APPLIED REV", "CORDON"]);
    for base in bases {
        let record = &base.record;
        let labels: Vec<String> = record.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let full = base.modules >= record.capacity.max_modules
            || base.used.memory_bytes > record.capacity.memory_bytes
            || base.used.cpu_millis > record.capacity.cpu_millis;
        table.row(vec![
            Cell::new(&record.id, if full { Style::Warn } else { Style::Plain }),
            Cell::plain(if labels.is_empty() { "-".to_owned() } else { labels.join(",") }),
            Cell::plain(format!("{}/{}", base.modules, record.capacity.max_modules)),
            Cell::plain(format!(
                "{}/{}",
                human_bytes(base.used.memory_bytes),
                human_bytes(record.capacity.memory_bytes)
            )),
            Cell::plain(format!(
                "{}/{}",
                millicores(base.used.cpu_millis),
                millicores(record.capacity.cpu_millis)
            )),
            Cell::plain(&record.traffic_url),
            Cell::plain(
                base.status.as_ref().map(|s| s.applied_revision.to_string()).unwrap_or_else(|| "-".into()),
            ),
            Cell::new(
                match base.cordon.as_ref().and_then(|c| c.reason.as_deref()) {
                    Some(reason) => format!("{} ({reason})", cordon_state(base)),
                    None => cordon_state(base).to_owned(),
                },
                if base.cordon.is_some() { Style::Warn } else { Style::Plain },
            ),
        ]);
    }
    table.render(color)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn wait_outlives_transient_errors_only() {
        let api = |status: u16, code: &str| ClientError::Api {
            status,
            code: code.to_owned(),
            message: String::new(),
        };
        assert!(transient(&api(503, "ETCD_UNAVAILABLE")));
        assert!(transient(&api(503, "NO_LEADER")));
        assert!(transient(&api(502, "LEADER_UNREACHABLE")));
        assert!(transient(&ClientError::Unreachable { url: "u".into(), message: "refused".into() }));
        assert!(!transient(&api(401, "UNAUTHORIZED")));
        assert!(!transient(&api(404, "MODULE_NOT_FOUND")));
        assert!(!transient(&ClientError::Protocol { url: "u".into(), message: "junk".into() }));
    }
    use crate::model::{BaseRecord, BaseStatus, Capacity, ReplicaView, Resources, UnmanagedView};

    fn replica(base: &str, state: &str, serving: bool, reason: Option<&str>) -> ReplicaView {
        ReplicaView {
            base_id: base.into(),
            version: "0.1.0".into(),
            sha256: "aa".repeat(32),
            state: state.into(),
            serving,
            health: if serving { "healthy".into() } else { "unknown".into() },
            reason: reason.map(Into::into),
            heap_bytes: if serving { 3 << 19 } else { 0 },
            cpu_millis: if serving { 12 } else { 0 },
            requests: if serving { 1234 } else { 0 },
        }
    }

    fn check(actual: String, expected: &str) {
        assert_eq!(actual, expected, "\nactual:\n{actual}\nexpected:\n{expected}");
    }

    #[test]
    fn status_is_one_aligned_table_with_a_line_per_module() {
        let status = FleetStatus {
            modules: vec![
                ModuleView {
                    name: "greeter".into(),
                    version: "0.1.0".into(),
                    generation: 2,
                    wanted: 2,
                    ready: 1,
                    state: "placed".into(),
                    reason: None,
                    replicas: vec![
                        replica("base-a", "active", true, None),
                        replica("base-b", "failed", false, Some("SHA256_MISMATCH")),
                    ],
                    autoscale: Some(crate::model::ScaleView {
                        replicas: 2,
                        min: 1,
                        max: 4,
                        cpu: 1.4,
                        rps: 0.0,
                        target_cpu: Some(0.6),
                        target_rps: None,
                    }),
                },
                ModuleView {
                    name: "notes".into(),
                    version: "0.1.0".into(),
                    generation: 1,
                    wanted: 3,
                    ready: 0,
                    state: "unschedulable".into(),
                    reason: Some("0 of 3 replicas placed: 0 bases match tier=db".into()),
                    replicas: vec![],
                    autoscale: None,
                },
            ],
            unmanaged: vec![UnmanagedView {
                base_id: "base-c".into(),
                name: "hand".into(),
                version: "9.0.0".into(),
                state: "active".into(),
            }],
        };
        check(
            render_status(&status, false),
            "\
MODULE   VERSION  BASE    STATE   SERVING  HEALTH   HEAP     CPU  REQUESTS  REASON
greeter@0.1.0 (generation 2): 1/2 ready, placed
  autoscale: 2 replicas (cpu 1.4 cores / target 0.6 per replica; 1 to 4)
greeter  0.1.0    base-a  active  yes      healthy  1.5 MiB  12m  1234
greeter  0.1.0    base-b  failed  no       unknown  0 B      0m   0         SHA256_MISMATCH
notes@0.1.0 (generation 1): 0/3 ready, unschedulable: 0 of 3 replicas placed: 0 bases match tier=db
  (no replica assigned)
unmanaged (installed on a base by hand; the fleet never deletes them):
hand     9.0.0    base-c  active  -        -        -        -    -
",
        );
    }

    #[test]
    fn colours_do_not_shift_columns() {
        let status = FleetStatus {
            modules: vec![ModuleView {
                name: "g".into(),
                version: "0.1.0".into(),
                generation: 1,
                wanted: 1,
                ready: 1,
                state: "placed".into(),
                reason: None,
                replicas: vec![replica("b", "active", true, None)],
                autoscale: None,
            }],
            unmanaged: vec![],
        };
        let coloured = render_status(&status, true);
        assert!(coloured.contains("\x1b[32mactive\x1b[0m"));
        let stripped = coloured.replace("\x1b[32m", "").replace("\x1b[2m", "").replace("\x1b[0m", "");
        check(stripped, &render_status(&status, false));
    }

    #[test]
    fn empty_answers_say_what_to_do() {
        assert!(render_status(&FleetStatus::default(), false).contains("pedestal fleet apply"));
        assert!(render_bases(&[], false).contains("pedestal serve --fleet"));
    }

    #[test]
    fn bases_show_use_of_capacity() {
        let base =
            |id: &str, labels: &[(&str, &str)], used: Resources, modules: u32, status: bool| BaseView {
                record: BaseRecord {
                    id: id.into(),
                    traffic_url: format!("http://127.0.0.1:70{}", modules + 70),
                    admin_url: "http://127.0.0.1:7171".into(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                    capacity: Capacity { memory_bytes: 1 << 30, cpu_millis: 2000, max_modules: 64 },
                    interface_version: "1.3.0".into(),
                    started_ms: 0,
                },
                status: status.then(|| BaseStatus {
                    base_id: id.into(),
                    applied_revision: 42,
                    ..BaseStatus::default()
                }),
                used,
                modules,
                cordon: None,
                drained: false,
            };
        check(
            render_bases(
                &[
                    base(
                        "base-a",
                        &[("tier", "web"), ("zone", "a")],
                        Resources { memory_bytes: 64 << 20, cpu_millis: 150 },
                        2,
                        true,
                    ),
                    BaseView {
                        cordon: Some(crate::model::CordonRecord {
                            base_id: "b".into(),
                            drain: true,
                            actor: "ops".into(),
                            reason: Some("kernel".into()),
                            at_ms: 1,
                        }),
                        drained: true,
                        ..base("b", &[], Resources { memory_bytes: 0, cpu_millis: 0 }, 0, false)
                    },
                ],
                false,
            ),
            "\
BASE    LABELS           MODULES  MEMORY            CPU         ADDRESS                APPLIED REV  CORDON
base-a  tier=web,zone=a  2/64     64.0 MiB/1.0 GiB  150m/2000m  http://127.0.0.1:7072  42           -
b       -                0/64     0 B/1.0 GiB       0m/2000m    http://127.0.0.1:7070  -            drained (kernel)
",
        );
    }

    #[test]
    fn apply_lines() {
        let answer = |changed| ApplyAnswer { name: "greeter".into(), generation: 2, changed };
        assert_eq!(apply_line(&answer(true), "0.1.0"), "applied greeter@0.1.0 (generation 2, changed)\n");
        assert_eq!(apply_line(&answer(false), "0.1.0"), "unchanged greeter@0.1.0 (generation 2)\n");
    }
}
