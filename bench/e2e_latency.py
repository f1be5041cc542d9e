"""End-to-end latency of a tiny job through real `wanserve api` + `wanserve worker` processes.

    .venv/bin/python bench/e2e_latency.py [--jobs 10] [--redis-url redis://127.0.0.1:6379/14]

Waits for the worker to load its model, then submits jobs one at a time (64x64, 17 frames, 4 steps)
and reports, per job, create → completed as seen by a client polling every 10 ms, and the worker's
own stage durations. Also times `import service.api.app` in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
from redis import Redis


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    Redis.from_url(args.redis_url).flushdb()
    data = tempfile.mkdtemp(prefix="wanserve-bench-")
    env = {
        **os.environ,
        "WANSERVE_REDIS_URL": args.redis_url,
        "WANSERVE_DATA_DIR": data,
        "WANSERVE_LOG_LEVEL": "WARNING",
    }
    cli = [sys.executable, "-m", "cli.main"]
    procs = [
        subprocess.Popen(
            [*cli, "api", "--port", str(args.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen([*cli, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    base = f"http://127.0.0.1:{args.port}"
    try:
        redis = Redis.from_url(args.redis_url)
        deadline = time.monotonic() + 120
        while not redis.exists("wanserve:models") and time.monotonic() < deadline:
            time.sleep(0.1)
        latencies, stages = [], []
        with httpx.Client(base_url=base) as http:
            for _ in range(args.jobs):
                started = time.perf_counter()
                body = {"prompt": "a red fox", "size": "64x64", "seconds": 1, "num_inference_steps": 4}
                video_id = http.post("/v1/videos", json=body).json()["id"]
                while (view := http.get(f"/v1/videos/{video_id}").json())["status"] not in (
                    "completed",
                    "failed",
                ):
                    time.sleep(0.01)
                latencies.append(time.perf_counter() - started)
                stages.append(view["stage_durations"])
        print(f"jobs: {args.jobs}, 64x64, 17 frames, 4 steps, CFG on, tiny model, CPU")
        print(
            f"end to end (client POST -> completed seen): median {statistics.median(latencies):.3f} s, "
            f"min {min(latencies):.3f} s, max {max(latencies):.3f} s"
        )
        for key in stages[0]:
            print(f"  {key:14s} median {statistics.median(s[key] for s in stages):.4f} s")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)

    imports = []
    for _ in range(3):
        code = "import time; t = time.perf_counter(); import service.api.app; print(time.perf_counter() - t)"
        imports.append(
            float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
        )
    print(f"import service.api.app (fresh interpreter): median {statistics.median(imports):.3f} s")


if __name__ == "__main__":
    main()
