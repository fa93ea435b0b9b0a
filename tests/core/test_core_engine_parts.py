"""The engine pipe protocol refuses code, stop strings never leak, and prefix reuse picks lanes
by partition, sampling key and the longest shared prefix."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.engine._prefix import CachedLane, PrefixCache, common_prefix, sampling_key
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


# -- prefix reuse: which cached lane a prompt may continue --------------------------------


def _lane(tokens: list[int], partition: str = "a/INTERNAL", kv: int = 10) -> CachedLane:
    return CachedLane(
        generator=object(),
        tokens=np.asarray(tokens, dtype=np.int32),
        partition=partition,
        key=("greedy",),
        max_length=1000,
        kv_bytes=kv,
    )


def test_common_prefix_counts_equal_leading_tokens() -> None:
    a = np.asarray([1, 2, 3, 4], dtype=np.int32)
    assert common_prefix(a, np.asarray([1, 2, 9], dtype=np.int32)) == 2
    assert common_prefix(a, a[:2]) == 2
    assert common_prefix(a, np.asarray([], dtype=np.int32)) == 0


def test_the_longest_shared_prefix_of_the_same_partition_and_key_wins() -> None:
    cache = PrefixCache(4)
    history = list(range(100, 160))
    cache.put(_lane(history[:40]))
    cache.put(_lane(history, partition="b/INTERNAL"))  # longer, but another partition
    cache.put(_lane(history[:50]))
    prompt = np.asarray([*history, 7, 8], dtype=np.int32)
    assert cache.take("a/INTERNAL", ("sample", 0.7, None, None), prompt, 100) is None
    assert cache.take("a/INTERNAL", ("greedy",), prompt, 2000) is None  # it would not fit
    taken = cache.take("a/INTERNAL", ("greedy",), prompt, 100)
    assert taken is not None and taken[1] == 50 and len(cache) == 2  # removed while in use
    # The same prompt again: one token is always read again, for the first answer token.
    cache.put(_lane([*history, 7, 8]))
    again = cache.take("a/INTERNAL", ("greedy",), prompt, 100)
    assert again is not None and again[1] == len(prompt) - 1


def test_a_short_common_start_is_no_hit() -> None:
    cache = PrefixCache(2)
    cache.put(_lane([1, 17, *range(200, 260)]))
    # The format's first tokens (BOS, a system tag) are shared by every conversation.
    assert cache.take("a/INTERNAL", ("greedy",), np.asarray([1, 17, *range(300, 360)]), 100) is None
    # Half the prompt shared is enough.
    prompt = np.asarray([1, 17, *range(200, 230), *range(400, 432)], dtype=np.int32)
    assert cache.take("a/INTERNAL", ("greedy",), prompt, 100) is not None


def test_capacity_and_eviction_free_the_least_recently_used_first() -> None:
    cache = PrefixCache(2)
    for start in (0, 100, 200):
        cache.put(_lane(list(range(start, start + 40)), kv=start + 1))
    assert len(cache) == 2 and cache.evicted == 1 and cache.kv_bytes == 101 + 201
    assert cache.evict(1) == 101 and len(cache) == 1  # one lane is enough for one byte
    assert cache.evict(-1) == 201 and len(cache) == 0 and cache.evicted == 3
    off = PrefixCache(0)
    off.put(_lane([1, 2, 3]))
    assert len(off) == 0


@pytest.mark.parametrize(
    ("job", "key"),
    [
        ({"temperature": 0.0}, ("greedy",)),
        ({"temperature": 0.7, "top_p": 0.9, "top_k": 40}, ("sample", 0.7, 0.9, 40)),
        ({"temperature": 0.7, "seed": 3}, None),
        ({"json_schema": "{}"}, None),
        ({"min_tokens": 2}, None),
    ],
)
def test_only_requests_a_generator_could_serve_alike_share_lanes(
    job: dict[str, Any], key: tuple[Any, ...] | None
) -> None:
    base: dict[str, Any] = {
        "temperature": 0.0, "top_p": None, "top_k": None, "seed": None, "json_schema": None,
        "min_tokens": 0,
    }  # fmt: skip
    assert sampling_key(base | job) == key
