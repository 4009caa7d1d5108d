#!/usr/bin/env python3
"""Writes the committed seed corpus of the mcp-codec fuzz targets.

Independent of the codec on purpose: frames are built here with Python's
binascii.crc_hqx (CRC-16/IBM-3740 with init 0xFFFF), the same check PROTOCOL.md's
vectors were computed with. Run from anywhere: `python3 fuzz/make_seeds.py`.
The input layout of each target is described at the top of its source file.
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

    for target, files in seeds.items():
        directory = ROOT / "corpus" / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (directory / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(files)} seeds")


if __name__ == "__main__":
    main()
