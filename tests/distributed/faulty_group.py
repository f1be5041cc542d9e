"""`python -m worker.group` with failures injected by prompt, for the failure tests.

- "fail on rank N ..." raises inside the transformer's first block on rank N at its third call,
  while the other ranks are inside a collective (what an out-of-memory error looks like).
- "fail everywhere ..." raises the same error on every rank before any collective.
- "fail progress ..." makes the leader's progress write for step 2 fail as a lost Redis connection does.
- "fail decode ..." runs out of memory in the leader's VAE decode, after the group's last collective.
"""

import os
from typing import Any

import torch
from redis.exceptions import ConnectionError as RedisConnectionError

from worker import engine as engine_module
from worker import group, video_job

SECRET = "/srv/secret/wan-weights/vae.safetensors"
"""Text that must reach the worker's log but never the client."""

_denoise = engine_module.WanEngine.denoise
_decode = engine_module.WanEngine._decode
_progress = video_job.VideoJobRunner._progress
_prompt = ""


def denoise(self: Any, params: Any, hooks: Any = engine_module.NO_HOOKS) -> Any:
    global _prompt
    _prompt = params.prompt
    rank = int(os.environ["RANK"])
    if params.prompt.startswith("fail everywhere"):
        raise ValueError("injected failure on every rank")
    if params.prompt.startswith(f"fail on rank {rank}"):
        calls = 0

        def fail_on_third_call(*_: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError(f"injected failure on rank {rank}")

        handle = self.pipe.transformer.blocks[0].register_forward_pre_hook(fail_on_third_call)
        try:
            return _denoise(self, params, hooks)
        finally:
            handle.remove()
    return _denoise(self, params, hooks)


def decode(self: Any, latents: Any) -> Any:
    if _prompt.startswith("fail decode"):
        raise torch.OutOfMemoryError(f"injected: out of memory decoding with {SECRET}")
    return _decode(self, latents)


def progress(self: Any, video_id: str, value: int) -> None:
    _progress(self, video_id, value)
    params = self.store.get(video_id)["params"]
    at_step_2 = value == video_job.denoise_progress(2, params["num_inference_steps"])
    if params["prompt"].startswith("fail progress") and at_step_2:
        raise RedisConnectionError(f"injected: lost the connection to Redis at {SECRET}")


engine_module.WanEngine.denoise = denoise  # type: ignore[method-assign]
engine_module.WanEngine._decode = decode  # type: ignore[method-assign]
video_job.VideoJobRunner._progress = progress  # type: ignore[method-assign]
group.main()
