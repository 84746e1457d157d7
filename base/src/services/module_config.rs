//! Each module's configuration values: the config file's `[modules.NAME.config]` section, with
//! the environment's `PEDESTAL_CONFIG__<NAME>__<KEY>[__<SUBKEY>...]` on top (the module name
//! upper-cased with `-` as `_`; keys lower-cased). The environment is read once, at start; the
//! file is re-read when it changes.

use std::{collections::BTreeMap, path::PathBuf};

use serde_json::{Map, Value};

use crate::{config::Config, error::Result, instance::lock};

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
    env: Vec<EnvValue>,
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
            env: environment().to_vec(),
        }
    }

    /// Module `module`'s values.
    pub fn of(&self, module: &str) -> Map<String, Value> {
        let from_file = lock(&self.from_file);
        self.merged(&from_file, module)
    }

    /// Module `module`'s values as the operations API shows them: every secret replaced by
    /// [`REDACTED`], and the dotted paths of the keys it replaced. A key is a secret when its name
    /// ends in one of [`SECRET_SUFFIXES`] (any case, at any depth) or when the config file lists
    /// it in `[modules.NAME] secret_keys`.
    pub fn redacted(&self, module: &str) -> (Map<String, Value>, Vec<String>) {
        let listed = lock(&self.secret_keys).get(module).cloned().unwrap_or_default();
        let mut values = self.of(module);
        let mut redacted = Vec::new();
        redact(&mut values, "", &listed, &mut redacted);
        (values, redacted)
    }

    /// Hands module `module`'s values to `send` while no reload can change them, so values
    /// sent at an install and after a concurrent reload arrive in order.
    pub(crate) fn send(&self, module: &str, send: impl FnOnce(Map<String, Value>)) {
        let from_file = lock(&self.from_file);
        send(self.merged(&from_file, module));
    }

    fn merged(&self, from_file: &BTreeMap<String, Map<String, Value>>, module: &str) -> Map<String, Value> {
        let mut values = from_file.get(module).cloned().unwrap_or_default();
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

/// Key-name endings that make a configuration value a secret.
pub const SECRET_SUFFIXES: &[&str] =
    &["secret", "password", "passwd", "token", "api_key", "apikey", "private_key", "credentials"];

fn redact(values: &mut Map<String, Value>, prefix: &str, listed: &[String], redacted: &mut Vec<String>) {
    for (key, value) in values.iter_mut() {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let lower = key.to_lowercase();
        if listed.contains(&path) || SECRET_SUFFIXES.iter().any(|suffix| lower.ends_with(suffix)) {
            *value = Value::String(REDACTED.into());
            redacted.push(path);
        } else if let Value::Object(inner) = value {
            redact(inner, &path, listed, redacted);
        }
    }
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
