"""The backends stay apart and stay mirrors of each other.

* Isolation: importing every module of ``tf_meta`` (in a fresh interpreter) never imports torch, and every
  module of ``torch_meta`` never imports tensorflow or keras, so each backend installs and runs alone.
* Mirror: the two packages have the same module files; each module has the same public names; each public
  class has the same public methods in the same order (STYLE.md, example 1). Written generically: modules
  and classes added later are checked without touching this file.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"tf_meta": ("torch",), "torch_meta": ("tensorflow", "keras")}
FRAMEWORK_ROOTS = {"tf_meta": ("keras", "tensorflow", "tf_keras"), "torch_meta": ("torch",)}
# The one framework hook with different names in the two frameworks: Keras layers run `call`, torch modules
# `forward`. Compared as one name (the TF `call` is read as `forward`).
ENTRY_POINT_ALIASES = {"tf_meta": {"call": "forward"}, "torch_meta": {}}

_IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
modules = [package.__name__]
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(info.name)
    modules.append(info.name)
print(json.dumps({"modules": modules, "loaded": sorted(m for m in sys.modules if "." not in m)}))
"""


def _module_names(package: str) -> list[str]:
    """Module names of ``package`` relative to it (``''`` for the package itself), found without importing."""
    names = [""]

    def walk(path: str, prefix: str) -> None:
        for info in pkgutil.iter_modules([path]):
            names.append(prefix + info.name)
            if info.ispkg:
                walk(os.path.join(path, info.name), f"{prefix}{info.name}.")

    walk(os.path.join(ROOT, package), "")
    return sorted(names)


@pytest.mark.parametrize("package, forbidden", sorted(PACKAGES.items()))
def test_backend_imports_only_its_framework(package, forbidden):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-c", _IMPORT_ALL, package], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, f"importing every module of {package} failed:\n{run.stderr[-3000:]}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    expected = sorted(f"{package}.{name}" if name else package for name in _module_names(package))
    assert sorted(report["modules"]) == expected, "the subprocess did not import every module"
    leaked = [name for name in forbidden if name in report["loaded"]]
    assert not leaked, (f"importing every module of {package} ({', '.join(report['modules'])}) "
                        f"also imported {leaked}; {package} must run without them")


def test_backends_have_the_same_modules():
    tf_modules, torch_modules = _module_names("tf_meta"), _module_names("torch_meta")
    assert tf_modules == torch_modules, (
        f"module files differ: only in tf_meta {sorted(set(tf_modules) - set(torch_modules))}, "
        f"only in torch_meta {sorted(set(torch_modules) - set(tf_modules))}")


def _assigned(target) -> list[str]:
    """Names bound by an assignment target (``a``, ``a, b``), not attributes or items (``_x.y = ...``)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _assigned(element)]
    if isinstance(target, ast.Starred):
        return _assigned(target.value)
    return []


def _defined_names(module) -> list[str]:
    """Public names a module defines itself (not imports), in source order; ``__all__`` wins if present."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    tree = ast.parse(inspect.getsource(module))
    names = []
    for node in tree.body:
        targets = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                targets += _assigned(target)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = _assigned(node.target)
        names += [name for name in targets if not name.startswith("_") and name not in names]
    return names


MODULES = _module_names("torch_meta")


def _load(package: str, name: str):
    return importlib.import_module(f"{package}.{name}" if name else package)


@pytest.mark.parametrize("module", MODULES, ids=[m or "__init__" for m in MODULES])
def test_modules_have_the_same_public_names(module):
    if module not in _module_names("tf_meta"):
        pytest.skip("module missing in tf_meta (reported by test_backends_have_the_same_modules)")
    tf_names, torch_names = _defined_names(_load("tf_meta", module)), _defined_names(_load("torch_meta", module))
    assert set(tf_names) == set(torch_names), (
        f"{module or '__init__'}: public names differ: only in tf_meta {sorted(set(tf_names) - set(torch_names))}, "
        f"only in torch_meta {sorted(set(torch_names) - set(tf_names))}")


def _framework_attributes(cls, package: str) -> set[str]:
    """Names that the framework's own base classes (keras / torch) define: hooks a twin may lack."""
    roots = FRAMEWORK_ROOTS[package]
    names = set()
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] in roots:
            names.update(vars(base))
    return names


def _public_methods(cls, package: str) -> tuple[list[str], set[str]]:
    """The class's own public methods in definition order (entry point aliased), and which are framework hooks."""
    aliases = ENTRY_POINT_ALIASES[package]
    hooks = _framework_attributes(cls, package)
    methods, framework_hooks = [], set()
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if not (inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod, property))):
            continue
        shown = aliases.get(name, name)
        methods.append(shown)
        if name in hooks:
            framework_hooks.add(shown)
    return methods, framework_hooks


def _public_classes(package: str, module: str) -> dict[str, type]:
    mod = _load(package, module)
    return {name: getattr(mod, name) for name in _defined_names(mod)
            if inspect.isclass(getattr(mod, name, None)) and getattr(mod, name).__module__ == mod.__name__}


CLASS_CASES = [(module, name) for module in MODULES for name in _public_classes("torch_meta", module)]


@pytest.mark.parametrize("module, name", CLASS_CASES, ids=[f"{m or '__init__'}.{n}" for m, n in CLASS_CASES])
def test_classes_have_the_same_public_methods(module, name):
    """Same public methods in the same order; a framework hook (Keras `build`, torch `extra_repr`) may be alone."""
    tf_classes = _public_classes("tf_meta", module) if module in _module_names("tf_meta") else {}
    assert name in tf_classes, f"tf_meta.{module}: class {name} is missing (torch_meta has it)"
    tf_methods, tf_hooks = _public_methods(tf_classes[name], "tf_meta")
    torch_methods, torch_hooks = _public_methods(_public_classes("torch_meta", module)[name], "torch_meta")
    only_tf = [m for m in tf_methods if m not in torch_methods and m not in tf_hooks]
    only_torch = [m for m in torch_methods if m not in tf_methods and m not in torch_hooks]
    assert not only_tf and not only_torch, (
        f"{module}.{name}: public methods differ: only in tf_meta {only_tf}, only in torch_meta {only_torch}")
    common_tf = [m for m in tf_methods if m in torch_methods]
    common_torch = [m for m in torch_methods if m in tf_methods]
    assert common_tf == common_torch, (f"{module}.{name}: the same methods in a different order: "
                                       f"tf_meta {common_tf}, torch_meta {common_torch}")


def test_every_tf_class_has_a_torch_twin():
    """The converse of the parameterised test above, for classes that exist only in tf_meta."""
    tf_only = [f"{module}.{name}" for module in _module_names("tf_meta") if module in MODULES
               for name in _public_classes("tf_meta", module) if name not in _public_classes("torch_meta", module)]
    assert not tf_only, f"public classes only in tf_meta: {tf_only}"
