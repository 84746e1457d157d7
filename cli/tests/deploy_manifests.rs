//! The Kubernetes manifests under `deploy/` parse, every document says what it is, and every
//! `pedestal` container passes only flags (and `PEDESTAL_*` variables) that the real binary's
//! subcommand accepts: its `--help`, run here, is the reference.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use yaml_rust2::{Yaml, YamlLoader};

/// Every document of every `*.yaml` / `*.yml` file under `deploy/`, with its file.
fn documents() -> Vec<(PathBuf, Yaml)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests under {}", dir.display());
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!parsed.is_empty(), "{}: no YAML document", file.display());
        documents.extend(parsed.into_iter().map(|doc| (file.clone(), doc)));
    }
    documents
}

fn name_of(file: &Path, doc: &Yaml) -> String {
    format!(
        "{} {}/{}",
        file.display(),
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

#[test]
fn every_document_has_api_version_kind_name_and_the_namespace() {
    let documents = documents();
    for (file, doc) in &documents {
        for key in ["apiVersion", "kind"] {
            assert!(doc[key].as_str().is_some_and(|v| !v.is_empty()), "{}: no {key}", file.display());
        }
        let what = name_of(file, doc);
        assert!(doc["metadata"]["name"].as_str().is_some_and(|v| !v.is_empty()), "{what}: no metadata.name");
        if doc["kind"].as_str() != Some("Namespace") {
            assert_eq!(doc["metadata"]["namespace"].as_str(), Some("pedestal"), "{what}: namespace");
        }
    }
    let kinds: BTreeSet<(&str, &str)> = documents
        .iter()
        .map(|(_, doc)| (doc["kind"].as_str().unwrap(), doc["metadata"]["name"].as_str().unwrap()))
        .collect();
    for expected in [
        ("StatefulSet", "etcd"),
        ("Service", "etcd"),
        ("Deployment", "pedestal-controller"),
        ("Service", "pedestal-controller"),
        ("Secret", "pedestal-fleet-token"),
        ("StatefulSet", "pedestal-base"),
    ] {
        assert!(kinds.contains(&expected), "missing {expected:?}; have {kinds:?}");
    }
}

#[test]
fn etcd_runs_three_members_with_pre_vote_on_volumes() {
    let documents = documents();
    let (_, etcd) = documents
        .iter()
        .find(|(_, d)| {
            d["kind"].as_str() == Some("StatefulSet") && d["metadata"]["name"].as_str() == Some("etcd")
        })
        .expect("the etcd StatefulSet");
    assert_eq!(etcd["spec"]["replicas"].as_i64(), Some(3));
    let command = strings(&etcd["spec"]["template"]["spec"]["containers"][0]["command"]);
    assert!(command.iter().any(|a| a == "--pre-vote"), "{command:?}");
    assert!(etcd["spec"]["volumeClaimTemplates"].as_vec().is_some_and(|v| !v.is_empty()));
    let headless = documents
        .iter()
        .find(|(_, d)| {
            d["kind"].as_str() == Some("Service") && d["metadata"]["name"].as_str() == Some("etcd")
        })
        .expect("etcd's headless Service");
    assert_eq!(headless.1["spec"]["clusterIP"].as_str(), Some("None"));
}

#[test]
fn pedestal_containers_pass_only_flags_the_binary_accepts() {
    let mut help = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (file, doc) in documents() {
        let what = name_of(&file, &doc);
        for container in containers(&doc) {
            let command = strings(&container["command"]);
            let args = strings(&container["args"]);
            let argv: Vec<String> = command.into_iter().chain(args).collect();
            let Some(program) = argv.first() else { continue };
            if program != "pedestal" && !program.ends_with("/pedestal") {
                continue;
            }
            let subcommand =
                argv.get(1).unwrap_or_else(|| panic!("{what}: pedestal without a subcommand")).clone();
            let accepted = help.entry(subcommand.clone()).or_insert_with(|| Accepted::of(&subcommand));
            for arg in &argv[2..] {
                if let Some(flag) = arg.strip_prefix("--") {
                    let flag = flag.split('=').next().unwrap();
                    assert!(
                        accepted.flags.contains(flag),
                        "{what}: `pedestal {subcommand}` has no --{flag} (it has: {:?})",
                        accepted.flags
                    );
                }
            }
            for var in container["env"].as_vec().into_iter().flatten() {
                let name = var["name"].as_str().unwrap_or_default();
                if name.starts_with("PEDESTAL_") {
                    assert!(accepted.env.contains(name), "{what}: `pedestal {subcommand}` reads no {name}");
                }
            }
            seen.insert(subcommand);
        }
    }
    for expected in ["serve", "controller"] {
        assert!(seen.contains(expected), "no container runs `pedestal {expected}` (saw {seen:?})");
    }
}

/// What one subcommand accepts, read from its `--help`.
struct Accepted {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

impl Accepted {
    fn of(subcommand: &str) -> Self {
        let output =
            Command::new(env!("CARGO_BIN_EXE_pedestal")).args([subcommand, "--help"]).output().unwrap();
        assert!(
            output.status.success(),
            "pedestal {subcommand} --help: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        let word = |rest: &str| -> String {
            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect()
        };
        let flags = text.split("--").skip(1).map(word).filter(|w| !w.is_empty()).collect();
        let env = text.split("[env: ").skip(1).map(word).filter(|w| !w.is_empty()).collect();
        Self { flags, env }
    }
}

/// Every container of a workload (`spec.template.spec`) or a bare pod spec.
fn containers(doc: &Yaml) -> Vec<&Yaml> {
    let spec = &doc["spec"]["template"]["spec"];
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|key| {
            spec[key].as_vec().into_iter().flatten().chain(doc["spec"][key].as_vec().into_iter().flatten())
        })
        .collect()
}

/// A YAML list of strings (`[]` when absent).
fn strings(value: &Yaml) -> Vec<String> {
    value.as_vec().into_iter().flatten().map(|v| v.as_str().expect("a string").to_owned()).collect()
}
