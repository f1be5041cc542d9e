"""Peak memory is measured per job on every accelerator kind, through one code path.

No NPU here: the test stands in for torch_npu as it registers itself (the privateuse1 backend renamed
"npu", a ``torch.npu`` module) with a fake that has the two memory functions the worker uses. It runs in
a subprocess because that rename cannot be undone.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from worker import device as devices

SCRIPT = textwrap.dedent(
    """
    import torch

    from worker import device as devices


    class FakeNpu:
        # An allocator: what is allocated now, and the peak since the last reset.
        def __init__(self):
            self.allocated = self.peak = 0
            self.resets = []

        def allocate(self, mib):
            self.allocated += mib * 2**20
            self.peak = max(self.peak, self.allocated)

        def free(self, mib):
            self.allocated -= mib * 2**20

        def reset_peak_memory_stats(self, device):
            self.resets.append(str(device))
            self.peak = self.allocated

        def max_memory_allocated(self, device):
            return self.peak


    torch.utils.rename_privateuse1_backend("npu")
    torch.npu = fake = FakeNpu()
    device = torch.device("npu", 0)

    peaks = []
    for job_mib in (512, 128):  # what the engine does around each job
        devices.reset_peak_memory(device)
        fake.allocate(job_mib)
        fake.free(job_mib)
        peaks.append(devices.peak_memory_mb(device))
    print(peaks, fake.resets)
    """
)


def test_npu_peak_memory_is_reset_before_each_job() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    # Without a reset the second job would report the first one's 512 MiB.
    assert done.stdout.strip() == "[512.0, 128.0] ['npu:0', 'npu:0']"


def test_the_cpu_reports_the_process_peak_rss() -> None:
    cpu = torch.device("cpu")
    devices.reset_peak_memory(cpu)
    assert devices.peak_memory_mb(cpu) > 10
