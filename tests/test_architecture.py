"""The layer order of docs/architecture.md holds, and no module takes part in an import cycle.

The contracts live in pyproject.toml ([tool.importlinter]); this test runs them, so a change that
breaks a rule fails CI."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest
from importlinter.application import use_cases
from importlinter.configuration import configure

ROOT = Path(__file__).resolve().parents[1]


def test_layer_contracts_hold(monkeypatch):
    configure()
    monkeypatch.chdir(ROOT)
    passed = use_cases.lint_imports(config_filename=str(ROOT / "pyproject.toml"))
    assert passed, "an import breaks the layer order: run `lint-imports` for the chain"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


@pytest.mark.parametrize("package", ["deft_omni", "data_prep"])
def test_no_import_cycle(package):
    graph = grimp.build_graph(package, include_external_packages=False)
    assert _cycles(graph) == []
