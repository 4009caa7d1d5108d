//! docs/protocol.md section 9, byte for byte, in both directions.

use mcp_codec::{
    Decoded, Envelope, ErrorCode, ErrorFrame, Flags, Metadata, Ping, Request, Response, checksum,
    decode_frame, format,
};

const VECTORS: &str = include_str!("data/vectors.txt");

/// The named frames of `data/vectors.txt`.
fn vectors() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for line in VECTORS.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_suffix(':') {
            out.push((name.to_string(), Vec::new()));
            continue;
        }
        let bytes = &mut out.last_mut().expect("hex before a name").1;
        for hex in line.split_whitespace() {
            bytes.push(u8::from_str_radix(hex, 16).expect("hex byte"));
        }
    }
    out
}

fn vector(name: &str) -> Vec<u8> {
    vectors()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no vector {name}"))
        .1
}

const TRACEPARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn expected(name: &str) -> Envelope<'static> {
    const TP: &[(&str, &[u8])] = &[("traceparent", TRACEPARENT)];
    match name {
        "ping_nonce_1" => Envelope::Ping(Ping {
            nonce: 1u64.to_be_bytes(),
        }),
        "request_echo_json" => Envelope::Request(Request {
            id: 1,
            flags: Flags::NONE,
            format: format::JSON,
            method: "echo",
            meta: Metadata::EMPTY,
            body: br#"{"msg":"hi"}"#,
        }),
        "request_user_get_protobuf_traceparent" => Envelope::Request(Request {
            id: 7,
            flags: Flags::NONE,
            format: format::PROTOBUF,
            method: "user.get",
            meta: Metadata::from_pairs(TP),
            body: &[0x0a, 0x03, 0x75, 0x31, 0x32],
        }),
        "response_json" => Envelope::Response(Response {
            id: 1,
            flags: Flags::NONE,
            format: format::JSON,
            meta: Metadata::EMPTY,
            body: br#"{"msg":"hi"}"#,
        }),
        "error_no_such_method" => Envelope::Error(ErrorFrame {
            id: 1,
            code: ErrorCode::UNKNOWN_METHOD,
            message: "no such method",
        }),
        other => panic!("unknown vector {other}"),
    }
}

#[test]
fn crc_check_value() {
    assert_eq!(checksum(b"123456789"), 0x29B1);
}

#[test]
fn all_five_vectors_are_present() {
    assert_eq!(vectors().len(), 5);
}

#[test]
fn vectors_decode_to_the_expected_envelopes() {
    for (name, wire) in vectors() {
        let Decoded::Frame { frame, len } = decode_frame(&wire).expect(&name) else {
            panic!("{name}: incomplete");
        };
        assert_eq!(len, wire.len(), "{name}: consumed");
        let envelope = Envelope::parse(frame).expect(&name);
        assert_eq!(envelope, expected(&name), "{name}");
    }
}

#[test]
fn vectors_encode_byte_for_byte() {
    for (name, wire) in vectors() {
        let envelope = expected(&name);
        assert_eq!(
            envelope.encoded_len().unwrap(),
            wire.len(),
            "{name}: length"
        );
        let mut out = vec![0u8; wire.len()];
        let len = envelope.encode(&mut out).expect(&name);
        assert_eq!(len, wire.len(), "{name}");
        assert_eq!(out, wire, "{name}: bytes");
        let mut vec = Vec::new();
        envelope.encode_to_vec(&mut vec).expect(&name);
        assert_eq!(vec, wire, "{name}: encode_to_vec");
    }
}

#[test]
fn traceparent_metadata_reads_back() {
    let wire = vector("request_user_get_protobuf_traceparent");
    let Decoded::Frame { frame, .. } = decode_frame(&wire).unwrap() else {
        panic!("incomplete")
    };
    let Envelope::Request(request) = Envelope::parse(frame).unwrap() else {
        panic!("not a request")
    };
    assert_eq!(request.meta.len(), 1);
    assert_eq!(request.meta.get("traceparent"), Some(TRACEPARENT));
    assert_eq!(request.meta.get("tracestate"), None);
}

/// docs/protocol.md (the project's normative description) quotes the same vectors, byte for
/// byte, in its fenced hex blocks. Skipped only when the crate is built outside the
/// repository (no workspace around it); inside it, a missing document fails.
#[test]
fn docs_protocol_md_holds_the_same_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let Ok(doc) = std::fs::read_to_string(path) else {
        let in_repo = std::fs::read_to_string(workspace).is_ok_and(|t| t.contains("[workspace]"));
        assert!(!in_repo, "{path} is missing from the repository");
        eprintln!("{path} not found outside the repository: skipped");
        return;
    };
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for block in doc.split("```").skip(1).step_by(2) {
        let hex: Vec<&str> = block.split_whitespace().collect();
        let is_hex = !hex.is_empty()
            && hex
                .iter()
                .all(|h| h.len() == 2 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if is_hex {
            blocks.push(
                hex.iter()
                    .map(|h| u8::from_str_radix(h, 16).unwrap())
                    .collect(),
            );
        }
    }
    let expected: Vec<Vec<u8>> = vectors().into_iter().map(|(_, bytes)| bytes).collect();
    assert_eq!(blocks, expected);
}
