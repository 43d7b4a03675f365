//! Unit tests of the line scanner.

use super::*;

/// The key `key_at_offset` names for the first occurrence of `needle` in `text`.
fn at(text: &str, needle: &str) -> Option<String> {
    let offset = text.find(needle).expect("needle in text");
    key_at_offset(text, offset)
}

#[test]
fn line_numbers() {
    assert_eq!(line_of("a\nb\nc", 0), 1);
    assert_eq!(line_of("a\nb\nc", 2), 2);
    assert_eq!(line_of("a\nb\nc", 4), 3);
    assert_eq!(line_of("a\nb\nc", 99), 3);
    assert_eq!(line_of("a\r\nb", 3), 2);
}

#[test]
fn locate_finds_keys_in_every_form() {
    let text = "\
# comment with min_machines = 3
[autoscaler]   # the scaler
initial = [
  \"medium\",
]
\"min_machines\" = 2
[load.requests]
small = 1
[[backend.upstreams]]
address = \"127.0.0.1:1\"
";
    assert_eq!(locate(text, "autoscaler", "min_machines"), Some(6));
    assert_eq!(locate(text, "autoscaler", "initial"), Some(3));
    assert_eq!(locate(text, "autoscaler", "max_machines"), None);
    assert_eq!(locate(text, "load.requests", "small"), Some(8));
    assert_eq!(locate(text, "load", "small"), None);
    assert_eq!(locate(text, "backend.upstreams", "address"), Some(10));
    assert_eq!(locate("machines.small = 1\n", "machines", "small"), Some(1));
    assert_eq!(
        locate(
            "x = 1\nload = { requests.small = 1 }",
            "load.requests",
            "small"
        ),
        Some(2)
    );
    assert_eq!(
        locate("[load]\nrequests.large = 3\n", "load.requests", "large"),
        Some(2)
    );
    assert_eq!(locate_table(text, "load.requests"), Some(7));
    assert_eq!(locate_table(text, "autoscaler"), Some(2));
    assert_eq!(locate_table(text, "pool"), None);
}

/// Regression (found by tests/config_props.rs): a bad value inside an inline table was
/// reported under the table's name only (`listener: invalid type …`).
#[test]
fn key_at_offset_names_keys_inside_inline_tables() {
    let text = "listener = { max_line_bytes = \"0ns\" }\n";
    assert_eq!(
        at(text, "\"0ns").as_deref(),
        Some("listener.max_line_bytes")
    );
    let text = "x = 1\nload = { requests = { small = -1 }, connection_min = nan }\n";
    assert_eq!(at(text, "-1").as_deref(), Some("load.requests.small"));
    assert_eq!(at(text, "nan").as_deref(), Some("load.connection_min"));
    let text = "load = { requests.\"large\" = -1 }\n";
    assert_eq!(at(text, "-1").as_deref(), Some("load.requests.large"));
    let text = "[backend]\nupstreams = [\n  { address = \"a,{b\" }, # {\n  { size = 1 },\n]\n";
    assert_eq!(
        at(text, "\"a,").as_deref(),
        Some("backend.upstreams.address")
    );
    assert_eq!(at(text, "1 }").as_deref(), Some("backend.upstreams.size"));
    assert_eq!(at(text, "{ size").as_deref(), Some("backend.upstreams"));
    // Not inline: the key of the line.
    let text = "[listener]\nmax_line_bytes = \"x\"\n";
    assert_eq!(at(text, "\"x").as_deref(), Some("listener.max_line_bytes"));
    assert_eq!(at(text, "[listener]").as_deref(), Some("listener"));
    let text = "[autoscaler]\ninitial = [\n  \"huge\",\n]\n";
    assert_eq!(at(text, "\"huge").as_deref(), Some("autoscaler.initial"));
}

#[test]
fn key_at_tracks_tables_and_multiline_values() {
    let text = "a = 1\n[load.requests]\nsmall = 1\n[autoscaler]\ninitial = [\n\"x\",\n]\n";
    assert_eq!(key_at(text, 1).as_deref(), Some("a"));
    assert_eq!(key_at(text, 2).as_deref(), Some("load.requests"));
    assert_eq!(key_at(text, 3).as_deref(), Some("load.requests.small"));
    assert_eq!(key_at(text, 6).as_deref(), Some("autoscaler.initial"));
}

#[test]
fn locate_entry_counts_the_entries_of_an_array_of_tables() {
    let text = "[backend]\n[[backend.upstreams]]\naddress = 1\n[[backend.upstreams]]\n\
                size = 2\n[other]\naddress = 3\n[[backend.upstreams]]\naddress = 4\n";
    assert_eq!(
        locate_entry(text, "backend.upstreams", "address", 0),
        Some(3)
    );
    assert_eq!(locate_entry(text, "backend.upstreams", "address", 1), None);
    assert_eq!(
        locate_entry(text, "backend.upstreams", "address", 2),
        Some(9)
    );
    assert_eq!(locate_entry(text, "backend.upstreams", "address", 3), None);
}

/// Regression (found by tests/config_props.rs): a duplicate upstream in an array written
/// inside an inline `backend` table had no line.
#[test]
fn a_duplicate_upstream_in_a_nested_inline_table_has_its_line() {
    let text = "# upstreams\nbackend = { upstreams = [{ address = \"127.0.0.1:1\" }, \
                { address = \"127.0.0.1:1\" }] }\n";
    let e = crate::config::Config::from_toml(text, "x.toml").expect_err("listed twice");
    assert_eq!(e.line(), Some(2), "{e}");
    assert!(e.to_string().contains("address listed twice"), "{e}");
}

/// Regression (black-box, `check`): a syntax error on a line that is neither a key nor a
/// header was reported under the key or table above it (`listener.address: unclosed table`).
#[test]
fn a_stray_line_belongs_to_no_key_unless_a_value_continues() {
    let text = "[listener]\naddress = \"127.0.0.1:1\"\n[admin\n";
    assert_eq!(at(text, "[admin"), None);
    let text = "[listener]\n\nport 80\n";
    assert_eq!(at(text, "port"), None);
    let text = "[backend]\n[[backend.upstreams]]\naddress = \"a\" # [\nsize\n";
    assert_eq!(at(text, "size"), None);
    // Still open: the continuation names the key being set.
    let text = "[autoscaler]\ninitial = [ # ]\n  \"medium\",\n  huge\n]\n";
    assert_eq!(at(text, "huge").as_deref(), Some("autoscaler.initial"));
    let text = "[x]\ns = \"\"\"\n[not a header\n\"\"\"\n";
    assert_eq!(at(text, "[not").as_deref(), Some("x.s"));
    let text = "[backend]\nupstreams = [\n  { address = \"]\" },\n  oops\n]\n";
    assert_eq!(at(text, "oops").as_deref(), Some("backend.upstreams"));
}

#[test]
fn whole_numbers_out_of_range_name_the_edge_they_cross() {
    let text = |r: Reworded| match r {
        Reworded::Other(text) => text,
        Reworded::UnknownKey { message, .. } => message,
    };
    assert_eq!(
        text(reword("invalid value: integer `-1`, expected usize")),
        "invalid value: integer `-1`, expected a whole number >= 0"
    );
    assert_eq!(
        text(reword("invalid value: integer `4294967296`, expected u32")),
        "invalid value: integer `4294967296`, expected a whole number of at most 4294967295"
    );
    assert_eq!(
        text(reword("invalid type: string \"x\", expected u32")),
        "invalid type: string \"x\", expected a whole number >= 0"
    );
}
