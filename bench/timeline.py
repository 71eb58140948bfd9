"""Where a round's time goes: the segments of the serving path, from `SWARMGATE_TRACE` files.

Run a swarm with `SWARMGATE_TRACE=<folder>` in every process's environment (`swarmgate up`
passes it on to its peers), load it, stop it (the files are written at exit), then

    python bench/timeline.py <folder> [--skip-seconds 5]

For every round the gateway sent to a peer (one round at a time per peer), the peer's own
events are lined up with it (one stream per gateway, answered in order), and each segment's
median and mean is printed: ops arriving at the channel, the gateway's encode and send, wire
and decode to the peer, the peer's queueing, compute (until the output is on the host), the
peer's reply, and the wire back; then the gateway's turnarounds (a reply to the next hop's
round, the last hop's reply to the head pass, the head pass to the next round to the first
hop) and how busy the compute of all peers was together (one device shared, or not).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

Event = tuple[float, str, str, int]  # (time, event, peer, rows)


@dataclass
class Trace:
    gateway: list[Event] = field(default_factory=list)
    peers: dict[str, list[Event]] = field(default_factory=dict)  # peer id tail → its events


def load(folder: Path) -> Trace:
    trace = Trace()
    for path in sorted(folder.glob("*.jsonl")):
        events = [
            (float(d["t"]), str(d["e"]), str(d["p"]), int(d["n"]))
            for d in map(json.loads, path.read_text().splitlines())
        ]
        events.sort()
        if path.name.startswith("gateway-"):
            trace.gateway += events
        else:
            ids = [p for _, e, p, _ in events if e == "peer.id"]
            if ids:
                trace.peers[ids[0]] = events
    trace.gateway.sort()
    return trace


def _of(events: list[Event], name: str, peer: str | None = None) -> list[Event]:
    return [ev for ev in events if ev[1] == name and (peer is None or ev[2] == peer)]


def _after(times: list[float], t: float) -> float | None:
    """The first of the sorted `times` at or after `t`."""
    i = bisect.bisect_left(times, t)
    return times[i] if i < len(times) else None


def window(trace: Trace, skip: float) -> tuple[float, float]:
    """The traced time after the first `skip` seconds of the gateway's events."""
    if not trace.gateway:
        return 0.0, 0.0
    return trace.gateway[0][0] + skip, trace.gateway[-1][0]


def segments(trace: Trace, begin: float, end: float) -> dict[str, list[float]]:
    """Each segment's durations in seconds over the rounds sent in [begin, end)."""
    out: dict[str, list[float]] = defaultdict(list)
    gw = trace.gateway
    for peer, pevents in trace.peers.items():
        sends = _of(gw, "round.send", peer)
        sent = _of(gw, "round.sent", peer)
        replies = _of(gw, "round.reply", peer)
        ops = [t for t, *_ in _of(gw, "op", peer)]
        recv = _of(pevents, "peer.recv")
        reply = _of(pevents, "peer.reply")
        replied = _of(pevents, "peer.replied")
        starts = [t for t, *_ in _of(pevents, "compute.start")]
        ends = [t for t, *_ in _of(pevents, "compute.end")]
        n = min(len(sends), len(sent), len(replies), len(recv), len(reply), len(replied))
        previous_send = 0.0
        for i in range(n):
            t_send = sends[i][0]
            if not begin <= t_send < end or sends[i][3] == 0:  # outside, or no steps
                previous_send = t_send
                continue
            first_op = _after(ops, previous_send)
            last_ops = [t for t in ops if previous_send <= t <= t_send]
            previous_send = t_send
            if first_op is not None and last_ops:
                out[f"{peer}: ops arriving (first → last)"].append(last_ops[-1] - first_op)
                out[f"{peer}: held (last op → send)"].append(t_send - last_ops[-1])
            out[f"{peer}: gateway encode + write"].append(sent[i][0] - t_send)
            out[f"{peer}: wire + peer decode"].append(recv[i][0] - sent[i][0])
            c_start = _after(starts, recv[i][0])
            c_end = _after(ends, c_start) if c_start is not None else None
            if c_start is not None and c_end is not None and c_end <= reply[i][0]:
                out[f"{peer}: peer queue (recv → compute)"].append(c_start - recv[i][0])
                out[f"{peer}: compute"].append(c_end - c_start)
                out[f"{peer}: peer after compute"].append(reply[i][0] - c_end)
            out[f"{peer}: peer encode + write"].append(replied[i][0] - reply[i][0])
            out[f"{peer}: wire + gateway decode"].append(replies[i][0] - replied[i][0])
            out[f"{peer}: round trip (send → reply)"].append(replies[i][0] - t_send)
            out[f"{peer}: rows per round (not ms)"].append(sends[i][3] / 1e3)  # printed ×1000
    _turnarounds(trace, begin, end, out)
    return out


def _turnarounds(trace: Trace, begin: float, end: float, out: dict[str, list[float]]) -> None:
    gw = [ev for ev in trace.gateway if begin <= ev[0] < end]
    head_starts = [t for t, e, *_ in gw if e == "head.start"]
    head_ends = [t for t, e, *_ in gw if e == "head.end"]
    sends: dict[str, list[float]] = defaultdict(list)
    for t, e, p, n in gw:
        if e == "round.send" and n:
            sends[p].append(t)
    for t, e, p, _ in gw:
        if e != "round.reply":
            continue
        for other, times in sends.items():
            if other == p:
                continue
            nxt = _after(times, t)
            if nxt is not None and nxt - t < 0.5:
                out[f"gateway: {p} reply → {other} round"].append(nxt - t)
        nxt_head = _after(head_starts, t)
        if nxt_head is not None and nxt_head - t < 0.5:
            out[f"gateway: {p} reply → head pass"].append(nxt_head - t)
    for t_start in head_starts:  # one pass at a time: its end is the first after its start
        t_end = _after(head_ends, t_start)
        if t_end is None:
            continue
        out["gateway: head pass"].append(t_end - t_start)
        for peer, times in sends.items():
            nxt = _after(times, t_end)
            if nxt is not None and nxt - t_end < 0.5:
                out[f"gateway: head pass → {peer} round"].append(nxt - t_end)


def request_steps(trace: Trace, begin: float, end: float) -> dict[str, list[float]]:
    """For requests one at a time: the time from each gateway event of a request to the next
    (`http.start` → `tokenized` → ... → `http.end`), keyed by the two events' names."""
    out: dict[str, list[float]] = defaultdict(list)
    current: list[Event] = []
    for event in trace.gateway:
        if not begin <= event[0] < end or event[1] == "op":
            continue
        if event[1] == "http.start":
            current = [event]
        elif current:
            current.append(event)
            if event[1] == "http.end":
                for (t0, e0, p0, _), (t1, e1, p1, _) in itertools.pairwise(current):
                    out[f"{e0} {p0}".strip() + " → " + f"{e1} {p1}".strip()].append(t1 - t0)
                out["request (http.start → http.end)"].append(event[0] - current[0][0])
                current = []
    return out


def busy_share(trace: Trace, begin: float, end: float) -> tuple[float, float]:
    """The share of [begin, end) some peer computed, and the sum of the peers' shares."""
    intervals = []
    for pevents in trace.peers.values():
        starts = [t for t, *_ in _of(pevents, "compute.start") if begin <= t <= end]
        ends = [t for t, *_ in _of(pevents, "compute.end") if begin <= t <= end]
        for s in starts:
            e = _after(ends, s)
            if e is not None:
                intervals.append((s, e))
    intervals.sort()
    union = total = 0.0
    reach = begin
    for s, e in intervals:
        total += e - s
        if e > reach:
            union += e - max(s, reach)
            reach = e
    span = max(end - begin, 1e-9)
    return union / span, total / span


def report(trace: Trace, begin: float, end: float) -> dict[str, dict[str, float]]:
    """Print the table of [begin, end); its figures."""
    figures = segments(trace, begin, end)
    print(f"{'segment':<56} {'count':>6} {'p50 ms':>8} {'mean ms':>8}")
    table = {}
    for name in sorted(figures):
        values = figures[name]
        p50, mean = statistics.median(values) * 1e3, statistics.fmean(values) * 1e3
        table[name] = {"count": len(values), "p50_ms": p50, "mean_ms": mean}
        print(f"{name:<56} {len(values):>6} {p50:>8.2f} {mean:>8.2f}")
    if trace.peers and end > begin:
        union, total = busy_share(trace, begin, end)
        table["compute busy"] = {"any_peer": union, "sum_of_peers": total}
        print(f"compute busy: some peer {100 * union:.1f} % of the time, sum {100 * total:.1f} %")
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--skip-seconds", type=float, default=5.0, help="warm-up to leave out")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--requests", action="store_true", help="per request (sent one at a time), event to event"
    )
    args = parser.parse_args()
    trace = load(args.folder)
    if args.requests:
        steps = request_steps(trace, *window(trace, args.skip_seconds))
        print(f"{'from → to':<64} {'count':>6} {'p50 ms':>8}")
        for name, values in sorted(steps.items(), key=lambda kv: -len(kv[1])):
            print(f"{name:<64} {len(values):>6} {statistics.median(values) * 1e3:>8.2f}")
        return
    table = report(trace, *window(trace, args.skip_seconds))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
