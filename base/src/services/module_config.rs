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
    env: Vec<EnvValue>,
}

fn env_name(module: &str) -> String {
    module.to_uppercase().replace('-', "_")
}

impl ModuleConfigs {
    /// The values of `config` (read from its file at start), and the environment's.
    pub fn new(config: &Config) -> Self {
        let env = std::env::vars_os()
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
            .collect();
        Self {
            file: config.config_file.clone(),
            from_file: std::sync::Mutex::new(config.module_config.clone()),
            env,
        }
    }

    /// Module `module`'s values.
    pub fn of(&self, module: &str) -> Map<String, Value> {
        let from_file = lock(&self.from_file);
        self.merged(&from_file, module)
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
        let fresh = crate::config::read_module_configs(file)?;
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
