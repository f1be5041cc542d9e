"""`python -m worker.group` with failures injected by prompt, for the failure tests.

- "fail on rank N ..." raises inside the transformer's first block on rank N at its third call,
  while the other ranks are inside a collective (what an out-of-memory error looks like).
- "fail everywhere ..." raises the same error on every rank before any collective.
"""

import os
from typing import Any

from worker import engine as engine_module
from worker import group

_generate = engine_module.WanEngine.generate


def generate(self: Any, params: Any, **kwargs: Any) -> Any:
    rank = int(os.environ["RANK"])
    if params.prompt.startswith("fail everywhere"):
        raise ValueError("injected failure on every rank")
    if params.prompt.startswith(f"fail on rank {rank}"):
        calls = 0

        def fail_on_third_call(*_: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError(f"injected failure on rank {rank}")

        handle = self.pipe.transformer.blocks[0].register_forward_pre_hook(fail_on_third_call)
        try:
            return _generate(self, params, **kwargs)
        finally:
            handle.remove()
    return _generate(self, params, **kwargs)


engine_module.WanEngine.generate = generate  # type: ignore[method-assign]
group.main()
