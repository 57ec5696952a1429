//! A small, strict DER reader and writer for the structures medid builds or parses by hand
//! (OCSP requests and responses, AIA). Definite lengths only, minimal length encoding only,
//! nesting bounded by the input: hostile input yields `None`, never a panic.

/// Universal and context tags medid uses.
pub mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const ENUMERATED: u8 = 0x0a;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const SEQUENCE: u8 = 0x30;

    /// `[n]` constructed (EXPLICIT, or IMPLICIT over a constructed type).
    pub const fn context(n: u8) -> u8 {
        0xa0 | n
    }
    /// `[n]` primitive (IMPLICIT over a primitive type).
    pub const fn context_primitive(n: u8) -> u8 {
        0x80 | n
    }
}

/// Encodes one TLV.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of already-encoded parts.
pub fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag::SEQUENCE, &parts.concat())
}

/// An INTEGER from unsigned big-endian magnitude bytes (adds the sign octet when needed).
pub fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let start = magnitude
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(magnitude.len().saturating_sub(1));
    let trimmed = &magnitude[start.min(magnitude.len())..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.is_empty() || trimmed[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(tag::INTEGER, &content)
}

/// Content octets of an OBJECT IDENTIFIER (X.690 §8.19).
pub fn oid_content(arcs: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push_base128 = |mut v: u64| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        out.extend(tmp.into_iter().rev());
    };
    push_base128(arcs[0] * 40 + arcs[1]);
    for arc in &arcs[2..] {
        push_base128(*arc);
    }
    out
}

pub fn oid(arcs: &[u64]) -> Vec<u8> {
    tlv(tag::OID, &oid_content(arcs))
}

/// GeneralizedTime `YYYYMMDDHHMMSSZ` (RFC 5280 §4.1.2.5.2: no fractional seconds).
pub fn generalized_time(t: time::OffsetDateTime) -> Vec<u8> {
    let t = t.to_offset(time::UtcOffset::UTC);
    let s = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    tlv(tag::GENERALIZED_TIME, s.as_bytes())
}

/// A reader over DER bytes.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    data: &'a [u8],
}

/// One element: its tag, content, and complete encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub raw: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// The next element, whatever its tag.
    pub fn any(&mut self) -> Option<Element<'a>> {
        let (&tag, rest) = self.data.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // high tag numbers: never used by what we parse
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None; // indefinite (BER) or absurd lengths
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if len < 0x80 || rest[0] == 0 {
                return None; // not minimal: DER requires the short form
            }
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let header = self.data.len() - rest.len();
        let raw = &self.data[..header + len];
        let content = &rest[..len];
        self.data = &rest[len..];
        Some(Element { tag, content, raw })
    }

    /// The next element, which must have `tag`.
    pub fn expect(&mut self, tag: u8) -> Option<Element<'a>> {
        if self.peek_tag()? != tag {
            return None;
        }
        self.any()
    }

    /// The next element if it has `tag`.
    pub fn optional(&mut self, tag: u8) -> Option<Element<'a>> {
        if self.peek_tag() == Some(tag) {
            self.any()
        } else {
            None
        }
    }
}

/// Checks that `data` is exactly one DER element whose every constructed descendant uses
/// definite, minimal lengths (X.690 §10.1), nested at most `max_depth` deep. Primitive contents
/// are left to the parser. Iterative, so hostile nesting cannot exhaust the stack.
pub fn check_strict(data: &[u8], max_depth: usize) -> Result<(), &'static str> {
    let mut top = Reader::new(data);
    let first = top.any().ok_or("not DER: bad tag or length encoding")?;
    if !top.is_empty() {
        return Err("trailing bytes after the DER element");
    }
    let mut stack: Vec<(Reader<'_>, usize)> = Vec::new();
    if first.tag & 0x20 != 0 {
        stack.push((first.reader(), 1));
    }
    while let Some((mut r, depth)) = stack.pop() {
        if depth > max_depth {
            return Err("nested too deeply");
        }
        while !r.is_empty() {
            let el = r
                .any()
                .ok_or("not DER: bad tag or length encoding inside")?;
            // BIT STRING and OCTET STRING may wrap DER (extensions, keys); constructed forms of
            // them are BER-only and refused by the tag check below.
            if el.tag & 0x20 != 0 {
                if el.tag == 0x23 || el.tag == 0x24 {
                    return Err("not DER: constructed string");
                }
                stack.push((el.reader(), depth + 1));
            }
        }
    }
    Ok(())
}

impl<'a> Element<'a> {
    pub fn reader(&self) -> Reader<'a> {
        Reader::new(self.content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_encoding_matches_known_der() {
        // 1.3.6.1.5.5.7.1.1 (id-pe-authorityInfoAccess) is 2b 06 01 05 05 07 01 01.
        assert_eq!(
            oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1]),
            [0x2b, 6, 1, 5, 5, 7, 1, 1]
        );
        assert_eq!(oid_content(&[2, 5, 4, 5]), [0x55, 4, 5]);
        // 1.2.840.10045.2.1: 2a 86 48 ce 3d 02 01
        assert_eq!(
            oid_content(&[1, 2, 840, 10045, 2, 1]),
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 2, 1]
        );
    }

    #[test]
    fn long_lengths_use_the_long_form_and_read_back() {
        let enc = tlv(tag::OCTET_STRING, &[7u8; 300]);
        assert_eq!(&enc[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let el = Reader::new(&enc).any().unwrap();
        assert_eq!(el.content.len(), 300);
        assert_eq!(el.raw, &enc[..]);
    }

    #[test]
    fn integers_get_a_sign_octet_only_when_needed() {
        assert_eq!(unsigned_integer(&[0x7f]), [2, 1, 0x7f]);
        assert_eq!(unsigned_integer(&[0x80]), [2, 2, 0, 0x80]);
        assert_eq!(unsigned_integer(&[0, 0, 5]), [2, 1, 5]);
        assert_eq!(unsigned_integer(&[]), [2, 1, 0]);
    }

    #[test]
    fn ber_and_truncated_input_is_refused() {
        assert!(
            Reader::new(&[0x30, 0x80, 0, 0]).any().is_none(),
            "indefinite length"
        );
        assert!(
            Reader::new(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5])
                .any()
                .is_none(),
            "non-minimal"
        );
        assert!(
            Reader::new(&[0x04, 0x05, 1, 2]).any().is_none(),
            "truncated"
        );
        assert!(Reader::new(&[]).any().is_none());
    }

    #[test]
    fn strict_check_walks_every_level_iteratively() {
        let ok = sequence(&[&sequence(&[&tlv(tag::INTEGER, &[1])]), &tlv(tag::NULL, &[])]);
        assert!(check_strict(&ok, 8).is_ok());
        // A non-minimal length two levels down.
        let inner_ber = [0x30, 0x81, 0x03, 0x02, 0x01, 0x01];
        let bad = sequence(&[&sequence(&[&inner_ber])]);
        assert!(check_strict(&bad, 8).is_err());
        let mut deep = tlv(tag::NULL, &[]);
        for _ in 0..100 {
            deep = sequence(&[&deep]);
        }
        assert_eq!(check_strict(&deep, 32), Err("nested too deeply"));
    }

    #[test]
    fn generalized_time_has_no_fraction() {
        let t = time::macros::datetime!(2026-11-23 01:02:03 UTC);
        assert_eq!(generalized_time(t), tlv(0x18, b"20261123010203Z"));
    }
}
