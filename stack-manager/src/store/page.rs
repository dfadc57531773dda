//! Keyset pagination for every list.
//!
//! A page is read with `WHERE (k1, k2, …) > (last k1, last k2, …) ORDER BY
//! k1, k2, … LIMIT n + 1`: the cost of a page does not grow with how deep
//! into the list it is (an `OFFSET` would read and drop every row before
//! it), and a row created or deleted meanwhile neither repeats nor hides
//! another. The last key is a list's own stable order, ending in a unique
//! column. The extra row only says whether another page follows.
//!
//! The token is the last row's key with the name of its list, as
//! base64url JSON. It is opaque to clients but not a secret: whatever it
//! holds is bound as a parameter, and a token from another list, or not
//! from us at all, is refused with a 400 before any statement runs.

use api::resources::{List, PageParams, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;

use crate::error::{ApiError, ApiResult};

/// The type of one key column: how its value is bound and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Int,
    Text,
}

/// One value of a row's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Key {
    Int(i64),
    Text(String),
}

impl Key {
    fn kind(&self) -> KeyKind {
        match self {
            Key::Int(_) => KeyKind::Int,
            Key::Text(_) => KeyKind::Text,
        }
    }
}

impl From<i64> for Key {
    fn from(v: i64) -> Self {
        Key::Int(v)
    }
}

impl From<String> for Key {
    fn from(v: String) -> Self {
        Key::Text(v)
    }
}

impl From<chrono::DateTime<chrono::Utc>> for Key {
    /// Times are stored as milliseconds since the epoch (see `db::now_ms`).
    fn from(t: chrono::DateTime<chrono::Utc>) -> Self {
        Key::Int(t.timestamp_millis())
    }
}

/// The stable order of one list: its name (carried in its tokens), its key
/// columns as the SQL names them, and its direction.
#[derive(Debug)]
pub struct Keyset {
    pub list: &'static str,
    pub columns: &'static [(&'static str, KeyKind)],
    pub descending: bool,
}

#[derive(Serialize, Deserialize)]
struct Token {
    /// The list the token belongs to.
    l: String,
    /// The key of the last row of the page before.
    k: Vec<Key>,
}

/// The page a request asked for, checked against its list's keyset.
#[derive(Debug)]
pub struct PageRequest {
    keyset: &'static Keyset,
    pub limit: u32,
    after: Option<Vec<Key>>,
}

impl Keyset {
    /// The page `params` asks for: the limit checked (1 to 1000, 100 when
    /// omitted), the token decoded and checked to be one of this list's.
    pub fn page(&'static self, params: &PageParams) -> ApiResult<PageRequest> {
        let limit = params.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
        if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
            return Err(ApiError::invalid(format!(
                "limit must be from 1 to {PAGE_LIMIT_MAX}, not {limit}"
            )));
        }
        let after = match params.page_token.as_deref() {
            None | Some("") => None,
            Some(t) => Some(self.decode(t)?),
        };
        Ok(PageRequest {
            keyset: self,
            limit,
            after,
        })
    }

    fn decode(&self, token: &str) -> ApiResult<Vec<Key>> {
        let bad = || {
            ApiError::invalid(format!(
                "page_token is not a token of the {} list; pass the next_page_token of its previous page",
                self.list
            ))
        };
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let t: Token = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        let shape_matches = t.l == self.list
            && t.k.len() == self.columns.len()
            && t.k
                .iter()
                .zip(self.columns)
                .all(|(k, (_, kind))| k.kind() == *kind);
        if !shape_matches {
            return Err(bad());
        }
        Ok(t.k)
    }

    fn encode(&self, key: Vec<Key>) -> String {
        let token = Token {
            l: self.list.to_string(),
            k: key,
        };
        // Serializing a struct of strings and integers cannot fail.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
    }
}

impl PageRequest {
    /// `AND (k1, …) > ($first, …)` when the page starts after a row, else
    /// nothing. `first` is the number of the first placeholder it may use.
    pub fn condition(&self, first: usize) -> String {
        let Some(after) = &self.after else {
            return String::new();
        };
        let columns: Vec<&str> = self.keyset.columns.iter().map(|(c, _)| *c).collect();
        let params: Vec<String> = (0..after.len())
            .map(|i| format!("${}", first + i))
            .collect();
        let op = if self.keyset.descending { "<" } else { ">" };
        format!(" AND ({}) {op} ({})", columns.join(", "), params.join(", "))
    }

    /// `ORDER BY k1, … LIMIT n + 1`: one row more than the page, which only
    /// tells whether another page follows.
    pub fn order_and_limit(&self) -> String {
        format!(
            " ORDER BY {} LIMIT {}",
            self.order(),
            u64::from(self.limit) + 1
        )
    }

    /// The key columns in the list's direction, for an outer `ORDER BY`.
    pub fn order(&self) -> String {
        let dir = if self.keyset.descending { " DESC" } else { "" };
        self.keyset
            .columns
            .iter()
            .map(|(c, _)| format!("{c}{dir}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Binds the values [`condition`](Self::condition) refers to.
    pub fn bind<'q>(
        &self,
        mut query: Query<'q, Any, AnyArguments<'q>>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        for key in self.after.iter().flatten() {
            query = match key {
                Key::Int(v) => query.bind(*v),
                Key::Text(v) => query.bind(v.clone()),
            };
        }
        query
    }

    /// The page of `items` (read with [`order_and_limit`](Self::order_and_limit)):
    /// the extra row dropped, and a token made from the last row's key
    /// when it was there.
    pub fn finish<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> Vec<Key>) -> List<T> {
        let more = items.len() > self.limit as usize;
        items.truncate(self.limit as usize);
        let next_page_token = match (more, items.last()) {
            (true, Some(last)) => Some(self.keyset.encode(key(last))),
            _ => None,
        };
        List {
            items,
            next_page_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BY_TIME: Keyset = Keyset {
        list: "things",
        columns: &[("created_at", KeyKind::Int), ("id", KeyKind::Text)],
        descending: false,
    };
    static OTHER: Keyset = Keyset {
        list: "others",
        columns: &[("created_at", KeyKind::Int), ("id", KeyKind::Text)],
        descending: true,
    };

    fn params(limit: Option<u32>, token: Option<String>) -> PageParams {
        PageParams {
            limit,
            page_token: token,
        }
    }

    #[test]
    fn a_token_leads_to_the_rows_after_the_last_one() {
        let first = BY_TIME.page(&params(Some(2), None)).unwrap();
        assert_eq!(first.condition(2), "");
        assert_eq!(first.order_and_limit(), " ORDER BY created_at, id LIMIT 3");
        let rows = vec![(1i64, "a"), (2, "b"), (3, "c")];
        let list = first.finish(rows, |(t, id)| {
            vec![Key::Int(*t), Key::Text(id.to_string())]
        });
        assert_eq!(list.items.len(), 2);
        let token = list.next_page_token.expect("a third row was there");
        let next = BY_TIME.page(&params(Some(2), Some(token))).unwrap();
        assert_eq!(next.condition(2), " AND (created_at, id) > ($2, $3)");
        let last = next.finish(vec![(3i64, "c")], |(t, id)| {
            vec![Key::Int(*t), Key::Text(id.to_string())]
        });
        assert_eq!(last.next_page_token, None);
    }

    #[test]
    fn limits_and_foreign_tokens_are_refused() {
        assert_eq!(BY_TIME.page(&params(None, None)).unwrap().limit, 100);
        assert!(BY_TIME.page(&params(Some(0), None)).is_err());
        assert!(BY_TIME.page(&params(Some(1001), None)).is_err());
        assert!(BY_TIME.page(&params(Some(1000), None)).is_ok());
        let other = OTHER.encode(vec![Key::Int(1), Key::Text("x".into())]);
        assert!(BY_TIME.page(&params(None, Some(other))).is_err());
        let wrong_shape = BY_TIME.encode(vec![Key::Text("1".into()), Key::Text("x".into())]);
        assert!(BY_TIME.page(&params(None, Some(wrong_shape))).is_err());
        for junk in ["%%%", "bm90IGpzb24", "e30"] {
            assert!(
                BY_TIME.page(&params(None, Some(junk.into()))).is_err(),
                "{junk}"
            );
        }
        let descending = OTHER.page(&params(None, Some(other_token()))).unwrap();
        assert_eq!(descending.condition(1), " AND (created_at, id) < ($1, $2)");
        assert_eq!(descending.order(), "created_at DESC, id DESC");
    }

    fn other_token() -> String {
        OTHER.encode(vec![Key::Int(5), Key::Text("y".into())])
    }
}
