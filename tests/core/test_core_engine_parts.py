"""The engine pipe protocol refuses code, and stop strings never leak."""

from __future__ import annotations

import os
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.engine._protocol import ProtocolError, decode, encode
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
