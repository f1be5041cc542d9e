"""Nothing lost under load and faults: many tiny jobs, two workers, one killed at random and restarted.

    .venv/bin/python bench/load_faults.py [--jobs 500] [--kills 5] [--redis-url redis://127.0.0.1:6379/14]

Submits every job concurrently (32 client threads) to a real `wanserve api`, while two real
`wanserve worker` processes serve them. Every few seconds one worker, chosen at random, gets SIGKILL
and a new one starts. Workers beat every ~0.75 s with a 3 s heartbeat TTL and look for abandoned jobs
every second, so a killed worker's job is back on the queue within ~4 s. Reports jobs submitted,
completed, failed, lost (never completed) and duplicated (completed by more than one worker run).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from redis import Redis

JOB = {"prompt": "a fox", "size": "32x32", "seconds": 1, "num_inference_steps": 1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()

    Redis.from_url(args.redis_url).flushdb()
    data = Path(tempfile.mkdtemp(prefix="wanserve-load-"))
    env = {
        **os.environ,
        "WANSERVE_REDIS_URL": args.redis_url,
        "WANSERVE_DATA_DIR": str(data),
        "WANSERVE_HEARTBEAT_TTL_S": "3",
        "WANSERVE_REAP_INTERVAL_S": "1",
        "WANSERVE_MAX_QUEUE_LENGTH": "0",
        "WANSERVE_JOB_RETRIES": "5",
    }
    cli = [sys.executable, "-m", "cli.main"]
    logs: list[Path] = []

    def start(*command: str) -> subprocess.Popen[bytes]:
        log = data / f"{command[0]}-{len(logs)}.log"
        logs.append(log)
        return subprocess.Popen([*cli, *command], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    api = start("api", "--port", str(args.port))
    workers = [start("worker"), start("worker")]
    base = f"http://127.0.0.1:{args.port}"
    redis = Redis.from_url(args.redis_url)
    while not redis.exists("wanserve:models"):
        time.sleep(0.2)
    time.sleep(5)  # let both workers load

    started = time.perf_counter()
    with httpx.Client(base_url=base, timeout=60) as http, ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(lambda _: http.post("/v1/videos", json=JOB).json()["id"], range(args.jobs)))
    print(f"submitted {len(ids)} jobs in {time.perf_counter() - started:.1f} s")

    kills = 0
    deadline = time.monotonic() + 30 * 60
    with httpx.Client(base_url=base, timeout=60) as http:
        while time.monotonic() < deadline:
            statuses = collections.Counter(
                http.get(f"/v1/videos/{video_id}").json()["status"] for video_id in ids
            )
            if statuses["queued"] + statuses["in_progress"] == 0:
                break
            if kills < args.kills and statuses["completed"] > (kills + 1) * args.jobs // (args.kills + 2):
                victim = random.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                kills += 1
                print(f"killed worker {victim} at {statuses['completed']} completed; starting a new one")
                workers[victim] = start("worker")
            time.sleep(1)
    elapsed = time.perf_counter() - started

    completions = collections.Counter(
        match for log in logs for match in re.findall(r"(video_[0-9a-f]{32}) completed in", log.read_text())
    )
    with httpx.Client(base_url=base, timeout=60) as http:
        final = {video_id: http.get(f"/v1/videos/{video_id}").json()["status"] for video_id in ids}
    for process in [api, *workers]:
        process.terminate()
        process.wait(timeout=60)
    counts = collections.Counter(final.values())
    lost = [v for v, status in final.items() if status != "completed"]
    duplicated = [v for v, n in completions.items() if n > 1]
    restarted = sum(1 for v in ids if int(redis.hget(f"wanserve:video:{v}", "attempts") or 0) > 1)
    print(f"jobs submitted {len(ids)}, completed {counts['completed']}, failed {counts['failed']}, "
          f"lost {len(lost)}, duplicated outputs {len(duplicated)}")  # fmt: skip
    print(f"workers killed {kills}; jobs started more than once {restarted}; wall time {elapsed:.1f} s")


if __name__ == "__main__":
    main()
