"""bench/gpu_wan13b.py in this process: its section runner (the report rewritten and valid after every
section, a failing section recorded while the next still runs, sections past the deadline skipped) and its
sections on the tiny configs, on the CPU. The whole script, compile section included, runs as a process in
tests/e2e/test_gpu_bench_run.py. CUDA and NPU kernels cannot run here: these check the code around them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.gpu_wan13b import Deadline, Report, main, run_sections, summary
from worker import device as devices


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def on_disk(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_each_section_is_saved_a_failure_is_kept_and_late_sections_are_skipped(tmp_path: Path) -> None:
    clock = FakeClock()
    deadline = Deadline(60.0, now=clock)
    report = Report(tmp_path / "report.json", {"device": "test"})
    seen: dict[str, dict[str, Any]] = {}

    def first(bench: Any, result: dict[str, Any]) -> None:
        seen["first"] = on_disk(report.path)
        result["s_per_pass"] = 0.5

    def failing(bench: Any, result: dict[str, Any]) -> None:
        seen["failing"] = on_disk(report.path)
        result["done_before_failing"] = 1.0
        raise RuntimeError("out of memory, say")

    def slow(bench: Any, result: dict[str, Any]) -> None:
        seen["slow"] = on_disk(report.path)
        clock.now += 61.0  # runs past the deadline
        result["s"] = 61.0

    def late(bench: Any, result: dict[str, Any]) -> None:
        raise AssertionError("a section must not start after the deadline")

    sections = [("first", first), ("failing", failing), ("slow", slow), ("late", late)]
    run_sections(sections, None, report, deadline)

    # What each section found on disk: the report as it stood after the section before it.
    assert seen["first"]["sections"]["first"]["status"] == "running"
    assert seen["failing"]["sections"]["first"] == {
        "status": "ok",
        "result": {"s_per_pass": 0.5},
        "elapsed_s": seen["failing"]["sections"]["first"]["elapsed_s"],
    }
    assert seen["slow"]["sections"]["failing"]["status"] == "error"
    final = on_disk(report.path)
    failed = final["sections"]["failing"]
    assert failed["error"] == "RuntimeError: out of memory, say"
    assert failed["result"] == {"done_before_failing": 1.0}
    assert "Traceback" in failed["traceback"]
    assert final["sections"]["slow"]["status"] == "ok"
    assert final["sections"]["late"]["status"] == "skipped"
    assert "deadline of 60 s passed" in final["sections"]["late"]["reason"]
    assert final["finished"] is True
    assert not (tmp_path / "report.json.partial").exists()  # written aside, then renamed over


def test_a_deadline_already_passed_skips_every_section_and_still_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    data = main(["--tiny", "--device", "cpu", "--deadline-s", "0", "--out", str(out)])
    assert on_disk(out) == json.loads(json.dumps(data))
    assert {name: entry["status"] for name, entry in data["sections"].items()} == {
        name: "skipped" for name in ("attention", "compile", "hooks", "caches", "vae")
    }
    assert data["finished"] is True
    assert "| attention |  |  |  | skipped: deadline of 0 s passed" in summary(data)


def test_the_sections_give_numbers_on_the_tiny_configs(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    argv = ["--tiny", "--device", "cpu", "--out", str(out), "--sections", "attention,hooks,caches,vae"]
    data = main([*argv, "--repeats", "2", "--steps", "4", "--cache-passes", "6"])
    sections = data["sections"]
    assert on_disk(out)["sections"] == json.loads(json.dumps(sections))
    assert {name: entry["status"] for name, entry in sections.items()} == dict.fromkeys(sections, "ok")
    assert list(sections) == ["attention", "hooks", "caches", "vae"]

    attention = sections["attention"]["result"]
    assert attention["native"]["s_per_pass"] > 0 and attention["_native_math"]["s_per_pass"] > 0
    assert attention["best"] in ("native", "_native_math")

    hooks = sections["hooks"]["result"]
    assert all(hooks[key]["s_per_pass"] > 0 for key in ("bare", "hooks_off", "bare_again"))
    assert isinstance(hooks["overhead_pct"], float)

    per_pass = sections["caches"]["result"]["per_pass"]
    assert per_pass["dit_fast"]["config"]["method"] == "dit"  # the preset, resolved and sized
    for label in ("dit_fast", "adaptive", "easycache"):
        entry = per_pass[label]
        assert entry["passes_computed"] + entry["passes_skipped"] == 6
        assert entry["passes_skipped"] > 0 and entry["skip_pass_s"] > 0 and entry["compute_pass_s"] > 0
    totals = sections["caches"]["result"]["totals"]
    assert totals["none"]["passes"] == 8 and totals["none"]["passes_skipped"] == 0  # 4 steps, CFG
    assert totals["fast"]["passes_skipped"] > 0 and totals["easycache"]["total_s"] > 0
    assert totals["none"]["speedup"] == 1.0

    vae = sections["vae"]["result"]
    for label in ("float32", "float32_tiled", "bfloat16"):
        assert vae[label]["s"] > 0 and vae[label]["frames"] == 17 and vae[label]["size"] == "64x64"


@pytest.mark.parametrize(
    ("device", "message"),
    [("npu", "torch_npu is not installed"), ("cuda", "torch sees no CUDA device")],
)
def test_a_missing_accelerator_is_one_clear_line(device: str, message: str, tmp_path: Path) -> None:
    if devices.npu_available() if device == "npu" else torch.cuda.is_available():
        pytest.skip(f"this machine has a {device}: the bench would run")
    with pytest.raises(SystemExit, match=message):
        main(["--device", device, "--out", str(tmp_path / "x.json")])
