"""Print the project's pinned requirements from pyproject.toml, one per line.

The Dockerfile installs dependencies from this list BEFORE it copies the code, so the big
dependency layers are rebuilt only when pyproject.toml changes, not on every code edit.
torch is installed in its own, earlier layer (from PyTorch's CPU or CUDA index, or a local
wheel), hence ``--only torch`` and ``--exclude torch``.

Usage: python requirements.py PYPROJECT [--extras a,b] [--only NAME | --exclude NAME]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if sys.version_info < (3, 11):  # pyproject's requires-python; the base image's python3 runs this
    sys.exit(f"requirements.py: t5-serving needs Python >= 3.11, this base image has {sys.version.split()[0]}; "
             "pick a base with a newer python3 (docs/image.md)")

import tomllib  # noqa: E402

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _load(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def requirement_name(req: str) -> str:
    match = _NAME.match(req)
    if not match:
        raise ValueError(f"cannot read a package name from requirement {req!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = _load(pyproject)["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            known = ", ".join(sorted(optional)) or "none"
            raise SystemExit(f"unknown extra {extra!r} in EXTRAS; {pyproject} defines: {known}")
        reqs.extend(optional[extra])
    return reqs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extras", default="", help="comma-separated extras to add")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--only", help="print only this package's requirement")
    group.add_argument("--exclude", help="leave this package out")
    args = parser.parse_args(argv)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    reqs = requirements(args.pyproject, extras)
    if args.only:
        reqs = [r for r in reqs if requirement_name(r) == requirement_name(args.only)]
        if not reqs:
            raise SystemExit(f"{args.only} is not a dependency in {args.pyproject}")
    elif args.exclude:
        reqs = [r for r in reqs if requirement_name(r) != requirement_name(args.exclude)]
    sys.stdout.write("".join(f"{r}\n" for r in reqs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
