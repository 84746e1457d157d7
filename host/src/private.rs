//! Everything under the data directory is the base's alone: directories are created `0700` and
//! files `0600`, whatever the process's umask, and a data directory left wider by an older
//! version (or by hand) is tightened at start.
//!
//! The data directory holds the modules' key-value store, their logs and configuration echoes,
//! the generated operations token and the artifacts: readable by other local users, it would
//! hand them all of that.

use std::{
    fs::{self, DirBuilder, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// The mode of every directory the base creates under its data directory.
pub(crate) const DIR_MODE: u32 = 0o700;
/// The mode of every file the base creates under its data directory.
pub(crate) const FILE_MODE: u32 = 0o600;

/// How deep [`tighten`] walks: the data directory's layout is at most `logs/<module>.log`,
/// `artifacts/<sha>.so` and the like; anything deeper is not the base's.
const MAX_DEPTH: usize = 3;

/// Creates `dir` and any missing parents with mode `0700`; an existing `dir` is narrowed to it.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    narrow(dir, DIR_MODE)
}

/// Options that create files with mode `0600`.
pub(crate) fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Writes `bytes` to a new or truncated `path` with mode `0600`.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = options().write(true).create(true).truncate(true).open(path)?;
    narrow(path, FILE_MODE)?;
    file.write_all(bytes)
}

/// Narrows every directory under `root` (and `root`) to `0700` and every regular file to
/// `0600`; symbolic links are not followed. Errors are logged, not returned: a file the base
/// cannot narrow is still better served than a base that does not start.
pub fn tighten(root: &Path) {
    fn walk(dir: &Path, depth: usize) {
        if let Err(e) = narrow(dir, DIR_MODE) {
            tracing::warn!("cannot make {} private: {e}", dir.display());
        }
        if depth == MAX_DEPTH {
            return;
        }
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            let path = entry.path();
            if kind.is_dir() {
                walk(&path, depth + 1);
            } else if kind.is_file()
                && let Err(e) = narrow(&path, FILE_MODE)
            {
                tracing::warn!("cannot make {} private: {e}", path.display());
            }
        }
    }
    walk(root, 0);
}

/// Removes every permission beyond `mode` from `path` (a symbolic link itself is left alone).
fn narrow(path: &Path, mode: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let current = meta.permissions().mode() & 0o7777;
    if current & !mode != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(current & mode))?;
    }
    Ok(())
}

/// A number no other temporary file of this process used, for temporary names
/// (`.tmp-<pid>-<n>`, private copies).
pub fn temp_number() -> u64 {
    static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Writes `bytes` to `path` so that a reader never sees part of them: temporary file, rename.
/// `durable` adds `fsync`s (of the file before the rename, of the directory after), so after a
/// crash of the machine too `path` holds either nothing or all of the bytes.
pub fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> crate::error::Result<()> {
    let n = temp_number();
    let dir = path.parent().expect("artifact paths have a parent");
    let temp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = options().write(true).create_new(true).open(&temp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&temp, path)?;
        if durable {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temp);
        crate::error::Error::Io { context: format!("storing {}", path.display()), source: e }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_wide_data_directory_is_narrowed_and_new_files_are_private() {
        let data = std::env::temp_dir().join(format!("pedestal-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&data);
        fs::create_dir_all(data.join("logs")).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(data.join("logs"), fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(data.join("logs/a.log"), "x").unwrap();
        fs::set_permissions(data.join("logs/a.log"), fs::Permissions::from_mode(0o644)).unwrap();
        tighten(&data);
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("logs")), 0o700);
        assert_eq!(mode(&data.join("logs/a.log")), 0o600);

        create_dir(&data.join("new/deeper")).unwrap();
        assert_eq!(mode(&data.join("new")), 0o700);
        assert_eq!(mode(&data.join("new/deeper")), 0o700);
        write(&data.join("new/file"), b"y").unwrap();
        assert_eq!(mode(&data.join("new/file")), 0o600);
        fs::remove_dir_all(&data).unwrap();
    }
}
