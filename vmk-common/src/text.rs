//! User- and guest-supplied text as vmk prints it: control characters shown escaped, long
//! text cut to a bounded excerpt. The one place every error, `info` and `ps` line passes
//! through, so a crafted config or guest cannot retitle, clear or flood a terminal.

use std::borrow::Cow;
use std::fmt::Write;

/// The longest excerpt of user text an error quotes, in characters.
pub const EXCERPT_CHARS: usize = 80;

/// `s` with every control character (C0 but newline and tab, DEL, C1) and the invisible
/// characters that change how text reads (BOM, bidi overrides) written as escapes
/// (`\x1b`, `\u{feff}`), so that it prints as it is.
pub fn escaped(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_char(&mut out, c);
    }
    Cow::Owned(out)
}

/// The longest message (an error and each of its causes) printed, in characters: enough
/// for qemu's own error text, bounded against a message that quotes a huge input.
pub const MESSAGE_CHARS: usize = 4000;

/// A whole message for a terminal: [`escaped`] (newlines kept), cut after
/// [`MESSAGE_CHARS`] characters with how much was left out.
pub fn message(s: &str) -> String {
    let head = first_chars(s, MESSAGE_CHARS);
    with_rest(escaped(head).into_owned(), s.len() - head.len())
}

/// One line of `s`: like [`escaped`], newlines and tabs escaped too.
pub fn escaped_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c) || c == '\n' || c == '\t') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => push_char(&mut out, c),
        }
    }
    Cow::Owned(out)
}

/// A short, escaped, one-line excerpt of `s`: at most [`EXCERPT_CHARS`] characters of it,
/// then how much was left out.
pub fn excerpt(s: &str) -> String {
    excerpt_of(s, EXCERPT_CHARS)
}

/// [`excerpt`] with another length.
pub fn excerpt_of(s: &str, max_chars: usize) -> String {
    let head = first_chars(s, max_chars);
    with_rest(escaped_line(head).into_owned(), s.len() - head.len())
}

/// The first `n` characters of `s` (all of it when shorter).
fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `out`, then how many bytes were left out, when any were.
fn with_rest(mut out: String, rest: usize) -> String {
    if rest > 0 {
        let _ = write!(out, "… ({rest} more bytes)");
    }
    out
}

/// Bytes (a file's content, an argument) as an escaped excerpt: invalid UTF-8 shown lossily.
pub fn excerpt_bytes(b: &[u8]) -> String {
    let head = &b[..b.len().min(EXCERPT_CHARS * 4)];
    let text = String::from_utf8_lossy(head);
    let mut out = excerpt_of(&text, EXCERPT_CHARS);
    if head.len() < b.len() && !out.ends_with("bytes)") {
        let _ = write!(out, "… ({} more bytes)", b.len() - head.len());
    }
    out
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{feff}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_char(out: &mut String, c: char) {
    if !needs_escape(c) {
        out.push(c);
    } else if (c as u32) < 0x80 {
        let _ = write!(out, "\\x{:02x}", c as u32);
    } else {
        let _ = write!(out, "\\u{{{:x}}}", c as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(escaped("plain text\nline two"), "plain text\nline two");
        assert_eq!(escaped("\x1b]0;owned\x07"), "\\x1b]0;owned\\x07");
        assert_eq!(escaped("\u{feff}VMK_MEM"), "\\u{feff}VMK_MEM");
        assert_eq!(escaped("a\u{202e}b\u{9b}c\x7f"), "a\\u{202e}b\\u{9b}c\\x7f");
        assert_eq!(escaped_line("a\nb\tc"), "a\\nb\\tc");
    }

    #[test]
    fn messages_keep_lines_and_are_bounded() {
        assert_eq!(message("a\n\x1b[2Jb"), "a\n\\x1b[2Jb");
        let m = message(&"z".repeat(1 << 20));
        assert!(m.len() < MESSAGE_CHARS + 40 && m.ends_with("more bytes)"));
    }

    #[test]
    fn excerpts_are_bounded() {
        let long = "x".repeat(10 << 20);
        let e = excerpt(&long);
        assert!(e.len() < 120, "{e}");
        assert!(e.ends_with(&format!("({} more bytes)", (10 << 20) - EXCERPT_CHARS)));
        assert_eq!(excerpt("short"), "short");
        assert_eq!(excerpt_of("éééé", 2), "éé… (4 more bytes)");
        let bin = [b'a', 0xff, 0x1b, b'b'];
        assert_eq!(excerpt_bytes(&bin), "a\u{fffd}\\x1bb");
        assert!(excerpt_bytes(&vec![b'y'; 1 << 20]).len() < 120);
    }
}
