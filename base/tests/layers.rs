//! A tidy check: the base is two crates in layers (`pedestal-host`: leaves and the runtime;
//! `pedestal-base`: config, control, edge and the `Base` itself), and no file reaches up a
//! layer. Cargo already refuses `pedestal-host` any use of `pedestal-base`; this test orders the
//! layers inside each crate, and places the runtime modules `pedestal-base` re-exports under
//! their old names (`crate::instance`) at their own layer.
//!
//! A file may use files of its own layer or of layers below it. A file that is in no layer is a
//! failure too: a new file must be placed (see ARCHITECTURE.md, "Layers").

use std::{fs, path::Path};

/// The layers, bottom first.
const LAYERS: &[&str] = &["leaves", "config", "runtime", "control", "edge", "base"];

/// Every file of `host/src` and `base/src`, with its layer.
const FILES: &[(&str, &str)] = &[
    // Leaves: plain pieces every layer shares.
    ("host/src/error.rs", "leaves"),
    ("host/src/sync.rs", "leaves"),
    ("host/src/ids.rs", "leaves"),
    ("host/src/sys.rs", "leaves"),
    ("host/src/elf.rs", "leaves"),
    ("host/src/stats.rs", "leaves"),
    ("host/src/limits.rs", "leaves"),
    ("host/src/private.rs", "leaves"),
    ("host/src/logs.rs", "leaves"),
    ("host/src/crash/record.rs", "leaves"),
    ("host/src/crash/policy.rs", "leaves"),
    ("base/src/signing.rs", "leaves"),
    ("base/src/path_install.rs", "leaves"),
    // Config: what the runtime is told (a plain value), and the base's whole configuration.
    ("host/src/settings.rs", "config"),
    ("base/src/config.rs", "config"),
    // Runtime: one module instance, loaded, run and unloaded; no registry, no axum.
    ("host/src/loader.rs", "runtime"),
    ("host/src/tls_keys.rs", "runtime"),
    ("host/src/host.rs", "runtime"),
    ("host/src/mailbox.rs", "runtime"),
    ("host/src/doorbell.rs", "runtime"),
    ("host/src/calls.rs", "runtime"),
    ("host/src/instance.rs", "runtime"),
    ("host/src/health.rs", "runtime"),
    ("host/src/crash.rs", "runtime"),
    ("host/src/lib.rs", "runtime"),
    // Control: the registry, its lifecycle and policy, services, durable state, exporters.
    ("base/src/registry.rs", "control"),
    ("base/src/registry/crashes.rs", "control"),
    ("base/src/registry/durable.rs", "control"),
    ("base/src/registry/lifecycle.rs", "control"),
    ("base/src/registry/policy.rs", "control"),
    ("base/src/registry/rollback.rs", "control"),
    ("base/src/registry/seats.rs", "control"),
    ("base/src/registry/samples.rs", "control"),
    ("base/src/registry/spis.rs", "control"),
    ("base/src/registry/watch.rs", "control"),
    ("base/src/routing.rs", "control"),
    ("base/src/artifact.rs", "control"),
    ("base/src/operations.rs", "control"),
    ("base/src/services.rs", "control"),
    ("base/src/services/events.rs", "control"),
    ("base/src/services/kv.rs", "control"),
    ("base/src/services/module_config.rs", "control"),
    ("base/src/services/spis.rs", "control"),
    ("base/src/accounting.rs", "control"),
    ("base/src/hot_reload.rs", "control"),
    ("base/src/supervisor.rs", "control"),
    ("base/src/supervisor/listeners.rs", "control"),
    // Edge: HTTP.
    ("base/src/error_response.rs", "edge"),
    ("base/src/server.rs", "edge"),
    ("base/src/traffic.rs", "edge"),
    ("base/src/admin.rs", "edge"),
    ("base/src/admin/artifacts.rs", "edge"),
    ("base/src/admin/audit.rs", "edge"),
    ("base/src/admin/gate.rs", "edge"),
    ("base/src/admin/health.rs", "edge"),
    ("base/src/admin/json_errors.rs", "edge"),
    ("base/src/admin/limits.rs", "edge"),
    ("base/src/admin/logs.rs", "edge"),
    ("base/src/admin/metrics.rs", "edge"),
    ("base/src/admin/modules.rs", "edge"),
    ("base/src/admin/operations.rs", "edge"),
    ("base/src/admin/openapi.rs", "edge"),
    ("base/src/admin/params.rs", "edge"),
    ("base/src/admin/services.rs", "edge"),
    ("base/src/admin/spis.rs", "edge"),
    ("base/src/admin/token.rs", "edge"),
    ("base/src/admin/traffic.rs", "edge"),
    ("base/src/admin/samples.rs", "edge"),
    ("base/src/admin/console.rs", "edge"),
    // `Base`, `BaseBuilder` and the public face; the `pedestal` binary (a crate of its own,
    // which reaches the library only through `pedestal_base::`).
    ("base/src/lib.rs", "base"),
];

#[test]
fn no_file_of_the_base_uses_a_higher_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for dir in ["host/src", "base/src"] {
        rust_files(root, Path::new(dir), &mut files);
    }
    files.sort();
    for file in &files {
        let Some(layer) = layer_of(file) else {
            problems.push(format!("{file} is in no layer: add it to FILES in {}", file!()));
            continue;
        };
        let text = fs::read_to_string(root.join(file)).unwrap();
        let mut uses: Vec<(String, String)> = crate_paths(&text)
            .into_iter()
            .map(|used| (format!("crate::{used}"), target_of(root, file, &used)))
            .collect();
        // `pedestal-base` names the host's modules by their crate too.
        if file.starts_with("base/") {
            uses.extend(
                paths_after(&text, "pedestal_host::")
                    .into_iter()
                    .map(|used| (format!("pedestal_host::{used}"), hosted_target(&used))),
            );
        }
        // `super::` of a nested file is its parent module (outside the file's test module,
        // whose `super` is the file itself).
        let outside_tests = text.split("#[cfg(test)]").next().unwrap_or("");
        uses.extend(
            paths_after(outside_tests, "super::")
                .into_iter()
                .map(|used| (format!("super::{used}"), super_target(root, file, &used))),
        );
        for (used, target) in uses {
            let Some(used_layer) = layer_of(&target) else {
                problems.push(format!("{file} uses {used}, whose file {target} is in no layer"));
                continue;
            };
            if used_layer > layer {
                problems.push(format!(
                    "{file} ({}) uses {used} from {target} ({})",
                    LAYERS[layer], LAYERS[used_layer]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "upward uses between the base's layers:\n{}", problems.join("\n"));
}

/// The test itself: it finds the uses it must find, and places what they name.
#[test]
fn crate_paths_are_found_in_use_groups_and_inline_paths() {
    let text = "use crate::{\n    error::{Error, X},\n    instance, registry::Registry,\n};\n\
                // crate::admin in a comment does not count\n\
                fn f() { crate::traffic::read_body(); $crate::spi::encode(); }\n";
    assert_eq!(crate_paths(text), ["error", "instance", "registry", "traffic"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // A runtime module `pedestal-base` re-exports is placed at the host's file.
    assert_eq!(target_of(root, "base/src/registry.rs", "instance"), "host/src/instance.rs");
    assert_eq!(target_of(root, "base/src/registry/lifecycle.rs", "registry"), "base/src/registry.rs");
    // An item of the crate root is the root's.
    assert_eq!(target_of(root, "base/src/config.rs", "Base"), "base/src/lib.rs");
    assert_eq!(target_of(root, "host/src/instance.rs", "loader"), "host/src/loader.rs");
    // `super::` names the parent module, or a sibling file under it.
    assert_eq!(super_target(root, "host/src/crash/record.rs", "CrashSlot"), "host/src/crash.rs");
    assert_eq!(super_target(root, "host/src/crash/policy.rs", "record"), "host/src/crash/record.rs");
    assert_eq!(
        super_target(root, "base/src/registry/lifecycle.rs", "durable"),
        "base/src/registry/durable.rs"
    );
    assert_eq!(hosted_target("instance"), "host/src/instance.rs");
    // A `//` inside a string is not a comment.
    assert_eq!(crate_paths("let u = \"http://x\"; crate::admin::f();"), ["admin"]);
    assert_eq!(
        paths_after("use pedestal_host::{instance, error::Error};", "pedestal_host::"),
        ["instance", "error"]
    );
}

/// The file `pedestal_host::<used>` names.
fn hosted_target(used: &str) -> String {
    let file = format!("host/src/{used}.rs");
    if Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(&file).exists() {
        file
    } else {
        "host/src/lib.rs".to_owned()
    }
}

/// The file `super::<used>` in `file` names: a sibling module's file under the parent, else the
/// parent module's file (`a/b.rs` → `a.rs`; a top-level file's parent is the crate root).
fn super_target(root: &Path, file: &str, used: &str) -> String {
    let path = Path::new(file);
    let dir = path.parent().unwrap();
    let sibling = dir.join(format!("{used}.rs"));
    if dir.file_name().is_some_and(|d| d != "src") && root.join(&sibling).exists() {
        return sibling.to_string_lossy().into_owned();
    }
    if dir.file_name().is_some_and(|d| d == "src") {
        return dir.join("lib.rs").to_string_lossy().into_owned();
    }
    format!("{}.rs", dir.to_string_lossy())
}

/// The file that `crate::<used>` in `file` names: the module's file in the same crate, else (in
/// `pedestal-base`) the `pedestal-host` module it re-exports under that name, else the root.
fn target_of(root: &Path, file: &str, used: &str) -> String {
    let own = if file.starts_with("host/") { "host/src" } else { "base/src" };
    let candidate = format!("{own}/{used}.rs");
    if root.join(&candidate).exists() {
        return candidate;
    }
    let hosted = format!("host/src/{used}.rs");
    if own == "base/src" && root.join(&hosted).exists() {
        return hosted;
    }
    format!("{own}/lib.rs")
}

fn layer_of(file: &str) -> Option<usize> {
    let (_, layer) = FILES.iter().find(|(f, _)| *f == file)?;
    LAYERS.iter().position(|l| l == layer)
}

fn rust_files(root: &Path, dir: &Path, found: &mut Vec<String>) {
    for entry in fs::read_dir(root.join(dir)).unwrap() {
        let entry = entry.unwrap();
        let relative = dir.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            rust_files(root, &relative, found);
        } else if relative.extension().is_some_and(|e| e == "rs") {
            found.push(relative.to_string_lossy().into_owned());
        }
    }
}

/// The first segment of every `crate::` path in `text` outside comments, `use crate::{a, b::c}`
/// groups included. `$crate::` (in macros) is not a use.
fn crate_paths(text: &str) -> Vec<String> {
    paths_after(text, "crate::")
}

/// The first segment of every path starting with `prefix` (`crate::`, `super::`,
/// `pedestal_host::`) in `text` outside comments, groups included, not preceded by an
/// identifier character or `$`.
fn paths_after(text: &str, prefix: &str) -> Vec<String> {
    let code: String = text.lines().map(without_comment).collect::<Vec<_>>().join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + prefix.len()..];
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

/// `line` without its `//` comment; a `//` inside a string literal (an even number of quotes
/// before it) is not one.
fn without_comment(line: &str) -> &str {
    let mut quotes = 0;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => quotes += 1,
            b'/' if quotes % 2 == 0 && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}
