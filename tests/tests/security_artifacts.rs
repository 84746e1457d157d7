//! Issue 12, findings 2 and 4 (the part about what runs and what is read), against the real
//! binary: a path install is confined to the allowed directories, reads regular files only and
//! never blocks the base (a FIFO, `/dev/zero`); a library is judged from its bytes before
//! `dlopen` runs any of its code (a constructor that writes a file, a wrong major); one whose
//! constructor kills the base is quarantined by its sha256 and refused when uploaded again, until
//! an operator retries it; refused uploads leave nothing in `artifacts/`.

use std::{path::Path, process::Command, thread, time::Duration};

use pedestal_tests::{Reply, TestBase, artifacts, eventually};
use serde_json::json;

fn status_and_code(reply: &Reply) -> (u16, &str) {
    (reply.status, reply.code())
}

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().expect("running mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
}

#[test]
fn path_installs_read_only_files_inside_the_allowed_directories() {
    let allowed = tempfile::tempdir().unwrap();
    let base = TestBase::start_with(&["--allow-path-install", allowed.path().to_str().unwrap()]);
    let incoming = base.data_dir().join("incoming");
    assert!(incoming.is_dir(), "the base makes <data-dir>/incoming/");

    // Inside <data-dir>/incoming/ and inside --allow-path-install: installed.
    std::fs::copy(artifacts::GOOD, incoming.join("good.so")).unwrap();
    let installed = base.install_path(incoming.join("good.so"));
    assert_eq!(installed.status, 201, "{installed:?}");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    std::fs::copy(artifacts::VERSIONED_1_0_0, allowed.path().join("versioned.so")).unwrap();
    assert_eq!(base.install_path(allowed.path().join("versioned.so")).status, 201);

    // Never a relative path, even one that names a file inside.
    let relative = base.install_path("incoming/good.so");
    assert_eq!(status_and_code(&relative), (400, "PATH_NOT_ABSOLUTE"), "{relative:?}");

    // Outside: one answer whether the file exists or not.
    let existing = base.install_path(artifacts::CRASHY);
    let missing = base.install_path("/nonexistent/module.so");
    assert_eq!(status_and_code(&existing), (403, "PATH_NOT_ALLOWED"), "{existing:?}");
    assert_eq!(status_and_code(&missing), (403, "PATH_NOT_ALLOWED"), "{missing:?}");
    let scrub = |reply: &Reply, path: &str| reply.json["message"].as_str().unwrap().replace(path, "P");
    assert_eq!(scrub(&existing, artifacts::CRASHY), scrub(&missing, "/nonexistent/module.so"));
    let state = base.install_path(incoming.join("../state.json"));
    assert_eq!(status_and_code(&state), (403, "PATH_NOT_ALLOWED"), "{state:?}");

    // A symlink inside pointing outside is refused; inside, a missing file is just not found.
    std::os::unix::fs::symlink(artifacts::CRASHY, incoming.join("escape.so")).unwrap();
    let escape = base.install_path(incoming.join("escape.so"));
    assert_eq!(status_and_code(&escape), (403, "PATH_NOT_ALLOWED"), "{escape:?}");
    let absent = base.install_path(incoming.join("absent.so"));
    assert_eq!(status_and_code(&absent), (404, "NOT_FOUND"), "{absent:?}");
    assert_eq!(base.get("/fx-crashy/ok").code(), "MODULE_NOT_FOUND", "nothing outside was loaded");
}

#[test]
fn a_fifo_is_refused_at_once_while_the_base_keeps_serving() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    let fifo = base.data_dir().join("incoming/fifo.so");
    mkfifo(&fifo);

    // Several at once: none of them may hold a runtime worker (nobody ever writes to the FIFO).
    let answers = thread::scope(|scope| {
        let installs: Vec<_> = (0..8).map(|_| scope.spawn(|| base.install_path(&fifo))).collect();
        for _ in 0..20 {
            assert_eq!(base.get("/fx-good/ping").body, "pong");
            assert_eq!(base.admin_get("/api/v1/health").status, 200);
        }
        installs.into_iter().map(|install| install.join().unwrap()).collect::<Vec<_>>()
    });
    for answer in &answers {
        assert_eq!(status_and_code(answer), (422, "NOT_A_REGULAR_FILE"), "{answer:?}");
        assert_eq!(answer.json["details"]["kind"], "a FIFO", "{answer:?}");
    }
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    assert_eq!(base.admin_get("/api/v1/modules").json["modules"].as_array().unwrap().len(), 1);
}

#[test]
fn devices_are_refused_and_reads_are_bounded() {
    let base = TestBase::start_with(&["--allow-path-install", "/dev", "--max-upload-bytes", "65536"]);
    // `/dev/zero` reports a length of 0 and never ends: refused as a device before any read.
    let zero = base.install_path("/dev/zero");
    assert_eq!(status_and_code(&zero), (422, "NOT_A_REGULAR_FILE"), "{zero:?}");
    assert_eq!(zero.json["details"]["kind"], "a character device", "{zero:?}");
    let directory = base.install_path("/dev");
    assert_eq!(status_and_code(&directory), (422, "NOT_A_REGULAR_FILE"), "{directory:?}");

    // A regular file over the limit is refused without being read whole.
    let big = base.data_dir().join("incoming/big.so");
    std::fs::File::create(&big).unwrap().set_len(1 << 30).unwrap();
    let too_large = base.install_path(&big);
    assert_eq!(status_and_code(&too_large), (413, "PAYLOAD_TOO_LARGE"), "{too_large:?}");
    assert_eq!(too_large.json["details"], json!({"size": 1u64 << 30, "limit": 65536}), "{too_large:?}");
    assert_eq!(base.admin_get("/api/v1/health").status, 200);
}

#[test]
fn a_library_that_is_not_a_module_is_refused_before_any_of_its_code_runs() {
    let base = TestBase::start();
    let ran = base.data_dir().join("ctor-ran");
    let check = |file: &str, expected: (u16, &str)| {
        let reply = base.install(file);
        assert_eq!(status_and_code(&reply), expected, "{file}: {reply:?}");
        assert!(!ran.exists(), "{file}: its constructor ran ({:?})", std::fs::read_to_string(&ran));
        assert_eq!(base.artifact_files(), Vec::<String>::new(), "{file}: nothing is stored");
        reply
    };
    let plain = check(artifacts::CTOR_WRITES, (422, "NOT_A_MODULE"));
    assert!(plain.json["message"].as_str().unwrap().contains("pedestal_interface_stamp"), "{plain:?}");
    let wrong = check(artifacts::CTOR_WRONG_MAJOR, (422, "INTERFACE_MISMATCH"));
    assert_eq!(wrong.json["details"]["module_interface"], "2.0.0", "{wrong:?}");
    check(artifacts::INTERFACE_V2, (422, "INTERFACE_MISMATCH"));
    check(artifacts::PLAIN_CDYLIB, (422, "NOT_A_MODULE"));
    // Through a path install too.
    std::fs::copy(artifacts::CTOR_WRITES, base.data_dir().join("incoming/ctor.so")).unwrap();
    let from_path = base.install_path(base.data_dir().join("incoming/ctor.so"));
    assert_eq!(status_and_code(&from_path), (422, "NOT_A_MODULE"), "{from_path:?}");
    assert!(!ran.exists(), "its constructor ran");
}

#[test]
fn a_refused_upload_is_deleted_at_once() {
    let base = TestBase::start();
    let good = base.install_ok(artifacts::GOOD)["sha256"].as_str().unwrap().to_owned();
    let kept = vec![format!("{good}.so")];
    // Stored, then refused when it failed to start: deleted before the answer.
    let failed = base.install(artifacts::START_FAILS);
    assert_eq!(failed.code(), "START_FAILED", "{failed:?}");
    assert_eq!(base.artifact_files(), kept);
    // Refused because its identity is taken: the bytes differ, the running build's stay.
    let taken = base.install(artifacts::VERSIONED_1_0_0_B);
    assert_eq!(taken.status, 201, "{taken:?}");
    let duplicate = base.install(artifacts::VERSIONED_1_0_0);
    assert_eq!(duplicate.code(), "ALREADY_INSTALLED", "{duplicate:?}");
    let versioned = format!("{}.so", taken.json["sha256"].as_str().unwrap());
    let mut expected = vec![kept[0].clone(), versioned];
    expected.sort();
    assert_eq!(base.artifact_files(), expected);
    // Uninstalled after it ran: kept for a while (a rollback), not deleted at once.
    assert_eq!(base.uninstall("fx-good", "0.1.0").status, 200);
    assert_eq!(base.artifact_files(), expected);
}

#[test]
fn a_library_that_kills_the_base_in_its_constructor_is_quarantined_by_sha256() {
    // Supervised (the default): the worker dies inside the load and the supervisor starts another.
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    std::fs::write(base.data_dir().join("ctor-aborts"), "").unwrap();
    let headers = [("content-type", "application/octet-stream")];
    let bytes = std::fs::read(artifacts::CTOR_ABORTS).unwrap();
    let crashed = base.try_admin("POST", "/api/v1/modules", &headers, Some(&bytes));
    assert!(crashed.is_err(), "the worker should have died inside the load: {crashed:?}");
    let generation = |base: &TestBase| base.admin_get("/api/v1/base").json["worker_generation"].as_u64();
    eventually("a new, ready worker", Duration::from_secs(20), || {
        let ready = base.admin_get("/api/v1/ready").json["ready"] == true;
        (generation(&base) == Some(2) && ready).then_some(())
    });
    assert_eq!(base.get("/fx-good/ping").body, "pong", "the rest is served");

    // Quarantined before its name was known: by its artifact.
    let quarantined = base.admin_get("/api/v1/modules").json["quarantined"].clone();
    assert_eq!(quarantined.as_array().map(Vec::len), Some(1), "{quarantined}");
    let entry = &quarantined[0];
    assert_eq!((&entry["name"], &entry["signal"]), (&json!(null), &json!("SIGABRT")), "{entry}");
    let sha256 = entry["sha256"].as_str().unwrap().to_owned();
    let retry = format!("/api/v1/artifacts/{sha256}/retry");
    assert!(entry["reason"].as_str().unwrap().contains(&format!("POST {retry}")), "{entry}");

    // The same bytes again: refused, not loaded (the constructor would kill this worker too).
    let again = base.install_bytes(&bytes);
    assert_eq!(status_and_code(&again), (409, "QUARANTINED"), "{again:?}");
    assert!(again.json["message"].as_str().unwrap().contains(&sha256), "{again:?}");
    // Under another name too: constructors do not depend on the name a library is installed as.
    let renamed = base.install_query(artifacts::CTOR_ABORTS, "name=tenant-x");
    assert_eq!(status_and_code(&renamed), (409, "QUARANTINED"), "{renamed:?}");
    assert_eq!(generation(&base), Some(2), "no worker died");
    assert_eq!(base.artifact_files().len(), 2, "the quarantined bytes are kept for the retry");
    assert!(base.artifact_files().contains(&format!("{sha256}.so")));

    // Only an operator's explicit retry loads them again.
    let unknown = base.admin("POST", &format!("/api/v1/artifacts/{}/retry", "0".repeat(64)), &[], None);
    assert_eq!(status_and_code(&unknown), (404, "NOT_FOUND"), "{unknown:?}");
    std::fs::remove_file(base.data_dir().join("ctor-aborts")).unwrap();
    let retried = base.admin("POST", &retry, &[], None);
    assert_eq!((retried.status, retried.json["state"].as_str()), (200, Some("active")), "{retried:?}");
    assert_eq!(base.get("/fx-ctor-aborts/ping").body, "pong");
    assert_eq!(base.admin_get("/api/v1/modules").json["quarantined"], json!([]));
    assert_eq!(generation(&base), Some(2));
}
