//! `pedestal serve --watch DIR`: a hot-reload directory. A `.so` dropped into DIR is installed;
//! when it is a newer version of a running module, traffic switches to it; a rebuilt library of
//! the same version replaces the running one.
//!
//! Half-written files are never loaded: a file is looked at only once it has been quiet (no
//! write, close or rename event) for [`QUIET`], and it must then pass the structural ELF check;
//! one that fails is skipped until its next change. Writers that rename a finished file into the
//! directory are picked up at once after the quiet period.
//!
//! With `--trusted-keys`, a library needs its signature beside it (`<file>.so.sig`); a change to
//! the signature counts as a change to its library, so the two may be dropped in either order.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::{
    elf,
    error::{Error, Result},
    registry::{InstallOptions, Registry, Strategy},
};

/// How long a file must go without events before it is loaded.
const QUIET: Duration = Duration::from_millis(300);

/// Watches `dir` (creating it if needed) on a thread of its own for as long as the process
/// lives; files already there are installed first.
pub fn spawn(registry: Arc<Registry>, dir: PathBuf) -> Result<()> {
    fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let (events, changes) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let _ = events.send(event);
        }
    })
    .map_err(|e| Error::Io {
        context: format!("watching {}", dir.display()),
        source: std::io::Error::other(e),
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|e| Error::Io {
        context: format!("watching {}", dir.display()),
        source: std::io::Error::other(e),
    })?;
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    if let Ok(entries) = fs::read_dir(&dir) {
        for path in entries.flatten().map(|e| e.path()).filter(|p| is_library(p)) {
            pending.insert(path, Instant::now() - QUIET);
        }
    }
    tracing::info!(dir = %dir.display(), "watching for modules");
    thread::Builder::new()
        .name("pedestal-watch".into())
        .spawn(move || {
            let _watcher = watcher;
            loop {
                match changes.recv_timeout(QUIET / 3) {
                    Ok(event) => {
                        if matches!(
                            event.kind,
                            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Access(_)
                        ) {
                            for path in event.paths.into_iter().filter_map(library_of) {
                                pending.insert(path, Instant::now());
                            }
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let quiet: Vec<PathBuf> =
                    pending.iter().filter(|(_, at)| at.elapsed() >= QUIET).map(|(p, _)| p.clone()).collect();
                for path in quiet {
                    pending.remove(&path);
                    deploy(&registry, &path);
                }
            }
        })
        .map_err(Error::io("starting the watch thread"))?;
    Ok(())
}

fn is_library(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "so")
}

/// The library a changed file concerns: itself, or the one a `<file>.so.sig` signs.
fn library_of(path: PathBuf) -> Option<PathBuf> {
    if is_library(&path) {
        return Some(path);
    }
    let signed = path.to_str()?.strip_suffix(".sig").map(PathBuf::from)?;
    is_library(&signed).then_some(signed)
}

/// Installs the library at `path`, switching to it when it is a newer version of its module.
fn deploy(registry: &Registry, path: &Path) {
    let Ok(bytes) = fs::read(path) else { return };
    if let Err(reason) = elf::check_module(&bytes[..]) {
        tracing::warn!(file = %path.display(), "not loaded (incomplete or not a module; waiting for its next change): {reason}");
        return;
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    if let Some(q) = registry.quarantined().into_iter().find(|q| q.sha256 == sha256) {
        tracing::warn!(file = %path.display(), "not loaded: quarantined ({})", q.reason);
        return;
    }
    let signature = match registry.signature_beside(path) {
        Ok(signature) => signature,
        Err(e) => {
            tracing::error!(file = %path.display(), code = e.code(), "hot reload failed: {e}");
            return;
        }
    };
    // A module a fleet owns is the fleet's to change: refused (`FLEET_OWNED`, logged below).
    let options = InstallOptions { signature, refuse_owned: true, ..InstallOptions::default() };
    let installed = match registry.install_with(&bytes, &options) {
        // The same version, rebuilt: replace the running one.
        Err(Error::AlreadyInstalled { id })
            if !registry.all().iter().any(|(i, _)| i.artifact.sha256 == sha256 && i.state().is_live()) =>
        {
            tracing::info!(file = %path.display(), module = %id, "same version rebuilt: replacing it");
            let options = InstallOptions { strategy: Strategy::Replace, ..options };
            registry.install_with(&bytes, &options).map(|done| done.instance)
        }
        other => other.map(|done| done.instance),
    };
    let instance = match installed {
        Ok(instance) => instance,
        Err(Error::AlreadyInstalled { .. }) => return,
        Err(e) => {
            tracing::error!(file = %path.display(), code = e.code(), "hot reload failed: {e}");
            return;
        }
    };
    let active = registry.module(&instance.id.name).ok().and_then(|(_, active)| active);
    if active.is_some_and(|active| instance.id.version > active) {
        match registry.switch(&instance.id.name, &instance.id.version) {
            Ok(_) => {
                tracing::info!(module = %instance.id, file = %path.display(), "hot reload: switched to the newer version")
            }
            Err(e) => tracing::error!(module = %instance.id, "hot reload: cannot switch: {e}"),
        }
    } else {
        let signed_by = instance.artifact.signed_by.as_deref();
        tracing::info!(module = %instance.id, file = %path.display(), state = ?instance.state(), signed_by, "hot reload: installed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_change_is_a_change_of_the_library_it_signs() {
        let check = |path: &str, expected: Option<&str>| {
            assert_eq!(library_of(PathBuf::from(path)), expected.map(PathBuf::from), "{path}");
        };
        check("/w/notes.so", Some("/w/notes.so"));
        check("/w/notes.so.sig", Some("/w/notes.so"));
        check("/w/notes.sig", None);
        check("/w/notes.so.sig.tmp-42", None);
        check("/w/notes.txt", None);
    }
}
