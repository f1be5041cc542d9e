"""Ascend layer ops (worker/npu_ops.py): the patched Wan layers against diffusers' own.

The torch_npu kernels cannot run here (no Ascend NPU): each one is replaced by its documented formula in
plain torch (``reference_kernels``), and the transformer patched with those must give what the unpatched
diffusers transformer gives. What stays unverified is that the device kernels compute their documented
formulas, and the Ulysses path (diffusers' all-to-all around our kernel), which needs a process group.
"""

from __future__ import annotations

import copy
import importlib.util
from collections import Counter
from dataclasses import replace
from typing import Any, TypeVar

import pytest
import torch
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanRotaryPosEmbed,
    WanTransformer3DModel,
)

from service.core.settings import SettingsError, load_settings
from tests.unit.tiny_transformer import forward, inputs, make_transformer
from worker.npu_ops import (
    DIFFUSERS_NPU_TOKENS,
    FULL_ATTENTION_TOKENS,
    FusedRMSNorm,
    FusedWanAttnProcessor,
    LayerKernels,
    apply_npu_ops,
    patch_wan_layers,
    reference_fusion_attention,
    reference_kernels,
)
from worker.tiny_model import TRANSFORMER_CONFIG

TOLERANCE = 1e-5
"""fp32 on the CPU: the reference formulas differ from diffusers' ops only in rounding (diffusers rotates in
float64 tables, we in float32; its attention is SDPA, ours an explicit softmax)."""
MODES = [frozenset({"half", "interleave"}), frozenset({"half"})]
MODE_IDS = ["interleave", "half-only"]


def counting(kernels: LayerKernels, calls: Counter[str]) -> LayerKernels:
    """The same kernels, counting their calls and recording the attention bounds they get."""

    def rotary_mul(*args: Any) -> torch.Tensor:
        calls["rotary_mul"] += 1
        return kernels.rotary_mul(*args)

    def rms_norm(*args: Any) -> torch.Tensor:
        calls["rms_norm"] += 1
        return kernels.rms_norm(*args)

    def fusion_attention(q: Any, k: Any, v: Any, scale: float, pre: int, nxt: int) -> torch.Tensor:
        calls["fusion_attention"] += 1
        calls[f"bounds {pre} {nxt}"] += 1
        return kernels.fusion_attention(q, k, v, scale, pre, nxt)

    return replace(kernels, rotary_mul=rotary_mul, rms_norm=rms_norm, fusion_attention=fusion_attention)


Model = TypeVar("Model", bound=torch.nn.Module)


def with_trained_norms(model: Model) -> Model:
    """RMSNorm weights away from their initial ones: the weights must reach the fused norm."""
    torch.manual_seed(3)
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, torch.nn.RMSNorm) and norm.weight is not None:
                norm.weight.normal_(1.0, 0.2)
    return model


def self_attention_case(
    seed: int = 0,
) -> tuple[WanAttention, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A Wan self-attention layer (2 heads of 24 channels: t/h/w rotary sections of 8) on a 2x4x6 latent."""
    torch.manual_seed(seed)
    attn = with_trained_norms(
        WanAttention(dim=48, heads=2, dim_head=24, eps=1e-6, processor=WanAttnProcessor())
    )
    rope = WanRotaryPosEmbed(attention_head_dim=24, patch_size=(1, 2, 2), max_seq_len=32)
    rotary = rope(torch.zeros(1, 16, 2, 8, 12))
    hidden = torch.randn(1, 2 * 4 * 6, 48)
    return attn, hidden, rotary


@pytest.mark.parametrize("rotary_modes", MODES, ids=MODE_IDS)
def test_a_patched_self_attention_layer_gives_diffusers_output(rotary_modes: frozenset[str]) -> None:
    attn, hidden, rotary = self_attention_case()
    expected = attn(hidden, rotary_emb=rotary)
    calls: Counter[str] = Counter()
    assert patch_wan_layers(attn, counting(reference_kernels(rotary_modes), calls)) == 3
    actual = attn(hidden, rotary_emb=rotary)
    assert (actual - expected).abs().max() <= TOLERANCE
    assert calls["rotary_mul"] == 2 and calls["rms_norm"] == 2 and calls["fusion_attention"] == 1


def test_wan_tables_fed_unconverted_to_the_half_rotation_give_another_result() -> None:
    """Wan rotates interleaved pairs: the half-mode kernel needs de-interleaved q, k and tables."""
    attn, hidden, rotary = self_attention_case()
    expected = attn(hidden, rotary_emb=rotary)
    reference = reference_kernels()
    half_regardless = replace(
        reference, rotary_mul=lambda x, r1, r2, mode: reference.rotary_mul(x, r1, r2, "half")
    )
    patch_wan_layers(attn, half_regardless)
    assert isinstance(attn.processor, FusedWanAttnProcessor)
    assert attn.processor.kernels.rotary_mode == "interleave"  # so the tables go in unconverted
    assert (attn(hidden, rotary_emb=rotary) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_rms_norm_is_torchs_rms_norm_with_the_same_weight(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    norm = torch.nn.RMSNorm(48, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
    x = (3 * torch.randn(2, 10, 48)).to(dtype)
    fused = FusedRMSNorm(norm, reference_kernels())
    assert fused.weight is norm.weight
    tolerance = TOLERANCE if dtype == torch.float32 else 2e-2  # bf16: a rounding of the output or two
    assert (fused(x).float() - norm(x).float()).abs().max() <= tolerance * norm(x).float().abs().max()


@pytest.mark.parametrize("rotary_modes", MODES, ids=MODE_IDS)
def test_the_patched_tiny_transformer_gives_diffusers_output(rotary_modes: frozenset[str]) -> None:
    original = with_trained_norms(make_transformer())
    patched = copy.deepcopy(original)
    calls: Counter[str] = Counter()
    patch_wan_layers(patched, counting(reference_kernels(rotary_modes), calls))
    with torch.no_grad():
        for step in range(2):
            assert (forward(patched, step) - forward(original, step)).abs().max() <= TOLERANCE
    blocks, passes = len(original.blocks), 2
    # Per block: self-attention rotates q and k; norm_q/norm_k in both attentions; two attentions.
    assert calls["rotary_mul"] == 2 * blocks * passes
    assert calls["rms_norm"] == 4 * blocks * passes
    assert calls["fusion_attention"] == 2 * blocks * passes
    assert patched.state_dict().keys() == original.state_dict().keys()


def test_the_patched_image_to_video_transformer_gives_diffusers_output() -> None:
    """Wan2.1 I2V: image keys through ``norm_added_k`` and a second attention in each cross-attention."""
    torch.manual_seed(2)
    config = {**TRANSFORMER_CONFIG, "image_dim": 24, "added_kv_proj_dim": 32}
    original = with_trained_norms(WanTransformer3DModel(**config).eval())
    patched = copy.deepcopy(original)
    calls: Counter[str] = Counter()
    patch_wan_layers(patched, counting(reference_kernels(frozenset({"half"})), calls))
    args = {**inputs(0, "cond"), "encoder_hidden_states": torch.randn(1, 512, 32)}
    args["encoder_hidden_states_image"] = torch.randn(1, 5, 24)
    with torch.no_grad():
        expected = original(**args, return_dict=False)[0]
        actual = patched(**args, return_dict=False)[0]
    assert (actual - expected).abs().max() <= TOLERANCE
    assert calls["rms_norm"] == 5 * len(original.blocks)  # norm_q, norm_k twice and norm_added_k
    assert calls["fusion_attention"] == 3 * len(original.blocks)


def test_the_attention_bounds_cover_the_longest_sequence_served() -> None:
    # Wan2.1-14B at 1280x720, 81 frames: the VAE keeps (81 - 1) / 4 + 1 = 21 latent frames and divides
    # each side by 8, the 1x2x2 patches by 2 more.
    tokens = ((81 - 1) // 4 + 1) * (720 // 16) * (1280 // 16)
    assert tokens == 75_600
    assert DIFFUSERS_NPU_TOKENS < tokens <= FULL_ATTENTION_TOKENS  # diffusers' bounds would not cover it

    calls: Counter[str] = Counter()
    model = make_transformer()
    patch_wan_layers(model, counting(reference_kernels(), calls))
    with torch.no_grad():
        forward(model, 0)
    assert calls[f"bounds {FULL_ATTENTION_TOKENS} {FULL_ATTENTION_TOKENS}"] == calls["fusion_attention"] > 0


def test_bounds_shorter_than_the_sequence_make_a_band() -> None:
    """The reference models the bounds, so the check above is not vacuous."""
    q, k, v = (torch.randn(1, 40, 2, 16) for _ in range(3))
    scale = 16**-0.5
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ).transpose(1, 2)
    full = reference_fusion_attention(q, k, v, scale, FULL_ATTENTION_TOKENS, FULL_ATTENTION_TOKENS)
    banded = reference_fusion_attention(q, k, v, scale, 8, 8)
    assert (full - sdpa).abs().max() <= TOLERANCE
    assert (banded - sdpa).abs().max() > 1e-2


def processors_and_norms(model: torch.nn.Module) -> list[type]:
    return [type(m.processor) for m in model.modules() if isinstance(m, WanAttention)] + [
        type(m) for m in model.modules() if isinstance(m, torch.nn.RMSNorm)
    ]


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_off_and_auto_on_the_cpu_leave_the_transformer_as_it_is(mode: str) -> None:
    model = make_transformer()
    before = processors_and_norms(model)
    with torch.no_grad():
        expected = forward(model, 0)
        assert apply_npu_ops(model, torch.device("cpu"), mode) is None
        assert torch.equal(forward(model, 0), expected)
    assert processors_and_norms(model) == before
    assert FusedWanAttnProcessor not in before and FusedRMSNorm not in before


@pytest.mark.skipif(importlib.util.find_spec("mindiesd") is not None, reason="mindiesd is installed")
def test_mindiesd_without_the_package_is_a_one_line_error_naming_the_variable() -> None:
    with pytest.raises(SettingsError) as caught:
        apply_npu_ops(make_transformer(), torch.device("cpu"), "mindiesd")
    message = str(caught.value)
    assert message.startswith("WANSERVE_NPU_OPS=mindiesd") and "not installed" in message
    assert "\n" not in message


def test_the_setting_defaults_to_auto_and_refuses_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().npu_ops == "auto"
    monkeypatch.setenv("WANSERVE_NPU_OPS", "mindiesd")
    assert load_settings().npu_ops == "mindiesd"
    monkeypatch.setenv("WANSERVE_NPU_OPS", "fast")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith("WANSERVE_NPU_OPS='fast': ")
    assert "'mindiesd'" in str(caught.value)


def test_an_explicit_attention_backend_is_kept_and_patching_twice_changes_nothing() -> None:
    """A backend chosen for the model stays in charge of attention; the fused kernel replaces only the
    default and the NPU backend."""
    model = make_transformer()
    model.set_attention_backend("native")
    calls: Counter[str] = Counter()
    kernels = counting(reference_kernels(), calls)
    patched = patch_wan_layers(model, kernels)
    assert patch_wan_layers(model, kernels) == 0
    assert patched == 2 * len(model.blocks) * 3  # per block: two processors, four norms
    with torch.no_grad():
        forward(model, 0)
    assert calls["fusion_attention"] == 0 and calls["rotary_mul"] > 0
