"""Structural rules that keep the design honest: one owner for task decisions, public API in benchmarks."""
import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mmfuse"


def test_no_branch_on_the_kind_of_task_outside_the_task_module():
    pattern = re.compile(r"task is (?!(not )?None)|task ==|task\.value|(task|\.name) == \"(binary|multiclass|multilabel|regression)\"|Task\.(BINARY|MULTICLASS|MULTILABEL|REGRESSION)"
                         r"|isinstance\([^)]*(Binary|Multiclass|Multilabel|Regression)Task")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in SRC.rglob("*.py") if p.name != "tasks.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_benchmarks_use_only_public_api():
    bad = []
    for p in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmfuse":
                names = node.module.split(".")[1:] + [a.name for a in node.names]
                if any(n.startswith("_") for n in names):
                    bad.append(f"{p.name}: from {node.module} import {', '.join(a.name for a in node.names)}")
                    continue
                public = getattr(importlib.import_module(node.module), "__all__", None)
                bad += [f"{p.name}: {node.module}.{a.name} is not in its __all__" for a in node.names
                        if public is not None and a.name not in public]
            elif isinstance(node, ast.Import):
                bad += [f"{p.name}: import {a.name}" for a in node.names
                        if a.name.startswith("mmfuse.") and any(s.startswith("_") for s in a.name.split("."))]
    assert bad == []
    assert (ROOT / "benchmarks").is_dir() and list((ROOT / "benchmarks").glob("bench_*.py"))
