"""The framework-neutral package must never pull in tensorflow or torch.

Every module of ``dualmeta`` (found with pkgutil, so new modules are covered automatically) except the
backend selector and the command line is imported in a fresh interpreter, which then must not have
``tensorflow`` or ``torch`` in ``sys.modules``.
"""
import os
import pkgutil
import subprocess
import sys

import dualmeta

# Modules allowed to import a framework (they pick a backend on request).
FRAMEWORK_MODULES = ("dualmeta.backend", "dualmeta.cli")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def neutral_modules():
    names = ["dualmeta"]
    for info in pkgutil.walk_packages(dualmeta.__path__, prefix="dualmeta."):
        if not any(info.name == m or info.name.startswith(m + ".") for m in FRAMEWORK_MODULES):
            names.append(info.name)
    return names


def test_neutral_modules_found():
    names = neutral_modules()
    for expected in ("dualmeta.episodes", "dualmeta.datasets.omniglot", "dualmeta.metrics"):
        assert expected in names


def test_neutral_modules_do_not_import_frameworks():
    modules = neutral_modules()
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch'))\n"
        "print(repr(leaked))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"importing {modules} imported {result.stdout.strip()}"
