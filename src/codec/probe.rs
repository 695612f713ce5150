//! Checks, without writing anything, that a value or a map key will encode and decode
//! back through concord's JSON wire format: writes refuse what could not travel, so no
//! accepted value fails later on the wire.
//!
//! JSON has no NaN or infinities (`serde_json` writes them as `null`, which does not
//! read back as a float), and an object key must be a string or a number. A map of
//! concord ([`OrMap`](crate::OrMap)) writes its entries as `[key, value]` pairs when a
//! key is not a JSON object key, so its keys may be of any type that serializes; maps
//! inside a *value* (a `BTreeMap` in a register, say) are written by `serde_json` as
//! objects and must have string or integer keys.

use std::fmt;

use serde::ser::{self, Impossible, Serialize};

use crate::error::{Error, Result};

#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl ser::Error for Refused {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refused(msg.to_string())
    }
}

/// Checks that `value` encodes to JSON and reads back the same.
pub(crate) fn check_value<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    value
        .serialize(Probe)
        .map_err(|e| Error::Unencodable { reason: e.0 })
}

/// Checks that `key` can be a key of a concord map on the wire: it serializes, and
/// holds no NaN or infinite float (a key of any shape is fine: see [`is_object_key`]).
pub(crate) fn check_key<T: Serialize + ?Sized>(key: &T) -> Result<()> {
    key.serialize(Probe).map_err(|e| Error::Unencodable {
        reason: format!("map key: {}", e.0),
    })
}

/// True if `key` serializes as a JSON object key that reads back (a string or an
/// integer, or a newtype or unit variant of one): a map whose keys all do is written
/// as a JSON object, others as an array of `[key, value]` pairs.
pub(crate) fn is_object_key<T: Serialize + ?Sized>(key: &T) -> bool {
    key.serialize(KeyProbe).is_ok()
}

fn non_finite(v: f64) -> std::result::Result<(), Refused> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Refused(format!(
            "the float {v} has no JSON form (NaN and infinities are refused)"
        )))
    }
}

/// Walks a value, refusing non-finite floats and keys that are not JSON keys.
struct Probe;

macro_rules! fine {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name(self, _: $ty) -> std::result::Result<(), Refused> { Ok(()) })*
    };
}

impl ser::Serializer for Probe {
    type Ok = ();
    type Error = Refused;
    type SerializeSeq = Probe;
    type SerializeTuple = Probe;
    type SerializeTupleStruct = Probe;
    type SerializeTupleVariant = Probe;
    type SerializeMap = Probe;
    type SerializeStruct = Probe;
    type SerializeStructVariant = Probe;

    fine!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_char: char,
        serialize_str: &str, serialize_bytes: &[u8]);

    fn serialize_f32(self, v: f32) -> std::result::Result<(), Refused> {
        non_finite(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> std::result::Result<(), Refused> {
        non_finite(v)
    }
    fn serialize_none(self) -> std::result::Result<(), Refused> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> std::result::Result<(), Refused> {
        v.serialize(Probe)
    }
    fn serialize_unit(self) -> std::result::Result<(), Refused> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> std::result::Result<(), Refused> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> std::result::Result<(), Refused> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> std::result::Result<(), Refused> {
        v.serialize(Probe)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> std::result::Result<(), Refused> {
        v.serialize(Probe)
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Probe, Refused> {
        Ok(Probe)
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Probe, Refused> {
        Ok(Probe)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Probe, Refused> {
        Ok(Probe)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Probe, Refused> {
        Ok(Probe)
    }
    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Probe, Refused> {
        Ok(Probe)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> std::result::Result<Probe, Refused> {
        Ok(Probe)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Probe, Refused> {
        Ok(Probe)
    }
}

macro_rules! compound {
    ($trait:ident, $method:ident $(, $key:ident)?) => {
        impl ser::$trait for Probe {
            type Ok = ();
            type Error = Refused;
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $($key: &'static str,)?
                v: &T,
            ) -> std::result::Result<(), Refused> {
                $(let _ = $key;)?
                v.serialize(Probe)
            }
            fn end(self) -> std::result::Result<(), Refused> {
                Ok(())
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);
compound!(SerializeStruct, serialize_field, name);
compound!(SerializeStructVariant, serialize_field, name);

impl ser::SerializeMap for Probe {
    type Ok = ();
    type Error = Refused;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> std::result::Result<(), Refused> {
        k.serialize(KeyProbe)
    }
    fn serialize_value<T: Serialize + ?Sized>(
        &mut self,
        v: &T,
    ) -> std::result::Result<(), Refused> {
        v.serialize(Probe)
    }
    fn end(self) -> std::result::Result<(), Refused> {
        Ok(())
    }
}

/// Accepts what a JSON object key can be.
struct KeyProbe;

fn not_a_key(what: &str) -> std::result::Result<(), Refused> {
    Err(Refused(format!(
        "a map key must serialize as a string or an integer, not {what}"
    )))
}

impl ser::Serializer for KeyProbe {
    type Ok = ();
    type Error = Refused;
    type SerializeSeq = Impossible<(), Refused>;
    type SerializeTuple = Impossible<(), Refused>;
    type SerializeTupleStruct = Impossible<(), Refused>;
    type SerializeTupleVariant = Impossible<(), Refused>;
    type SerializeMap = Impossible<(), Refused>;
    type SerializeStruct = Impossible<(), Refused>;
    type SerializeStructVariant = Impossible<(), Refused>;

    fine!(serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128, serialize_char: char, serialize_str: &str);

    fn serialize_bool(self, _: bool) -> std::result::Result<(), Refused> {
        not_a_key("a bool")
    }
    fn serialize_f32(self, _: f32) -> std::result::Result<(), Refused> {
        not_a_key("a float")
    }
    fn serialize_f64(self, _: f64) -> std::result::Result<(), Refused> {
        not_a_key("a float")
    }
    fn serialize_bytes(self, _: &[u8]) -> std::result::Result<(), Refused> {
        not_a_key("bytes")
    }
    fn serialize_none(self) -> std::result::Result<(), Refused> {
        not_a_key("an option")
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> std::result::Result<(), Refused> {
        not_a_key("an option")
    }
    fn serialize_unit(self) -> std::result::Result<(), Refused> {
        not_a_key("a unit")
    }
    fn serialize_unit_struct(self, _: &'static str) -> std::result::Result<(), Refused> {
        not_a_key("a unit struct")
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> std::result::Result<(), Refused> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> std::result::Result<(), Refused> {
        v.serialize(KeyProbe)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<(), Refused> {
        not_a_key("a newtype variant")
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Self::SerializeSeq, Refused> {
        Err(Refused(
            "a map key must serialize as a string or an integer, not a sequence".into(),
        ))
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Self::SerializeTuple, Refused> {
        Err(Refused(
            "a map key must serialize as a string or an integer, not a tuple".into(),
        ))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleStruct, Refused> {
        Err(Refused(
            "a map key must serialize as a string or an integer, not a tuple struct".into(),
        ))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleVariant, Refused> {
        Err(Refused(
            "a map key must serialize as a string or an integer, not a tuple variant".into(),
        ))
    }
    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Self::SerializeMap, Refused> {
        Err(Refused(
            "a map key must serialize as a string or an integer, not a map".into(),
        ))
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStruct, Refused> {
        Err(Refused(
            "a map key must serialize as a string or an integer, not a struct".into(),
        ))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStructVariant, Refused> {
        Err(Refused(
            "a map key must serialize as a string or an integer, not a struct variant".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_json_can_carry_passes_and_the_rest_is_refused() {
        assert!(check_value(&1.5f64).is_ok());
        assert!(check_value(&vec![Some(2.0f32), None]).is_ok());
        assert!(check_value(&f64::NAN).is_err());
        assert!(check_value(&(1u8, f64::INFINITY)).is_err());
        assert!(check_value(&Some(f32::NEG_INFINITY)).is_err());
        let mut nested = std::collections::BTreeMap::new();
        nested.insert("x", f64::NAN);
        assert!(check_value(&nested).is_err());
        let mut tuple_keys = std::collections::BTreeMap::new();
        tuple_keys.insert((1, 2), 3);
        assert!(check_value(&tuple_keys).is_err());

        assert!(check_key("alice").is_ok());
        assert!(check_key(&42u64).is_ok());
        assert!(check_key(&-7i32).is_ok());
        // Keys of any shape travel (as `[key, value]` pairs), but not a NaN.
        assert!(check_key(&(1, 2)).is_ok());
        assert!(check_key(&true).is_ok());
        assert!(check_key(&1.0f64).is_ok());
        assert!(check_key(&vec!["a"]).is_ok());
        assert!(check_key(&(1, f64::NAN)).is_err());
        assert!(check_key(&Some(f32::INFINITY)).is_err());
        assert!(check_key(&tuple_keys).is_err());

        assert!(is_object_key("alice") && is_object_key(&42u64) && is_object_key(&-7i32));
        assert!(!is_object_key(&(1, 2)));
        assert!(!is_object_key(&true));
        assert!(!is_object_key(&1.0f64));
        assert!(!is_object_key(&vec!["a"]));
        assert!(!is_object_key(&Some("a")));
    }

    /// The probe agrees with serde_json: whatever it accepts encodes and decodes back.
    #[test]
    fn accepted_keys_and_values_round_trip_through_json() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(7u32, vec![0.25f64, -3.0]);
        check_value(&m).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        let back: std::collections::BTreeMap<u32, Vec<f64>> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
