//! RFC 8785 JSON Canonicalization Scheme for the values audit events hold: objects with keys
//! sorted by UTF-16 code units, no insignificant whitespace, strings with the minimal escapes,
//! integers in their shortest form. Audit events carry no floating-point numbers; one here is
//! refused rather than risk a second canonical form.

use serde_json::{Map, Value};

use crate::error::Error;

/// The canonical UTF-8 bytes of `value`.
pub fn canonical(value: &Value) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out)?;
    Ok(out)
}

pub(crate) fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), Error> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(Error::Internal(
                    "audit events hold integers only; refusing a floating-point number".into(),
                ));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, out)?,
    }
    Ok(())
}

/// The canonical form of a JSON object (RFC 8785 §3.2.3: keys sorted by UTF-16 code units).
pub(crate) fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), Error> {
    let mut keys: Vec<&String> = map.keys().collect();
    // Keys of ASCII or other BMP characters below the surrogates sort the same by bytes; the
    // UTF-16 comparison is needed only when one is at or above U+E000.
    if keys.iter().all(|k| k.bytes().all(|b| b < 0xee)) {
        keys.sort_unstable();
    } else {
        keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    }
    out.push(b'{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write(&map[key], out)?;
    }
    out.push(b'}');
    Ok(())
}

/// RFC 8785 §3.2.2.2: escape `"` `\` and control characters; \b \t \n \f \r by name, other
/// controls as \u00xx (lowercase hex); everything else literally, in UTF-8.
pub(crate) fn write_string(s: &str, out: &mut Vec<u8>) {
    // Runs of bytes that need no escape (everything but '"', '\\' and controls, including
    // every byte of a multi-byte UTF-8 sequence) are copied whole.
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        String::from_utf8(canonical(&v).unwrap()).unwrap()
    }

    #[test]
    fn keys_are_sorted_and_whitespace_removed() {
        assert_eq!(
            canon(json!({"b": 1, "a": [true, null, "x"], "c": {"z": 0, "y": -5}})),
            r#"{"a":[true,null,"x"],"b":1,"c":{"y":-5,"z":0}}"#
        );
    }

    #[test]
    fn strings_use_the_minimal_escapes() {
        assert_eq!(
            canon(json!("a\"b\\c\n\u{1}\u{7f}é€😀")),
            "\"a\\\"b\\\\c\\n\\u0001\u{7f}é€😀\""
        );
    }

    #[test]
    fn sorting_is_by_utf16_code_units_as_rfc_8785_shows() {
        // RFC 8785 §3.2.3's example order: "\r", "1", "\u0080", "ö", "€", "😀", "ﬃ".
        let v = json!({"\u{20ac}": 1, "\r": 2, "\u{fb03}": 3, "1": 4, "\u{1f600}": 5, "\u{80}": 6, "\u{f6}": 7});
        let s = canon(v);
        let order: Vec<usize> = [
            "\\r",
            "\"1\"",
            "\u{80}",
            "\u{f6}",
            "\u{20ac}",
            "\u{1f600}",
            "\u{fb03}",
        ]
        .iter()
        .map(|k| s.find(k).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{s}");
    }

    #[test]
    fn floats_are_refused() {
        assert!(canonical(&json!({"x": 1.5})).is_err());
    }
}
