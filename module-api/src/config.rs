//! The module's configuration: values the base's operator sets for it, in the base's config
//! file (`[modules.<name>.config]`) or its environment (`PEDESTAL_CONFIG__<NAME>__<KEY>`, with
//! `__` between nested keys; the environment wins). The base hands them to the module before
//! its start hook runs, and again whenever the config file changes: no restart needed.
//!
//! ```ignore
//! use pedestal_module_api::config;
//! let greeting: String = config::get("greeting")?.unwrap_or_else(|| "hello".into());
//! let pool: u32 = config::get_or("db.pool_size", 8);
//! loop { config::changed().await; reconfigure(); }
//! ```
//!
//! Keys are dotted paths into nested tables (`db.pool_size`). Values set in the environment
//! are strings; [`get`] parses them as JSON when the string itself is not of the asked type
//! (`"8"` reads as `8u32`).

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::{
    service::{Push, Service},
    wire::{SpiError, decode},
};

/// The base pushes the module's configuration as `pedestal.config`/`changed`.
pub(crate) const SERVICE: Service =
    Service { name: "pedestal.config", pushes: &[Push { method: "changed", handle: apply }], reset: clear };

static VALUES: Mutex<Option<Arc<Map<String, Value>>>> = Mutex::new(None);
static GENERATION: AtomicU64 = AtomicU64::new(0);
static CHANGED: Notify = Notify::const_new();

/// Every value, as a JSON object (empty when nothing is configured).
pub fn all() -> Arc<Map<String, Value>> {
    VALUES.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default()
}

/// The raw value at dotted path `key`, if set.
pub fn value(key: &str) -> Option<Value> {
    let values = all();
    let mut parts = key.split('.');
    let mut current = values.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current.clone())
}

/// The value at dotted path `key` as a `T`, if set; `BAD_PAYLOAD` when it is not a `T`.
pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, SpiError> {
    let Some(value) = value(key) else { return Ok(None) };
    let direct = serde_json::from_value::<T>(value.clone());
    match (direct, &value) {
        (Ok(typed), _) => Ok(Some(typed)),
        // From the environment: a string holding the value.
        (Err(e), Value::String(text)) => serde_json::from_str(text)
            .map(Some)
            .map_err(|_| SpiError::new(SpiError::BAD_PAYLOAD, format!("config {key}: {e}"))),
        (Err(e), _) => Err(SpiError::new(SpiError::BAD_PAYLOAD, format!("config {key}: {e}"))),
    }
}

/// The value at `key` as a `T`, or `default` when it is not set or not a `T`.
pub fn get_or<T: DeserializeOwned>(key: &str, default: T) -> T {
    get(key).ok().flatten().unwrap_or(default)
}

/// How many times the configuration was handed over (0 before the first).
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Resolves at the next change of the configuration after this call.
pub async fn changed() {
    let seen = generation();
    loop {
        let notified = CHANGED.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if generation() != seen {
            return;
        }
        notified.await;
    }
}

/// Takes the configuration the base sent (`pedestal.config`/`changed`).
fn apply(payload: &[u8]) -> Result<(), SpiError> {
    let values: Map<String, Value> = decode(payload)?;
    *VALUES.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(values));
    GENERATION.fetch_add(1, Ordering::AcqRel);
    CHANGED.notify_waiters();
    Ok(())
}

/// Forgets the configuration (the instance is stopping), so nothing of it stays in the
/// library's statics.
fn clear() {
    VALUES.lock().unwrap_or_else(PoisonError::into_inner).take();
}
