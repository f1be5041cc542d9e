"""Prompts to the embeddings the transformer reads: UMT5 through the pipeline's ``encode_prompt``.

Three savings on the way, each optional in effect but none changing the numbers:

- A small cache of recent texts per worker, keyed by (text, max_sequence_length): most requests share
  the default negative prompt, and a retried or reseeded request repeats its prompt. Entries live on the
  device in the transformer's dtype (for Wan2.1, 512 x 4096 bf16 = 4 MiB each).
- Under Ulysses the ranks of a Ulysses group run the same passes with the same texts: the group's first
  rank encodes and broadcasts the embedding over the group's device collective, instead of every rank
  running UMT5 (6.7B parameters for Wan2.1). Every rank of the group keeps the same cache, so a hit is a
  hit everywhere and no broadcast is started by one rank alone. A failure while the first rank encodes
  leaves the others in the broadcast until the group's timeout: the group is then in doubt and restarts,
  as when ranks failed differently before.
- Offload: UMT5 waits on the CPU between jobs and visits the device only to encode. On a CPU device
  there is nowhere to move it: the option is a no-op there.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch

from worker.parallel import ParallelRuntime

log = logging.getLogger("wanserve.worker")

CACHED_TEXTS = 8
"""Embeddings kept per worker: the default negative prompt stays (it is used by nearly every request,
so the least recently used entry is never it) while one-off prompts pass through."""

OFFLOAD_DEVICE = torch.device("cpu")


class PromptEncoder:
    """Encodes one text at a time for the transformer, with a bounded cache, one encode per Ulysses
    group and optional offload of the text encoder (see the module's docstring).

    Args:
        pipe: the ``WanPipeline`` whose tokenizer and text encoder are used.
        device: where the embeddings are used (the transformer's device).
        dtype: the transformer's dtype.
        max_sequence_length: tokens per text (shorter texts are padded with zeros, as diffusers does).
        parallel: this rank's group; with Ulysses > 1 only the Ulysses group's first rank encodes.
        offload: keep the text encoder on the CPU between encodes (no-op on a CPU device).
        cache_size: how many texts' embeddings to keep (0: no cache).
    """

    def __init__(
        self,
        pipe: Any,
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int,
        *,
        parallel: ParallelRuntime | None = None,
        offload: bool = False,
        cache_size: int = CACHED_TEXTS,
    ) -> None:
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.max_sequence_length = max_sequence_length
        self.parallel = parallel if parallel is not None and parallel.layout.ulysses > 1 else None
        self.offload = offload and device.type != OFFLOAD_DEVICE.type
        self.cache_size = cache_size
        self.encoder_runs = 0
        """How many times this rank ran the text encoder (tests and logs read it)."""
        self._cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        if self.offload:
            pipe.text_encoder.to(OFFLOAD_DEVICE)

    @property
    def encodes_here(self) -> bool:
        """Whether this rank runs the encoder: alone, or as the first rank of its Ulysses group."""
        return self.parallel is None or self.parallel.leads_ulysses

    @torch.inference_mode()
    def encode(self, text: str) -> torch.Tensor:
        """The embedding of ``text``: shape (1, max_sequence_length, text_dim), the transformer's dtype."""
        key = (text, self.max_sequence_length)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if self.encodes_here:
            embeds = self._run_encoder(text)
        else:
            embeds = torch.empty(self._shape, dtype=self.dtype, device=self.device)
        if self.parallel is not None:
            self.parallel.ulysses_broadcast(embeds)
        if self.cache_size > 0:
            self._cache[key] = embeds
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return embeds

    @property
    def _shape(self) -> tuple[int, int, int]:
        return (1, self.max_sequence_length, int(self.pipe.text_encoder.config.d_model))

    def _run_encoder(self, text: str) -> torch.Tensor:
        encoder = self.pipe.text_encoder
        if self.offload:
            encoder.to(self.device)
        try:
            embeds, _ = self.pipe.encode_prompt(
                prompt=text,
                do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
                device=self.device,
            )
        finally:
            if self.offload:
                encoder.to(OFFLOAD_DEVICE)
        self.encoder_runs += 1
        return embeds.to(self.dtype).contiguous()
