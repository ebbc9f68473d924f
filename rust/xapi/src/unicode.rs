//! Naming the object and field of an answer that holds text which is not valid Unicode.
//!
//! xapi stores strings as bytes, and JSON-RPC can carry a UTF-16 surrogate escape without its
//! partner (`"\udc80"`); neither is a Rust string, so such an answer cannot be taken. One VM with
//! such a name would otherwise make the whole pool unreadable with only a byte offset to go on:
//! this finds which record and which field hold it, so the error says what to fix in XAPI.

use serde_json::Value;

/// Stands for each piece that is not Unicode: a noncharacter, which xapi's text does not hold.
const MARK: char = '\u{10FFFF}';

/// What the message says about such text.
const NOT_UNICODE: &str =
    "is not valid Unicode (a lone UTF-16 surrogate escape or bytes that are not UTF-8)";

/// `Some(description)` when `body` fails to parse because some text in it is not Unicode, e.g.
/// `VM 0b1c… (web): platform["device-model-args"] is not valid Unicode (…)`; `None` when the
/// answer is wrong in some other way (or cannot be read even with that text marked).
pub(crate) fn describe(method: &str, body: &[u8]) -> Option<String> {
    let (text, marked) = mark_bad_text(body);
    if !marked {
        return None;
    }
    let value: Value = serde_json::from_str(&text).ok()?;
    let result = match &value {
        Value::Object(answer) if answer.contains_key("result") => &answer["result"],
        other => other,
    };
    let class = method.split('.').next().unwrap_or("object");
    let found = if is_record(result) {
        locate_in_record(result)
    } else if let Value::Object(records) = result {
        records
            .values()
            .filter(|r| is_record(r))
            .find_map(locate_in_record)
    } else {
        None
    };
    Some(match found {
        Some((who, field)) => format!("{class} {who}: {field} {NOT_UNICODE}"),
        None => format!("the answer {NOT_UNICODE}"),
    })
}

fn is_record(v: &Value) -> bool {
    v.get("uuid").is_some_and(Value::is_string)
}

/// (the record as named in messages, the field) of the first text in `record` that holds a mark.
fn locate_in_record(record: &Value) -> Option<(String, String)> {
    let Value::Object(fields) = record else {
        return None;
    };
    let field = fields.iter().find_map(|(name, v)| locate_field(name, v))?;
    let uuid = fields.get("uuid").and_then(Value::as_str).unwrap_or("?");
    let who = match fields.get("name_label").and_then(Value::as_str) {
        Some(n) if !n.contains(MARK) && n.chars().count() <= 80 => format!("{uuid} ({n})"),
        _ => uuid.to_string(),
    };
    Some((who.replace(MARK, "\u{FFFD}"), field))
}

fn locate_field(name: &str, v: &Value) -> Option<String> {
    let name = name.replace(MARK, "\u{FFFD}");
    match v {
        Value::String(s) if s.contains(MARK) => Some(name),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains(MARK) {
                Some(format!(
                    "{name} has a key {:?} that",
                    k.replace(MARK, "\u{FFFD}")
                ))
            } else {
                locate_field(k, v).map(|inner| format!("{name}[{inner:?}]"))
            }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| locate_field("", v).map(|_| format!("{name}[{i}]"))),
        _ => None,
    }
}

/// `body` as text, with bytes that are not UTF-8 and surrogate escapes without a partner each
/// replaced by [`MARK`]; and whether anything was replaced.
fn mark_bad_text(body: &[u8]) -> (String, bool) {
    let mut text = String::with_capacity(body.len());
    let mut marked = false;
    for chunk in body.utf8_chunks() {
        text.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            text.push(MARK);
            marked = true;
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut rest = text.as_str();
    while let Some(c) = rest.chars().next() {
        if !in_string {
            in_string = c == '"';
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        match c {
            '"' => {
                in_string = false;
                out.push(c);
                rest = &rest[1..];
            }
            '\\' if rest[1..].starts_with('u') => {
                let unit = hex4(&rest[2..]);
                match unit {
                    Some(0xD800..=0xDBFF)
                        if rest[6..].starts_with("\\u")
                            && matches!(hex4(&rest[8..]), Some(0xDC00..=0xDFFF)) =>
                    {
                        out.push_str(&rest[..12]);
                        rest = &rest[12..];
                    }
                    Some(0xD800..=0xDFFF) => {
                        out.push(MARK);
                        marked = true;
                        rest = &rest[6..];
                    }
                    _ => {
                        out.push_str(&rest[..2]);
                        rest = &rest[2..];
                    }
                }
            }
            '\\' => {
                // Any other escape: the backslash and the escaped character, whatever it is.
                let next = rest[1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&rest[..1 + next]);
                rest = &rest[1 + next..];
            }
            _ => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    (out, marked)
}

/// The value of four hex digits at the start of `s`.
fn hex4(s: &str) -> Option<u32> {
    let digits = s.get(..4)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "0b1c7f9e-1111-2222-3333-444455556666";

    fn answer(record: &str) -> Vec<u8> {
        format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"OpaqueRef:a":{record}}}}}"#).into_bytes()
    }

    #[test]
    fn a_lone_surrogate_in_a_name_names_the_vm_and_the_field() {
        let body = answer(&format!(r#"{{"uuid":"{VM}","name_label":"web\udc80"}}"#));
        assert!(serde_json::from_slice::<Value>(&body).is_err());
        let d = describe("VM.get_all_records_where", &body).unwrap();
        assert_eq!(d, format!("VM {VM}: name_label {NOT_UNICODE}"));
    }

    #[test]
    fn a_lone_surrogate_in_a_map_value_names_the_key() {
        let body = answer(&format!(
            r#"{{"uuid":"{VM}","name_label":"web","platform":{{"device-model-args":"-a \ud800 b"}}}}"#
        ));
        let d = describe("VM.get_all_records_where", &body).unwrap();
        assert_eq!(
            d,
            format!(r#"VM {VM} (web): platform["device-model-args"] {NOT_UNICODE}"#)
        );
    }

    #[test]
    fn a_lone_surrogate_in_a_map_key_is_named_as_a_key() {
        let body = answer(&format!(
            r#"{{"uuid":"{VM}","name_label":"web","other_config":{{"xo:\udfff":"1"}}}}"#
        ));
        let d = describe("VM.get_all_records_where", &body).unwrap();
        assert!(
            d.starts_with(&format!(
                "VM {VM} (web): other_config has a key \"xo:\u{FFFD}\" that is not valid"
            )),
            "{d}"
        );
    }

    #[test]
    fn raw_bytes_that_are_not_utf8_are_found_too() {
        let mut body = answer(&format!(
            r#"{{"uuid":"{VM}","name_label":"web","other_config":{{"n":"X"}}}}"#
        ));
        let at = body.iter().position(|&b| b == b'X').unwrap();
        body.splice(at..=at, [0xff, 0xfe]);
        assert!(serde_json::from_slice::<Value>(&body).is_err());
        let d = describe("VM.get_all_records_where", &body).unwrap();
        assert_eq!(
            d,
            format!(r#"VM {VM} (web): other_config["n"] {NOT_UNICODE}"#)
        );
    }

    #[test]
    fn a_single_record_answer_is_understood() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"result":{{"uuid":"{VM}","name_label":"\udc80"}}}}"#
        );
        let d = describe("VM.get_record", body.as_bytes()).unwrap();
        assert_eq!(d, format!("VM {VM}: name_label {NOT_UNICODE}"));
    }

    #[test]
    fn valid_pairs_escaped_backslashes_and_other_faults_are_not_blamed_on_unicode() {
        // a surrogate pair (an emoji), and a backslash followed by "udc80" as plain text
        let body = answer(&format!(
            r#"{{"uuid":"{VM}","name_label":"\ud83d\ude00 \\udc80"}}"#
        ));
        assert!(serde_json::from_slice::<Value>(&body).is_ok());
        assert_eq!(describe("VM.get_record", &body), None);
        assert_eq!(describe("VM.get_record", b"{\"result\": [1,"), None);
        // a truncated escape or answer must not panic
        for cut in [
            b"\"\\u".as_slice(),
            b"\"\\ud8",
            b"\"\\ud800\\u",
            b"\"\\",
            b"\xff",
        ] {
            let _ = describe("VM.get_record", cut);
        }
    }
}
