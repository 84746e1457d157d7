//! Secrets are kept from modules and from API callers: the operations token and the
//! `PEDESTAL_CONFIG__*` values leave the environment before any module loads, the data
//! directory is the base's alone, and secret configuration values are redacted in the API.

use std::{os::unix::fs::PermissionsExt, path::Path};

use pedestal_tests::{TestBase, artifacts};

const TOKEN: &str = "a-token-of-more-than-sixteen-characters";

fn env_seen_by_module(base: &TestBase, name: &str) -> String {
    base.get(&format!("/fx-crashy/env?name={name}")).body
}

fn modules_cannot_read_the_token_or_config_values(supervisor: &str) {
    let base = TestBase::start_with_env(
        &["--supervisor", supervisor],
        &[
            ("PEDESTAL_ADMIN_TOKEN", TOKEN),
            ("PEDESTAL_CONFIG__NOTES__DB_PASSWORD", "hunter2-hunter2"),
            ("PEDESTAL_UNRELATED_SETTING", "kept"),
        ],
    );
    base.install_ok(artifacts::CRASHY);
    assert_eq!(env_seen_by_module(&base, "PEDESTAL_ADMIN_TOKEN"), "unset");
    assert_eq!(env_seen_by_module(&base, "PEDESTAL_CONFIG__NOTES__DB_PASSWORD"), "unset");
    // Only the secrets go: the rest of the environment is the modules' as before.
    assert_eq!(env_seen_by_module(&base, "PEDESTAL_UNRELATED_SETTING"), "kept");
    // The token still guards the API: it was read before it left the environment.
    assert_eq!(base.token(), TOKEN);
    assert_eq!(base.admin_without_token("GET", "/api/v1/modules", &[], None).status, 401);
    assert_eq!(base.admin_get("/api/v1/modules").status, 200);
}

#[test]
fn a_supervised_worker_removes_secrets_from_its_environment_before_any_module_loads() {
    modules_cannot_read_the_token_or_config_values("on");
}

#[test]
fn an_unsupervised_base_removes_secrets_from_its_environment_too() {
    modules_cannot_read_the_token_or_config_values("off");
}

#[test]
fn config_values_from_the_environment_still_reach_their_module() {
    let base =
        TestBase::start_with_env(&[], &[("PEDESTAL_CONFIG__FX_SERVICES__DB__PASSWORD", "s3cret-value")]);
    base.install_ok(artifacts::SERVICES);
    let value = base.get("/fx-services/config?key=db.password").json;
    assert_eq!(value["value"], "s3cret-value", "{value}");
}

/// Every directory under `dir` is 0700 and every file 0600; returns how many files it saw.
fn assert_private(dir: &Path) -> usize {
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} has mode {mode:o}", dir.display());
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files += assert_private(&entry.path());
        } else if kind.is_file() {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", entry.path().display());
            files += 1;
        }
    }
    files
}

#[test]
fn the_data_directory_and_everything_in_it_is_private_to_the_base() {
    // A data directory an older version (or a careless operator) left readable by everyone.
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(data.path().join("logs")).unwrap();
    std::fs::set_permissions(data.path().join("logs"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.path().join("logs/old.log"), "old line\n").unwrap();
    std::fs::set_permissions(data.path().join("logs/old.log"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let base = TestBase::start_in(data, &[]);
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::SERVICES);
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    // Artifacts, state.json, kv.redb, module logs, crash log, the token file...
    let files = assert_private(base.data_dir());
    assert!(files >= 5, "only {files} files under the data directory");
}

#[test]
fn secret_config_values_are_redacted_in_the_api_but_reach_the_module() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pedestal.toml");
    std::fs::write(
        &config,
        r#"
[modules.fx-services]
secret_keys = ["db.dsn"]

[modules.fx-services.config]
greeting = "hello"
db_password = "file-password"
db = { dsn = "postgres://u:p@db/x", pool_size = 4, Api_Token = "nested-token" }
aws_secret_access_key = "aws-value"
mirror = "https://mirror:mirror-pass@m.example/x"

[[modules.fx-services.config.upstreams]]
host = "a.example"
password = "array-password"
"#,
    )
    .unwrap();
    let base = TestBase::start_with_env(
        &["--config", config.to_str().unwrap()],
        &[("PEDESTAL_CONFIG__FX_SERVICES__SMTP_SECRET", "env-secret")],
    );
    base.install_ok(artifacts::SERVICES);
    let shown = base.admin_get("/api/v1/modules/fx-services/config").json;
    let values = &shown["values"];
    assert_eq!(values["greeting"], "hello", "{shown}");
    assert_eq!(values["db"]["pool_size"], 4, "{shown}");
    for secret in
        [&values["db_password"], &values["db"]["dsn"], &values["db"]["Api_Token"], &values["smtp_secret"]]
    {
        assert_eq!(secret, "(redacted)", "{shown}");
    }
    assert_eq!(values["aws_secret_access_key"], "(redacted)", "{shown}");
    assert_eq!(values["upstreams"][0]["password"], "(redacted)", "{shown}");
    assert_eq!(values["upstreams"][0]["host"], "a.example", "{shown}");
    assert_eq!(values["mirror"], "https://mirror:***@m.example/x", "{shown}");
    let body = shown.to_string();
    for value in [
        "file-password",
        "postgres://",
        "nested-token",
        "env-secret",
        "aws-value",
        "array-password",
        "mirror-pass",
    ] {
        assert!(!body.contains(value), "{value} shown: {body}");
    }
    let mut redacted: Vec<&str> =
        shown["redacted"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    redacted.sort_unstable();
    assert_eq!(
        redacted,
        [
            "aws_secret_access_key",
            "db.Api_Token",
            "db.dsn",
            "db_password",
            "mirror",
            "smtp_secret",
            "upstreams.0.password"
        ]
    );
    // The module itself reads the real values.
    assert_eq!(base.get("/fx-services/config?key=db_password").json["value"], "file-password");
    assert_eq!(base.get("/fx-services/config?key=db.dsn").json["value"], "postgres://u:p@db/x");
}
