"""The layers run one way (pyproject.toml's import contracts: sweeps > analysis > proxies,
benchmarks on the library only, a grid and its cost without the loop) and no module imports
itself through others."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("proxies", "analysis", "sweeps", "benchmarks")

grimp = pytest.importorskip("grimp")


def test_the_import_contracts_hold():
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import "
                           "lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_expanding_a_grid_and_costing_it_load_no_jax():
    """pyproject's contracts keep the loop and the launchers out of grid.py and cost.py; this
    checks the third-party side of it."""
    code = "import sys, proxies.grid, proxies.cost; print('jax' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr[-2000:]


def cycles(imports: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in imports.get(m, ()):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                group.append(n)
                if n == m:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for m in sorted(imports):
        if m not in index:
            visit(m)
    return found


def test_cycles_finds_a_planted_cycle_and_nothing_else():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_through_others():
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a package of the checkout, not installed
    try:
        graph = grimp.build_graph(*PACKAGES)
    finally:
        sys.path.remove(str(ROOT))
    # Imports inside functions count: a lazy import still ties the two modules together.
    imports = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert cycles(imports) == []
