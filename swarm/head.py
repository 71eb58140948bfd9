"""The client side of split inference: tokenizer, chat template, embeddings, norm, LM head.

The gateway (or any client) holds a `Head`; peers never see text or token ids. Token ids go in
through `embed`, hidden states come back out of the last span and become logits in `logits`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from swarm.cpu_linear import packed
from swarm.head_graphs import MAX_ROWS, GreedyHeadGraphs
from swarm.models.skeleton import build_head_module
from swarm.models.weights import Weights

log = logging.getLogger("swarmgate.head")


class Head:
    def __init__(
        self,
        weights: Weights,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self.config = weights.config
        self.layout = weights.layout
        self.tokenizer = tokenizer if tokenizer is not None else weights.tokenizer()
        module = build_head_module(
            weights.config, weights.layout, weights.head_tensors(), dtype, self.device
        )
        self.embed_tokens: nn.Module = module.get_submodule(weights.layout.embed)
        # embeddings only go to the wire: a GPU head looks them up in a host copy of the
        # table, so feeding a token back costs no device round trip (behind the LM head)
        self._host_embed: nn.Module = self.embed_tokens
        if self.device.type != "cpu":
            self._host_embed = copy.deepcopy(self.embed_tokens).to("cpu")
            scale = getattr(self._host_embed, "embed_scale", None)  # Gemma's, not a buffer
            if isinstance(scale, torch.Tensor):
                self._host_embed.embed_scale = scale.cpu()
        self.norm: nn.Module = module.get_submodule(weights.layout.norm)
        self.lm_head: nn.Module = module.get_submodule(weights.layout.lm_head)
        # a CPU head's passes through oneDNN's packed kernel: 8 rows of SmolLM2's LM head
        # 11-14 -> 5-5.5 ms, one row on AMD 10.5 -> 4.7 ms (`swarm.cpu_linear`); the LM head's
        # weight is never changed after this (nor its tied embeddings, which keep the plain
        # weight alive beside the packed one: +113 MB for SmolLM2)
        self.lm_head = packed(self.lm_head)
        self.softcap: float | None = getattr(weights.config, "final_logit_softcapping", None)
        self.hidden_size = int(weights.config.hidden_size)
        self.vocab_size = int(weights.config.vocab_size)
        self.graphs: GreedyHeadGraphs | None = None  # see `capture_greedy_graphs`

    def capture_greedy_graphs(self) -> bool:
        """On a GPU, capture the greedy head pass as CUDA graphs for every row bucket now
        (`swarm.head_graphs`); False where that does not apply (a CPU head)."""
        if self.device.type != "cuda":
            return False
        graphs = GreedyHeadGraphs(self.logits, self.hidden_size, self.dtype, self.device)
        try:
            with torch.inference_mode():
                graphs.prepare([1 << i for i in range(MAX_ROWS.bit_length())])
        except RuntimeError as error:  # out of memory, say: the passes stay eager
            log.warning("greedy head graphs not captured (eager passes instead): %s", error)
            return False
        self.graphs = graphs
        return True

    @property
    def chat_template(self) -> str | None:
        template = self.tokenizer.chat_template
        return template if isinstance(template, str) else None

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template."""
        if not self.chat_template:
            raise ValueError("this model has no chat template (it serves completions only)")
        rendered = self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        ids: list[int] = self.tokenizer.encode(str(rendered), add_special_tokens=False)
        return ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a plain prompt (with the tokenizer's own BOS handling)."""
        ids: list[int] = self.tokenizer.encode(text)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return text if isinstance(text, str) else "".join(text)

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(int(i) for i in source)
        return ids

    @torch.inference_mode()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """`ids[batch, n]` → `hidden[batch, n, h]`, on the host (ready for the wire)."""
        hidden: torch.Tensor = self._host_embed(ids.cpu())
        return hidden

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`hidden[batch, n, h]` (output of the last block) → fp32 `logits[batch, n, vocab]`."""
        normed = self.norm(hidden.to(device=self.device, dtype=self.dtype))
        logits: torch.Tensor = self.lm_head(normed).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
