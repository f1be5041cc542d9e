"""Wan2.1-T2V-1.3B on one GPU with random weights (no download): steps/s and peak memory, eager and compiled.

    python bench/gpu_wan13b.py                 # on a CUDA machine: 832x480, 81 frames, bf16
    python bench/gpu_wan13b.py --tiny --device cpu   # the same code path on a tiny config (a smoke test)

The full-size transformer config of Wan2.1-T2V-1.3B (30 layers, 12 heads x 128, ffn 8960, text_dim 4096,
freq_dim 256; from diffusers' convert_wan_to_diffusers.py) with random bf16 weights, fed random latents
(1, 16, 21, 60, 104) and random text embeddings (1, 512, 4096). One denoising step with CFG is two
transformer passes. Also times the Wan VAE (default config) decoding the 21 latent frames to 81 frames.
Prints a JSON report, and writes it to $OUT/gpu_wan13b.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.tiny_model import TRANSFORMER_CONFIG, VAE_CONFIG

WAN_13B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_passes(model: Any, inputs: dict[str, torch.Tensor], device: torch.device, repeats: int) -> float:
    """Median seconds of one transformer pass over ``repeats`` timed passes."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        model(**inputs, return_dict=False)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


@torch.inference_mode()
def main() -> None:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-vae", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = TRANSFORMER_CONFIG if args.tiny else WAN_13B
    latent_shape = (1, 16, 5, 8, 8) if args.tiny else (1, 16, 21, 60, 104)  # 81 frames of 832x480
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "dtype": str(dtype),
        "config": "tiny" if args.tiny else "wan2.1-t2v-1.3b",
        "latents": latent_shape,
    }

    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**config).to(dtype).eval()
    report["params"] = sum(p.numel() for p in transformer.parameters())
    inputs = {
        "hidden_states": torch.randn(latent_shape, device=device, dtype=dtype),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": torch.randn(1, 512, config["text_dim"], device=device, dtype=dtype),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    transformer(**inputs, return_dict=False)  # warm-up
    eager = time_passes(transformer, inputs, device, args.repeats)
    report["eager"] = {"s_per_pass": eager, "steps_per_s_cfg": 1 / (2 * eager), "peak_mb": peak_mb(device)}
    print(json.dumps(report["eager"]), flush=True)

    if not args.no_compile:
        compiled = torch.compile(transformer)
        started = time.perf_counter()
        compiled(**inputs, return_dict=False)
        synchronize(device)
        compile_s = time.perf_counter() - started
        fast = time_passes(compiled, inputs, device, args.repeats)
        report["compiled"] = {"s_per_pass": fast, "steps_per_s_cfg": 1 / (2 * fast), "compile_s": compile_s,
                              "peak_mb": peak_mb(device), "speedup": eager / fast}  # fmt: skip
        print(json.dumps(report["compiled"]), flush=True)

    if not args.no_vae:
        del transformer
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        vae_config = VAE_CONFIG if args.tiny else {}
        with torch.device(device):
            vae = AutoencoderKLWan(**vae_config).float().eval()
        latents = torch.randn(latent_shape, device=device, dtype=torch.float32)
        synchronize(device)
        started = time.perf_counter()
        video = vae.decode(latents, return_dict=False)[0]
        synchronize(device)
        report["vae_decode"] = {"s": time.perf_counter() - started, "frames": video.shape[2],
                                "peak_mb": peak_mb(device)}  # fmt: skip
        print(json.dumps(report["vae_decode"]), flush=True)

    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "gpu_wan13b.json").write_text(text)


if __name__ == "__main__":
    main()
