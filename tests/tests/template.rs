//! The module author's path, for real: `cargo generate` from `module-template` into a directory
//! outside the repository, build the new module there, deploy it into the real base, request it,
//! and find its log line tagged.
//!
//! Slow (a release build of a new crate), so it runs when `PEDESTAL_TEMPLATE_TEST` is set, as
//! `cargo xtask test` (and so CI) does. It needs cargo-generate 0.23.14, which that command
//! installs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use pedestal_tests::TestBase;
use serde_json::Value;

#[test]
fn a_generated_module_builds_deploys_and_answers() {
    if std::env::var_os("PEDESTAL_TEMPLATE_TEST").is_none() {
        eprintln!(
            "skipped: set PEDESTAL_TEMPLATE_TEST=1 (cargo xtask test does) to run the template smoke test"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let before = git_status(&root);
    // Outside the repository: a module is its own project, with no workspace above it.
    let scratch = tempfile::tempdir().unwrap();
    let crate_dir = generate(&root, scratch.path(), "smoke-mod");
    assert!(!crate_dir.join(".git").exists(), "--vcs none must not create a nested repository");
    assert_is_own_workspace(&root, &crate_dir);

    let library = build(&root, &crate_dir);
    assert_eq!(git_status(&root), before, "generating and building a module changed the repository");

    let base = TestBase::start();
    let installed = base.install_ok(library.to_str().unwrap());
    assert_eq!(installed["name"], "smoke-mod");
    let reply = base.get("/smoke-mod/hello?name=CI");
    assert_eq!((reply.status, reply.body.as_str()), (200, "hello, CI, from smoke-mod\n"));
    let log = base.wait_for_log("said hello");
    let line = log.lines().find(|l| l.contains("said hello")).unwrap();
    assert!(line.contains("module=\"smoke-mod\"") && line.contains("version=0.1.0"), "{line}");
    let (health, all) = base.health_of("smoke-mod");
    assert_eq!(
        (health["status"].as_str(), health["hook"]["outcome"].as_str()),
        (Some("healthy"), Some("answered")),
        "{all}"
    );
    let limits = &base.module("smoke-mod")["limits"];
    assert_eq!(
        (limits["max_concurrent_requests"].as_u64(), limits["sources"]["max_concurrent_requests"].as_str()),
        (Some(256), Some("manifest")),
        "{limits}"
    );
    assert_eq!(base.uninstall("smoke-mod", "0.1.0").json["state"], "stopped");
}

/// `cargo xtask deploy` on a module in its own directory does what the developer means and says
/// what it did: a first deploy takes the traffic; the same bytes change nothing; an edit (same
/// version, new bytes) replaces the running build; a newer version takes over and unloads the
/// old; an older one is refused unless `--allow-downgrade`; `--inactive` installs beside the
/// active version, and deploying the same bytes again switches to them; `cargo xtask rollback`
/// goes back. A missing token and a wrong path say so.
#[test]
fn deploy_from_a_module_directory_does_what_the_developer_means() {
    if std::env::var_os("PEDESTAL_TEMPLATE_TEST").is_none() {
        eprintln!("skipped: set PEDESTAL_TEMPLATE_TEST=1 (cargo xtask test does) to run the deploy test");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let scratch = tempfile::tempdir().unwrap();
    let dir = generate(&root, scratch.path(), "loop-mod");
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let base = TestBase::start();
    let admin = base.admin.clone();
    let no_tokens = scratch.path().join("no-data-dir");
    let xtask = |args: &[&str]| -> (bool, String) {
        let output = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["run", "--quiet", "--package", "xtask", "--"])
            .args(args)
            // The fixture build's target directory, for xtask and the module alike: their
            // dependencies are compiled there already.
            .env("CARGO_TARGET_DIR", root.join("target/fixtures"))
            .env_remove("PEDESTAL_ADMIN_TOKEN")
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };
    let dir_arg = dir.to_str().unwrap();
    let deploy = |extra: &[&str]| {
        let mut args = vec!["deploy", dir_arg, "--admin", &admin, "--token", base.token()];
        args.extend_from_slice(extra);
        xtask(&args)
    };
    let edit = |from: &str, to: &str, file: &str| {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from:?} not in {}", path.display());
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    let hello = || base.get("/loop-mod/hello?name=dev").body;
    let active = || base.admin_get("/api/v1/modules/loop-mod").json["active_version"].clone();

    let (ok, out) = xtask(&["deploy", dir_arg, "--admin", &admin, "--data-dir", no_tokens.to_str().unwrap()]);
    assert!(
        !ok && out.contains("needs its operations token") && out.contains("PEDESTAL_ADMIN_TOKEN"),
        "{out}"
    );
    let (ok, out) =
        xtask(&["deploy", &format!("{dir_arg}-typo"), "--admin", &admin, "--token", base.token()]);
    assert!(!ok && out.contains("no such directory"), "{out}");

    let (ok, out) = deploy(&[]);
    assert!(
        ok && out.contains("loop-mod@0.1.0 now takes the traffic") && out.contains("nothing served it"),
        "{out}"
    );
    assert_eq!(hello(), "hello, dev, from loop-mod\n");
    let (ok, out) = deploy(&[]);
    assert!(ok && out.contains("unchanged: loop-mod@0.1.0 already serves these bytes"), "{out}");

    edit("\"hello, {name}", "\"hi, {name}", "src/lib.rs");
    let (ok, out) = deploy(&[]);
    assert!(ok && out.contains("loop-mod@0.1.0 now takes the traffic"), "{out}");
    assert!(out.contains("its previous build") && out.contains("drained and unloaded"), "{out}");
    assert_eq!(hello(), "hi, dev, from loop-mod\n");

    edit("version = \"0.1.0\"", "version = \"0.2.0\"", "Cargo.toml");
    let (ok, out) = deploy(&[]);
    assert!(ok && out.contains("loop-mod@0.2.0 now takes the traffic"), "{out}");
    assert!(out.contains("previous: loop-mod@0.1.0 (drained and unloaded)"), "{out}");
    assert_eq!(active(), "0.2.0");

    // An older version, as a checkout of older code would give it (the source changes too: cargo
    // names a cdylib without a hash, so the same unchanged sources at an earlier version would
    // look fresh to it while the file holds the later build).
    edit("version = \"0.2.0\"", "version = \"0.1.0\"", "Cargo.toml");
    edit("\"hi, {name}", "\"hey, {name}", "src/lib.rs");
    let (ok, out) = deploy(&[]);
    assert!(!ok && out.contains("older than loop-mod@0.2.0") && out.contains("--allow-downgrade"), "{out}");
    assert_eq!(active(), "0.2.0", "a refused downgrade changes nothing");
    let (ok, out) = deploy(&["--allow-downgrade"]);
    assert!(ok && out.contains("loop-mod@0.1.0 now takes the traffic"), "{out}");

    let (ok, out) = xtask(&["rollback", "loop-mod", "--admin", &admin, "--token", base.token()]);
    assert!(ok && out.contains("rolled back: loop-mod@0.2.0 takes the traffic again (reinstalled"), "{out}");
    assert_eq!(active(), "0.2.0");

    edit("version = \"0.1.0\"", "version = \"0.3.0\"", "Cargo.toml");
    let (ok, out) = deploy(&["--inactive"]);
    assert!(
        ok && out.contains("loop-mod@0.3.0 installed inactive")
            && out.contains("loop-mod@0.2.0 keeps the traffic"),
        "{out}"
    );
    assert_eq!(active(), "0.2.0");
    let (ok, out) = deploy(&[]);
    assert!(
        ok && out.contains("loop-mod@0.3.0 (installed inactive, same bytes) now takes the traffic"),
        "{out}"
    );
    assert_eq!(active(), "0.3.0");
}

/// Generates a module named `name` into `destination`, its SDK taken from this checkout, without
/// prompts (`--silent`: every other placeholder takes its default). Returns the crate's directory.
fn generate(root: &Path, destination: &Path, name: &str) -> PathBuf {
    let generate = Command::new("cargo")
        .args(["generate", "--path"])
        .arg(root.join("module-template"))
        .args(["--name", name, "--destination"])
        .arg(destination)
        .arg("--define")
        .arg(format!("sdk_path={}", root.join("module-api").display()))
        .args(["--vcs", "none", "--silent"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running cargo generate (install it with `cargo xtask test`)");
    assert!(
        generate.status.success(),
        "cargo generate failed: {}",
        String::from_utf8_lossy(&generate.stderr)
    );
    destination.join(name)
}

/// The generated manifest parses, declares its own `[workspace]` (cargo sees the crate as its
/// workspace's root, not as a stray member of one above it), and takes the SDK from the path given.
fn assert_is_own_workspace(root: &Path, crate_dir: &Path) {
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(manifest.lines().any(|l| l.trim() == "[workspace]"), "{manifest}");
    let metadata = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(metadata.status.success(), "{}", String::from_utf8_lossy(&metadata.stderr));
    let metadata: Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let crate_dir = crate_dir.canonicalize().unwrap();
    assert_eq!(metadata["workspace_root"].as_str(), crate_dir.to_str(), "{metadata}");
    let sdk = metadata["packages"][0]["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "pedestal-module-api")
        .unwrap();
    assert_eq!(sdk["path"].as_str(), root.join("module-api").to_str(), "{sdk}");
}

/// Builds the module in release, with the repository's lock file (the same dependency versions as
/// the base, resolved without a registry query) and the fixture build's target directory (those
/// dependencies are already compiled there). Returns the library.
fn build(root: &Path, crate_dir: &Path) -> PathBuf {
    std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target_dir = root.join("target/fixtures");
    let started = Instant::now();
    let build = Command::new(env!("CARGO"))
        .args(["build", "--release", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .unwrap();
    assert!(build.success(), "building the generated module failed");
    eprintln!("built the generated module in {:.1} s", started.elapsed().as_secs_f64());
    let crate_name = crate_dir.file_name().unwrap().to_str().unwrap().replace('-', "_");
    target_dir.join(format!("release/lib{crate_name}.so"))
}

/// `git status --porcelain` of the repository: what generating and building must leave alone.
fn git_status(root: &Path) -> String {
    let status = Command::new("git").arg("-C").arg(root).args(["status", "--porcelain"]).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    String::from_utf8(status.stdout).unwrap()
}
