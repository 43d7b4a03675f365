//! Property tests (proptest) of the line codec, `elastic_lb::protocol` (SPEC §4, issue 11
//! item 8): [`next_frame`] over arbitrary byte streams cut into arbitrary reads, and
//! [`parse`] over arbitrary lines.
//!
//! - however the reads split a stream, the frames are those of one read, and both equal
//!   those of a small reference model written from SPEC §4 (`model` below);
//! - nothing panics, whatever the bytes and whatever `max_line_bytes` (0 included);
//! - the limit holds: a line longer than `max_line_bytes` yields `TooLong` (and nothing
//!   after it), never a frame; a line up to the limit yields exactly that line, whether it
//!   ends in `\n` or `\r\n` (the `\r` of the ending does not count; a lone `\r` before it
//!   does, and is stripped);
//! - `parse`: commands whatever their case and surrounding ASCII whitespace, class requests
//!   with their payload sliced out of the line, whitespace-only lines ignored, and every
//!   other line a default-class request of the whole (cleaned) line.
//!
//! Case counts are set on each block (`ProptestConfig::cases`), so the suite takes about a
//! second in a debug build; `PROPTEST_CASES` does not change them.

use bytes::{Bytes, BytesMut};
use elastic_lb::core::RequestClass;
use elastic_lb::protocol::{
    clean_line, first_line, next_frame, parse, parse_slice, Frame, LineFrame, Request,
};
use proptest::prelude::*;

#[path = "common/props.rs"]
mod props;
use props::config;

// === helpers ===

/// Frames of `input` delivered as the pieces between `cuts` (byte offsets, any order, out
/// of range allowed: taken modulo the length), stopping after `TooLong` as a session does.
fn frames_split(input: &[u8], cuts: &[usize], max: usize) -> Vec<Frame> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut scanned = 0;
    let mut out = Vec::new();
    let mut from = 0;
    for to in cuts {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        while let Some(frame) = next_frame(&mut buf, &mut scanned, max) {
            let stop = frame == Frame::TooLong;
            out.push(frame);
            if stop {
                return out;
            }
        }
    }
    out
}

/// Frames of `input` in one read.
fn frames_whole(input: &[u8], max: usize) -> Vec<Frame> {
    frames_split(input, &[], max)
}

/// Frames of `input` as the line session's fast path takes one read of it: complete lines
/// framed in place ([`first_line`]) up to the first `TooLong`, then the rest (a partial
/// line) through a buffer and [`next_frame`], as the session's usual path does.
fn frames_in_place(input: &[u8], max: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut used = 0;
    while let Some((frame, len)) = first_line(&input[used..], max) {
        used += len;
        match frame {
            LineFrame::Line(line) => out.push(Frame::Line(Bytes::copy_from_slice(line))),
            LineFrame::TooLong => {
                out.push(Frame::TooLong);
                return out;
            }
        }
    }
    let mut buf = BytesMut::from(&input[used..]);
    let mut scanned = 0;
    while let Some(frame) = next_frame(&mut buf, &mut scanned, max) {
        let stop = frame == Frame::TooLong;
        out.push(frame);
        if stop {
            break;
        }
    }
    out
}

/// SPEC §4 written directly over slices: lines end at `\n`, a `\r` before it is part of the
/// ending; a line longer than `max` is `TooLong` and ends the stream; an unfinished line is
/// `TooLong` once it holds more than `max` bytes plus one for a `\r` that may start its
/// ending. Lines are cleaned: trailing `\r`s stripped, whitespace-only made empty.
fn model(input: &[u8], max: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        let line = rest[..i].strip_suffix(b"\r").unwrap_or(&rest[..i]);
        if line.len() > max {
            out.push(Frame::TooLong);
            return out;
        }
        out.push(Frame::Line(Bytes::copy_from_slice(model_clean(line))));
        rest = &rest[i + 1..];
    }
    if rest.len() > max + 1 || (rest.len() == max + 1 && rest.last() != Some(&b'\r')) {
        out.push(Frame::TooLong);
    }
    out
}

/// The clean-up of SPEC §4 as the reference states it.
fn model_clean(line: &[u8]) -> &[u8] {
    if line.iter().all(u8::is_ascii_whitespace) {
        return &[];
    }
    let mut line = line;
    while let Some(rest) = line.strip_suffix(b"\r") {
        line = rest;
    }
    line
}

/// Bytes that matter to the framer and the parser, often, and any byte now and then. (One
/// `u16` per byte rather than a `prop_oneof!`: several times faster in a debug build.
/// Shrinks towards `a`.)
fn byte() -> impl Strategy<Value = u8> {
    const TABLE: &[u8; 15] = b"a\n\n\n\r\r\r \tPINGSq";
    any::<u16>().prop_map(|v| match TABLE.get(usize::from(v & 0xf)) {
        Some(&b) => b,
        None => (v >> 8) as u8,
    })
}

/// Line content: no `\n` (each one drawn becomes a `\r`).
fn content(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(byte().prop_map(|b| if b == b'\n' { b'\r' } else { b }), len)
}

/// ASCII whitespace, possibly none.
fn ws() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![' ', '\t', '\x0c', '\r']), 0..4)
        .prop_map(|v| v.into_iter().collect())
}

/// A payload: no whitespace at either end, spaces and tabs inside.
fn payload() -> impl Strategy<Value = String> {
    let word = prop::collection::vec(prop::sample::select(b"az09.-".to_vec()), 1..6);
    let sep = prop::sample::select(vec![" ", "\t", "  "]);
    prop::collection::vec((sep, word), 1..4).prop_map(|parts| {
        let mut out = String::new();
        for (i, (sep, word)) in parts.into_iter().enumerate() {
            if i > 0 {
                out.push_str(sep);
            }
            out.extend(word.into_iter().map(char::from));
        }
        out
    })
}

/// The `Line` frames' bytes must never break the limit or hold line-ending bytes.
fn assert_frames_are_bounded(frames: &[Frame], max: usize) -> Result<(), TestCaseError> {
    for (i, frame) in frames.iter().enumerate() {
        match frame {
            Frame::Line(line) => {
                prop_assert!(line.len() <= max, "frame {i} longer than {max}: {line:?}");
                prop_assert!(!line.contains(&b'\n'), "frame {i} holds a newline");
                prop_assert!(line.last() != Some(&b'\r'), "frame {i} ends in \\r");
                prop_assert!(
                    line.is_empty() || !line.iter().all(u8::is_ascii_whitespace),
                    "frame {i} is whitespace only: {line:?}"
                );
            }
            Frame::TooLong => prop_assert_eq!(i, frames.len() - 1, "frames after TooLong"),
        }
    }
    Ok(())
}

// === framing ===

proptest! {
    #![proptest_config(config(1000))]

    /// Arbitrary streams cut at arbitrary points: the frames of one read, and those of the
    /// reference model.
    #[test]
    fn split_reads_give_the_frames_of_one_read(
        input in prop::collection::vec(byte(), 0..160),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        max in 1usize..24,
    ) {
        let whole = frames_whole(&input, max);
        prop_assert_eq!(&frames_split(&input, &cuts, max), &whole, "cuts {:?}", cuts);
        prop_assert_eq!(&whole, &model(&input, max));
        assert_frames_are_bounded(&whole, max)?;
    }

    /// Framing in place (the session's fast path) gives the frames of the buffered path,
    /// and a borrowed parse the request of a `Bytes` one.
    #[test]
    fn in_place_framing_and_parsing_match_the_buffered_path(
        input in prop::collection::vec(byte(), 0..160),
        max in 0usize..24,
    ) {
        let frames = frames_in_place(&input, max);
        prop_assert_eq!(&frames, &frames_whole(&input, max));
        for frame in &frames {
            if let Frame::Line(line) = frame {
                let owned = parse(line, RequestClass::Medium);
                let borrowed = parse_slice(line, RequestClass::Medium)
                    .map(|r| r.map_payload(Bytes::copy_from_slice));
                prop_assert_eq!(owned, borrowed);
            }
        }
    }

    /// One byte per read, the worst case for the `scanned` bookkeeping.
    #[test]
    fn byte_by_byte_reads_give_the_frames_of_one_read(
        input in prop::collection::vec(byte(), 0..80),
        max in 1usize..12,
    ) {
        let cuts: Vec<usize> = (0..input.len()).collect();
        prop_assert_eq!(frames_split(&input, &cuts, max), frames_whole(&input, max));
    }

    /// A single line of `len` content bytes and a `\n`, `\r\n` or `\r\r\n` ending, however
    /// split: `TooLong` exactly when the bytes before the ending (a lone `\r` included, the
    /// `\r` of `\r\n` not) pass the limit; otherwise exactly the cleaned line.
    #[test]
    fn the_limit_holds_and_crlf_is_lf(
        line in content(0..40),
        ending in prop::sample::select(vec![&b"\n"[..], b"\r\n", b"\r\r\n"]),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        max in 1usize..40,
    ) {
        let mut input = line.clone();
        input.extend_from_slice(ending);
        // Bytes before the ending: all but the `\n` and the `\r` just before it, if any
        // (which may be the line's own last byte when `ending` is only `\n`).
        let before_newline = &input[..input.len() - 1];
        let counted = before_newline.strip_suffix(b"\r").unwrap_or(before_newline).len();
        prop_assert!(counted >= line.len().saturating_sub(1));
        let expected = if counted > max {
            vec![Frame::TooLong]
        } else {
            vec![Frame::Line(Bytes::copy_from_slice(model_clean(&line)))]
        };
        prop_assert_eq!(frames_split(&input, &cuts, max), expected);
    }

    /// An unfinished line longer than the limit is `TooLong` before its newline arrives, and
    /// one within it (a `\r` of grace) waits for more.
    #[test]
    fn an_unfinished_line_is_judged_by_its_length(line in content(0..40), max in 1usize..40) {
        let frames = frames_whole(&line, max);
        let over = line.len() > max + 1 || (line.len() == max + 1 && line.last() != Some(&b'\r'));
        prop_assert_eq!(frames, if over { vec![Frame::TooLong] } else { vec![] });
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any bytes at all, any limit (0 and huge included), any reads: no panic, and every
    /// frame (and the whole input) goes through `parse` without one.
    #[test]
    fn nothing_panics(
        input in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max in prop_oneof![0usize..4, 0usize..300, Just(usize::MAX - 1), Just(usize::MAX)],
    ) {
        let frames = frames_split(&input, &cuts, max);
        if max < usize::MAX - 1 {
            assert_frames_are_bounded(&frames, max)?;
        }
        for frame in &frames {
            if let Frame::Line(line) = frame {
                let _ = parse(line, RequestClass::Medium);
            }
        }
        let _ = parse(&Bytes::from(input), RequestClass::Large);
    }
}

// === parsing ===

proptest! {
    #![proptest_config(config(500))]

    /// A command in any case with any ASCII whitespace around it.
    #[test]
    fn commands_ignore_case_and_surrounding_whitespace(
        (word, request) in prop::sample::select(vec![
            ("PING", Request::Ping),
            ("INFO", Request::Info),
            ("STATS", Request::Stats),
            ("QUIT", Request::Quit),
        ]),
        cased in any::<u64>(),
        before in ws(),
        after in ws(),
    ) {
        let cased: String = word
            .chars()
            .enumerate()
            .map(|(i, c)| if cased >> i & 1 == 1 { c.to_ascii_lowercase() } else { c })
            .collect();
        let line = Bytes::from(format!("{before}{cased}{after}"));
        prop_assert_eq!(parse(&line, RequestClass::Small), Some(request));
    }

    /// `SMALL`/`MEDIUM`/`LARGE`, whitespace, a payload: that class, and the payload as a
    /// slice of the line (no copy), without the whitespace around it.
    #[test]
    fn class_requests_slice_their_payload(
        (word, class) in prop::sample::select(vec![
            ("small", RequestClass::Small),
            ("medium", RequestClass::Medium),
            ("large", RequestClass::Large),
        ]),
        upper in any::<bool>(),
        before in ws(),
        between in ws().prop_filter("a separator", |s| !s.is_empty()),
        payload in payload(),
        after in ws(),
    ) {
        let word = if upper { word.to_ascii_uppercase() } else { word.to_string() };
        let line = Bytes::from(format!("{before}{word}{between}{payload}{after}"));
        let Some(Request::Work { class: got, payload: got_payload }) =
            parse(&line, RequestClass::Small)
        else {
            return Err(TestCaseError::fail(format!("not a work request: {line:?}")));
        };
        prop_assert_eq!(got, class);
        prop_assert_eq!(&got_payload[..], payload.as_bytes());
        let range = line.as_ptr() as usize..line.as_ptr() as usize + line.len();
        prop_assert!(range.contains(&(got_payload.as_ptr() as usize)), "payload was copied");
    }

    /// Any line: `None` exactly when it is empty after clean-up (or not UTF-8); `parse`
    /// agrees with itself on the cleaned line; no payload ends in `\r`; a default-class
    /// request carries the whole cleaned line.
    #[test]
    fn every_line_is_classified_after_clean_up(raw in prop::collection::vec(byte(), 0..40)) {
        let line = Bytes::from(raw);
        let cleaned = clean_line(line.clone());
        prop_assert_eq!(clean_line(cleaned.clone()), cleaned.clone(), "clean_line is idempotent");
        let parsed = parse(&line, RequestClass::Medium);
        prop_assert_eq!(&parsed, &parse(&cleaned, RequestClass::Medium));
        let utf8 = std::str::from_utf8(&cleaned).is_ok();
        prop_assert_eq!(parsed.is_none(), cleaned.is_empty() || !utf8);
        if let Some(Request::Work { class, payload }) = parsed {
            prop_assert!(payload.last() != Some(&b'\r'));
            let text = std::str::from_utf8(&cleaned).expect("parsed lines are UTF-8");
            let first = text.trim_ascii().split(|c: char| c.is_ascii_whitespace()).next();
            let named = first.and_then(|w| w.parse::<RequestClass>().ok());
            match named {
                Some(named) => {
                    prop_assert_eq!(class, named);
                    prop_assert!(!payload.first().is_some_and(u8::is_ascii_whitespace));
                    prop_assert!(!payload.last().is_some_and(u8::is_ascii_whitespace));
                }
                None => {
                    prop_assert_eq!(class, RequestClass::Medium);
                    prop_assert_eq!(payload, cleaned);
                }
            }
        }
    }

    /// Lines of only ASCII whitespace are ignored.
    #[test]
    fn whitespace_only_lines_are_ignored(line in ws()) {
        prop_assert_eq!(parse(&Bytes::from(line), RequestClass::Small), None);
    }
}
