//! Verified artifacts: the `?sha256=` pin and the `--trusted-keys` policy.
//!
//! The keys, signatures and their text formats are `pedestal-signing`'s (re-exported here, so
//! a base of your own or a deploy tool can sign with `pedestal_base::signing::sign_file`); this
//! module holds what the base decides with them. Every artifact the base loads from outside
//! (an upload, a path install, `[boot]`, `--modules-dir`, `--watch`) passes
//! [`check`] before anything is stored or loaded; one loaded again from the base's own store (a
//! restore, a retry, a failed replace putting the old build back) passes [`check_stored`],
//! with the signature the store kept when it was installed.

use std::path::Path;

pub use pedestal_signing::{
    DOMAIN, Digest, Error as SigningError, KeyId, PublicKey, Rejection, SecretKey, Signature, SignedFile,
    TrustedKeys, parse_sha256, sha256, sign_file, signature_beside, signature_path, signed_message,
    write_key_pair,
};

use crate::error::{Error, Result};

/// The request header an upload carries its signature in: a `.sig` file's signature line.
pub const SIGNATURE_HEADER: &str = "x-pedestal-signature";

/// Reads the `--trusted-keys` file (at start: a bad file stops the base).
pub(crate) fn load_trusted_keys(path: &Path) -> Result<TrustedKeys> {
    TrustedKeys::load(path)
        .map_err(|e| Error::TrustedKeysInvalid { path: path.to_owned(), message: e.to_string() })
}

/// Parses a pinned sha256 (`?sha256=`).
pub(crate) fn parse_pin(value: &str) -> Result<Digest> {
    parse_sha256(value).map_err(|_| Error::Sha256Invalid { value: value.to_owned() })
}

/// An artifact that passed the checks: who signed it, when the base requires signatures.
#[derive(Debug, Clone, Default)]
pub(crate) struct Verified {
    /// The trusted key that signed it.
    pub(crate) signed_by: Option<KeyId>,
    /// Its signature line, for the store to keep beside it (a restore checks it again).
    pub(crate) signature: Option<String>,
}

/// Checks an artifact from outside whose sha256 is `digest`: it must match the pin, if any, and
/// with `trusted` keys, `signature` (a `.sig` file's text or its line) must be a trusted key's
/// signature of it. Without trusted keys a signature is not looked at: there is nothing to
/// check it against, and accepting it unchecked would show a `signed_by` nobody verified.
pub(crate) fn check(
    what: &str,
    digest: &Digest,
    pin: Option<&Digest>,
    trusted: Option<&TrustedKeys>,
    signature: Option<&str>,
) -> Result<Verified> {
    if let Some(expected) = pin.filter(|expected| *expected != digest) {
        return Err(Error::Sha256Mismatch { expected: hex::encode(expected), actual: hex::encode(digest) });
    }
    let Some(trusted) = trusted else { return Ok(Verified::default()) };
    let ids = || trusted.ids().iter().map(KeyId::to_string).collect::<Vec<_>>();
    let Some(text) = signature.filter(|s| !s.trim().is_empty()) else {
        return Err(Error::SignatureRequired {
            what: what.to_owned(),
            sha256: hex::encode(digest),
            trusted: ids(),
        });
    };
    let invalid = |key_id: Option<KeyId>, reason: String| Error::SignatureInvalid {
        what: what.to_owned(),
        sha256: hex::encode(digest),
        key_id: key_id.map(|id| id.to_string()),
        reason,
        trusted: ids(),
    };
    let signature = Signature::parse(text).map_err(|e| invalid(None, e.to_string()))?;
    let key_id =
        trusted.verify(digest, &signature).map_err(|e| invalid(Some(signature.key_id()), e.to_string()))?;
    Ok(Verified { signed_by: Some(key_id), signature: Some(signature.to_line()) })
}

/// Checks an artifact loaded again from the base's store against the trusted keys of this
/// start, with the signature kept when it was installed (`stored`): dropping a key from
/// `--trusted-keys` takes effect for what is already installed at the next start.
pub(crate) fn check_stored(
    sha256: &str,
    trusted: Option<&TrustedKeys>,
    stored: Option<&str>,
) -> Result<Option<KeyId>> {
    let Some(trusted) = trusted else { return Ok(None) };
    let digest = parse_sha256(sha256).map_err(|e| Error::StateInvalid {
        path: format!("artifacts/{sha256}.so").into(),
        message: e.to_string(),
    })?;
    let what = format!("stored artifact {sha256}");
    Ok(check(&what, &digest, None, Some(trusted), stored)?.signed_by)
}

/// The text of the signature beside `file` (`<file>.sig`), when the base requires signatures;
/// `None` when there is none (or signatures are not required).
pub(crate) fn text_beside(file: &Path, trusted: Option<&TrustedKeys>) -> Result<Option<String>> {
    if trusted.is_none() {
        return Ok(None);
    }
    let path = signature_path(file);
    match read_small_regular_file(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()))(e)),
    }
}

/// The most of a signature file that is read: one line is under 200 bytes, comments may come
/// before it.
const SIGNATURE_FILE_LIMIT: u64 = 64 * 1024;

/// Reads a signature file without waiting on it: opened non-blocking (a FIFO dropped in a
/// watched directory must not stall the base), a regular file only, at most
/// [`SIGNATURE_FILE_LIMIT`] bytes.
fn read_small_regular_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    file.take(SIGNATURE_FILE_LIMIT + 1).read_to_string(&mut text)?;
    if text.len() as u64 > SIGNATURE_FILE_LIMIT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {SIGNATURE_FILE_LIMIT} bytes"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(result: Result<Verified>) -> String {
        match result {
            Ok(verified) => format!("ok {:?}", verified.signed_by.map(|id| id.to_string())),
            Err(e) => e.code().to_owned(),
        }
    }

    #[test]
    fn the_pin_comes_first_and_signatures_count_only_with_trusted_keys() {
        let key = SecretKey::generate().unwrap();
        let stranger = SecretKey::generate().unwrap();
        let trusted = TrustedKeys::parse(&key.public_key().to_text()).unwrap();
        let digest = sha256(b"module");
        let other = sha256(b"other");
        let good = key.sign(&digest).to_line();
        let id = format!("ok Some({:?})", key.id().to_string());
        let check =
            |pin: Option<&Digest>, trusted: Option<&TrustedKeys>, signature: Option<&str>, expected: &str| {
                assert_eq!(
                    codes(check("upload", &digest, pin, trusted, signature)),
                    expected,
                    "{pin:?} {signature:?}"
                );
            };
        check(None, None, None, "ok None");
        check(Some(&digest), None, None, "ok None");
        check(Some(&other), None, None, "SHA256_MISMATCH");
        // Without trusted keys a signature, even garbage, is not looked at.
        check(None, None, Some("garbage"), "ok None");
        check(None, Some(&trusted), None, "SIGNATURE_REQUIRED");
        check(None, Some(&trusted), Some("  \n"), "SIGNATURE_REQUIRED");
        check(None, Some(&trusted), Some("garbage"), "SIGNATURE_INVALID");
        check(None, Some(&trusted), Some(&stranger.sign(&digest).to_line()), "SIGNATURE_INVALID");
        check(None, Some(&trusted), Some(&key.sign(&other).to_line()), "SIGNATURE_INVALID");
        check(None, Some(&trusted), Some(&good), &id);
        // A wrong pin is reported as such even when the signature is bad too.
        check(Some(&other), Some(&trusted), Some("garbage"), "SHA256_MISMATCH");
        assert_eq!(parse_pin(&hex::encode(digest)).unwrap(), digest);
        assert_eq!(parse_pin("xyz").unwrap_err().code(), "BAD_REQUEST");
    }
}
