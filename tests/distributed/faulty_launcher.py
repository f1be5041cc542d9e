"""`wanserve worker --nproc 2` whose ranks run tests/distributed/faulty_group.py."""

import logging
import sys
from pathlib import Path

from service.core.settings import Settings
from worker.launcher import GroupLauncher
from worker.parallel import ParallelLayout

logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # as the CLI
ulysses, cfg = int(sys.argv[1]), int(sys.argv[2])
entry = [str(Path(__file__).with_name("faulty_group.py"))]
sys.exit(GroupLauncher(Settings(), ParallelLayout(ulysses * cfg, ulysses, cfg), entry).run())
