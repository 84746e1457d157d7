//! Each module's configuration values: the config file's `[modules.NAME.config]` section, with
//! the environment's `PEDESTAL_CONFIG__<NAME>__<KEY>[__<SUBKEY>...]` on top (the module name
//! upper-cased with `-` as `_`; keys lower-cased). The environment is read once, at start; the
//! file is re-read when it changes.

use std::{collections::BTreeMap, path::PathBuf};

use serde_json::{Map, Value};

use super::Service;
use crate::{config::Config, error::Result, instance::Instance, registry::Registry, sync::lock};

const ENV_PREFIX: &str = "PEDESTAL_CONFIG__";

/// One value from the environment.
#[derive(Debug, Clone)]
struct EnvValue {
    /// The module name as the variable spells it (`MY_MODULE`).
    module: String,
    /// The key path, lower-cased.
    path: Vec<String>,
    value: String,
}

/// Every module's configuration.
#[derive(Debug)]
pub struct ModuleConfigs {
    file: Option<PathBuf>,
    from_file: std::sync::Mutex<BTreeMap<String, Map<String, Value>>>,
    /// `[modules.NAME] secret_keys`, as the file has them now.
    secret_keys: std::sync::Mutex<BTreeMap<String, Vec<String>>>,
    /// Values set by the embedding program ([`ModuleConfigs::set_overlay`]: a fleet agent
    /// applying its spec's `[config]`), over the file's; locked after `from_file`.
    overlay: std::sync::Mutex<BTreeMap<String, Map<String, Value>>>,
    env: Vec<EnvValue>,
}

/// `pedestal.config`: pushes each module its values (`pedestal.config`/`changed`) before its
/// start hook and after a reload changed them. It takes no calls.
#[derive(Debug)]
pub struct ConfigService {
    configs: ModuleConfigs,
}

impl ConfigService {
    /// The values of `config` (read from its file at start), and the environment's.
    pub fn new(config: &Config) -> Self {
        Self { configs: ModuleConfigs::new(config) }
    }

    /// Every module's values.
    pub fn configs(&self) -> &ModuleConfigs {
        &self.configs
    }

    /// Queues `instance`'s configuration for it.
    fn send(&self, instance: &Instance) {
        self.configs.send(&instance.id.name, |values| {
            let values = Value::Object(values);
            instance.notify("pedestal.config", "changed", values.to_string().into_bytes());
        });
    }
}

impl Service for ConfigService {
    fn name(&self) -> &'static str {
        "pedestal.config"
    }

    fn instance_started(&self, instance: &Instance) {
        // Before the start hook runs: the module reads its configuration there.
        self.send(instance);
    }

    fn config_reloaded(&self, registry: &Registry, changed: &[String]) {
        for name in changed {
            let Ok((instances, _)) = registry.module(name) else { continue };
            for instance in instances {
                self.send(&instance);
            }
        }
    }
}

fn env_name(module: &str) -> String {
    module.to_uppercase().replace('-', "_")
}

/// The environment's `PEDESTAL_CONFIG__*` values, read on the first call and kept for the life
/// of the process: [`supervise`](crate::supervise) reads them and then removes the variables
/// from the environment, so a module reading the environment finds none of them.
fn environment() -> &'static [EnvValue] {
    static ENV: std::sync::OnceLock<Vec<EnvValue>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                let mut parts = rest.split("__");
                let module = parts.next().filter(|m| !m.is_empty())?.to_owned();
                let path: Vec<String> = parts.map(str::to_lowercase).collect();
                (!path.is_empty() && path.iter().all(|p| !p.is_empty())).then_some(EnvValue {
                    module,
                    path,
                    value,
                })
            })
            .collect()
    })
}

/// Reads the environment's module configuration (once) and returns the names of the variables
/// that carry it, every `PEDESTAL_CONFIG__*`, for the caller to remove from the environment.
pub(crate) fn take_environment() -> Vec<String> {
    environment();
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with(ENV_PREFIX))
        .collect()
}

impl ModuleConfigs {
    /// The values of `config` (read from its file at start), and the environment's.
    pub fn new(config: &Config) -> Self {
        Self {
            file: config.config_file.clone(),
            from_file: std::sync::Mutex::new(config.module_config.clone()),
            secret_keys: std::sync::Mutex::new(config.module_secret_keys.clone()),
            overlay: std::sync::Mutex::new(BTreeMap::new()),
            env: environment().to_vec(),
        }
    }

    /// Module `module`'s values.
    pub fn of(&self, module: &str) -> Map<String, Value> {
        let from_file = lock(&self.from_file);
        self.merged(&from_file, module)
    }

    /// Module `module`'s values as the operations API shows them: every secret replaced by
    /// [`REDACTED`], and the dotted paths of the values it changed (array elements by index,
    /// `upstreams.0.password`). A key is a secret when its name contains one of
    /// [`SECRET_KEY_PARTS`] or is one of [`SECRET_KEY_NAMES`] (any case, at any depth, arrays
    /// included), or when the config file lists it in `[modules.NAME] secret_keys`; and any
    /// string that is a URL with a password (`postgres://user:pass@db/x`) is shown with the
    /// password as `***`.
    pub fn redacted(&self, module: &str) -> (Map<String, Value>, Vec<String>) {
        let listed = lock(&self.secret_keys).get(module).cloned().unwrap_or_default();
        let mut values = Value::Object(self.of(module));
        let mut redacted = Vec::new();
        redact(&mut values, "", &listed, &mut redacted);
        let Value::Object(values) = values else { unreachable!("redaction keeps an object an object") };
        (values, redacted)
    }

    /// Hands module `module`'s values to `send` while no reload can change them, so values
    /// sent at an install and after a concurrent reload arrive in order.
    pub(crate) fn send(&self, module: &str, send: impl FnOnce(Map<String, Value>)) {
        let from_file = lock(&self.from_file);
        send(self.merged(&from_file, module));
    }

    /// Sets module `module`'s values from the embedding program (`None` takes them away): they
    /// replace the config file's top-level keys of the same name, and the environment's
    /// `PEDESTAL_CONFIG__*` still win over them. Returns whether the module's values changed;
    /// [`Registry::set_module_config`] also hands them to its running instances.
    pub fn set_overlay(&self, module: &str, values: Option<Map<String, Value>>) -> bool {
        let from_file = lock(&self.from_file);
        let before = self.merged(&from_file, module);
        {
            let mut overlay = lock(&self.overlay);
            match values {
                Some(values) if !values.is_empty() => overlay.insert(module.to_owned(), values),
                _ => overlay.remove(module),
            };
        }
        self.merged(&from_file, module) != before
    }

    /// The values the embedding program set for module `module` ([`ModuleConfigs::set_overlay`]).
    pub fn overlay(&self, module: &str) -> Map<String, Value> {
        lock(&self.overlay).get(module).cloned().unwrap_or_default()
    }

    fn merged(&self, from_file: &BTreeMap<String, Map<String, Value>>, module: &str) -> Map<String, Value> {
        let mut values = from_file.get(module).cloned().unwrap_or_default();
        if let Some(overlay) = lock(&self.overlay).get(module) {
            values.extend(overlay.clone());
        }
        let name = env_name(module);
        for env in self.env.iter().filter(|e| e.module == name) {
            let (last, parents) = env.path.split_last().expect("an environment key has a path");
            let mut table = &mut values;
            for parent in parents {
                let entry = table.entry(parent.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                table = entry.as_object_mut().expect("made an object just above");
            }
            table.insert(last.clone(), Value::String(env.value.clone()));
        }
        values
    }

    /// Re-reads the config file; returns the modules whose values changed. An invalid file
    /// changes nothing (`CONFIG_INVALID`).
    pub fn reload(&self) -> Result<Vec<String>> {
        let Some(file) = &self.file else { return Ok(Vec::new()) };
        let (fresh, secret_keys) = crate::config::read_module_configs(file)?;
        *lock(&self.secret_keys) = secret_keys;
        let mut current = lock(&self.from_file);
        let mut changed: Vec<String> = fresh
            .iter()
            .filter(|(name, values)| current.get(*name) != Some(values))
            .map(|(name, _)| name.clone())
            .collect();
        changed.extend(current.keys().filter(|name| !fresh.contains_key(*name)).cloned());
        *current = fresh;
        Ok(changed)
    }

    /// The watched config file, if any.
    pub fn file(&self) -> Option<&PathBuf> {
        self.file.as_ref()
    }
}

/// What the operations API shows in place of a secret configuration value.
pub const REDACTED: &str = "(redacted)";

/// Parts of a key's name (lower-cased) that make its value a secret wherever they appear in it
/// (`db_password`, `aws_secret_access_key`, `client_secret_id`). Broad on purpose: a value
/// shown redacted that was no secret (`max_tokens`) costs a look at the config file, a secret
/// shown costs the secret.
pub const SECRET_KEY_PARTS: &[&str] = &[
    "secret",
    "passw",
    "passphrase",
    "token",
    "credential",
    "private_key",
    "api_key",
    "apikey",
    "access_key",
    "signing_key",
    "encryption_key",
];

/// Key names (lower-cased) that are secrets only as a whole word (`pwd`, `key`; not `keyspace`).
pub const SECRET_KEY_NAMES: &[&str] = &["pwd", "key"];

fn is_secret_key(key: &str) -> bool {
    let lower = key.to_lowercase();
    SECRET_KEY_NAMES.contains(&lower.as_str()) || SECRET_KEY_PARTS.iter().any(|part| lower.contains(part))
}

/// Replaces every secret under `value` (at `path`, dotted, array elements by index: `a.0.b`).
/// `listed` paths may name array elements by index or not (`upstreams.password` is every
/// upstream's).
fn redact(value: &mut Value, path: &str, listed: &[String], redacted: &mut Vec<String>) {
    let child = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match value {
        Value::Object(values) => {
            for (key, inner) in values.iter_mut() {
                let path = child(key);
                if is_listed(&path, listed) || is_secret_key(key) {
                    *inner = Value::String(REDACTED.into());
                    redacted.push(path);
                } else {
                    redact(inner, &path, listed, redacted);
                }
            }
        }
        Value::Array(items) => {
            for (n, inner) in items.iter_mut().enumerate() {
                let path = child(&n.to_string());
                if is_listed(&path, listed) {
                    *inner = Value::String(REDACTED.into());
                    redacted.push(path);
                } else {
                    redact(inner, &path, listed, redacted);
                }
            }
        }
        Value::String(text) => {
            if let Some(shown) = without_url_password(text) {
                *text = shown;
                redacted.push(path.to_owned());
            }
        }
        _ => {}
    }
}

fn is_listed(path: &str, listed: &[String]) -> bool {
    let without_indices =
        || path.split('.').filter(|part| part.parse::<usize>().is_err()).collect::<Vec<_>>().join(".");
    listed.iter().any(|l| l == path) || listed.contains(&without_indices())
}

/// `scheme://user:password@host...` with the password as `***`; `None` for any other string
/// (a URL without a password, not a URL). Hand-parsed, so the rest of the string is shown as
/// written (a URL parser would normalise it).
fn without_url_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let valid_scheme = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| format!("{scheme}://{user}:***@{host}{tail}"))
}

/// How long the config file must stay quiet before it is re-read (editors write in steps).
const QUIET: std::time::Duration = std::time::Duration::from_millis(200);

/// Watches the config file (through its directory, so an editor's rename-over is seen) on a
/// thread of its own, and reloads the modules' configuration after each change.
pub(crate) fn watch(registry: std::sync::Weak<crate::registry::Registry>, file: PathBuf) -> Result<()> {
    use notify::{RecursiveMode, Watcher};

    let watch_error = |e: notify::Error| crate::error::Error::Io {
        context: format!("watching {}", file.display()),
        source: std::io::Error::other(e),
    };
    let dir =
        file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).to_owned();
    let name = file.file_name().map(ToOwned::to_owned);
    let (events, changes) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            let _ = events.send(());
        }
    })
    .map_err(watch_error)?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(watch_error)?;
    std::thread::Builder::new()
        .name("pedestal-config".into())
        .spawn(move || {
            let _watcher = watcher;
            while changes.recv().is_ok() {
                // Let the writer finish, then take every event it caused as one change.
                std::thread::sleep(QUIET);
                while changes.try_recv().is_ok() {}
                let Some(registry) = registry.upgrade() else { return };
                if let Err(e) = registry.reload_config() {
                    tracing::error!(
                        "the config file changed but cannot be read; keeping the values in use: {e}"
                    );
                }
            }
        })
        .map_err(crate::error::Error::io("starting the config watch thread"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(values: Value, listed: &[&str], shown: Value, paths: &[&str]) {
        let listed: Vec<String> = listed.iter().map(|l| l.to_string()).collect();
        let mut values = values;
        let mut redacted = Vec::new();
        redact(&mut values, "", &listed, &mut redacted);
        assert_eq!(values, shown);
        redacted.sort_unstable();
        assert_eq!(redacted, paths);
    }

    #[test]
    fn secrets_by_name_in_tables_and_arrays() {
        let r = REDACTED;
        check(
            json!({"greeting": "hi", "keyspace": "k", "monkey": 1}),
            &[],
            json!({"greeting": "hi", "keyspace": "k", "monkey": 1}),
            &[],
        );
        check(
            json!({"aws_secret_access_key": "a", "signing_key": "b", "encryption_key": "c", "passphrase": "d",
                   "pwd": "e", "KEY": "f", "db_password": "g", "Api_Token": "h", "credentials_file": "i", "access_key_id": "j"}),
            &[],
            json!({"aws_secret_access_key": r, "signing_key": r, "encryption_key": r, "passphrase": r,
                   "pwd": r, "KEY": r, "db_password": r, "Api_Token": r, "credentials_file": r, "access_key_id": r}),
            &[
                "Api_Token",
                "KEY",
                "access_key_id",
                "aws_secret_access_key",
                "credentials_file",
                "db_password",
                "encryption_key",
                "passphrase",
                "pwd",
                "signing_key",
            ],
        );
        check(
            json!({"upstreams": [{"host": "a", "password": "p1"}, {"host": "b", "password": "p2"}]}),
            &[],
            json!({"upstreams": [{"host": "a", "password": r}, {"host": "b", "password": r}]}),
            &["upstreams.0.password", "upstreams.1.password"],
        );
        check(
            json!({"upstreams": [{"dsn": "x"}, {"dsn": "y"}], "list": ["a", "b"]}),
            &["upstreams.dsn", "list.1"],
            json!({"upstreams": [{"dsn": r}, {"dsn": r}], "list": ["a", r]}),
            &["list.1", "upstreams.0.dsn", "upstreams.1.dsn"],
        );
    }

    #[test]
    fn url_passwords_anywhere() {
        check(
            json!({"db": "postgres://user:pass@db:5432/x?sslmode=require", "mirrors": ["https://u:p@m.example/a", "https://m.example/b"],
                   "plain": "https://user@host/x", "not_a_url": "a:b@c"}),
            &[],
            json!({"db": "postgres://user:***@db:5432/x?sslmode=require", "mirrors": ["https://u:***@m.example/a", "https://m.example/b"],
                   "plain": "https://user@host/x", "not_a_url": "a:b@c"}),
            &["db", "mirrors.0"],
        );
        assert_eq!(without_url_password("redis://:secret@cache/0").as_deref(), Some("redis://:***@cache/0"));
        assert_eq!(without_url_password("http://host/path?q=u:p@x"), None);
    }
}
