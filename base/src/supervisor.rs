//! Built-in supervision: `pedestal serve` runs as a small **supervisor** process that binds the
//! listening sockets and runs the real base as a **worker** child process, restarting it when it
//! crashes. Because the supervisor keeps the sockets open, the kernel queues new connections
//! while a worker restarts: clients see no refused connection, only the requests the dead worker
//! was serving fail.
//!
//! A custom base gets the same by calling [`supervise`] at the top of its `main`, before it
//! builds its [`Base`](crate::Base); [`Base::serve`](crate::Base::serve) uses the inherited
//! listeners when it runs in a worker.
//!
//! Restart rules (ARCHITECTURE.md, "Supervision"): a worker killed by a signal, or exiting
//! abnormally after it was ready, is restarted at once; one exiting with
//! [`WORKER_RESTART_EXIT_CODE`] (it asked to be replaced, see the memory limits) too; one that
//! fails before it was ready with an error is not (the error is a setup problem a restart cannot
//! fix), and neither is a crash loop (more than [`MAX_CRASHES`] crashes in [`CRASH_WINDOW`]):
//! the supervisor then stops with a message and a non-zero status.

// Architecture Invariant: the one `unsafe` here adopts the descriptors the supervisor handed over.
#[allow(unsafe_code)]
mod listeners;

use std::{
    collections::VecDeque,
    ffi::OsString,
    io::{BufRead, BufReader, Write},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, ChildStdout, Command, ExitCode, ExitStatus, Stdio},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use rustix::process::{Pid, Signal};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use crate::config::Config;

pub(crate) use listeners::take as inherited_listeners;

/// The exit status with which a worker asks its supervisor for an immediate replacement (after
/// stopping its modules, keeping the recorded state): `EX_TEMPFAIL`.
pub const WORKER_RESTART_EXIT_CODE: i32 = 75;

/// More crashes than this within [`CRASH_WINDOW`] and the supervisor gives up.
pub const MAX_CRASHES: usize = 5;
/// The window [`MAX_CRASHES`] counts in.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// At most this many worker restarts asked for by the memory limits in [`ESCALATION_WINDOW`]:
/// beyond that the next worker is told not to ask again, so a module that leaks at every start
/// cannot turn escalation into a restart loop of the whole base.
const MAX_ESCALATIONS: usize = 3;
const ESCALATION_WINDOW: Duration = Duration::from_secs(600);

/// Environment the supervisor sets for its worker (besides `PEDESTAL_LISTEN_FDS`).
const GENERATION: &str = "PEDESTAL_WORKER_GENERATION";
const SUPERVISOR_PID: &str = "PEDESTAL_SUPERVISOR_PID";
const ESCALATION: &str = "PEDESTAL_WORKER_ESCALATION";

/// The line a base prints on stdout once it serves; the supervisor's readiness signal too.
const READY_PREFIX: &str = "pedestal ready:";

/// This process, as `GET /api/v1/base` shows it: which worker is serving.
#[derive(Debug, Clone, Serialize)]
pub struct BaseProcess {
    /// This process's id (the worker's, when supervised).
    pub pid: u32,
    /// Whether a supervisor runs this process and restarts it when it dies.
    pub supervised: bool,
    /// The supervisor's process id, when supervised.
    pub supervisor_pid: Option<u32>,
    /// 1 for the supervisor's first worker, one more for each restart; 1 when not supervised.
    pub worker_generation: u64,
    /// When this process started (RFC 3339).
    pub started_at: String,
    /// Whether a memory limit may still escalate to a worker restart (see
    /// `--worker-restart-leak-bytes`): only when supervised, and not after
    /// [`MAX_ESCALATIONS`] such restarts in ten minutes.
    pub worker_restart_available: bool,
}

/// What this process is, read once from the environment the supervisor set.
pub fn base_process() -> &'static BaseProcess {
    static PROCESS: OnceLock<BaseProcess> = OnceLock::new();
    PROCESS.get_or_init(|| {
        let generation = std::env::var(GENERATION).ok().and_then(|g| g.parse().ok());
        let supervisor_pid = std::env::var(SUPERVISOR_PID).ok().and_then(|p| p.parse().ok());
        let supervised = generation.is_some() && supervisor_pid.is_some();
        BaseProcess {
            pid: std::process::id(),
            supervised,
            supervisor_pid: supervisor_pid.filter(|_| supervised),
            worker_generation: generation.unwrap_or(1),
            started_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            worker_restart_available: supervised
                && std::env::var(ESCALATION).map_or(true, |value| value != "off"),
        }
    })
}

/// Runs `pedestal serve` supervised, unless this process is already the worker or `config`
/// turns supervision off (`--supervisor off`).
///
/// In the supervisor it binds `config.listen` and `config.admin_listen`, runs this same
/// executable with the same arguments as the worker until the worker stops for good, and
/// returns `Some(exit code)` for `main` to return. In the worker (and unsupervised) it returns
/// `None` at once: build the [`Base`](crate::Base) and [`serve`](crate::Base::serve) it. The
/// worker is killed when its supervisor dies (`PR_SET_PDEATHSIG`), so `kill -9` of the
/// supervisor still ends the whole base.
///
/// ```no_run
/// # fn main() -> anyhow::Result<std::process::ExitCode> {
/// let config = pedestal_base::Config::default();
/// if let Some(exit) = pedestal_base::supervise(&config)? {
///     return Ok(exit);
/// }
/// let base = pedestal_base::Base::new(config)?;
/// tokio::runtime::Runtime::new()?.block_on(base.serve())?;
/// # Ok(std::process::ExitCode::SUCCESS)
/// # }
/// ```
pub fn supervise(config: &Config) -> anyhow::Result<Option<ExitCode>> {
    // Read now, so `started_at` is this process's start.
    base_process();
    if std::env::var_os(GENERATION).is_some() {
        die_with_supervisor()?;
        return Ok(None);
    }
    if !config.supervisor {
        return Ok(None);
    }
    config.validate()?;
    // The supervisor's only thread that forks is this one, and it lives until the supervisor
    // exits: the worker's death signal is tied to the thread that forked it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(Supervisor::bind(config)?.run()).map(Some)
}

/// Asks the supervisor for a fresh worker: [`Base::serve`](crate::Base::serve) stops every
/// module (keeping the recorded state, as at shutdown) and exits with
/// [`WORKER_RESTART_EXIT_CODE`]. Returns `false`, and does nothing, when no supervisor would
/// start another worker (unsupervised, or escalations exhausted).
pub(crate) fn request_worker_restart() -> bool {
    if !base_process().worker_restart_available {
        return false;
    }
    if !RESTART_WANTED.swap(true, Ordering::SeqCst) {
        // A stored permit: `serve` may not be waiting yet.
        RESTART.notify_one();
    }
    true
}

/// Ends when a worker restart was requested.
pub(crate) async fn worker_restart_requested() {
    RESTART.notified().await
}

/// Whether a worker restart was requested.
pub(crate) fn worker_restart_wanted() -> bool {
    RESTART_WANTED.load(Ordering::SeqCst)
}

static RESTART: Notify = Notify::const_new();
static RESTART_WANTED: AtomicBool = AtomicBool::new(false);

/// In the worker: asks the kernel to kill this process when the supervisor dies, then checks
/// the supervisor did not die before that request (the parent would then be another process).
fn die_with_supervisor() -> anyhow::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    let expected = base_process().supervisor_pid;
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
    if expected.is_some() && parent != expected {
        anyhow::bail!("the supervisor (pid {expected:?}) is gone; this worker stops");
    }
    Ok(())
}

struct Supervisor {
    traffic: std::net::TcpListener,
    admin: std::net::TcpListener,
    fds: String,
    arg0: OsString,
    args: Vec<OsString>,
    /// Whether the `pedestal ready:` line went out on stdout (once, for the first ready worker).
    ready_printed: Arc<AtomicBool>,
}

/// How one worker ended, and whether it had become ready.
struct Ended {
    pid: u32,
    status: ExitStatus,
    ready: bool,
    /// The supervisor forwarded SIGTERM or SIGINT to it.
    stopping: bool,
}

impl Supervisor {
    fn bind(config: &Config) -> anyhow::Result<Self> {
        let bind = |addr, what| {
            std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
        };
        let traffic = bind(config.listen, "traffic")?;
        let admin = bind(config.admin_listen, "operations API")?;
        let fds = format!("{},{}", listeners::share(&traffic)?, listeners::share(&admin)?);
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| "pedestal".into());
        Ok(Self { traffic, admin, fds, arg0, args: args.collect(), ready_printed: Arc::default() })
    }

    async fn run(self) -> anyhow::Result<ExitCode> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tracing::info!(
            traffic = %self.traffic.local_addr()?,
            operations = %self.admin.local_addr()?,
            "supervisor: listening; the worker process hosts the modules"
        );
        let (mut crashes, mut escalations) = (VecDeque::new(), VecDeque::<Instant>::new());
        for generation in 1.. {
            escalations.retain(|at| at.elapsed() < ESCALATION_WINDOW);
            let escalation = escalations.len() < MAX_ESCALATIONS;
            let ended = self.run_worker(generation, escalation, &mut term, &mut interrupt).await?;
            let Ended { pid, status, ready, stopping } = ended;
            let how = describe(status);
            match next_step(status, ready, stopping) {
                Next::Stop => {
                    tracing::info!(pid, generation, "supervisor: the worker {how}; stopping");
                    return Ok(exit_code(status, stopping));
                }
                Next::Replace => {
                    tracing::warn!(
                        pid,
                        generation,
                        "supervisor: the worker asked for a fresh process (a memory limit escalated); \
                         starting the next worker"
                    );
                    escalations.push_back(Instant::now());
                }
                Next::GiveUp => {
                    tracing::error!(
                        pid,
                        generation,
                        "supervisor: the worker {how} before it was ready; not restarting it (a \
                         restart would fail the same way): see its error above"
                    );
                    return Ok(exit_code(status, false));
                }
                Next::Restart => {
                    crashes.push_back(Instant::now());
                    crashes.retain(|at: &Instant| at.elapsed() < CRASH_WINDOW);
                    if crashes.len() > MAX_CRASHES {
                        tracing::error!(
                            pid,
                            generation,
                            "supervisor: the worker {how}: {} crashes within {} s, a crash loop; not \
                             restarting it. Find the cause in the log above (a crash record, a \
                             module quarantined, a bad state file) and start the base again",
                            crashes.len(),
                            CRASH_WINDOW.as_secs()
                        );
                        return Ok(exit_code(status, false));
                    }
                    tracing::error!(pid, generation, "supervisor: the worker {how}; restarting it at once");
                }
            }
        }
        unreachable!("the generations never run out")
    }

    /// Starts worker `generation`, and waits until it ends, forwarding SIGTERM and SIGINT and
    /// printing its ready line.
    async fn run_worker(
        &self,
        generation: u64,
        escalation: bool,
        term: &mut tokio::signal::unix::Signal,
        interrupt: &mut tokio::signal::unix::Signal,
    ) -> anyhow::Result<Ended> {
        let mut child = self.spawn(generation, escalation)?;
        let pid = child.id();
        tracing::info!(pid, generation, "supervisor: worker started");
        let (ready_tx, ready_rx) = oneshot::channel();
        let stdout = child.stdout.take().expect("the worker's stdout is piped");
        let printed = Arc::clone(&self.ready_printed);
        std::thread::Builder::new()
            .name("pedestal-stdout".into())
            .spawn(move || forward_stdout(stdout, ready_tx, &printed))?;
        let (exit_tx, mut exit_rx) = oneshot::channel();
        std::thread::Builder::new().name("pedestal-wait".into()).spawn(move || wait(child, exit_tx))?;

        let mut ready_rx = Some(ready_rx);
        let (mut ready, mut stopping) = (false, false);
        let status = loop {
            tokio::select! {
                became = async { ready_rx.as_mut().expect("guarded").await }, if ready_rx.is_some() => {
                    ready_rx = None;
                    if became.is_ok() {
                        ready = true;
                        tracing::info!(pid, generation, "supervisor: worker ready");
                    }
                }
                _ = term.recv() => {
                    stopping = true;
                    forward(pid, Signal::TERM);
                }
                _ = interrupt.recv() => {
                    stopping = true;
                    forward(pid, Signal::INT);
                }
                status = &mut exit_rx => break status??,
            }
        };
        if let Some(rx) = ready_rx {
            // Its ready line and its exit race on two threads: look once more.
            ready |= tokio::time::timeout(Duration::from_millis(200), rx).await.is_ok_and(|r| r.is_ok());
        }
        Ok(Ended { pid, status, ready, stopping })
    }

    fn spawn(&self, generation: u64, escalation: bool) -> anyhow::Result<Child> {
        // `/proc/self/exe` rather than the path: the worker is the very binary the supervisor
        // runs, even if the file was replaced on disk since (a rebuild, a package upgrade), so
        // its flags always mean what the supervisor parsed.
        Command::new("/proc/self/exe")
            .arg0(&self.arg0)
            .args(&self.args)
            .env(GENERATION, generation.to_string())
            .env(SUPERVISOR_PID, std::process::id().to_string())
            .env(listeners::LISTEN_FDS, &self.fds)
            .env(ESCALATION, if escalation { "on" } else { "off" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start the worker process: {e}"))
    }
}

/// What the supervisor does after a worker ended (before the crash-loop count).
#[derive(Debug, PartialEq)]
enum Next {
    /// Exit with the worker's status: it stopped as asked (SIGTERM or SIGINT, forwarded), or it
    /// exited cleanly on its own.
    Stop,
    /// Start a fresh worker at once, not counted as a crash: it asked for one
    /// ([`WORKER_RESTART_EXIT_CODE`]).
    Replace,
    /// Start a fresh worker at once, counted towards the crash loop: killed by a signal, or
    /// failed after it was ready.
    Restart,
    /// Exit with the worker's status: it failed with an error before it was ready, which a
    /// restart would only repeat.
    GiveUp,
}

/// The restart rules, over one worker's end: its status, whether it had printed its ready line,
/// and whether the supervisor had forwarded a stop signal to it.
fn next_step(status: ExitStatus, ready: bool, stopping: bool) -> Next {
    if stopping || status.success() {
        Next::Stop
    } else if status.code() == Some(WORKER_RESTART_EXIT_CODE) {
        Next::Replace
    } else if status.signal().is_none() && !ready {
        Next::GiveUp
    } else {
        Next::Restart
    }
}

fn wait(mut child: Child, done: oneshot::Sender<std::io::Result<ExitStatus>>) {
    let _ = done.send(child.wait());
}

fn forward(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32)
        && let Err(e) = rustix::process::kill_process(pid, signal)
    {
        tracing::warn!(pid = pid.as_raw_nonzero().get(), "supervisor: cannot signal the worker: {e}");
    }
}

/// Copies the worker's stdout to the supervisor's. Its `pedestal ready:` line is the readiness
/// signal; it goes out once (the first ready worker's), before anything the worker printed
/// earlier, so it stays the first line on stdout.
fn forward_stdout(stdout: ChildStdout, ready: oneshot::Sender<String>, printed: &AtomicBool) {
    let mut ready = Some(ready);
    let mut held = Vec::new();
    let mut out = std::io::stdout();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if ready.is_none() {
            let _ = writeln!(out, "{line}");
        } else if line.starts_with(READY_PREFIX) {
            if !printed.swap(true, Ordering::SeqCst) {
                let _ = writeln!(out, "{line}");
            }
            for line in held.drain(..) {
                let _ = writeln!(out, "{line}");
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(line);
            }
        } else {
            held.push(line);
        }
        let _ = out.flush();
    }
    for line in held {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// "was killed by signal SIGSEGV (11), core dumped" or "exited with status 1".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!(
            "was killed by signal {} ({signal}){}",
            signal_name(signal),
            if status.core_dumped() { ", core dumped" } else { "" }
        ),
        (None, None) => format!("ended ({status})"),
    }
}

/// The supervisor's own exit code for a worker's status: the worker's code, or 128 plus the
/// signal that killed it, as a shell reports it. A worker killed by the very signal the
/// supervisor forwarded (before it had installed its handlers) stopped as asked: success.
fn exit_code(status: ExitStatus, stopping: bool) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) if stopping && (signal == libc::SIGTERM || signal == libc::SIGINT) => {
            ExitCode::SUCCESS
        }
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGXCPU => "SIGXCPU",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: i32, described: &str, code: u8) {
        let status = ExitStatus::from_raw(raw);
        assert_eq!(describe(status), described);
        assert_eq!(exit_code(status, false), ExitCode::from(code));
    }

    #[test]
    fn statuses_are_described_and_mapped_as_a_shell_would() {
        check(0, "exited with status 0", 0);
        check(1 << 8, "exited with status 1", 1);
        check(75 << 8, "exited with status 75", 75);
        check(libc::SIGABRT, "was killed by signal SIGABRT (6)", 134);
        check(libc::SIGSEGV | 0x80, "was killed by signal SIGSEGV (11), core dumped", 139);
        check(libc::SIGKILL, "was killed by signal SIGKILL (9)", 137);
    }

    fn step(raw: i32, ready: bool, stopping: bool, expected: Next) {
        assert_eq!(next_step(ExitStatus::from_raw(raw), ready, stopping), expected, "{raw:#x}");
    }

    #[test]
    fn restart_rules() {
        use Next::*;
        let (exit, abort, segv, kill) = (|code: i32| code << 8, libc::SIGABRT, libc::SIGSEGV, libc::SIGKILL);
        // Crashes restart, before or after ready: the next worker quarantines the culprit.
        step(abort, true, false, Restart);
        step(segv | 0x80, true, false, Restart);
        step(kill, false, false, Restart);
        // An error exit restarts only after ready; before, it is a setup error (STATE_INVALID).
        step(exit(1), true, false, Restart);
        step(exit(1), false, false, GiveUp);
        step(exit(2), false, false, GiveUp);
        // Asked for a fresh process (memory escalation): replaced, ready or not.
        step(exit(WORKER_RESTART_EXIT_CODE), true, false, Replace);
        step(exit(WORKER_RESTART_EXIT_CODE), false, false, Replace);
        // A clean exit, or any end after a forwarded SIGTERM/SIGINT, stops the supervisor.
        step(exit(0), true, false, Stop);
        step(exit(0), true, true, Stop);
        step(libc::SIGTERM, false, true, Stop);
        step(segv, true, true, Stop);
        step(exit(WORKER_RESTART_EXIT_CODE), true, true, Stop);
    }

    #[test]
    fn a_worker_killed_by_the_forwarded_stop_signal_stopped_as_asked() {
        let term = ExitStatus::from_raw(libc::SIGTERM);
        assert_eq!(exit_code(term, true), ExitCode::SUCCESS);
        assert_eq!(exit_code(term, false), ExitCode::from(143));
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGSEGV), true), ExitCode::from(139));
    }
}
