//! Verified artifacts: `?sha256=` pins, and `--trusted-keys` refusing unsigned or wrongly
//! signed artifacts on every way in (uploads, `--modules-dir`, `--watch`, the restore), and
//! `pedestal keygen` / `sign` / `install` through the real binary.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use pedestal_signing::{SecretKey, sha256, sign_file};
use pedestal_tests::{Reply, TestBase, artifacts, eventually, read};
use serde_json::Value;

const SIGNATURE: &str = "x-pedestal-signature";

/// A directory holding signing keys and a `trusted-keys` file listing some of them.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    /// Writes a trusted-keys file listing `keys` (public key files concatenated) and returns its
    /// path.
    fn trust(&self, name: &str, keys: &[&SecretKey]) -> String {
        let text: String = keys.iter().map(|k| k.public_key().to_text()).collect();
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

fn key() -> SecretKey {
    SecretKey::generate().unwrap()
}

/// `key`'s signature line for `bytes`.
fn signature(key: &SecretKey, bytes: &[u8]) -> String {
    key.sign(&sha256(bytes)).to_line()
}

fn upload(base: &TestBase, bytes: &[u8], signature: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = signature.map(|s| (SIGNATURE, s)).into_iter().collect();
    base.install_with_headers(bytes, "", &headers)
}

/// The stored artifacts (`<data-dir>/artifacts/*.so`).
fn stored(base: &TestBase) -> Vec<PathBuf> {
    std::fs::read_dir(base.data_dir().join("artifacts"))
        .map(|entries| {
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "so")).collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_pinned_sha256_must_match_the_bytes_before_anything_is_stored() {
    let base = TestBase::start();
    let bytes = read(artifacts::GOOD);
    let actual = hex(&sha256(&bytes));
    let wrong = hex(&sha256(b"other bytes"));

    let refused = base.install_with_headers(&bytes, &format!("sha256={wrong}"), &[]);
    assert_eq!((refused.status, refused.code()), (409, "SHA256_MISMATCH"), "{refused:?}");
    assert_eq!(refused.json["details"]["expected"], wrong.as_str(), "{refused:?}");
    assert_eq!(refused.json["details"]["actual"], actual.as_str(), "{refused:?}");
    assert_eq!(base.get("/fx-good/ping").code(), "MODULE_NOT_FOUND");
    assert!(stored(&base).is_empty(), "stored although refused: {:?}", stored(&base));

    // Refused before the body is read: a short body, so the client is not cut off mid-upload.
    for malformed in ["abc", "zz", &"g".repeat(64), &format!("{actual}00")] {
        let reply = base.install_with_headers(b"unread", &format!("sha256={malformed}"), &[]);
        assert_eq!((reply.status, reply.code()), (400, "BAD_REQUEST"), "{malformed}: {reply:?}");
    }

    // Either case of hex digits.
    let pinned = base.install_with_headers(&bytes, &format!("sha256={}", actual.to_uppercase()), &[]);
    assert_eq!(pinned.status, 201, "{pinned:?}");
    assert_eq!(pinned.json["sha256"], actual.as_str());
    assert_eq!(pinned.json["signed_by"], Value::Null, "no --trusted-keys, nothing verified");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

#[test]
fn with_trusted_keys_only_uploads_signed_by_a_listed_key_install() {
    let keys = Keys::new();
    let (old, new, stranger) = (key(), key(), key());
    // Rotation: both the old and the new key are listed.
    let trusted = keys.trust("trusted-keys", &[&old, &new]);
    let base = TestBase::start_with(&["--trusted-keys", &trusted]);
    let good = read(artifacts::GOOD);
    let other = read(artifacts::VERSIONED_1_0_0);

    let check = |signature: Option<&str>, expected: &str| {
        let reply = upload(&base, &good, signature);
        assert_eq!((reply.status, reply.code()), (403, expected), "{signature:?}: {reply:?}");
        reply
    };
    let unsigned = check(None, "SIGNATURE_REQUIRED");
    let trusted_ids = unsigned.json["details"]["trusted_keys"].as_array().unwrap().len();
    assert_eq!(trusted_ids, 2, "{unsigned:?}");
    check(Some("garbage"), "SIGNATURE_INVALID");
    let by_stranger = check(Some(&signature(&stranger, &good)), "SIGNATURE_INVALID");
    assert_eq!(by_stranger.json["details"]["key_id"], stranger.id().to_string(), "{by_stranger:?}");
    // A trusted key's signature of other bytes.
    check(Some(&signature(&old, &other)), "SIGNATURE_INVALID");
    // A stranger's signature claiming the trusted key's id.
    let claimed = signature(&stranger, &good).replace(&stranger.id().to_string(), &old.id().to_string());
    check(Some(&claimed), "SIGNATURE_INVALID");
    // A valid signature line cut short.
    let valid = signature(&old, &good);
    check(Some(&valid[..valid.len() - 8]), "SIGNATURE_INVALID");
    assert_eq!(base.get("/fx-good/ping").code(), "MODULE_NOT_FOUND");
    assert!(stored(&base).is_empty(), "stored although refused: {:?}", stored(&base));

    // Signed by the old key and by the new one: both install, saying which key.
    let installed = upload(&base, &good, Some(&valid));
    assert_eq!(installed.status, 201, "{installed:?}");
    assert_eq!(installed.json["signed_by"], old.id().to_string(), "{installed:?}");
    let installed = upload(&base, &other, Some(&signature(&new, &other)));
    assert_eq!(installed.status, 201, "{installed:?}");
    assert_eq!(installed.json["signed_by"], new.id().to_string());
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    assert_eq!(base.module("fx-good")["signed_by"], old.id().to_string());
    assert_eq!(base.module("fx-versioned")["signed_by"], new.id().to_string());
    base.wait_for_log(&format!("signed_by=\"{}\"", old.id()));

    // The restore checks the kept signatures against the keys of the new start: both come back
    // while both keys are listed...
    let base = base.kill_and_restart(&["--trusted-keys", &trusted]);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    assert_eq!(base.module("fx-good")["signed_by"], old.id().to_string());
    // ...and once the old key is dropped, what it signed is no longer loaded.
    let rotated = keys.trust("rotated-keys", &[&new]);
    let base = base.kill_and_restart(&["--trusted-keys", &rotated]);
    assert_eq!(base.get("/fx-versioned/version").body, "1.0.0");
    assert_eq!(base.get("/fx-good/ping").code(), "MODULE_NOT_FOUND");
    let quarantined = base.admin_get("/api/v1/modules").json["quarantined"].to_string();
    assert!(
        quarantined.contains(&format!("names key {}, which is not a trusted key", old.id())),
        "{quarantined}"
    );
    // A retry checks the kept signature again, unless it brings one by a trusted key, which is
    // then kept in its place.
    let retry = "/api/v1/modules/fx-good/0.1.0/retry";
    let refused = base.admin("POST", retry, &[], None);
    assert_eq!((refused.status, refused.code()), (403, "SIGNATURE_INVALID"), "{refused:?}");
    let resigned = signature(&new, &good);
    let forged = base.admin("POST", retry, &[(SIGNATURE, &signature(&stranger, &good))], None);
    assert_eq!((forged.status, forged.code()), (403, "SIGNATURE_INVALID"), "{forged:?}");
    let retried = base.admin("POST", retry, &[(SIGNATURE, &resigned)], None);
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(retried.json["signed_by"], new.id().to_string(), "{retried:?}");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    let base = base.kill_and_restart(&["--trusted-keys", &rotated]);
    assert_eq!(base.module("fx-good")["signed_by"], new.id().to_string());
}

#[test]
fn a_modules_dir_under_trusted_keys_runs_the_signed_module_and_reports_the_unsigned_one() {
    let keys = Keys::new();
    let signer = key();
    let trusted = keys.trust("trusted-keys", &[&signer]);
    let dir = tempfile::tempdir().unwrap();
    let (signed, unsigned) = (dir.path().join("10-good.so"), dir.path().join("20-versioned.so"));
    std::fs::copy(artifacts::GOOD, &signed).unwrap();
    std::fs::copy(artifacts::VERSIONED_1_0_0, &unsigned).unwrap();
    sign_file(&signer, &signed).unwrap();
    let modules_dir = dir.path().to_str().unwrap();

    let base = TestBase::start_with(&[
        "--modules-dir",
        modules_dir,
        "--trusted-keys",
        &trusted,
        "--ready-requires-modules",
    ]);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    assert_eq!(base.module("fx-good")["signed_by"], signer.id().to_string());
    assert_eq!(base.get("/fx-versioned/version").code(), "MODULE_NOT_FOUND");
    let ready = base.admin_get("/api/v1/ready");
    assert_eq!(ready.status, 503, "a boot module was refused: {ready:?}");
    let log = base.wait_for_log("SIGNATURE_REQUIRED");
    let refusal = log.lines().find(|l| l.contains("SIGNATURE_REQUIRED")).unwrap();
    assert!(refusal.contains("20-versioned.so"), "{refusal}");
}

#[test]
fn a_path_install_under_trusted_keys_takes_the_signature_beside_the_file() {
    let keys = Keys::new();
    let (signer, stranger) = (key(), key());
    let trusted = keys.trust("trusted-keys", &[&signer]);
    let base = TestBase::start_with(&["--trusted-keys", &trusted]);
    let incoming = base.data_dir().join("incoming");
    let (good, versioned) = (incoming.join("good.so"), incoming.join("versioned.so"));
    std::fs::copy(artifacts::GOOD, &good).unwrap();
    std::fs::copy(artifacts::VERSIONED_1_0_0, &versioned).unwrap();

    // No `.sig` beside it: refused, and nothing stored.
    assert_eq!(base.install_path(&versioned).code(), "SIGNATURE_REQUIRED");
    // A `.sig` by a key the base does not trust.
    sign_file(&stranger, &versioned).unwrap();
    assert_eq!(base.install_path(&versioned).code(), "SIGNATURE_INVALID");
    // A trusted key's `.sig` of other bytes.
    std::fs::write(versioned.with_extension("so.sig"), signature(&signer, &read(artifacts::GOOD))).unwrap();
    assert_eq!(base.install_path(&versioned).code(), "SIGNATURE_INVALID");
    // A `.sig` that is a FIFO is refused, not waited for.
    let fifo = incoming.join("good.so.sig");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert_eq!(base.install_path(&good).code(), "NOT_A_REGULAR_FILE");
    std::fs::remove_file(&fifo).unwrap();
    assert!(stored(&base).is_empty(), "a refused path install stored {:?}", stored(&base));

    sign_file(&signer, &good).unwrap();
    let installed = base.install_path(&good);
    assert_eq!(installed.status, 201, "{}", installed.body);
    assert_eq!(installed.json["signed_by"], signer.id().to_string());
    assert_eq!(base.get("/fx-good/ping").body, "pong");
}

#[test]
fn a_memory_limit_restart_under_trusted_keys_starts_the_module_again_from_its_kept_signature() {
    let keys = Keys::new();
    let signer = key();
    let trusted = keys.trust("trusted-keys", &[&signer]);
    let base = TestBase::start_with(&["--trusted-keys", &trusted]);
    let bytes = read(artifacts::LEAKY);
    let installed = upload(&base, &bytes, Some(&signature(&signer, &bytes)));
    assert_eq!(installed.status, 201, "{}", installed.body);
    let name = installed.json["name"].as_str().unwrap().to_owned();
    let limits = serde_json::json!({"memory_soft_limit_bytes": 1 << 20, "memory_action": "restart"});
    assert_eq!(base.put_limits(&name, &limits).status, 200);
    assert_eq!(base.get(&format!("/{name}/leak?kib=2048")).status, 200);
    let restarted = eventually("the restart after the memory limit", Duration::from_secs(30), || {
        let module = base.module(&name);
        let history = module["history"].as_array()?.clone();
        let restarted = history.iter().any(|t| t["reason"] == "memory_limit");
        (restarted && module["state"] == "active").then_some(module)
    });
    assert_eq!(restarted["signed_by"], signer.id().to_string(), "{restarted}");
    assert_eq!(base.get(&format!("/{name}/leak?kib=1")).status, 200);
}

#[test]
fn a_watched_directory_under_trusted_keys_refuses_an_unsigned_drop_until_its_signature_comes() {
    let keys = Keys::new();
    let signer = key();
    let trusted = keys.trust("trusted-keys", &[&signer]);
    let dir = tempfile::tempdir().unwrap();
    let base = TestBase::start_with(&["--watch", dir.path().to_str().unwrap(), "--trusted-keys", &trusted]);
    let library = dir.path().join("versioned.so");
    std::fs::copy(artifacts::VERSIONED_1_0_0, &library).unwrap();
    let log = base.wait_for_log("SIGNATURE_REQUIRED");
    assert!(log.contains("versioned.so"), "{log}");
    assert_eq!(base.get("/fx-versioned/version").code(), "MODULE_NOT_FOUND");

    // A signature by an untrusted key is refused too; the trusted one, dropped after the library,
    // installs it.
    sign_file(&key(), &library).unwrap();
    base.wait_for_log("SIGNATURE_INVALID");
    assert_eq!(base.get("/fx-versioned/version").code(), "MODULE_NOT_FOUND");
    sign_file(&signer, &library).unwrap();
    eventually("the signed module installed", Duration::from_secs(10), || {
        (base.get("/fx-versioned/version").body == "1.0.0").then_some(())
    });
    assert_eq!(base.module("fx-versioned")["signed_by"], signer.id().to_string());
}

#[test]
fn a_bad_trusted_keys_file_stops_the_base_before_it_serves() {
    let keys = Keys::new();
    let bad = keys.dir.path().join("trusted-keys");
    let signer = key();
    let broken = signer.public_key().to_text().replace(&signer.id().to_string(), "0011223344556677");
    std::fs::write(&bad, broken).unwrap();
    let data = tempfile::tempdir().unwrap();
    let missing = keys.dir.path().join("missing");
    for file in [&bad, &missing] {
        let output = Command::new(artifacts::PEDESTAL)
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .arg("--trusted-keys")
            .arg(file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "started with {}: {stderr}", file.display());
        assert!(stderr.contains("TRUSTED_KEYS_INVALID"), "{stderr}");
        assert!(stdout(&output).is_empty(), "it reported ready: {}", stdout(&output));
    }
}

#[test]
fn keygen_sign_and_install_through_the_real_binary() {
    let work = tempfile::tempdir().unwrap();
    let key_path = work.path().join("release.key");
    let made = pedestal(work.path(), &["keygen", "--out", "release.key"]);
    assert!(made.status.success(), "{made:?}");
    let id = stdout(&made).lines().next().and_then(|l| l.strip_prefix("key id ")).unwrap().to_owned();
    assert_eq!(id.len(), 16, "{}", stdout(&made));
    assert_eq!(SecretKey::load(&key_path).unwrap().id().to_string(), id);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    let again = pedestal(work.path(), &["keygen", "--out", "release.key"]);
    assert!(!again.status.success(), "overwrote the key: {again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"), "{again:?}");

    let pub_path = work.path().join("release.key.pub");
    let base = TestBase::start_with(&["--trusted-keys", pub_path.to_str().unwrap()]);
    let good = work.path().join("good.so");
    std::fs::copy(artifacts::GOOD, &good).unwrap();
    let signed = pedestal(work.path(), &["sign", "--key", "release.key", "good.so"]);
    assert!(signed.status.success(), "{signed:?}");
    assert!(
        stdout(&signed).contains(&id) && stdout(&signed).contains(&hex(&sha256(&read(&good)))),
        "{signed:?}"
    );
    assert!(work.path().join("good.so.sig").exists());

    // Sends good.so.sig, found beside the file.
    let installed = install(&base, work.path(), &["good.so"]);
    assert!(installed.status.success(), "{installed:?}\n{}", base.log());
    assert!(stdout(&installed).contains(&format!("signed by {id}")), "{installed:?}");
    assert_eq!(base.get("/fx-good/ping").body, "pong");

    // Unsigned: the API's code and message, and a failure.
    let versioned = work.path().join("versioned.so");
    std::fs::copy(artifacts::VERSIONED_1_0_0, &versioned).unwrap();
    let refused = install(&base, work.path(), &["versioned.so"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("error: SIGNATURE_REQUIRED: "), "{refused:?}");
    // A pin the bytes do not match.
    let zeros = "0".repeat(64);
    let mismatch =
        install(&base, work.path(), &["versioned.so", "--sign", "release.key", "--sha256", &zeros]);
    assert!(!mismatch.status.success(), "{mismatch:?}");
    assert!(String::from_utf8_lossy(&mismatch.stderr).contains("error: SHA256_MISMATCH: "), "{mismatch:?}");
    // Signed on the fly, under another name.
    let renamed =
        install(&base, work.path(), &["versioned.so", "--sign", "release.key", "--name", "tenant-1"]);
    assert!(renamed.status.success(), "{renamed:?}\n{}", base.log());
    assert_eq!(base.get("/tenant-1/version").body, "1.0.0");
    assert_eq!(base.module("tenant-1")["signed_by"], id.as_str());
    assert!(!work.path().join("versioned.so.sig").exists(), "--sign writes no file");
}

/// Runs `pedestal ARGS` in `dir`.
fn pedestal(dir: &Path, args: &[&str]) -> Output {
    Command::new(artifacts::PEDESTAL)
        .current_dir(dir)
        .args(args)
        .env_remove("PEDESTAL_ADMIN_TOKEN")
        .output()
        .unwrap()
}

/// `pedestal install ARGS` against `base` (its token read from its data directory).
fn install(base: &TestBase, dir: &Path, args: &[&str]) -> Output {
    let data_dir = base.data_dir().to_str().unwrap();
    let mut all = vec!["install", "--admin", &base.admin, "--data-dir", data_dir];
    all.extend_from_slice(args);
    pedestal(dir, &all)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
