//! `cargo xtask demo --fleet`: a fleet on this machine. Starts one etcd (its own data dir under
//! `target/demo-fleet/`, free loopback ports), a controller and three bases labelled
//! `zone=a|b|c,tier=web`, writes spec files for the example modules, applies them with the real
//! `pedestal fleet apply --wait`, and prints what to try. Ctrl-C stops everything.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{cargo, deploy, exec, project_root};

/// The bases: id and labels.
const BASES: &[(&str, &str)] =
    &[("base-a", "zone=a,tier=web"), ("base-b", "zone=b,tier=web"), ("base-c", "zone=c,tier=web")];

/// How long each part gets to come up.
const START_DEADLINE: Duration = Duration::from_secs(30);

pub fn run() -> anyhow::Result<()> {
    exec(cargo().args(["build", "--release", "-p", "pedestal"]))?;
    let greeter = deploy::build(&deploy::Target::Dir(project_root().join("examples/greeter")))?.library;
    let notes = deploy::build(&deploy::Target::Dir(project_root().join("examples/notes")))?.library;

    let root = project_root();
    let pedestal = root.join("target/release/pedestal");
    let dir = root.join("target").join("demo-fleet");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("specs"))?;
    let token_file = dir.join("fleet-token");
    // Like the base's admin-token: readable by its owner only.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&token_file)?
        .write_all(random_token()?.as_bytes())?;
    let token = deploy::read_token(&token_file)?;

    let mut fleet = Fleet { children: Vec::new() };

    // etcd: one member on free loopback ports, run as the fleet docs say (--pre-vote).
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let etcd_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let etcd = Command::new("etcd")
        .args(["--name", "demo", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("demo={peer_url}"), "--pre-vote"])
        .stdout(Stdio::null())
        .stderr(log_file(&dir, "etcd")?)
        .spawn()
        .context("starting etcd (`cargo xtask test` installs Debian's etcd-server)")?;
    fleet.add("etcd", etcd);
    wait_for(&format!("etcd at {etcd_url}"), || {
        Ok(ureq::get(&format!("{etcd_url}/health")).call().is_ok_and(|r| r.status() == 200))
    })?;

    // The controller: the scheduler and the fleet API (any number may run; this one leads).
    let controller_port = if TcpListener::bind("127.0.0.1:7080").is_ok() { 7080 } else { free_port()? };
    let controller_url = format!("http://127.0.0.1:{controller_port}");
    let controller = Command::new(&pedestal)
        .args(["controller", "--etcd", &etcd_url, "--listen", &format!("127.0.0.1:{controller_port}")])
        .args(["--id", "controller-1", "--data-dir"])
        .arg(dir.join("controller-1"))
        .env("PEDESTAL_FLEET_TOKEN", &token)
        .stdout(Stdio::null())
        .stderr(log_file(&dir, "controller-1")?)
        .spawn()
        .context("starting pedestal controller")?;
    fleet.add("controller-1", controller);
    // A JSON answer of the controller's API, or `None` while it cannot give one.
    let api = |path: &str| -> Option<serde_json::Value> {
        let request =
            ureq::get(&format!("{controller_url}{path}")).set("authorization", &format!("Bearer {token}"));
        request.call().ok()?.into_json().ok()
    };
    wait_for("the controller to lead", || Ok(api("/api/v1/leader").is_some_and(|v| v["leading"] == true)))?;

    // Three bases joining the fleet, each on its own free ports. No supervisor, so that
    // `kill -9 PID` kills the whole base (what the demo invites you to do).
    let mut bases = Vec::new();
    for (id, labels) in BASES {
        let (traffic, admin) = (free_port()?, free_port()?);
        let mut base = Command::new(&pedestal)
            .args(["serve", "--listen", &format!("127.0.0.1:{traffic}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}"), "--supervisor", "off", "--data-dir"])
            .arg(dir.join(id))
            .args(["--fleet", &etcd_url, "--base-id", id, "--labels", labels])
            .env("PEDESTAL_FLEET_TOKEN", &token)
            .stdout(Stdio::piped())
            .stderr(log_file(&dir, id)?)
            .spawn()
            .with_context(|| format!("starting {id}"))?;
        let ready = ready_line(base.stdout.take().expect("piped stdout"));
        let pid = base.id();
        fleet.add(id, base);
        match ready.recv_timeout(START_DEADLINE) {
            Ok(line) if line.starts_with("pedestal ready") => {}
            _ => bail!(
                "{id} did not report ready within {START_DEADLINE:?}: see {}",
                log_path(&dir, id).display()
            ),
        }
        bases.push((*id, traffic, admin, pid));
    }
    wait_for("the three bases to register", || {
        Ok(api("/api/v1/bases").and_then(|v| v.as_array().map(Vec::len)) == Some(BASES.len()))
    })?;

    // The example modules' spec files, applied with the real CLI.
    let greeter_spec = dir.join("specs/greeter.toml");
    std::fs::write(&greeter_spec, greeter_spec_text(&greeter))?;
    let notes_spec = dir.join("specs/notes.toml");
    std::fs::write(&notes_spec, notes_spec_text(&notes))?;
    let fleet_cli = |args: &[&str]| {
        let mut command = Command::new(&pedestal);
        command
            .arg("fleet")
            .args(args)
            .env("PEDESTAL_CONTROLLER", &controller_url)
            .env("PEDESTAL_FLEET_TOKEN", &token);
        command
    };
    for spec in [&greeter_spec, &notes_spec] {
        exec(fleet_cli(&["apply", "--wait", "--timeout", "30"]).arg(spec))?;
    }
    println!();
    exec(&mut fleet_cli(&["status"]))?;

    let (a, b, c) = (&bases[0], &bases[1], &bases[2]);
    println!(
        "\nA fleet runs: etcd at {etcd_url}, a controller at {controller_url}, three bases.\n\
         Logs: {logs}/*.log. The fleet token is in {token_file}.\n\
         In another shell:\n  \
         export PEDESTAL_CONTROLLER={controller_url} PEDESTAL_FLEET_TOKEN=$(cat {token_file})\n  \
         alias pedestal={pedestal}\n\
         Try:\n  \
         pedestal fleet status\n  \
         pedestal fleet bases\n  \
         curl -i '127.0.0.1:{ta}/greeter/hello?name=Ada'   (x-pedestal-base: the base that served it)\n  \
         curl -i '127.0.0.1:{tc}/greeter/hello?name=Bob'   (a base without greeter forwards it)\n  \
         curl -XPOST 127.0.0.1:{tb}/notes/notes -d 'buy milk'   (notes runs on every base: peer = true)\n  \
         kill -9 {pa}   (base-a; then `pedestal fleet status`: its replica is re-placed within seconds)\n  \
         edit {greeter_spec} (replicas = 3), then: pedestal fleet apply {greeter_spec} --wait\n  \
         pedestal fleet delete greeter\n  \
         pedestal fleet status --output json\n  \
         curl -H \"authorization: Bearer $PEDESTAL_FLEET_TOKEN\" {controller_url}/api/v1/endpoints/notes\n  \
         etcdctl --endpoints={etcd_url} get --prefix /pedestal/ --keys-only\n\
         Base pids: base-a {pa}, base-b {pb}, base-c {pc}. Ctrl-C stops the fleet.",
        logs = dir.display(),
        token_file = token_file.display(),
        pedestal = pedestal.display(),
        greeter_spec = greeter_spec.display(),
        ta = a.1,
        tb = b.1,
        tc = c.1,
        pa = a.3,
        pb = b.3,
        pc = c.3,
    );
    fleet.watch()
}

/// The greeter on two of the three bases, spread.
fn greeter_spec_text(library: &Path) -> String {
    format!(
        "# The example greeter on two web bases, one per zone if it can.\n\
         name = \"greeter\"\n\
         version = \"0.1.0\"\n\
         artifact = \"{}\"\n\
         replicas = 2\n\
         placement = \"spread\"\n\
         [selector]\n\
         tier = \"web\"\n\
         [resources]\n\
         memory = \"16MiB\"\n\
         cpu = 0.05\n",
        library.display()
    )
}

/// The notes module on every web base, with its configuration.
fn notes_spec_text(library: &Path) -> String {
    format!(
        "# The example notes module on every web base (peer mode).\n\
         name = \"notes\"\n\
         version = \"0.1.0\"\n\
         artifact = \"{}\"\n\
         peer = true\n\
         [selector]\n\
         tier = \"web\"\n\
         [limits]\n\
         max_concurrent_requests = 64\n\
         [config]\n\
         title = \"Pedestal fleet notes\"\n\
         max_notes = 100\n",
        library.display()
    )
}

/// The processes of the demo, stopped (TERM, then KILL) in reverse order when dropped: on an
/// error, and when etcd or the controller ended. On Ctrl-C the terminal sends SIGINT to every
/// process of the group, so they stop by themselves.
struct Fleet {
    children: Vec<(String, Child)>,
}

impl Fleet {
    fn add(&mut self, name: &str, child: Child) {
        self.children.push((name.to_owned(), child));
    }

    /// Reports each process that ends; returns once etcd or the controller did.
    fn watch(mut self) -> anyhow::Result<()> {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let mut vital = None;
            self.children.retain_mut(|(name, child)| match child.try_wait() {
                Ok(Some(status)) => {
                    println!("{name} exited ({status})");
                    if name == "etcd" || name.starts_with("controller") {
                        vital = Some(name.clone());
                    }
                    false
                }
                _ => true,
            });
            if let Some(name) = vital {
                bail!("{name} ended: stopping the demo");
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, child) in self.children.iter_mut().rev() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The first line a base prints on stdout (`pedestal ready: ...`); the rest is drained.
fn ready_line(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = sender.send(line);
        }
        for _ in lines {}
    });
    receiver
}

/// Calls `ready` every 100 ms until it says yes, for at most [`START_DEADLINE`].
fn wait_for(what: &str, mut ready: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if ready()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {START_DEADLINE:?} waiting for {what} (logs under target/demo-fleet/)")
}

/// A port nothing listens on now (the OS's pick).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<File> {
    let path = log_path(dir, name);
    File::create(&path).with_context(|| format!("creating {}", path.display()))
}

/// 32 hex characters from the OS's random source: the demo fleet's token.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
