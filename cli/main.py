"""The ``wanserve`` command: dev, api, worker, generate. Torch is imported only by worker and generate."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from service.core.settings import Settings

log = logging.getLogger("wanserve")


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("WANSERVE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanserve", description="Text-to-video serving for Wan2.1.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev", help="API + one worker (+ embedded Redis if WANSERVE_REDIS_URL is unset)"
    )
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(run=_dev)

    api = commands.add_parser("api", help="the HTTP API against WANSERVE_REDIS_URL")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(run=_api)

    worker = commands.add_parser("worker", help="a GPU/NPU/CPU worker taking jobs from WANSERVE_REDIS_URL")
    worker.add_argument(
        "--burst", action="store_true", help="exit when the queue is empty (one process only)"
    )
    worker.add_argument("--nproc", type=int, default=1, help="ranks in the group, launched with torchrun")
    worker.add_argument("--ulysses", type=int, default=1, help="Ulysses sequence-parallel degree")
    worker.add_argument("--cfg", type=int, default=1, choices=(1, 2), help="2: CFG passes on different ranks")
    worker.set_defaults(run=_worker)

    generate = commands.add_parser("generate", help="generate one video in this process, no server")
    generate.add_argument("prompt")
    generate.add_argument("-o", "--output", type=Path, default=Path("out.mp4"))
    generate.add_argument("--size")
    generate.add_argument("--seconds", type=int)
    generate.add_argument("--num-frames", type=int)
    generate.add_argument("--fps", type=int)
    generate.add_argument("--steps", type=int, dest="num_inference_steps")
    generate.add_argument("--guidance-scale", type=float)
    generate.add_argument("--negative-prompt")
    generate.add_argument("--seed", type=int)
    generate.set_defaults(run=_generate)
    return parser


def _api(args: argparse.Namespace) -> None:
    import uvicorn

    from service.api.app import create_app
    from service.api.server import guarded_protocol

    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="info",
        http=guarded_protocol(settings.header_timeout_s),
    )


def _worker(args: argparse.Namespace) -> None:
    from worker.parallel import ParallelLayout

    try:
        layout = ParallelLayout(args.nproc, args.ulysses, args.cfg)
    except ValueError as exc:
        raise SystemExit(f"wanserve worker: {exc}") from None
    if layout.ranks == 1:
        from worker.serve import run_worker

        run_worker(Settings(), burst=args.burst)
        return
    from worker.launcher import GroupLauncher

    sys.exit(GroupLauncher(Settings(), layout).run())


def _dev(args: argparse.Namespace) -> None:
    settings = Settings()
    embedded = None
    if not settings.redis_url:
        from cli.embedded_redis import EmbeddedRedis

        embedded = EmbeddedRedis(settings.data_dir / "redis")
        log.info("embedded Redis at %s", embedded.url)
    env = {**os.environ, "WANSERVE_REDIS_URL": settings.redis_url or embedded.url}  # type: ignore[union-attr]
    os.environ["WANSERVE_REDIS_URL"] = env["WANSERVE_REDIS_URL"]
    worker = subprocess.Popen([sys.executable, "-m", "cli.main", "worker"], env=env)
    # uvicorn re-raises SIGTERM/SIGINT after its shutdown; as SystemExit it lets the cleanup below run.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        _api(args)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        if embedded is not None:
            embedded.close()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _generate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from service.core.errors import InvalidRequest
    from service.core.schemas import parse_create_request, resolve_params
    from worker.engine import to_uint8
    from worker.serve import load_engine
    from worker.video import write_mp4

    settings = Settings()
    fields = (
        "size",
        "seconds",
        "num_frames",
        "fps",
        "num_inference_steps",
        "guidance_scale",
        "negative_prompt",
        "seed",
    )
    body = {"prompt": args.prompt, **{f: getattr(args, f) for f in fields if getattr(args, f) is not None}}
    engine = load_engine(settings)
    try:
        params = resolve_params(
            parse_create_request(body),
            engine.profile,
            max_prompt_chars=settings.max_prompt_chars,
            max_steps=settings.max_steps,
        )
    except InvalidRequest as exc:
        raise SystemExit(f"wanserve generate: {exc.message}") from None
    with tqdm(total=params.num_inference_steps, desc="denoise", unit="step") as bar:
        result = engine.generate(params, on_step=lambda done, _total: bar.update(done - bar.n))
    assert result.frames is not None
    write_mp4(to_uint8(result.frames), args.output, params.fps)
    print(f"wrote {args.output}: {params.size}, {params.num_frames} frames, seed {params.seed}")
    print(f"stage durations: {result.timings}")


if __name__ == "__main__":
    main()
