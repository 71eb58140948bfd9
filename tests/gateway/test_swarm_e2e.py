"""Gateways over a swarm with a spare peer: failover on SIGKILL, prefix reuse through Redis and
the in-memory store (also across gateways), and freeing peer sessions on client disconnect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from gateway.store import BUCKET_TOKENS
from swarm.p2p import P2PNode
from swarm.protocol import INFO_PROTOCOL
from tests.procs import Proc, start, start_peer

pytestmark = pytest.mark.slow
REDIS_URL = "redis://127.0.0.1:6379/0"


class Swarm:
    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.gateways: list[Proc] = []
        self.first = self.add("0:15")
        self.bootstrap = str(self.first.ready["maddrs"][0])  # type: ignore[index]
        self.second = [self.add("15:30"), self.add("15:30")]  # one of them is a spare

    def add(self, blocks: str) -> Proc:
        bootstrap = getattr(self, "bootstrap", None)
        proc = start_peer("--blocks", blocks, "--cache-tokens", "16384", bootstrap=bootstrap)
        self.procs.append(proc)
        return proc

    def gateway(self, *extra: str) -> Proc:
        proc = start(
            ["gateway", "--bootstrap", self.bootstrap, "--port", "0", *extra], "GATEWAY_READY "
        )
        self.gateways.append(proc)
        return proc

    def stop_gateways(self) -> None:
        for proc in self.gateways:
            proc.stop(timeout=30)
        self.gateways.clear()

    def info(self, peers: list[Proc]) -> list[dict[str, Any]]:
        async def main() -> list[dict[str, Any]]:
            node = P2PNode(dht_mode="client", bootstrap=[self.bootstrap])
            await node.start()
            try:
                out = []
                for proc in peers:
                    frame = await node.request(
                        str(proc.ready["peer_id"]),
                        INFO_PROTOCOL,
                        {"type": "info"},
                        addrs=list(proc.ready["maddrs"]),
                    )  # type: ignore[call-overload]
                    out.append(frame.header)
                return out
            finally:
                await node.stop()

        return asyncio.run(main())

    def live(self) -> list[Proc]:
        return [p for p in self.procs if p.popen.poll() is None and "peer_id" in p.ready]


@pytest.fixture(scope="module")
def swarm_processes() -> Iterator[Swarm]:
    s = Swarm()
    try:
        yield s
    finally:
        s.stop_gateways()
        for proc in s.procs:
            proc.stop(timeout=30)


@pytest.fixture
def swarm(swarm_processes: Swarm) -> Iterator[Swarm]:
    """The module's swarm; the gateways a test starts stop when it ends."""
    yield swarm_processes
    swarm_processes.stop_gateways()


def client_for(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.ready['url']}/v1", api_key="x", max_retries=0, timeout=300
    )


def tokens_in(swarm: Swarm) -> list[int]:
    return [int(i["counters"]["tokens_in"]) for i in swarm.info(swarm.live())]


def check_reuse(swarm: Swarm, first: openai.OpenAI, second: openai.OpenAI) -> None:
    messages: list[dict[str, str]] = [
        {
            "role": "system",
            "content": "You are a concise assistant who answers geography questions.",
        },
        {"role": "user", "content": "What is the capital of France?"},
    ]
    one = first.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=20
    )  # type: ignore[arg-type]
    assert one.usage is not None
    kept = one.usage.prompt_tokens + one.usage.completion_tokens - 1  # the last token is never fed
    messages += [
        {"role": "assistant", "content": one.choices[0].message.content or ""},
        {"role": "user", "content": "And of Italy?"},
    ]
    before = tokens_in(swarm)
    two = second.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=12
    )  # type: ignore[arg-type]
    after = tokens_in(swarm)
    assert two.usage is not None
    fed = two.usage.prompt_tokens - kept + two.usage.completion_tokens - 1
    grew = sorted(b - a for a, b in zip(before, after, strict=True) if b != a)
    # the first span's peer and the second span's chosen peer each received only the new tokens
    assert grew == [fed, fed], (grew, fed, two.usage)
    assert fed < two.usage.prompt_tokens


def test_follow_up_turn_reuses_peer_caches_in_memory_store(swarm: Swarm) -> None:
    gateway = swarm.gateway()
    client = client_for(gateway)
    check_reuse(swarm, client, client)


def test_follow_up_turn_reuses_caches_through_redis_across_gateways(swarm: Swarm) -> None:
    redis.Redis.from_url(REDIS_URL).ping()
    first = swarm.gateway("--redis-url", REDIS_URL)
    second = swarm.gateway("--redis-url", REDIS_URL)
    check_reuse(swarm, client_for(first), client_for(second))


def test_a_new_chat_reuses_the_caches_of_its_system_prompt(swarm: Swarm) -> None:
    # two different questions after SmolLM2's default system prompt (24 tokens with the user
    # turn's header): the second chat takes the first one's kept caches for that shared part
    client = client_for(swarm.gateway())
    river = [{"role": "user", "content": "Name a large river in Europe."}]
    sums = [{"role": "user", "content": "What is 12 times 7?"}]
    client.chat.completions.create(model="smollm2", messages=river, temperature=0, max_tokens=8)  # type: ignore[arg-type]
    before = tokens_in(swarm)
    two = client.chat.completions.create(
        model="smollm2", messages=sums, temperature=0, max_tokens=8
    )  # type: ignore[arg-type]
    after = tokens_in(swarm)
    assert two.usage is not None
    grew = sorted(b - a for a, b in zip(before, after, strict=True) if b != a)
    fresh = two.usage.prompt_tokens + two.usage.completion_tokens - 1
    assert len(grew) == 2 and grew[0] == grew[1], grew
    assert grew[0] <= fresh - BUCKET_TOKENS, (grew, fresh)
    # the same request on a gateway with nothing kept gives the same answer
    alone = client_for(swarm.gateway()).chat.completions.create(
        model="smollm2", messages=sums, temperature=0, max_tokens=8
    )  # type: ignore[arg-type]
    assert two.choices[0].message.content == alone.choices[0].message.content


def test_follow_up_that_rewrites_the_reply_reuses_the_common_prefix(swarm: Swarm) -> None:
    # the client sends back a different assistant reply than was sampled (edited, or the same
    # text tokenized differently): the kept caches are rolled back to the common prefix
    client = client_for(swarm.gateway())
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "You are a concise assistant who answers in one line."},
        {"role": "user", "content": "Name a large river in Europe."},
    ]
    one = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=16
    )  # type: ignore[arg-type]
    assert one.usage is not None
    kept = one.usage.prompt_tokens + one.usage.completion_tokens - 1
    messages += [
        {"role": "assistant", "content": "Rivers of Europe: the Danube and the Rhine."},
        {"role": "user", "content": "Which one is longer?"},
    ]
    before = tokens_in(swarm)
    two = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=12
    )  # type: ignore[arg-type]
    after = tokens_in(swarm)
    assert two.usage is not None
    grew = sorted(b - a for a, b in zip(before, after, strict=True) if b != a)
    fresh = two.usage.prompt_tokens + two.usage.completion_tokens - 1
    reused = one.usage.prompt_tokens  # the rewritten reply shares at least the first prompt
    assert len(grew) == 2 and grew[0] == grew[1], grew
    assert fresh - kept < grew[0] <= fresh - reused, (grew, fresh, reused, kept)
    # the same request on a gateway with nothing kept computes every position afresh
    alone = client_for(swarm.gateway()).chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=12
    )  # type: ignore[arg-type]
    assert two.choices[0].message.content == alone.choices[0].message.content


def test_client_disconnect_frees_peer_sessions(swarm: Swarm) -> None:
    gateway = swarm.gateway()
    kept_before = [i["sessions_kept"] for i in swarm.info(swarm.live())]
    body = {
        "model": "smollm2",
        "stream": True,
        "max_tokens": 400,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
    }
    with httpx.stream(
        "POST", f"{gateway.ready['url']}/v1/chat/completions", json=body, timeout=120
    ) as response:
        lines = response.iter_lines()  # kept open: leaving a for loop would close the stream
        events = 0
        while events < 5:
            events += next(lines).startswith("data: ")
        busy = [i["sessions_active"] for i in swarm.info(swarm.live())]
        assert sum(busy) == 2  # the stream's session is open on two peers
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        infos = swarm.info(swarm.live())
        if all(i["sessions_active"] == 0 for i in infos):
            break
        time.sleep(0.5)
    # freed at once, not kept for reuse: an interrupted turn leaves nothing behind
    assert [i["sessions_active"] for i in infos] == [0] * len(infos)
    assert [i["sessions_kept"] for i in infos] == kept_before


# relayed, pushed, relayed with each chunk written once the next step left (a GPU gateway's
# default); each round's replacement spare serves the next
@pytest.mark.parametrize("flags", [[], ["--push"], ["--stream-after-send"]])
def test_sigkill_of_a_serving_peer_mid_stream_keeps_the_stream_exact(
    swarm: Swarm, flags: list[str]
) -> None:
    gateway = swarm.gateway(*flags)
    client = client_for(gateway)
    ask = {
        "model": "smollm2",
        "temperature": 0,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "List ten animals that live in the ocean."}],
    }
    expected = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    expected_text = expected.choices[0].message.content
    assert expected.usage.completion_tokens >= 30  # long enough to kill mid-stream
    stream = client.chat.completions.create(**ask, stream=True)  # type: ignore[call-overload]
    pieces: list[str] = []
    killed = None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
        if killed is None and len(pieces) >= 10:
            serving = [
                p
                for p, i in zip(swarm.second, swarm.info(swarm.second), strict=True)
                if i["sessions_active"]
            ]
            assert len(serving) == 1
            killed = serving[0]
            killed.kill()
    assert killed is not None
    assert "".join(pieces) == expected_text
    # bring a replacement spare back for the next round
    swarm.second = [p for p in swarm.second if p is not killed] + [swarm.add("15:30")]


def test_api_key_is_enforced_end_to_end(swarm: Swarm) -> None:
    gateway = swarm.gateway("--api-key", "sk-test-123")
    url = f"{gateway.ready['url']}/v1"
    wrong = openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.status_code == 401
    right = openai.OpenAI(base_url=url, api_key="sk-test-123", max_retries=0)
    assert [m.id for m in right.models.list().data] == ["smollm2-135m-instruct"]
    assert httpx.get(f"{gateway.ready['url']}/health").status_code == 200


def test_redis_keys_and_rate_limits_across_gateways(swarm: Swarm) -> None:
    url = "redis://127.0.0.1:6379/14"
    redis.Redis.from_url(url).flushdb()
    try:
        from gateway.keys import KeyAdmin

        key = KeyAdmin(url).add("team-a", rpm=2)
        gateways = [swarm.gateway("--redis-url", url), swarm.gateway("--redis-url", url)]
        clients = [
            openai.OpenAI(base_url=f"{g.ready['url']}/v1", api_key=key, max_retries=0)
            for g in gateways
        ]
        ask = {"model": "smollm2", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
        clients[0].chat.completions.create(**ask)  # type: ignore[call-overload]
        clients[1].chat.completions.create(**ask)  # type: ignore[call-overload]
        with pytest.raises(openai.RateLimitError) as limited:
            clients[0].chat.completions.create(**ask)  # type: ignore[call-overload]
        assert limited.value.status_code == 429
        assert 0 < int(limited.value.response.headers["retry-after"]) <= 60
        assert limited.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        stranger = openai.OpenAI(
            base_url=f"{gateways[0].ready['url']}/v1", api_key="sk-sg-unknown", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
        assert httpx.get(f"{gateways[0].ready['url']}/ready").status_code == 200  # stays open
    finally:
        redis.Redis.from_url(url).flushdb()
