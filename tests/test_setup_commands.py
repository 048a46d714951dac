"""The README's two commands (issue: a newcomer needs exactly two): `make demo` and `make test` set up .venv
themselves, reuse it when nothing changed, and `.ci/run` is `make test` and nothing else."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _dry_run(target: str, venv: pathlib.Path) -> str:
    run = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_the_readme_quick_start_is_the_two_make_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):]
    first_block = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]


def test_ci_runs_make_test_and_nothing_else():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "exec make test"]


def test_a_fresh_checkout_creates_the_environment_first(tmp_path):
    venv = tmp_path / "venv"
    for target, job in (("demo", "-m dualmeta compare"), ("test", "-m pytest -q")):
        plan = _dry_run(target, venv)
        assert f"-m venv {venv}" in plan
        assert "pip install" in plan and "-c constraints.txt" in plan and '-e ".[all,test,docs]"' in plan
        assert plan.index("-m venv") < plan.index("pip install") < plan.index(job)
    assert "mkdocs build --strict" in _dry_run("test", venv)


def test_a_second_run_reuses_the_environment(tmp_path):
    """With the stamps newer than setup.cfg, pyproject.toml and constraints.txt nothing is installed."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    os.chmod(venv / "bin" / "python", 0o755)
    (venv / ".extras-all_test_docs").touch()
    (venv / ".dualmeta-installed").touch()
    plan = _dry_run("demo", venv)
    assert "pip install" not in plan and "-m venv" not in plan and "-m dualmeta compare" in plan
    plan = subprocess.run(["make", "-n", "demo", f"VENV={venv}", "EXTRAS=torch,tf-cpu,plots,test,docs"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60).stdout
    assert "pip install" in plan  # other extras: reinstalled
