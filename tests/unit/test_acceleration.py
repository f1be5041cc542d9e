"""Choosing the attention backend and the compile mode (worker/acceleration.py), and their settings.

The CUDA and Ascend choices of ``auto`` cannot run here (no device): what is tested is that every
backend needing one is refused on the CPU, with a message listing what is available.
"""

from __future__ import annotations

import pytest
import torch

from service.core.settings import SettingsError, load_settings
from worker import acceleration
from worker.acceleration import available_attention_backends, resolve_attention_backend
from worker.engine import WanEngine

CPU = torch.device("cpu")


def test_auto_is_native_on_the_cpu() -> None:
    assert resolve_attention_backend("auto", CPU, torch.float32) == "native"
    assert resolve_attention_backend("AUTO", CPU, torch.bfloat16, ulysses=2) == "native"


def test_the_cpu_offers_the_backends_that_run_on_it() -> None:
    assert available_attention_backends(CPU, torch.float32) == ["_native_math", "flex", "native"]
    # PyTorch's flash SDPA kernel runs on the CPU too, in half precision only (diffusers' constraint).
    assert "_native_flash" in available_attention_backends(CPU, torch.bfloat16)
    # Under Ulysses only those diffusers runs with context parallelism.
    assert available_attention_backends(CPU, torch.float32, ulysses=2) == ["native"]


def test_an_explicit_available_backend_is_kept() -> None:
    assert resolve_attention_backend(" Flex ", CPU, torch.float32) == "flex"
    assert resolve_attention_backend("native", CPU, torch.float32, ulysses=4) == "native"


def test_an_unknown_name_fails_naming_the_variable_and_listing_the_available_ones() -> None:
    with pytest.raises(SettingsError) as caught:
        resolve_attention_backend("fastest", CPU, torch.float32)
    message = str(caught.value)
    assert message == (
        "WANSERVE_ATTENTION_BACKEND='fastest' is not an attention backend; "
        "available here: auto, _native_math, flex, native"
    )


@pytest.mark.parametrize(
    ("name", "dtype", "reason"),
    [
        ("flash", torch.bfloat16, "needs a CUDA device"),
        ("_native_cudnn", torch.bfloat16, "needs a CUDA device"),
        ("sage", torch.float16, "needs a CUDA device"),
        ("_native_npu", torch.bfloat16, "needs an Ascend NPU"),
        ("_native_flash", torch.float32, "Query, key, and value must be either bfloat16 or float16"),
    ],
)
def test_a_backend_that_cannot_run_here_fails_with_why_and_what_can(
    name: str, dtype: torch.dtype, reason: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        resolve_attention_backend(name, CPU, dtype)
    message = str(caught.value)
    assert message.startswith(f"WANSERVE_ATTENTION_BACKEND={name!r} is not usable here (cpu, ")
    assert f": {reason}; available: auto, " in message
    assert "\n" not in message


def test_a_backend_without_context_parallelism_is_refused_under_ulysses() -> None:
    with pytest.raises(SettingsError) as caught:
        resolve_attention_backend("flex", CPU, torch.float32, ulysses=2)
    assert str(caught.value) == (
        "WANSERVE_ATTENTION_BACKEND='flex' does not support Ulysses (diffusers' context parallelism, "
        "--ulysses 2); available with Ulysses here: auto, native"
    )


def test_the_engine_reports_and_uses_the_resolved_backend(tiny_model_dir) -> None:
    engine = WanEngine.load(tiny_model_dir, device="cpu", attention_backend="_native_math")
    assert engine.layout == {
        "ranks": 1,
        "ulysses": 1,
        "cfg": 1,
        "device": "cpu",
        "attention_backend": "_native_math",
        "compile": "none",
    }
    processors = {block.attn1.processor._attention_backend for block in engine.pipe.transformer.blocks}
    assert {getattr(backend, "value", backend) for backend in processors} == {"_native_math"}


def test_the_engine_refuses_a_bad_backend_or_mode_before_loading_weights(tiny_model_dir, monkeypatch) -> None:
    import diffusers

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were loaded before the setting was checked")

    for loader in (diffusers.WanPipeline, diffusers.AutoencoderKLWan):
        monkeypatch.setattr(loader, "from_pretrained", no_weights)
    with pytest.raises(SettingsError, match="WANSERVE_ATTENTION_BACKEND='_native_cudnn'"):
        WanEngine.load(tiny_model_dir, device="cpu", attention_backend="_native_cudnn")
    with pytest.raises(SettingsError, match="WANSERVE_COMPILE='fast': must be one of none, blocks, full"):
        WanEngine.load(tiny_model_dir, device="cpu", compile="fast")


def test_compiling_after_the_cache_hooks_is_refused(engine) -> None:
    with pytest.raises(ValueError, match="before its cache or parallel hooks"):
        acceleration.compile_transformer(engine.pipe.transformer, "blocks")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"WANSERVE_COMPILE": "fast"}, "WANSERVE_COMPILE='fast': Input should be 'none', 'blocks' or 'full'"),
        (
            {"WANSERVE_ATTENTION_BACKEND": "flash attn"},
            "WANSERVE_ATTENTION_BACKEND='flash attn': must be auto or a diffusers attention backend name "
            "(e.g. native, flash)",
        ),
    ],
)
def test_settings_errors_name_the_variable(monkeypatch, variables: dict[str, str], message: str) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == message


def test_settings_defaults_normalise_and_treat_empty_as_unset(monkeypatch) -> None:
    settings = load_settings()
    assert (settings.attention_backend, settings.compile) == ("auto", "none")
    monkeypatch.setenv("WANSERVE_ATTENTION_BACKEND", " FLASH ")
    monkeypatch.setenv("WANSERVE_COMPILE", "Blocks")
    assert (load_settings().attention_backend, load_settings().compile) == ("flash", "blocks")
    monkeypatch.setenv("WANSERVE_ATTENTION_BACKEND", "")
    monkeypatch.setenv("WANSERVE_COMPILE", "")
    assert (load_settings().attention_backend, load_settings().compile) == ("auto", "none")
