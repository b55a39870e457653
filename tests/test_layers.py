"""The package's shape: layers import only downward, and the runtime stands without onnx or prunex.export."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import prunex

PACKAGE = Path(prunex.__file__).parent

# Lowest first; a module may import its own layer or lower ones (never in a cycle), never a higher one.
LAYERS = [
    {"errors", "config", "format", "cache", "devices", "console", "tensors"},
    {"models", "data", "checkpoints"},
    {"prune", "runtime", "loading"},
    {"eval", "export"},
    {"train", "quantize"},
    {"serve", "bench"},
    {"cli", "__main__"},  # `python -m prunex` runs the CLI
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """`prunex.runtime.engine` -> `runtime`; `prunex.format` -> `format`."""
    return module.split(".")[1]


def _imports() -> dict[str, set[str]]:
    """Unit -> the prunex units its modules import (function-level imports included)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = relative.parts
        if parts == ("prunex", "__init__"):
            continue  # the flat public API re-exports from every layer
        unit = parts[1]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("prunex.") and _unit(name) != unit:
                    found.setdefault(unit, set()).add(_unit(name))
    return found


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert units - set(LAYER_OF) == set(), "add new modules and packages to LAYERS (and docs/architecture.md)"


def test_no_unit_imports_a_higher_layer():
    upward = sorted(f"{unit} imports {other}" for unit, others in _imports().items() for other in others
                    if LAYER_OF[other] > LAYER_OF[unit])
    assert upward == []


def test_units_of_one_layer_import_each_other_without_cycles():
    graph = _imports()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
                   for nxt in graph.get(start, ()))

    cycles = sorted(unit for unit in graph if reaches(unit, unit, {unit}))
    assert cycles == []


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "onnx" or name.startswith(("onnx.", "prunex.export")):
                raise ImportError(f"{name} is blocked: the runtime must not need it")
            return None

    sys.meta_path.insert(0, Blocked())
""")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from prunex.export.decoder import export_decoder
    from prunex.loading import load_lm

    out = tmp_path_factory.mktemp("layers") / "tiny-llama"
    export_decoder(load_lm("tiny-llama"), out, source="tiny-llama")
    return out


def test_runtime_runs_with_onnx_and_prunex_export_unimportable(tiny_export):
    script = BLOCKER + textwrap.dedent(f"""
        import pkgutil, importlib
        import prunex.runtime
        for info in pkgutil.iter_modules(prunex.runtime.__path__):
            importlib.import_module("prunex.runtime." + info.name)
        import prunex
        runtime = prunex.Runtime({str(tiny_export)!r}, device="cpu", threads=1)
        [done] = runtime.generate(["Hello"], prunex.SamplingParams(max_new_tokens=3, ignore_eos=True))
        assert len(done.token_ids) == 3, done
        assert "onnx" not in sys.modules and not any(m.startswith("prunex.export") for m in sys.modules)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
