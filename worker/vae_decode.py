"""How latents become frames: one decode, diffusers' tiled decode, or the tiles split over a worker group.

Wan's VAE is causal in time: it decodes one latent frame after another, each causal convolution
carrying the previous chunk's last frames in a feature cache. A video cannot be cut into time chunks
decoded apart: a chunk started without its predecessor's cache would decode differently (its first frame
as if it began the video). Spatial tiles are independent: diffusers' tiled decode runs each tile through
every frame with a fresh cache, then blends each tile into its upper and left neighbours over their
overlap. The split decode hands each rank every n-th tile, gathers the decoded tiles on the leader and
blends them with the VAE's own ``blend_v``/``blend_h`` in diffusers' order, in place as diffusers does:
the same numbers as the single-rank tiled decode.

A split decode fails as one: every rank reports how its tiles went (over the device group, before any
tile moves) and, if one failed, every rank raises ``VaeDecodeFailed`` with the same message, so the group
stays in step and the failure is the job's alone. Only a lost rank (a collective that fails) is the
group's failure (``GroupFailed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from worker.errors import GroupFailed
from worker.parallel import ParallelRuntime

VaeTiling = Literal["off", "on", "auto"]
VAE_TILING_MODES: tuple[str, ...] = ("off", "on", "auto")

AUTO_TILING_ABOVE_PIXELS = 832 * 480
"""``auto`` tiles frames larger than 480p (832x480): 720p frames hold 2.3 times the pixels and their
untiled fp32 decode peaks at several times a 480p one, while tiling a 480p frame with diffusers' tiles
(256 px every 192) decodes 1.66 times its area for a memory it rarely lacks."""

_OK, _FAILED, _OUT_OF_MEMORY, _WRONG_SHAPE = 0, 1, 2, 3
_FAILURES = {
    _FAILED: "failed",
    _OUT_OF_MEMORY: "ran out of memory",
    _WRONG_SHAPE: "gave tiles of a wrong shape",
}


class VaeDecodeFailed(RuntimeError):
    """A rank failed to decode its tiles of a split decode; every rank raises it with the same message."""


@dataclass(frozen=True)
class TileSize:
    """diffusers' tile parameters, in pixels (``AutoencoderKLWan``'s defaults: 256-pixel tiles every
    192 pixels, so neighbours overlap and blend over 64 pixels)."""

    min_height: int = 256
    min_width: int = 256
    stride_height: int = 192
    stride_width: int = 192


def wants_tiling(mode: str, height: int, width: int) -> bool:
    """Whether a frame of ``height`` x ``width`` pixels is decoded in tiles."""
    if mode == "auto":
        return height * width > AUTO_TILING_ABOVE_PIXELS
    return mode == "on"


def denormalize(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The transformer's normalised latents in the VAE's own scale (as ``WanPipeline`` does)."""
    latents = latents.to(vae.device, dtype=vae.dtype)
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(latents)
    return latents / inv_std + mean


class VideoDecoder:
    """Latents to video, decoded whole, in tiles, or in tiles split over the ranks of a group.

    Args:
        vae: the ``AutoencoderKLWan``.
        tiling: ``off``, ``on`` or ``auto`` (tiles above :data:`AUTO_TILING_ABOVE_PIXELS`).
        tile: the tile size handed to ``vae.enable_tiling``.
        parallel: this rank's group, for a split decode.
        split: split tiled decodes over the group's ranks (every rank must then call :meth:`decode`).
    """

    def __init__(
        self,
        vae: Any,
        *,
        tiling: str = "off",
        tile: TileSize = TileSize(),
        parallel: ParallelRuntime | None = None,
        split: bool = False,
    ) -> None:
        if tiling not in VAE_TILING_MODES:
            raise ValueError(f"VAE tiling must be one of {', '.join(VAE_TILING_MODES)}, not {tiling!r}")
        self.vae = vae
        self.tiling = tiling
        self.parallel = parallel if parallel is not None and parallel.layout.ranks > 1 else None
        self.split = split and self.parallel is not None
        if tiling != "off":
            vae.enable_tiling(
                tile_sample_min_height=tile.min_height,
                tile_sample_min_width=tile.min_width,
                tile_sample_stride_height=tile.stride_height,
                tile_sample_stride_width=tile.stride_width,
            )

    @property
    def together(self) -> bool:
        """Whether every rank of the group calls :meth:`decode` (its tiled decodes are split)."""
        return self.split

    def tiled(self, latents: torch.Tensor) -> bool:
        ratio = self.vae.spatial_compression_ratio
        return wants_tiling(self.tiling, latents.shape[-2] * ratio, latents.shape[-1] * ratio)

    def decode(self, latents: torch.Tensor) -> torch.Tensor | None:
        """The video in [-1, 1], shape (batch, channels, frames, height, width); None on a follower
        (a split decode's result is the leader's; an unsplit decode is the leader's alone)."""
        tiled = self.tiled(latents)
        if self.parallel is not None and not self.parallel.is_leader and not (self.split and tiled):
            return None
        z = denormalize(self.vae, latents)
        if self.split and tiled:
            assert self.parallel is not None
            return split_tiled_decode(self.vae, z, self.parallel)
        if tiled:
            self.vae.enable_tiling()  # keeps the sizes set at construction
        else:
            self.vae.disable_tiling()
        video: torch.Tensor = self.vae.decode(z, return_dict=False)[0]
        return video


@dataclass(frozen=True)
class TileGrid:
    """diffusers' ``tiled_decode`` arithmetic for one latent size: where tiles start (latent pixels), how
    large they are, and how the decoded tiles are cropped and blended (sample pixels)."""

    tops: list[int]
    lefts: list[int]
    latent_height: int
    latent_width: int
    stride_height: int
    stride_width: int
    blend_height: int
    blend_width: int
    sample_height: int
    sample_width: int

    @classmethod
    def of(cls, vae: Any, height: int, width: int) -> TileGrid:
        ratio = vae.spatial_compression_ratio
        patch = vae.config.patch_size or 1
        stride_height = vae.tile_sample_stride_height // patch
        stride_width = vae.tile_sample_stride_width // patch
        return cls(
            tops=list(range(0, height, vae.tile_sample_stride_height // ratio)),
            lefts=list(range(0, width, vae.tile_sample_stride_width // ratio)),
            latent_height=vae.tile_sample_min_height // ratio,
            latent_width=vae.tile_sample_min_width // ratio,
            stride_height=stride_height,
            stride_width=stride_width,
            blend_height=vae.tile_sample_min_height // patch - stride_height,
            blend_width=vae.tile_sample_min_width // patch - stride_width,
            sample_height=height * ratio // patch,
            sample_width=width * ratio // patch,
        )

    @property
    def positions(self) -> list[tuple[int, int]]:
        """Tiles in row-major order, the order of the decode's rows and columns."""
        return [(top, left) for top in self.tops for left in self.lefts]

    def decoded_shape(self, vae: Any, z_shape: torch.Size, top: int, left: int) -> tuple[int, ...]:
        """The shape of one decoded tile: every latent frame after the first gives ``2**(temporal
        upsamplings)`` frames; the decoder's output is still patchified (Wan2.2's VAE)."""
        batch, _, frames, height, width = z_shape
        ratio = vae.spatial_compression_ratio
        patch = vae.config.patch_size or 1
        rows = min(self.latent_height, height - top)
        cols = min(self.latent_width, width - left)
        upsample = 2 ** sum(bool(step) for step in vae.temperal_upsample)
        return (
            batch,
            vae.config.out_channels * patch * patch,
            1 + (frames - 1) * upsample,
            rows * ratio // patch,
            cols * ratio // patch,
        )


def decode_tile(vae: Any, z: torch.Tensor, grid: TileGrid, top: int, left: int) -> torch.Tensor:
    """One tile through every latent frame with a fresh feature cache: diffusers' inner loop."""
    vae.clear_cache()
    chunks = []
    for k in range(z.shape[2]):
        vae._conv_idx = [0]
        tile = z[:, :, k : k + 1, top : top + grid.latent_height, left : left + grid.latent_width]
        tile = vae.post_quant_conv(tile)
        chunks.append(vae.decoder(tile, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=k == 0))
    vae.clear_cache()
    return torch.cat(chunks, dim=2)


def blend_tiles(vae: Any, rows: list[list[torch.Tensor]], grid: TileGrid) -> torch.Tensor:
    """Decoded tiles (row-major) to one video, as diffusers blends them: each tile, in place, into its
    upper neighbour (already blended) and then its left one, cropped to the stride."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    result_rows = []
    for i, row in enumerate(rows):
        result_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = vae.blend_v(rows[i - 1][j], tile, grid.blend_height)
            if j > 0:
                tile = vae.blend_h(row[j - 1], tile, grid.blend_width)
            result_row.append(tile[:, :, :, : grid.stride_height, : grid.stride_width])
        result_rows.append(torch.cat(result_row, dim=-1))
    video = torch.cat(result_rows, dim=3)[:, :, :, : grid.sample_height, : grid.sample_width]
    if vae.config.patch_size is not None:
        video = unpatchify(video, patch_size=vae.config.patch_size)
    return torch.clamp(video, min=-1.0, max=1.0)


@torch.inference_mode()
def split_tiled_decode(vae: Any, z: torch.Tensor, parallel: ParallelRuntime) -> torch.Tensor | None:
    """diffusers' tiled decode of ``z`` (already denormalised) with tile ``t`` decoded on rank
    ``t % ranks``; every rank calls it; the video on the leader, None elsewhere.

    Raises:
        VaeDecodeFailed: on every rank, when any rank failed to decode its tiles.
        GroupFailed: a collective failed (a rank is gone or stuck): the group is in doubt.
    """
    ranks, rank = parallel.layout.ranks, parallel.rank
    grid = TileGrid.of(vae, z.shape[-2], z.shape[-1])
    positions = grid.positions
    shapes = [[grid.decoded_shape(vae, z.shape, *at) for at in positions[r::ranks]] for r in range(ranks)]
    tiles: list[torch.Tensor] = []
    error: Exception | None = None
    code = _OK
    try:
        tiles = [decode_tile(vae, z, grid, *at) for at in positions[rank::ranks]]
        if [tuple(tile.shape) for tile in tiles] != shapes[rank]:
            code = _WRONG_SHAPE
    except Exception as exc:  # out of memory, most likely: the job's failure, decided by all together
        error, tiles = exc, []
        out_of_memory = isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(exc)
        code = _OUT_OF_MEMORY if out_of_memory else _FAILED
    try:
        codes = parallel.device_gather_codes(code)
        if any(codes):
            failed = "; ".join(f"rank {r} {_FAILURES[c]}" for r, c in enumerate(codes) if c)
            raise VaeDecodeFailed(f"The split VAE decode failed: {failed}.") from error
        gathered = parallel.gather_tensors_to_leader(tiles, shapes, dtype=z.dtype)
    except VaeDecodeFailed:
        raise
    except Exception as exc:
        raise GroupFailed(f"The worker group lost a rank during the split VAE decode: {exc}") from exc
    if gathered is None:
        return None
    decoded = [gathered[t % ranks][t // ranks] for t in range(len(positions))]
    width = len(grid.lefts)
    rows = [decoded[i * width : (i + 1) * width] for i in range(len(grid.tops))]
    return blend_tiles(vae, rows, grid)
