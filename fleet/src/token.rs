//! The fleet token's sources, read the same way by the base's agent, the controller and the
//! CLI: `--fleet-token` (or `PEDESTAL_FLEET_TOKEN`) and `--fleet-token-file` (or
//! `PEDESTAL_FLEET_TOKEN_FILE`). A file wins over the flag: it is what an operator mounts on
//! purpose (a Kubernetes secret), while a token in the environment may be inherited by accident.

use std::path::{Path, PathBuf};

/// The shortest fleet token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// A fleet token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read the fleet token from {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Shorter than [`MIN_TOKEN_LEN`].
    #[error("the fleet token has {0} characters; at least {MIN_TOKEN_LEN} are required")]
    TooShort(usize),
}

/// The token: the file's (its trailing whitespace trimmed) when a file is given, else the flag's;
/// `None` without either. Its length is not checked here (see [`long_enough`]): the CLI sends
/// what it is given and lets the controller refuse it.
pub fn read(token: Option<&str>, file: Option<&Path>) -> Result<Option<String>, TokenError> {
    match file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text.trim_end().to_owned())),
            Err(source) => Err(TokenError::Unreadable { path: path.to_owned(), source }),
        },
        None => Ok(token.map(str::to_owned)),
    }
}

/// `token`, if it has at least [`MIN_TOKEN_LEN`] characters.
pub fn long_enough(token: String) -> Result<String, TokenError> {
    match token.chars().count() {
        n if n < MIN_TOKEN_LEN => Err(TokenError::TooShort(n)),
        _ => Ok(token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_trimmed_and_wins_over_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-the-file-0123456789\n").unwrap();
        let token = read(Some("from-the-flag-0123456789"), Some(&file)).unwrap();
        assert_eq!(token.as_deref(), Some("from-the-file-0123456789"));
        assert_eq!(read(Some("t"), None).unwrap().as_deref(), Some("t"));
        assert_eq!(read(None, None).unwrap(), None);
        let missing = read(None, Some(&dir.path().join("missing"))).unwrap_err();
        assert!(missing.to_string().contains("cannot read the fleet token from"), "{missing}");
    }

    #[test]
    fn a_short_token_is_refused() {
        assert!(matches!(long_enough("short".into()), Err(TokenError::TooShort(5))));
        assert_eq!(long_enough("0123456789abcdef".into()).unwrap(), "0123456789abcdef");
    }
}
