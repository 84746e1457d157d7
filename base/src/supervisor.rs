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
//! [`WORKER_RESTART_EXIT_CODE`] (it asked to be replaced, see the memory limits) too, uncounted
//! while escalations are available; the first worker failing before it was ready with an error
//! is not (the error is a setup problem a restart cannot fix), and neither is a crash loop (more
//! than [`MAX_CRASHES`] crashes in [`CRASH_WINDOW`]): the supervisor then stops with a message
//! and a non-zero status.

mod listeners;

use std::{
    collections::VecDeque,
    ffi::OsString,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::{
        fd::OwnedFd,
        unix::process::{CommandExt, ExitStatusExt},
    },
    process::{Child, ChildStdout, Command, ExitCode, ExitStatus, Stdio},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use rustix::process::{Pid, PidfdFlags, Signal};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use crate::config::Config;
pub use crate::config::{CRASH_WINDOW, MAX_CRASHES};

pub(crate) use listeners::take as inherited_listeners;

/// The exit status with which a worker asks its supervisor for an immediate replacement (after
/// stopping its modules, keeping the recorded state): `EX_TEMPFAIL`.
pub const WORKER_RESTART_EXIT_CODE: i32 = 75;

/// At most this many worker restarts asked for by the memory limits in [`ESCALATION_WINDOW`]:
/// beyond that the next worker is told not to ask again, so a module that leaks at every start
/// cannot turn escalation into a restart loop of the whole base.
const MAX_ESCALATIONS: usize = 3;
const ESCALATION_WINDOW: Duration = Duration::from_secs(600);

/// Environment the supervisor sets for its worker (besides `PEDESTAL_LISTEN_FDS`, which
/// `pedestal_host::sys` reads).
const GENERATION: &str = "PEDESTAL_WORKER_GENERATION";
const SUPERVISOR_PID: &str = "PEDESTAL_SUPERVISOR_PID";
const ESCALATION: &str = "PEDESTAL_WORKER_ESCALATION";

/// The line a base prints on stdout once it serves; the supervisor's readiness signal too.
const READY_PREFIX: &[u8] = b"pedestal ready:";

/// The listen backlog of both sockets, as tokio's `TcpListener::bind` uses: the queue that holds
/// the connections made while a worker restarts (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;

/// What the supervisor told its worker through the environment, read once at the worker's start
/// (then removed from the environment, so processes a module starts do not inherit it).
#[derive(Debug, Default)]
pub(crate) struct Handover {
    generation: Option<u64>,
    supervisor_pid: Option<u32>,
    /// `false` only when the supervisor said `off`.
    escalation: bool,
    /// Whether this process is a worker (the supervisor set a generation).
    is_worker: bool,
}

/// The hand-over, read from the environment on the first call.
pub(crate) fn handover() -> &'static Handover {
    static HANDOVER: OnceLock<Handover> = OnceLock::new();
    HANDOVER.get_or_init(|| {
        let var = |name| std::env::var(name).ok();
        Handover {
            generation: var(GENERATION).and_then(|g| g.parse().ok()),
            supervisor_pid: var(SUPERVISOR_PID).and_then(|p| p.parse().ok()),
            escalation: var(ESCALATION).is_none_or(|value| value != "off"),
            is_worker: std::env::var_os(GENERATION).is_some(),
        }
    })
}

/// This process, as `GET /api/v1/base` shows it: which worker is serving.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
        let Handover { generation, supervisor_pid, escalation, .. } = *handover();
        let supervised = generation.is_some() && supervisor_pid.is_some();
        BaseProcess {
            pid: std::process::id(),
            supervised,
            supervisor_pid: supervisor_pid.filter(|_| supervised),
            worker_generation: generation.unwrap_or(1),
            started_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            worker_restart_available: supervised && escalation,
        }
    })
}

/// The variables that carry secrets: the operations token and every module configuration value.
pub(crate) const TOKEN_VARIABLE: &str = "PEDESTAL_ADMIN_TOKEN";

/// Reads the secrets the environment carries (the token was parsed into the config already; the
/// `PEDESTAL_CONFIG__*` module values are kept by `services::module_config`) and removes them
/// from the environment of the process that will load modules, while it is single-threaded. The
/// supervisor keeps them: it loads no module, and its worker inherits them from it.
pub(crate) fn forget_secrets() {
    let mut names = crate::services::module_config::take_environment();
    names.push(TOKEN_VARIABLE.to_owned());
    listeners::forget_environment(&names, "the operations token and module configuration values");
}

/// Runs `pedestal serve` supervised, unless this process is already the worker or `config`
/// turns supervision off (`--supervisor off`).
///
/// In the supervisor it binds `config.listen` and `config.admin_listen`, runs this same
/// executable with the same arguments as the worker until the worker stops for good, and
/// returns `Some(exit code)` for `main` to return. In the worker (and unsupervised) it returns
/// `None` at once: build the [`Base`](crate::Base) and [`serve`](crate::Base::serve) it.
/// The worker is killed when its supervisor dies (`PR_SET_PDEATHSIG`), so `kill -9` of the
/// supervisor still ends the whole base. In the worker it also reads the supervisor's hand-over
/// variables (`PEDESTAL_LISTEN_FDS`, `PEDESTAL_WORKER_GENERATION`...) and removes them from the
/// environment, so call it while the process is still single-threaded: before any runtime or
/// thread is started, before any module can load.
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
    if handover().is_worker {
        // Read above; a process a module starts must not believe it is a worker, nor find the
        // base's descriptor numbers or its supervisor's pid.
        listeners::forget_environment(
            &[listeners::LISTEN_FDS, GENERATION, SUPERVISOR_PID, ESCALATION],
            "the supervisor's hand-over variables",
        );
        forget_secrets();
        die_with_supervisor()?;
        return Ok(None);
    }
    if !config.supervisor {
        forget_secrets();
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

/// How one worker ended, and what the restart rules need to know about it.
struct Ended {
    pid: u32,
    /// 1 for the supervisor's first worker.
    generation: u64,
    status: ExitStatus,
    ready: bool,
    /// The supervisor received SIGTERM, SIGINT or SIGHUP (and forwarded it, unless the worker
    /// had already exited).
    stopping: bool,
    /// Whether the worker was allowed to ask for a fresh process ([`WORKER_RESTART_EXIT_CODE`]).
    escalation: bool,
}

impl Supervisor {
    fn bind(config: &Config) -> anyhow::Result<Self> {
        let bind =
            |addr, what| listen(addr).map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"));
        let traffic = bind(config.listen, "traffic")?;
        let admin = bind(config.admin_listen, "operations API")?;
        let fds = format!("{},{}", listeners::share(&traffic)?, listeners::share(&admin)?);
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| "pedestal".into());
        Ok(Self { traffic, admin, fds, arg0, args: args.collect(), ready_printed: Arc::default() })
    }

    async fn run(self) -> anyhow::Result<ExitCode> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut stops = StopSignals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        };
        tracing::info!(
            traffic = %self.traffic.local_addr()?,
            operations = %self.admin.local_addr()?,
            "supervisor: listening; the worker process hosts the modules"
        );
        let (mut crashes, mut escalations) = (VecDeque::new(), VecDeque::<Instant>::new());
        for generation in 1.. {
            escalations.retain(|at| at.elapsed() < ESCALATION_WINDOW);
            let escalation = escalations.len() < MAX_ESCALATIONS;
            let ended = self.run_worker(generation, escalation, &mut stops).await?;
            let Ended { pid, status, stopping, .. } = ended;
            let how = describe(status);
            match next_step(&ended) {
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
                    if status.code() == Some(WORKER_RESTART_EXIT_CODE) {
                        tracing::warn!(
                            pid,
                            generation,
                            "supervisor: the worker exited with status {WORKER_RESTART_EXIT_CODE} but \
                             was not allowed to ask for a fresh process (escalations used up): \
                             counted as a crash"
                        );
                    }
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

    /// Starts worker `generation`, and waits until it ends, forwarding SIGTERM, SIGINT and
    /// SIGHUP (as SIGTERM) and printing its ready line.
    async fn run_worker(
        &self,
        generation: u64,
        escalation: bool,
        stops: &mut StopSignals,
    ) -> anyhow::Result<Ended> {
        let mut child = self.spawn(generation, escalation)?;
        let pid = child.id();
        // Opened before the waiting thread can reap the worker: a signal sent through it reaches
        // this very process or nobody, never another process that reused the pid.
        let pidfd =
            Pid::from_raw(pid as i32).and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok());
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
            // Biased, signals first: a Ctrl-C reaches both processes, and when the worker's
            // exit and the supervisor's signal are both pending, the exit must be classified
            // as the stop it is, not as a crash to restart.
            let signal = tokio::select! {
                biased;
                _ = stops.term.recv() => Signal::TERM,
                _ = stops.interrupt.recv() => Signal::INT,
                // The worker's own graceful stop is SIGTERM; a hang-up means the same.
                _ = stops.hangup.recv() => Signal::TERM,
                status = &mut exit_rx => break status??,
                became = async { ready_rx.as_mut().expect("guarded").await }, if ready_rx.is_some() => {
                    ready_rx = None;
                    if became.is_ok() {
                        ready = true;
                        tracing::info!(pid, generation, "supervisor: worker ready");
                    }
                    continue;
                }
            };
            stopping = true;
            // Forwarded only while its exit is not observed yet: once it is, the worker is
            // reaped and its pid may belong to another process.
            match exit_rx.try_recv() {
                Ok(status) => break status?,
                Err(oneshot::error::TryRecvError::Empty) => forward(pid, pidfd.as_ref(), signal),
                Err(oneshot::error::TryRecvError::Closed) => {
                    anyhow::bail!("the thread waiting for worker {pid} ended without its status")
                }
            }
        };
        if let Some(rx) = ready_rx {
            // Its ready line and its exit race on two threads: look once more.
            ready |= tokio::time::timeout(Duration::from_millis(200), rx).await.is_ok_and(|r| r.is_ok());
        }
        Ok(Ended { pid, generation, status, ready, stopping, escalation })
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

/// The supervisor's stop signals, installed once for every worker.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

/// What the supervisor does after a worker ended (before the crash-loop count).
#[derive(Debug, PartialEq)]
enum Next {
    /// Exit with the worker's status: it stopped as asked (SIGTERM, SIGINT or SIGHUP), or it
    /// exited cleanly on its own.
    Stop,
    /// Start a fresh worker at once, not counted as a crash: it asked for one
    /// ([`WORKER_RESTART_EXIT_CODE`]) and was allowed to.
    Replace,
    /// Start a fresh worker at once, counted towards the crash loop: killed by a signal, failed
    /// after it was ready, failed before it was ready but after an earlier worker had started
    /// (so the setup is sound and the failure may be transient), or exited with
    /// [`WORKER_RESTART_EXIT_CODE`] without being allowed to ask (a module calling `exit(75)`).
    Restart,
    /// Exit with the worker's status: the first worker failed with an error before it was
    /// ready, which a restart would only repeat.
    GiveUp,
}

/// The restart rules, over one worker's end: its status, whether it had printed its ready line,
/// whether the supervisor had received a stop signal, its generation and whether it was allowed
/// to ask for a fresh process.
fn next_step(ended: &Ended) -> Next {
    let Ended { status, ready, stopping, generation, escalation, .. } = *ended;
    if stopping || status.success() {
        Next::Stop
    } else if status.code() == Some(WORKER_RESTART_EXIT_CODE) && escalation {
        Next::Replace
    } else if status.signal().is_none() && !ready && generation == 1 {
        Next::GiveUp
    } else {
        Next::Restart
    }
}

/// Binds `addr` as tokio's `TcpListener::bind` does (`SO_REUSEADDR`, so a restarted base does
/// not wait out `TIME_WAIT`), with a backlog of [`LISTEN_BACKLOG`] rather than std's 128: while a
/// worker restarts, every new connection waits in this queue.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

fn wait(mut child: Child, done: oneshot::Sender<std::io::Result<ExitStatus>>) {
    let _ = done.send(child.wait());
}

/// Sends `signal` to the worker: through its pidfd when the kernel gave one (which cannot hit a
/// reused pid), else by pid (the caller checked the worker was not reaped yet).
fn forward(pid: u32, pidfd: Option<&OwnedFd>, signal: Signal) {
    let sent = match (pidfd, Pid::from_raw(pid as i32)) {
        (Some(pidfd), _) => rustix::process::pidfd_send_signal(pidfd, signal),
        (None, Some(pid)) => rustix::process::kill_process(pid, signal),
        (None, None) => return,
    };
    if let Err(e) = sent {
        tracing::warn!(pid, "supervisor: cannot signal the worker: {e}");
    }
}

/// Copies the worker's stdout to the supervisor's. Its `pedestal ready:` line is the readiness
/// signal; it goes out once (the first ready worker's), before anything the worker printed
/// earlier, so it stays the first line on stdout.
///
/// Bytes, not text, and until end of file whatever happens: the worker's stdout is shared with
/// its modules, and if this end of the pipe closed early (say, at a module's invalid UTF-8),
/// every later `println!` in the worker would panic, the ready line's among them.
fn forward_stdout(stdout: ChildStdout, ready: oneshot::Sender<()>, printed: &AtomicBool) {
    let mut ready = Some(ready);
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut out = std::io::stdout();
    let mut stdout = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdout.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A pipe does not fail short of its end; stop reading rather than spin.
                tracing::warn!("supervisor: cannot read the worker's stdout: {e}");
                break;
            }
        }
        if ready.is_none() {
            let _ = out.write_all(&line);
        } else if line.starts_with(READY_PREFIX) {
            if !printed.swap(true, Ordering::SeqCst) {
                let _ = out.write_all(&line);
            }
            for line in held.drain(..) {
                let _ = out.write_all(&line);
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
        } else {
            held.push(line.clone());
        }
        let _ = out.flush();
    }
    for line in held {
        let _ = out.write_all(&line);
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
        (None, Some(libc::SIGTERM | libc::SIGINT | libc::SIGHUP)) if stopping => ExitCode::SUCCESS,
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

    /// How a worker ended, for [`next_step`]: the first worker, allowed to escalate, unless
    /// the case says otherwise.
    fn ended(raw: i32, ready: bool, stopping: bool) -> Ended {
        Ended { pid: 1, generation: 1, status: ExitStatus::from_raw(raw), ready, stopping, escalation: true }
    }

    fn step(ended: Ended, expected: Next) {
        let (raw, generation) = (ended.status.into_raw(), ended.generation);
        assert_eq!(next_step(&ended), expected, "{raw:#x}, generation {generation}");
    }

    #[test]
    fn restart_rules() {
        use Next::*;
        let (exit, abort, segv, kill) = (|code: i32| code << 8, libc::SIGABRT, libc::SIGSEGV, libc::SIGKILL);
        let later = |ended: Ended| Ended { generation: 2, ..ended };
        let no_escalation = |ended: Ended| Ended { escalation: false, ..ended };
        // Crashes restart, before or after ready: the next worker quarantines the culprit.
        step(ended(abort, true, false), Restart);
        step(ended(segv | 0x80, true, false), Restart);
        step(ended(kill, false, false), Restart);
        // An error exit restarts only after ready; before, the first worker's is a setup error
        // (STATE_INVALID).
        step(ended(exit(1), true, false), Restart);
        step(ended(exit(1), false, false), GiveUp);
        step(ended(exit(2), false, false), GiveUp);
        // A later worker's error before ready follows a setup that worked: a crash, counted.
        step(later(ended(exit(1), false, false)), Restart);
        step(later(ended(exit(2), false, false)), Restart);
        // Asked for a fresh process (memory escalation): replaced, ready or not.
        step(ended(exit(WORKER_RESTART_EXIT_CODE), true, false), Replace);
        step(ended(exit(WORKER_RESTART_EXIT_CODE), false, false), Replace);
        step(later(ended(exit(WORKER_RESTART_EXIT_CODE), true, false)), Replace);
        // Not allowed to ask (escalations used up): a 75 is a crash like any other exit.
        step(no_escalation(ended(exit(WORKER_RESTART_EXIT_CODE), true, false)), Restart);
        step(later(no_escalation(ended(exit(WORKER_RESTART_EXIT_CODE), false, false))), Restart);
        step(no_escalation(ended(exit(WORKER_RESTART_EXIT_CODE), false, false)), GiveUp);
        // A clean exit, or any end after a stop signal, stops the supervisor.
        step(ended(exit(0), true, false), Stop);
        step(ended(exit(0), true, true), Stop);
        step(ended(libc::SIGTERM, false, true), Stop);
        step(ended(segv, true, true), Stop);
        step(ended(exit(WORKER_RESTART_EXIT_CODE), true, true), Stop);
        step(later(ended(exit(1), false, true)), Stop);
    }

    #[test]
    fn a_worker_killed_by_the_forwarded_stop_signal_stopped_as_asked() {
        let term = ExitStatus::from_raw(libc::SIGTERM);
        assert_eq!(exit_code(term, true), ExitCode::SUCCESS);
        assert_eq!(exit_code(term, false), ExitCode::from(143));
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGHUP), true), ExitCode::SUCCESS);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGSEGV), true), ExitCode::from(139));
    }
}
