"""The launcher's restart budget: restarts count within a sliding window, not over the process's life."""

import signal
import sys
from pathlib import Path

import pytest

from service.core.settings import Settings
from worker.launcher import MAX_RESTARTS, RESTART_WINDOW_S, GroupLauncher, RestartBudget
from worker.parallel import ParallelLayout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restarts_are_limited_within_the_window_and_forgotten_after_it() -> None:
    clock = Clock()
    budget = RestartBudget(limit=3, window_s=600, clock=clock)
    for _ in range(3):
        assert budget.allow()
        clock.now += 100
    assert not budget.allow(), "a fourth restart within 10 minutes: give up"
    clock.now = 1000 + 600  # the first restart leaves the window
    assert budget.allow()
    assert not budget.allow()


def test_occasional_failures_never_exhaust_the_budget() -> None:
    clock = Clock()
    budget = RestartBudget(clock=clock)
    for _ in range(10 * MAX_RESTARTS):  # one failure every window, for a long life
        assert budget.allow()
        clock.now += RESTART_WINDOW_S


@pytest.fixture
def launcher(tmp_path: Path):
    """The real launcher, its torchrun replaced by a command that fails the first FAILURES times."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    settings = Settings(redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path, model=None)  # the shipped model
    group = GroupLauncher(settings, ParallelLayout(2, 2, 1))
    counter = tmp_path / "starts"
    group.command = [sys.executable, "-c", FAIL_FIRST_TIMES.format(counter=str(counter), failures=FAILURES)]
    yield group
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


FAILURES = 6
FAIL_FIRST_TIMES = """
import pathlib, sys
counter = pathlib.Path({counter!r})
starts = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(starts))
sys.exit(3 if starts <= {failures} else 0)
"""


def test_a_group_failing_now_and_then_is_restarted_every_time(
    launcher: GroupLauncher, tmp_path: Path
) -> None:
    clock = Clock()

    def tick() -> float:
        clock.now += 250  # a failure every 250 s: never more than 3 in 10 minutes
        return clock.now

    launcher.restarts = RestartBudget(clock=tick)
    assert launcher.run() == 0
    assert (tmp_path / "starts").read_text() == str(1 + FAILURES), "six restarts, then a clean stop"


def test_a_group_failing_in_a_burst_is_given_up(launcher: GroupLauncher, tmp_path: Path) -> None:
    launcher.restarts = RestartBudget(clock=Clock())  # the clock stands still: all within the window
    assert launcher.run() == 3
    assert (tmp_path / "starts").read_text() == str(1 + MAX_RESTARTS)
