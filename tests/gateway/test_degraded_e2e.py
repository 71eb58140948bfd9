"""Degraded modes over real peers: full caches (bounded wait, then 503), Redis going away and
coming back, and a span with no spare peer (error event, 503, recovery when a peer joins)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.procs import Proc, start, start_peer

pytestmark = pytest.mark.slow
REDIS_PORT = 6391  # a Redis of our own: this test stops and restarts it


@pytest.fixture(scope="module")
def peers() -> Iterator[list[Proc]]:
    first = start_peer("--blocks", "0:15", "--cache-tokens", "700")
    procs = [first]
    try:
        procs.append(
            start_peer(
                "--blocks",
                "15:30",
                "--cache-tokens",
                "700",
                bootstrap=str(first.ready["maddrs"][0]),
            )
        )  # type: ignore[index]
        yield procs
    finally:
        for proc in procs:
            proc.stop(timeout=30)


def bootstrap(peers: list[Proc]) -> str:
    return str(peers[0].ready["maddrs"][0])  # type: ignore[index]


def test_full_caches_wait_then_503_then_recover(peers: list[Proc]) -> None:
    gateway = start(
        ["gateway", "--bootstrap", bootstrap(peers), "--port", "0", "--queue-timeout", "2"],
        "GATEWAY_READY ",
    )
    try:
        url = f"{gateway.ready['url']}/v1"
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=300)
        long_ask = {
            "model": "smollm2",
            "max_tokens": 600,
            "temperature": 0,
            "logit_bias": {"2": -100},
            "messages": [{"role": "user", "content": "Count slowly."}],
        }
        # a streaming hog holds ~640 of the 700 cache tokens while its stream stays open
        hog = client.chat.completions.create(**long_ask, stream=True)  # type: ignore[call-overload]
        next(iter(hog))  # its sessions are open
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(
                model="smollm2",
                max_tokens=200,
                messages=[{"role": "user", "content": "Hi"}],
                stream=True,
            )
        waited = time.monotonic() - started
        assert refused.value.status_code == 503
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.body["type"] == "server_error"  # type: ignore[index]
        assert waited >= 1.5  # it queued before giving up (behaviour, not a speed check)
        hog.close()  # the hog goes away: its caches are freed and the next request is served
        for _ in range(15):  # the gateway notices the hog's disconnect at its next token
            try:
                ok = client.chat.completions.create(
                    model="smollm2", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
                )
                break
            except openai.APIStatusError as error:
                assert error.status_code == 503
        assert ok.choices[0].message.content
    finally:
        gateway.stop()


def test_redis_down_and_back(peers: list[Proc]) -> None:
    server = shutil.which("redis-server") or "redis-server"
    args = [
        server,
        "--port",
        str(REDIS_PORT),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    redis_proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    gateway = start(
        [
            "gateway",
            "--bootstrap",
            bootstrap(peers),
            "--port",
            "0",
            "--redis-url",
            f"redis://127.0.0.1:{REDIS_PORT}/0",
        ],
        "GATEWAY_READY ",
    )
    try:
        root = str(gateway.ready["url"])
        client = openai.OpenAI(base_url=f"{root}/v1", api_key="x", max_retries=0)
        ask = {
            "model": "smollm2",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hello"}],
        }
        assert httpx.get(f"{root}/ready").json()["store_ok"] is True
        client.chat.completions.create(**ask)  # type: ignore[call-overload]
        redis_proc.terminate()
        redis_proc.wait(10)
        for _ in range(3):  # keeps serving without Redis
            assert client.chat.completions.create(**ask).choices[0].message.content  # type: ignore[call-overload]
        ready = httpx.get(f"{root}/ready")
        assert (
            ready.status_code == 200
            and ready.json()["store_ok"] is False
            and ready.json()["degraded"]
        )
        redis_proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not httpx.get(f"{root}/ready").json()["store_ok"]:
            time.sleep(0.5)
        assert httpx.get(f"{root}/ready").json()["store_ok"] is True
        assert client.chat.completions.create(**ask).choices[0].message.content  # type: ignore[call-overload]
    finally:
        gateway.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


def test_no_spare_peer_error_event_503_and_recovery(peers: list[Proc]) -> None:
    gateway = start(["gateway", "--bootstrap", bootstrap(peers), "--port", "0"], "GATEWAY_READY ")
    extra = start_peer("--blocks", "15:30", "--cache-tokens", "2000", bootstrap=bootstrap(peers))
    replacement: Proc | None = None
    try:
        root = str(gateway.ready["url"])
        body = {
            "model": "smollm2",
            "stream": True,
            "max_tokens": 300,
            "temperature": 0,
            "logit_bias": {"2": -100},
            "messages": [{"role": "user", "content": "Tell me a story."}],
        }
        peers[1].stop()  # now `extra` is the only server of blocks [15, 30)
        time.sleep(4)  # the gateway's view drops the stopped peer
        events: list[str] = []
        with httpx.stream(
            "POST", f"{root}/v1/chat/completions", json=body, timeout=120
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            while len(events) < 5:
                line = next(lines)
                if line.startswith("data: "):
                    events.append(line[6:])
            extra.kill()
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "server_error" and error["message"]
        refused = httpx.post(
            f"{root}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3}
        )
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert refused.json()["error"]["code"] == "service_unavailable"
        replacement = start_peer(
            "--blocks", "15:30", "--cache-tokens", "700", bootstrap=bootstrap(peers)
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and httpx.get(f"{root}/ready").status_code != 200:
            time.sleep(0.5)
        back = httpx.post(
            f"{root}/v1/chat/completions",
            json={**body, "stream": False, "max_tokens": 3},
            timeout=60,
        )
        assert back.status_code == 200, back.text
    finally:
        gateway.stop()
        extra.stop()
        if replacement is not None:
            peers[1] = replacement  # the module fixture stops it
