//! Where things are in config text, for the positions in error messages.
//!
//! serde gives no spans after parsing, so a semantic problem is located by
//! finding its text. Searching the whole text once per element made large
//! configs quadratic (20,000 routes took seconds to check), so the text is
//! read once up front instead: where each line starts, and the extent of
//! every element of the top-level lists (`routes`, `listeners`) and of every
//! entry of the top-level maps (`upstreams`, `authenticators`,
//! `rate_limits`). A problem is then searched for only inside its own
//! element ([`Scope`]), and line and column come from a binary search.

use std::collections::HashMap;
use std::ops::Range;

/// A stretch of the text that a search stays inside, and the place to point
/// at when the search finds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scope {
    /// First byte searched.
    pub start: usize,
    /// One past the last byte searched.
    pub end: usize,
    /// Reported when nothing more precise is found: the element's `name:`
    /// value (or map key), else its first byte.
    pub at: usize,
}

/// Line starts and top-level element extents of one config text.
pub(super) struct Positions<'a> {
    text: &'a str,
    /// Byte offset where each line starts; the first is 0.
    line_starts: Vec<usize>,
    /// Top-level list field → extent of each element, in order.
    lists: HashMap<&'a str, Vec<Range<usize>>>,
    /// Top-level map field → key as written (quoted) → extent from the key
    /// to the end of its value. The first entry wins if a key repeats.
    maps: HashMap<&'a str, HashMap<&'a str, Range<usize>>>,
}

impl<'a> Positions<'a> {
    /// Reads `text` once.
    pub fn new(text: &'a str) -> Positions<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        let (lists, maps) = top_level_extents(text);
        Positions {
            text,
            line_starts,
            lists,
            maps,
        }
    }

    /// The whole text, pointing at its start.
    pub fn whole(&self) -> Scope {
        Scope {
            start: 0,
            end: self.text.len(),
            at: 0,
        }
    }

    /// Element `i` of the top-level list `field`, whose `name` is `name`.
    pub fn list_item(&self, field: &str, i: usize, count: usize, name: &str) -> Scope {
        let item = self
            .lists
            .get(field)
            .filter(|items| items.len() == count)
            .and_then(|items| items.get(i));
        match item {
            Some(r) => {
                let s = Scope {
                    start: r.start,
                    end: r.end,
                    at: r.start,
                };
                let at = self.find_field_value(s, "name", name).unwrap_or(r.start);
                Scope { at, ..s }
            }
            // The text did not read as expected: search it all, as a
            // fallback only (this is the quadratic way).
            None => self.to_end(
                self.find_field_value(self.whole(), "name", name)
                    .unwrap_or(0),
            ),
        }
    }

    /// Entry `key` of the top-level map `field`, pointing at the key.
    pub fn map_entry(&self, field: &str, key: &str) -> Scope {
        let quoted = format!("{key:?}");
        match self.maps.get(field).and_then(|m| m.get(quoted.as_str())) {
            Some(r) => Scope {
                start: r.start,
                end: r.end,
                at: r.start,
            },
            None => self.to_end(anchor_of_key(self.text, &quoted)),
        }
    }

    /// From `at` to the end of the text.
    fn to_end(&self, at: usize) -> Scope {
        Scope {
            start: at,
            end: self.text.len(),
            at,
        }
    }

    /// The part of `s` from `at` on, pointing at `at`.
    pub fn part_from(&self, s: Scope, at: usize) -> Scope {
        Scope {
            start: at.clamp(s.start, s.end),
            end: s.end,
            at,
        }
    }

    /// 1-based line and column (in bytes) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = line
            .checked_sub(1)
            .and_then(|i| self.line_starts.get(i))
            .copied()
            .unwrap_or(0);
        (line.max(1), offset - start + 1)
    }

    /// Where `s` points.
    pub fn at(&self, s: Scope) -> (usize, usize) {
        self.line_col(s.at)
    }

    fn region(&self, s: Scope) -> &'a str {
        self.text.get(s.start..s.end).unwrap_or("")
    }

    /// The first `needle` in `s`, else where `s` points.
    pub fn after(&self, s: Scope, needle: &str) -> (usize, usize) {
        let at = self.region(s).find(needle).map_or(s.at, |i| s.start + i);
        self.line_col(at)
    }

    /// The first `field:` in `s` (a whole word followed by a colon), else
    /// where `s` points.
    pub fn field(&self, s: Scope, field: &str) -> (usize, usize) {
        let text = self.text;
        let mut start = s.start;
        while let Some(i) = text.get(start..s.end).and_then(|t| t.find(field)) {
            let at = start + i;
            let word_start = at
                .checked_sub(1)
                .and_then(|p| text.as_bytes().get(p))
                .is_none_or(|&b| !b.is_ascii_alphanumeric() && b != b'_');
            let colon = text
                .get(at + field.len()..)
                .is_some_and(|t| t.trim_start().starts_with(':'));
            if word_start && colon {
                return self.line_col(at);
            }
            start = at + field.len();
        }
        self.at(s)
    }

    /// The quoted `value` of `field: "value"` (or `field: Some("value")`) in
    /// `s`, else where `s` points.
    pub fn field_value(&self, s: Scope, field: &str, value: &str) -> (usize, usize) {
        self.line_col(self.find_field_value(s, field, value).unwrap_or(s.at))
    }

    /// Byte offset of the quoted `value` of `field: "value"` in `s`.
    pub fn find_field_value(&self, s: Scope, field: &str, value: &str) -> Option<usize> {
        let text = self.text;
        let quoted = format!("{value:?}");
        let mut start = s.start;
        while let Some(i) = text.get(start..s.end)?.find(&quoted) {
            let at = start + i;
            let before = text.get(..at)?.trim_end();
            let before = before
                .strip_suffix("Some(")
                .map(str::trim_end)
                .unwrap_or(before);
            if let Some(b) = before.strip_suffix(':') {
                if b.trim_end().ends_with(field) {
                    return Some(at);
                }
            }
            start = at + quoted.len();
        }
        None
    }
}

/// Byte offset of a map key `"name":` anywhere in the text, or 0.
fn anchor_of_key(text: &str, quoted: &str) -> usize {
    let mut from = 0;
    while let Some(i) = text.get(from..).and_then(|t| t.find(quoted)) {
        let at = from + i;
        let after = at + quoted.len();
        if text
            .get(after..)
            .is_some_and(|t| t.trim_start().starts_with(':'))
        {
            return at;
        }
        from = after;
    }
    0
}

type Lists<'a> = HashMap<&'a str, Vec<Range<usize>>>;
type Maps<'a> = HashMap<&'a str, HashMap<&'a str, Range<usize>>>;

/// A lexical token of RON, as far as extents need: strings, comments and
/// char literals are skipped whole so that brackets inside them do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    Comma,
    Colon,
    Ident,
    Str,
    Other,
}

/// One pass over `text`: the elements of the lists and the entries of the
/// maps that are values of the fields of the outermost struct.
fn top_level_extents(text: &str) -> (Lists<'_>, Maps<'_>) {
    enum Collecting<'a> {
        Nothing,
        List {
            field: &'a str,
            items: Vec<Range<usize>>,
            item: Option<Range<usize>>,
        },
        Map {
            field: &'a str,
            entries: HashMap<&'a str, Range<usize>>,
            entry: Option<(&'a str, Range<usize>)>,
        },
    }
    let mut lists = Lists::new();
    let mut maps = Maps::new();
    let mut depth = 0usize;
    // Depth-1 state: the last identifier, the field whose value follows.
    let mut ident: Option<&str> = None;
    let mut field: Option<&str> = None;
    let mut collecting = Collecting::Nothing;
    for (n, (tok, r)) in Tokens::new(text).enumerate() {
        if n.is_multiple_of(1024) {
            crate::pace::point();
        }
        let slice = text.get(r.clone()).unwrap_or("");
        let before = depth;
        match tok {
            Tok::Open => depth += 1,
            Tok::Close => depth = depth.saturating_sub(1),
            _ => {}
        }
        if before == 1 {
            // A token directly inside the outermost struct.
            match (tok, field.take()) {
                (Tok::Ident, _) => ident = Some(slice),
                (Tok::Colon, _) => field = ident.take(),
                (Tok::Open, Some(f)) if slice == "[" => {
                    collecting = Collecting::List {
                        field: f,
                        items: Vec::new(),
                        item: None,
                    }
                }
                (Tok::Open, Some(f)) if slice == "{" => {
                    collecting = Collecting::Map {
                        field: f,
                        entries: HashMap::new(),
                        entry: None,
                    }
                }
                _ => ident = None,
            }
            continue;
        }
        if before < 2 {
            continue;
        }
        // Inside a value of the outermost struct (`before >= 2`).
        let closes = tok == Tok::Close && depth == 1;
        let separates = tok == Tok::Comma && before == 2;
        match &mut collecting {
            Collecting::Nothing => {}
            Collecting::List { field, items, item } => {
                if closes || separates {
                    items.extend(item.take());
                    if closes {
                        lists.entry(field).or_insert(std::mem::take(items));
                        collecting = Collecting::Nothing;
                    }
                } else {
                    match item {
                        Some(it) => it.end = r.end,
                        None => *item = Some(r),
                    }
                }
            }
            Collecting::Map {
                field,
                entries,
                entry,
            } => {
                if closes || separates {
                    if let Some((k, e)) = entry.take() {
                        entries.entry(k).or_insert(e);
                    }
                    if closes {
                        maps.entry(field).or_insert(std::mem::take(entries));
                        collecting = Collecting::Nothing;
                    }
                } else {
                    match entry {
                        Some((_, e)) => e.end = r.end,
                        None if tok == Tok::Str && before == 2 => *entry = Some((slice, r)),
                        None => {}
                    }
                }
            }
        }
    }
    (lists, maps)
}

/// RON tokens with their byte ranges; whitespace and comments are skipped.
struct Tokens<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Tokens<'a> {
        Tokens {
            b: text.as_bytes(),
            i: 0,
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    /// Index just past a quoted string whose opening quote is at `q`.
    fn string_end(&self, q: usize) -> usize {
        let mut j = q + 1;
        while j < self.b.len() {
            match self.at(j) {
                b'\\' => j += 2,
                b'"' => return j + 1,
                _ => j += 1,
            }
        }
        self.b.len()
    }

    /// If a raw string (`r"…"`, `r#"…"#`) starts at `r`, the index past it.
    fn raw_string_end(&self, r: usize) -> Option<usize> {
        let hashes = self
            .b
            .get(r + 1..)?
            .iter()
            .take_while(|&&c| c == b'#')
            .count();
        if self.at(r + 1 + hashes) != b'"' {
            return None;
        }
        let mut j = r + 2 + hashes;
        while j < self.b.len() {
            if self.at(j) == b'"'
                && self
                    .b
                    .get(j + 1..j + 1 + hashes)
                    .is_some_and(|h| h.iter().all(|&c| c == b'#'))
            {
                return Some(j + 1 + hashes);
            }
            j += 1;
        }
        Some(self.b.len())
    }

    /// Index past a (nested) block comment opened at `s`.
    fn block_comment_end(&self, s: usize) -> usize {
        let mut level = 0usize;
        let mut j = s;
        while j < self.b.len() {
            match (self.at(j), self.at(j + 1)) {
                (b'/', b'*') => {
                    level += 1;
                    j += 2;
                }
                (b'*', b'/') => {
                    level = level.saturating_sub(1);
                    j += 2;
                    if level == 0 {
                        return j;
                    }
                }
                _ => j += 1,
            }
        }
        self.b.len()
    }
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

impl Iterator for Tokens<'_> {
    type Item = (Tok, Range<usize>);

    fn next(&mut self) -> Option<(Tok, Range<usize>)> {
        loop {
            let s = self.i;
            let c = *self.b.get(s)?;
            let (tok, end) = match c {
                c if c.is_ascii_whitespace() => {
                    self.i += 1;
                    continue;
                }
                b'/' if self.at(s + 1) == b'/' => {
                    self.i = self
                        .b
                        .get(s..)?
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(self.b.len(), |p| s + p);
                    continue;
                }
                b'/' if self.at(s + 1) == b'*' => {
                    self.i = self.block_comment_end(s);
                    continue;
                }
                b'"' => (Tok::Str, self.string_end(s)),
                b'b' if self.at(s + 1) == b'"' => (Tok::Str, self.string_end(s + 1)),
                b'\'' => {
                    // 'x', '\'' or '\u{…}': up to the next unescaped quote.
                    let mut j = s + 1;
                    while j < self.b.len() && self.at(j) != b'\'' {
                        j += if self.at(j) == b'\\' { 2 } else { 1 };
                    }
                    (Tok::Other, (j + 1).min(self.b.len()))
                }
                b'r' if matches!(self.at(s + 1), b'"' | b'#') => match self.raw_string_end(s) {
                    Some(end) => (Tok::Str, end),
                    None => {
                        // A raw identifier, r#name.
                        let n = self
                            .b
                            .get(s + 2..)?
                            .iter()
                            .take_while(|&&c| is_ident_byte(c));
                        (Tok::Ident, s + 2 + n.count())
                    }
                },
                c if is_ident_byte(c) => {
                    let n = self.b.get(s..)?.iter().take_while(|&&c| is_ident_byte(c));
                    (Tok::Ident, s + n.count())
                }
                b'(' | b'[' | b'{' => (Tok::Open, s + 1),
                b')' | b']' | b'}' => (Tok::Close, s + 1),
                b',' => (Tok::Comma, s + 1),
                b':' => (Tok::Colon, s + 1),
                _ => (Tok::Other, s + 1),
            };
            let end = end.max(s + 1);
            self.i = end;
            return Some((tok, s..end));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items<'a>(p: &Positions<'a>, text: &'a str, field: &str) -> Vec<&'a str> {
        p.lists
            .get(field)
            .map(|v| v.iter().map(|r| &text[r.clone()]).collect())
            .unwrap_or_default()
    }

    #[test]
    fn lists_and_maps_of_the_outer_struct() {
        let text = r##"Gateway( // a comment with ( and [
    listeners: [Listener(name: "a", bind: "x"), /* ] */ Listener(name: "b")],
    upstreams: { "u1": Upstream(targets: ["t"]), "u\"2": Upstream(x: r#"]}"#) },
    routes: [
        Route(name: "r0", match: Match(path: "/a/{id}")),
        Route(name: "r1", match: Match(path_prefix: "/(")), // trailing
        Route(name: "r2", note: 'x', other: ']',),
    ],
    nested: Some(Thing(routes: [X(), Y()])),
)"##;
        let p = Positions::new(text);
        assert_eq!(
            items(&p, text, "listeners"),
            [
                r#"Listener(name: "a", bind: "x")"#,
                r#"Listener(name: "b")"#
            ]
        );
        assert_eq!(
            items(&p, text, "routes"),
            [
                r#"Route(name: "r0", match: Match(path: "/a/{id}"))"#,
                r#"Route(name: "r1", match: Match(path_prefix: "/("))"#,
                r#"Route(name: "r2", note: 'x', other: ']',)"#,
            ]
        );
        let ups = p.maps.get("upstreams").unwrap();
        assert_eq!(
            &text[ups.get(r#""u1""#).unwrap().clone()],
            r#""u1": Upstream(targets: ["t"])"#
        );
        assert!(ups.contains_key(r#""u\"2""#));
        let s = p.list_item("routes", 1, 3, "r1");
        assert_eq!(p.line_col(s.at), (6, 21));
        assert_eq!(p.field(s, "match").0, 6);
        // Searches stay inside the element: r1 has no `path:` of its own.
        assert_eq!(p.field_value(s, "path", "/a/{id}"), p.line_col(s.at));
        // A count that does not fit the text falls back to a whole-text search.
        let f = p.list_item("routes", 0, 7, "r2");
        assert_eq!(p.line_col(f.at).0, 7);
    }

    #[test]
    fn line_col_counts_bytes_from_one() {
        let p = Positions::new("ab\ncd\n\nx");
        assert_eq!(p.line_col(0), (1, 1));
        assert_eq!(p.line_col(1), (1, 2));
        assert_eq!(p.line_col(2), (1, 3));
        assert_eq!(p.line_col(3), (2, 1));
        assert_eq!(p.line_col(6), (3, 1));
        assert_eq!(p.line_col(7), (4, 1));
        assert_eq!(p.line_col(99), (4, 2));
    }

    #[test]
    fn unterminated_text_does_not_panic() {
        for t in [
            "(",
            "(a: [",
            "(a: [\"",
            "(a: {\"k",
            "(a: [r#\"",
            "/*",
            "(a: ['\\",
            "r#",
        ] {
            let p = Positions::new(t);
            let _ = p.list_item("a", 0, 1, "x");
            let _ = p.map_entry("a", "k");
        }
    }
}
