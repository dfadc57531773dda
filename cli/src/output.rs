//! Rendering: compact human tables by default, the API's JSON with `--json`.
//!
//! Commands describe a resource once — its list columns ([`Row`]) and its
//! detail fields ([`Detail`]) — and [`Output`] decides how to print it.

use std::fmt::Display;
use std::io::Write;

use anyhow::Result;
use chrono::{DateTime, Utc};
use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

/// A resource that renders as one row of a list table.
pub trait Row {
    const HEADERS: &'static [&'static str];
    fn row(&self) -> Vec<String>;
}

/// A resource that renders as a `field  value` table.
pub trait Detail {
    fn detail(&self) -> Vec<(&'static str, String)>;
}

/// The shape of every list response, so `--json` prints what the API sent.
#[derive(Serialize)]
struct Items<'a, T> {
    items: &'a [T],
}

/// Where command results go: stdout, as tables or as pretty JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// A list of resources with their standard columns.
    pub fn list<T: Row + Serialize>(&self, items: &[T]) -> Result<()> {
        self.list_with(items, T::HEADERS, T::row)
    }

    /// A list with columns chosen by the caller (e.g. names looked up elsewhere).
    pub fn list_with<T: Serialize>(
        &self,
        items: &[T],
        headers: &[&str],
        row: impl Fn(&T) -> Vec<String>,
    ) -> Result<()> {
        if self.json {
            return self.json(&Items { items });
        }
        print(&render_table(headers, items.iter().map(row)))
    }

    /// One resource with its standard fields.
    pub fn show<T: Detail + Serialize>(&self, item: &T) -> Result<()> {
        self.show_with(item, item.detail())
    }

    /// One resource with fields chosen by the caller.
    pub fn show_with<T: Serialize>(&self, item: &T, fields: Vec<(&str, String)>) -> Result<()> {
        if self.json {
            return self.json(item);
        }
        print(&render_detail(&fields))
    }

    /// Pretty JSON, always.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        print(&serde_json::to_string_pretty(value)?)
    }

    /// A line for humans; nothing in JSON mode, where stdout is for data.
    pub fn note(&self, msg: impl Display) -> Result<()> {
        if self.json {
            return Ok(());
        }
        print(&msg.to_string())
    }
}

/// Writes one line to stdout. Unlike `println!` this does not panic when the
/// reader went away (`strato vm list | head -1`); `main` treats a broken pipe
/// as a quiet exit.
pub fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn new_table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    t
}

fn compact(mut t: Table) -> String {
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t.trim_fmt()
}

/// `ID  NAME ...` header and aligned rows, no borders, no trailing spaces.
pub fn render_table<I>(headers: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = Vec<String>>,
{
    let mut t = new_table();
    t.set_header(headers.to_vec());
    for r in rows {
        t.add_row(r);
    }
    compact(t)
}

/// `field:  value` lines; multi-line values stay aligned.
pub fn render_detail(fields: &[(&str, String)]) -> String {
    let mut t = new_table();
    for (k, v) in fields {
        t.add_row(vec![format!("{k}:"), v.clone()]);
    }
    compact(t)
}

/// Small formatters shared by every resource's columns.
pub mod fmt {
    use super::*;

    /// The value, or `-` when absent.
    pub fn opt<T: Display>(v: &Option<T>) -> String {
        v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
    }

    /// `-` for an empty string.
    pub fn or_dash(s: &str) -> String {
        if s.is_empty() {
            "-".into()
        } else {
            s.to_string()
        }
    }

    pub fn time(t: &DateTime<Utc>) -> String {
        t.format("%Y-%m-%d %H:%M:%SZ").to_string()
    }

    /// `12s ago`, `5m ago`, `3h ago`, `2d ago` relative to `now`.
    pub fn ago(t: &DateTime<Utc>, now: DateTime<Utc>) -> String {
        let s = (now - *t).num_seconds();
        if s < 0 {
            return "just now".into();
        }
        match s {
            0..=119 => format!("{s}s ago"),
            120..=7199 => format!("{}m ago", s / 60),
            7200..=172_799 => format!("{}h ago", s / 3600),
            _ => format!("{}d ago", s / 86_400),
        }
    }

    /// RAM in MiB as `512 MiB` or `4 GiB` (whole GiB only).
    pub fn mib(m: u64) -> String {
        if m >= 1024 && m & 1023 == 0 {
            format!("{} GiB", m / 1024)
        } else {
            format!("{m} MiB")
        }
    }

    pub fn gib(g: u64) -> String {
        format!("{g} GiB")
    }

    /// Bytes as GiB with no decimals (storage capacities are large).
    pub fn bytes_gib(b: u64) -> u64 {
        b / (1024 * 1024 * 1024)
    }

    /// `name (id)` when the name is known, else the id.
    pub fn named(name: Option<&str>, id: impl Display) -> String {
        match name {
            Some(n) => format!("{n} ({id})"),
            None => id.to_string(),
        }
    }

    pub fn yes_no(b: bool) -> String {
        if b { "yes" } else { "no" }.into()
    }

    pub fn join<T: Display>(items: &[T], sep: &str) -> String {
        if items.is_empty() {
            return "-".into();
        }
        items.iter().map(T::to_string).collect::<Vec<_>>().join(sep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_compact_and_aligned() {
        let out = render_table(
            &["ID", "NAME", "STATUS"],
            vec![
                vec!["1".into(), "web-1".into(), "running".into()],
                vec!["22".into(), "db".into(), "-".into()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            ["ID  NAME   STATUS", "1   web-1  running", "22  db     -"]
        );
    }

    #[test]
    fn empty_table_prints_only_the_header() {
        let out = render_table(&["ID", "NAME"], Vec::<Vec<String>>::new());
        assert_eq!(out.trim(), "ID  NAME");
    }

    #[test]
    fn detail_aligns_values_including_multi_line_ones() {
        let out = render_detail(&[
            ("id", "abc".into()),
            ("addresses", "10.0.0.5\n10.0.1.5".into()),
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "id:         abc",
                "addresses:  10.0.0.5",
                "            10.0.1.5"
            ]
        );
    }

    #[test]
    fn formatters() {
        assert_eq!(fmt::mib(2048), "2 GiB");
        assert_eq!(fmt::mib(1536), "1536 MiB");
        assert_eq!(fmt::opt(&None::<u16>), "-");
        assert_eq!(fmt::opt(&Some(100u16)), "100");
        assert_eq!(fmt::named(Some("m1"), "id-1"), "m1 (id-1)");
        assert_eq!(fmt::named(None, "id-1"), "id-1");
        let now = Utc::now();
        assert_eq!(
            fmt::ago(&(now - chrono::Duration::seconds(5)), now),
            "5s ago"
        );
        assert_eq!(fmt::ago(&(now - chrono::Duration::hours(3)), now), "3h ago");
    }

    #[test]
    fn list_json_keeps_the_items_envelope() {
        let v = serde_json::to_value(Items { items: &[1, 2] }).unwrap();
        assert_eq!(v, serde_json::json!({ "items": [1, 2] }));
    }
}
