"""Ascend NPU layer ops for Wan: its RoPE, RMSNorms and attention through fused torch_npu kernels.

On an NPU (``WANSERVE_NPU_OPS=auto``) each ``WanAttention`` of diffusers' Wan transformer gets our
processor (:class:`FusedWanAttnProcessor`, a ``WanAttnProcessor`` subclass) and each ``torch.nn.RMSNorm``
(``norm_q``, ``norm_k``, the I2V ``norm_added_k``) becomes a :class:`FusedRMSNorm` that shares its weight.
Nothing in diffusers is patched globally; the module tree, the weights and the state dict stay as loaded.

The kernels, as documented by Ascend (op-plugin ``docs/context/torch_npu-npu_*.md``, hiascend.com API lists):

- ``npu_rotary_mul(x, r1, r2, rotary_mode)``: ``x * r1 + rotate(x) * r2``; ``half`` (the default, the only
  mode of older torch_npu) rotates halves, ``cat(-x2, x1)``; ``interleave`` rotates pairs, ``(-x1, x0, ...)``.
  Wan (diffusers' ``WanAttnProcessor``) rotates interleaved pairs with cos/sin tables repeated per pair, so
  with ``interleave`` the tables go in as they are. With ``half`` only, q and k are de-interleaved (channels
  ``0, 2, 4, ..., 1, 3, 5, ...`` of each head) and so are the tables: the half rotation of the permuted
  vector is the permuted pair rotation, and q·k is the same when both carry the same permutation, so the
  attention output needs no undoing. Like MindIE-SD's ``rotary_position_embedding``, we rotate in float32
  (diffusers computes it in the tables' float precision) and cast back.
- ``npu_rms_norm(x, gamma, epsilon)[0]``: ``x * rsqrt(mean(x**2, -1) + eps) * gamma``; gamma in x's dtype.
- ``npu_fusion_attention(q, k, v, head_num, "BSND", scale=..., pre_tockens=..., next_tockens=...,
  sparse_mode=0)[0]``: ``softmax(scale * q k^T) v``, where ``pre_tockens``/``next_tockens`` bound a band of
  keys around each query (sparse_mode 0, "defaultMask").

Sparse-mode bounds: diffusers 0.42 (``attention_dispatch._native_npu_attention``) passes
``pre_tockens=65536, next_tockens=65536`` and the default sparse_mode 0. The 14B at 1280x720x81 attends over
21 x 45 x 80 = 75,600 tokens (Ulysses gathers the full sequence for each rank's heads), longer videos over
more (161 frames: 147,600). The current torch_npu docs say that without ``atten_mask`` the bounds are
ignored (full attention), but they also require bounds consistent with any mask, and earlier releases do
not say it: we pass the kernel's own defaults, 2,147,483,647 on each side (what MindIE-SD's
``fused_attn_score`` passes), which cover any sequence the kernel accepts (S up to 1M), so no release can
turn the attention into a band.

The NPU kernels cannot run on this project's CI (no Ascend device): :func:`reference_kernels` implements
each documented formula in plain torch, and the tests run the patched transformer with them on the CPU
against diffusers' own ops.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    _get_added_kv_projections,
    _get_qkv_projections,
)

from service.core.settings import SettingsError

log = logging.getLogger("wanserve.worker")

NPU_OPS_MODES = ("auto", "off", "mindiesd")
FULL_ATTENTION_TOKENS = 2_147_483_647
"""``pre_tockens``/``next_tockens`` for unbanded attention: the kernel's documented default (int32 max)."""
DIFFUSERS_NPU_TOKENS = 65_536
"""What diffusers 0.42's ``_native_npu`` backend passes; shorter than the 14B's 720p sequence."""
_FUSED_BACKENDS = (None, "_native_npu")
"""Attention backends our processor replaces by the fused kernel; any other explicit choice is kept."""

RotaryMul = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], torch.Tensor]
RmsNorm = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
FusionAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, int, int], torch.Tensor]


@dataclass(frozen=True)
class LayerKernels:
    """The three fused ops the patched layers call: torch_npu's (or MindIE-SD's) on an NPU, the reference
    formulas in tests."""

    name: str
    rotary_mul: RotaryMul
    """``(x, r1, r2, mode)`` with x in BSND and r1/r2 as (1, S, 1, D); mode ``half`` or ``interleave``."""
    rms_norm: RmsNorm
    """``(x, gamma, eps)`` over the last dimension, in x's dtype."""
    fusion_attention: FusionAttention
    """``(q, k, v, scale, pre_tokens, next_tokens)`` in BSND, heads from q's third dimension."""
    rotary_modes: frozenset[str] = field(default=frozenset({"half"}))
    """The rotary modes this kernel supports; ``interleave`` saves the de-interleaving copies."""

    @property
    def rotary_mode(self) -> str:
        return "interleave" if "interleave" in self.rotary_modes else "half"


# --- reference formulas (the CPU stand-ins for the kernels) -------------------------------------------


def reference_rotary_mul(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, mode: str) -> torch.Tensor:
    """``npu_rotary_mul`` as documented: ``x * r1 + rotate(x) * r2``."""
    if mode == "half":
        first, second = x.chunk(2, dim=-1)
        rotated = torch.cat((-second, first), dim=-1)
    elif mode == "interleave":
        even, odd = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((-odd, even), dim=-1).flatten(-2)
    else:
        raise ValueError(f"unknown rotary mode {mode!r}")
    return x * r1 + rotated * r2


def reference_rms_norm(x: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
    """``npu_rms_norm(x, gamma, eps)[0]`` as documented, computed in float32 (its rstd output is float32)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * gamma.float()).to(x.dtype)


def reference_fusion_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, pre_tokens: int, next_tokens: int
) -> torch.Tensor:
    """``npu_fusion_attention(..., "BSND", sparse_mode=0)[0]``: keys more than ``pre_tokens`` before or
    ``next_tokens`` after a query's position are left out (the band the bounds describe)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    offset = (
        torch.arange(k.shape[1], device=q.device)[None, :]
        - torch.arange(q.shape[1], device=q.device)[:, None]
    )
    outside = (offset > next_tokens) | (offset < -pre_tokens)
    scores = scores.masked_fill(outside, float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v.float())
    return out.to(q.dtype)


def reference_kernels(rotary_modes: frozenset[str] = frozenset({"half", "interleave"})) -> LayerKernels:
    """The documented formulas in plain torch; ``rotary_modes={"half"}`` mimics an older torch_npu."""
    return LayerKernels(
        "reference", reference_rotary_mul, reference_rms_norm, reference_fusion_attention, rotary_modes
    )


# --- the device kernels (cannot run here: no Ascend NPU) ----------------------------------------------


def torch_npu_kernels() -> LayerKernels:
    """torch_npu's fused kernels (signatures from op-plugin's docs; checked on no NPU here)."""
    import torch_npu

    def rotary_mul(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "half":  # the argument is absent from older releases
            return torch_npu.npu_rotary_mul(x, r1, r2)
        return torch_npu.npu_rotary_mul(x, r1, r2, mode)

    def rms_norm(x: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
        return torch_npu.npu_rms_norm(x, gamma.to(x.dtype), epsilon=eps)[0]

    def fusion_attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, pre_tokens: int, next_tokens: int
    ) -> torch.Tensor:
        out = torch_npu.npu_fusion_attention(
            q,
            k,
            v,
            q.size(2),
            "BSND",
            scale=scale,
            pre_tockens=pre_tokens,
            next_tockens=next_tokens,
            sparse_mode=0,
            keep_prob=1.0,
            inner_precise=0,
        )
        return out[0]

    return LayerKernels("torch_npu", rotary_mul, rms_norm, fusion_attention, _npu_rotary_modes())


def mindiesd_kernels() -> LayerKernels:
    """MindIE-SD's ops: its RoPE wrapper, and its ``attention_forward``, which picks the fastest attention
    kernel for the shape at run time (its kernels pass full bounds themselves). Its RMSNorm is torch_npu's."""
    import mindiesd

    base = torch_npu_kernels()

    def rotary_mul(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, mode: str) -> torch.Tensor:
        rotated_mode = "rotated_interleaved" if mode == "interleave" else "rotated_half"
        return mindiesd.rotary_position_embedding(x, r1, r2, rotated_mode=rotated_mode, head_first=False)

    def fusion_attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, pre_tokens: int, next_tokens: int
    ) -> torch.Tensor:
        return mindiesd.attention_forward(q, k, v, scale=scale, head_first=False)

    return LayerKernels("mindiesd", rotary_mul, base.rms_norm, fusion_attention, base.rotary_modes)


def _npu_rotary_modes() -> frozenset[str]:
    """``interleave`` where this torch_npu's ``npu_rotary_mul`` takes a ``rotary_mode`` (newer releases)."""
    try:
        schema = str(torch.ops.npu.npu_rotary_mul.default._schema)
    except (AttributeError, RuntimeError):
        return frozenset({"half"})
    return frozenset({"half", "interleave"}) if "rotary_mode" in schema else frozenset({"half"})


# --- the patched layers -----------------------------------------------------------------------------


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """Channels ``0, 2, 4, ..., 1, 3, 5, ...`` of the last dimension: pairs become halves."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


class FusedRMSNorm(torch.nn.RMSNorm):
    """A ``torch.nn.RMSNorm`` (same weight, same state-dict key) computed by the fused kernel."""

    def __init__(self, norm: torch.nn.RMSNorm, kernels: LayerKernels) -> None:
        super().__init__(
            norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine, device="meta"
        )
        self.weight = norm.weight
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        gamma = self.weight
        if gamma is None:
            gamma = torch.ones(self.normalized_shape, dtype=x.dtype, device=x.device)
        return self.kernels.rms_norm(x, gamma, eps)


class FusedWanAttnProcessor(WanAttnProcessor):
    """diffusers' ``WanAttnProcessor`` (0.42) step for step, with the rotary embedding and the attention
    through the fused kernels. An attention mask, or an attention backend chosen other than the NPU one,
    goes through diffusers' dispatcher as before."""

    def __init__(self, kernels: LayerKernels) -> None:
        super().__init__()
        self.kernels = kernels

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        encoder_hidden_states_img = None
        if attn.add_k_proj is not None:
            assert encoder_hidden_states is not None
            # 512 is the context length of the text encoder (as in diffusers' processor)
            image_context_length = encoder_hidden_states.shape[1] - 512
            encoder_hidden_states_img = encoder_hidden_states[:, :image_context_length]
            encoder_hidden_states = encoder_hidden_states[:, image_context_length:]

        # None (self-attention) is what diffusers passes too, though its helper is annotated otherwise.
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)  # type: ignore[arg-type]
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        permuted = False  # q and k's channels de-interleaved (the half-mode rotation)
        if rotary_emb is not None:
            query, key, permuted = self._rotate(query, key, *rotary_emb)

        hidden_states_img = None
        if encoder_hidden_states_img is not None:
            key_img, value_img = _get_added_kv_projections(attn, encoder_hidden_states_img)
            key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
            value_img = value_img.unflatten(2, (attn.heads, -1))
            if permuted:  # q·k needs the same channel order on both sides
                key_img = deinterleave(key_img)
            hidden_states_img = self._attention(query, key_img, value_img, None, None)
            hidden_states_img = hidden_states_img.flatten(2, 3).type_as(query)

        parallel = self._parallel_config if encoder_hidden_states is None else None
        hidden_states = self._attention(query, key, value, attention_mask, parallel)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        if hidden_states_img is not None:
            hidden_states = hidden_states + hidden_states_img

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states

    def _rotate(
        self, query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Wan's rotation of interleaved pairs; Wan's tables hold each pair's cos and sin twice."""
        mode = self.kernels.rotary_mode
        cos, sin = cos.float(), sin.float()
        if mode == "half":
            cos, sin = deinterleave(cos), deinterleave(sin)
        rotated = []
        for x in (query, key):
            x32 = x.float() if mode == "interleave" else deinterleave(x.float())
            rotated.append(self.kernels.rotary_mul(x32, cos, sin, mode).type_as(x))
        return rotated[0], rotated[1], mode == "half"

    def _attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        parallel_config: Any,
    ) -> torch.Tensor:
        backend = getattr(self._attention_backend, "value", self._attention_backend)
        if mask is not None or backend not in _FUSED_BACKENDS:
            return dispatch_attention_fn(
                query,
                key,
                value,
                attn_mask=mask,
                dropout_p=0.0,
                is_causal=False,
                backend=self._attention_backend,
                parallel_config=parallel_config,
            )
        if parallel_config is None:
            return self._fused_attention(query, key, value)
        # Ulysses: diffusers' all-to-all around our kernel, which then sees the whole sequence for the
        # rank's heads (private in diffusers 0.42, the version this project pins).
        from diffusers.models.attention_dispatch import _templated_context_parallel_attention

        out: torch.Tensor = _templated_context_parallel_attention(
            query,
            key,
            value,
            None,
            0.0,
            False,
            None,
            False,
            False,
            forward_op=self._context_parallel_forward,
            backward_op=_no_backward,
            _parallel_config=parallel_config,
        )
        return out

    def _fused_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / math.sqrt(query.shape[-1])
        return self.kernels.fusion_attention(
            query, key, value, scale, FULL_ATTENTION_TOKENS, FULL_ATTENTION_TOKENS
        )

    def _context_parallel_forward(
        self,
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
        return_lse: bool = False,
        _save_ctx: bool = True,
        _parallel_config: Any = None,
    ) -> torch.Tensor:
        """The ``forward_op`` diffusers' templated Ulysses attention calls on the gathered sequence."""
        if return_lse or attn_mask is not None:
            raise ValueError(
                "the fused NPU attention is used without a mask and without the LSE (Ulysses only)"
            )
        return self._fused_attention(query, key, value)


def _no_backward(*args: Any, **kwargs: Any) -> None:
    raise NotImplementedError("the fused NPU attention serves inference only (no backward)")


def patch_wan_layers(transformer: torch.nn.Module, kernels: LayerKernels) -> int:
    """Give every ``WanAttention`` the fused processor and turn every ``RMSNorm`` into a fused one.

    The old processor's attention backend and parallel config carry over, so this may run before or after
    ``set_attention_backend`` and must run before ``enable_parallelism`` (which hooks ``rope`` and the
    blocks by name, both untouched here). Patching twice changes nothing more.

    Returns:
        How many modules were patched (processors and norms).
    """
    patched = 0
    for module in list(transformer.modules()):
        if isinstance(module, WanAttention) and not isinstance(module.processor, FusedWanAttnProcessor):
            processor = FusedWanAttnProcessor(kernels)
            processor._attention_backend = getattr(module.processor, "_attention_backend", None)
            processor._parallel_config = getattr(module.processor, "_parallel_config", None)
            module.set_processor(processor)  # type: ignore[arg-type]  # diffusers' union lists its own
            patched += 1
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.RMSNorm and len(child.normalized_shape) == 1:
                setattr(module, name, FusedRMSNorm(child, kernels))
                patched += 1
    return patched


def apply_npu_ops(transformer: torch.nn.Module, device: torch.device, mode: str = "auto") -> str | None:
    """``WANSERVE_NPU_OPS``: ``auto`` patches Wan's layers with torch_npu's kernels on an NPU and does
    nothing elsewhere; ``off`` nothing; ``mindiesd`` MindIE-SD's ops (the package and an NPU required).

    Returns:
        The kernels' name, or None when nothing was patched.

    Raises:
        SettingsError: ``mindiesd`` without the package or off an NPU; an unknown mode.
    """
    if mode not in NPU_OPS_MODES:
        raise SettingsError(f"WANSERVE_NPU_OPS={mode!r}: choose one of {', '.join(NPU_OPS_MODES)}")
    if mode == "off" or (mode == "auto" and device.type != "npu"):
        return None
    if mode == "mindiesd":
        if importlib.util.find_spec("mindiesd") is None:
            raise SettingsError(
                "WANSERVE_NPU_OPS=mindiesd but the mindiesd package (MindIE-SD) is not installed"
            )
        if device.type != "npu":
            raise SettingsError(
                f"WANSERVE_NPU_OPS=mindiesd needs an Ascend NPU, but the worker runs on {device}"
            )
    kernels = mindiesd_kernels() if mode == "mindiesd" else torch_npu_kernels()
    count = patch_wan_layers(transformer, kernels)
    log.info(
        "NPU layer ops: %s kernels in %d modules (rotary mode %s)", kernels.name, count, kernels.rotary_mode
    )
    return kernels.name
