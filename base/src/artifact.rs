//! The content-addressed artifact store: `<data-dir>/artifacts/<sha256>.so`, and beside it
//! `<sha256>.sig`, the signature line that was verified when it was installed under
//! `--trusted-keys` (checked again whenever the base loads it from here).
//!
//! An artifact is written to a temporary name, flushed to disk and renamed into place, so a
//! reader (or a base restarted after a crash) never sees a half-written file. The name is the content's hash, so the same bytes are stored once and a
//! path always means the same code (`dlopen` returns an already-loaded object for a known path).

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};
pub use crate::ids::Artifact;
pub(crate) use crate::private::write_atomically;

/// Where artifacts live.
#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    dir: PathBuf,
    copies: PathBuf,
}

/// Whether `text` is a lower-case hex sha256, as artifacts are named.
pub(crate) fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ArtifactStore {
    /// Opens (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        crate::private::create_dir(data_dir)
            .map_err(Error::io(format!("creating {}", data_dir.display())))?;
        let data_dir =
            data_dir.canonicalize().map_err(Error::io(format!("resolving {}", data_dir.display())))?;
        let dir = data_dir.join("artifacts");
        let copies = data_dir.join("instances");
        let incoming = data_dir.join(crate::path_install::INCOMING);
        for d in [&dir, &copies, &incoming] {
            crate::private::create_dir(d).map_err(Error::io(format!("creating {}", d.display())))?;
        }
        // Per-instance copies only matter while their process lives; temporary files are writes
        // a crash interrupted.
        if let Ok(entries) = fs::read_dir(&copies) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-")) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self { root: data_dir, dir, copies })
    }

    /// Stores `bytes`, whose sha256 the caller computed (an install checks it against its pin
    /// and signature first), returning the artifact (a no-op write when the content is already
    /// there).
    pub fn put(&self, bytes: &[u8], digest: [u8; 32]) -> Result<Artifact> {
        let sha256 = hex::encode(digest);
        let path = self.dir.join(format!("{sha256}.so"));
        if !path.exists() {
            write_atomically(&path, bytes, true)?;
        }
        Ok(Artifact { sha256, path, size: bytes.len() as u64, signed_by: None })
    }

    /// The stored artifact with this hash, if there is one.
    pub fn get(&self, sha256: &str) -> Option<Artifact> {
        // The hash names a file in the store: never a path (a tampered `state.json`, say).
        if !is_sha256(sha256) {
            return None;
        }
        let path = self.dir.join(format!("{sha256}.so"));
        let size = fs::metadata(&path).ok()?.len();
        Some(Artifact { sha256: sha256.to_owned(), path, size, signed_by: None })
    }

    /// Keeps the verified signature line of the artifact with this hash.
    pub fn put_signature(&self, sha256: &str, line: &str) -> Result<()> {
        write_atomically(&self.dir.join(format!("{sha256}.sig")), format!("{line}\n").as_bytes(), true)
    }

    /// The signature line kept for the artifact with this hash, if any.
    pub fn signature(&self, sha256: &str) -> Option<String> {
        fs::read_to_string(self.dir.join(format!("{sha256}.sig"))).ok()
    }

    /// The hashes of every stored artifact (or signature: one whose artifact went, say a
    /// refused load, is collected like an artifact).
    pub fn hashes(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut hashes: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hash = name.strip_suffix(".so").or_else(|| name.strip_suffix(".sig"))?;
                Some(hash.to_owned())
            })
            .filter(|name| !name.starts_with('.'))
            .collect();
        hashes.sort();
        hashes.dedup();
        hashes
    }

    /// Deletes the artifact with this hash (and its signature).
    pub fn remove(&self, sha256: &str) {
        let _ = fs::remove_file(self.dir.join(format!("{sha256}.so")));
        let _ = fs::remove_file(self.dir.join(format!("{sha256}.sig")));
    }

    /// A fresh private copy of `artifact` for one instance, used when the artifact's own path is
    /// still mapped by another instance (`dlopen` would hand back that instance's library).
    pub fn private_copy(&self, artifact: &Artifact) -> Result<PathBuf> {
        let n = crate::private::temp_number();
        let path = self.copies.join(format!("{}-{}-{n}.so", artifact.sha256, std::process::id()));
        let bytes =
            fs::read(&artifact.path).map_err(Error::io(format!("reading {}", artifact.path.display())))?;
        // Not flushed: a private copy only matters while this process lives.
        write_atomically(&path, &bytes, false)?;
        Ok(path)
    }
}

impl ArtifactStore {
    /// The (absolute) data directory the store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.root
    }

    /// Deletes `path` if it is one of this store's private copies (artifacts themselves stay).
    pub fn remove_private_copy(&self, path: &Path) {
        if path.parent() == Some(self.copies.as_path()) {
            let _ = fs::remove_file(path);
        }
    }
}
