//! Configuration errors as one line each: `file:line: key: message`.
//!
//! [`ConfigError`] is what loading a configuration returns. Errors of the `toml` parser and
//! of serde are reworded in the words of the configuration file ([`parse_error`]); broken
//! rules of [`Config::validate`](super::Config::validate) get the line of their key
//! ([`validation_error`]). The lines come from a small line scanner ([`locate`],
//! [`key_at`], …) that understands just enough TOML to find where a key is set: `[table]`
//! headers, dotted keys and inline tables.

use super::validate::ValidationError;

/// A configuration problem, with enough context to fix it.
///
/// Every variant renders as one line naming the file, the line where known, the dotted
/// key, the bad value and what would be valid, e.g.
/// `config/x.toml:3: dispatcher.strategy: unknown strategy "fastest" (expected one of …)`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A problem without a location in a file (e.g. a bad command-line override).
    #[error("{0}")]
    Invalid(String),
    /// The text is not valid TOML, or a key is unknown, or a value has the wrong type or
    /// is not one of the accepted names: `<file>:<line>: <key>: <message>`.
    #[error("{}: {}", at(.origin, .line), keyed(.key, .message))]
    Parse {
        /// The file (or other origin) of the text.
        origin: String,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// Dotted key (`listener.max_connections`), when it can be told.
        key: Option<String>,
        /// What is wrong and what would be valid (one line).
        message: String,
    },
    /// The text parsed but breaks a rule of SPEC §3:
    /// `<file>:<line>: <key> = <value>: <message>`.
    #[error("{}: {error}", at(.origin, .line))]
    Validation {
        /// The file (or other origin) of the text.
        origin: String,
        /// 1-based line of the offending key, when it appears in the text.
        line: Option<usize>,
        /// The broken rule.
        error: Box<ValidationError>,
    },
}

impl ConfigError {
    /// The 1-based line the problem was found on, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Parse { line, .. } | ConfigError::Validation { line, .. } => *line,
            ConfigError::Read { .. } | ConfigError::Invalid(_) => None,
        }
    }

    /// The dotted key at fault, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Validation { error, .. } => Some(&error.key),
            ConfigError::Read { .. } | ConfigError::Invalid(_) => None,
        }
    }
}

/// `file:line`, or `file` when the line is unknown.
fn at(origin: &str, line: &Option<usize>) -> String {
    match line {
        Some(line) => format!("{origin}:{line}"),
        None => origin.to_string(),
    }
}

/// `key: message`, or `message` when the key is unknown.
fn keyed(key: &Option<String>, message: &str) -> String {
    match key {
        Some(key) => format!("{key}: {message}"),
        None => message.to_string(),
    }
}

/// Turns a broken rule into a [`ConfigError::Validation`] with the line of its key in
/// `text`: the key's own line, else that of the rule's other key, else that of its table
/// (a header, or where the table is set inline: `backend = { upstreams = [...] }`).
pub(super) fn validation_error(error: ValidationError, text: &str, origin: &str) -> ConfigError {
    let find = |dotted: &str| {
        let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
        locate(text, table, key)
    };
    let table = error.key.rsplit_once('.').map_or("", |(table, _)| table);
    let in_entry = |index| {
        let key = error.key.rsplit_once('.').map_or("", |(_, key)| key);
        locate_entry(text, table, key, index)
    };
    let line = (error.entry.and_then(in_entry))
        .or_else(|| find(&error.key))
        .or_else(|| error.related.as_deref().and_then(find))
        .or_else(|| locate_table(text, table))
        .or_else(|| find(table));
    ConfigError::Validation {
        origin: origin.to_string(),
        line,
        error: Box::new(error),
    }
}

/// Turns a `toml`/serde error into a one-line [`ConfigError::Parse`] with line and key.
pub(super) fn parse_error(e: &toml::de::Error, text: &str, origin: &str) -> ConfigError {
    let line = e.span().map(|span| line_of(text, span.start));
    let message = one_line(e.message());
    let mut key = e.span().and_then(|span| key_at_offset(text, span.start));
    let message = match reword(&message) {
        Reworded::UnknownKey { name, message } => {
            // The span of an unknown key inside an inline table (`listener = { colour = 1 }`)
            // is on a line whose key is the table: name the field too.
            key = match key {
                Some(k) if k == name || k.ends_with(&format!(".{name}")) => Some(k),
                Some(k) => Some(format!("{k}.{name}")),
                None => Some(name),
            };
            message
        }
        // serde's own words for a bad `SocketAddr` name no value: quote it from the text.
        Reworded::Other(message) if message == "invalid socket address syntax" => {
            match e.span().and_then(|span| text.get(span)) {
                Some(value) => format!(
                    "invalid address {} (expected ip:port, e.g. \"127.0.0.1:7070\")",
                    value.trim()
                ),
                None => message,
            }
        }
        Reworded::Other(message) => message,
    };
    ConfigError::Parse {
        origin: origin.to_string(),
        line,
        key,
        message,
    }
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// Collapses a possibly multi-line message into one line.
fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join("; ")
}

/// A serde message in the words of this crate.
enum Reworded {
    /// `unknown field`: the field's name and the new message.
    UnknownKey { name: String, message: String },
    /// Anything else.
    Other(String),
}

/// Rewords serde's `unknown field`, `unknown variant` and `missing field` messages.
fn reword(message: &str) -> Reworded {
    let (head, tail) = message.split_once(", ").unwrap_or((message, ""));
    let expected = || {
        let names = backticked(tail);
        match names.len() {
            0 => "this table takes no keys".to_string(),
            1 => format!("expected {}", names[0]),
            _ => format!("expected one of {}", names.join(", ")),
        }
    };
    if let Some(name) = head.strip_prefix("unknown field ") {
        let name = name.trim_matches('`').to_string();
        let message = format!("unknown key ({})", expected());
        return Reworded::UnknownKey { name, message };
    }
    if let Some(name) = head.strip_prefix("unknown variant ") {
        let name = name.trim_matches('`');
        return Reworded::Other(format!("unknown value \"{name}\" ({})", expected()));
    }
    if let Some(name) = message.strip_prefix("missing field ") {
        let name = name.trim_matches('`');
        return Reworded::Other(format!("required key \"{name}\" is missing"));
    }
    // A positive whole number too large for its type is named by that edge (the key's
    // own range is checked after parsing): "expected u32" → "at most 4294967295".
    let too_large = message.contains("integer `") && !message.contains("integer `-");
    let unsigned = [
        ("u32", u64::from(u32::MAX)),
        ("u64", u64::MAX),
        ("usize", u64::MAX),
    ];
    for (rust, max) in unsigned {
        if let Some(head) = message.strip_suffix(&format!("expected {rust}")) {
            return Reworded::Other(match too_large {
                true => format!("{head}expected a whole number of at most {max}"),
                false => format!("{head}expected a whole number >= 0"),
            });
        }
    }
    for (rust, words) in [
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ] {
        if let Some(head) = message.strip_suffix(rust) {
            return Reworded::Other(format!("{head}{words}"));
        }
    }
    Reworded::Other(message.to_string())
}

/// The `` `quoted` `` words of `s`, in order.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// `line` without a trailing `# comment` (a `#` inside a string does not count).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

/// A dotted TOML key normalised: `"load" . requests` → `load.requests`.
fn normalise_key(raw: &str) -> String {
    let parts: Vec<&str> = raw
        .split('.')
        .map(|p| p.trim().trim_matches('"').trim_matches('\''))
        .collect();
    parts.join(".")
}

/// What one line of TOML is, as far as locating keys goes.
enum LineKind {
    /// `[table]` or `[[array.of.tables]]`: its dotted name.
    Header(String),
    /// `key = value`: the (possibly dotted) key and the text after `=`.
    Key(String, String),
    /// Blank, comment, or the continuation of a multi-line value.
    Other,
}

fn classify(line: &str) -> LineKind {
    let line = strip_comment(line).trim();
    if line.starts_with('[') && line.ends_with(']') {
        let name = line.trim_start_matches('[').trim_end_matches(']').trim();
        if is_key(name) {
            return LineKind::Header(normalise_key(name));
        }
    }
    if let Some((key, value)) = line.split_once('=') {
        let key = key.trim();
        if is_key(key) {
            return LineKind::Key(normalise_key(key), value.trim().to_string());
        }
    }
    LineKind::Other
}

/// Whether `s` looks like a (possibly dotted, possibly quoted) TOML key.
fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '"' | '\''))
}

/// `table.key`, or `key` at the top level.
fn join(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// The dotted key written on (or, for a multi-line value, above) 1-based `line`.
fn key_at(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    let mut last = None;
    for (n, l) in text.lines().enumerate() {
        if n >= line {
            break;
        }
        match classify(l) {
            LineKind::Header(name) => {
                last = Some(name.clone());
                table = name;
            }
            LineKind::Key(key, _) => last = Some(join(&table, &key)),
            LineKind::Other => {}
        }
    }
    last
}

/// The dotted key whose value holds byte `offset` of `text`: [`key_at`] of its line, and,
/// when that key's value is an inline table (or an array of them), the keys inside it down
/// to `offset` — `listener.max_line_bytes` for an offset in the value of
/// `listener = { max_line_bytes = "x" }`, `backend.upstreams.address` in
/// `upstreams = [{ address = "x" }]`.
fn key_at_offset(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line = line_of(text, offset);
    let key = key_at(text, line)?;
    // The line that set `key`: the last key or header line at or above `line`.
    let mut start = 0;
    let mut set_at = None;
    let mut header_line = None;
    for (n, l) in text.split_inclusive('\n').enumerate() {
        if n >= line {
            break;
        }
        match classify(l) {
            LineKind::Key(..) => set_at = Some((n, start, l)),
            LineKind::Header(_) => {
                set_at = None;
                header_line = Some(n);
            }
            LineKind::Other => {}
        }
        start += l.len();
    }
    let Some((set_line, line_start, l)) = set_at else {
        // Under a header: a line that is neither a key nor a header (`[admin` unclosed,
        // `port 80`) belongs to no key; naming the table above it would mislead.
        return match header_line {
            Some(n) if n + 1 < line && !is_entry(text, line) => None,
            _ => Some(key),
        };
    };
    // A stray line below a finished value is not part of that key either; only the
    // continuation of a value still open (a multi-line array, inline table or string) is.
    if set_line + 1 < line
        && !is_entry(text, line)
        && !value_open(
            text.get(line_start..).unwrap_or_default(),
            line - set_line - 1,
        )
    {
        return None;
    }
    let value_start = line_start + l.find('=').map_or(l.len(), |i| i + 1);
    let path = match text.get(value_start..offset) {
        Some(prefix) => inline_path(prefix),
        None => Vec::new(),
    };
    if path.is_empty() {
        Some(key)
    } else {
        Some(format!("{key}.{}", path.join(".")))
    }
}

/// Whether 1-based `line` of `text` is a key or a table header line.
fn is_entry(text: &str, line: usize) -> bool {
    text.lines()
        .nth(line.saturating_sub(1))
        .is_some_and(|l| !matches!(classify(l), LineKind::Other))
}

/// Whether the value set on the first line of `from` is still open at the end of its
/// first `lines` lines: inside a `[`/`{` not closed yet or a `"""`/`'''` string. Strings
/// and `#` comments are skipped.
fn value_open(from: &str, lines: usize) -> bool {
    let text: String = from.split_inclusive('\n').take(lines).collect();
    let value = text.split_once('=').map_or("", |(_, v)| v);
    let (mut depth, mut quote, mut comment, mut escaped) = (0usize, None::<&str>, false, false);
    let mut rest = value;
    while let Some(c) = rest.chars().next() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q.starts_with('"') {
                escaped = true;
            } else if rest.starts_with(q) {
                quote = None;
                rest = &rest[q.len()..];
                continue;
            }
        } else if comment {
            comment = c != '\n';
        } else if let Some(q) = ["\"\"\"", "\'\'\'", "\"", "\'"]
            .into_iter()
            .find(|q| rest.starts_with(q))
        {
            quote = Some(q);
            rest = &rest[q.len()..];
            continue;
        } else {
            match c {
                '#' => comment = true,
                '[' | '{' => depth += 1,
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        rest = &rest[c.len_utf8()..];
    }
    depth > 0 || quote.is_some_and(|q| q.len() == 3)
}

/// One open `{` or `[` while scanning a value.
enum Open {
    /// An inline table: the key being read (or whose value is being read) and which.
    Table { key: String, in_value: bool },
    /// An array: its elements have no keys.
    Array,
}

/// The keys of the inline tables that the value text `prefix` ends inside, outermost first:
/// `["requests", "small"]` for ` { requests = { small = ` (a key still being read when the
/// prefix ends is left out). Arrays add nothing; strings and `#` comments are skipped.
fn inline_path(prefix: &str) -> Vec<String> {
    let mut open: Vec<Open> = Vec::new();
    let mut quote = None;
    let mut escaped = false;
    let mut comment = false;
    for c in prefix.chars() {
        let reading_key = matches!(
            open.last(),
            Some(Open::Table {
                in_value: false,
                ..
            })
        );
        if let Some(q) = quote {
            if reading_key {
                if let Some(Open::Table { key, .. }) = open.last_mut() {
                    key.push(c);
                }
            }
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if comment {
            comment = c != '\n';
            continue;
        }
        match c {
            '"' | '\'' => {
                quote = Some(c);
                if let Some(Open::Table {
                    key,
                    in_value: false,
                }) = open.last_mut()
                {
                    key.push(c);
                }
            }
            '#' => comment = true,
            '{' => open.push(Open::Table {
                key: String::new(),
                in_value: false,
            }),
            '[' if !reading_key => open.push(Open::Array),
            '}' | ']' => {
                open.pop();
            }
            '=' if reading_key => {
                if let Some(Open::Table { in_value, .. }) = open.last_mut() {
                    *in_value = true;
                }
            }
            ',' => {
                if let Some(Open::Table { key, in_value }) = open.last_mut() {
                    key.clear();
                    *in_value = false;
                }
            }
            c if reading_key => {
                if let Some(Open::Table { key, .. }) = open.last_mut() {
                    key.push(c);
                }
            }
            _ => {}
        }
    }
    open.iter()
        .filter_map(|o| match o {
            Open::Table {
                key,
                in_value: true,
            } => Some(normalise_key(key)),
            _ => None,
        })
        .collect()
}

/// The 1-based line where `key` of `table` is set in `text` (`table` is dotted, `""` for
/// the top level), whether written under `[table]`, as a dotted key (`table.key = …`) or in
/// an inline table (`table = { key = … }`). `None` when the text does not set it.
pub fn locate(text: &str, table: &str, key: &str) -> Option<usize> {
    let wanted = join(table, key);
    let mut current = String::new();
    for (n, l) in text.lines().enumerate() {
        match classify(l) {
            LineKind::Header(name) => current = name,
            LineKind::Key(k, value) => {
                let full = join(&current, &k);
                if full == wanted {
                    return Some(n + 1);
                }
                if value.starts_with('{') && wanted.starts_with(&format!("{full}.")) {
                    let inner = &wanted[full.len() + 1..];
                    if inline_sets(&value, inner) {
                        return Some(n + 1);
                    }
                }
            }
            LineKind::Other => {}
        }
    }
    None
}

/// The 1-based line where `key` is set in entry `index` (from 0) of the array of tables
/// `[[table]]`; `None` when the text does not set it there (or writes the array inline).
fn locate_entry(text: &str, table: &str, key: &str, index: usize) -> Option<usize> {
    let (mut entries, mut inside) = (0, false);
    for (n, l) in text.lines().enumerate() {
        match classify(l) {
            LineKind::Header(name) => {
                let entry = name == table && l.trim_start().starts_with("[[");
                entries += usize::from(entry);
                inside = entry && entries == index + 1;
            }
            LineKind::Key(k, _) if inside && k == key => return Some(n + 1),
            _ => {}
        }
    }
    None
}

/// Whether the inline table `{ a = 1, b.c = 2 }` sets the dotted key `key`.
fn inline_sets(value: &str, key: &str) -> bool {
    let body = value.trim_start_matches('{');
    body.split([',', '{'])
        .filter_map(|part| part.split_once('='))
        .any(|(k, _)| normalise_key(k) == key)
}

/// The 1-based line of the `[table]` header (or of a `table = …` / `table.x = …` line).
fn locate_table(text: &str, table: &str) -> Option<usize> {
    if table.is_empty() {
        return None;
    }
    let mut current = String::new();
    for (n, l) in text.lines().enumerate() {
        match classify(l) {
            LineKind::Header(name) => {
                if name == table {
                    return Some(n + 1);
                }
                current = name;
            }
            LineKind::Key(k, _) => {
                let full = join(&current, &k);
                if full == table || full.starts_with(&format!("{table}.")) {
                    return Some(n + 1);
                }
            }
            LineKind::Other => {}
        }
    }
    None
}

#[cfg(test)]
mod tests;
