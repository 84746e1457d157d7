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
    "fx-start-aborts",
    "fx-echo",
    "fx-echo-caller",
    "fx-services",
    "fx-crashy",
    "fx-ctor-writes",
    "fx-ctor-wrong-major",
    "fx-ctor-aborts",
];

/// The search-platform example's ranker modules.
const RANKERS: &[&str] = &["ranker-keyword", "ranker-recency", "ranker-popularity"];

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
    for watched in [
        "module-api/src",
        "base/src",
        "host/src",
        "host/Cargo.toml",
        "base/Cargo.toml",
        "base/console",
        "cli/src",
        "cli/Cargo.toml",
        "cli/build.rs",
        "fleet/src",
        "fleet/console",
        "fleet/Cargo.toml",
        "signing/src",
        "tests/fixtures",
        "tests/compat",
        "examples/search-platform",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target").join("fixtures");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir)
        .args(["-p", "pedestal", "--bin", "pedestal"]);
    // `--bin` applies to every package selected alongside it, so build fixtures separately.
    let status = plain(&mut build).status().expect("running cargo");
    assert!(status.success(), "building the pedestal binary failed");
    // The search-platform example's custom base (a base binary: built apart from modules).
    let mut search_base = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    search_base.current_dir(&root).args(["build", "--release", "--target-dir"]).arg(&target_dir).args([
        "-p",
        "search-base",
        "-p",
        "echo-base",
    ]);
    let status = plain(&mut search_base).status().expect("running cargo");
    assert!(status.success(), "building the search-platform base failed");
    let mut fixtures = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    fixtures.current_dir(&root).args(["build", "--release", "--target-dir"]).arg(&target_dir);
    for fixture in FIXTURES.iter().chain(RANKERS) {
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
        .args(["-p", "fx-interface-1-0", "-p", "fx-echo-1-0", "-p", "fx-echo-caller-1-0"]);
    let status = plain(&mut compat).status().expect("running cargo");
    assert!(status.success(), "building the compatibility fixtures failed");

    let versioned = build_versioned(&root, &target_dir);

    let release = target_dir.join("release");
    let mut out = String::new();
    out.push_str(&format!(
        "/// The real `pedestal` binary.\npub const PEDESTAL: &str = {:?};\n",
        release.join("pedestal")
    ));
    out.push_str(&format!(
        "/// The search-platform example's base.\npub const SEARCH_BASE: &str = {:?};\n",
        release.join("search-base")
    ));
    out.push_str(&format!(
        "/// A test base calling the echo SPI 1.1.0 with typed handles.\npub const ECHO_BASE: &str = {:?};\n",
        release.join("echo-base")
    ));
    for fixture in
        FIXTURES.iter().chain(&["fx-interface-1-0", "fx-echo-1-0", "fx-echo-caller-1-0"]).chain(RANKERS)
    {
        let constant = fixture.trim_start_matches("fx-").replace('-', "_").to_uppercase();
        let file = release.join(format!("lib{}.so", fixture.replace('-', "_")));
        assert!(file.exists(), "{} was not built", file.display());
        out.push_str(&format!("/// The `{fixture}` fixture (see tests/fixtures/README.md).\npub const {constant}: &str = {:?};\n", file));
    }
    for (version, file) in versioned {
        let constant = format!("VERSIONED_{}", version.replace(['.', '-'], "_").to_uppercase());
        out.push_str(&format!("/// `fx-versioned` at version {version} (see tests/versioned/lib.rs).\npub const {constant}: &str = {file:?};\n"));
    }
    fs::write(PathBuf::from(env::var("OUT_DIR").unwrap()).join("artifacts.rs"), out).unwrap();
}

/// Builds of `fx-versioned`: its version, and a suffix for a second build of one version (the
/// same identity with other bytes, for same-version replaces).
const VERSIONS: &[(&str, &str)] = &[("1.0.0", ""), ("1.1.0", ""), ("2.0.0", ""), ("1.0.0", "b")];

/// Builds `tests/versioned/lib.rs` once per version in [`VERSIONS`] (a package of its own per
/// version under `target/fixtures/versioned/`, sharing the fixtures' target directory and the
/// workspace's lock file), copying each library out as `fx-versioned-<version>.so`.
fn build_versioned(root: &std::path::Path, target_dir: &std::path::Path) -> Vec<(String, PathBuf)> {
    println!("cargo:rerun-if-changed={}", root.join("tests/versioned").display());
    let source = root.join("tests/versioned/lib.rs");
    let mut built = Vec::new();
    for (version, build) in VERSIONS {
        let key = if build.is_empty() { version.to_string() } else { format!("{version}-{build}") };
        let package = target_dir.join("versioned").join(&key);
        fs::create_dir_all(package.join("src")).unwrap();
        let manifest = format!(
            "[package]\nname = \"fx-versioned\"\nversion = \"{version}\"\nedition = \"2024\"\npublish = false\n\n\
             [lib]\nname = \"fx_versioned_{lib}\"\ncrate-type = [\"cdylib\"]\npath = {source:?}\n\n\
             [dependencies]\npedestal-module-api = {{ path = {api:?} }}\n\
             axum = {{ version = \"0.8\", default-features = false, features = [\"query\"] }}\n\
             serde = {{ version = \"1\", features = [\"derive\"] }}\n\
             tokio = {{ version = \"1\", default-features = false, features = [\"time\"] }}\n\n\
             [workspace]\n\n[profile.release]\nstrip = \"debuginfo\"\n",
            api = root.join("module-api"),
            // A library name per version: cdylibs carry no hash in their file name, so versions
            // sharing a target directory would overwrite each other's library.
            lib = key.replace(['.', '-'], "_"),
        );
        write_if_changed(&package.join("Cargo.toml"), &manifest);
        if !package.join("Cargo.lock").exists() {
            fs::copy(root.join("Cargo.lock"), package.join("Cargo.lock")).unwrap();
        }
        let mut build = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .current_dir(&package)
            .args(["build", "--release", "--message-format=json-render-diagnostics", "--target-dir"])
            .arg(target_dir)
            .stderr(std::process::Stdio::inherit());
        let output = plain(&mut build).output().expect("running cargo");
        assert!(output.status.success(), "building fx-versioned {version} failed");
        let built_file = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains("\"compiler-artifact\"") && line.contains("fx-versioned"))
            .find_map(|line| {
                let start = line.find("\"filenames\":[\"")? + "\"filenames\":[\"".len();
                Some(line[start..][..line[start..].find('"')?].to_owned())
            })
            .expect("cargo names the library it built");
        let file = target_dir.join(format!("fx-versioned-{key}.so"));
        fs::copy(&built_file, &file).unwrap();
        built.push((key, file));
    }
    built
}

/// Writes `contents` unless the file already holds them (so cargo sees no change).
fn write_if_changed(path: &std::path::Path, contents: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(contents) {
        fs::write(path, contents).unwrap();
    }
}
