#!/usr/bin/env python3
"""Writes the committed seed corpus of the mcp-codec fuzz targets.

Independent of the codec on purpose: frames are built here with Python's
binascii.crc_hqx (CRC-16/IBM-3740 with init 0xFFFF), the same check PROTOCOL.md's
vectors were computed with. Run from anywhere: `python3 fuzz/make_seeds.py`.
The input layout of each target is described at the top of its source file.

The protocol-core targets (client_core, server_core) read their input with `arbitrary`
(1.x): integers little-endian, a bool is a byte's low bit, an enum variant a u32 scaled to
the variant count, an Option a bool then the value, and the trailing list of operations a
1 byte before each one. `cargo +nightly fuzz fmt <target> <file>` prints what a seed decodes
to; keep the variant lists below in the order of the targets' enums.
"""
import binascii
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent
VECTORS = ROOT.parent / "crates/mcp-codec/tests/data/vectors.txt"


def vectors():
    out, name = {}, None
    for line in VECTORS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith(":"):
            name = line[:-1]
            out[name] = b""
        else:
            out[name] += bytes(int(h, 16) for h in line.split())
    return out


def frame(type_byte, payload):
    body = bytes([0x01, type_byte]) + struct.pack(">H", len(payload)) + payload
    return b"MC" + body + struct.pack(">H", binascii.crc_hqx(body, 0xFFFF))


def request(rid, flags, method, body, meta=b"\x00", fmt=1):
    return struct.pack(">IBBB", rid, flags, fmt, len(method)) + method + meta + body


def continuation(more, chunk):
    return bytes([1 if more else 0]) + chunk


PING = frame(0x05, b"\x00" * 7 + b"\x01")
# A REQUEST in three frames with a PING between them.
MULTI = [
    (0x01, request(9, 1, b"bulk.put", b"head-part")),
    (0x09, continuation(True, b"chunk-one")),
    (0x05, b"beatbeat"),
    (0x09, continuation(False, b"chunk-two")),
]
UNKNOWN = (0x42, b"from the future")


def records(frames):
    """envelope_roundtrip records: type u8 | len u8 | payload."""
    return b"".join(bytes([t, len(p)]) + p for t, p in frames)


# --- arbitrary encoding, for the protocol-core targets ---------------------------------

def u8(v):
    return bytes([v])


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def flag(b):
    return b"\x01" if b else b"\x00"


def opt(encoded):
    return b"\x00" if encoded is None else b"\x01" + encoded


def variant(names, name, *fields):
    """An enum value: the u32 tag arbitrary scales to variant `name`, then its fields."""
    i, n = names.index(name), len(names)
    tag = -(-(i << 32) // n)  # the smallest u32 that scales to i
    assert tag < 1 << 32 and (tag * n) >> 32 == i
    return u32(tag) + b"".join(fields)


def ops(items):
    return b"".join(b"\x01" + item for item in items)


# client_core: Input { max_abandoned: u8, subscribe_timeout_ms: u16,
# heartbeat_interval_ms: u16, heartbeat_timeout_ms: u16, max_message_len: Option<u16>, ops }
C_OP = ["Call", "Detached", "Abandon", "Notify", "Frame", "Raw", "Deliver", "Advance",
        "FireTimer", "Drain", "Close", "RequestClose", "Eof", "WriterGone", "Full"]
C_FRAME = ["Response", "Error", "ConnectionError", "GoAway", "Ping", "Pong", "Notify",
           "ResponseHead", "Continuation"]
C_ID = ["InFlight", "Sent", "Zero", "Any"]


def c_input(items, max_abandoned=7, subscribe_ms=5000, interval_ms=15000, timeout_ms=5000,
            max_message_len=None):
    head = u8(max_abandoned) + u16(subscribe_ms) + u16(interval_ms) + u16(timeout_ms)
    return head + opt(None if max_message_len is None else u16(max_message_len)) + ops(items)


def c_op(name, *fields):
    return variant(C_OP, name, *fields)


def c_call(deadline_ms=None, body_len=4):
    return c_op("Call", opt(None if deadline_ms is None else u16(deadline_ms)), u8(body_len))


def c_id(name, value=None):
    if name == "Any":
        return variant(C_ID, name, u32(value))
    if name == "Zero":
        return variant(C_ID, name)
    return variant(C_ID, name, u8(value))


def c_frame(frame, hold=False):
    return c_op("Frame", frame, flag(hold))


def c_response(id_, body_len=4):
    return variant(C_FRAME, "Response", id_, u8(body_len))


def c_error(id_, code):
    return variant(C_FRAME, "Error", id_, u8(code))


def c_goaway(last_id, code=0):
    return variant(C_FRAME, "GoAway", last_id, u8(code))


def c_ping(nonce):
    return variant(C_FRAME, "Ping", u64(nonce))


def client_core_seeds():
    first, second = c_id("InFlight", 0), c_id("InFlight", 1)
    return {
        "answered-then-eof": c_input([
            c_call(), c_call(body_len=0),
            c_frame(c_response(second)), c_frame(c_response(first)), c_op("Eof"),
        ]),
        "deadline-then-late-answer": c_input([
            c_call(deadline_ms=100), c_op("Advance", u16(100)),
            c_frame(c_response(c_id("Sent", 0))), c_call(),
        ]),
        "goaway-mid-load": c_input([
            c_call(), c_call(), c_call(), c_frame(c_goaway(second)),
            c_call(), c_frame(c_response(first)), c_frame(c_response(first)),
            c_frame(c_error(c_id("Sent", 2), 6)),
        ]),
        "error-6-drains": c_input([
            c_call(), c_call(), c_frame(c_error(first, 6)), c_frame(c_response(first)),
        ]),
        "abandoned-past-the-limit": c_input([
            c_call(), c_call(), c_call(), c_op("Abandon", u8(0)), c_op("Abandon", u8(1)),
            c_frame(c_response(c_id("Sent", 0))), c_op("Abandon", u8(2)),
        ], max_abandoned=0),
        "pings-with-a-full-queue": c_input([
            c_op("Full", flag(True)), c_frame(c_ping(1)), c_op("Full", flag(False)),
            c_frame(c_ping(2)), c_frame(variant(C_FRAME, "Pong", u64(3))),
        ]),
        "heartbeat-dead": c_input([
            c_call(), c_op("FireTimer"), c_op("FireTimer"),
        ], interval_ms=1000, timeout_ms=500),
        "split-frames-and-garbage": c_input([
            c_call(), c_frame(c_response(first, body_len=40), hold=True),
            c_op("Deliver", u16(7)), c_op("Deliver", u16(0)),
            c_op("Raw", ops([b"M", b"C", b"\x01", b"\x77"]) + b"\x00", flag(False)),
        ], max_message_len=16),
        "resubscribe-refused-and-detached-expired": c_input([
            c_op("Detached", flag(True)), c_op("Detached", flag(False)),
            c_frame(c_error(first, 2)), c_op("Advance", u16(60)),
        ], subscribe_ms=50),
        "drain-then-connection-error": c_input([
            c_call(deadline_ms=30), c_op("Drain"), c_call(),
            c_frame(variant(C_FRAME, "ConnectionError", u8(1))),
        ]),
        "multi-frame-response-with-a-ping-between": c_input([
            c_call(), c_call(deadline_ms=10),
            c_frame(variant(C_FRAME, "ResponseHead", first, u8(10))),
            c_frame(variant(C_FRAME, "Continuation", flag(True), u8(20))),
            c_frame(c_ping(7)), c_op("Advance", u16(10)),
            c_frame(variant(C_FRAME, "Continuation", flag(False), u8(30))),
            c_frame(variant(C_FRAME, "ResponseHead", first, u8(10))),
            c_frame(variant(C_FRAME, "Continuation", flag(True), u8(200))),
        ], max_message_len=100),
        # The known late-PING bug (see KNOWN_LATE_PING_FIXED in client_core.rs): a PING,
        # then a frame read moves the heartbeat's deadline earlier without a wake.
        "regression-late-ping": c_input([
            c_op("FireTimer"), c_frame(c_response(first, body_len=0)), c_op("FireTimer"),
        ], max_abandoned=30, subscribe_ms=4, interval_ms=0, timeout_ms=8448),
    }


# server_core: Input { max_in_flight: u8, max_in_flight_bytes: u16, interval_ms: u16,
# timeout_ms: u16, ops }
S_OP = ["Request", "Refused", "Finish", "Cancel", "SendGoaway", "PeerGoaway", "TakeAll",
        "Received", "Timeout"]
S_ID = ["Running", "Seen", "Any"]
S_METHOD = ["App", "Subscribe", "Unsubscribe", "Unknown", "Health"]
S_GEN = ["Its", "Other", "Any"]


def s_input(items, max_in_flight=3, max_bytes=100, interval_ms=15000, timeout_ms=5000):
    return u8(max_in_flight) + u16(max_bytes) + u16(interval_ms) + u16(timeout_ms) + ops(items)


def s_any(id_):
    return variant(S_ID, "Any", u32(id_))


def s_request(id_, method="App", routed=True, fmt=1, deadline_ms=None, body_len=10,
              waited_ms=0, start=True):
    return variant(
        S_OP, "Request", id_, u8(fmt), variant(S_METHOD, method), flag(routed),
        opt(None if deadline_ms is None else u32(deadline_ms)), u16(body_len), u16(waited_ms),
        flag(start),
    )


def s_finish(n, generation="Its"):
    g = variant(S_GEN, "Other", u8(1)) if generation == "Other" else variant(S_GEN, generation)
    return variant(S_OP, "Finish", u8(n), g)


def server_core_seeds():
    return {
        "admission-order": s_input([
            s_request(s_any(1)), s_request(s_any(1)),
            s_request(s_any(2), fmt=3), s_request(s_any(3), method="Unknown", routed=False),
            s_request(s_any(4), method="Subscribe", routed=False, fmt=77),
            s_request(s_any(5), deadline_ms=10, waited_ms=10),
            s_request(s_any(6), body_len=95), s_request(s_any(7)), s_request(s_any(8)),
        ], max_in_flight=2),
        "cancel-then-stale-finish": s_input([
            s_request(s_any(1)), variant(S_OP, "Cancel", variant(S_ID, "Running", u8(0))),
            s_request(s_any(1)), s_finish(0), s_finish(1), s_finish(1),
        ]),
        "goaway-last-id-and-drain": s_input([
            s_request(s_any(5)), s_request(s_any(6), method="Unknown", routed=False),
            variant(S_OP, "SendGoaway"), variant(S_OP, "SendGoaway"),
            s_request(s_any(7)), variant(S_OP, "Refused", s_any(8), flag(True)),
            s_finish(0),
        ]),
        "peer-goaway-then-grace-over": s_input([
            s_request(s_any(1)), s_request(s_any(2), start=False), variant(S_OP, "PeerGoaway"),
            s_request(s_any(3)), variant(S_OP, "TakeAll"), s_finish(0),
        ]),
        "heartbeat-ping-then-dead": s_input([
            variant(S_OP, "Timeout", u16(0)), variant(S_OP, "Received", u16(3)),
            variant(S_OP, "Timeout", u16(0)), variant(S_OP, "Timeout", u16(0)),
        ], interval_ms=1000, timeout_ms=500),
    }


def main():
    vec = vectors()
    assert len(vec) == 5
    for wire in vec.values():  # the vectors check out with this CRC
        assert frame(wire[3], wire[6:-2]) == wire
    seeds = {"frame_decode": {}, "stream_decode": {}, "envelope_roundtrip": {}}

    fd = seeds["frame_decode"]
    for name, wire in vec.items():
        fd[name] = wire
    fd["two-frames"] = vec["ping_nonce_1"] + vec["request_echo_json"]
    fd["noise-false-magic-then-frame"] = b"\x00zzMC\x01\x05\x00\x08junkMC" + PING
    fd["truncated-request"] = vec["request_echo_json"][:-3]
    fd["unknown-type"] = frame(*UNKNOWN)
    fd["multi-frame-message"] = b"".join(frame(t, p) for t, p in MULTI)

    sd = seeds["stream_decode"]
    all_vectors = b"".join(vec.values())
    sd["strict-vectors-chunked"] = bytes([0, 0xFF, 0xFF, 3, 1, 7, 3]) + all_vectors
    sd["strict-vectors-whole"] = bytes([0, 0xFF, 0xFF, 0]) + all_vectors
    noisy = b"".join(b"\x13\x37M" + w + b"xMy" for w in vec.values())
    sd["resync-noise-between-frames"] = bytes([1, 0xFF, 0xFF, 2, 5, 11]) + noisy
    sd["resync-false-magic"] = (
        bytes([1, 0xFF, 0xFF, 1, 4]) + b"MC\x01\x01\x00\x10" + all_vectors
    )
    sd["multi-frame-message"] = bytes([0, 0xFF, 0xFF, 2, 9, 2]) + b"".join(
        frame(t, p) for t, p in MULTI + [UNKNOWN]
    )
    bad_crc = bytearray(vec["response_json"])
    bad_crc[-1] ^= 0x01
    sd["strict-bad-crc"] = bytes([0, 0xFF, 0xFF, 0]) + vec["ping_nonce_1"] + bad_crc
    sd["strict-limit"] = bytes([0, 0x00, 0x10, 0]) + all_vectors

    er = seeds["envelope_roundtrip"]
    for name, wire in vec.items():
        er[name] = b"\x00\x00" + records([(wire[3], wire[6:-2])])
    er["multi-frame-message"] = b"\x00\x00" + records(MULTI + [UNKNOWN])
    er["request-too-large"] = b"\x00\x0c" + records(MULTI + [(0x01, request(10, 0, b"m", b"ok"))])
    er["response-too-large"] = b"\x00\x04" + records(
        [(0x02, struct.pack(">IBBB", 3, 1, 0, 0) + b"abc"), (0x09, continuation(False, b"de"))]
    )
    er["malformed-request-with-more"] = b"\x00\x00" + records(
        [
            (0x01, request(11, 1, b"", b"x")),
            (0x09, continuation(False, b"skipped")),
            (0x01, request(12, 0, b"m", b"next", meta=b"\x01\x01K\x00\x00")),
            (0x06, b"pongpong"),
        ]
    )
    er["every-type"] = b"\x00\x00" + records(
        [
            (0x03, b"\x00\x02\x0eorders.created\x01\x08deadline\x00\x04\x00\x00\x03\xe8{}"),
            (0x07, b"\x00\x00\x00\x09"),
            (0x08, b"\x00\x00\x00\x09\x00\x00bye"),
            (0x04, b"\x00\x00\x00\x00\x00\x01"),
            (0x06, b"12345678"),
            UNKNOWN,
        ]
    )

    seeds["client_core"] = client_core_seeds()
    seeds["server_core"] = server_core_seeds()

    for target, files in seeds.items():
        directory = ROOT / "corpus" / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (directory / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(files)} seeds")


if __name__ == "__main__":
    main()
