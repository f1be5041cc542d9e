"""The API's hot path under load: a bare route, the status read, the list and create, side by side with wrk.

    .venv/bin/python bench/api_load.py [--workers 1] [--duration 10] [--repeat 2] [--write-docs]
        [--writes-per-s 20] [--redis-url redis://127.0.0.1:6379/9] [--repo TREE]

Starts a real `wanserve api` (``--workers N`` processes) against ``--redis-url`` (flushed: a database of
its own), seeds videos through the create route (no worker runs: they stay queued, which is what a
status read and a list serve most), then runs ``wrk --latency`` with 16 connections against each route
in turn, ``--repeat`` times, the routes interleaved so that noise falls on all of them alike. The status
read and the list run twice: alone, and while ``--writes-per-s`` progress writes a second land on the
polled video (each one announced, so the API's kept answers are dropped; see service/api/read_cache.py).
``WANSERVE_READ_CACHE_S=0`` in the environment measures them with no answer kept. Prints
req/s, p50, p99 and the API processes' CPU time per request, with their ratios to the bare route
(``/healthz``) of the same run; with ``--write-docs`` the table replaces the marked block of
docs/BENCHMARKS.md. ``--repo`` runs another tree's `wanserve api` (an older commit, for a before/after).
Needs ``wrk`` (Debian package ``wrk``). wrk and the API share the machine's cores: this measures the
API's cost per request relative to a bare route, not what a dedicated server would do.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis import Redis

from service.core.video_store import VideoStore

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "BENCHMARKS.md"
BEGIN = "<!-- bench/api_load.py: begin (generated; edit the script, not this table) -->"
END = "<!-- bench/api_load.py: end -->"
BODY = '{"prompt": "a red fox in the snow", "seconds": 1, "size": "64x64"}'
POST_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class Run:
    rps: float
    p50_s: float
    p99_s: float
    requests: int = 0
    cpu_per_request_s: float = 0.0
    """CPU time (user + system) the API's processes spent per request: what a request costs the API,
    whatever else competes for the cores."""


def parse_wrk(output: str) -> Run:
    """req/s, p50 and p99 from ``wrk --latency`` output; refuses a run with errors or non-2xx answers."""
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    if bad or (socket_errors and re.search(r"[1-9]", socket_errors.group(1))):
        raise RuntimeError(f"wrk saw failed requests:\n{output}")

    def latency(percent: str) -> float:
        found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no {percent}% latency in wrk output:\n{output}")
        return float(found.group(1)) * _UNIT_S[found.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    requests = re.search(r"(\d+) requests in", output)
    if rps is None or requests is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    return Run(float(rps.group(1)), latency("50"), latency("99"), int(requests.group(1)))


def wrk(url: str, args: argparse.Namespace, api_pid: int, script: Path | None = None) -> Run:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    cpu_before = cpu_seconds(api_pid)
    output = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout
    run = parse_wrk(output)
    run.cpu_per_request_s = (cpu_seconds(api_pid) - cpu_before) / max(run.requests, 1)
    return run


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (uvicorn's worker processes), from /proc."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        # After the command: state, ppid, ..., utime (14th field of the line), stime (15th).
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def start_api(args: argparse.Namespace, data: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "WANSERVE_REDIS_URL": args.redis_url,
        "WANSERVE_DATA_DIR": str(data),
        "WANSERVE_MAX_QUEUE_LENGTH": "0",  # create runs enqueue thousands; nothing serves them
        "WANSERVE_RATE_LIMIT_PER_MINUTE": "0",
    }
    command = [sys.executable, "-m", "cli.main", "api", "--port", str(args.port)]
    if args.workers > 1:
        command += ["--workers", str(args.workers)]
    log = (data / "api.log").open("wb")
    api = subprocess.Popen(command, cwd=args.repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise SystemExit(f"the API exited:\n{(data / 'api.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{args.port}/healthz", timeout=1).status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    api.kill()
    raise SystemExit("the API did not answer within 60 s")


def seed(base: str, count: int) -> list[str]:
    with httpx.Client(base_url=base, timeout=30) as http:
        ids = []
        for _ in range(count):
            response = http.post("/v1/videos", content=BODY, headers={"content-type": "application/json"})
            response.raise_for_status()
            ids.append(response.json()["id"])
    return ids


def measure(args: argparse.Namespace, data: Path) -> dict[str, list[Run]]:
    base = f"http://127.0.0.1:{args.port}"
    redis = Redis.from_url(args.redis_url)
    post_script = data / "post.lua"
    post_script.write_text(POST_SCRIPT)
    runs: dict[str, list[Run]] = {}
    api = start_api(args, data)
    try:
        for repeat in range(args.repeat):
            # Each round starts from the same state: the creates of the last round are gone.
            redis.flushdb()
            ids = seed(base, args.videos)
            polled = ids[len(ids) // 2]
            churn = f" ({args.writes_per_s:g} writes/s)"
            targets = {
                "GET /healthz (bare)": (f"{base}/healthz", None, False),
                "GET /v1/videos/{id}": (f"{base}/v1/videos/{polled}", None, False),
                "GET /v1/videos?limit=20": (f"{base}/v1/videos?limit=20", None, False),
                "GET /v1/videos/{id}" + churn: (f"{base}/v1/videos/{polled}", None, True),
                "GET /v1/videos?limit=20" + churn: (f"{base}/v1/videos?limit=20", None, True),
                "POST /v1/videos": (f"{base}/v1/videos", post_script, False),
            }
            for name, (url, script, written) in targets.items():
                with progress_writes(redis, polled, args.writes_per_s if written else 0):
                    run = wrk(url, args, api.pid, script)
                runs.setdefault(name, []).append(run)
                print(
                    f"round {repeat + 1}: {name:<26} {run.rps:8.0f} req/s  p50 {ms(run.p50_s)}  "
                    f"p99 {ms(run.p99_s)}  API CPU/request {ms(run.cpu_per_request_s, 2)}",
                    flush=True,
                )
    finally:
        api.terminate()
        api.wait(timeout=30)
        redis.flushdb()
    return runs


@contextmanager
def progress_writes(redis: Redis, video_id: str, per_s: float) -> Iterator[None]:
    """A worker's progress writes to the polled video meanwhile (each announced: the kept answers of its
    status read and of every list page are dropped)."""
    if per_s <= 0:
        yield
        return
    store = VideoStore(redis, "wanserve")
    stop = threading.Event()

    def write() -> None:
        step = 0
        while not stop.wait(1 / per_s):
            step += 1
            store.update(video_id, progress=step % 100)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


def ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f} ms"


def table(runs: dict[str, list[Run]]) -> str:
    """Medians over the rounds, the spread of req/s (min-max), ratios to the bare route's medians."""
    bare = next(iter(runs.values()))
    bare_rps = statistics.median(run.rps for run in bare)
    bare_p99 = statistics.median(run.p99_s for run in bare)
    bare_cpu = statistics.median(run.cpu_per_request_s for run in bare)
    lines = [
        "| route | req/s (median; min-max) | vs bare | p50 | p99 | p99 vs bare | API CPU/request | vs bare |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, route_runs in runs.items():
        rps = [run.rps for run in route_runs]
        p50 = statistics.median(run.p50_s for run in route_runs)
        p99 = statistics.median(run.p99_s for run in route_runs)
        cpu = statistics.median(run.cpu_per_request_s for run in route_runs)
        lines.append(
            f"| `{name}` | {statistics.median(rps):.0f} ({min(rps):.0f}-{max(rps):.0f}) "
            f"| {statistics.median(rps) / bare_rps:.2f} | {ms(p50)} | {ms(p99)} | {p99 / bare_p99:.2f} "
            f"| {ms(cpu, 2)} | {cpu / bare_cpu:.2f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), shared by wrk, the API, Redis and whatever else runs"


def write_docs(section: str) -> None:
    text = DOCS.read_text()
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## API hot path under load\n\n{block}\n"
    DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1, help="API processes (wanserve api --workers)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over all routes")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--videos", type=int, default=100, help="videos seeded before each round")
    parser.add_argument(
        "--writes-per-s", type=float, default=20, help="progress writes to the polled video (churn rows)"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--repo", type=Path, default=ROOT, help="the tree whose `wanserve api` runs")
    parser.add_argument("--write-docs", action="store_true", help="replace the table in docs/BENCHMARKS.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    data = Path(tempfile.mkdtemp(prefix="wanserve-api-load-"))
    load_before = os.getloadavg()[0]
    runs = measure(args, data)
    load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    cache = os.environ.get("WANSERVE_READ_CACHE_S")
    prefix = "" if cache is None else f"WANSERVE_READ_CACHE_S={cache} "
    repo = "" if args.repo == ROOT else f" --repo {args.repo}"
    command = (
        f"`{prefix}.venv/bin/python bench/api_load.py --workers {args.workers} --duration {args.duration} "
        f"--repeat {args.repeat}{repo}`"
    )
    section = (
        f"{command}: `wanserve api --workers {args.workers}`, wrk with {args.threads} threads and "
        f"{args.connections} connections, {args.duration} s per route, {args.repeat} rounds "
        f"(routes interleaved; {args.videos} queued videos seeded per round, no worker; in the rows marked "
        f"so, {args.writes_per_s:g} progress writes a second to the polled video, as a worker makes them). "
        f"Machine: {machine()}; {load}.\n\n{table(runs)}"
    )
    print()
    print(section)
    if args.write_docs:
        write_docs(section)
        print(f"\nwrote {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
