//! The line protocol of SPEC §4: framing, request parsing and reply lines.
//!
//! Framing is a bounded line splitter over a `BytesMut` read buffer, in the check-then-parse
//! style of mini-redis: [`next_frame`] returns `None` while a line is incomplete (need more
//! bytes), [`Frame::TooLong`] as soon as the buffered bytes prove the line passes
//! `max_line_bytes`, and a [`Frame::Line`] otherwise. Lines are handed out as `Bytes`
//! slices of the read buffer. [`first_line`] frames the same way in place, over input that
//! is answered where it was read (the line session's fast path), and never buffers.
//!
//! Decoding is separate from framing: [`parse`] turns one line into a [`Request`] whose
//! payload is a slice of it, [`parse_slice`] into one that borrows it.
//!
//! Both apply the same clean-up before a line is classified: the line ending (`\n` or
//! `\r\n`) goes, then a lone trailing `\r` that is left (`PING\r\r\n` is `PING`), and a
//! line of only ASCII whitespace (spaces, tabs, …) counts as empty. Keywords are matched
//! after trimming ASCII whitespace, not only spaces.

use bytes::{Bytes, BytesMut};

use crate::core::RequestClass;

// === framing ===

/// One framed unit of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line without its `\n` or `\r\n` and without a lone trailing `\r`
    /// after that; empty when it held only ASCII whitespace (may be invalid UTF-8).
    Line(Bytes),
    /// The line passes `max_line_bytes` before its newline: answer `too-long` and close.
    TooLong,
}

/// Takes the next frame off the front of `buf`, or `None` if more bytes are needed.
///
/// `scanned` remembers how far a previous call already looked for a newline, so a long line
/// arriving in many small reads is scanned once (reset to 0 whenever a frame is returned).
/// The `\r` of a `\r\n` ending does not count toward `max_line_bytes` (SPEC §4); a second
/// `\r` before it does, and is then stripped from the line handed out (see [`clean_line`]).
pub fn next_frame(buf: &mut BytesMut, scanned: &mut usize, max_line_bytes: usize) -> Option<Frame> {
    let start = (*scanned).min(buf.len());
    match buf[start..].iter().position(|&b| b == b'\n') {
        Some(offset) => {
            let newline = start + offset;
            let line = buf.split_to(newline + 1).freeze();
            *scanned = 0;
            Some(match complete_line(&line[..newline], max_line_bytes) {
                LineFrame::Line(kept) => Frame::Line(line.slice_ref(kept)),
                LineFrame::TooLong => Frame::TooLong,
            })
        }
        None => {
            *scanned = buf.len();
            // Without a newline yet, the line is already too long once it holds more than
            // the limit — plus one byte of grace for a `\r` that may end it. (Written without
            // `max_line_bytes + 1`, which overflows for `usize::MAX`.)
            let len = buf.len();
            let over =
                len > max_line_bytes && !(len - 1 == max_line_bytes && buf.last() == Some(&b'\r'));
            if over {
                *scanned = 0;
                Some(Frame::TooLong)
            } else {
                None
            }
        }
    }
}

/// A complete line framed in place (see [`first_line`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFrame<'a> {
    /// As [`Frame::Line`], borrowed from the input.
    Line(&'a [u8]),
    /// As [`Frame::TooLong`].
    TooLong,
}

/// The first complete line at the front of `data`, framed exactly as [`next_frame`] frames
/// it, and how many bytes it took (its ending included); `None` when `data` holds no
/// newline. For input that is read and answered in place, without a buffer of its own; a
/// partial line left at the end is for [`next_frame`] (which also decides when a line
/// without its newline is already too long).
pub fn first_line(data: &[u8], max_line_bytes: usize) -> Option<(LineFrame<'_>, usize)> {
    let newline = data.iter().position(|&b| b == b'\n')?;
    Some((complete_line(&data[..newline], max_line_bytes), newline + 1))
}

/// Frames a line given without its `\n`: the `\r` of a `\r\n` ending goes (and does not
/// count toward `max_line_bytes`), then [`clean_slice`].
fn complete_line(raw: &[u8], max_line_bytes: usize) -> LineFrame<'_> {
    let line = raw.strip_suffix(b"\r").unwrap_or(raw);
    if line.len() > max_line_bytes {
        LineFrame::TooLong
    } else {
        LineFrame::Line(clean_slice(line))
    }
}

/// A line as it is classified, its ending already removed: the lone `\r` left at its end
/// stripped (`PING\r\r\n` → `PING`; several are all stripped, so that no reply echoes a raw
/// `\r`), and a line of only ASCII whitespace made empty (no reply, not a request).
/// Idempotent: [`parse`] cleans again what [`next_frame`] has cleaned, to the same line.
pub fn clean_line(line: Bytes) -> Bytes {
    let kept = clean_slice(&line);
    line.slice_ref(kept)
}

/// [`clean_line`] on a borrowed line.
pub fn clean_slice(line: &[u8]) -> &[u8] {
    if line.iter().all(u8::is_ascii_whitespace) {
        return &[];
    }
    let kept = line.iter().rposition(|&b| b != b'\r').map_or(0, |i| i + 1);
    &line[..kept]
}

// === requests ===

/// A decoded line (SPEC §4). The payload is a `Bytes` slice of the line ([`parse`]) or a
/// borrowed one ([`parse_slice`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<P = Bytes> {
    /// `PING` → `PONG`
    Ping,
    /// `INFO` → placement details
    Info,
    /// `STATS` → loads of the active machines
    Stats,
    /// `QUIT` → `BYE`, then close
    Quit,
    /// A class request (`SMALL x`) or a default-class request (any other line).
    Work {
        /// The class.
        class: RequestClass,
        /// What the reply echoes (possibly empty).
        payload: P,
    },
}

/// Decodes one UTF-8 line. Returns `None` for an empty line, a line of only ASCII whitespace
/// or a lone `\r` (ignored, no reply), and for a line that is not UTF-8.
///
/// The line is first cleaned as [`next_frame`] cleans it ([`clean_line`]). Keywords are
/// commands only when they are the whole line (surrounding ASCII whitespace trimmed) and
/// match case-insensitively; a class keyword may be followed by ASCII whitespace and a
/// payload; any other line is a `default_class` request whose payload is the whole
/// (cleaned) line.
pub fn parse(line: &Bytes, default_class: RequestClass) -> Option<Request> {
    // The payload is a slice of the original line: no copy.
    Some(parse_slice(line, default_class)?.map_payload(|payload| line.slice_ref(payload)))
}

impl<P> Request<P> {
    /// The same request with its payload turned by `f` (commands carry none).
    pub fn map_payload<Q>(self, f: impl FnOnce(P) -> Q) -> Request<Q> {
        match self {
            Request::Ping => Request::Ping,
            Request::Info => Request::Info,
            Request::Stats => Request::Stats,
            Request::Quit => Request::Quit,
            Request::Work { class, payload } => Request::Work {
                class,
                payload: f(payload),
            },
        }
    }
}

/// [`parse`] on a borrowed line; the payload borrows from it.
pub fn parse_slice(line: &[u8], default_class: RequestClass) -> Option<Request<&[u8]>> {
    let line = clean_slice(line);
    if line.is_empty() {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let trimmed = text.trim_ascii();
    for (word, request) in [
        ("PING", Request::Ping),
        ("INFO", Request::Info),
        ("STATS", Request::Stats),
        ("QUIT", Request::Quit),
    ] {
        if trimmed.eq_ignore_ascii_case(word) {
            return Some(request);
        }
    }
    let (first, rest) = match trimmed.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((first, rest)) => (first, rest.trim_ascii_start()),
        None => (trimmed, ""),
    };
    if let Ok(class) = first.parse::<RequestClass>() {
        return Some(Request::Work {
            class,
            payload: rest.as_bytes(),
        });
    }
    Some(Request::Work {
        class: default_class,
        payload: line,
    })
}

// === replies ===

/// The error codes of SPEC §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No machine can take the connection and the pool can supply none.
    Exhausted,
    /// `max_connections` reached.
    Overloaded,
    /// The machine's request queue is full.
    Busy,
    /// The line is not valid UTF-8.
    BadRequest,
    /// A line passes `max_line_bytes` before its newline.
    TooLong,
    /// Shutdown has begun.
    ShuttingDown,
    /// Idle for `idle_timeout`.
    Timeout,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Exhausted => "exhausted",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Busy => "busy",
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::TooLong => "too-long",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::Timeout => "timeout",
        }
    }

    /// `ERR <code> <message>\n`
    pub fn reply(self, message: &str) -> Bytes {
        Bytes::from(format!("ERR {} {}\n", self.as_str(), message))
    }
}

/// `[55.18%,84.35%]` from loads in percent.
pub fn stats_reply(loads: impl IntoIterator<Item = f64>) -> Bytes {
    let mut out = String::from("[");
    for (i, load) in loads.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{load:.2}%"));
    }
    out.push_str("]\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], max: usize) -> Vec<Frame> {
        let mut buf = BytesMut::from(input);
        let mut scanned = 0;
        let mut out = Vec::new();
        while let Some(f) = next_frame(&mut buf, &mut scanned, max) {
            let stop = f == Frame::TooLong;
            out.push(f);
            if stop {
                break;
            }
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn splits_lf_and_crlf_and_keeps_the_rest() {
        let mut buf = BytesMut::from(&b"a\r\nb\n\npartial"[..]);
        let mut scanned = 0;
        assert_eq!(next_frame(&mut buf, &mut scanned, 10), Some(line("a")));
        assert_eq!(next_frame(&mut buf, &mut scanned, 10), Some(line("b")));
        assert_eq!(next_frame(&mut buf, &mut scanned, 10), Some(line("")));
        assert_eq!(next_frame(&mut buf, &mut scanned, 10), None);
        assert_eq!(&buf[..], b"partial");
        assert_eq!(scanned, 7);
    }

    #[test]
    fn line_of_exactly_max_bytes_is_fine_with_either_ending() {
        assert_eq!(frames(b"abcd\n", 4), vec![line("abcd")]);
        assert_eq!(frames(b"abcd\r\n", 4), vec![line("abcd")]);
        assert_eq!(frames(b"abcde\n", 4), vec![Frame::TooLong]);
    }

    #[test]
    fn too_long_is_detected_before_the_newline() {
        assert_eq!(frames(b"abcde", 4), vec![Frame::TooLong]);
        // A trailing \r may still be the start of \r\n: wait for more.
        assert_eq!(frames(b"abcd\r", 4), vec![]);
        assert_eq!(frames(b"abcd", 4), vec![]);
    }

    #[test]
    fn keywords_are_whole_line_and_case_insensitive() {
        let p = |s: &str| parse(&Bytes::copy_from_slice(s.as_bytes()), RequestClass::Small);
        assert_eq!(p("PING"), Some(Request::Ping));
        assert_eq!(p("  ping "), Some(Request::Ping));
        assert_eq!(p("Info"), Some(Request::Info));
        assert_eq!(p("stats"), Some(Request::Stats));
        assert_eq!(p("QUIT"), Some(Request::Quit));
        assert_eq!(p(""), None);
        assert_eq!(
            p("PING x"),
            Some(Request::Work {
                class: RequestClass::Small,
                payload: Bytes::from_static(b"PING x")
            })
        );
    }

    #[test]
    fn class_requests_take_the_rest_as_payload() {
        let p = |s: &str| parse(&Bytes::copy_from_slice(s.as_bytes()), RequestClass::Medium);
        assert_eq!(
            p("LARGE hello world"),
            Some(Request::Work {
                class: RequestClass::Large,
                payload: Bytes::from_static(b"hello world")
            })
        );
        assert_eq!(
            p("small"),
            Some(Request::Work {
                class: RequestClass::Small,
                payload: Bytes::new()
            })
        );
        assert_eq!(
            p("SMALLER x"),
            Some(Request::Work {
                class: RequestClass::Medium,
                payload: Bytes::from_static(b"SMALLER x")
            })
        );
    }

    /// Regression (found by tests/codec_props.rs): `max_line_bytes + 1` overflowed, a
    /// panic in debug builds and "every line is too long" in release ones.
    #[test]
    fn the_largest_limit_does_not_overflow() {
        assert_eq!(frames(b"abc", usize::MAX), vec![]);
        assert_eq!(frames(b"abc\r", usize::MAX), vec![]);
        assert_eq!(frames(b"abc\r\n", usize::MAX), vec![line("abc")]);
        assert_eq!(frames(b"", 0), vec![]);
        assert_eq!(frames(b"\r", 0), vec![]);
        assert_eq!(frames(b"a", 0), vec![Frame::TooLong]);
        assert_eq!(frames(b"\r\n", 0), vec![line("")]);
    }

    #[test]
    fn a_lone_trailing_cr_is_stripped_before_classifying() {
        // `PING\r\r\n`: the `\r\n` ending goes, then the lone `\r` left before it.
        assert_eq!(frames(b"PING\r\r\n", 16), vec![line("PING")]);
        assert_eq!(frames(b"hello\r\r\n", 16), vec![line("hello")]);
        assert_eq!(frames(b"hello\r\r\r\n", 16), vec![line("hello")]);
        // Only at the end: a `\r` inside the line stays.
        assert_eq!(frames(b"a\rb\r\r\n", 16), vec![line("a\rb")]);
        let p = |s: &[u8]| parse(&Bytes::copy_from_slice(s), RequestClass::Small);
        assert_eq!(p(b"PING\r"), Some(Request::Ping));
        assert_eq!(
            p(b"hello\r"),
            Some(Request::Work {
                class: RequestClass::Small,
                payload: Bytes::from_static(b"hello")
            })
        );
        assert_eq!(
            p(b"LARGE x\r"),
            Some(Request::Work {
                class: RequestClass::Large,
                payload: Bytes::from_static(b"x")
            })
        );
        assert_eq!(p(b"\r"), None);
    }

    #[test]
    fn the_lone_cr_counts_toward_the_limit_only_the_ending_does_not() {
        assert_eq!(frames(b"abc\r\r\n", 4), vec![line("abc")]);
        assert_eq!(frames(b"abcd\r\r\n", 4), vec![Frame::TooLong]);
        assert_eq!(frames(b"abcd\r\r", 4), vec![Frame::TooLong]);
    }

    #[test]
    fn a_line_of_only_whitespace_is_empty() {
        let mut want = vec![line(""); 5];
        want.push(line("PING"));
        assert_eq!(frames(b"   \n\t\n \t \r\n\r\r\n\x0c\nPING\n", 16), want);
        let p = |s: &str| parse(&Bytes::copy_from_slice(s.as_bytes()), RequestClass::Small);
        assert_eq!(p("   "), None);
        assert_eq!(p("\t"), None);
        assert_eq!(p(" \t \r"), None);
        // Not whitespace: an ordinary request, its payload the whole line.
        assert_eq!(
            p(" . "),
            Some(Request::Work {
                class: RequestClass::Small,
                payload: Bytes::from_static(b" . ")
            })
        );
    }

    #[test]
    fn keywords_are_trimmed_of_ascii_whitespace() {
        let p = |s: &str| parse(&Bytes::copy_from_slice(s.as_bytes()), RequestClass::Small);
        assert_eq!(p("\tPING"), Some(Request::Ping));
        assert_eq!(p(" \tquit\t "), Some(Request::Quit));
        assert_eq!(p("STATS\x0c"), Some(Request::Stats));
        assert_eq!(
            p("\tmedium\t hello world \t"),
            Some(Request::Work {
                class: RequestClass::Medium,
                payload: Bytes::from_static(b"hello world")
            })
        );
        assert_eq!(
            p("SMALL\t"),
            Some(Request::Work {
                class: RequestClass::Small,
                payload: Bytes::new()
            })
        );
        // A default-class line keeps its whitespace: the payload is the whole line.
        assert_eq!(
            p("\tPING x "),
            Some(Request::Work {
                class: RequestClass::Small,
                payload: Bytes::from_static(b"\tPING x ")
            })
        );
        // Not ASCII whitespace: U+00A0 is part of the word.
        assert_eq!(
            p("PING\u{a0}"),
            Some(Request::Work {
                class: RequestClass::Small,
                payload: Bytes::from("PING\u{a0}")
            })
        );
    }

    #[test]
    fn stats_format_matches_the_spec() {
        assert_eq!(&stats_reply([55.18, 84.354])[..], b"[55.18%,84.35%]\n");
        assert_eq!(&stats_reply([])[..], b"[]\n");
    }

    #[test]
    fn error_lines() {
        assert_eq!(
            &ErrorCode::TooLong.reply("line exceeds 4 bytes")[..],
            b"ERR too-long line exceeds 4 bytes\n"
        );
    }
}
