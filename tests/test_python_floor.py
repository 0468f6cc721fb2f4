"""The Python floor (pyproject's requires-python) is true and checked where people install.

On Python 3.10 the server started but its batcher task died at the first batching delay
(``except TimeoutError`` does not catch 3.10's ``asyncio.TimeoutError``), so requests hung; the
pins need 3.11 too. An older interpreter must be refused at install, with a message that says so.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support import REPO

FLOOR = (3, 11)


def fake_python(directory: Path, version: str = "3.10.14") -> Path:
    """An interpreter that reports ``version``: this Python with sys.version_info patched, running
    ``-c CODE`` or a script path (enough for what make and requirements.py ask of it)."""
    parts = tuple(int(p) for p in version.split("."))
    path = directory / f"python{parts[0]}.{parts[1]}"
    path.write_text(f"""#!{sys.executable}
import runpy, sys
sys.version_info = {(*parts, "final", 0)!r}
sys.version = "{version} (fake)"
args = sys.argv[1:]
if args[:1] == ["-c"]:
    sys.argv = ["-c", *args[2:]]
    exec(compile(args[1], "<string>", "exec"), {{"__name__": "__main__"}})
elif args and not args[0].startswith("-"):
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
else:
    sys.exit("fake python: cannot run " + " ".join(args))
""")
    path.chmod(0o755)
    return path


def test_requires_python_and_the_linters_agree_on_3_11() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=3.11"
    assert project["tool"]["ruff"]["target-version"] == "py311"
    assert project["tool"]["mypy"]["python_version"] == "3.11"
    assert sys.version_info[:2] >= FLOOR


def test_make_install_refuses_an_older_python_before_creating_anything(tmp_path: Path) -> None:
    old = fake_python(tmp_path)
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", "--no-print-directory", "install", f"PYTHON={old}", f"VENV={venv}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "needs Python >= 3.11" in proc.stderr and "3.10.14" in proc.stderr, proc.stderr[-2000:]
    assert not venv.exists(), "nothing is created for a Python that cannot run the server"
    # The same check passes this interpreter (dry run: prints the recipe, installs nothing).
    ok = subprocess.run(["make", "--no-print-directory", "-n", "serving-env", f"PYTHON={sys.executable}",
                         f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "-m venv" in ok.stdout, ok.stderr


def test_image_requirements_script_refuses_an_older_python(tmp_path: Path) -> None:
    # The Dockerfile runs container/requirements.py with the base image's python3 before anything
    # else: a base that is too old fails there, naming the floor.
    proc = subprocess.run([str(fake_python(tmp_path)), str(REPO / "container" / "requirements.py"),
                           str(REPO / "pyproject.toml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "needs Python >= 3.11" in proc.stderr and "3.10.14" in proc.stderr, proc.stderr


def test_string_enums_are_their_values() -> None:
    # serving.types used a 3.10 shim for enum.StrEnum; the real one must behave the same everywhere.
    import json

    from serving.types import ResidentState, ServerStatus

    assert str(ServerStatus.READY) == "ready" and f"{ServerStatus.READY:>6}" == " ready"
    assert json.dumps({"s": ResidentState.LOADING}) == '{"s": "loading"}'
    assert ServerStatus("draining") is ServerStatus.DRAINING
