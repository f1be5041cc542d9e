"""Scale-out: the same batch of tiny jobs through 1, then 2 worker processes (one torch thread each).

    .venv/bin/python bench/replicas.py [--jobs 24] [--redis-url redis://127.0.0.1:6379/8]

Each run starts one `wanserve api` and N `wanserve worker` processes on a fresh Redis database, waits
until every worker is idle in the registry (model loaded), submits the whole batch at once, and waits
for every video to end. Reports jobs/s (first create to last completion), the queue wait p50/p95 (from
the workers' stage timings), and checks that every job completed exactly once (one attempt each, every
MP4 downloadable). Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import httpx
from redis import Redis

BODY = {"prompt": "a red square moving right", "size": "64x64", "seconds": 1, "num_inference_steps": 4}


@dataclass
class Run:
    workers: int
    jobs: int
    seconds: float
    queue_wait: list[float]
    attempts: list[int]
    downloaded: int

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(workers: int, jobs: int, redis_url: str, port: int) -> Run:
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    data = tempfile.mkdtemp(prefix="wanserve-replicas-")
    env = {
        **os.environ,
        "WANSERVE_REDIS_URL": redis_url,
        "WANSERVE_DATA_DIR": data,
        "WANSERVE_LOG_LEVEL": "WARNING",
        "WANSERVE_METRICS_PORT": "0",
        "WANSERVE_MODEL": "tiny-random",
        "OMP_NUM_THREADS": "1",
    }
    cli = [sys.executable, "-m", "cli.main"]
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([*cli, "api", "--port", str(port)], **quiet)]  # type: ignore[call-overload]
    procs += [subprocess.Popen([*cli, "worker"], **quiet) for _ in range(workers)]  # type: ignore[call-overload]
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    listed = http.get("/v1/workers").json()["data"]
                except (httpx.HTTPError, KeyError, ValueError):
                    listed = []
                if sum(worker["state"] == "idle" for worker in listed) == workers:
                    break
                time.sleep(0.2)
            else:
                raise SystemExit(f"{workers} workers did not become idle within 300 s")
            started = time.perf_counter()
            ids = [http.post("/v1/videos", json={**BODY, "seed": n}).json()["id"] for n in range(jobs)]
            pending = set(ids)
            views = {}
            while pending:
                for video_id in list(pending):
                    view = http.get(f"/v1/videos/{video_id}").json()
                    if view["status"] in ("completed", "failed", "cancelled"):
                        views[video_id] = view
                        pending.discard(video_id)
                time.sleep(0.05)
            seconds = time.perf_counter() - started
            downloaded = sum(
                http.get(f"/v1/videos/{video_id}/content").status_code == 200 for video_id in ids
            )
        statuses = {view["status"] for view in views.values()}
        if statuses != {"completed"}:
            raise SystemExit(f"not every job completed: {statuses}")
        records = [redis.hget(f"wanserve:video:{video_id}", "attempts") for video_id in ids]
        return Run(
            workers=workers,
            jobs=jobs,
            seconds=seconds,
            queue_wait=[view["stage_durations"]["queue_wait_s"] for view in views.values()],
            attempts=[int(raw or 0) for raw in records],
            downloaded=downloaded,
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    runs = [run(workers, args.jobs, args.redis_url, args.port) for workers in (1, 2)]
    print(
        f"{args.jobs} jobs: {BODY['size']}, 17 frames, {BODY['num_inference_steps']} steps, tiny model, CPU"
    )
    print("| workers | jobs/s | speed-up | queue wait p50 | queue wait p95 | completed once | downloaded |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for result in runs:
        print(
            f"| {result.workers} | {result.jobs_per_s:.2f} | x{result.jobs_per_s / runs[0].jobs_per_s:.2f} "
            f"| {statistics.median(result.queue_wait):.2f} s | {quantile(result.queue_wait, 0.95):.2f} s "
            f"| {sum(a == 1 for a in result.attempts)}/{result.jobs} | {result.downloaded}/{result.jobs} |"
        )


if __name__ == "__main__":
    main()
