"""The public API is what the README shows, and the README's layout names every module there is."""

import re
from pathlib import Path

import tlcache

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(heading: str) -> str:
    start = README.index(f"## {heading}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def test_all_is_what_the_readme_shows():
    shown = set(re.findall(r"\btlcache\.([A-Za-z]\w*)", _section("The Python API")))
    assert shown == set(tlcache.__all__), (
        f"in the README but not exported: {sorted(shown - set(tlcache.__all__))}; "
        f"exported but not in the README: {sorted(set(tlcache.__all__) - shown)}"
    )
    for name in tlcache.__all__:
        assert getattr(tlcache, name) is not None


def test_user_error_is_a_value_error():
    assert issubclass(tlcache.UserError, ValueError)


def test_every_cli_command_is_a_function_of_the_api():
    from tlcache.cli import cli

    paragraph = " ".join(_section("The Python API").split())
    for command in cli.commands:
        assert f"`{command}` is `" in paragraph, f"the README does not say which function `tlcache {command}` is"


def test_the_layout_names_every_module():
    layout = README[README.index("Layout (`tlcache/`)") :]
    for path in sorted((ROOT / "tlcache").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        named = f"`{path.name}`" in layout or f"`{path.stem}`" in layout
        assert named, f"README's layout paragraph does not name tlcache/{path.relative_to(ROOT / 'tlcache')}"
