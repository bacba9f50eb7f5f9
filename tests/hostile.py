"""What hostile clients send: hypothesis strategies shared by the unit and integration tiers.

A case is a list of messages, each ("text", str) or ("binary", bytes): JSON the service
understands and JSON it does not (wrong types, unknown fields, unknown kinds), deep and huge JSON,
numbers that no parser should accept, arbitrary text and bytes.
"""

import json

from hypothesis import strategies as st

# Lone surrogates (category Cs) reach the service as JSON escapes ("\ud800"): valid JSON, no valid UTF-8.
odd_text = st.text(st.characters(categories=["Cs", "So", "Zl", "Cc"]), max_size=5)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | odd_text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
kinds = st.sampled_from(["message", "ping", "pong", "welcome", "", "MESSAGE"]) | json_values
objects = st.fixed_dictionaries(
    {"type": kinds},
    optional={"body": json_values | st.text(max_size=300) | odd_text, "room": json_values, "seq": json_values,
              "extra": json_values},
).map(json.dumps)
long_bodies = st.integers(4000, 5000).map(lambda n: json.dumps({"type": "message", "body": "é" * n}))


def _deep(args):
    opener, closer, depth, closed = args
    return opener * depth + (closer * depth if closed else "")


deep = st.tuples(
    st.sampled_from(["[", '{"a":', '[{"b":', '{"type":['])
    | st.just("{"),
    st.sampled_from(["]", "}"]),
    st.integers(1, 6000),
    st.booleans(),
).map(_deep)
numbers = st.builds(lambda digit, n, head: head + digit * n, st.sampled_from("19"), st.integers(1, 6000),
                    st.sampled_from(["", "-", "0.", "1e", "[", '{"type":"message","body":']))
texts = st.one_of(objects, objects, long_bodies, deep, numbers, st.text(max_size=200),
                  st.just('{"type":"ping"}'))

messages = st.one_of(
    texts.map(lambda text: ("text", text)),
    st.binary(max_size=300).map(lambda data: ("binary", data)),
)
cases = st.lists(messages, min_size=1, max_size=5)


# --- The wire: frames as a hostile client writes them (RFC 6455 section 5) -------------------------
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
MASK = b"\x37\xfa\x21\x3d"


def frame(opcode, payload, fin=True, rsv=0, masked=True):
    from websockets.utils import apply_mask

    length = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + length.to_bytes(8, "big")
    return head + MASK + apply_mask(payload, MASK) if masked else head + payload


def split(data, pieces):
    size = max(1, -(-len(data) // pieces))
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def message_frames(opcode, data, pieces, ping_between):
    """A data message in `pieces` fragments, optionally with a ping between them (which is legal)."""
    parts = split(data, pieces)
    frames = []
    for i, part in enumerate(parts):
        frames.append(frame(opcode if i == 0 else CONTINUATION, part, fin=i == len(parts) - 1))
        if ping_between and i < len(parts) - 1:
            frames.append(frame(PING, b"between"))
    return frames


# Frames a server must refuse with 1002 (protocol error).
VIOLATIONS = {
    "continuation without a start": frame(CONTINUATION, b"x"),
    "reserved opcode": frame(0x3, b"x"),
    "reserved control opcode": frame(0xB, b""),
    "rsv bits without an extension": frame(TEXT, b'{"type":"ping"}', rsv=0b100),
    "unmasked client frame": frame(TEXT, b'{"type":"ping"}', masked=False),
    "control frame over 125 bytes": frame(PING, b"x" * 126),
    "fragmented control frame": frame(PING, b"x", fin=False),
    "close with a 1-byte payload": frame(CLOSE, b"\x03"),
    "data frame inside a fragmented message": frame(TEXT, b"[", fin=False) + frame(TEXT, b"]"),
}
invalid_utf8 = st.binary(min_size=1, max_size=200).filter(lambda data: not _utf8(data))


def _utf8(data):
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


# A client's close: echoed with its code (also between the fragments of a message: RFC 6455 lets
# control frames come there), or refused with 1002 if the code may not be sent (section 7.4).
VALID_CLOSE_CODES = [1000, 1001, 1003, 1007, 1008, 1011, 3000, 4000, 4999]
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000, 65535]


def close_payload(code, reason):
    return code.to_bytes(2, "big") + reason.encode()


wire_messages = st.tuples(messages, st.integers(1, 4), st.booleans()).map(lambda m: ("message", *m))
wire_closes = st.tuples(st.sampled_from(VALID_CLOSE_CODES + INVALID_CLOSE_CODES),
                        st.text(alphabet="abc xyz", max_size=20), st.booleans()).map(lambda c: ("close", *c))
wire_actions = st.one_of(  # messages weighted up: a close, violation or invalid UTF-8 ends the connection
    wire_messages, wire_messages, wire_messages, wire_messages, wire_messages, wire_messages, wire_closes,
    st.tuples(invalid_utf8, st.integers(1, 3)).map(lambda m: ("invalid_utf8", *m)),
    st.binary(max_size=125).map(lambda data: ("ping", data)),
    st.binary(max_size=125).map(lambda data: ("pong", data)),
    st.sampled_from(sorted(VIOLATIONS)).map(lambda name: ("violation", name)),
)
wire_cases = st.lists(wire_actions, min_size=1, max_size=5)
