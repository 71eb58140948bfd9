"""The real OpenAI SDK, LangChain and curl against `swarmgate up` (real peers, real libp2p)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.metrics_text import value
from tests.procs import Proc, start

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def up() -> Iterator[Proc]:
    proc = start(["up", "--port", "0", "--peers", "2", "--peer-metrics"], "GATEWAY_READY ")
    try:
        yield proc
    finally:
        assert proc.stop(timeout=60) == 0, proc.output[-3000:]


@pytest.fixture(scope="module")
def base_url(up: Proc) -> str:
    return f"{up.ready['url']}/v1"


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def test_sync_chat_answers_sensibly(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=QUESTION, temperature=0, max_tokens=40
    )
    choice = reply.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason in ("stop", "length")
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    usage = reply.usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 < usage.completion_tokens <= 40


def test_streaming_matches_the_non_streaming_reply(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=24
    )
    stream = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_async_client(base_url: str) -> None:
    async def main() -> str:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
            reply = await client.chat.completions.create(
                model="smollm2", messages=QUESTION, temperature=0, max_tokens=16
            )
            return reply.choices[0].message.content or ""

    assert "Paris" in asyncio.run(main())


def test_n_seed_stop_max_tokens_and_logprobs(client: openai.OpenAI) -> None:
    ask = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
    }
    two = client.chat.completions.create(**ask, n=2, temperature=1.0, seed=7, max_tokens=20)  # type: ignore[arg-type]
    again = client.chat.completions.create(**ask, n=2, temperature=1.0, seed=7, max_tokens=20)  # type: ignore[arg-type]
    other = client.chat.completions.create(**ask, n=2, temperature=1.0, seed=8, max_tokens=20)  # type: ignore[arg-type]
    texts = [c.message.content for c in two.choices]
    assert len(texts) == 2 and [c.index for c in two.choices] == [0, 1]
    assert texts == [c.message.content for c in again.choices]  # same seed, same output
    assert texts != [c.message.content for c in other.choices]
    assert two.usage is not None and two.usage.completion_tokens <= 40
    short = client.chat.completions.create(**ask, temperature=0, max_tokens=5)  # type: ignore[arg-type]
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5  # type: ignore[union-attr]
    free = client.chat.completions.create(**ask, temperature=0, max_tokens=30)  # type: ignore[arg-type]
    text = free.choices[0].message.content or ""
    word = text.split()[2]
    cut = client.chat.completions.create(**ask, temperature=0, max_tokens=30, stop=[word])  # type: ignore[arg-type]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(word)]
    probs = client.chat.completions.create(
        **ask, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3
    )  # type: ignore[arg-type]
    content = probs.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 6
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob
        assert item.token == item.top_logprobs[0].token  # greedy picks the most likely


def test_concurrent_greedy_streams_each_match_the_whole_model(base_url: str) -> None:
    # greedy rows of concurrent generations are picked together in one head pass: each
    # stream must still get exactly the tokens of its own prompt (as the whole model gives)
    import torch

    from swarm.models import load_weights
    from swarm.models.reference import build_full_model

    weights = load_weights("smollm2-135m-instruct")
    tokenizer = weights.tokenizer()
    model = build_full_model(weights)
    questions = [
        "What is the capital of France?",
        "Name a planet of the solar system.",
        "How many legs does a spider have?",
        "What colour is the sky on a clear day?",
    ]
    expected = []
    for question in questions:
        messages = [{"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer.encode(str(text), add_special_tokens=False)])
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)
        expected.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))

    async def ask(client: openai.AsyncOpenAI, question: str) -> str:
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=16,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
        try:
            return await asyncio.gather(*(ask(client, q) for q in questions))
        finally:
            await client.close()

    assert asyncio.run(main()) == expected


def test_completions_and_models(client: openai.OpenAI) -> None:
    done = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert done.object == "text_completion" and "Paris" in done.choices[0].text
    legacy = client.completions.create(
        model="smollm2", prompt="One, two,", max_tokens=4, temperature=0, logprobs=2
    )
    lp = legacy.choices[0].logprobs
    assert (
        lp is not None
        and lp.tokens is not None
        and len(lp.tokens) == legacy.usage.completion_tokens
    )  # type: ignore[union-attr]
    assert "".join(lp.tokens) == legacy.choices[0].text
    assert all(len(top) <= 2 for top in lp.top_logprobs or [])
    assert lp.text_offset == sorted(lp.text_offset or [])
    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2-135m-instruct"]
    assert client.models.retrieve("smollm2-135m-instruct").id == "smollm2-135m-instruct"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert missing.value.status_code == 404
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=7)
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]


def test_langchain_invoke_and_stream(base_url: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key="x", model="smollm2", temperature=0, max_tokens=24)  # type: ignore[arg-type]
    answer = llm.invoke("What is the capital of France?")
    assert "Paris" in str(answer.content)
    streamed = "".join(str(chunk.content) for chunk in llm.stream("What is the capital of France?"))
    assert streamed == answer.content


def test_curl_streams(base_url: str) -> None:
    body = json.dumps(
        {
            "model": "smollm2",
            "stream": True,
            "temperature": 0,
            "max_tokens": 12,
            "messages": QUESTION,
        }
    )
    result = subprocess.run(
        [
            "curl",
            "-sN",
            f"{base_url}/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    events = [
        line[len("data: ") :] for line in result.stdout.splitlines() if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "Paris" in text


def test_health_ready_and_swarm(base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health").json() == {"status": "ok"}
    assert httpx.get(f"{root}/ready").status_code == 200
    swarm = httpx.get(f"{base_url}/swarm").json()
    (model,) = swarm["models"]
    assert model["complete"] and model["num_blocks"] == 30
    assert sorted((p["start"], p["end"]) for p in model["peers"]) == [(0, 15), (15, 30)]


def _children(up: Proc) -> list[int]:
    """The processes `up` started (its peers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == up.popen.pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    return pids


def _peer_command_lines(up: Proc) -> list[list[str]]:
    """The command lines of the peers `up` started."""
    lines = [
        Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") for pid in _children(up)
    ]
    return [line for line in lines if "peer" in line]


def _opened(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open."""
    return any(fd.resolve() == path.resolve() for fd in Path(f"/proc/{pid}/fd").iterdir())


def test_cpu_peers_and_head_take_compute_turns(up: Proc, client: openai.OpenAI) -> None:
    peers = _peer_command_lines(up)
    assert len(peers) == 2
    files = {line[line.index("--compute-turns") + 1] for line in peers}
    assert len(files) == 1  # one file for the whole machine
    path = Path(files.pop())
    # the gateway (the `up` process) and both peers opened that file
    assert _opened(up.popen.pid, path)
    assert sum(_opened(pid, path) for pid in _children(up)) == 2
    # while this test holds the machine's turn, nothing computes, so no reply comes back
    fd = os.open(path, os.O_RDWR)
    replies: list[str] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        asking = threading.Thread(
            target=lambda: replies.append(
                client.chat.completions.create(
                    model="smollm2-135m-instruct", messages=QUESTION, temperature=0, max_tokens=8
                )
                .choices[0]
                .message.content
                or ""
            )
        )
        asking.start()
        asking.join(3)
        assert asking.is_alive() and not replies
    finally:
        os.close(fd)  # gives the turn back
    asking.join(120)
    assert replies and "Paris" in replies[0]


def test_a_stream_starts_while_the_later_peers_compute(up: Proc, client: openai.OpenAI) -> None:
    """The response's headers and opening chunk go out once the first peer computed the prompt
    and the second took the session, while the second computes: when the opening chunk
    arrives, the gateway has not run its head pass yet (the second peer is stopped right then,
    so its output cannot arrive meanwhile); the text follows once it runs again."""
    (second,) = [
        pid
        for pid in _children(up)
        if (line := Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"))
        and "peer" in line
        and not line[line.index("--blocks") + 1].startswith("0:")
    ]
    metrics = f"{up.ready['url']}/metrics"

    def head_passes() -> float:
        text = httpx.get(metrics, timeout=10).text
        return value(text, "swarmgate_head_pass_seconds_count", model="smollm2-135m-instruct")

    notes = " ".join(f"Note {i}: project {i % 7} moved to room {i % 5}." for i in range(40))
    before = head_passes()
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": f"Summarise in one sentence. {notes}"}],
        temperature=0,
        max_tokens=8,
        stream=True,
    )
    chunks = iter(stream)
    opening = next(chunks)
    os.kill(second, signal.SIGSTOP)  # whatever it computes stays unfinished while we look
    try:
        assert opening.choices[0].delta.role == "assistant"
        assert not opening.choices[0].delta.content
        assert head_passes() == before  # no logits yet: the answer started before them
    finally:
        os.kill(second, signal.SIGCONT)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert head_passes() > before


def test_gateway_and_peers_run_on_uvloop(up: Proc) -> None:
    """Every process of the swarm loaded uvloop's loop (`swarm.event_loop`)."""
    pids = [up.popen.pid, *_children(up)]
    assert len(pids) == 3
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "uvloop/loop." in maps, f"process {pid} has no uvloop"


def test_a_cpu_swarm_does_not_busy_poll(up: Proc, client: openai.OpenAI) -> None:
    """`--busy-poll auto` (the default) leaves the loops of a CPU swarm asleep between
    messages: the spinning would take the cores the model computes on."""
    client.chat.completions.create(
        model=str(up.ready["model"]),
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=2,
    )
    metrics = httpx.get(f"{up.ready['url']}/metrics", timeout=10).text
    assert "swarmgate_busy_poll_seconds_total" in metrics
    assert value(metrics, "swarmgate_busy_poll_seconds_total") == 0.0
    for url in up.ready["peer_metrics"]:
        peer = httpx.get(str(url), timeout=10).text
        assert "swarmgate_peer_busy_poll_seconds_total" in peer
        assert value(peer, "swarmgate_peer_busy_poll_seconds_total") == 0.0
    for line in _peer_command_lines(up):
        assert line[line.index("--busy-poll") + 1] == "auto"
