"""The unit tier: this process and its files only. No Redis, no network, no child process, no training; the
whole tier runs in under a minute.

A guard holds every unit test (its fixtures included) to that: connecting a socket, resolving a name other
than localhost, starting a process or stepping an optimizer fails the test, naming the tier to move it to.
Unit tests run torch on one thread: the tiny models gain nothing from more, and on a busy machine a
multi-threaded run loses several times over to the other processes.
"""

from __future__ import annotations

import _posixsubprocess
import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tests.params import PARAMS

INTEGRATION = "tests/integration (real Redis, the app and an RQ worker in-process)"
E2E = "tests/e2e (real processes)"
SLOW = "the tier it needs, marked @pytest.mark.slow"


class NotAUnitTest(RuntimeError):
    """Raised when a unit test reaches outside its process."""


@contextlib.contextmanager
def _unit_tier_only() -> Iterator[list[str]]:
    """Refuse I/O beyond this process in the thread running the test and the threads it starts; threads that
    were already running (another tier's leftovers, in a run of every tier) are left alone."""
    refused: list[str] = []
    allowed_threads = {thread.ident for thread in threading.enumerate()} - {threading.get_ident()}

    def refuse(what: str, tier: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def refusing(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() in allowed_threads:
                return original(*args, **kwargs)
            refused.append(f"a unit test may not {what}: move it to {tier}")
            raise NotAUnitTest(refused[-1])

        return refusing

    original_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (None, "localhost") or _is_address(host):
            return original_getaddrinfo(host, *args, **kwargs)
        return refuse(f"look up {host!r} in DNS", INTEGRATION, original_getaddrinfo)(host, *args, **kwargs)

    refusals = [
        *[(socket.socket, name, "connect a socket", INTEGRATION) for name in ("connect", "connect_ex")],
        (subprocess.Popen, "_execute_child", "start a process", E2E),
        (_posixsubprocess, "fork_exec", "start a process", E2E),  # multiprocessing's way in
        *[(os, name, "start a process", E2E) for name in ("fork", "system", "posix_spawn", "posix_spawnp")],
    ]
    with pytest.MonkeyPatch.context() as patch:
        for owner, name, what, tier in refusals:
            patch.setattr(owner, name, refuse(what, tier, getattr(owner, name)))
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        with _torch_for_unit_tests(refuse("train a model", SLOW, lambda *_: None)):
            yield refused


@contextlib.contextmanager
def _torch_for_unit_tests(refusing: Callable[..., Any]) -> Iterator[None]:
    """One thread, and every optimizer step refused, where torch is loaded (test modules import it at
    collection)."""
    if "torch" not in sys.modules:
        yield
        return
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    handle = register_optimizer_step_pre_hook(refusing)
    try:
        yield
    finally:
        handle.remove()
        torch.set_num_threads(threads)


def _is_address(host: Any) -> bool:
    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host)
    except ValueError:
        return False
    return True


def _guarded() -> Iterator[Any]:
    with _unit_tier_only() as refused:
        result = yield
    if refused:  # refused, and the code under test swallowed the error
        raise NotAUnitTest(refused[0])
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[Any]:
    return (yield from _guarded())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    return (yield from _guarded())


@pytest.fixture(scope="session")
def pipeline_frames(engine: Any) -> np.ndarray:
    """What diffusers' own WanPipeline makes of PARAMS on the tiny model, none of our cache hooks on it: the
    frames our engine must match."""
    import torch

    from worker.cache import has_block_cache, install_block_cache, remove_block_cache

    transformer = engine.pipe.transformer
    hooked = has_block_cache(transformer)
    if hooked:
        remove_block_cache(transformer)
    try:
        frames: np.ndarray = engine.pipe(
            prompt=PARAMS.prompt,
            negative_prompt=PARAMS.negative_prompt,
            height=PARAMS.height,
            width=PARAMS.width,
            num_frames=PARAMS.num_frames,
            num_inference_steps=PARAMS.num_inference_steps,
            guidance_scale=PARAMS.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(PARAMS.seed),
            output_type="np",
        ).frames[0]
    finally:
        if hooked:
            install_block_cache(transformer)
    return frames


@pytest.fixture
def installed() -> Any:
    """The tiny transformer of ``tests/unit/tiny_transformer.py`` with the block cache installed (off)."""
    from tests.unit.tiny_transformer import make_transformer
    from worker.cache import install_block_cache

    model = make_transformer()
    install_block_cache(model)
    return model


@pytest.fixture(scope="module")
def reference() -> Any:
    """The same transformer with no hooks: what the cached one is compared with."""
    from tests.unit.tiny_transformer import make_transformer

    return make_transformer()
