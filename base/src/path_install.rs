//! Installs from a file on the base's own machine (`POST /api/v1/modules {"path": "..."}`),
//! confined to the directories an operator allowed.
//!
//! The path must be absolute and resolve (symlinks followed) inside `<data-dir>/incoming/` or a
//! directory named by `--allow-path-install`. The file is opened with `O_NOFOLLOW | O_NONBLOCK`
//! (a final symlink swapped in meanwhile is not followed; a FIFO cannot block the open), the
//! descriptor's real path is checked again (a directory renamed between the check and the open
//! cannot lead outside), and it must be a regular file by `fstat`: devices, FIFOs, sockets and
//! directories are refused before a byte is read. The read is bounded by the upload limit, never
//! by the length the file reports. Blocking: call it off the async runtime.
//!
//! A path outside the allowed directories gets one answer, `403 PATH_NOT_ALLOWED`, whether or not
//! it exists; only inside them does a missing file answer `404 NOT_FOUND`.

use std::{
    fs::{self, File, OpenOptions},
    io::Read,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    os::unix::io::AsRawFd,
    path::{Component, Path, PathBuf},
};

use crate::error::{Error, Result};

/// The directory under the data directory path installs may always read from.
pub const INCOMING: &str = "incoming";

/// Reads the module file at `requested` if it lies inside one of `allowed` (at most `limit`
/// bytes). Blocking.
pub fn read_confined(requested: &Path, allowed: &[PathBuf], limit: u64) -> Result<Vec<u8>> {
    if !requested.is_absolute() {
        return Err(Error::PathNotAbsolute { path: requested.to_owned() });
    }
    // `/outside/dir/../../<allowed>/x.so` resolves only when `/outside/dir` exists: refused
    // before any lookup, so the answer cannot tell whether a directory outside exists.
    if requested.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(Error::PathNotAllowed { path: requested.to_owned() });
    }
    let roots: Vec<PathBuf> = allowed.iter().filter_map(|dir| dir.canonicalize().ok()).collect();
    let inside = |path: &Path| roots.iter().any(|root| path.starts_with(root));
    let refused = || Error::PathNotAllowed { path: requested.to_owned() };
    let resolved = match requested.canonicalize() {
        Ok(resolved) => resolved,
        Err(e) => {
            // Say more only when the path would have been inside an allowed directory.
            return Err(match would_resolve_to(requested) {
                Some(target) if inside(&target) => unreadable(requested, e),
                _ => refused(),
            });
        }
    };
    if !inside(&resolved) {
        return Err(refused());
    }
    // Before opening: opening a device can have effects of its own.
    let kind = fs::symlink_metadata(&resolved).map_err(|e| unreadable(requested, e))?.file_type();
    if !kind.is_file() {
        return Err(Error::NotARegularFile { path: requested.to_owned(), kind: describe(kind) });
    }
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&resolved)
        .map_err(|e| match e.raw_os_error() {
            // A symlink swapped in after the check.
            Some(libc::ELOOP) => refused(),
            _ => unreadable(requested, e),
        })?;
    if !opened_path(&file).is_some_and(|path| inside(&path)) {
        return Err(refused());
    }
    let meta = file.metadata().map_err(|e| unreadable(requested, e))?;
    if !meta.file_type().is_file() {
        return Err(Error::NotARegularFile { path: requested.to_owned(), kind: describe(meta.file_type()) });
    }
    if meta.len() > limit {
        return Err(Error::PayloadTooLarge { size: meta.len(), limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut file)
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(requested, e))?;
    if bytes.len() as u64 > limit {
        // It grew since `fstat`, or reports a length that is not its size.
        return Err(Error::PayloadTooLarge { size: limit.saturating_add(1), limit });
    }
    Ok(bytes)
}

/// Where a path that does not resolve would be: its deepest ancestor that resolves, with the
/// rest appended. `None` when the rest climbs (`..`) and cannot be judged without resolving.
fn would_resolve_to(path: &Path) -> Option<PathBuf> {
    let (ancestor, resolved) = path.ancestors().skip(1).find_map(|a| Some((a, a.canonicalize().ok()?)))?;
    let rest = path.strip_prefix(ancestor).ok()?;
    if rest.components().any(|c| matches!(c, Component::ParentDir)) {
        return None;
    }
    Some(resolved.join(rest))
}

/// The path the open descriptor really refers to, as the kernel sees it.
fn opened_path(file: &File) -> Option<PathBuf> {
    fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

fn unreadable(path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { what: format!("file {}", path.display()) },
        _ => Error::BadRequest { message: format!("cannot read {}: {e}", path.display()) },
    }
}

fn describe(kind: fs::FileType) -> String {
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    };
    what.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code `read_confined` answers `path` with, `ok` when it reads it.
    fn check(path: &Path, allowed: &[PathBuf], expected: &str) {
        let got = match read_confined(path, allowed, 1024) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.code().to_owned(),
        };
        assert_eq!(got, expected, "{}", path.display());
    }

    #[test]
    fn only_regular_files_inside_the_allowed_directories_are_read() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("incoming");
        let outside = root.path().join("outside");
        fs::create_dir_all(&allowed).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(allowed.join("module.so"), b"bytes").unwrap();
        fs::write(allowed.join("big.so"), vec![0; 2048]).unwrap();
        fs::write(outside.join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), allowed.join("escape")).unwrap();
        std::os::unix::fs::symlink(allowed.join("module.so"), allowed.join("alias")).unwrap();
        std::os::unix::fs::symlink(&outside, allowed.join("dir-escape")).unwrap();
        let dirs = [allowed.clone()];

        check(&allowed.join("module.so"), &dirs, "ok");
        check(&allowed.join("alias"), &dirs, "ok");
        check(Path::new("incoming/module.so"), &dirs, "PATH_NOT_ABSOLUTE");
        check(&allowed.join("missing.so"), &dirs, "NOT_FOUND");
        check(&allowed, &dirs, "NOT_A_REGULAR_FILE");
        check(&allowed.join("big.so"), &dirs, "PAYLOAD_TOO_LARGE");
        // Outside: one answer whether the file exists or not.
        check(&outside.join("secret"), &dirs, "PATH_NOT_ALLOWED");
        check(&outside.join("missing"), &dirs, "PATH_NOT_ALLOWED");
        check(&allowed.join("escape"), &dirs, "PATH_NOT_ALLOWED");
        check(&allowed.join("dir-escape/secret"), &dirs, "PATH_NOT_ALLOWED");
        check(&allowed.join("dir-escape/missing"), &dirs, "PATH_NOT_ALLOWED");
        check(&allowed.join("../outside/secret"), &dirs, "PATH_NOT_ALLOWED");
        check(&allowed.join("nothing/../../outside/missing"), &dirs, "PATH_NOT_ALLOWED");
        // Nothing allowed at all.
        check(&allowed.join("module.so"), &[], "PATH_NOT_ALLOWED");
    }
}
