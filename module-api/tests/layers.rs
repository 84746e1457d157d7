//! A tidy check: `module-api/src` is one crate in layers, and no file reaches up a layer.
//!
//! The layers keep the crate readable bottom-up (the ABI, then how bytes cross it, then who
//! talks to the base, ...) and keep the import graph free of cycles between layers. A file may
//! use files of its own layer or of layers before it; the crate root (`lib.rs`) is the top.

use std::{fs, path::Path};

/// The layers, bottom first, each a list of files in `module-api/src`.
const LAYERS: &[&[&str]] = &[
    // The ABI: every type that crosses the boundary.
    &["abi.rs"],
    // How values cross as bytes; the allocator that fills the ABI's heap counters.
    &["wire.rs", "alloc.rs"],
    // The host static and the safe wrappers of its callbacks.
    &["host.rs"],
    // Calls from the module to the base, and the shape of a service's module side.
    &["calls.rs", "service.rs"],
    // The author's API: the module trait, SPIs, the base's services, log forwarding.
    &["module.rs", "spi.rs", "kv.rs", "events.rs", "config.rs", "metrics.rs", "logging.rs"],
    // The instance loop that drives a module.
    &["runtime.rs"],
    // The public face and `export_module!`.
    &["lib.rs"],
];

#[test]
fn no_file_of_module_api_uses_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    let mut files: Vec<String> = fs::read_dir(&src)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".rs"))
        .collect();
    files.sort();
    for file in &files {
        let Some(layer) = layer_of(file) else {
            problems.push(format!("module-api/src/{file} is in no layer: add it to LAYERS in {}", file!()));
            continue;
        };
        let text = fs::read_to_string(src.join(file)).unwrap();
        for used in crate_paths(&text) {
            let target = if LAYERS.iter().flat_map(|l| l.iter()).any(|f| *f == format!("{used}.rs")) {
                format!("{used}.rs")
            } else {
                // An item of the crate root (`crate::Module`), or a module without a file.
                String::from("lib.rs")
            };
            let used_layer = layer_of(&target).unwrap();
            if used_layer > layer {
                problems.push(format!(
                    "module-api/src/{file} (layer {layer}) uses crate::{used} from {target} (layer {used_layer})"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "upward uses between module-api's layers:\n{}", problems.join("\n"));
}

/// The test itself: it finds the uses it must find.
#[test]
fn crate_paths_are_found_in_use_groups_and_inline_paths() {
    let text = "use crate::{\n    abi::{Host, X},\n    calls, wire::SpiError,\n};\n\
                // crate::runtime in a comment does not count\n\
                fn f() { crate::events::close(); $crate::spi::encode(); }\n";
    assert_eq!(crate_paths(text), ["abi", "calls", "wire", "events"]);
}

fn layer_of(file: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&file))
}

/// The first segment of every `crate::` path in `text` outside comments, `use crate::{a, b::c}`
/// groups included. `$crate::` (in macros, expanded in the module author's crate) is not a use.
fn crate_paths(text: &str) -> Vec<String> {
    let code: String =
        text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c == '$' || c == '_' || c.is_alphanumeric()) {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            found.extend(group_heads(group));
        } else {
            found.push(ident(after));
        }
    }
    found.retain(|name| !name.is_empty() && name != "self");
    found
}

/// The first segment of each item of a `{…}` group (the text after its `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut at_item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item_start = true,
            c if at_item_start && !c.is_whitespace() => {
                heads.push(ident(&group[i..]));
                at_item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> String {
    text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}
