"""Print the requirements of pyproject.toml's build system, dependencies and the named extras, one a line.

The Dockerfile installs these in a layer of their own before the source is copied, so that editing the
code does not reinstall them. Standard library only: it runs in the bare python and CANN base images.

    python3 pyproject_requirements.py pyproject.toml worker s3 > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """Build requirements, then dependencies, then each extra's; an extra naming the project itself
    (``wanserve[api,s3]``) is expanded in place. Raises KeyError for an extra that is not declared."""
    project = pyproject["project"]
    self_reference = re.compile(rf"^{re.escape(project['name'])}\[(?P<extras>[^\]]+)\]$")
    optional = project.get("optional-dependencies", {})
    lines = [*pyproject.get("build-system", {}).get("requires", []), *project.get("dependencies", [])]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            nested = self_reference.match(requirement.replace(" ", ""))
            if nested:
                pending.extend(nested["extras"].split(","))
            else:
                lines.append(requirement)
    return list(dict.fromkeys(lines))


def main(argv: list[str]) -> None:
    if len(argv) < 1:
        raise SystemExit(__doc__)
    pyproject = tomllib.loads(Path(argv[0]).read_text())
    try:
        print("\n".join(requirements(pyproject, argv[1:])))
    except KeyError as exc:
        raise SystemExit(f"no extra {exc} in {argv[0]}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
