//! Query strings as the operations API takes them: every parameter known, or `400 BAD_REQUEST`
//! naming the unknown ones; values that do not parse answer the same JSON error.

use axum::{extract::FromRequestParts, http::request::Parts};
use serde::{
    Deserialize,
    de::{self, DeserializeOwned, Visitor},
    forward_to_deserialize_any,
};

use crate::{
    error::{Error, Result},
    error_response::{Answer, Refusal},
};

/// A route's query parameters (a struct deriving `Deserialize`): refuses parameters the struct
/// does not name, so a misspelt or unsupported option (`?sha256=` where nothing checks it)
/// fails loudly instead of being ignored.
pub(crate) struct Params<T>(pub T);

/// The parameters of a route that takes none.
#[derive(Deserialize)]
pub(crate) struct NoParams {}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Answer<Self> {
        parse(parts.uri.query().unwrap_or("")).map(Params).map_err(Refusal)
    }
}

fn parse<T: DeserializeOwned>(query: &str) -> Result<T> {
    let bad = |message: String| Error::BadQuery { message, unknown: Vec::new() };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| bad(e.to_string()))?;
    let known = field_names::<T>();
    let mut unknown: Vec<String> =
        pairs.into_iter().map(|(name, _)| name).filter(|n| !known.contains(&n.as_str())).collect();
    unknown.dedup();
    if !unknown.is_empty() {
        let message = if known.is_empty() {
            format!("unknown parameters {unknown:?}: this route takes none")
        } else {
            format!("unknown parameters {unknown:?}: this route takes {known:?}")
        };
        return Err(Error::BadQuery { message, unknown });
    }
    serde_urlencoded::from_str(query).map_err(|e| bad(culprit::<T>(query).unwrap_or_else(|| e.to_string())))
}

/// Which parameter's value does not parse, and why: serde's message does not name it. Each
/// parameter is tried alone (the routes' parameters are all optional).
fn culprit<T: DeserializeOwned>(query: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    pairs.iter().find_map(|(name, value)| {
        let alone = serde_urlencoded::to_string([(name, value)]).ok()?;
        let error = serde_urlencoded::from_str::<T>(&alone).err()?;
        Some(format!("parameter {name}={value:?}: {error}"))
    })
}

/// The field names a struct's `Deserialize` asks for (its serde names, renames applied), read
/// by a deserializer that records them and stops.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Recorder<'a>(&'a mut &'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for Recorder<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Recorder(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code, reason = "read through Debug")]
    struct Options {
        name: Option<String>,
        #[serde(default, rename = "async")]
        run_async: bool,
    }

    #[test]
    fn names_every_unknown_parameter() {
        let Err(Error::BadQuery { unknown, .. }) = parse::<Options>("name=a&sha256=ff&x=1") else {
            panic!("accepted an unknown parameter");
        };
        assert_eq!(unknown, ["sha256", "x"]);
        let Err(Error::BadQuery { unknown, message }) = parse::<NoParams>("force=true") else {
            panic!("accepted a parameter on a route that takes none");
        };
        assert_eq!(unknown, ["force"]);
        assert!(message.contains("takes none"), "{message}");
    }

    #[test]
    fn known_parameters_parse_and_bad_values_are_errors() {
        let Params(options) = Params(parse::<Options>("name=a&async=true").unwrap());
        assert_eq!((options.name.as_deref(), options.run_async), (Some("a"), true));
        assert!(parse::<NoParams>("").is_ok());
        let Err(Error::BadQuery { unknown, message }) = parse::<Options>("name=a&async=maybe") else {
            panic!("accepted async=maybe");
        };
        assert!(unknown.is_empty() && message.contains("async=\"maybe\""), "{message}");
    }
}
