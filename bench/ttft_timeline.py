"""Where a streamed request's time to first token goes, segment by segment, from trace files.

Starts `swarmgate up` (2 peers) with `SWARMGATE_TRACE`, streams `--requests` one-token chat
requests through the OpenAI SDK one after another, stops the swarm (the processes write their
traces at exit), and prints the median of each segment of the path: the client's send to the
gateway's first look at the request, the handler, tokenizing, the prefix lookup and the first
round's send, both hops (their messaging apart from the peers' compute), the head pass, the
response's first token handed to the server, and that chunk reaching the client. The sums at
the end: what is not model compute, seen by the client and by the gateway.

    python bench/ttft_timeline.py [--gpu] [--requests 25] [--gap 0.2] [--steps] [--up FLAG ...]

`--steps`: also the median time from each event to the next, along the request's path (the
peers' events included), for a finer breakdown than the segments. `--up`: flags for `up`, in
one string (e.g. `--up="--busy-poll off"`). The table goes to $OUT/ttft_timeline.json too
(default bench-out/).

`--gpu`: `random:llama-3-8b` in bf16 on CUDA, as `bench/gpu.py` runs it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import write_json  # noqa: E402
from tests.procs import start  # noqa: E402

GPU_FLAGS = ["--model", "random:llama-3-8b", "--device", "cuda", "--dtype", "bfloat16"]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
Event = tuple[float, str, str]  # (time, process role, event)


def run(
    folder: Path, requests: int, gpu: bool, gap: float = 0.2, extra: Sequence[str] = ()
) -> list[tuple[float, float]]:
    """(sent, first chunk) client times of each request, on the machine's monotonic clock;
    `gap`: seconds the client idles between requests; `extra`: more `up` flags."""
    flags = GPU_FLAGS if gpu else []
    proc = start(
        ["up", "--port", "0", "--peers", "2", *flags, *extra],
        "GATEWAY_READY ",
        timeout=900,
        env={"SWARMGATE_TRACE": str(folder)},
    )
    client = openai.OpenAI(base_url=f"{proc.ready['url']}/v1", api_key="x", max_retries=0)
    times = []
    try:
        for _ in range(requests):
            sent, first = time.perf_counter(), None
            for chunk in client.chat.completions.create(
                model=str(proc.ready["model"]),
                messages=QUESTION,  # type: ignore[arg-type]
                max_tokens=1,
                temperature=0,
                stream=True,
            ):
                choice = chunk.choices[0] if chunk.choices else None
                if first is None and choice and (choice.delta.content or choice.finish_reason):
                    first = time.perf_counter()
            assert first is not None
            times.append((sent, first))
            time.sleep(gap)
    finally:
        proc.stop(timeout=60)
    return times


def load(folder: Path) -> list[Event]:
    events = []
    for path in folder.glob("*.jsonl"):
        role = path.name.split("-")[0]
        for line in path.read_text().splitlines():
            record = json.loads(line)
            events.append((float(record["t"]), role, str(record["e"])))
    return sorted(events)


def segments(events: list[Event], sent: float, first: float) -> dict[str, float]:
    """One request's segments in ms (its gateway events lie between its send and shortly
    after its first chunk: the gateway marks a send once it returned)."""
    mine = [e for e in events if sent <= e[0] <= first + 0.003]

    def at(name: str, nth: int = 1, role: str = "gateway") -> float:
        return [t for t, r, e in mine if r == role and e == name][nth - 1]

    starts = [t for t, r, e in mine if r == "peer" and e == "compute.start"]
    ends = [t for t, r, e in mine if r == "peer" and e == "compute.end"]
    compute = sum(b - a for a, b in zip(starts, ends, strict=False))
    head = at("head.end") - at("head.start")
    token = at("http.token")
    # the chain's last answer: the last reply before the head pass (opens answer early)
    last_reply = max(
        t for t, r, e in mine if r == "gateway" and e == "round.reply" and t < at("head.start")
    )
    parts = {
        "client send -> gateway sees it": at("http.start") - sent,
        "framework -> handler": at("handler") - at("http.start"),
        "handler -> tokenized": at("tokenized") - at("handler"),
        "tokenized -> first round sent": at("round.send") - at("tokenized"),
        "two hops, minus the peers' compute": last_reply - at("round.send") - compute,
        "peers' compute": compute,
        "last reply -> head pass": at("head.start") - last_reply,
        "head pass": head,
        "head pass -> first token sent": token - at("head.end"),
        "first token sent -> client has it": first - token,
        "client view, not model compute": first - sent - compute - head,
        "gateway view, not model compute": token - at("http.start") - compute - head,
    }
    return {k: v * 1e3 for k, v in parts.items()}


def steps(events: list[Event], times: list[tuple[float, float]]) -> list[tuple[str, float, int]]:
    """The median time from each event to the next, at each place of the requests' event
    sequence where most requests have the same pair of events (the request's send first)."""
    gaps: dict[tuple[int, str, str], list[float]] = {}
    for sent, first in times:
        mine = [(t, f"{r}:{e}") for t, r, e in events if sent <= t <= first + 0.003]
        previous = (sent, "client:send")
        for place, (t, name) in enumerate(mine):
            gaps.setdefault((place, previous[1], name), []).append((t - previous[0]) * 1e3)
            previous = (t, name)
    common = [(k, v) for k, v in sorted(gaps.items()) if len(v) > len(times) // 2]
    return [(f"{a} -> {b}", statistics.median(v), len(v)) for (_, a, b), v in common]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--requests", type=int, default=25)
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between requests")
    parser.add_argument("--steps", action="store_true", help="also every event to the next")
    parser.add_argument("--up", default="", help="more `swarmgate up` flags, in one string")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ttft-trace-"))
    try:
        times = run(folder, args.requests, args.gpu, args.gap, args.up.split())
        events = load(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    times = times[3:]  # after warm-up
    if args.steps:
        print(f"\n{'event -> next event':64} {'p50 ms':>8} {'n':>4}")
        for name, p50, n in steps(events, times):
            print(f"{name:64} {p50:>8.3f} {n:>4}")
    rows = [segments(events, sent, first) for sent, first in times]
    print(f"\n{'segment':40} {'p50 ms':>8} {'mean ms':>8}")
    table = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        table[name] = {"p50": statistics.median(values), "mean": statistics.mean(values)}
        print(f"{name:40} {table[name]['p50']:>8.2f} {table[name]['mean']:>8.2f}")
    write_json("ttft_timeline", table)


if __name__ == "__main__":
    main()
