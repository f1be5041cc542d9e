"""What a client is told about a failed job: a classified code and sentence, never the exception's text."""

import pytest
import torch
from rq.timeouts import JobTimeoutException

from service.core.errors import InvalidRequest, StorageError
from worker.errors import GenerationAborted, GroupFailed
from worker.video_job import client_error

SECRET = "/home/deploy/.cache/wan/vae.safetensors"
GENERIC = "The video could not be generated because of an internal error in the worker."


def aborted_by(cause: BaseException, code: str = "generation_failed") -> GenerationAborted:
    try:
        raise GenerationAborted("stopped before denoising step 3 of 8.", code) from cause
    except GenerationAborted as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (
            RuntimeError(f"cuDNN error reading {SECRET}\nTraceback (most recent call last): ..."),
            "generation_failed",
        ),
        (ValueError(f"tensor([[0.1, 0.2]]) at {SECRET}"), "generation_failed"),
        (
            torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB; {SECRET}"),
            "out_of_memory",
        ),
        (RuntimeError(f"NPU out of memory. Tried to allocate 1.00 GiB ({SECRET})"), "out_of_memory"),
        (GroupFailed(f"rank 1: RuntimeError: {SECRET}"), "worker_group_failed"),
        (aborted_by(ConnectionError(f"Error 111 connecting to {SECRET}")), "generation_failed"),
    ],
    ids=["library-error", "tensor-repr", "cuda-oom", "npu-oom", "group", "callback-abort"],
)
def test_other_errors_get_a_fixed_sentence(exc: Exception, code: str) -> None:
    error = client_error(exc)
    assert error["code"] == code
    assert SECRET not in error["message"] and "Traceback" not in error["message"]
    if code == "generation_failed":
        assert error["message"] == GENERIC


@pytest.mark.parametrize(
    "exc",
    [
        JobTimeoutException("Task exceeded maximum timeout value (60 seconds)"),
        GenerationAborted("The job's time limit passed; stopped before decoding.", "job_timeout"),
        aborted_by(JobTimeoutException("Task exceeded maximum timeout value (60 seconds)")),
    ],
    ids=["rq-alarm", "deadline", "rq-alarm-in-a-callback"],
)
def test_every_timeout_is_a_job_timeout_naming_the_limit(exc: Exception) -> None:
    assert client_error(exc, 60) == {
        "code": "job_timeout",
        "message": "The job ran longer than its 60 s limit (WANSERVE_JOB_TIMEOUT_S).",
    }


def test_our_errors_for_clients_keep_a_short_summary_without_paths() -> None:
    storage = StorageError(f"Cannot write to storage at {SECRET}: No space left on device")
    assert client_error(storage) == {
        "code": "storage_error",
        "message": "Cannot write to storage at <path>: No space left on device",
    }
    invalid = InvalidRequest(
        "Invalid 'cache' for wan2.1-t2v-1.3b: block_end 40 is beyond the 30 blocks.\nmore"
    )
    assert client_error(invalid) == {
        "code": "invalid_value",
        "message": "Invalid 'cache' for wan2.1-t2v-1.3b: block_end 40 is beyond the 30 blocks.",
    }
    relative = StorageError("Cannot write video to storage: models/wan/../secrets/key.pem is read-only")
    assert client_error(relative)["message"] == "Cannot write video to storage: <path> is read-only"
    long = client_error(InvalidRequest("x" * 1000))["message"]
    assert len(long) == 200
