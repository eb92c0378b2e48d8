//! Numbers and booleans that also accept their string form, because environment variables
//! are strings.

use std::fmt::Display;
use std::str::FromStr;

use serde::de::{DeserializeOwned, Error};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_with::{DeserializeAs, SerializeAs};

/// `serde_with` adapter: accepts the native value or a string that parses as it.
#[derive(Debug)]
pub struct Lenient;

impl<'de, T> DeserializeAs<'de, T> for Lenient
where
    T: DeserializeOwned + FromStr,
    T::Err: Display,
{
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(text) => text
                .trim()
                .parse::<T>()
                .map_err(|e| D::Error::custom(format!("invalid value {text:?}: {e}"))),
            other => T::deserialize(other).map_err(D::Error::custom),
        }
    }
}

impl<T: Serialize> SerializeAs<T> for Lenient {
    fn serialize_as<S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }
}
