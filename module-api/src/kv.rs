//! The module's key-value store: embedded in the base (`redb`), persistent across restarts, and
//! private to the module. Keys live in the module's own namespace, named after the module, so
//! every version of it sees the same keys and no other module sees them; the base enforces a
//! size quota per module (`KV_QUOTA_EXCEEDED`).
//!
//! ```ignore
//! use pedestal_module_api::kv;
//! kv::put("greeting", "hello").await?;
//! assert_eq!(kv::get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! kv::put_json("settings", &settings).await?;
//! ```

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    calls,
    service::Service,
    wire::{SpiError, decode, encode, encode_kv_put},
};

/// Modules call `pedestal.kv`; the base never pushes to it.
pub(crate) const SERVICE: Service = Service::called_only("pedestal.kv");

/// How much of its quota a module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of keys and values stored.
    pub used_bytes: u64,
    /// The most the module may store.
    pub quota_bytes: u64,
    /// How many keys.
    pub keys: u64,
}

async fn call(method: &str, payload: &[u8]) -> Result<Vec<u8>, SpiError> {
    calls::call(SERVICE.name, "", method, "", payload).await
}

/// The value of `key`, if set.
pub async fn get(key: &str) -> Result<Option<Vec<u8>>, SpiError> {
    let mut answer = call("get", key.as_bytes()).await?;
    // One byte says whether the key exists, so an empty value differs from no value.
    match answer.first() {
        Some(1) => Ok(Some(answer.split_off(1))),
        _ => Ok(None),
    }
}

/// Sets `key` to `value`, durably (the base has committed it when this returns).
pub async fn put(key: &str, value: impl AsRef<[u8]>) -> Result<(), SpiError> {
    call("put", &encode_kv_put(key, value.as_ref())?).await.map(drop)
}

/// Removes `key`; returns whether it was set.
pub async fn delete(key: &str) -> Result<bool, SpiError> {
    decode(&call("delete", key.as_bytes()).await?)
}

/// The keys starting with `prefix`, in order.
pub async fn list(prefix: &str) -> Result<Vec<String>, SpiError> {
    decode(&call("list", prefix.as_bytes()).await?)
}

/// The value of `key` deserialized from JSON, if set.
pub async fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, SpiError> {
    get(key).await?.map(|bytes| decode(&bytes)).transpose()
}

/// Sets `key` to `value` serialized as JSON.
pub async fn put_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), SpiError> {
    put(key, encode(value)?).await
}

/// How much of its quota the module uses.
pub async fn usage() -> Result<Usage, SpiError> {
    decode(&call("usage", b"").await?)
}
