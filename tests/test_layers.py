"""The layers run one way: export <- verify <- pipeline (read with ``ast``, nothing imported).

- export/ imports nothing of nhle_pipeline.verify or nhle_pipeline.pipeline;
- verify/ imports nothing of nhle_pipeline.pipeline;
- no file (sources, benchmarks, tests) imports the bare top-level names
  ``pipeline``, ``export`` or ``verify``: only ``nhle_pipeline.<layer>``.

Relative imports are resolved against the file's package, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name
count as imports too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "nhle_pipeline"
BARE = ("pipeline", "export", "verify")
# folder -> (its package name, the packages it must not import)
LAYERS = {
    "export": (f"{NAMESPACE}.export", (f"{NAMESPACE}.verify", f"{NAMESPACE}.pipeline")),
    "verify": (f"{NAMESPACE}.verify", (f"{NAMESPACE}.pipeline",)),
    "pipeline": (f"{NAMESPACE}.pipeline", ()),
}
# folders that are not layers: only the bare-name rule applies
OTHERS = {"benchmarks": "benchmarks", "tests": "tests"}


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # absolute dotted name
    text: str  # the import as written

    def within(self, package: str) -> bool:
        return self.module == package or self.module.startswith(package + ".")


def _resolve(module: str | None, level: int, package: str) -> str:
    """``from <level dots><module> import`` inside ``package`` -> an absolute name."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)] if level - 1 < len(parts) else []
    return ".".join([*base, *([module] if module else [])])


def imports(source: str, package: str, filename: str = "<source>") -> list[Import]:
    """Every module ``source`` imports (or may import: ``from a import b`` yields a and a.b)."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(node.lineno, alias.name, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, package)
            written = "." * node.level + (node.module or "")
            for alias in node.names:
                text = f"from {written} import {alias.name}"
                found.append(Import(node.lineno, base, text))
                if alias.name != "*":
                    found.append(Import(node.lineno, f"{base}.{alias.name}" if base else alias.name, text))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            target = node.args[0].value
            if name in ("import_module", "__import__") and isinstance(target, str) and not target.startswith("."):
                found.append(Import(node.lineno, target, f"{name}({target!r})"))
    return found


def violations(source: str, package: str, forbidden: tuple[str, ...], filename: str = "<source>") -> list[str]:
    """One ``file:line: import  (why)`` line per offending import in ``source``."""
    out = []
    for imp in imports(source, package, filename):
        top = imp.module.split(".")[0]
        if top in BARE:
            out.append(f"{filename}:{imp.line}: {imp.text}  (bare top-level '{top}'; use {NAMESPACE}.{top})")
        for bad in forbidden:
            if imp.within(bad):
                out.append(f"{filename}:{imp.line}: {imp.text}  ({package} must not import {bad})")
    return sorted(set(out), key=lambda s: (s.split(":")[0], int(s.split(":")[1]), s))


def _package_of(path: Path, folder: str, package: str) -> str:
    """The package a file's relative imports resolve against: its folder's (``__init__.py`` too)."""
    return ".".join([package, *path.relative_to(ROOT / folder).parts[:-1]])


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _scan(folder: str, package: str, forbidden: tuple[str, ...]) -> tuple[int, list[str]]:
    problems = []
    files = _sources(folder)
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        problems += violations(path.read_text(), _package_of(path, folder, package), forbidden, rel)
    return len(files), problems


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_layer_imports_only_downwards_and_never_bare_names(folder):
    package, forbidden = LAYERS[folder]
    n, problems = _scan(folder, package, forbidden)
    assert n >= 5, f"{folder}/: only {n} .py files found; is ROOT ({ROOT}) right?"
    assert not problems, f"{folder}/ breaks the layering:\n" + "\n".join(problems)


@pytest.mark.parametrize("folder", sorted(OTHERS))
def test_benchmarks_and_tests_never_import_bare_names(folder):
    n, problems = _scan(folder, OTHERS[folder], ())
    assert n >= 3, f"{folder}/: only {n} .py files found"
    assert not problems, f"{folder}/ imports bare top-level names:\n" + "\n".join(problems)


def test_the_scanner_sees_the_real_downward_imports():
    """Not vacuous on the real tree: pipeline/ does import verify and export, verify imports export."""
    seen = {
        folder: {imp.module for path in _sources(folder) for imp in imports(path.read_text(), LAYERS[folder][0])}
        for folder in ("verify", "pipeline")
    }
    assert any(m.startswith(f"{NAMESPACE}.export.") for m in seen["verify"])
    assert any(m.startswith(f"{NAMESPACE}.verify.") for m in seen["pipeline"])
    assert any(m.startswith(f"{NAMESPACE}.export.") for m in seen["pipeline"])


EXPORT_PKG, EXPORT_FORBIDDEN = LAYERS["export"]


@pytest.mark.parametrize(
    "source, expect",
    [
        ("from nhle_pipeline.verify.ort import open_session\n", "export/x.py:1: from nhle_pipeline.verify.ort import open_session"),
        ("import os\nimport nhle_pipeline.pipeline.config\n", "export/x.py:2: import nhle_pipeline.pipeline.config"),
        ("from nhle_pipeline import pipeline\n", "must not import nhle_pipeline.pipeline"),
        ("def f():\n    from ..verify import ort\n", "export/x.py:2: from ..verify import ort"),
        ("import pipeline.config\n", "export/x.py:1: import pipeline.config  (bare top-level 'pipeline'"),
        ("from verify import ort\n", "bare top-level 'verify'"),
        ("import export\n", "bare top-level 'export'"),
        ("from export.errors import OnnxError\n", "bare top-level 'export'"),
        ("import importlib\nm = importlib.import_module('verify.ort')\n", "export/x.py:2: import_module('verify.ort')"),
        ("if False:\n    import nhle_pipeline.verify\n", "export/x.py:2: import nhle_pipeline.verify"),
    ],
)
def test_checker_catches_a_violation(source, expect):
    found = violations(source, EXPORT_PKG, EXPORT_FORBIDDEN, "export/x.py")
    assert any(expect in v for v in found), found


@pytest.mark.parametrize(
    "source",
    [
        "from nhle_pipeline.export.errors import OnnxError\n",
        "from . import errors\nfrom .onnx_file import load_onnx\n",
        "import numpy as np\nfrom pathlib import Path\n",
        "import pipelines\nimport exporter\n",  # names that merely start like a layer
        "x = 'import pipeline'\n",  # a string, not an import
    ],
)
def test_checker_accepts_clean_sources(source):
    assert violations(source, EXPORT_PKG, EXPORT_FORBIDDEN, "export/x.py") == []


def test_relative_imports_resolve_against_the_package():
    assert _resolve("ort", 2, "nhle_pipeline.export") == "nhle_pipeline.ort"
    assert _resolve("errors", 1, "nhle_pipeline.export") == "nhle_pipeline.export.errors"
    assert _resolve(None, 2, "nhle_pipeline.pipeline.release") == "nhle_pipeline.pipeline"
    assert _package_of(ROOT / "pipeline" / "release" / "check.py", "pipeline", "nhle_pipeline.pipeline") == (
        "nhle_pipeline.pipeline.release"
    )
