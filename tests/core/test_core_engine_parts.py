"""The engine pipe protocol refuses code, and stop strings never leak."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.engine._protocol import (
    BlockingChannel,
    FrameReader,
    ProtocolError,
    decode,
    encode,
    frame,
)
from edge_agent.engine._stops import StopFilter


def test_plain_messages_round_trip() -> None:
    message = ("step", [(1, 5)], [(1, "héllo")], [(1, "stop", 5, 3, None)])
    assert decode(encode(message)) == message


def test_a_message_naming_a_class_is_refused() -> None:
    # What a hostile worker could send to run code in the daemon.
    evil = pickle.dumps(("step", os.system), protocol=5)
    with pytest.raises(ProtocolError):
        decode(evil)


@pytest.mark.parametrize("data", [b"", b"\x80\x05garbage", pickle.dumps([1, 2]), pickle.dumps(())])
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


_MESSAGES = st.lists(
    st.tuples(st.sampled_from(["step", "pong"]), st.integers(), st.text(max_size=300)),
    min_size=1,
    max_size=8,
)


@given(_MESSAGES, st.lists(st.integers(min_value=1, max_value=97), min_size=1))
def test_frames_split_anywhere_decode_whole_and_in_order(
    messages: list[tuple[str, int, str]], cuts: list[int]
) -> None:
    # The loop reads whatever the kernel hands it: a frame may arrive in any pieces.
    data = b"".join(frame(m) for m in messages)
    reader, got, pos, i = FrameReader(), list[tuple[Any, ...]](), 0, 0
    while pos < len(data):
        size = cuts[i % len(cuts)]
        got += reader.feed(data[pos : pos + size])
        pos, i = pos + size, i + 1
    assert got == messages


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    reader = FrameReader(max_frame=1024)
    with pytest.raises(ProtocolError):
        reader.feed(struct.pack("!I", 1025) + b"x")


def test_the_worker_channel_speaks_the_loop_readers_framing() -> None:
    ours, theirs = socket.socketpair()
    channel = BlockingChannel(theirs)
    sent: list[tuple[Any, ...]] = [("pong", 1, {}), ("step", [], [(1, "x" * 300_000)], [])]

    def send_all() -> None:  # the second is larger than one socket buffer
        for message in sent:
            channel.send(message)

    sender = threading.Thread(target=send_all)
    sender.start()
    reader, got = FrameReader(), list[tuple[Any, ...]]()
    while len(got) < 2:
        got += reader.feed(ours.recv(65536))
    sender.join()
    assert got == sent
    ours.sendall(frame(("ping", 7)))
    assert channel.poll(5) and channel.recv() == ("ping", 7)
    assert not channel.poll(0)
    ours.close()
    with pytest.raises(EOFError):
        channel.recv()
    channel.close()


def test_stop_string_split_across_tokens_is_cut() -> None:
    f = StopFilter(["END"])
    out = f.feed("abc E") + f.feed("N") + f.feed("D and more")
    assert out == "abc " and f.stopped
    assert f.flush() == ""


def test_held_back_prefix_is_released_when_ruled_out() -> None:
    f = StopFilter(["END"])
    assert f.feed("abc EN") == "abc "
    assert f.feed("X") == "ENX"
    assert not f.stopped


@given(
    pieces=st.lists(st.text(alphabet="abEND ", max_size=5), max_size=20),
    stop=st.text(alphabet="abEND", min_size=1, max_size=4),
)
def test_filtered_stream_is_the_text_before_the_first_stop(pieces: list[str], stop: str) -> None:
    f = StopFilter([stop])
    out = "".join(f.feed(p) for p in pieces) + f.flush()
    full = "".join(pieces)
    cut = full.find(stop)
    assert out == (full if cut < 0 else full[:cut])
