//! `mcp decode`: frames from a capture (binary or hex) printed for people.
//!
//! A diagnostic tool must show everything it can, so unlike a connection (which closes on
//! the first framing error) it reports a damaged frame with its offset and the exact
//! reason, then looks for the next frame and carries on.

use std::fmt::Write as _;

use mcp_codec::{
    Decoded, Envelope, ErrorCode, Frame, FrameDecoder, FrameType, MAGIC, Metadata, format,
};

/// Reads the input as hex when it consists only of hex digits, whitespace, `0x` prefixes,
/// commas and colons (as copied from a dump or docs/protocol.md); otherwise as raw bytes.
pub fn parse_input(input: &[u8]) -> Result<Vec<u8>, String> {
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(input.to_vec());
    };
    let cleaned: String = text
        .replace("0x", "")
        .replace("0X", "")
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, ',' | ':'))
        .collect();
    if cleaned.is_empty() || !cleaned.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(input.to_vec());
    }
    if cleaned.len() % 2 != 0 {
        return Err(format!(
            "the input looks like hex but has an odd number of digits ({})",
            cleaned.len()
        ));
    }
    (0..cleaned.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cleaned[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// What decoding a capture found.
#[derive(Debug, Default)]
pub struct Summary {
    /// The readable report.
    pub text: String,
    /// Frames decoded and parsed.
    pub frames: usize,
    /// Damaged frames, malformed payloads and trailing garbage reported.
    pub problems: usize,
}

/// Decodes every frame in `bytes` and describes it.
pub fn describe(bytes: &[u8]) -> Summary {
    let mut out = Summary::default();
    let mut decoder = FrameDecoder::new();
    let mut at = 0;
    while at < bytes.len() {
        match decoder.decode(&bytes[at..]) {
            Ok(Decoded::Frame { frame, len }) => {
                describe_frame(&mut out, at, frame);
                at += len;
            }
            Ok(Decoded::NeedMore { needed }) => {
                out.problems += 1;
                let _ = writeln!(
                    out.text,
                    "@{at}: truncated frame: {} bytes present, at least {needed} more needed",
                    bytes.len() - at
                );
                break;
            }
            Ok(Decoded::Skip { len }) => at += len,
            Err(err) => {
                out.problems += 1;
                let _ = writeln!(out.text, "@{at}: damaged frame: {err}");
                // Carry on at the next magic after this position, if any.
                match bytes[at + 1..].windows(2).position(|w| w == MAGIC) {
                    Some(next) => {
                        let skip = next + 1;
                        let _ = writeln!(out.text, "   skipping {skip} bytes to the next \"MC\"");
                        at += skip;
                    }
                    None => break,
                }
            }
        }
    }
    if out.frames == 0 && out.problems == 0 {
        out.text.push_str("no frames in the input\n");
    }
    out
}

fn describe_frame(out: &mut Summary, at: usize, frame: Frame<'_>) {
    let ty = frame.frame_type().map_or("unknown type", FrameType::name);
    let _ = writeln!(
        out.text,
        "@{at}: {ty} (type {:#04x}), payload {} bytes, CRC ok",
        frame.type_byte(),
        frame.payload().len()
    );
    if frame.frame_type().is_none() {
        out.frames += 1;
        let _ = writeln!(out.text, "   (a receiver skips frames of unknown types)");
        return;
    }
    let envelope = match Envelope::parse(frame) {
        Ok(envelope) => envelope,
        Err(err) => {
            out.problems += 1;
            let _ = writeln!(out.text, "   malformed payload: {err}");
            return;
        }
    };
    out.frames += 1;
    let t = &mut out.text;
    match envelope {
        Envelope::Request(m) => {
            let _ = writeln!(
                t,
                "   id {} method {:?} {}{}",
                m.id,
                m.method,
                format_name(m.format),
                more(m.flags.more())
            );
            meta(t, &m.meta);
            body(t, m.format, m.body);
        }
        Envelope::Response(m) => {
            let _ = writeln!(
                t,
                "   id {} {}{}",
                m.id,
                format_name(m.format),
                more(m.flags.more())
            );
            meta(t, &m.meta);
            body(t, m.format, m.body);
        }
        Envelope::Notify(m) => {
            let _ = writeln!(
                t,
                "   topic {:?} {}{}",
                m.topic,
                format_name(m.format),
                more(m.flags.more())
            );
            meta(t, &m.meta);
            body(t, m.format, m.body);
        }
        Envelope::Error(m) => {
            let scope = if m.id == 0 {
                "connection".to_string()
            } else {
                format!("id {}", m.id)
            };
            let _ = writeln!(
                t,
                "   {scope} code {} message {:?}",
                code(m.code),
                m.message
            );
        }
        Envelope::Ping(p) => {
            let _ = writeln!(t, "   nonce {}", hex(&p.nonce));
        }
        Envelope::Pong(p) => {
            let _ = writeln!(t, "   nonce {}", hex(&p.nonce));
        }
        Envelope::Cancel(c) => {
            let _ = writeln!(t, "   id {}", c.id);
        }
        Envelope::GoAway(g) => {
            let _ = writeln!(
                t,
                "   last id {} code {} reason {:?}",
                g.last_id, g.code.0, g.reason
            );
        }
        Envelope::Continuation(c) => {
            let _ = writeln!(
                t,
                "   chunk {} bytes{}",
                c.chunk.len(),
                more(c.flags.more())
            );
        }
    }
}

fn code(code: ErrorCode) -> String {
    match code.name() {
        Some(name) => format!("{} ({name})", code.0),
        None if code.is_application() => format!("{} (application)", code.0),
        None => format!("{} (unassigned)", code.0),
    }
}

fn more(more: bool) -> &'static str {
    if more { ", MORE (continues)" } else { "" }
}

fn format_name(id: u8) -> String {
    match id {
        format::RAW => "format raw".into(),
        format::JSON => "format json".into(),
        format::PROTOBUF => "format protobuf".into(),
        128.. => format!("format {id} (application)"),
        _ => format!("format {id} (reserved)"),
    }
}

fn meta(t: &mut String, meta: &Metadata<'_>) {
    for (key, value) in meta.iter() {
        match (key, std::str::from_utf8(value)) {
            ("deadline", _) if value.len() == 4 => {
                let ms = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                let _ = writeln!(t, "   meta {key} = {ms} ms");
            }
            (_, Ok(text)) if !text.chars().any(char::is_control) => {
                let _ = writeln!(t, "   meta {key} = {text:?}");
            }
            _ => {
                let _ = writeln!(t, "   meta {key} = {}", hex(value));
            }
        }
    }
}

fn body(t: &mut String, format_id: u8, body: &[u8]) {
    const SHOWN: usize = 256;
    let shown = &body[..body.len().min(SHOWN)];
    let cut = if body.len() > SHOWN { " ..." } else { "" };
    // Text with a few line breaks or tabs reads better as text; each field stays on its
    // line, with the peer's control characters escaped (`mcp_cli::text`). Any other control
    // character says the body is binary: hex.
    match std::str::from_utf8(shown) {
        Ok(text)
            if format_id != format::PROTOBUF
                && !text
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            let _ = writeln!(
                t,
                "   body {} bytes: {}{cut}",
                body.len(),
                crate::text::one_line(text)
            );
        }
        _ => {
            let _ = writeln!(t, "   body {} bytes: {}{cut}", body.len(), hex(shown));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: &str = "4d 43 01 01 00 18 00 00 00 01 00 01 04 65 63 68 6f 00 7b 22 6d 73 67 \
                        22 3a 22 68 69 22 7d 9a f9";

    #[test]
    fn hex_input_is_recognised() {
        assert_eq!(parse_input(b"4d 43\n0x01").unwrap(), vec![0x4d, 0x43, 0x01]);
        assert!(parse_input(b"4d 4").is_err());
        // Not hex: taken as raw bytes.
        assert_eq!(parse_input(b"MC\x01").unwrap(), b"MC\x01".to_vec());
    }

    #[test]
    fn describes_the_echo_vector() {
        let bytes = parse_input(ECHO.as_bytes()).unwrap();
        let summary = describe(&bytes);
        assert_eq!(
            (summary.frames, summary.problems),
            (1, 0),
            "{}",
            summary.text
        );
        assert!(summary.text.contains("REQUEST"));
        assert!(summary.text.contains("method \"echo\""));
        assert!(summary.text.contains(r#"{"msg":"hi"}"#));
    }

    #[test]
    fn reports_a_bad_crc_and_continues() {
        let mut bytes = parse_input(ECHO.as_bytes()).unwrap();
        let good = bytes.clone();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        bytes.extend_from_slice(&good);
        let summary = describe(&bytes);
        assert_eq!(
            (summary.frames, summary.problems),
            (1, 1),
            "{}",
            summary.text
        );
        assert!(summary.text.contains("CRC mismatch"), "{}", summary.text);
    }

    /// A hostile peer's text (an ERROR message, a GOAWAY reason, a method, a body) cannot
    /// add lines to the report or reach the terminal as control characters.
    #[test]
    fn peer_text_stays_on_its_line_escaped() {
        use mcp_codec::{ErrorFrame, Flags, GoAway, GoAwayCode, Notify};
        let hostile = "bye\n@0: PING (type 0x05), CRC ok\r\u{1b}[2J\u{7}\u{202e}";
        let mut bytes = Vec::new();
        for envelope in [
            Envelope::Error(ErrorFrame {
                id: 0,
                code: ErrorCode(1),
                message: hostile,
            }),
            Envelope::GoAway(GoAway {
                last_id: 0,
                code: GoAwayCode(0),
                reason: hostile,
            }),
            Envelope::Notify(Notify {
                flags: Flags::NONE,
                format: 0,
                topic: "t\u{1b}",
                meta: Metadata::EMPTY,
                body: "line one\nline two\r\u{202e}".as_bytes(),
            }),
        ] {
            envelope.encode_to_vec(&mut bytes).unwrap();
        }
        let summary = describe(&bytes);
        assert_eq!(
            (summary.frames, summary.problems),
            (3, 0),
            "{}",
            summary.text
        );
        // Three frames, of two, two and three lines: nothing the peer sent made a line of
        // its own.
        assert_eq!(summary.text.lines().count(), 7, "{}", summary.text);
        assert_eq!(
            summary.text.lines().filter(|l| l.starts_with('@')).count(),
            3,
            "{}",
            summary.text
        );
        assert!(
            !summary.text.contains(['\r', '\u{1b}', '\u{7}', '\u{202e}']),
            "{}",
            summary.text
        );
        assert!(
            summary.text.contains(r"line one\nline two\r\u{202e}"),
            "{}",
            summary.text
        );
    }

    #[test]
    fn reports_truncation() {
        let bytes = parse_input(ECHO.as_bytes()).unwrap();
        let summary = describe(&bytes[..10]);
        assert_eq!(summary.problems, 1);
        assert!(summary.text.contains("truncated"), "{}", summary.text);
    }
}
