//! The wire encoding: how values cross the boundary as bytes, shared by the SDK and the base.
//!
//! SPI arguments and results, base-service payloads and errors are JSON; a `pedestal.kv` `put`
//! is framed by hand so a value of any bytes travels without escaping. Both sides use these
//! functions, so the framing is written once. Layer: above `abi.rs`, below everything else.

use std::fmt;

use abi_stable::std_types::{RSlice, RStr};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::abi;

/// What went wrong in an SPI call: the implementation's own error, or the call itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpiError {
    /// A stable code: the implementation's own, or one of the constants on this type.
    pub code: String,
    /// What happened.
    pub message: String,
}

impl SpiError {
    /// The implementing module was unloaded (or is stopping): the handle is stale.
    pub const MODULE_GONE: &'static str = "MODULE_GONE";
    /// The implementation panicked.
    pub const PANICKED: &'static str = "SPI_PANICKED";
    /// The module does not implement this method (built against an older declaration).
    pub const UNKNOWN_METHOD: &'static str = "UNKNOWN_METHOD";
    /// The arguments or the result could not be (de)serialized.
    pub const BAD_PAYLOAD: &'static str = "BAD_PAYLOAD";
    /// The implementation did not answer within the caller's timeout.
    pub const TIMEOUT: &'static str = "SPI_TIMEOUT";
    /// No module implements the SPI (or none matched the selector).
    pub const NOT_IMPLEMENTED: &'static str = "SPI_NOT_IMPLEMENTED";
    /// The implementation was built against another major version of the SPI's declaration.
    pub const INCOMPATIBLE: &'static str = "SPI_INCOMPATIBLE";
    /// The call cannot be made here: not inside a base, or a base too old for it.
    pub const UNAVAILABLE: &'static str = "SERVICE_UNAVAILABLE";

    /// An error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into() }
    }

    /// Whether the callee did not know the method.
    pub fn is_unknown_method(&self) -> bool {
        self.code == Self::UNKNOWN_METHOD
    }
}

impl fmt::Display for SpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for SpiError {}

/// Serializes arguments or a result.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SpiError> {
    serde_json::to_vec(value).map_err(|e| SpiError::new(SpiError::BAD_PAYLOAD, e.to_string()))
}

/// Deserializes arguments or a result.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SpiError> {
    serde_json::from_slice(bytes).map_err(|e| SpiError::new(SpiError::BAD_PAYLOAD, e.to_string()))
}

/// Deserializes a method's arguments, sent as a JSON array (`[]` for none).
pub fn decode_args<T: DeserializeOwned>(payload: &[u8]) -> Result<T, SpiError> {
    match decode(payload) {
        // No arguments: serde's unit is `null`, callers outside Rust send `[]`.
        Err(_) if payload.trim_ascii() == b"[]" => decode(b"null"),
        other => other,
    }
}

/// Borrowed ABI views of every header in `headers`, as [`abi::RequestView`] and
/// [`abi::ResponseView`] carry them. The views live as long as the borrow of `headers`.
pub fn header_views(headers: &http::HeaderMap) -> Vec<abi::Header<'_>> {
    headers
        .iter()
        .map(|(name, value)| abi::Header {
            name: RStr::from_str(name.as_str()),
            value: RSlice::from_slice(value.as_bytes()),
        })
        .collect()
}

/// Frames a `pedestal.kv` `put`: the key's length (`u32`, little-endian), the key, the value.
pub fn encode_kv_put(key: &str, value: &[u8]) -> Result<Vec<u8>, SpiError> {
    let length = u32::try_from(key.len())
        .map_err(|_| SpiError::new(SpiError::BAD_PAYLOAD, "the key is longer than 4 GiB"))?;
    let mut payload = Vec::with_capacity(4 + key.len() + value.len());
    payload.extend_from_slice(&length.to_le_bytes());
    payload.extend_from_slice(key.as_bytes());
    payload.extend_from_slice(value);
    Ok(payload)
}

/// Splits a payload framed by [`encode_kv_put`] into its key and its value.
pub fn decode_kv_put(payload: &[u8]) -> Result<(&str, &[u8]), SpiError> {
    let bad = |message: &str| SpiError::new(SpiError::BAD_PAYLOAD, message);
    let length = payload.get(..4).ok_or_else(|| bad("a put starts with the key's length"))?;
    let length = u32::from_le_bytes(length.try_into().expect("four bytes")) as usize;
    let key = payload.get(4..4 + length).ok_or_else(|| bad("the key is cut short"))?;
    let key = std::str::from_utf8(key).map_err(|_| bad("keys are UTF-8 text"))?;
    Ok((key, &payload[4 + length..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_frame_round_trips() {
        for (key, value) in [("greeting", &b"hello"[..]), ("", &b""[..]), ("k", &[0, 1, 255][..])] {
            let framed = encode_kv_put(key, value).unwrap();
            assert_eq!(decode_kv_put(&framed).unwrap(), (key, value));
        }
    }

    #[test]
    fn a_broken_put_frame_says_what_is_wrong() {
        let check = |payload: &[u8], message: &str| {
            let error = decode_kv_put(payload).unwrap_err();
            assert_eq!((error.code.as_str(), error.message.as_str()), (SpiError::BAD_PAYLOAD, message));
        };
        check(b"\x01\x00", "a put starts with the key's length");
        check(b"\x05\x00\x00\x00ab", "the key is cut short");
        check(b"\x01\x00\x00\x00\xff", "keys are UTF-8 text");
    }
}
