"""The whole recipe: train the VAE, encode the clips, train the transformer, then the VAE's late phases,
encode the clips again (squares drawn larger) and train the transformer's last phase, then the decoder's
last phase (``FINAL_DECODER_PHASES``); write a diffusers folder.

    python -m shapes_model.recipe --out /tmp/shapes  # 100 min on the fastest CPU seen, 3.4 h on AVX2 alone
    cp -r /tmp/shapes/model/* worker/models/wan2.1-tiny-shapes/  # ship it

Seeded throughout: the same code, seed, numpy and torch versions, thread count and CPU kernels (torch's
``get_cpu_capability``, recorded in recipe.json) give the same weights (`tests/unit/test_shapes_data.py` pins
the pixels drawn; other kernels round differently, and training amplifies that).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from service.core.model_profile import PROFILE_FILE, SHAPES_PROFILE
from shapes_model import train_dit, train_vae
from shapes_model.data import LARGE_SQUARE_RADII, RADII
from shapes_model.model import build_scheduler, build_text_encoder, build_tokenizer, build_transformer
from shapes_model.training import DEFAULT_SEED


def assemble(vae: Any, transformer: Any, seed: int) -> Any:
    from diffusers import WanPipeline

    return WanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=build_text_encoder(seed + 2),
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=build_scheduler(),
    )


def save_model(pipe: Any, folder: Path) -> None:
    """The diffusers folder, with our profile; the tokenizer is recorded under the class name every
    transformers version knows (5.x would write its internal ``TokenizersBackend``)."""
    pipe.save_pretrained(folder, safe_serialization=True)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    config_path = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    (folder / PROFILE_FILE).write_text(json.dumps(SHAPES_PROFILE.to_json(), indent=2) + "\n")


LATE_VAE_PHASES = 2
"""The VAE's last phases (the encoder trained again, so new latents, then the decoder alone) run after
every transformer phase but the last, which then trains on the new latents (see ``vae_phases_needed``)."""

FINAL_DECODER_PHASES = 1
"""The VAE's last phases train the decoder alone after the transformer's last phase: they change no
latent, so the transformer need not train again."""


def vae_phases_needed(vae_phases: int, transformer_phases: int, late_vae_phases: int) -> list[int]:
    """How many of the VAE's phases have trained before each transformer phase, whose latents it encodes."""
    early = vae_phases - late_vae_phases
    if not late_vae_phases:
        return [vae_phases] * transformer_phases
    return [early] * (transformer_phases - 1) + [vae_phases]


def encode_sets(
    out: Path,
    seed: int,
    clips_per_combination: int,
    long_clips_per_combination: int,
    square_radii: tuple[float, float],
) -> tuple[Any, list[train_dit.ClipSet]]:
    """OUT/vae, with the latents' mean and std in its config, and the training clips it encodes."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(out / "vae").eval()
    sets = [
        train_dit.make_dataset(
            vae, clips_per_combination, seed + 3, SHAPES_PROFILE.default_frames, square_radii
        ),
        train_dit.make_dataset(
            vae, long_clips_per_combination, seed + 4, SHAPES_PROFILE.max_frames, square_radii
        ),
    ]
    mean, std = train_dit.normalise(sets)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return vae, sets


def run(
    out: Path,
    seed: int = DEFAULT_SEED,
    vae_phases: tuple[train_vae.Phase, ...] = train_vae.PHASES,
    transformer_phases: tuple[train_dit.Phase, ...] = train_dit.PHASES,
    clips_per_combination: int = 16,
    long_clips_per_combination: int = 8,
    skip_vae: bool = False,
    first_transformer_phase: int = 0,
    late_vae_phases: int = LATE_VAE_PHASES,
    final_decoder_phases: int = FINAL_DECODER_PHASES,
) -> None:
    """Train into OUT. ``skip_vae``: OUT/vae already holds the VAE that ``first_transformer_phase`` trains
    on; later VAE phases still run when a later transformer phase needs them."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    times: dict[str, float] = {}
    before_transformer = len(vae_phases) - final_decoder_phases
    if not all(phase.decoder_only for phase in vae_phases[before_transformer:]):
        raise ValueError("the VAE's phases after the transformer's must train the decoder alone")
    needed = vae_phases_needed(before_transformer, len(transformer_phases), late_vae_phases)
    vae_done = needed[first_transformer_phase] if skip_vae else 0
    pipe: Any = None
    sets: list[train_dit.ClipSet] = []

    def checkpoint(transformer: Any) -> None:
        transformer.save_pretrained(out / "model" / "transformer")

    offset = sum(phase.steps for phase in transformer_phases[:first_transformer_phase])
    for index in range(first_transformer_phase, len(transformer_phases)):
        if vae_done < needed[index]:
            mark = time.perf_counter()
            train_vae.train(out, vae_phases[: needed[index]], seed=seed, first_phase=vae_done)
            times[f"vae_phases_{vae_done + 1}_to_{needed[index]}_s"] = time.perf_counter() - mark
            vae_done, sets = needed[index], []
        if not sets:
            mark = time.perf_counter()
            late = needed[index] == before_transformer and late_vae_phases > 0
            radii = LARGE_SQUARE_RADII if late else RADII
            vae, sets = encode_sets(out, seed, clips_per_combination, long_clips_per_combination, radii)
            took = times[f"encode_clips_before_transformer_phase_{index + 1}_s"] = time.perf_counter() - mark
            print(f"encoded {sum(len(s.clips) for s in sets)} clips in {took:.0f}s", flush=True)
            if pipe is None:
                pipe = assemble(vae, build_transformer(seed), seed)
                if index == 0:
                    save_model(pipe, out / "model")  # complete now; checkpoints replace its transformer
                else:
                    pipe.transformer = WanTransformer3DModel.from_pretrained(out / "model" / "transformer")
            else:
                pipe.vae = vae
        phase = transformer_phases[index]
        mark = time.perf_counter()
        pipe.transformer = train_dit.train(
            pipe, sets, out, phase, train_dit.phase_seed(seed, index),
            initial=None if index == 0 else pipe.transformer, offset=offset, checkpoint=checkpoint,
        )  # fmt: skip
        times[f"transformer_phase_{index + 1}_s"] = time.perf_counter() - mark
        offset += phase.steps
        save_model(pipe, out / "model")
    if final_decoder_phases:
        mark = time.perf_counter()
        vae = train_vae.train(out, vae_phases, seed=seed, first_phase=before_transformer)
        latents = {key: pipe.vae.config[key] for key in ("latents_mean", "latents_std")}
        vae.register_to_config(**latents)
        pipe.vae = vae
        save_model(pipe, out / "model")
        times[f"vae_phases_{before_transformer + 1}_to_{len(vae_phases)}_s"] = time.perf_counter() - mark
    recipe = {
        "seed": seed,
        "vae_phases": [dataclasses.asdict(phase) for phase in vae_phases],
        "transformer_phases": [dataclasses.asdict(phase) for phase in transformer_phases],
        "vae_phases_before_each_transformer_phase": needed,
        "vae_phases_after_the_transformer": final_decoder_phases,
        "square_radii": {"early": RADII, "late": LARGE_SQUARE_RADII},
        "clips": {f"{s.frames}_frames": len(s.clips) for s in sets},
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(json.dumps(recipe), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--clips-per-combination", type=int, default=16)
    parser.add_argument("--long-clips-per-combination", type=int, default=8, help="clips of the longest")
    parser.add_argument(
        "--skip-vae", action="store_true", help="OUT/vae holds the VAE the first transformer phase trains on"
    )
    parser.add_argument(
        "--first-transformer-phase", type=int, default=0, help="resume from OUT/model/transformer at it"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run(
        args.out,
        args.seed,
        train_vae.PHASES,
        train_dit.PHASES,
        args.clips_per_combination,
        args.long_clips_per_combination,
        args.skip_vae,
        args.first_transformer_phase,
    )


if __name__ == "__main__":
    main()
