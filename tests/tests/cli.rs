//! The operator's commands (`pedestal ls`, `show`, `switch`, `traffic`, `rm`, `retry`, `limits`,
//! `rollback`, `logs`, `health`, `spis`, `call`, `top`, `completions`) as an operator runs
//! them: the real binary against a real base, each answer checked against what the operations
//! API says. `top` runs in a real terminal (tmux) and is read off its screen.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use pedestal_tests::{TestBase, artifacts, eventually};
use serde_json::{Value, json};

/// `pedestal ARGS --admin <base> --token <its token>`, with nothing from the environment.
fn pedestal(base: &TestBase, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--admin", &base.admin, "--token", base.token()]);
    run(&all, &[])
}

/// `pedestal ARGS` with only `env` of the `PEDESTAL_*` variables, no colours, in a directory
/// without a `pedestal-data`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("running pedestal")
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(artifacts::PEDESTAL);
    command.current_dir(std::env::temp_dir()).args(args).env("NO_COLOR", "1").stdin(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("PEDESTAL_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The command's stdout, once it succeeded.
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// `pedestal ARGS` that must succeed, its stdout.
fn ok_with(base: &TestBase, args: &[&str]) -> String {
    ok(pedestal(base, args))
}

/// The lines of a table, each split into its cells (columns are at least two spaces apart;
/// a cell holds single spaces, `5m 03s`).
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| {
            line.split("  ").map(str::trim).filter(|cell| !cell.is_empty()).map(str::to_owned).collect()
        })
        .collect()
}

/// The row of `table` whose first cells are `key`.
fn row<'a>(rows: &'a [Vec<String>], key: &[&str]) -> &'a [String] {
    rows.iter()
        .find(|row| row.len() >= key.len() && row.iter().zip(key).all(|(cell, k)| cell == k))
        .unwrap_or_else(|| panic!("no row {key:?} in {rows:#?}"))
}

/// Installs a fixture with `pedestal install` and checks its one-line report.
fn install(base: &TestBase, file: &str, extra: &[&str]) -> String {
    let mut args = vec!["install", file];
    args.extend_from_slice(extra);
    let report = ok_with(base, &args);
    assert!(report.starts_with("installed "), "{report}");
    report
}

#[test]
fn ls_and_show_tell_what_runs() {
    let base = TestBase::start();
    install(&base, artifacts::GOOD, &[]);
    install(&base, artifacts::VERSIONED_1_0_0, &[]);
    install(&base, artifacts::VERSIONED_1_1_0, &[]);
    for _ in 0..7 {
        assert_eq!(base.get("/fx-good/ping").body, "pong");
    }
    // A module whose start hook never returns: START_TIMEOUT, and it stays listed as broken.
    let hangs = pedestal(&base, &["install", artifacts::START_HANGS]);
    assert_eq!(hangs.status.code(), Some(1), "{hangs:?}");
    assert!(stderr(&hangs).starts_with("error: START_TIMEOUT: "), "{}", stderr(&hangs));

    let listing = ok_with(&base, &["ls"]);
    let rows = table(&listing);
    assert_eq!(
        rows[0],
        ["MODULE", "VERSION", "STATE", "TRAFFIC", "REQUESTS", "5XX", "P99", "HEAP", "CPU", "UPTIME"],
        "{listing}"
    );
    let good = row(&rows, &["fx-good", "0.1.0"]);
    assert_eq!(&good[2..6], ["active", "active", "7", "0"], "{listing}");
    assert!(good[6].ends_with("µs") || good[6].ends_with("ms"), "p99 {:?}: {listing}", good[6]);
    assert!(good[7].ends_with("KiB") || good[7].ends_with("MiB"), "heap {:?}: {listing}", good[7]);
    assert!(good[9].ends_with('s'), "uptime {:?}: {listing}", good[9]);
    assert_eq!(&row(&rows, &["fx-versioned", "1.0.0"])[2..5], ["active", "active", "0"], "{listing}");
    assert_eq!(&row(&rows, &["fx-versioned", "1.1.0"])[2..5], ["inactive", "-", "0"], "{listing}");
    assert_eq!(row(&rows, &["fx-start-hangs", "0.1.0"])[2], "broken", "{listing}");
    assert!(
        listing.contains("fx-start-hangs@0.1.0 is broken: `pedestal show fx-start-hangs` says why"),
        "the broken one stands out without colour too: {listing}"
    );
    assert!(!listing.contains('\x1b'), "no colour off a terminal: {listing:?}");

    let page = ok_with(&base, &["show", "fx-versioned"]);
    assert!(page.starts_with("fx-versioned: active version 1.0.0\n"), "{page}");
    let rows = table(&page);
    assert_eq!(
        rows.iter().find(|r| r.first().is_some_and(|c| c == "VERSION")).unwrap(),
        &["VERSION", "STATE", "TRAFFIC", "HEALTH", "REQUESTS", "5XX", "P99", "HEAP", "CPU", "UPTIME"],
        "{page}"
    );
    assert_eq!(&row(&rows, &["1.0.0"])[1..4], ["active", "active", "healthy"], "{page}");
    assert_eq!(&row(&rows, &["1.1.0"])[1..4], ["inactive", "-", "healthy"], "{page}");
    // Limits with their sources, once for both versions.
    assert!(page.contains("\nlimits (every version)\n"), "{page}");
    assert_eq!(row(&rows, &["request_timeout_ms"])[1..], ["30s", "default"], "{page}");
    // Each version's history, in order.
    let sha = base.module("fx-versioned")["sha256"].as_str().unwrap()[..12].to_owned();
    assert!(page.contains(&format!("fx-versioned@1.0.0  sha256 {sha}  interface 1.3.0  unsigned")), "{page}");
    let history: Vec<&[String]> =
        rows.iter().filter(|r| r.get(2).is_some_and(|c| c == "install")).map(Vec::as_slice).collect();
    assert_eq!(history.len(), 6, "three steps per version: {page}");
    assert_eq!(history[2][1..], ["active", "install", "started and receiving traffic"], "{page}");
    assert_eq!(history[5][1..], ["inactive", "install", "started; another version is active"], "{page}");

    let broken = ok_with(&base, &["show", "fx-start-hangs"]);
    assert!(broken.contains("  health    broken: "), "the reason is shown: {broken}");
}

#[test]
fn switch_traffic_rollback_and_rm_change_what_serves() {
    let base = TestBase::start();
    install(&base, artifacts::VERSIONED_1_0_0, &[]);
    install(&base, artifacts::VERSIONED_1_1_0, &[]);

    let switched = ok_with(&base, &["switch", "fx-versioned", "1.1.0"]);
    assert!(switched.starts_with("switched fx-versioned to 1.1.0 (from 1.0.0) in "), "{switched}");
    assert_eq!(base.get("/fx-versioned/version").body, "1.1.0");

    let split = ok_with(&base, &["traffic", "fx-versioned", "1.0.0=90", "1.1.0=10"]);
    assert_eq!(split, "fx-versioned: 1.0.0=90 (90%), 1.1.0=10 (10%) (active version 1.1.0)\n");
    let weights = base.admin_get("/api/v1/modules/fx-versioned/traffic").json;
    assert_eq!(weights["weights"], json!({"1.0.0": 90, "1.1.0": 10}), "{weights}");
    assert_eq!(ok_with(&base, &["traffic", "fx-versioned"]), split, "without weights it shows them");
    let rows = table(&ok_with(&base, &["ls"]));
    assert_eq!(row(&rows, &["fx-versioned", "1.0.0"])[3], "90%");
    assert_eq!(row(&rows, &["fx-versioned", "1.1.0"])[3], "active 10%");
    let cleared = ok_with(&base, &["traffic", "fx-versioned", "--clear"]);
    assert_eq!(cleared, "fx-versioned: every request goes to the active version, 1.1.0\n");
    assert_eq!(base.admin_get("/api/v1/modules/fx-versioned/traffic").json["weights"], Value::Null);

    let rolled = ok_with(&base, &["rollback", "fx-versioned"]);
    assert!(
        rolled.starts_with("rolled back fx-versioned to 1.0.0 (switched; 1.1.0 is now inactive) in "),
        "{rolled}"
    );
    assert_eq!(base.get("/fx-versioned/version").body, "1.0.0");

    let removed = ok_with(&base, &["rm", "fx-versioned@1.1.0"]);
    assert_eq!(removed, "removed fx-versioned@1.1.0 (stopped); 1.0.0 has the traffic\n");
    let listed = base.admin_get("/api/v1/modules").json;
    let versions: Vec<&str> =
        listed["modules"].as_array().unwrap().iter().map(|m| m["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["1.0.0"], "{listed}");
    let retired = ok_with(&base, &["show", "fx-versioned"]);
    assert!(retired.contains("\nretired\n"), "{retired}");
    assert_eq!(&row(&table(&retired), &["1.1.0", "stopped"])[..2], ["1.1.0", "stopped"], "{retired}");
}

#[test]
fn retry_loads_a_module_that_crashed_the_base() {
    let base = TestBase::start();
    install(&base, artifacts::GOOD, &[]);
    install(&base, artifacts::CRASHY, &[]);
    // abort(): the worker dies, the supervisor starts another, which quarantines fx-crashy.
    assert!(ureq::get(&format!("{}/fx-crashy/abort", base.traffic)).call().is_err());
    eventually("fx-crashy quarantined", Duration::from_secs(20), || {
        let listed = base.try_admin("GET", "/api/v1/modules", &[], None).ok()?;
        (listed.json["quarantined"][0]["name"] == "fx-crashy").then_some(())
    });
    let listing = ok_with(&base, &["ls"]);
    let rows = table(&listing);
    assert_eq!(&row(&rows, &["fx-crashy", "0.1.0"])[2..4], ["quarantined", "-"], "{listing}");
    assert!(
        listing.contains("fx-crashy quarantined: ")
            && listing.contains("`pedestal retry fx-crashy@0.1.0` loads it again"),
        "{listing}"
    );
    let health = ok_with(&base, &["health"]);
    assert!(health.starts_with("base degraded"), "{health}");
    assert!(health.contains("needs an operator\n  fx-crashy@0.1.0 quarantined: "), "{health}");
    assert!(health.contains("crashes\n"), "{health}");

    assert_eq!(ok_with(&base, &["retry", "fx-crashy@0.1.0"]), "retried fx-crashy@0.1.0: active\n");
    assert_eq!(base.get("/fx-crashy/ok").body, "fine");
    let again = pedestal(&base, &["retry", "fx-crashy@0.1.0"]);
    assert_eq!(again.status.code(), Some(1), "nothing left to retry: {again:?}");
    assert!(stderr(&again).starts_with("error: NOT_FOUND: "), "{}", stderr(&again));
}

#[test]
fn limits_show_their_sources_and_change_one_at_a_time() {
    let base = TestBase::start();
    install(&base, artifacts::LIMITED, &[]);
    let shown = ok_with(&base, &["limits", "fx-limited"]);
    let rows = table(&shown);
    assert_eq!(rows[0], ["fx-limited 0.1.0"], "{shown}");
    assert_eq!(rows[1], ["LIMIT", "VALUE", "SOURCE"], "{shown}");
    assert_eq!(row(&rows, &["max_concurrent_requests"])[1..], ["2", "manifest"], "{shown}");
    assert_eq!(row(&rows, &["request_timeout_ms"])[1..], ["300ms", "manifest"], "{shown}");
    assert_eq!(row(&rows, &["memory_soft_limit_bytes"])[1..], ["none", "default"], "{shown}");

    let set =
        ok_with(&base, &["limits", "fx-limited", "--max-concurrent", "5", "--memory-soft-limit", "64MiB"]);
    let rows = table(&set);
    assert_eq!(row(&rows, &["max_concurrent_requests"])[1..], ["5", "api"], "{set}");
    assert_eq!(row(&rows, &["memory_soft_limit_bytes"])[1..], ["64.0 MiB (67108864)", "api"], "{set}");
    // A second change keeps the first's other override.
    let changed = ok_with(
        &base,
        &["limits", "fx-limited", "--max-concurrent", "default", "--request-timeout-ms", "750"],
    );
    let overrides = base.admin_get("/api/v1/modules/fx-limited/limits").json["overrides"].clone();
    assert_eq!(overrides["max_concurrent_requests"], Value::Null, "{overrides}");
    assert_eq!(overrides["memory_soft_limit_bytes"], 64 << 20, "{overrides}");
    assert_eq!(overrides["request_timeout_ms"], 750, "{overrides}");
    assert_eq!(row(&table(&changed), &["max_concurrent_requests"])[1..], ["2", "manifest"], "{changed}");
    assert!(
        changed.ends_with("set through the API: memory_soft_limit_bytes=67108864 request_timeout_ms=750\n"),
        "{changed}"
    );
    let cleared = ok_with(&base, &["limits", "fx-limited", "--clear"]);
    assert!(!cleared.contains(" api\n"), "{cleared}");

    let bad = pedestal(&base, &["limits", "fx-limited", "--memory-soft-limit", "lots"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error: {bad:?}");
    assert!(stderr(&bad).contains("not a size"), "{}", stderr(&bad));
}

#[test]
fn logs_tail_filter_and_follow() {
    let base = TestBase::start();
    install(&base, artifacts::GOOD, &[]);
    assert_eq!(base.get("/fx-good/log").body, "logged");
    assert_eq!(base.get("/fx-good/log-burst?n=5").body, "logged 5");

    let tail = ok_with(&base, &["logs", "fx-good", "--tail", "2"]);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 2, "{tail}");
    assert!(lines[0].ends_with(" info  [0.1.0] burst line 3"), "{tail}");
    assert!(lines[1].ends_with(" info  [0.1.0] burst line 4"), "{tail}");
    let warnings = ok_with(&base, &["logs", "fx-good", "--level", "warn"]);
    assert_eq!(warnings.lines().count(), 1, "{warnings}");
    assert!(warnings.trim_end().ends_with(" warn  [0.1.0] fixture log line"), "{warnings}");

    // -f: the stream, line by line as the module writes them, until it is stopped.
    let mut follow = command(
        &["logs", "fx-good", "-f", "--tail", "0", "--admin", &base.admin, "--token", base.token()],
        &[],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let (sender, followed) = mpsc::channel();
    let out = follow.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    // The stream is open once the base has the subscriber: log until lines come through.
    let stop = Arc::new(AtomicBool::new(false));
    let logging = {
        let (stop, traffic) = (Arc::clone(&stop), base.traffic.clone());
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = ureq::get(&format!("{traffic}/fx-good/log")).call();
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let next = || followed.recv_timeout(Duration::from_secs(10)).expect("a followed line");
    // Each request logs a tracing line and then a `log` line; the first may be a request's
    // second line, when it was under way as the stream opened.
    let mut first = next();
    if !first.contains("fixture tracing line") {
        first = next();
    }
    assert!(first.ends_with(" info  [0.1.0] fixture tracing line answer=42"), "{first}");
    let second = next();
    assert!(second.ends_with(" warn  [0.1.0] fixture log line"), "{second}");
    stop.store(true, Ordering::Relaxed);
    logging.join().unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn health_spis_and_call() {
    let base = TestBase::start();
    install(&base, artifacts::ECHO, &[]);
    install(&base, artifacts::ECHO_CALLER, &[]);

    let health = ok_with(&base, &["health"]);
    assert!(health.starts_with("base ok, interface 1.3.0: 2 active\n"), "{health}");
    let rows = table(&health);
    assert_eq!(rows[1], ["MODULE", "VERSION", "STATE", "HEALTH", "REASONS"], "{health}");
    assert_eq!(row(&rows, &["fx-echo"])[1..], ["0.1.0", "active", "healthy"], "{health}");

    let spis = ok_with(&base, &["spis"]);
    assert_eq!(
        spis,
        "\
SPI   DECLARED  IMPLEMENTED BY         REQUIRED BY
echo  -         fx-echo@0.1.0 (1.1.0)  fx-echo-caller@0.1.0 (1.1.0)
"
    );

    let called = ok_with(&base, &["call", "echo", "echo", r#"["hi"]"#, "--module", "fx-echo"]);
    let (module, result) = called.split_once(": ").unwrap();
    assert_eq!(module, "fx-echo@0.1.0", "{called}");
    assert_eq!(
        serde_json::from_str::<Value>(result).unwrap(),
        json!({"text": "hi", "by": "fx-echo", "length": 2})
    );
    let fanned = ok_with(&base, &["call", "echo", "fail", r#"["NO_STOCK"]"#]);
    assert!(fanned.starts_with("fx-echo@0.1.0: error NO_STOCK: "), "{fanned}");
    let refused = pedestal(&base, &["call", "echo", "fail", r#"["NO_STOCK"]"#, "--module", "fx-echo"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).starts_with("error: NO_STOCK: "), "{}", stderr(&refused));
    let not_json = pedestal(&base, &["call", "echo", "echo", "hi"]);
    assert_eq!(not_json.status.code(), Some(1));
    assert!(
        stderr(&not_json).starts_with("error: BAD_ARGUMENTS: \"hi\" is not JSON"),
        "{}",
        stderr(&not_json)
    );
}

#[test]
fn errors_are_the_apis_code_and_message_with_an_exit_status() {
    let base = TestBase::start();
    let check = |output: Output, status: i32, message: &str| {
        assert_eq!(output.status.code(), Some(status), "{output:?}");
        assert_eq!(stderr(&output).lines().next().unwrap_or_default(), message, "{output:?}");
        assert!(stdout(&output).is_empty(), "{output:?}");
    };
    check(pedestal(&base, &["show", "nope"]), 1, "error: NOT_FOUND: module nope not found");
    check(pedestal(&base, &["rm", "nope@1.0.0"]), 1, "error: NOT_FOUND: nope@1.0.0 not found");
    check(
        run(&["ls", "--admin", &base.admin, "--token", "not-the-token-at-all"], &[]),
        1,
        "error: UNAUTHORIZED: missing or invalid bearer token (give the base's token with --token, \
         PEDESTAL_ADMIN_TOKEN, or --data-dir for its admin-token)",
    );
    // No base there: exit 2, as `pedestal fleet` does for its controller.
    let nobody = run(&["ls", "--admin", "http://127.0.0.1:9", "--token", "x"], &[]);
    assert_eq!(nobody.status.code(), Some(2), "{nobody:?}");
    assert!(
        stderr(&nobody).starts_with("error: cannot reach the base at http://127.0.0.1:9: "),
        "{}",
        stderr(&nobody)
    );
    // A usage mistake is clap's (exit 2), before any request.
    let usage = pedestal(&base, &["rm", "fx-good"]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    assert!(stderr(&usage).contains("is not MODULE@VERSION"), "{}", stderr(&usage));

    // The environment: PEDESTAL_ADMIN, the older PEDESTAL_ADMIN_URL, PEDESTAL_ADMIN_TOKEN, and
    // the token read from the data directory of a base on this machine.
    let data_dir = base.data_dir().to_str().unwrap();
    for env in [
        vec![("PEDESTAL_ADMIN", base.admin.as_str()), ("PEDESTAL_ADMIN_TOKEN", base.token())],
        vec![("PEDESTAL_ADMIN_URL", base.admin.as_str()), ("PEDESTAL_DATA_DIR", data_dir)],
    ] {
        assert_eq!(
            ok(run(&["ls"], &env)),
            "no modules: install one with `pedestal install FILE.so`\n",
            "{env:?}"
        );
    }
}

#[test]
fn output_json_is_the_apis_answer() {
    let base = TestBase::start();
    install(&base, artifacts::VERSIONED_1_0_0, &[]);
    install(&base, artifacts::ECHO, &[]);
    let json = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let text = ok_with(&base, &all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    };
    let answer = |path: &str| base.admin_get(path).json;
    let names = |list: &Value| -> Vec<String> {
        list["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}@{}", m["name"], m["version"]))
            .collect()
    };
    assert_eq!(names(&json(&["ls"])), names(&answer("/api/v1/modules")));
    assert_eq!(
        json(&["show", "fx-versioned"])["versions"][0]["sha256"],
        answer("/api/v1/modules/fx-versioned")["versions"][0]["sha256"]
    );
    assert_eq!(json(&["spis"]), answer("/api/v1/spis"));
    assert_eq!(json(&["limits", "fx-versioned"]), answer("/api/v1/modules/fx-versioned/limits"));
    assert_eq!(json(&["traffic", "fx-versioned"]), answer("/api/v1/modules/fx-versioned/traffic"));
    assert_eq!(json(&["health"])["status"], "ok");
    assert_eq!(json(&["logs", "fx-versioned"])["module"], "fx-versioned");
    assert_eq!(json(&["call", "echo", "echo", r#"["x"]"#, "--module", "fx-echo"])["result"]["text"], "x");
    let samples = eventually("a first sample of fx-versioned", Duration::from_secs(5), || {
        let samples = json(&["top", "--once"]);
        let sampled = samples["instances"]
            .as_array()?
            .iter()
            .any(|i| i["name"] == "fx-versioned" && i["samples"][0].is_object());
        sampled.then_some(samples)
    });
    assert_eq!(samples["interval_ms"], 1000, "{samples}");
    let installed = ok_with(&base, &["install", artifacts::VERSIONED_1_1_0, "--output", "json"]);
    let installed: Value = serde_json::from_str(&installed).unwrap();
    assert_eq!(
        (installed["version"].as_str(), installed["state"].as_str()),
        (Some("1.1.0"), Some("inactive"))
    );
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in
        [("bash", "_pedestal()"), ("zsh", "#compdef pedestal"), ("fish", "complete -c pedestal")]
    {
        let script = ok(run(&["completions", shell], &[]));
        assert!(script.contains(marker), "{shell}: {script}");
        for command in ["ls", "show", "switch", "traffic", "rollback", "top"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let unknown = run(&["completions", "tcsh"], &[]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
}

/// A tmux server of the test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(name: &str) -> Self {
        Self { socket: format!("pedestal-cli-{name}-{}", std::process::id()) }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .env("TERM", "xterm-256color")
            .env("NO_COLOR", "1")
            .output()
            .expect("tmux is installed (Debian package tmux)")
    }

    fn screen(&self) -> String {
        stdout(&self.run(&["capture-pane", "-p", "-t", "top"]))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn top_is_a_live_view_in_a_real_terminal() {
    let base = TestBase::start();
    install(&base, artifacts::GOOD, &[]);
    install(&base, artifacts::VERSIONED_1_0_0, &[]);
    let exit_file = tempfile::NamedTempFile::new().unwrap();
    let exit_path = exit_file.path().to_str().unwrap().to_owned();
    let tmux = Tmux::new("top");
    let top = format!(
        "{} top --admin {} --token {}; echo $? > {exit_path}; sleep 5",
        artifacts::PEDESTAL,
        base.admin,
        base.token()
    );
    let started = tmux.run(&["new-session", "-d", "-s", "top", "-x", "160", "-y", "40", &top]);
    assert!(started.status.success(), "{started:?}");

    // Traffic for fx-good only, while the screen is read.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, traffic) = (Arc::clone(&stop), base.traffic.clone());
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = ureq::get(&format!("{traffic}/fx-good/ping")).call();
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut last = String::new();
    let rate = eventually("top to show fx-good's requests", Duration::from_secs(10), || {
        last = tmux.screen();
        let rows = table(&last);
        let good = rows.iter().find(|r| r.first().is_some_and(|c| c == "fx-good"))?;
        let rate: f64 = good.get(3)?.parse().ok()?;
        (rate > 0.0).then_some(rate)
    });
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let screen = tmux.screen();
    assert!(screen.starts_with("pedestal top  "), "{screen}");
    assert!(screen.contains(&format!("  {}  2 instances  ", base.admin)), "{screen}");
    let rows = table(&screen);
    assert!(
        rows.iter().any(|r| r[..]
            == [
                "MODULE",
                "VERSION",
                "STATE",
                "REQ/S",
                "5XX/S",
                "P50",
                "P99",
                "HEAP",
                "CPU",
                "REQ/S, LAST MINUTE"
            ]),
        "{screen}"
    );
    assert_eq!(row(&rows, &["fx-versioned"])[1..5], ["1.0.0", "active", "0", "0"], "{screen}");
    assert!(rate > 0.0 && rate < 1_000.0, "{rate}: {last}");
    assert!(screen.contains("fx-good@0.1.0 requests/s: "), "the selected row's charts: {screen}");

    assert!(tmux.run(&["send-keys", "-t", "top", "q"]).status.success());
    let status = eventually("top to quit on q", Duration::from_secs(5), || {
        std::fs::read_to_string(&exit_path).ok().filter(|s| !s.trim().is_empty())
    });
    assert_eq!(status.trim(), "0", "top exits cleanly; last screen:\n{}", tmux.screen());
}
