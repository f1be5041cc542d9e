"""Wan2.1-T2V-1.3B on one Ascend NPU: ``bench/gpu_wan13b.py``'s sections with ``--device npu`` as the default.

    python bench/npu_wan13b.py                 # torch + torch_npu installed, one NPU visible

The same module and report shape; what differs is the module's per-device choices: attention backends
``native`` and diffusers' ``_native_npu`` (``torch_npu.npu_fusion_attention``), timing with ``torch.npu``
events, peak memory from ``torch.npu.max_memory_allocated``, the report in ``$OUT/npu_wan13b.json``.
``torch.compile`` of the blocks uses ``--compile-backend`` (inductor by default; its failure on a torch_npu
without inductor support is recorded and the other sections go on).

Not run: no NPU has been available to this project (on a machine without torch_npu it exits with a
one-line message).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_wan13b import main

if __name__ == "__main__":
    main(default_device="npu")
