//! The module author's path, for real: `cargo generate` from `module-template`, build the new
//! module, deploy it into the real base, request it, and find its log line tagged.
//!
//! Slow (a release build of a new crate), so it runs when `PEDESTAL_TEMPLATE_TEST` is set, as
//! `cargo xtask test` (and so CI) does. It needs cargo-generate 0.23.14, which that command
//! installs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use pedestal_tests::TestBase;

#[test]
fn a_generated_module_builds_deploys_and_answers() {
    if std::env::var_os("PEDESTAL_TEMPLATE_TEST").is_none() {
        eprintln!(
            "skipped: set PEDESTAL_TEMPLATE_TEST=1 (cargo xtask test does) to run the template smoke test"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let scratch = tempfile::tempdir().unwrap();
    let workspace = scratch.path();
    write_workspace(&root, workspace);

    let generate = Command::new("cargo")
        .args(["generate", "--path"])
        .arg(root.join("module-template"))
        .args(["--name", "smoke-mod", "--destination"])
        .arg(workspace.join("modules"))
        .args(["--vcs", "none"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running cargo generate (install it with `cargo xtask test`)");
    assert!(
        generate.status.success(),
        "cargo generate failed: {}",
        String::from_utf8_lossy(&generate.stderr)
    );
    let crate_dir = workspace.join("modules/smoke-mod");
    assert!(!crate_dir.join(".git").exists(), "--vcs none must not create a nested repository");

    // Share the fixture build's target directory: the dependencies are already compiled there.
    let target_dir = root.join("target/fixtures");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--release", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .unwrap();
    assert!(build.success(), "building the generated module failed");
    let library: PathBuf = target_dir.join("release/libsmoke_mod.so");

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

/// A workspace like the repository's, with `modules/*` as its only members: the same
/// `[workspace.dependencies]` (paths made absolute), profiles and lock file.
fn write_workspace(root: &Path, dir: &Path) {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members_start = manifest.find("members = [").unwrap();
    let members_end = members_start + manifest[members_start..].find(']').unwrap() + 1;
    let mut rewritten =
        format!("{}members = [\"modules/*\"]{}", &manifest[..members_start], &manifest[members_end..]);
    rewritten = rewritten.replace("path = \"", &format!("path = \"{}/", root.display()));
    rewritten = rewritten.lines().filter(|l| !l.starts_with("exclude")).collect::<Vec<_>>().join("\n");
    std::fs::write(dir.join("Cargo.toml"), rewritten).unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::create_dir_all(dir.join("modules")).unwrap();
}
