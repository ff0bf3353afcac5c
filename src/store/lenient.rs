//! Reading a stored row tolerantly. The API objects refuse unknown fields, so a typo in a
//! request is an error; a row is no request: a newer daemon may have stored a field this one
//! does not know, and refusing the row would stop this daemon from starting on a database it
//! shares with the version it was rolled back from. So a row is read through a deserializer
//! that drops, at every level, the keys a struct does not declare, before the struct's own
//! (strict) code sees them. The object types stay one set, strict for the wire.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde_json::{Error, Value};

/// `json`, a stored row, as a `T`, ignoring fields `T` (or anything nested in it) lacks.
pub(super) fn from_row<T: DeserializeOwned>(json: &str) -> Result<T, Error> {
    T::deserialize(Lenient(serde_json::from_str(json)?))
}

/// A JSON value whose objects, when read as structs, keep only the struct's fields.
struct Lenient(Value);

impl<'de> IntoDeserializer<'de, Error> for Lenient {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Lenient {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => n.deserialize_any(visitor),
            Value::String(s) => visitor.visit_string(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(Lenient));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Value::Object(entries) => {
                let mut map =
                    MapDeserializer::new(entries.into_iter().map(|(k, v)| (k, Lenient(v))));
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let Value::Object(mut entries) = self.0 else {
            return self.deserialize_any(visitor);
        };
        entries.retain(|key, _| {
            let known = fields.contains(&key.as_str());
            if !known {
                tracing::debug!(
                    object = name,
                    field = %key,
                    "stored field unknown to this version ignored (written by a newer one)"
                );
            }
            known
        });
        Lenient(Value::Object(entries)).deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(variant) => visitor.visit_enum(variant.into_deserializer()),
            // Stored enums are unit variants (phases); one with content is read as JSON has it.
            other => other.deserialize_enum(name, variants, visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::from_row;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Inner,
        #[serde(default)]
        list: Vec<Inner>,
        maybe: Option<Inner>,
        free: serde_json::Value,
        phase: Phase,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: u32,
        f: f64,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    enum Phase {
        Ready,
    }

    #[test]
    fn unknown_fields_are_dropped_at_every_level_and_free_json_is_kept_whole() {
        let row = r#"{"inner": {"n": 1, "f": 2, "new": [1]}, "list": [{"n": 3, "f": 0.5, "x": {}}],
            "maybe": {"n": 4, "f": -1.5, "y": null}, "free": {"any": "key"}, "phase": "Ready",
            "added": {"deep": true}}"#;
        assert!(
            serde_json::from_str::<Outer>(row).is_err(),
            "strict reading refuses it"
        );
        let read: Outer = from_row(row).unwrap();
        assert_eq!(
            read,
            Outer {
                inner: Inner { n: 1, f: 2.0 },
                list: vec![Inner { n: 3, f: 0.5 }],
                maybe: Some(Inner { n: 4, f: -1.5 }),
                free: serde_json::json!({"any": "key"}),
                phase: Phase::Ready,
            }
        );
    }

    #[test]
    fn what_a_row_lacks_or_gets_wrong_is_still_an_error() {
        for bad in [
            r#"{"inner": {"n": 1}, "maybe": null, "free": 0, "phase": "Ready"}"#,
            r#"{"inner": {"n": -1, "f": 0}, "maybe": null, "free": 0, "phase": "Ready"}"#,
            r#"{"inner": {"n": 1, "f": 0}, "maybe": null, "free": 0, "phase": "Newer"}"#,
            r#"{"inner": "#,
        ] {
            assert!(from_row::<Outer>(bad).is_err(), "{bad}");
        }
        let none: Outer = from_row(
            r#"{"inner": {"n": 1, "f": 0}, "maybe": null, "free": null, "phase": "Ready"}"#,
        )
        .unwrap();
        assert_eq!(none.maybe, None);
    }
}
