"""Log lines: text for people by default, one JSON object a line with WANSERVE_LOG_FORMAT=json."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest

from service.core.logs import configure_logging, log_context


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_parse_and_carry_the_fields() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", rank=0, worker="wanserve-host-1-abc123", stream=stream)
    log = logging.getLogger("wanserve.worker")
    with log_context(video_id="video_" + "a" * 32):
        log.info("completed in %.1f s", 1.25)
    log.debug("not at INFO")
    log.warning("outside any video")

    entries = [json.loads(line) for line in lines(stream)]
    assert len(entries) == 2
    first, second = entries
    assert first == {
        "time": first["time"],
        "level": "INFO",
        "logger": "wanserve.worker",
        "message": "completed in 1.2 s",
        "video_id": "video_" + "a" * 32,
        "worker": "wanserve-host-1-abc123",
        "rank": 0,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None
    assert "video_id" not in second and second["level"] == "WARNING"


def test_an_exception_stays_on_its_line() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("wanserve.api").exception("request failed")
    (line,) = lines(stream)
    entry = json.loads(line)
    assert entry["message"] == "request failed"
    assert "Traceback" in entry["exception"] and "ValueError: bad" in entry["exception"]
    assert "rank" not in entry and "worker" not in entry  # unknown in an API process: left out


def test_extras_win_over_the_context_and_contexts_nest() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", worker="w1", stream=stream)
    log = logging.getLogger("wanserve")
    with log_context(video_id="video_outer"):
        with log_context(rank=1):
            log.info("inner")
        log.info("explicit", extra={"video_id": "video_extra"})
    log.info("after")
    inner, explicit, after = (json.loads(line) for line in lines(stream))
    assert (inner["video_id"], inner["rank"], inner["worker"]) == ("video_outer", 1, "w1")
    assert explicit["video_id"] == "video_extra" and "rank" not in explicit
    assert "video_id" not in after


def test_a_context_belongs_to_its_thread() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    log = logging.getLogger("wanserve")
    with log_context(video_id="video_main"):
        thread = threading.Thread(target=lambda: log.info("from another thread"))
        thread.start()
        thread.join()
    (entry,) = (json.loads(line) for line in lines(stream))
    assert "video_id" not in entry


def test_log_context_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError, match="unknown log context fields"), log_context(prompt="secret"):
        pass


def test_text_is_the_default_and_looks_as_before() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    with log_context(video_id="video_x"):
        logging.getLogger("wanserve.api").info("hello %s", "there")
    (line,) = lines(stream)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO wanserve\.api: hello there", line)


def test_text_names_the_rank_of_a_group_process() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", rank=2, stream=stream)
    logging.getLogger("wanserve.worker").info("ready")
    assert lines(stream)[0].endswith(" INFO rank2 wanserve.worker: ready")


def test_configuring_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "json", stream=first)
    configure_logging("WARNING", "json", stream=second)
    logging.getLogger("wanserve").info("dropped")
    logging.getLogger("wanserve").warning("kept")
    assert lines(first) == [] and [json.loads(line)["message"] for line in lines(second)] == ["kept"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        configure_logging("INFO", "yaml")
