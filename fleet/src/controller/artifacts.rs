//! Each controller's content-addressed store (`<data-dir>/artifacts/<sha256>.so`) and the
//! mirror that fills it: every artifact `artifacts/` names is fetched from another live
//! controller or from a base that lists it in its status, and kept only if its bytes hash to
//! its name. With two controllers, losing one machine loses no artifact.

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use super::{Controller, reconcile::Snapshot};

/// A directory of artifacts named by their sha256.
pub(crate) struct ArtifactStore {
    dir: PathBuf,
    temp_seq: AtomicU64,
}

/// Bytes received into a temporary file, hashed while they arrived.
pub(crate) struct Received {
    pub(crate) sha256: String,
    pub(crate) size: u64,
    temp: PathBuf,
}

impl ArtifactStore {
    /// Opens (creating) the store; leftover temporary files of a crash are removed.
    pub(crate) fn open(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the artifact store {}", dir.display()))?;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self { dir, temp_seq: AtomicU64::new(0) })
    }

    /// Where the artifact `sha256` lives.
    pub(crate) fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.so"))
    }

    /// Whether the store holds `sha256`.
    pub(crate) fn has(&self, sha256: &str) -> bool {
        is_sha256(sha256) && self.path(sha256).is_file()
    }

    /// A fresh temporary file in the store (same file system: the rename is atomic).
    pub(crate) fn temp(&self) -> PathBuf {
        let n = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(".tmp-{}-{n}", std::process::id()))
    }

    /// Starts receiving into a temporary file.
    pub(crate) fn receiver(&self) -> std::io::Result<Receiver> {
        let temp = self.temp();
        let file = std::fs::File::create(&temp)?;
        Ok(Receiver { file: Some(file), temp, hasher: Sha256::new(), size: 0 })
    }

    /// Keeps what was received under its hash: `true` when it was new here.
    pub(crate) fn keep(&self, received: Received) -> std::io::Result<bool> {
        let target = self.path(&received.sha256);
        if target.is_file() {
            let _ = std::fs::remove_file(&received.temp);
            return Ok(false);
        }
        std::fs::rename(&received.temp, &target)?;
        Ok(true)
    }

    /// Drops what was received.
    pub(crate) fn discard(&self, received: Received) {
        let _ = std::fs::remove_file(&received.temp);
    }
}

/// A temporary file being written and hashed.
pub(crate) struct Receiver {
    file: Option<std::fs::File>,
    temp: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl Receiver {
    /// Appends a chunk.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.file.as_mut().expect("open until finished").write_all(chunk)
    }

    /// Bytes so far.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Flushes and names what arrived.
    pub(crate) fn finish(mut self) -> std::io::Result<Received> {
        let file = self.file.take().expect("open until finished");
        file.sync_all()?;
        drop(file);
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        Ok(Received { sha256, size: self.size, temp: std::mem::take(&mut self.temp) })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Abandoned halfway (an upload too large, a broken connection): remove the file.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Lower-case hex of 32 bytes.
pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The mirror: on every change of `artifacts/` or `controllers/`, and every two seconds,
/// fetches what this controller lacks.
pub(crate) async fn mirror(ctl: Arc<Controller>) {
    loop {
        tokio::select! {
            _ = ctl.kick_artifacts.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let mut client = ctl.client();
        let Ok(snapshot) = Snapshot::read(&mut client, &ctl.keys).await else {
            // Every controller runs this loop: a standby's client gets refreshed here too.
            ctl.reconnect().await;
            continue;
        };
        for sha in snapshot.artifacts.keys().filter(|sha| is_sha256(sha) && !ctl.store.has(sha)) {
            let sources = sources(&ctl, &snapshot, sha);
            let ctl2 = ctl.clone();
            let sha2 = sha.clone();
            let fetched = tokio::task::spawn_blocking(move || fetch_from_any(&ctl2, &sha2, &sources)).await;
            match fetched {
                Ok(Ok(from)) => ctl.say(&format!("mirrored artifact {sha} from {from}")),
                Ok(Err(e)) => ctl.say(&format!("artifact {sha} not mirrored yet: {e:#}")),
                Err(e) => ctl.say(&format!("artifact {sha}: the fetch task failed: {e}")),
            }
        }
    }
}

/// Every URL that may serve `sha`: other live controllers first, then bases listing it.
fn sources(ctl: &Controller, snapshot: &Snapshot, sha: &str) -> Vec<String> {
    let controllers = snapshot
        .controllers
        .values()
        .filter(|c| c.id != ctl.id)
        .map(|c| format!("{}/api/v1/artifacts/{sha}", c.url.trim_end_matches('/')));
    let bases = snapshot
        .statuses
        .iter()
        .filter(|(_, status)| status.artifacts.iter().any(|a| a == sha))
        .filter_map(|(id, _)| snapshot.bases.get(id))
        .map(|b| format!("{}/.pedestal/artifacts/{sha}", b.traffic_url.trim_end_matches('/')));
    controllers.chain(bases).collect()
}

fn fetch_from_any(ctl: &Controller, sha: &str, sources: &[String]) -> anyhow::Result<String> {
    let mut errors = Vec::new();
    for url in sources {
        match fetch(ctl, sha, url) {
            Ok(()) => return Ok(url.clone()),
            Err(e) => errors.push(format!("{url}: {e:#}")),
        }
    }
    if errors.is_empty() {
        anyhow::bail!("no live controller or base has it");
    }
    anyhow::bail!("{}", errors.join("; "))
}

fn fetch(ctl: &Controller, sha: &str, url: &str) -> anyhow::Result<()> {
    let response = ureq::get(url)
        .timeout(Duration::from_secs(60))
        .set("authorization", &format!("Bearer {}", ctl.token))
        .call()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut reader = response.into_reader().take(ctl.max_upload_bytes + 1);
    let mut receiver = ctl.store.receiver()?;
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        receiver.write(&buffer[..n])?;
        anyhow::ensure!(receiver.size() <= ctl.max_upload_bytes, "larger than --max-upload-bytes");
    }
    let received = receiver.finish()?;
    if received.sha256 != sha {
        let actual = received.sha256.clone();
        ctl.store.discard(received);
        anyhow::bail!("SHA256_MISMATCH: the bytes hash to {actual}");
    }
    ctl.store.keep(received)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_bytes_are_kept_under_their_hash_once() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = ArtifactStore::open(dir.path().join("artifacts")).expect("a store");
        let mut receiver = store.receiver().expect("a receiver");
        receiver.write(b"hello ").expect("write");
        receiver.write(b"world").expect("write");
        let received = receiver.finish().expect("finish");
        let sha = hex::encode(Sha256::digest(b"hello world"));
        assert_eq!(received.sha256, sha);
        assert_eq!(received.size, 11);
        assert!(store.keep(received).expect("keep"));
        assert!(store.has(&sha));

        let mut again = store.receiver().expect("a receiver");
        again.write(b"hello world").expect("write");
        assert!(!store.keep(again.finish().expect("finish")).expect("keep"), "already known");
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path().join("artifacts")).expect("list").flatten().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");

        let abandoned = store.receiver().expect("a receiver");
        drop(abandoned);
        assert_eq!(std::fs::read_dir(dir.path().join("artifacts")).expect("list").count(), 1);
    }
}
