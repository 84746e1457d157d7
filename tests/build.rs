//! Builds the real `pedestal` binary and every fixture module (release, in their own target
//! directory so this nested cargo never waits for the outer one's lock) and emits one path
//! constant per artifact into `$OUT_DIR/artifacts.rs`.

use std::{env, fs, path::PathBuf, process::Command};

/// Fixture packages, each a `cdylib` under `tests/fixtures/`.
const FIXTURES: &[&str] = &[
    "fx-good",
    "fx-panicking",
    "fx-start-fails",
    "fx-start-panics",
    "fx-start-hangs",
    "fx-start-blocks",
    "fx-thread-local",
    "fx-threads",
    "fx-thread-leak",
    "fx-interface-v2",
    "fx-interface-newer-minor",
    "fx-plain-cdylib",
    "fx-cpu-burner",
    "fx-leaky",
    "fx-limited",
];

/// A nested cargo must build, not lint: under `cargo clippy` the outer cargo sets a workspace
/// wrapper and clippy's arguments, which would otherwise leak into this build.
fn plain(command: &mut Command) -> &mut Command {
    for var in ["CARGO_ENCODED_RUSTFLAGS", "RUSTC_WORKSPACE_WRAPPER", "CLIPPY_ARGS", "CLIPPY_CONF_DIR"] {
        command.env_remove(var);
    }
    command
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    for watched in ["module-api/src", "base/src", "tests/fixtures", "tests/compat", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target").join("fixtures");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(&root).args(["build", "--release", "--target-dir"]).arg(&target_dir).args([
        "-p",
        "pedestal-base",
        "--bin",
        "pedestal",
    ]);
    // `--bin` applies to every package selected alongside it, so build fixtures separately.
    let status = plain(&mut build).status().expect("running cargo");
    assert!(status.success(), "building the pedestal binary failed");
    let mut fixtures = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    fixtures.current_dir(&root).args(["build", "--release", "--target-dir"]).arg(&target_dir);
    for fixture in FIXTURES {
        fixtures.args(["-p", fixture]);
    }
    let status = plain(&mut fixtures).status().expect("running cargo");
    assert!(status.success(), "building the fixture modules failed");

    // Modules built against frozen older interfaces live in a workspace of their own.
    let mut compat = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    compat
        .current_dir(root.join("tests/compat"))
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(&target_dir)
        .args(["-p", "fx-interface-1-0"]);
    let status = plain(&mut compat).status().expect("running cargo");
    assert!(status.success(), "building the compatibility fixtures failed");

    let release = target_dir.join("release");
    let mut out = String::new();
    out.push_str(&format!(
        "/// The real `pedestal` binary.\npub const PEDESTAL: &str = {:?};\n",
        release.join("pedestal")
    ));
    for fixture in FIXTURES.iter().chain(&["fx-interface-1-0"]) {
        let constant = fixture.trim_start_matches("fx-").replace('-', "_").to_uppercase();
        let file = release.join(format!("lib{}.so", fixture.replace('-', "_")));
        assert!(file.exists(), "{} was not built", file.display());
        out.push_str(&format!("/// The `{fixture}` fixture (see tests/fixtures/README.md).\npub const {constant}: &str = {:?};\n", file));
    }
    fs::write(PathBuf::from(env::var("OUT_DIR").unwrap()).join("artifacts.rs"), out).unwrap();
}
