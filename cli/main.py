"""The ``wanserve`` command: dev, api, worker, generate, cache-calibrate. Torch is imported only by worker,
generate and cache-calibrate."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from service.core.logs import configure_logging
from service.core.settings import SettingsError, load_settings

log = logging.getLogger("wanserve")


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    command = f"wanserve {args.run.__name__.lstrip('_').replace('_', '-')}"
    # Problems with the environment end in one line naming the variable, before anything heavy loads.
    try:
        args.settings = load_settings()
        configure_logging(args.settings.log_level, args.settings.log_format)
        args.run(args)
    except SettingsError as exc:
        raise SystemExit(f"{command}: {exc}") from None


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
    api.add_argument(
        "--workers", type=_positive, default=1, help="API processes sharing the port (uvicorn's workers)"
    )
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

    calibrate = commands.add_parser(
        "cache-calibrate",
        help="measure MagCache's ratio curves and fit TeaCache's polynomial for the model (one process)",
        description=(
            "Run uncached generations of the model WANSERVE_MODEL names (unset: the shipped shapes model) in "
            "this one process (no Ulysses, no CFG parallelism), and write MagCache's ratio curves and "
            "TeaCache's polynomial into the model folder's cache_calibration.json. Every step count runs "
            "every prompt with every seed, at the model's default size and frames unless given."
        ),
    )
    calibrate.add_argument(
        "--steps",
        type=_positive,
        nargs="+",
        help="step counts to calibrate, one MagCache curve each (default: the model's default steps and 50)",
    )
    calibrate.add_argument("--prompts", type=_positive, default=4, help="prompts per step count (default 4)")
    calibrate.add_argument("--seeds", type=_positive, default=2, help="seeds per prompt (default 2)")
    calibrate.add_argument("--size", help="WxH (default: the model's)")
    calibrate.add_argument("--num-frames", type=int, help="4k+1 frames (default: the model's)")
    calibrate.set_defaults(run=_cache_calibrate)
    return parser


def _api(args: argparse.Namespace) -> None:
    import uvicorn

    from service.api.app import server_app
    from service.api.server import guarded_protocol, served_protocol_path

    settings = args.settings
    app = server_app(settings)  # with several workers, only to refuse bad settings here, in one line
    # log_config=None: uvicorn's own lines go through our handler (WANSERVE_LOG_FORMAT) too.
    options = {
        "host": args.host,
        "port": args.port,
        "log_level": "info",
        "log_config": None,
        # Event streams stay open until their video ends: without a limit, a stopping API waits for them.
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
    }
    workers = getattr(args, "workers", 1)
    if workers > 1:
        _share_metrics_between_processes()
        # uvicorn starts each process from import paths; each reads the settings from the environment.
        uvicorn.run(
            "service.api.app:app_factory",
            factory=True,
            workers=workers,
            http=served_protocol_path(),
            **options,
        )
        return
    uvicorn.run(app, http=guarded_protocol(settings.header_timeout_s), **options)


def _share_metrics_between_processes() -> None:
    """prometheus-client's multiprocess mode: every API process writes its HTTP metrics into one folder
    that ``/metrics`` (in whichever process answers) adds up. Emptied at start: old files would count."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder is None:
        folder = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="wanserve-metrics-")
    for stale in Path(folder).glob("*.db"):
        stale.unlink()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _worker(args: argparse.Namespace) -> None:
    from worker.parallel import ParallelLayout

    try:
        layout = ParallelLayout(args.nproc, args.ulysses, args.cfg)
    except ValueError as exc:
        raise SystemExit(f"wanserve worker: {exc}") from None
    if layout.ranks == 1:
        from worker.serve import run_worker

        run_worker(args.settings, burst=args.burst)
        return
    from worker.launcher import GroupLauncher

    sys.exit(GroupLauncher(args.settings, layout).run())


def _dev(args: argparse.Namespace) -> None:
    settings = args.settings
    embedded = None
    redis_url = settings.redis_url
    if not redis_url:
        from cli.embedded_redis import EmbeddedRedis

        embedded = EmbeddedRedis(settings.data_dir / "redis")
        redis_url = embedded.url
        log.info("embedded Redis at %s", redis_url)
        args.settings = settings.model_copy(update={"redis_url": redis_url})
    env = {**os.environ, "WANSERVE_REDIS_URL": redis_url}
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
    if not args.output.parent.is_dir():
        raise SystemExit(f"wanserve generate: {args.output.parent} does not exist (the folder of --output)")
    from tqdm import tqdm

    from service.core.errors import InvalidRequest
    from service.core.model_profile import profile_for_folder
    from service.core.schemas import parse_create_request, resolve_params
    from worker.engine import JobHooks
    from worker.serve import load_engine, model_folder
    from worker.video import to_uint8, write_mp4

    settings = args.settings
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
    try:  # the request is checked against the model's profile before its weights load
        params = resolve_params(
            parse_create_request(body),
            profile_for_folder(model_folder(settings), settings.model_name),
            max_prompt_chars=settings.max_prompt_chars,
            max_steps=settings.max_steps,
        )
    except InvalidRequest as exc:
        raise SystemExit(f"wanserve generate: {exc.message}") from None
    engine = load_engine(settings)
    with tqdm(total=params.num_inference_steps, desc="denoise", unit="step") as bar:
        result = engine.generate(params, JobHooks(on_step=lambda done, _total: bar.update(done - bar.n)))
    assert result.frames is not None
    write_mp4(to_uint8(result.frames), args.output, params.fps)
    print(f"wrote {args.output}: {params.size}, {params.num_frames} frames, seed {params.seed}")
    print(f"stage durations: {result.timings}")


def _cache_calibrate(args: argparse.Namespace) -> None:
    from service.core.cache_calibration import calibration_from_json, write_calibration
    from service.core.errors import InvalidRequest
    from service.core.model_profile import profile_for_folder
    from worker.serve import model_folder

    folder = model_folder(args.settings)
    if not os.access(folder, os.W_OK):  # before minutes of loading and generating
        raise SystemExit(
            f"wanserve cache-calibrate: {folder} is not writable: copy the model folder somewhere writable "
            "and point WANSERVE_MODEL at the copy"
        )
    from worker.cache.calibration import calibrate, calibration_prompts, calibration_runs
    from worker.serve import load_engine

    profile = profile_for_folder(folder)  # its own name, not WANSERVE_MODEL_NAME: it picks the prompts
    steps = args.steps or sorted({profile.default_steps, 50})
    options = [f"--steps {' '.join(map(str, steps))}", f"--prompts {args.prompts}", f"--seeds {args.seeds}"]
    options += [f"--size {args.size}"] if args.size else []
    options += [f"--num-frames {args.num_frames}"] if args.num_frames else []
    started = time.perf_counter()
    try:
        prompts, seeds = calibration_prompts(profile.name, args.prompts), range(args.seeds)
        given = {"size": args.size, "num_frames": args.num_frames}
        calibration_runs(profile, steps=steps, prompts=prompts, seeds=seeds, **given)  # before weights load
        print(f"calibrating {profile.name} in {folder}: {' '.join(options)}", flush=True)
        data = calibrate(
            load_engine(args.settings),
            steps=steps,
            prompts=prompts,
            seeds=seeds,
            **given,
            source=f"wanserve cache-calibrate {' '.join(options)}",
        )
    except InvalidRequest as exc:
        raise SystemExit(f"wanserve cache-calibrate: {exc.message}") from None
    except ValueError as exc:
        raise SystemExit(f"wanserve cache-calibrate: {exc}") from None
    try:
        path = write_calibration(folder, data)
    except OSError as exc:
        raise SystemExit(f"wanserve cache-calibrate: cannot write into {folder}: {exc}") from None
    calibration = calibration_from_json(data)
    for curve in calibration.magcache:
        for branch, ratios in (("cond", curve.cond), ("uncond", curve.uncond)):
            print(
                f"magcache {curve.steps} steps, {branch}: steps 1-3 {list(ratios[1:4])}, "
                f"min {min(ratios):.5f}, max {max(ratios):.5f}, last 3 {list(ratios[-3:])}"
            )
    if calibration.teacache is not None:
        fit = calibration.teacache
        print(
            f"teacache ({fit.signal}): coefficients [{', '.join(f'{c:.6g}' for c in fit.coefficients)}], "
            f"x range [{fit.x_range[0]:.5f}, {fit.x_range[1]:.5f}] over {fit.samples} samples"
        )
    print(f"took {time.perf_counter() - started:.1f} s; wrote {path}")


if __name__ == "__main__":
    main()
