//! The fleet under load (issue 15's harness): real etcd, a real controller, real `pedestal serve
//! --fleet` bases, HAProxy in front of them, and a load generator counting every answer.
//!
//! Ten modules (one `fx-versioned` library deployed under ten
//! names) upgraded in place from 1.0.0 to 1.1.0 while load runs through HAProxy and straight
//! at the bases, without one failed request. With `PEDESTAL_SLOW_TESTS=1` also: bases keep
//! serving through etcd losing its leader, a frozen member and ten seconds without quorum, and
//! a spec change applies afterwards; and a rollout holding a step rides out the same faults
//! and completes by itself. The same upgrade with 2 replicas on 3 bases goes through a
//! base that forwards; and 200 upgrade cycles leave each base's RSS within 5% of what it was
//! after a warm-up (a leak check). Latencies are printed, never asserted.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use pedestal_tests::{
    artifacts,
    etcd::Etcd,
    eventually,
    fleet::{Controller, Fleet, SpecDir, fleet_cli},
    lb::{Backend, Haproxy},
    load::{Load, LoadReport},
};

/// One fleet at a time: each test starts several processes, and leases of a few seconds must
/// not run out because the two cores are busy starting another test's fleet.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn slow_tests() -> bool {
    std::env::var_os("PEDESTAL_SLOW_TESTS").is_some()
}

/// How long `apply --wait` may take (generous: the two cores are shared).
const WAIT: &str = "120";

/// A spec of `fx-versioned` at `version` deployed as `name` with `replicas`.
fn spec(name: &str, version: &str, replicas: u32) -> String {
    let artifact = match version {
        "1.0.0" => artifacts::VERSIONED_1_0_0,
        "1.1.0" => artifacts::VERSIONED_1_1_0,
        other => panic!("no fx-versioned build {other}"),
    };
    format!("name = {name:?}\nversion = {version:?}\nartifact = {artifact:?}\nreplicas = {replicas}\n")
}

/// `pedestal fleet apply --wait` of `name` at `version`, which must succeed.
///
/// The upgrade is judged on errors (and health), hardly on latency: these tests load two shared
/// cores to the full, and the default p99 bound (2×) once rolled back an identical build whose
/// p99 moved from 16 to 65 ms under that starvation. Latency analysis is not what they test.
fn apply_wait(controller: &Controller, specs: &SpecDir, name: &str, version: &str, replicas: u32) {
    let judged = format!(
        "{}[rollout]\nsteps = [{{ bases = \"100%\" }}]\n[rollout.analysis]\nmax_latency_ratio = 100.0\n",
        spec(name, version, replicas)
    );
    let file = specs.write(name, &judged);
    let path = file.to_str().expect("a UTF-8 path");
    fleet_cli(controller, &["apply", path, "--wait", "--timeout", WAIT]).ok();
}

/// HAProxy in front of every base of `fleet`.
fn haproxy(fleet: &Fleet) -> Haproxy {
    let backends: Vec<Backend> = fleet.bases.iter().map(|b| Backend::new(b.id(), &b.traffic)).collect();
    Haproxy::start(&backends)
}

/// Load on `/<module>/work` of each module: one thread through HAProxy and one straight at the
/// bases (round-robin; a base without the module forwards) per module.
fn load_on(modules: &[String], lb: &Haproxy, fleet: &Fleet) -> Vec<Load> {
    let bases: Vec<String> = fleet.bases.iter().map(|b| b.traffic.clone()).collect();
    modules
        .iter()
        .flat_map(|m| {
            let path = format!("/{m}/work");
            [Load::start(vec![lb.url().to_owned()], &path, 1, &[]), Load::start(bases.clone(), &path, 1, &[])]
        })
        .collect()
}

/// Every load's window since the previous call, merged into one line per load for a message,
/// and the worst p99 among them.
fn windows(loads: &[Load]) -> (Vec<LoadReport>, Duration) {
    let reports: Vec<LoadReport> = loads.iter().map(Load::window).collect();
    let worst = reports.iter().map(|r| r.p99).max().unwrap_or_default();
    (reports, worst)
}

/// Stops every load; panics with every report unless none failed a request. The reports.
fn stop_without_failures(loads: Vec<Load>, what: &str) -> Vec<LoadReport> {
    let reports: Vec<LoadReport> = loads.into_iter().map(Load::stop).collect();
    let failed: u64 = reports.iter().map(LoadReport::failed).sum();
    let total: u64 = reports.iter().map(|r| r.total).sum();
    let listing = reports.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert_eq!(failed, 0, "{what}: {failed} of {total} requests failed:\n{listing}");
    assert!(reports.iter().all(|r| r.total > 0), "{what}: a load sent nothing:\n{listing}");
    println!("{what}: {total} requests, none failed");
    reports
}

/// Ten modules on three bases behind HAProxy, 3 replicas each (every base holds every module),
/// upgraded from 1.0.0 to 1.1.0 under load: no request fails, and afterwards every answer comes
/// from 1.1.0.
#[test]
fn ten_modules_upgrade_in_place_under_load_without_a_failed_request() {
    upgrade_ten_modules_under_load(3);
}

/// The same with 2 replicas of each module on 3 bases, so a third of the requests sent straight
/// at the bases (and through HAProxy) reach a base without the module, which forwards them.
/// (Before rollouts, endpoints named only the bases serving the spec's *new* version, so from
/// the spec change until a replica switched the forwarding base answered `404 MODULE_NOT_FOUND`:
/// 353 of 22302 requests in one run. Endpoints now name a base for every release of the
/// rollout it serves.)
#[test]
fn ten_modules_upgrade_under_load_through_a_forwarding_base() {
    upgrade_ten_modules_under_load(2);
}

fn upgrade_ten_modules_under_load(replicas: u32) {
    let _serial = serial();
    let fleet = Fleet::start(3, |_| Vec::new());
    let controller = fleet.controller();
    let specs = SpecDir::new();
    let modules: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for module in &modules {
        apply_wait(controller, &specs, module, "1.0.0", replicas);
    }
    let lb = haproxy(&fleet);
    let loads = load_on(&modules, &lb, &fleet);
    std::thread::sleep(Duration::from_secs(2));
    let (before, p99_before) = windows(&loads);
    assert!(before.iter().all(|r| r.by_version.keys().eq(["1.0.0"])), "before the upgrade: {before:?}");
    assert!(before.iter().all(|r| r.failed() == 0), "before the upgrade: {before:?}");

    let upgrade = Instant::now();
    for module in &modules {
        apply_wait(controller, &specs, module, "1.1.0", replicas);
    }
    let upgrade = upgrade.elapsed();
    let (during, p99_during) = windows(&loads);
    std::thread::sleep(Duration::from_secs(1));
    let (after, _) = windows(&loads);
    println!(
        "10 modules x {replicas} replicas upgraded in {upgrade:.1?}; p99 before {p99_before:.1?}, \
         during {p99_during:.1?}; requests during: {}, failed during: {}",
        during.iter().map(|r| r.total).sum::<u64>(),
        during.iter().map(LoadReport::failed).sum::<u64>()
    );
    for (module, pair) in modules.iter().zip(after.chunks(2)) {
        for report in pair {
            assert!(report.by_version.keys().eq(["1.1.0"]), "{module} after its upgrade: {report}");
        }
    }
    let reports = stop_without_failures(loads, "upgrading 10 modules");
    // Every base answered: round-robin through HAProxy and straight at the bases reaches all
    // three (the answer names the base that served it).
    let served_by: std::collections::BTreeSet<&String> =
        reports.iter().flat_map(|r| r.by_base.keys()).collect();
    assert_eq!(served_by.len(), 3, "bases that answered: {served_by:?}");
}

/// etcd faults under steady load (slow): a 3-member cluster loses its leader, has a member
/// frozen, and is without quorum for 10 s; the bases serve every request throughout, and a
/// spec change afterwards applies with no manual step. Every base holds both modules (3
/// replicas): the forwarding gap of [`ten_modules_upgrade_under_load_through_a_forwarding_base`]
/// would otherwise fail the upgrade at the end, which is not what this test is about.
#[test]
fn bases_serve_through_etcd_faults_and_apply_afterwards() {
    if !slow_tests() {
        return;
    }
    let _serial = serial();
    let mut fleet = Fleet::start_on(Etcd::cluster3(), 1, 3, |_| Vec::new(), &[]);
    let specs = SpecDir::new();
    let modules: Vec<String> = (0..2).map(|i| format!("m{i}")).collect();
    for module in &modules {
        apply_wait(fleet.controller(), &specs, module, "1.0.0", 3);
    }
    let lb = haproxy(&fleet);
    let loads = load_on(&modules, &lb, &fleet);
    std::thread::sleep(Duration::from_secs(1));

    let killed = fleet.etcd.kill_leader();
    println!("killed etcd leader m{killed}");
    std::thread::sleep(Duration::from_secs(5));
    fleet.etcd.restart(killed);
    fleet.etcd.wait_healthy(Duration::from_secs(30));

    let frozen = (killed + 1) % 3;
    fleet.etcd.freeze(frozen);
    println!("froze etcd member m{frozen}");
    std::thread::sleep(Duration::from_secs(5));
    fleet.etcd.thaw(frozen);
    fleet.etcd.wait_healthy(Duration::from_secs(30));

    println!("etcd without quorum for 10 s");
    fleet.etcd.lose_quorum(0, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let (during, _) = windows(&loads);
    println!("through the faults: {}", during.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));

    // The fleet finds its feet by itself: a controller leads again, and an upgrade applies,
    // even with the history compacted (watches resuming from before it must re-list).
    let compacted = fleet.etcd.compact_now();
    println!("compacted etcd at revision {compacted}");
    eventually("a controller to lead after the outage", Duration::from_secs(60), || {
        fleet.controllers.iter().any(Controller::leading).then_some(())
    });
    apply_wait(fleet.controller(), &specs, &modules[0], "1.1.0", 3);
    let _upgrade = windows(&loads);
    std::thread::sleep(Duration::from_secs(1));
    let (after, _) = windows(&loads);
    for report in &after[..2] {
        assert!(report.by_version.keys().eq(["1.1.0"]), "m0 after the upgrade: {report}");
    }
    stop_without_failures(loads, "etcd faults");
}

/// etcd faults while a rollout step holds (slow): `m0` rolls from 1.0.0 to 1.1.0 with a first
/// step of one base at weight 50 held 30 s, on two controllers, three bases and a 3-member etcd,
/// under load through HAProxy and straight at the bases. While the step holds, etcd loses its
/// leader, has a member frozen and is without quorum for 10 s (all inside the pause: the
/// leader must keep the step's timing across losing and regaining etcd). The rollout then completes by itself: each step
/// reached once, none skipped, not rolled back, and no request failed.
#[test]
fn a_rollout_holding_a_step_rides_out_etcd_faults_and_completes() {
    if !slow_tests() {
        return;
    }
    let _serial = serial();
    let mut fleet = Fleet::start_on(Etcd::cluster3(), 2, 3, |_| Vec::new(), &[]);
    let specs = SpecDir::new();
    // Errors are judged, latency hardly (the faults starve the two cores, and a p99 over a few
    // hundred requests is what this test is not about).
    let rollout = "[rollout]\nsteps = [{ bases = 1, weight = 50, pause = \"30s\" }, { bases = \"100%\" }]\n\
                   [rollout.analysis]\nwindow = \"5s\"\nmax_latency_ratio = 100.0\n";
    let apply = |fleet: &Fleet, version: &str, wait: bool| {
        let file = specs.write("m0", &format!("{}{rollout}", spec("m0", version, 3)));
        let mut args = vec!["apply", file.to_str().expect("a UTF-8 path")];
        if wait {
            args.extend(["--wait", "--timeout", WAIT]);
        }
        fleet_cli(fleet.controller(), &args).ok();
    };
    // `None` while the controller cannot answer (etcd is being faulted): asked again.
    let status = |fleet: &Fleet| {
        let run = fleet_cli(fleet.controller(), &["--output", "json", "rollout", "status", "m0"]);
        if run.code == Some(0) { serde_json::from_str::<serde_json::Value>(&run.stdout).ok() } else { None }
    };
    apply(&fleet, "1.0.0", true);
    let lb = haproxy(&fleet);
    let loads = load_on(&["m0".to_owned()], &lb, &fleet);
    std::thread::sleep(Duration::from_secs(1));

    apply(&fleet, "1.1.0", false);
    let holding = eventually("step 1 to hold", Duration::from_secs(60), || {
        let view = status(&fleet)?;
        (view["rollout"]["phase"] == "holding").then_some(view)
    });
    assert_eq!(holding["rollout"]["step"], 0, "{holding}");
    let faults = Instant::now();

    let killed = fleet.etcd.kill_leader();
    println!("killed etcd leader m{killed}");
    std::thread::sleep(Duration::from_secs(4));
    fleet.etcd.restart(killed);
    fleet.etcd.wait_healthy(Duration::from_secs(30));
    let frozen = (killed + 1) % 3;
    fleet.etcd.freeze(frozen);
    println!("froze etcd member m{frozen}");
    std::thread::sleep(Duration::from_secs(4));
    fleet.etcd.thaw(frozen);
    fleet.etcd.wait_healthy(Duration::from_secs(30));
    let outage = faults.elapsed();
    println!("etcd without quorum for 10 s, from {outage:.1?} after the step began to hold");
    assert!(
        outage < Duration::from_secs(30),
        "the quorum loss must begin inside the 30 s hold ({outage:.1?})"
    );
    fleet.etcd.lose_quorum(0, Duration::from_secs(10));
    let faults = faults.elapsed();

    let done = eventually("the rollout to complete after the faults", Duration::from_secs(120), || {
        let view = status(&fleet)?;
        (view["rollout"]["state"] != "progressing").then_some(view)
    });
    let record = &done["rollout"];
    assert_eq!(record["state"], "complete", "{done}");
    let history = record["history"].as_array().expect("a history");
    let reached: Vec<(u64, u64)> = history
        .iter()
        .filter(|e| e["event"] == "step_reached")
        .map(|e| (e["step"].as_u64().unwrap(), e["at_ms"].as_u64().unwrap()))
        .collect();
    assert_eq!(reached.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1], "each step reached once: {done}");
    let held = Duration::from_millis(reached[1].1 - reached[0].1);
    assert!(held >= Duration::from_secs(30), "step 1 held its 30 s pause (held {held:.1?}): {done}");
    println!(
        "faults took {faults:.1?} from the hold; step 2 reached {held:.1?} after step 1; events: {}",
        history.iter().map(|e| format!("{}@{}", e["event"], e["step"])).collect::<Vec<_>>().join(" ")
    );
    std::thread::sleep(Duration::from_secs(2));
    let _rolling = windows(&loads);
    std::thread::sleep(Duration::from_secs(1));
    let (after, _) = windows(&loads);
    for report in &after {
        assert!(report.by_version.keys().eq(["1.1.0"]), "m0 after the rollout: {report}");
    }
    stop_without_failures(loads, "a rollout through etcd faults");
}

/// The resident set of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status`, such as `VmRSS:` or `RssAnon:`.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/<pid>/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} line"))
}

/// 200 upgrade cycles of one module on 2 bases (slow), alternating 1.0.0 and 1.1.0 with
/// `apply --wait` under light load: each base's RSS at the end is within 5% of what it was after
/// 100 warm-up cycles (a leak check: installs, switches and unloads give their memory back).
/// What it measured on the way (ARCHITECTURE.md, "Memory over many upgrades"):
/// - first run (10 warm-up cycles): +24% and +13% over 190 cycles, mostly each identity's state
///   history carried forward on every reinstall without bound (now capped at 64 transitions);
/// - after that fix, 10 warm-up cycles: +17% and +19%, the anonymous part rising from 4.8 to
///   7.6 MiB by cycle ~120, then flat;
/// - 100 warm-up cycles, then 200, glibc's default arenas: +1.8% and +12%, all of b1's growth one
///   1.7 MiB step (glibc adding a malloc arena for a thread, kept for good);
/// - the same with `MALLOC_ARENA_MAX=2`: +4.0% and +3.4%, 0 failed of 347k requests. The base
///   now caps its arenas at 2 itself (`--malloc-arenas`), so the test runs by default: +3.1% and
///   +3.5% (20144 → 20768 KiB, 20200 → 20904 KiB), 300 cycles in 131 s.
#[test]
fn two_hundred_upgrade_cycles_keep_each_bases_memory() {
    if !slow_tests() {
        return;
    }
    let _serial = serial();
    let fleet = Fleet::start(2, |_| Vec::new());
    let controller = fleet.controller();
    let specs = SpecDir::new();
    let version = |cycle: usize| if cycle.is_multiple_of(2) { "1.0.0" } else { "1.1.0" };
    // Memory is the measure, not the analysis: each upgrade is judged on health alone (the
    // default's 10 s window would make 200 cycles take half an hour).
    let apply_wait = |controller: &Controller, specs: &SpecDir, name: &str, version: &str, replicas| {
        let text = format!(
            "{}\n[rollout]\nsteps = [{{ bases = \"100%\" }}]\n[rollout.analysis]\nwindow = \"0s\"\n",
            spec(name, version, replicas)
        );
        let file = specs.write(name, &text);
        fleet_cli(controller, &["apply", file.to_str().expect("a UTF-8 path"), "--wait", "--timeout", WAIT])
            .ok();
    };
    let pids: Vec<u32> = fleet.bases.iter().map(|b| b.pid()).collect();
    let started = Instant::now();
    const WARM_UP: usize = 100;
    const CYCLES: usize = 200;
    apply_wait(controller, &specs, "m", version(0), 2);
    // Load from the first deploy on (before it, every request would be a 404).
    let load = Load::start(fleet.bases.iter().map(|b| b.traffic.clone()).collect(), "/m/work", 1, &[]);
    for cycle in 1..WARM_UP {
        apply_wait(controller, &specs, "m", version(cycle), 2);
    }
    let warm: Vec<u64> = pids.iter().map(|&pid| rss_kib(pid)).collect();
    let mut series = Vec::new();
    for cycle in WARM_UP..WARM_UP + CYCLES {
        apply_wait(controller, &specs, "m", version(cycle), 2);
        if cycle % 20 == 0 {
            series.push(
                pids.iter().map(|&pid| (rss_kib(pid), status_kib(pid, "RssAnon:"))).collect::<Vec<_>>(),
            );
        }
    }
    let end: Vec<u64> = pids.iter().map(|&pid| rss_kib(pid)).collect();
    let elapsed = started.elapsed();
    println!(
        "{WARM_UP} + {CYCLES} upgrade cycles in {elapsed:.1?} ({:.2?} each); RSS KiB after the warm-up {warm:?}, \
         every 20 cycles (RSS, anonymous) {series:?}, at the end {end:?}",
        elapsed / (WARM_UP + CYCLES) as u32
    );
    for (i, (warm, end)) in warm.iter().zip(&end).enumerate() {
        assert!(end * 100 <= warm * 105, "base b{i} grew from {warm} KiB to {end} KiB over {CYCLES} cycles");
    }
    stop_without_failures(vec![load], "200 upgrade cycles");
}
