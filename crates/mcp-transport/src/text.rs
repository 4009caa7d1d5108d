//! Text from the peer, made safe to show: an ERROR message or a GOAWAY reason comes from
//! whoever is at the other end, and an error's `Display` that quotes it as it is lets a
//! newline split one error into several lines (one posing as a line of the program's own)
//! and ESC, BEL or CR act on the user's terminal. Every such quote goes through
//! [`one_line`].

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is: control characters, and the invisible
/// ones that reorder or break a line (bidirectional overrides and isolates, U+2028, U+2029).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2028}' | '\u{2029}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` on one line, every unsafe character written as Rust's `escape_debug` writes it
/// (`\n`, `\u{1b}`); printable text, non-ASCII included, is left alone.
pub fn one_line(s: &str) -> Cow<'_, str> {
    escape_where(s, is_unsafe_char)
}

/// `s` with the characters `escape` picks written as Rust's `escape_debug` writes them, and
/// the rest left alone; borrowed when nothing needs escaping. [`one_line`] is this with
/// [`is_unsafe_char`]; a program showing a body as a block of lines keeps `\n` and `\t`.
pub fn escape_where(s: &str, escape: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(&escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if escape(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_kept() {
        assert_eq!(one_line("plain, ünïcode"), "plain, ünïcode");
        assert!(matches!(one_line("plain"), Cow::Borrowed(_)));
        assert_eq!(
            one_line("a\nmcp: forged\r\u{1b}[31m\u{7}\u{202e}"),
            "a\\nmcp: forged\\r\\u{1b}[31m\\u{7}\\u{202e}"
        );
    }
}
