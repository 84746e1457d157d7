//! The modules' key-value store: one `redb` database under the data directory, one table per
//! module name (so a module reaches only its own keys: the base picks the table from the
//! calling instance's identity, never from the call), and a usage table that keeps each
//! module's bytes and key count, updated in the same transaction as every write, against which
//! the quota is checked.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use pedestal_module_api::{SpiError, spi::encode};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;

use super::{Call, Service, spi_error};
use crate::error::{Error, Result};

/// Bytes used and keys held, per module name.
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");

/// One module's use of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Bytes of keys and values stored.
    pub used_bytes: u64,
    /// The module's quota.
    pub quota_bytes: u64,
    /// How many keys.
    pub keys: u64,
}

/// The store.
pub struct Kv {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").field("path", &self.path).finish_non_exhaustive()
    }
}

/// `pedestal.kv`: each module's own namespace of the store.
#[derive(Debug)]
pub struct KvService {
    store: Kv,
}

impl KvService {
    /// The service over the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self { store: Kv::open(path)? })
    }

    /// The store.
    pub fn store(&self) -> &Kv {
        &self.store
    }

    fn write(&self, module: &str, quota: u64, method: &str, payload: &[u8]) -> Result<Vec<u8>, SpiError> {
        let bad = |message: &str| SpiError::new(SpiError::BAD_PAYLOAD, message);
        if method == "delete" {
            let key = std::str::from_utf8(payload).map_err(|_| bad("keys are UTF-8 text"))?;
            return encode(&self.store.delete(module, key).map_err(spi_error)?);
        }
        let (key, value) = pedestal_module_api::wire::decode_kv_put(payload)?;
        self.store.put(module, key, value, quota).map_err(spi_error)?;
        encode(&())
    }
}

impl Service for KvService {
    fn name(&self) -> &'static str {
        "pedestal.kv"
    }

    /// `get key`, `put [len][key][value]`, `delete key`, `list prefix`, `usage`. Reads are
    /// answered at once; writes (durable, so they wait for the disk) run on the base's blocking
    /// pool. The namespace is the calling instance's module name.
    fn call(self: Arc<Self>, call: Call) {
        let module = call.caller().id.name.clone();
        let quota = call.registry().kv_quota(&module);
        let text = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| SpiError::new(SpiError::BAD_PAYLOAD, "keys are UTF-8 text"))
        };
        let result = match call.method() {
            "get" => text(call.payload()).and_then(|key| {
                let value = self.store.get(&module, &key).map_err(spi_error)?;
                Ok(match value {
                    Some(mut value) => {
                        value.insert(0, 1);
                        value
                    }
                    None => vec![0],
                })
            }),
            "list" => text(call.payload())
                .and_then(|prefix| self.store.list(&module, &prefix).map_err(spi_error))
                .and_then(|keys| encode(&keys)),
            "usage" => self.store.usage(&module, quota).map_err(spi_error).and_then(|u| encode(&u)),
            "put" | "delete" => {
                let Some(runtime) = call.runtime() else {
                    return call.refuse("the base's runtime is not running");
                };
                runtime.spawn_blocking(move || {
                    let result = self.write(&module, quota, call.method(), call.payload());
                    call.answer(result);
                });
                return;
            }
            other => {
                Err(SpiError::new(SpiError::UNKNOWN_METHOD, format!("pedestal.kv has no method {other}")))
            }
        };
        call.answer(result);
    }
}

fn table_name(module: &str) -> String {
    format!("module/{module}")
}

impl Kv {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        // The file lock of a base process that was just killed (a worker whose supervisor died,
        // the previous process under systemd) goes only when that process has fully exited,
        // which can take a moment with many modules mapped: wait for it, briefly, rather than
        // fail the start.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Database::create(path) {
                Ok(db) => return Ok(Self { db, path: path.to_owned() }),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(storage(path, e)),
            }
        }
    }

    fn failed(&self, e: impl std::fmt::Display) -> Error {
        storage(&self.path, e)
    }

    /// The value of `key` in `module`'s namespace.
    pub fn get(&self, module: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let read = self.db.begin_read().map_err(|e| self.failed(e))?;
        let name = table_name(module);
        let table = match read.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.failed(e)),
        };
        let value = table.get(key).map_err(|e| self.failed(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Sets `key` in `module`'s namespace, unless the module would then use more than `quota`
    /// bytes (`KV_QUOTA_EXCEEDED`). Durable when it returns.
    pub fn put(&self, module: &str, key: &str, value: &[u8], quota: u64) -> Result<()> {
        let write = self.db.begin_write().map_err(|e| self.failed(e))?;
        {
            let name = table_name(module);
            let mut table =
                write.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(|e| self.failed(e))?;
            let mut usage = write.open_table(USAGE).map_err(|e| self.failed(e))?;
            let (used, keys) = usage.get(module).map_err(|e| self.failed(e))?.map_or((0, 0), |u| u.value());
            let old =
                table.get(key).map_err(|e| self.failed(e))?.map(|v| (key.len() + v.value().len()) as u64);
            let new = (key.len() + value.len()) as u64;
            let would_use = used.saturating_sub(old.unwrap_or(0)) + new;
            if would_use > quota && new > old.unwrap_or(0) {
                return Err(Error::KvQuotaExceeded { module: module.to_owned(), would_use, quota });
            }
            table.insert(key, value).map_err(|e| self.failed(e))?;
            let keys = if old.is_some() { keys } else { keys + 1 };
            usage.insert(module, (would_use, keys)).map_err(|e| self.failed(e))?;
        }
        write.commit().map_err(|e| self.failed(e))
    }

    /// Removes `key` from `module`'s namespace; returns whether it was set.
    pub fn delete(&self, module: &str, key: &str) -> Result<bool> {
        let write = self.db.begin_write().map_err(|e| self.failed(e))?;
        let existed = {
            let name = table_name(module);
            let mut table =
                write.open_table(TableDefinition::<&str, &[u8]>::new(&name)).map_err(|e| self.failed(e))?;
            let removed =
                table.remove(key).map_err(|e| self.failed(e))?.map(|v| (key.len() + v.value().len()) as u64);
            if let Some(size) = removed {
                let mut usage = write.open_table(USAGE).map_err(|e| self.failed(e))?;
                let (used, keys) =
                    usage.get(module).map_err(|e| self.failed(e))?.map_or((0, 0), |u| u.value());
                usage
                    .insert(module, (used.saturating_sub(size), keys.saturating_sub(1)))
                    .map_err(|e| self.failed(e))?;
            }
            removed.is_some()
        };
        write.commit().map_err(|e| self.failed(e))?;
        Ok(existed)
    }

    /// The keys of `module`'s namespace starting with `prefix`, in order.
    pub fn list(&self, module: &str, prefix: &str) -> Result<Vec<String>> {
        let read = self.db.begin_read().map_err(|e| self.failed(e))?;
        let name = table_name(module);
        let table = match read.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.failed(e)),
        };
        let mut keys = Vec::new();
        for entry in table.range(prefix..).map_err(|e| self.failed(e))? {
            let (key, _) = entry.map_err(|e| self.failed(e))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    /// What `module` uses, against `quota`.
    pub fn usage(&self, module: &str, quota: u64) -> Result<Usage> {
        let read = self.db.begin_read().map_err(|e| self.failed(e))?;
        let (used_bytes, keys) = match read.open_table(USAGE) {
            Ok(table) => table.get(module).map_err(|e| self.failed(e))?.map_or((0, 0), |u| u.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => (0, 0),
            Err(e) => return Err(self.failed(e)),
        };
        Ok(Usage { used_bytes, quota_bytes: quota, keys })
    }
}

fn storage(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        context: format!("the key-value store {}", path.display()),
        source: std::io::Error::other(e.to_string()),
    }
}
