//! JSON at the terminal, MessagePack on the wire: the arguments and results of calls, and how
//! payloads are shown.
//!
//! JSON to MessagePack is exact: integers stay integers (unsigned when not negative), other
//! numbers become 64-bit floats, objects become maps with string keys in their order.
//! MessagePack to JSON has to choose where JSON has no equivalent: bin that is UTF-8 becomes a
//! string (Macula v0 peers send strings as bin), any other bytes become a string of hex with a
//! `0x` prefix; a map key that is not a string becomes its JSON text; NaN and the infinities
//! become `null`; an extension becomes `{"ext": TYPE, "data": HEX}`.

use std::fmt::Write as _;

use rmpv::Value as Pack;
use serde_json::Value as Json;

/// Parses JSON text and encodes it as one MessagePack value.
pub fn json_to_msgpack(text: &str) -> Result<Vec<u8>, String> {
    let json: Json = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &to_pack(&json))
        .map_err(|e| format!("cannot encode as MessagePack: {e}"))?;
    Ok(bytes)
}

/// Decodes exactly one MessagePack value and renders it as compact JSON text.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<String, String> {
    let mut rest = bytes;
    let pack = rmpv::decode::read_value(&mut rest).map_err(|e| format!("not MessagePack: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "not one MessagePack value: {} bytes follow the first",
            rest.len()
        ));
    }
    serde_json::to_string(&to_json(&pack)).map_err(|e| format!("cannot render as JSON: {e}"))
}

/// A payload for one line of a terminal: UTF-8 text with its control characters escaped
/// (`\n`, `\u{1b}`), so that a message is one line and cannot drive the terminal; any other
/// bytes as hex with a `0x` prefix.
pub fn payload_line(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) => text.chars().fold(String::new(), |mut line, c| {
            if c.is_control() {
                line.extend(c.escape_debug());
            } else {
                line.push(c);
            }
            line
        }),
        Err(_) => hex(payload),
    }
}

fn to_pack(json: &Json) -> Pack {
    match json {
        Json::Null => Pack::Nil,
        Json::Bool(b) => Pack::Boolean(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Pack::from(u)
            } else if let Some(i) = n.as_i64() {
                Pack::from(i)
            } else {
                // serde_json parses every number that is not an i64 or a u64 as a finite f64.
                Pack::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Pack::from(s.as_str()),
        Json::Array(items) => Pack::Array(items.iter().map(to_pack).collect()),
        Json::Object(fields) => Pack::Map(
            fields
                .iter()
                .map(|(k, v)| (Pack::from(k.as_str()), to_pack(v)))
                .collect(),
        ),
    }
}

fn to_json(pack: &Pack) -> Json {
    match pack {
        Pack::Nil => Json::Null,
        Pack::Boolean(b) => Json::Bool(*b),
        Pack::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Json::from(u),
            (None, Some(i)) => Json::from(i),
            (None, None) => Json::Null,
        },
        Pack::F32(f) => float(f64::from(*f)),
        Pack::F64(f) => float(*f),
        Pack::String(s) => match s.as_str() {
            Some(text) => Json::from(text),
            None => Json::from(hex(s.as_bytes())),
        },
        Pack::Binary(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Json::from(text),
            Err(_) => Json::from(hex(bytes)),
        },
        Pack::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Pack::Map(entries) => {
            Json::Object(entries.iter().map(|(k, v)| (key(k), to_json(v))).collect())
        }
        Pack::Ext(kind, data) => serde_json::json!({ "ext": kind, "data": hex(data) }),
    }
}

/// A map key as a JSON object key: a string as itself, anything else as its JSON text.
fn key(pack: &Pack) -> String {
    match to_json(pack) {
        Json::String(s) => s,
        other => other.to_string(),
    }
}

fn float(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 + 2 * bytes.len());
    text.push_str("0x");
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{b:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        msgpack_to_json(&json_to_msgpack(text).unwrap()).unwrap()
    }

    #[test]
    fn json_comes_back_from_messagepack_unchanged() {
        for text in [
            "null",
            "true",
            "0",
            "-1",
            "18446744073709551615",
            "-9223372036854775808",
            "1.5",
            r#""héllo""#,
            r#"{"a":[1,2,"x"]}"#,
            r#"{"z":1,"a":{"nested":[null,false,[]]}}"#,
        ] {
            assert_eq!(round_trip(text), text);
        }
    }

    #[test]
    fn integers_take_the_smallest_messagepack_form() {
        assert_eq!(json_to_msgpack("42").unwrap(), [0x2a]);
        assert_eq!(json_to_msgpack("-1").unwrap(), [0xff]);
        assert_eq!(json_to_msgpack("300").unwrap(), [0xcd, 0x01, 0x2c]);
    }

    #[test]
    fn bad_json_and_bad_messagepack_are_errors() {
        assert!(json_to_msgpack("{").unwrap_err().starts_with("not JSON"));
        assert!(json_to_msgpack("1 2").is_err());
        assert!(msgpack_to_json(&[0x92, 0x01]).is_err());
        assert!(msgpack_to_json(&[0x01, 0x02]).is_err());
        assert!(msgpack_to_json(&[]).is_err());
    }

    #[test]
    fn messagepack_without_a_json_form_gets_a_stated_one() {
        let mut bytes = Vec::new();
        let value = Pack::Map(vec![
            (Pack::from(1), Pack::Binary(b"text".to_vec())),
            (Pack::from("raw"), Pack::Binary(vec![0xff, 0x00])),
            (Pack::from("nan"), Pack::F64(f64::NAN)),
            (Pack::from("ext"), Pack::Ext(5, vec![0xab])),
        ]);
        rmpv::encode::write_value(&mut bytes, &value).unwrap();
        assert_eq!(
            msgpack_to_json(&bytes).unwrap(),
            r#"{"1":"text","raw":"0xff00","nan":null,"ext":{"ext":5,"data":"0xab"}}"#
        );
    }

    #[test]
    fn payloads_are_one_line_of_text_or_hex() {
        assert_eq!(payload_line(b"21.5"), "21.5");
        assert_eq!(payload_line(b"a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(payload_line(&[0xde, 0xad, 0xbe, 0xef]), "0xdeadbeef");
        assert_eq!(payload_line(b""), "");
    }
}
