//! Text from the peer, made safe for a terminal.
//!
//! An ERROR message, a GOAWAY reason or a body comes from whoever is at the other end. Sent
//! to a terminal as it is, a newline splits one error into several lines (one of which may
//! pose as a line of `mcp` itself), and ESC, BEL, CR and the like move the cursor, recolour
//! or rewrite what the user sees. So every piece of such text is escaped before it is
//! printed: control characters as Rust's `escape_debug` writes them (`\n`, `\r`, `\t`,
//! `\0`, `\u{1b}`), and the invisible characters that reorder or break a line (bidirectional
//! overrides and isolates, U+2028 and U+2029) the same way. Printable text, non-ASCII
//! included, is left alone.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is (the transport's rule, which its errors
/// follow too).
fn is_unsafe(c: char) -> bool {
    mcp_transport::text::is_unsafe_char(c)
}

/// `s` on one line with every control character escaped: for error messages and any
/// other text shown as part of one line (the transport's rule, which its errors use too).
pub fn one_line(s: &str) -> Cow<'_, str> {
    mcp_transport::text::one_line(s)
}

/// `s` with control characters escaped except newline and tab: for a body shown as a block
/// of text, whose lines are its own.
pub fn block(s: &str) -> Cow<'_, str> {
    mcp_transport::text::escape_where(s, |c| c != '\n' && c != '\t' && is_unsafe(c))
}

/// JSON text with the characters a terminal must not see written as JSON escapes
/// (`\u001b`), so that it stays the same JSON value. Newlines and spaces between tokens
/// (pretty printing) are kept; inside strings, serde_json has escaped C0 controls already,
/// but not DEL, C1 controls or bidirectional overrides.
pub fn json(s: &str) -> Cow<'_, str> {
    let escape = |c: char| c != '\n' && is_unsafe(c);
    if !s.chars().any(escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if escape(c) {
            // Every such character is in the Basic Multilingual Plane: one \uXXXX each.
            out.push_str(&format!("\\u{:04x}", c as u32));
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
    fn one_line_escapes_controls_and_keeps_unicode() {
        assert!(matches!(one_line("plain é ✓ 日本"), Cow::Borrowed(_)));
        assert_eq!(
            one_line("bad\nmcp: forged\r\u{1b}[31m\u{7}\t\0\u{7f}\u{9b}"),
            r"bad\nmcp: forged\r\u{1b}[31m\u{7}\t\0\u{7f}\u{9b}"
        );
        assert_eq!(one_line("a\u{202e}b\u{2028}c"), r"a\u{202e}b\u{2028}c");
        assert!(!one_line("x\ny\rz").contains(['\n', '\r']));
    }

    #[test]
    fn block_keeps_newlines_and_tabs() {
        assert_eq!(block("a\n\tb\u{1b}[2J\r"), "a\n\tb\\u{1b}[2J\\r");
    }

    #[test]
    fn json_stays_json() {
        let text = "{\n  \"m\": \"a\u{7f}b\u{9b}c\u{202e}\"\n}";
        let escaped = json(text);
        assert_eq!(escaped, "{\n  \"m\": \"a\\u007fb\\u009bc\\u202e\"\n}");
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        let orig: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(back, orig);
    }
}
