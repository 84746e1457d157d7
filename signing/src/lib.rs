//! Signed Pedestal modules: ed25519 key pairs, detached signatures over an artifact's sha256,
//! and the one-line text formats they are kept in (in the spirit of minisign and signify).
//!
//! What is signed is not the file but a domain-separated statement about its hash:
//!
//! ```text
//! b"pedestal-module-sha256:" ++ the 32 raw bytes of sha256(artifact)
//! ```
//!
//! so a verifier needs only the hash (which the base computes anyway to store the artifact),
//! and a Pedestal signature can never be mistaken for a signature over anything else made with
//! the same key.
//!
//! ```
//! use pedestal_signing::{SecretKey, TrustedKeys, sha256};
//!
//! let key = SecretKey::generate()?;
//! let trusted = TrustedKeys::parse(&key.public_key().to_text())?;
//! let digest = sha256(b"the bytes of a module");
//! let signature = key.sign(&digest);
//! assert_eq!(trusted.verify(&digest, &signature), Ok(key.id()));
//! assert!(trusted.verify(&sha256(b"other bytes"), &signature).is_err());
//! # Ok::<(), pedestal_signing::Error>(())
//! ```
//!
//! # Formats
//!
//! Every file is text: lines that are blank, start with `#` or start with `untrusted comment:`
//! are comments (they are not signed, hence "untrusted"); every other line is an entry of four
//! fields separated by spaces:
//!
//! ```text
//! untrusted comment: pedestal public key 3f2a9c0e1b7d4a65
//! pedestal-public-key ed25519 3f2a9c0e1b7d4a65 <base64 of the 32-byte public key>
//! ```
//!
//! | file | tag | payload (standard base64) | entries |
//! | --- | --- | --- | --- |
//! | secret key (mode 0600) | `pedestal-secret-key` | the 32-byte ed25519 seed | one |
//! | public key (`<secret>.pub`) | `pedestal-public-key` | the 32-byte public key | one |
//! | trusted keys (`--trusted-keys`) | `pedestal-public-key` | as above | one or more: public key files, concatenated |
//! | signature (`<artifact>.sig`) | `pedestal-signature` | the 64-byte signature | one |
//!
//! The second field names the algorithm (only `ed25519`). The third is the key id: the first
//! 8 bytes of sha256(public key), in hex. In a key file it must match the key; in a signature
//! it says which trusted key to check it with. The secret key is stored unencrypted: protect
//! it with its file mode or a secrets manager (as with `minisign -W`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    str::FromStr,
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// What a signature covers is this prefix followed by the artifact's raw sha256.
pub const DOMAIN: &[u8] = b"pedestal-module-sha256:";

/// The only algorithm, as the second field of every entry names it.
const ALGORITHM: &str = "ed25519";
const SECRET_TAG: &str = "pedestal-secret-key";
const PUBLIC_TAG: &str = "pedestal-public-key";
const SIGNATURE_TAG: &str = "pedestal-signature";

/// A sha256 digest, raw.
pub type Digest = [u8; 32];

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong reading, writing or making keys and signatures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key or signature text is malformed.
    #[error("{what}: {message}")]
    Format {
        /// Which text (and line) is wrong: `line 2 of trusted-keys`, `the signature`.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `keygen` would overwrite a key.
    #[error("{} already exists: refusing to overwrite a key", path.display())]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

/// The sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// Parses a sha256 written as 64 hex digits (either case).
pub fn parse_sha256(hex: &str) -> Result<Digest> {
    let invalid = |message: String| Error::Format { what: format!("sha256 {hex:?}"), message };
    if hex.len() != 64 {
        return Err(invalid(format!("{} characters, expected 64 hex digits", hex.len())));
    }
    let mut digest = [0; 32];
    hex::decode_to_slice(hex, &mut digest).map_err(|e| invalid(e.to_string()))?;
    Ok(digest)
}

/// The message a signature over an artifact whose sha256 is `digest` signs: [`DOMAIN`] then the
/// digest's raw bytes.
pub fn signed_message(digest: &Digest) -> Vec<u8> {
    [DOMAIN, digest.as_slice()].concat()
}

/// Which key: the first 8 bytes of sha256(public key), shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn of(key: &VerifyingKey) -> Self {
        let digest = sha256(key.as_bytes());
        Self(digest[..8].try_into().expect("8 of 32 bytes"))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut id = [0; 8];
        match hex::decode_to_slice(text, &mut id) {
            Ok(()) => Ok(Self(id)),
            Err(_) => Err(format!("key id {text:?} is not 16 hex digits")),
        }
    }
}

/// A secret signing key and its id.
pub struct SecretKey {
    id: KeyId,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A new key from the operating system's random number generator.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(Self::from_signing_key(key))
    }

    fn from_signing_key(key: SigningKey) -> Self {
        Self { id: KeyId::of(&key.verifying_key()), key }
    }

    /// Its id (the same as its public key's).
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Its public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey { id: self.id, key: self.key.verifying_key() }
    }

    /// Signs the artifact whose sha256 is `digest` (see [`signed_message`]).
    pub fn sign(&self, digest: &Digest) -> Signature {
        use ed25519_dalek::Signer;
        Signature { key_id: self.id, signature: self.key.sign(&signed_message(digest)) }
    }

    /// Parses a secret key file's text.
    pub fn parse(text: &str) -> Result<Self> {
        let (what, line) = single_entry(text, "the secret key")?;
        let (id, seed) = parse_entry::<32>(line, SECRET_TAG)
            .map_err(|message| Error::Format { what: what.clone(), message })?;
        let key = Self::from_signing_key(SigningKey::from_bytes(&seed));
        check_id(id, key.id).map_err(|message| Error::Format { what, message })?;
        Ok(key)
    }

    /// Reads a secret key file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read(path)?).map_err(|e| e.in_file(path))
    }

    /// The secret key file's text: a comment line and the entry.
    pub fn to_text(&self) -> String {
        format!(
            "untrusted comment: pedestal secret key {id} (keep it private)\n{}\n",
            entry(SECRET_TAG, self.id, &self.key.to_bytes()),
            id = self.id
        )
    }
}

/// A public key and its id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    id: KeyId,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    /// Its id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Whether `signature` was made with this key over the artifact whose sha256 is `digest`.
    /// Strict verification: no malleable or small-order encodings.
    pub fn verifies(&self, digest: &Digest, signature: &Signature) -> bool {
        signature.key_id == self.id
            && self.key.verify_strict(&signed_message(digest), &signature.signature).is_ok()
    }

    /// Parses a public key file's text (exactly one key).
    pub fn parse(text: &str) -> Result<Self> {
        let (what, line) = single_entry(text, "the public key")?;
        Self::parse_entry(line).map_err(|message| Error::Format { what, message })
    }

    fn parse_entry(line: &str) -> Result<Self, String> {
        let (id, bytes) = parse_entry::<32>(line, PUBLIC_TAG)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 public key: {e}"))?;
        let actual = KeyId::of(&key);
        check_id(id, actual)?;
        Ok(Self { id, key })
    }

    /// The public key file's text: a comment line and the entry.
    pub fn to_text(&self) -> String {
        format!(
            "untrusted comment: pedestal public key {id}\n{}\n",
            entry(PUBLIC_TAG, self.id, self.key.as_bytes()),
            id = self.id
        )
    }
}

/// A detached signature: the id of the key that made it and the 64 signature bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    key_id: KeyId,
    signature: ed25519_dalek::Signature,
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(by {})", self.key_id)
    }
}

impl Signature {
    /// The id of the key that made it (unverified until a trusted key checks it).
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Parses a signature file's text, or the signature line alone (as the
    /// `X-Pedestal-Signature` header carries it).
    pub fn parse(text: &str) -> Result<Self> {
        let (what, line) = single_entry(text, "the signature")?;
        let (key_id, bytes) =
            parse_entry::<64>(line, SIGNATURE_TAG).map_err(|message| Error::Format { what, message })?;
        Ok(Self { key_id, signature: ed25519_dalek::Signature::from_bytes(&bytes) })
    }

    /// Reads a signature file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read(path)?).map_err(|e| e.in_file(path))
    }

    /// The signature line (no comment, no newline): what a `.sig` file holds and the
    /// `X-Pedestal-Signature` header carries.
    pub fn to_line(&self) -> String {
        entry(SIGNATURE_TAG, self.key_id, &self.signature.to_bytes())
    }

    /// A signature file's text: an untrusted comment naming what was signed, and the line.
    pub fn to_text(&self, file_name: &str, digest: &Digest) -> String {
        format!(
            "untrusted comment: signature of {file_name} (sha256 {}) by key {}\n{}\n",
            hex::encode(digest),
            self.key_id,
            self.to_line()
        )
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No trusted key has the signature's key id.
    #[error("it names key {key_id}, which is not a trusted key")]
    UnknownKey {
        /// The key id the signature names.
        key_id: KeyId,
    },
    /// The trusted key with that id did not make this signature over this sha256.
    #[error("it is not key {key_id}'s signature of this sha256")]
    BadSignature {
        /// The key id the signature names.
        key_id: KeyId,
    },
}

/// The keys a base accepts signatures from (`--trusted-keys FILE`): one or more public keys.
/// Rotation is listing the old and the new key, then dropping the old one.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl TrustedKeys {
    /// Parses a trusted-keys file's text: public key entries (the same key twice is fine; two
    /// keys with one id are not), at least one.
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_named(text, "the trusted keys")
    }

    fn parse_named(text: &str, name: &str) -> Result<Self> {
        let mut keys = BTreeMap::new();
        for (number, line) in entries(text) {
            let what = format!("line {number} of {name}");
            let key = PublicKey::parse_entry(line)
                .map_err(|message| Error::Format { what: what.clone(), message })?;
            if let Some(other) = keys.insert(key.id, key.clone())
                && other != key
            {
                let message = format!("two different keys have the id {}", key.id);
                return Err(Error::Format { what, message });
            }
        }
        if keys.is_empty() {
            let message = format!("no `{PUBLIC_TAG} {ALGORITHM} <key id> <base64>` line");
            return Err(Error::Format { what: name.to_owned(), message });
        }
        Ok(Self { keys })
    }

    /// Reads a trusted-keys file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse_named(&read(path)?, &path.display().to_string())
    }

    /// The ids of the keys, in order.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.keys().copied().collect()
    }

    /// Checks `signature` over the artifact whose sha256 is `digest`: the id of the trusted key
    /// that made it, or why not.
    pub fn verify(&self, digest: &Digest, signature: &Signature) -> Result<KeyId, Rejection> {
        let key_id = signature.key_id;
        let key = self.keys.get(&key_id).ok_or(Rejection::UnknownKey { key_id })?;
        if key.verifies(digest, signature) { Ok(key_id) } else { Err(Rejection::BadSignature { key_id }) }
    }
}

/// Where the signature of `file` is kept: beside it, `<file>.sig`.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut path = file.as_os_str().to_owned();
    path.push(".sig");
    PathBuf::from(path)
}

/// The signature beside `file` (`<file>.sig`), if there is one.
pub fn signature_beside(file: &Path) -> Result<Option<Signature>> {
    let path = signature_path(file);
    match fs::read_to_string(&path) {
        Ok(text) => Signature::parse(&text).map(Some).map_err(|e| e.in_file(&path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// Writes a new key pair: the secret key to `path` (mode 0600) and the public key to
/// `<path>.pub`; refuses to overwrite either. Returns the public key file's path.
pub fn write_key_pair(path: &Path, key: &SecretKey) -> Result<PathBuf> {
    let public = {
        let mut p = path.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    };
    for existing in [path, &public] {
        if fs::symlink_metadata(existing).is_ok() {
            return Err(Error::Exists { path: existing.to_owned() });
        }
    }
    create_new(path, 0o600, &key.to_text())?;
    if let Err(e) = create_new(&public, 0o644, &key.public_key().to_text()) {
        // No half pair left behind.
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(public)
}

/// What [`sign_file`] did.
#[derive(Debug)]
pub struct SignedFile {
    /// The signature.
    pub signature: Signature,
    /// The file's sha256.
    pub sha256: Digest,
    /// Where the signature was written (`<file>.sig`).
    pub path: PathBuf,
}

/// Signs `file` with `key` and writes the signature beside it (`<file>.sig`, replacing an
/// older one whole: written to a temporary name and renamed).
pub fn sign_file(key: &SecretKey, file: &Path) -> Result<SignedFile> {
    let bytes = fs::read(file).map_err(|source| Error::Io { path: file.to_owned(), source })?;
    let sha256 = sha256(&bytes);
    let signature = key.sign(&sha256);
    let path = signature_path(file);
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".tmp-{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let io = |source| Error::Io { path: path.clone(), source };
    fs::write(&temp, signature.to_text(&name, &sha256)).map_err(io)?;
    fs::rename(&temp, &path).map_err(|e| {
        let _ = fs::remove_file(&temp);
        io(e)
    })?;
    Ok(SignedFile { signature, sha256, path })
}

impl Error {
    /// Names the file a format error was found in.
    fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Format { what, message } => {
                Self::Format { what: format!("{what} in {}", path.display()), message }
            }
            other => other,
        }
    }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

fn create_new(path: &Path, mode: u32, text: &str) -> Result<()> {
    let io = |source| Error::Io { path: path.to_owned(), source };
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Exists { path: path.to_owned() }
        } else {
            io(e)
        }
    })?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(io)
}

/// The entries of a text: its non-comment lines, with their (1-based) line numbers.
fn entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, line)| (i + 1, line.trim())).filter(|(_, line)| {
        !(line.is_empty() || line.starts_with('#') || line.starts_with("untrusted comment:"))
    })
}

/// The one entry of a key or signature text, named for errors.
fn single_entry<'a>(text: &'a str, name: &str) -> Result<(String, &'a str)> {
    let mut found = entries(text);
    let Some((number, line)) = found.next() else {
        return Err(Error::Format { what: name.to_owned(), message: "it is empty (only comments)".into() });
    };
    if let Some((extra, _)) = found.next() {
        let message = format!("line {extra}: a second entry (one is expected)");
        return Err(Error::Format { what: name.to_owned(), message });
    }
    Ok((format!("line {number} of {name}"), line))
}

/// `<tag> ed25519 <key id> <base64 of N bytes>`.
fn parse_entry<const N: usize>(line: &str, tag: &str) -> Result<(KeyId, [u8; N]), String> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let [found_tag, algorithm, id, payload] = fields[..] else {
        return Err(format!("expected `{tag} {ALGORITHM} <key id> <base64>`, found {} fields", fields.len()));
    };
    if found_tag != tag {
        return Err(format!("expected a `{tag}` line, found `{found_tag}`"));
    }
    if algorithm != ALGORITHM {
        return Err(format!("unknown algorithm {algorithm:?} (only {ALGORITHM})"));
    }
    let id: KeyId = id.parse()?;
    let bytes = BASE64.decode(payload).map_err(|e| format!("the payload is not base64: {e}"))?;
    let bytes: [u8; N] =
        bytes.try_into().map_err(|b: Vec<u8>| format!("the payload is {} bytes, expected {N}", b.len()))?;
    Ok((id, bytes))
}

fn check_id(written: KeyId, actual: KeyId) -> Result<(), String> {
    if written == actual {
        Ok(())
    } else {
        Err(format!("key id {written} does not match the key (whose id is {actual})"))
    }
}

fn entry(tag: &str, id: KeyId, payload: &[u8]) -> String {
    format!("{tag} {ALGORITHM} {id} {}", BASE64.encode(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format_error(result: Result<impl fmt::Debug>) -> String {
        match result {
            Err(Error::Format { message, .. }) => message,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    /// Replaces field `index` (0-based) of the entry line of `text`.
    fn with_field(text: &str, index: usize, value: &str) -> String {
        text.lines()
            .map(|line| {
                if line.starts_with("pedestal-") {
                    let mut fields: Vec<&str> = line.split(' ').collect();
                    fields[index] = value;
                    fields.join(" ")
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn keys_and_signatures_round_trip_through_their_text() {
        let key = SecretKey::generate().unwrap();
        let again = SecretKey::parse(&key.to_text()).unwrap();
        assert_eq!(again.id(), key.id());
        assert_eq!(again.public_key(), key.public_key());
        let public = PublicKey::parse(&key.public_key().to_text()).unwrap();
        assert_eq!(public, key.public_key());

        let digest = sha256(b"module bytes");
        let signature = key.sign(&digest);
        // The whole file, and the line alone (the header form).
        assert_eq!(Signature::parse(&signature.to_text("m.so", &digest)).unwrap(), signature);
        assert_eq!(Signature::parse(&signature.to_line()).unwrap(), signature);
        assert!(public.verifies(&digest, &signature));
        assert!(!public.verifies(&sha256(b"other bytes"), &signature));
        // A key id is 16 hex digits and is what the text says.
        assert_eq!(key.id().to_string().len(), 16);
        assert!(key.public_key().to_text().contains(&key.id().to_string()));
    }

    #[test]
    fn the_signed_message_is_the_domain_and_the_raw_digest() {
        let digest = sha256(b"x");
        let message = signed_message(&digest);
        assert_eq!(&message[..DOMAIN.len()], b"pedestal-module-sha256:");
        assert_eq!(&message[DOMAIN.len()..], &digest);
        // A signature over the raw digest alone (no domain) is not accepted.
        let key = SecretKey::generate().unwrap();
        let raw = Signature { key_id: key.id(), signature: ed25519_dalek::Signer::sign(&key.key, &digest) };
        assert!(!key.public_key().verifies(&digest, &raw));
    }

    #[test]
    fn malformed_texts_are_refused_with_what_is_wrong() {
        let key = SecretKey::generate().unwrap();
        let public = key.public_key().to_text();
        let signature = key.sign(&sha256(b"m")).to_line();

        let check = |result: Result<PublicKey>, expected: &str| {
            let message = format_error(result);
            assert!(message.contains(expected), "{message:?} does not say {expected:?}");
        };
        check(PublicKey::parse(&with_field(&public, 3, "not*base64")), "not base64");
        check(PublicKey::parse(&with_field(&public, 3, &BASE64.encode([1u8; 31]))), "31 bytes, expected 32");
        check(PublicKey::parse(&with_field(&public, 2, "0000000000000000")), "does not match the key");
        check(PublicKey::parse(&with_field(&public, 2, "xyz")), "not 16 hex digits");
        check(PublicKey::parse(&with_field(&public, 1, "rsa")), "unknown algorithm");
        check(
            PublicKey::parse(&with_field(&public, 0, "pedestal-signature")),
            "expected a `pedestal-public-key` line",
        );
        check(PublicKey::parse("untrusted comment: nothing else\n"), "empty");
        check(PublicKey::parse(&format!("{public}{public}")), "a second entry");
        check(PublicKey::parse("pedestal-public-key ed25519 abc"), "found 3 fields");

        let message = format_error(Signature::parse(&with_field(&signature, 3, &BASE64.encode([0u8; 63]))));
        assert!(message.contains("63 bytes, expected 64"), "{message}");
        let message = format_error(Signature::parse(&with_field(&signature, 3, "@@@@")));
        assert!(message.contains("not base64"), "{message}");
        let message = format_error(SecretKey::parse(&with_field(&key.to_text(), 2, "0123456789abcdef")));
        assert!(message.contains("does not match the key"), "{message}");
        // A public key is not a secret key.
        let message = format_error(SecretKey::parse(&public));
        assert!(message.contains("expected a `pedestal-secret-key` line"), "{message}");
    }

    #[test]
    fn trusted_keys_accept_each_listed_key_and_refuse_others() {
        let (old, new, stranger) =
            (SecretKey::generate().unwrap(), SecretKey::generate().unwrap(), SecretKey::generate().unwrap());
        let file = format!(
            "# rotation: old and new\n{}\n{}",
            old.public_key().to_text(),
            new.public_key().to_text()
        );
        let trusted = TrustedKeys::parse(&file).unwrap();
        assert_eq!(trusted.ids().len(), 2);
        let digest = sha256(b"module");
        assert_eq!(trusted.verify(&digest, &old.sign(&digest)), Ok(old.id()));
        assert_eq!(trusted.verify(&digest, &new.sign(&digest)), Ok(new.id()));
        assert_eq!(
            trusted.verify(&digest, &stranger.sign(&digest)),
            Err(Rejection::UnknownKey { key_id: stranger.id() })
        );
        // Another artifact's signature, and a signature claiming a trusted id it was not made with.
        assert_eq!(
            trusted.verify(&digest, &old.sign(&sha256(b"other"))),
            Err(Rejection::BadSignature { key_id: old.id() })
        );
        let forged = Signature { key_id: old.id(), ..stranger.sign(&digest) };
        assert_eq!(trusted.verify(&digest, &forged), Err(Rejection::BadSignature { key_id: old.id() }));
    }

    #[test]
    fn a_trusted_keys_file_names_the_bad_line_and_needs_a_key() {
        let key = SecretKey::generate().unwrap();
        let text =
            format!("{}\npedestal-public-key ed25519 0011223344556677 AAAA\n", key.public_key().to_text());
        let Err(Error::Format { what, .. }) = TrustedKeys::parse(&text) else { panic!("accepted") };
        assert_eq!(what, "line 4 of the trusted keys");
        assert!(format_error(TrustedKeys::parse("# nothing\n\n")).contains("no `pedestal-public-key"));
        // The same key twice is harmless.
        let twice = format!("{0}{0}", key.public_key().to_text());
        assert_eq!(TrustedKeys::parse(&twice).unwrap().ids(), vec![key.id()]);
    }

    #[test]
    fn sha256_hex_is_64_hex_digits() {
        let digest = sha256(b"abc");
        assert_eq!(parse_sha256(&hex::encode(digest)).unwrap(), digest);
        assert_eq!(parse_sha256(&hex::encode(digest).to_uppercase()).unwrap(), digest);
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"g".repeat(64)).is_err());
    }

    #[test]
    fn keygen_writes_a_private_pair_once_and_signing_writes_beside_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("release.key");
        let key = SecretKey::generate().unwrap();
        let public = write_key_pair(&path, &key).unwrap();
        assert_eq!(public, dir.path().join("release.key.pub"));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(SecretKey::load(&path).unwrap().id(), key.id());
        let other = SecretKey::generate().unwrap();
        assert!(matches!(write_key_pair(&path, &other), Err(Error::Exists { .. })));
        assert_eq!(SecretKey::load(&path).unwrap().id(), key.id(), "the key was overwritten");
        // Only the .pub left over: still refused, and the secret is not written.
        let lone = dir.path().join("lone.key");
        fs::write(dir.path().join("lone.key.pub"), "x").unwrap();
        assert!(matches!(write_key_pair(&lone, &other), Err(Error::Exists { .. })));
        assert!(!lone.exists());

        let module = dir.path().join("m.so");
        fs::write(&module, b"module bytes").unwrap();
        assert!(signature_beside(&module).unwrap().is_none());
        let signed = sign_file(&key, &module).unwrap();
        assert_eq!(signed.path, dir.path().join("m.so.sig"));
        let read = signature_beside(&module).unwrap().unwrap();
        let trusted = TrustedKeys::load(&public).unwrap();
        assert_eq!(trusted.verify(&sha256(b"module bytes"), &read), Ok(key.id()));
        fs::write(&signed.path, "garbage").unwrap();
        assert!(matches!(signature_beside(&module), Err(Error::Format { .. })));
    }
}
