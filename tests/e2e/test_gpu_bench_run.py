"""``bench/gpu_wan13b.py --tiny`` as a user runs it: a process, every section on the CPU, the compile section
(inductor) included; the JSON report valid and each section's numbers (or its recorded error) in it. The GPU
and NPU runs themselves cannot run here (docs/BENCHMARKS.md, "Accelerators (issue 17)")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # torch.compile of the tiny blocks: 10-30 s on a shared CPU


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "bench" / "gpu_wan13b.py"), "--tiny", "--device", "cpu", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_tiny_runs_every_section_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    done = run_bench("--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == ["attention", "compile", "hooks", "caches", "vae"]
    for name, entry in sections.items():
        assert entry["status"] in ("ok", "error"), (name, entry)
        assert entry["status"] == "ok" or entry["error"], (name, entry)
    assert report["finished"] is True and report["meta"]["config"] == "tiny"

    compiled = sections["compile"]["result"]
    assert compiled["eager"]["s_per_pass"] > 0
    assert compiled["compiled"]["compile_s"] > 0 and compiled["compiled"]["s_per_pass"] > 0
    assert compiled["speedup"] > 0
    assert sections["attention"]["result"]["native"]["s_per_pass"] > 0
    assert sections["hooks"]["result"]["hooks_off"]["s_per_pass"] > 0
    assert sections["caches"]["result"]["totals"]["none"]["passes"] == 20  # 10 steps, CFG
    assert sections["vae"]["result"]["float32_tiled"]["s"] > 0
    # The summary table, one row per measurement.
    assert "| compile | compiled blocks s/pass |" in done.stdout
    assert "| vae | decode bfloat16 |" in done.stdout


def test_a_tiny_deadline_skips_what_is_left_and_leaves_valid_json(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    done = run_bench("--out", str(out), "--deadline-s", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {entry["status"] for entry in report["sections"].values()} == {"skipped"}
    assert report["finished"] is True
