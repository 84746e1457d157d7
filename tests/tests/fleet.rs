//! The fleet end to end (issue 14): a real etcd, real `pedestal controller` processes, real
//! `pedestal serve --fleet` bases, the real `pedestal fleet` CLI, real HTTP.
//!
//! The fast core always runs; the slow fault tests (a 3-member etcd losing its leader, a frozen
//! base, controller failover and fencing) run with `PEDESTAL_SLOW_TESTS=1` (`.ci/run` sets it).
//! Tests run one at a time: each starts several processes, and leases of 2–3 s must not run
//! out because the two cores are busy starting another test's fleet.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use pedestal_tests::{
    artifacts,
    etcd::Etcd,
    eventually,
    fleet::{
        Controller, FileServer, Fleet, SERVED_BY, SpecDir, fleet_cli, fleet_json, module_of,
        serving_replicas, sha256_of,
    },
};
use serde_json::Value;

/// One fleet at a time (see the module docs).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn slow_tests() -> bool {
    std::env::var_os("PEDESTAL_SLOW_TESTS").is_some()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Converging takes a few watch round trips; kills a lease TTL (3 s) more.
const CONVERGE: Duration = Duration::from_secs(15);

/// A spec file of `fx-versioned` at `version` (its `/fx-versioned/version` answers it).
fn versioned(version: &str, artifact: &str, rest: &str) -> String {
    format!("name = \"fx-versioned\"\nversion = \"{version}\"\nartifact = {artifact:?}\n{rest}")
}

/// `apply` through the real CLI, which must succeed; its stdout.
fn apply(controller: &Controller, file: &std::path::Path) -> String {
    fleet_cli(controller, &["apply", file.to_str().expect("a UTF-8 path")]).ok().stdout
}

/// Applies `fx-versioned` 1.0.0 to two of three `tier=web` bases (spread), checks it serves on
/// exactly those (by status JSON from the CLI and by HTTP to every base), that a base lacking it
/// forwards, that pack and spread place a second and third module where they should, that a new
/// version rolls to every replica, that a hand-installed module is shown unmanaged and
/// survives, that the operations API refuses to touch a fleet module, and that `delete`
/// uninstalls it everywhere.
#[test]
fn apply_places_serves_forwards_rolls_and_deletes() {
    let _serial = serial();
    let fleet = Fleet::start(4, |i| match i {
        0..=2 => labels(&[("tier", "web"), ("zone", ["a", "b", "c"][i])]),
        _ => labels(&[("tier", "batch")]),
    });
    let controller = fleet.controller();
    let specs = SpecDir::new();
    let web = "replicas = 2\nplacement = \"spread\"\n[selector]\ntier = \"web\"\n";
    let spec = specs.write("v1", &versioned("1.0.0", artifacts::VERSIONED_1_0_0, web));
    let printed = apply(controller, &spec);
    assert!(printed.contains("fx-versioned"), "apply printed {printed:?}");
    // Idempotent: the same file again changes nothing.
    let again = apply(controller, &spec);
    assert!(again.contains("unchanged"), "a second identical apply printed {again:?}");

    fleet.wait_ready("fx-versioned", CONVERGE);
    let view = module_of(&fleet_json(controller, &["status"]), "fx-versioned");
    assert_eq!(view["wanted"], 2, "{view}");
    let placed = serving_replicas(&view);
    assert_eq!(placed.len(), 2, "two replicas serving: {view}");
    assert!(placed.iter().all(|id| ["b0", "b1", "b2"].contains(&id.as_str())), "only tier=web bases: {view}");
    // By HTTP: exactly the assigned bases serve it themselves, and say so.
    eventually("the two replicas to serve by HTTP", CONVERGE, || {
        (fleet.serving("/fx-versioned/version") == placed).then_some(())
    });
    for id in &placed {
        assert_eq!(fleet.base(id).local("/fx-versioned/version").body, "1.0.0");
    }

    // A base without the module forwards to one that has it; a forwarded request is never
    // forwarded again.
    let lacking =
        fleet.bases.iter().find(|b| !placed.contains(&b.id().to_owned())).expect("a base without it");
    let forwarded = eventually("a base lacking the module to forward", CONVERGE, || {
        let reply = lacking.traffic("/fx-versioned/version");
        (reply.status == 200).then_some(reply)
    });
    assert_eq!(forwarded.body, "1.0.0");
    let served_by = forwarded.header(SERVED_BY).expect("x-pedestal-base on a forwarded answer").to_owned();
    assert!(placed.contains(&served_by), "served by {served_by}, not one of {placed:?}");
    assert_eq!(
        lacking.local("/fx-versioned/version").status,
        404,
        "a forwarded request is not forwarded again"
    );

    // Pack fills a base that already hosts modules; spread takes the emptiest web base.
    let packed = specs.write(
        "pack",
        &format!(
            "name = \"fx-echo\"\nversion = \"0.1.0\"\nartifact = {:?}\nreplicas = 1\nplacement = \"pack\"\n[selector]\ntier = \"web\"\n",
            artifacts::ECHO
        ),
    );
    apply(controller, &packed);
    let echo = fleet.wait_ready("fx-echo", CONVERGE);
    let echo_bases = serving_replicas(&echo);
    assert_eq!(echo_bases.len(), 1, "{echo}");
    assert!(
        placed.contains(&echo_bases[0]),
        "pack put fx-echo on {echo_bases:?}, not beside fx-versioned ({placed:?})"
    );
    let spread = specs.write(
        "spread",
        &format!(
            "name = \"fx-limited\"\nversion = \"0.1.0\"\nartifact = {:?}\nreplicas = 1\nplacement = \"spread\"\n[selector]\ntier = \"web\"\n",
            artifacts::LIMITED
        ),
    );
    apply(controller, &spread);
    let limited = fleet.wait_ready("fx-limited", CONVERGE);
    let empty_web: Vec<String> =
        ["b0", "b1", "b2"].iter().map(|s| s.to_string()).filter(|id| !placed.contains(id)).collect();
    assert_eq!(serving_replicas(&limited), empty_web, "spread takes the web base with no module: {limited}");

    // A module installed by hand is unmanaged: shown, never deleted.
    fleet.base("b3").install_ok(artifacts::GOOD);
    let unmanaged = eventually("the hand-installed module to be listed unmanaged", CONVERGE, || {
        let status = controller.status();
        status["unmanaged"]
            .as_array()
            .and_then(|u| u.iter().find(|m| m["base_id"] == "b3" && m["name"] == "fx-good").cloned())
    });
    assert_eq!(unmanaged["version"], "0.1.0");

    // The operations API refuses to change what the fleet owns, unless forced.
    let owner = fleet.base(&placed[0]);
    let refused = owner.uninstall("fx-versioned", "1.0.0");
    assert_eq!((refused.status, refused.code()), (409, "FLEET_OWNED"), "{refused:?}");
    assert!(owner.serves_locally("/fx-versioned/version"));

    // A new version rolls to every replica.
    let v2 = specs.write("v2", &versioned("1.1.0", artifacts::VERSIONED_1_1_0, web));
    let printed = apply(controller, &v2);
    assert!(!printed.contains("unchanged"), "a changed spec applies: {printed:?}");
    eventually("every replica to run 1.1.0", CONVERGE, || {
        let view = controller.module_status("fx-versioned");
        let all_new = placed.iter().all(|id| fleet.base(id).local("/fx-versioned/version").body == "1.1.0");
        (view["version"] == "1.1.0" && view["ready"] == 2 && all_new).then_some(())
    });

    // Delete: uninstalled everywhere; the unmanaged module stays.
    let deleted = fleet_cli(controller, &["delete", "fx-versioned"]).ok();
    assert!(deleted.stdout.contains("fx-versioned"), "{deleted:?}");
    eventually("fx-versioned to be gone from every base", CONVERGE, || {
        // Uninstalled: nothing answers for it (a stopped entry may stay listed, see the base's
        // `DELETE` semantics) and no base reports it.
        let unserved = fleet.bases.iter().all(|b| b.local("/fx-versioned/version").status == 404);
        let unreported = controller.status()["unmanaged"]
            .as_array()
            .is_some_and(|u| u.iter().all(|m| m["name"] != "fx-versioned"));
        (unserved && unreported).then_some(())
    });
    assert_eq!(controller.api("GET", "/api/v1/specs/fx-versioned", None).status, 404);
    assert_eq!(fleet.base("b3").get("/fx-good/ping").body, "pong", "the unmanaged module survives");
}

/// A spec wanting more replicas than bases match is `unschedulable` with a reason within a
/// second or so, and placed once a base joins; a module's measured memory (not only the
/// declared estimate) keeps another from a base that lacks room.
#[test]
fn unschedulable_then_placed_and_capacity_is_respected() {
    let _serial = serial();
    let small = ["--capacity-memory", "64MiB"];
    let mut fleet = Fleet::start_on(Etcd::single(), 1, 2, |_| labels(&[("tier", "small")]), &small);
    let specs = SpecDir::new();
    let controller = fleet.controller();

    // Three replicas wanted, two bases match.
    let three = specs.write(
        "three",
        &format!(
            "name = \"fx-good\"\nversion = \"0.1.0\"\nartifact = {:?}\nreplicas = 3\n[selector]\ntier = \"small\"\n[resources]\nmemory = \"1MiB\"\n",
            artifacts::GOOD
        ),
    );
    let applied = Instant::now();
    apply(controller, &three);
    let view = eventually("fx-good to be unschedulable", Duration::from_secs(5), || {
        let view = controller.module_status("fx-good");
        (view["state"] == "unschedulable").then_some(view)
    });
    eprintln!("unschedulable reported {:?} after the apply", applied.elapsed());
    let reason = view["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("2 of 3"), "reason names what was placed: {view}");
    assert_eq!(view["replicas"].as_array().map(Vec::len), Some(2), "the two that fit are placed: {view}");

    // fx-leaky measured at ~40 MiB on a 64 MiB base: a 32 MiB module no longer fits there.
    let leaky = specs.write(
        "leaky",
        &format!(
            "name = \"fx-leaky\"\nversion = \"0.1.0\"\nartifact = {:?}\nreplicas = 2\n[selector]\ntier = \"small\"\n[resources]\nmemory = \"1MiB\"\n",
            artifacts::LEAKY
        ),
    );
    apply(controller, &leaky);
    let leaky_view = fleet.wait_ready("fx-leaky", CONVERGE);
    for id in serving_replicas(&leaky_view) {
        let reply = fleet.base(&id).local("/fx-leaky/leak?kib=40960");
        assert_eq!(reply.status, 200, "leaking on {id}: {reply:?}");
    }
    eventually("the leak to be measured", CONVERGE, || {
        let bases = controller.api("GET", "/api/v1/bases", None).json;
        let used: Vec<u64> =
            bases.as_array()?.iter().filter_map(|b| b["used"]["memory_bytes"].as_u64()).collect();
        (used.len() == 2 && used.iter().all(|u| *u >= 40 << 20)).then_some(())
    });
    let big = specs.write(
        "big",
        &format!(
            "name = \"fx-limited\"\nversion = \"0.1.0\"\nartifact = {:?}\nreplicas = 1\n[selector]\ntier = \"small\"\n[resources]\nmemory = \"32MiB\"\n",
            artifacts::LIMITED
        ),
    );
    apply(controller, &big);
    let view = eventually("fx-limited to be unschedulable for memory", Duration::from_secs(5), || {
        let view = controller.module_status("fx-limited");
        (view["state"] == "unschedulable").then_some(view)
    });
    assert!(
        view["reason"].as_str().unwrap_or_default().contains("memory"),
        "the reason names memory: {view}"
    );
    assert!(fleet.serving("/fx-limited/well").is_empty(), "nothing placed where it does not fit");

    // A roomy base joins: what did not fit is placed, and nothing already placed moves.
    fleet.add_base("roomy", &[("tier", "small")], &["--capacity-memory", "1GiB"]);
    let controller = fleet.controller();
    let limited = fleet.wait_ready("fx-limited", CONVERGE);
    assert_eq!(serving_replicas(&limited), ["roomy"], "{limited}");
    let good = fleet.wait_ready("fx-good", CONVERGE);
    assert_eq!(serving_replicas(&good).len(), 3, "{good}");
    assert_eq!(serving_replicas(&controller.module_status("fx-leaky")), serving_replicas(&leaky_view));
}

/// `peer = true` runs on every matching base, and a base that joins gets it.
#[test]
fn peer_modules_reach_every_matching_base_and_new_ones() {
    let _serial = serial();
    let mut fleet = Fleet::start(3, |i| labels(&[("tier", if i < 2 { "web" } else { "batch" })]));
    let specs = SpecDir::new();
    let spec = specs.write(
        "peer",
        &versioned("1.0.0", artifacts::VERSIONED_1_0_0, "peer = true\n[selector]\ntier = \"web\"\n"),
    );
    apply(fleet.controller(), &spec);
    fleet.wait_ready("fx-versioned", CONVERGE);
    assert_eq!(fleet.serving("/fx-versioned/version"), ["b0", "b1"]);
    let joined = Instant::now();
    fleet.add_base("b3", &[("tier", "web")], &[]);
    eventually("the new base to get the peer module", CONVERGE, || {
        fleet.base("b3").serves_locally("/fx-versioned/version").then_some(())
    });
    eprintln!("the joining base served its peer module {:?} after it started", joined.elapsed());
    let view = fleet.wait_ready("fx-versioned", CONVERGE);
    assert_eq!(view["wanted"], 3, "{view}");
    assert_eq!(fleet.serving("/fx-versioned/version"), ["b0", "b1", "b3"]);
}

/// `kill -9` of a supervised base (supervisor and worker): its replica is re-placed on another
/// base and serves there.
#[test]
fn a_killed_base_is_replaced() {
    let _serial = serial();
    let mut fleet =
        Fleet::start_on(Etcd::single(), 1, 3, |_| labels(&[("tier", "web")]), &["--supervisor", "on"]);
    let specs = SpecDir::new();
    apply(
        fleet.controller(),
        &specs.write("v1", &versioned("1.0.0", artifacts::VERSIONED_1_0_0, "replicas = 2\n")),
    );
    let before = serving_replicas(&fleet.wait_ready("fx-versioned", CONVERGE));
    let victim = before[0].clone();
    let at = fleet.bases.iter().position(|b| b.id() == victim).expect("the victim");
    let killed = Instant::now();
    fleet.bases[at].kill9();
    fleet.bases.remove(at);
    let after = eventually("the killed base's replica to serve elsewhere", Duration::from_secs(20), || {
        let serving = fleet.serving("/fx-versioned/version");
        (serving.len() == 2 && !serving.contains(&victim)).then_some(serving)
    });
    eprintln!("re-placed {:?} after the kill: {after:?}", killed.elapsed());
    let view = fleet.wait_ready("fx-versioned", CONVERGE);
    assert_eq!(serving_replicas(&view), after);
}

/// A spec whose sha256 names other bytes than its `url` serves: every base NACKs it with
/// `SHA256_MISMATCH` and loads nothing.
#[test]
fn a_wrong_sha256_is_refused_and_nothing_loads() {
    let _serial = serial();
    let fleet = Fleet::start(2, |_| Vec::new());
    let server =
        FileServer::serve("fx-versioned.so", std::fs::read(artifacts::VERSIONED_1_1_0).expect("a fixture"));
    let specs = SpecDir::new();
    let spec = specs.write(
        "wrong",
        &format!(
            "name = \"fx-versioned\"\nversion = \"1.0.0\"\nsha256 = {:?}\nurl = {:?}\nreplicas = 2\n",
            sha256_of(artifacts::VERSIONED_1_0_0),
            server.url()
        ),
    );
    apply(fleet.controller(), &spec);
    let view = eventually("both replicas to NACK SHA256_MISMATCH", CONVERGE, || {
        let view = fleet.controller().module_status("fx-versioned");
        let replicas = view["replicas"].as_array()?;
        let nacked = replicas.iter().filter(|r| r["reason"] == "SHA256_MISMATCH").count();
        (nacked == 2).then_some(view)
    });
    assert_eq!(view["ready"], 0, "{view}");
    assert!(server.served() >= 2, "every base fetched the url ({} requests)", server.served());
    for base in &fleet.bases {
        assert_eq!(
            base.admin_get("/api/v1/modules/fx-versioned").status,
            404,
            "nothing loaded on {}",
            base.id()
        );
        assert_eq!(base.local("/fx-versioned/version").status, 404);
        let status = fleet.etcd.get(&format!("/pedestal/status/{}", base.id())).expect("a status report");
        let status: Value = serde_json::from_str(&status).expect("status JSON");
        assert_eq!(status["failures"]["fx-versioned"]["code"], "SHA256_MISMATCH", "{status}");
    }
}

/// A frozen base (SIGSTOP past its lease) is replaced; once it thaws and reconciles, the fleet
/// runs exactly `replicas` copies.
#[test]
fn a_frozen_base_that_thaws_leaves_no_excess_replicas() {
    if !slow_tests() {
        return;
    }
    let _serial = serial();
    let fleet = Fleet::start(3, |_| Vec::new());
    let specs = SpecDir::new();
    apply(
        fleet.controller(),
        &specs.write("v1", &versioned("1.0.0", artifacts::VERSIONED_1_0_0, "replicas = 2\n")),
    );
    let before = serving_replicas(&fleet.wait_ready("fx-versioned", CONVERGE));
    let frozen = fleet.base(&before[0]);
    frozen.stop();
    let others: Vec<&str> = fleet.bases.iter().map(|b| b.id()).filter(|id| *id != frozen.id()).collect();
    eventually("the frozen base's replica to be re-placed", Duration::from_secs(20), || {
        let view = fleet.controller().module_status("fx-versioned");
        let serving = serving_replicas(&view);
        (serving.len() == 2 && serving.iter().all(|id| others.contains(&id.as_str()))).then_some(())
    });
    frozen.cont();
    let id = frozen.id().to_owned();
    eventually("the thawed base to register again", Duration::from_secs(20), || {
        fleet.base_ids().contains(&id).then_some(())
    });
    eventually("exactly two copies serving after the thaw", Duration::from_secs(20), || {
        (fleet.serving("/fx-versioned/version").len() == 2).then_some(())
    });
    // And it stays that way.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fleet.serving("/fx-versioned/version").len(), 2);
    assert_eq!(serving_replicas(&fleet.wait_ready("fx-versioned", CONVERGE)).len(), 2);
}

/// `kill -9` of the leading controller: the standby leads within about 4 s (a lease TTL of 2 s
/// and a campaign on the leader key's deletion) and the fleet still converges.
#[test]
fn the_standby_leads_when_the_leader_is_killed() {
    if !slow_tests() {
        return;
    }
    let _serial = serial();
    let mut fleet = Fleet::start_on(Etcd::single(), 2, 2, |_| Vec::new(), &[]);
    let leader = fleet.wait_for_leader();
    let standby = 1 - leader;
    assert!(!fleet.controllers[standby].leading(), "exactly one leads");
    let killed = Instant::now();
    fleet.controllers[leader].kill9();
    eventually("the standby to lead", Duration::from_secs(8), || {
        fleet.controllers[standby].leading().then_some(())
    });
    let took = killed.elapsed();
    eprintln!("the standby led {took:?} after the kill");
    assert!(took < Duration::from_secs(6), "failover took {took:?} (about 4 s expected)");
    let specs = SpecDir::new();
    apply(
        &fleet.controllers[standby],
        &specs.write("v1", &versioned("1.0.0", artifacts::VERSIONED_1_0_0, "replicas = 2\n")),
    );
    fleet.wait_ready("fx-versioned", CONVERGE);
    assert_eq!(fleet.serving("/fx-versioned/version"), ["b0", "b1"]);
}

/// A leader frozen past its lease is deposed; thawed, it must step down and never commit: the
/// leader key stays the new leader's (same term), the old one reports standing by, and the
/// placement it would have written is the new leader's (the fleet keeps exactly `replicas`).
#[test]
fn a_deposed_leader_never_commits() {
    if !slow_tests() {
        return;
    }
    let _serial = serial();
    let fleet = Fleet::start_on(Etcd::single(), 2, 3, |_| Vec::new(), &[]);
    let old = fleet.wait_for_leader();
    let new = 1 - old;
    let specs = SpecDir::new();
    apply(
        &fleet.controllers[old],
        &specs.write("v1", &versioned("1.0.0", artifacts::VERSIONED_1_0_0, "replicas = 1\n")),
    );
    fleet.wait_ready("fx-versioned", CONVERGE);
    fleet.controllers[old].stop();
    eventually("the standby to take over", Duration::from_secs(10), || {
        fleet.controllers[new].leading().then_some(())
    });
    let term = leader_term(&fleet.etcd);
    let leader_record = fleet.etcd.get("/pedestal/leader").expect("a leader key");
    // The new leader changes the desired state while the old one is frozen.
    apply(
        &fleet.controllers[new],
        &specs.write("v2", &versioned("1.1.0", artifacts::VERSIONED_1_1_0, "replicas = 2\n")),
    );
    fleet.controllers[old].cont();
    eventually("the thawed leader to stand by", Duration::from_secs(10), || {
        (!fleet.controllers[old].leading()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(leader_term(&fleet.etcd), term, "the leader key is still the new term's");
    assert_eq!(fleet.etcd.get("/pedestal/leader").as_deref(), Some(leader_record.as_str()));
    assert!(fleet.controllers[new].leading());
    let view = fleet.wait_ready("fx-versioned", CONVERGE);
    assert_eq!((view["version"].as_str(), view["wanted"].as_u64()), (Some("1.1.0"), Some(2)), "{view}");
    eventually("both replicas on 1.1.0", CONVERGE, || {
        let serving = fleet.serving("/fx-versioned/version");
        let all_new = serving.iter().all(|id| fleet.base(id).local("/fx-versioned/version").body == "1.1.0");
        (serving.len() == 2 && all_new).then_some(())
    });
    // No assignment carries the old spec (version 1.0.0) the frozen leader knew.
    for (key, value) in fleet.etcd.get_prefix("/pedestal/assign/") {
        let assignment: Value = serde_json::from_str(&value).expect("assignment JSON");
        assert_eq!(assignment["version"], "1.1.0", "{key} carries a stale write: {value}");
    }
    let old_log = fleet.controllers[old].log();
    assert_eq!(old_log.matches("leading (term").count(), 1, "the old leader never led again:\n{old_log}");
}

/// A 3-member etcd loses its leader: the bases keep serving, and the controller carries on (a
/// new apply converges).
#[test]
fn the_fleet_survives_losing_the_etcd_leader() {
    if !slow_tests() {
        return;
    }
    let _serial = serial();
    let mut fleet = Fleet::start_on(Etcd::cluster3(), 1, 2, |_| Vec::new(), &[]);
    let specs = SpecDir::new();
    apply(
        fleet.controller(),
        &specs.write("v1", &versioned("1.0.0", artifacts::VERSIONED_1_0_0, "replicas = 2\n")),
    );
    fleet.wait_ready("fx-versioned", CONVERGE);
    let leader = fleet.etcd.leader().expect("an etcd leader");
    fleet.etcd.kill(leader);
    // Serving never depended on etcd.
    for _ in 0..20 {
        assert_eq!(fleet.serving("/fx-versioned/version"), ["b0", "b1"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    eventually("a new etcd leader", Duration::from_secs(15), || fleet.etcd.leader());
    let spec = specs.write(
        "good",
        &format!("name = \"fx-good\"\nversion = \"0.1.0\"\nartifact = {:?}\nreplicas = 2\n", artifacts::GOOD),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let run = fleet_cli(fleet.controller(), &["apply", spec.to_str().expect("a UTF-8 path")]);
        if run.code == Some(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no apply went through after the etcd election; the last: {run:?}\ncontroller log:\n{}",
            fleet.controllers[0].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    fleet.wait_ready("fx-good", Duration::from_secs(20));
    assert_eq!(fleet.serving("/fx-good/ping"), ["b0", "b1"]);
    assert_eq!(fleet.serving("/fx-versioned/version"), ["b0", "b1"]);
}

/// The leader key's create revision: the leader's term.
fn leader_term(etcd: &Etcd) -> i64 {
    let out = etcd.ctl(&["get", "/pedestal/leader", "-w", "json"]);
    let json: Value = serde_json::from_str(&out).expect("etcdctl JSON");
    json["kvs"][0]["create_revision"].as_i64().expect("a leader key")
}
