"""The shared fan-out frame of config.wsprotocol, parsed back by websockets' own reader."""

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from config.wsprotocol import text_frame


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_text_frame_is_what_websockets_would_send(length):
    text = "é" * (length // 2) + "x" * (length % 2)
    frame = text_frame(text)
    assert frame == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    reader = StreamReader()
    reader.feed_data(frame)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    assert done.value.value.data.decode() == text


def test_text_frame_is_encoded_once_per_str_object():
    text = "".join(["hello ", "room"])
    assert text_frame(text) is text_frame(text)
    assert text_frame("".join(["hello ", "room"])) == text_frame(text)
