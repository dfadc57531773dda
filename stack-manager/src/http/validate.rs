//! Input validation shared by every resource: checked before any side effect.

use crate::error::{ApiError, ApiResult};

/// Names of projects, users, instances (hostnames!), networks, ...:
/// 1–63 characters of `[a-z0-9-]`, starting with a letter, not ending in `-`.
pub fn name(kind: &str, value: &str) -> ApiResult<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.as_bytes()[0].is_ascii_lowercase()
        && !value.ends_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    // Resources are looked up by id or name: a name shaped like an id
    // could shadow another resource's id.
    if ok && uuid::Uuid::parse_str(value).is_ok() {
        return Err(ApiError::invalid(format!(
            "{kind} name `{value}` looks like an id; choose another"
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{kind} name `{}` is invalid: use 1-63 characters of a-z, 0-9 and '-', starting with a letter",
            value.chars().take(80).collect::<String>()
        )))
    }
}

/// An integer field within `[min, max]`.
pub fn range(field: &str, value: u64, min: u64, max: u64) -> ApiResult<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field} must be between {min} and {max}, got {value}"
        )))
    }
}

pub use crate::db::to_i64;

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(super::name("x", "web-1").is_ok());
        for bad in [
            "",
            "1abc",
            "Abc",
            "a_b",
            "abc-",
            &"a".repeat(64),
            "ä",
            "abcdef01-2345-6789-abcd-ef0123456789",
        ] {
            assert!(super::name("x", bad).is_err(), "{bad}");
        }
    }
}
