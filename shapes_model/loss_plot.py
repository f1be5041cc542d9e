"""The training loss curves of a recipe run as one SVG (the model card shows it).

python -m shapes_model.loss_plot OUT_DIR worker/models/wan2.1-tiny-shapes/loss.svg
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path

PANELS = (
    (
        "VAE: weighted L1 (crops; whole 1000+; outlines 1900+, faster 2500+, encoder 3100+, decoder 3300+)",
        "vae_loss.jsonl",
    ),
    (
        "transformer MSE (all levels 2400+; outlines 4800+;"
        " new latents, squares from 17 px and half the batch, frame 0 x2, 7200+)",
        "transformer_loss.jsonl",
    ),
)
WIDTH, HEIGHT, MARGIN = 380, 240, 48


def read_curve(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines()) if r]


def panel_svg(title: str, curve: list[tuple[int, float]], x0: float) -> list[str]:
    steps = [s for s, _ in curve]
    logs = [math.log10(loss) for _, loss in curve]
    low, high = math.floor(min(logs) * 4) / 4, math.ceil(max(logs) * 4) / 4
    high = max(high, low + 0.25)
    w, h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def px(step: float) -> float:
        return x0 + MARGIN + w * step / max(steps)

    def py(log_loss: float) -> float:
        return MARGIN + h * (high - log_loss) / (high - low)

    points = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in zip(steps, logs, strict=True))
    out = [
        f'<text x="{x0 + WIDTH / 2}" y="20" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
        f'<rect x="{x0 + MARGIN}" y="{MARGIN}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
        f'<polyline points="{points}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>',
        f'<text x="{x0 + WIDTH / 2}" y="{HEIGHT - 10}" text-anchor="middle" font-size="11">step</text>',
    ]
    tick = low
    while tick <= high + 1e-9:
        y = py(tick)
        out.append(
            f'<line x1="{x0 + MARGIN - 4}" y1="{y:.1f}" x2="{x0 + MARGIN}" y2="{y:.1f}" stroke="#999"/>'
        )
        out.append(f'<text x="{x0 + MARGIN - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">'
                   f"{10**tick:.3g}</text>")  # fmt: skip
        tick += 0.25
    for step in (0, max(steps) // 2, max(steps)):
        out.append(f'<text x="{px(step):.1f}" y="{MARGIN + h + 14}" text-anchor="middle" font-size="10">'
                   f"{step}</text>")  # fmt: skip
    return out


def loss_svg(run_dir: Path) -> str:
    parts: list[str] = []
    for index, (title, name) in enumerate(PANELS):
        parts += panel_svg(title, read_curve(run_dir / name), index * WIDTH)
    body = "\n".join(parts)
    size = f'width="{WIDTH * len(PANELS)}" height="{HEIGHT}"'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" {size} font-family="sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("svg", type=Path)
    args = parser.parse_args()
    args.svg.write_text(loss_svg(args.run_dir))


if __name__ == "__main__":
    main()
