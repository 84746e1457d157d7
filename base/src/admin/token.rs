//! Where the operations API's token comes from: `--admin-token`, `--admin-token-file`, or the
//! one the base generates at first start into `<data-dir>/admin-token` and reuses after.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{ErrorKind, Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::{
    config::{Config, STRONG_ADMIN_TOKEN_LEN, check_admin_token},
    error::{Error, Result},
};

/// The file under the data directory holding the generated token.
pub const TOKEN_FILE: &str = "admin-token";

/// Random bytes in a generated token (written as 64 hex digits).
const GENERATED_BYTES: usize = 32;

/// The token the operations API requires, and where it came from. Its `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct AdminToken {
    secret: String,
    pub(crate) origin: TokenOrigin,
}

/// Where the token came from, for the start-up log line (which never shows the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenOrigin {
    /// `--admin-token` or `PEDESTAL_ADMIN_TOKEN`.
    Flag,
    /// `--admin-token-file`.
    File(PathBuf),
    /// Generated now into this file.
    Generated(PathBuf),
    /// Generated at an earlier start, read from this file.
    Reused(PathBuf),
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl AdminToken {
    /// The token: `--admin-token`, else `--admin-token-file`, else the generated file under
    /// `config.data_dir` (which must exist: the registry makes it), generated if absent.
    pub(crate) fn resolve(config: &Config) -> Result<Self> {
        if let Some(secret) = &config.admin_token {
            check_admin_token(secret, "--admin-token (or PEDESTAL_ADMIN_TOKEN)")?;
            return Ok(Self { secret: secret.trim().to_owned(), origin: TokenOrigin::Flag });
        }
        if let Some(path) = &config.admin_token_file {
            let secret = read_token(path)?;
            return Ok(Self { secret, origin: TokenOrigin::File(path.clone()) });
        }
        let path = config.data_dir.join(TOKEN_FILE);
        match generate(&path) {
            Ok(secret) => Ok(Self { secret, origin: TokenOrigin::Generated(path) }),
            // Made at an earlier start (or by a base starting at the same moment): reuse it.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let secret = read_token(&path)?;
                Ok(Self { secret, origin: TokenOrigin::Reused(path) })
            }
            Err(e) => Err(Error::io(format!("creating the operations API token {}", path.display()))(e)),
        }
    }

    /// The token itself, to compare with what a caller presents.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether it is at least [`STRONG_ADMIN_TOKEN_LEN`] characters long (a generated one is).
    pub(crate) fn is_strong(&self) -> bool {
        self.secret.chars().count() >= STRONG_ADMIN_TOKEN_LEN
    }

    /// Says where the token is, never what it is.
    pub(crate) fn log_where(&self) {
        if !self.is_strong() {
            tracing::warn!(
                "the operations API token is shorter than {STRONG_ADMIN_TOKEN_LEN} characters: while a \
                 client is throttled for wrong guesses, its right token is refused too (a local process \
                 guessing can lock a local operator out); use a longer one"
            );
        }
        match &self.origin {
            TokenOrigin::Flag => tracing::info!("operations API token: from --admin-token"),
            TokenOrigin::File(path) => {
                tracing::info!(file = %path.display(), "operations API token: read from --admin-token-file")
            }
            TokenOrigin::Generated(path) => tracing::info!(
                file = %path.display(),
                "operations API token: generated; send it as Authorization: Bearer <contents of the file>"
            ),
            TokenOrigin::Reused(path) => {
                tracing::info!(file = %path.display(), "operations API token: reused from an earlier start")
            }
        }
    }
}

/// Creates `path` (never over an existing file: `O_EXCL`, mode 0600) holding a fresh token.
fn generate(path: &Path) -> std::io::Result<String> {
    let mut bytes = [0u8; GENERATED_BYTES];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let secret = hex::encode(bytes);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    let written = file.write_all(format!("{secret}\n").as_bytes()).and_then(|()| file.sync_all());
    if let Err(e) = written {
        // Never leave a half-written token behind for the next start to reuse.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(secret)
}

/// Reads a token file (trailing whitespace, a newline say, is not part of the token).
fn read_token(path: &Path) -> Result<String> {
    let context = format!("reading the operations API token {}", path.display());
    let mut file = File::open(path).map_err(Error::io(context.clone()))?;
    let mode = file.metadata().map_err(Error::io(context.clone()))?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "the operations API token file is readable by other users; chmod 600 it"
        );
    }
    let mut secret = String::new();
    // A token is short; a bound keeps a mistaken path (a device, a big file) from being read whole.
    Read::by_ref(&mut file).take(4096).read_to_string(&mut secret).map_err(Error::io(context))?;
    check_admin_token(&secret, &path.display().to_string())?;
    Ok(secret.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_token_is_made_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_owned(), ..Config::default() };
        let first = AdminToken::resolve(&config).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(first.origin, TokenOrigin::Generated(path.clone()));
        assert_eq!(first.secret().len(), 2 * GENERATED_BYTES);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let second = AdminToken::resolve(&config).unwrap();
        assert_eq!(second.origin, TokenOrigin::Reused(path));
        assert_eq!(second.secret(), first.secret());
        assert!(!format!("{second:?}").contains(first.secret()), "Debug shows the token");
    }

    #[test]
    fn a_short_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "   \n").unwrap();
        let config = Config { admin_token_file: Some(file), ..Config::default() };
        assert_eq!(AdminToken::resolve(&config).unwrap_err().code(), "ADMIN_TOKEN_TOO_SHORT");
    }
}
