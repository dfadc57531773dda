//! The key=value\0 text format of Login and Text PDUs (RFC 7143 §6.1).

/// Longest key name the RFC allows.
pub const MAX_KEY_LEN: usize = 63;
/// Longest value for ordinary keys.
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value for keys that carry binary blobs (CHAP challenges and
/// responses, encoded in hex or base64).
pub const MAX_LONG_VALUE_LEN: usize = 8192;
/// Most text the target accumulates across continued PDUs before giving up.
pub const MAX_TEXT_LEN: usize = 65536;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text is not valid UTF-8")]
    NotUtf8,
    #[error("pair without '=': {0:?}")]
    NoEquals(String),
    #[error("invalid key name {0:?}")]
    BadKey(String),
    #[error("value of {0} is too long")]
    ValueTooLong(String),
    #[error("key {0} appears twice")]
    Duplicate(String),
    #[error("text exceeds {MAX_TEXT_LEN} bytes")]
    TooLong,
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_'))
}

fn value_limit(key: &str) -> usize {
    if key.starts_with("CHAP_") {
        MAX_LONG_VALUE_LEN
    } else {
        MAX_VALUE_LEN
    }
}

/// Splits a complete text data segment into pairs, in order. Empty strings
/// between NULs (padding or a trailing NUL) are skipped.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    if data.len() > MAX_TEXT_LEN {
        return Err(TextError::TooLong);
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for raw in data.split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TextError::NoEquals(truncate(s)))?;
        if !valid_key(k) {
            return Err(TextError::BadKey(truncate(k)));
        }
        if v.len() > value_limit(k) {
            return Err(TextError::ValueTooLong(k.to_string()));
        }
        if pairs.iter().any(|(pk, _)| pk == k) {
            return Err(TextError::Duplicate(k.to_string()));
        }
        pairs.push((k.to_string(), v.to_string()));
    }
    Ok(pairs)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Builds a text data segment.
#[derive(Debug, Default, Clone)]
pub struct TextBuilder {
    buf: Vec<u8>,
}

impl TextBuilder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn add(&mut self, key: &str, value: &str) -> &mut Self {
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.push(b'=');
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_builds_them_back() {
        let mut b = TextBuilder::new();
        b.add("InitiatorName", "iqn.2024-01.test:a")
            .add("SessionType", "Normal");
        let pairs = parse(b.as_bytes()).expect("parse");
        assert_eq!(
            pairs[0],
            ("InitiatorName".into(), "iqn.2024-01.test:a".into())
        );
        assert_eq!(pairs[1].1, "Normal");
    }

    #[test]
    fn value_may_contain_equals_and_be_empty() {
        let pairs = parse(b"SendTargets=\0X=a=b\0").expect("parse");
        assert_eq!(
            pairs,
            vec![
                ("SendTargets".into(), "".into()),
                ("X".into(), "a=b".into())
            ]
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(parse(b"NoEquals\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(parse(b"=v\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"bad key=v\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"A=1\0A=2\0"), Err(TextError::Duplicate(_))));
        assert!(matches!(
            parse(&[b'A', b'=', 0xff, 0]),
            Err(TextError::NotUtf8)
        ));
        let long = format!("K={}\0", "v".repeat(300));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(TextError::ValueTooLong(_))
        ));
        let chap = format!("CHAP_R=0x{}\0", "a".repeat(300));
        assert!(parse(chap.as_bytes()).is_ok());
        let key = format!("{}=1\0", "K".repeat(64));
        assert!(matches!(parse(key.as_bytes()), Err(TextError::BadKey(_))));
    }
}
