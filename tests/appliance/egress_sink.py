"""A packet sink: records every packet a network namespace tries to send out of its one route.

Run it inside the namespace (``ip netns exec NS python egress_sink.py IFACE``, or under
``nsenter -n``) on the interface its default route and its resolver point at. It prints
``ready`` once capturing, and on SIGTERM one JSON line: the DNS queries (with the names
asked for), the TCP connection attempts (SYNs) and every other packet, each summarised. The
interface is one end of a veth pair whose gateway is a permanent neighbour entry for the
other, unaddressed end: packets leave, nothing answers, so a resolver or a TCP stack
retries, and every try is one more record. Needs root (AF_PACKET).
"""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import sys
from typing import Any

ETH_P_ALL = 0x0003


def _dns_name(payload: bytes) -> str:
    labels, i = [], 12
    while i < len(payload) and payload[i]:
        n = payload[i]
        labels.append(payload[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    return ".".join(labels)


def classify(frame: bytes, has_ethernet: bool) -> tuple[str, dict[str, Any]]:
    """("dns" | "tcp_syn" | "other", summary) for one captured frame."""
    packet = frame[14:] if has_ethernet else frame
    if not packet:
        return "other", {"len": len(frame)}
    version = packet[0] >> 4
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        proto, dst = packet[9], socket.inet_ntop(socket.AF_INET, packet[16:20])
    elif version == 6:
        header, proto = 40, packet[6]
        dst = socket.inet_ntop(socket.AF_INET6, packet[24:40])
    else:
        return "other", {"len": len(frame)}
    body = packet[header:]
    if proto == 17 and len(body) >= 8:
        dport = struct.unpack("!H", body[2:4])[0]
        if dport == 53:
            return "dns", {"dst": dst, "name": _dns_name(body[8:])}
        return "other", {"proto": "udp", "dst": dst, "port": dport}
    if proto == 6 and len(body) >= 14:
        dport, flags = struct.unpack("!H", body[2:4])[0], body[13]
        if flags & 0x02 and not flags & 0x10:
            return "tcp_syn", {"dst": dst, "port": dport}
        return "other", {"proto": "tcp", "dst": dst, "port": dport}
    return "other", {"proto": proto, "dst": dst}


def main() -> None:
    iface = sys.argv[1]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    # veth frames carry an Ethernet header; nothing comes in on this end but what we send.
    records: dict[str, list[dict[str, Any]]] = {"dns": [], "tcp_syn": [], "other": []}
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while not stop:
        try:
            readable, _, _ = select.select([sock], [], [], 0.2)
        except InterruptedError:
            continue
        if not readable:
            continue
        data = sock.recv(65536)
        kind, summary = classify(data, has_ethernet=True)
        records[kind].append(summary)
    print(json.dumps(records), flush=True)


if __name__ == "__main__":
    main()
