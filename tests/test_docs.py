"""The docs: the site builds strictly, the README stays a newcomer's path, figures are generated.

- ``mkdocs build --strict`` fails on a broken link, a missing anchor or a page left out;
- the benchmark tables in README.md and docs/benchmarks.md equal a fresh render of
  docs/benchmarks.json (``make docs-tables`` rewrites them);
- the README's own links (it is not part of the site) point at files and headings that exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _slug(heading: str) -> str:
    # The anchor MkDocs (Python-Markdown's toc) and GitHub give a heading.
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(markdown: str) -> set:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", markdown, re.M)}


@pytest.mark.timeout(120)
def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    # No --quiet: it drops the warnings before --strict counts them.
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                             "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=110)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "site" / "reliability" / "index.html").exists()


def test_benchmark_tables_are_generated_from_the_committed_json():
    result = subprocess.run([sys.executable, "-m", "benchmarks.doc_tables", "--check"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_is_a_newcomers_path():
    text = _read(README)
    assert len(text.splitlines()) <= 300
    for must in ("make demo", "make test", "docs/benchmarks.png", "## Limits"):
        assert must in text, must


def test_readme_links_resolve():
    text = _read(README)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = os.path.join(ROOT, path) if path else README
        assert os.path.exists(target), f"README links to missing {path}"
        if anchor:
            assert anchor in _anchors(_read(target)), f"README links to missing anchor {link}"


def test_readme_options_table_is_the_migration_guides():
    def option_rows(text: str) -> list:
        rows = [line for line in text.splitlines() if re.match(r"\| `\w+` \| ", line)]
        # The README links pages by their path from the repository root.
        return [re.sub(r"\]\(docs/", "](", row) for row in rows]

    readme_rows = option_rows(_read(README))
    assert len(readme_rows) >= 6
    assert readme_rows == option_rows(_read(os.path.join(ROOT, "docs", "migration.md")))
