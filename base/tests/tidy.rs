//! Tidy checks that keep the ABI and `unsafe` honest (in the spirit of rust-analyzer's tidy).

use std::{fs, path::Path};

use sha2::{Digest, Sha256};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `module-api/src/abi.rs` is the ABI. `docs/abi.md` records its hash next to the interface
/// version; changing the ABI means bumping `pedestal-module-api`'s version (minor for
/// append-only changes, major otherwise), describing the change in `docs/abi.md`'s interface
/// history, and recording the new hash.
#[test]
fn the_abi_file_matches_the_hash_and_version_recorded_in_docs_abi_md() {
    let abi = fs::read(root().join("module-api/src/abi.rs")).unwrap();
    let hash = hex::encode(Sha256::digest(&abi));
    let doc = fs::read_to_string(root().join("docs/abi.md")).unwrap();
    let recorded = |key: &str| {
        doc.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_matches('`').to_owned())
            .unwrap_or_else(|| panic!("docs/abi.md has no line starting with {key:?}"))
    };
    let version = pedestal_module_api::abi::INTERFACE_VERSION;
    assert_eq!(
        recorded("ABI interface version:"),
        version,
        "docs/abi.md records another interface version than pedestal-module-api's"
    );
    assert_eq!(
        recorded("ABI file sha256:"),
        hash,
        "module-api/src/abi.rs changed. Bump pedestal-module-api's version (minor for append-only \
         changes, major otherwise), describe the change in docs/abi.md, and record the new hash"
    );
}

/// Only the ABI glue uses `unsafe`, and every `unsafe` block says why it is sound.
#[test]
fn unsafe_lives_only_in_the_abi_glue_and_every_block_has_a_safety_comment() {
    let allowed = [
        "host/src/loader.rs",
        "host/src/host.rs",
        "host/src/tls_keys.rs",
        "host/src/crash.rs",
        "host/src/sys.rs",
        "module-api/src/abi.rs",
        "module-api/src/alloc.rs",
        "module-api/src/runtime.rs",
        "module-api/src/lib.rs",
    ];
    let mut problems = Vec::new();
    for dir in ["base/src", "host/src", "module-api/src"] {
        for path in rust_files(&root().join(dir)) {
            let relative = path.strip_prefix(root()).unwrap().to_string_lossy().into_owned();
            let text = fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                let opens_block = code.contains("unsafe {") || code.trim_end().ends_with("unsafe");
                let is_unsafe = opens_block || code.contains("unsafe impl") || code.contains("unsafe fn");
                if !is_unsafe {
                    continue;
                }
                if !allowed.contains(&relative.as_str()) {
                    problems.push(format!("{relative}:{}: unsafe outside the ABI glue", i + 1));
                    continue;
                }
                let justified = lines[i.saturating_sub(6)..=i]
                    .iter()
                    .any(|l| l.contains("SAFETY:") || l.contains("# Safety"));
                if (opens_block || code.contains("unsafe impl")) && !justified {
                    problems.push(format!("{relative}:{}: unsafe without a `// SAFETY:` comment", i + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Every stable error code the base or the module side can answer with has a row in README.md's
/// error table: the codes of `Error::code()`, the SPI errors' codes and the module side's own
/// failure codes. The table is the API's documentation of them; a code missing from it is one
/// a client cannot look up.
#[test]
fn every_error_code_has_a_row_in_readme_s_error_table() {
    let read = |path: &str| fs::read_to_string(root().join(path)).unwrap();
    let mut codes = Vec::new();
    // `Error::code()`: the string literals of its match.
    let error = read("host/src/error.rs");
    let body = error
        .split_once("pub fn code(&self)")
        .and_then(|(_, rest)| rest.split_once("\n    }\n"))
        .expect("host/src/error.rs has `pub fn code(&self)`")
        .0;
    codes.extend(quoted_codes(body));
    assert!(
        codes.len() > 40,
        "found only {} codes in Error::code(): the scan no longer matches",
        codes.len()
    );
    // `SpiError`'s constants (in module-api's wire layer).
    let wire = read("module-api/src/wire.rs");
    let spi_codes: Vec<String> = wire
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const") && l.contains(": &'static str"))
        .flat_map(quoted_codes)
        .collect();
    assert!(
        spi_codes.len() >= 8,
        "found only {} SpiError codes in module-api/src/wire.rs: the scan no longer matches",
        spi_codes.len()
    );
    codes.extend(spi_codes);
    // The module side's failures of a request (`fail(host, id, "CODE", ...)`).
    let runtime = read("module-api/src/runtime.rs");
    codes.extend(runtime.lines().filter(|l| l.contains("fail(host, id, \"")).flat_map(quoted_codes));

    let readme = read("README.md");
    let table: Vec<&str> = readme
        .split_once("Every error is JSON `{code, message, details}`:")
        .expect(
            "README.md introduces its error table with \"Every error is JSON `{code, message, details}`:\"",
        )
        .1
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with('|'))
        .collect();
    let missing: Vec<&String> = codes
        .iter()
        .filter(|code| {
            let cell = format!("`{code}`");
            !table.iter().any(|row| row.split('|').nth(1).is_some_and(|first| first.contains(&cell)))
        })
        .collect();
    assert!(missing.is_empty(), "README.md's error table has no row for {missing:?}");
}

/// The string literals in `text` that look like stable codes (`UPPER_SNAKE_CASE`).
fn quoted_codes(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.len() > 2 && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
        })
        .map(str::to_owned)
        .collect()
}
