"""The docs: the site builds strictly and reads right, the reference is complete, the
guides' code runs, the README stays a newcomer's path, figures are generated.

- ``mkdocs build --strict`` fails on a broken link, a missing anchor or a page left out;
  the built HTML is then read as a browser would show it: no raw table row (``| a | b |``)
  or run-on list left in a paragraph, every local link and ``#anchor`` resolves, every
  image has alt text;
- every public name of the five public modules has an entry in the API reference
  (``docs/reference/``, rendered from the docstrings by ``scripts/docs_reference.py``),
  and the entry points a user calls describe every argument;
- the guides' code blocks marked ``<!-- runnable -->`` run, as written, and every other
  Python block parses;
- every guide opens with what the reader will be able to do;
- user pages hold no test ids, goals, verdicts, lab notes or private module names (those
  belong to docs/testing.md, docs/benchmarks.md and docs/development.md);
- the benchmark tables in README.md and the docs equal a fresh render of the committed
  JSON (``make docs-tables`` rewrites them);
- the README's own links (it is not part of the site) point at files and headings that exist.
"""

from __future__ import annotations

import glob
import html.parser
import importlib.util
import os
import posixpath
import re
import subprocess
import sys
import time
import urllib.parse
from typing import Dict, List, Set, Tuple

import pytest

# The site is built as `make docs` builds it, in the Caffe2 leg: its API reference
# imports init_data_input_workers and the rest of the Caffe2 API to read their docstrings.
pytestmark = pytest.mark.caffe2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
#: Pages that hold evidence and method for maintainers, not guidance: test ids,
#: goals and verdicts are at home there.
EVIDENCE_PAGES = {"testing.md", "benchmarks.md", "development.md"}
#: Entry points whose every argument (and every public method's) the reference describes.
FULLY_DESCRIBED = [
    "data_workers.init_data_input_workers",
    "data_workers.GlobalCoordinator",
    "data_workers.ExternalLogger",
    "data_workers.get_worker_ids",
    "data_workers.torch.Loader",
    "data_workers.sharding.ShardedSource",
    "data_workers.sharding.InputCheckpoint",
    "data_workers.sharding.ArrayDataset",
    "data_workers.sharding.IndexableDataset",
    "data_workers.sharding.device_shard",
    "data_workers.ray_source.RayDataSource",
    "data_workers.parallel_workers.init_workers",
]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _slug(heading: str) -> str:
    # The anchor MkDocs (Python-Markdown's toc) and GitHub give a heading.
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(markdown: str) -> set:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", markdown, re.M)}


class _Html(html.parser.HTMLParser):
    """What a reader sees of one built page: ids, links, images, paragraph text."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: Set[str] = set()
        self.links: List[str] = []
        self.images: List[Dict[str, str]] = []
        self.paragraphs: List[str] = []
        self._code = 0
        self._para: List[str] = []
        self._in_para = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a)
        if tag in ("code", "pre"):
            self._code += 1
        if tag == "p":
            self._in_para, self._para = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("code", "pre"):
            self._code -= 1
        if tag == "p" and self._in_para:
            self.paragraphs.append("".join(self._para))
            self._in_para = False

    def handle_data(self, data: str) -> None:
        if self._in_para:
            # Code spans stand in as a placeholder: a `|` inside code is no table.
            self._para.append("CODE" if self._code else data)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Tuple[str, Dict[str, _Html]]:
    """The site, built once (strict), and every page of it parsed."""
    pytest.importorskip("mkdocs")
    out = str(tmp_path_factory.mktemp("site"))
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    # No --quiet: it drops the warnings before --strict counts them.
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                             "--site-dir", out],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=110)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pages = {}
    for path in glob.glob(os.path.join(out, "**", "*.html"), recursive=True):
        parser = _Html()
        with open(path, encoding="utf-8") as f:
            parser.feed(f.read())
        pages[os.path.relpath(path, out).replace(os.sep, "/")] = parser
    return out, pages


@pytest.mark.timeout(120)
def test_site_builds_strict(site):
    out, pages = site
    assert "reliability/index.html" in pages
    assert "reference/caffe2/index.html" in pages


def test_no_markdown_left_unrendered(site):
    _out, pages = site
    bad = []
    for name, page in sorted(pages.items()):
        for text in page.paragraphs:
            if re.search(r"^\s*\|.*\|\s*$", text, re.M):
                bad.append(f"{name}: a table row rendered as text: {text.strip()[:80]!r}")
            if re.search(r"\n\s*(?:[-*+]|\d+\.)\s+\S", text):
                bad.append(f"{name}: a list rendered as run-on text (no blank line before "
                           f"it?): {text.strip()[:80]!r}")
    assert not bad, "\n".join(bad)


def test_every_local_link_and_anchor_resolves(site):
    out, pages = site
    bad = []
    for name, page in sorted(pages.items()):
        if name.startswith(("404", "search/")):
            continue
        for href in page.links:
            url = urllib.parse.urlparse(href)
            if url.scheme or url.netloc or href.startswith("mailto:"):
                continue
            path = url.path
            target = name if not path else posixpath.normpath(
                posixpath.join(posixpath.dirname(name), path))
            if not path or path.endswith("/"):
                target = posixpath.join(target, "index.html") if path else name
            elif os.path.isdir(os.path.join(out, target)):
                target = posixpath.join(target, "index.html")
            if not os.path.exists(os.path.join(out, target)):
                bad.append(f"{name}: link to missing {href}")
                continue
            anchor = urllib.parse.unquote(url.fragment)
            if anchor and target in pages and anchor not in pages[target].ids:
                bad.append(f"{name}: link to missing anchor {href}")
    assert not bad, "\n".join(bad)


def test_every_image_has_alt_text(site):
    _out, pages = site
    bad = [f"{name}: <img src={img.get('src')!r}> has no alt text"
           for name, page in sorted(pages.items()) for img in page.images
           if not img.get("alt", "").strip()]
    assert not bad, "\n".join(bad)


def _reference_tool():
    spec = importlib.util.spec_from_file_location(
        "docs_reference", os.path.join(ROOT, "scripts", "docs_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_a_reference_entry():
    problems = _reference_tool().audit(DOCS, strict_args=FULLY_DESCRIBED)
    assert not problems, "\n".join(problems)


def test_reference_entries_show_arguments_and_errors(site):
    _out, pages = site
    ids = pages["reference/caffe2/index.html"].ids
    for anchor in ("data_workers.init_data_input_workers", "data_workers.GlobalCoordinator.stop",
                   "data_workers.InputStats"):
        assert anchor in ids, anchor
    path = os.path.join(site[0], "reference", "caffe2", "index.html")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for must in ("batch_columns", "dont_rebatch", "max_buffered_batches", "Raises", "hint"):
        assert must in text, must
    # What the reference renders is for users too: no maintainer's NOTE, private module
    # or private constant (scripts/docs_reference.py drops such pointers).
    bad = []
    for page in glob.glob(os.path.join(site[0], "reference", "*", "index.html")):
        body = re.sub(r"<[^>]+>", "", _read(page).split("<article", 1)[-1])
        for m in re.finditer(r"NOTE\s+\[|\b_(?:core|workers|caffe2|torch)/|data_workers\._\w+"
                             r"|STOP_TIMEOUT_SECS", body):
            bad.append(f"{os.path.relpath(page, site[0])}: {body[max(0, m.start() - 60):m.end() + 20]!r}")
    assert not bad, "\n".join(bad)


def _runnable_blocks(markdown: str) -> List[str]:
    return re.findall(r"^<!-- runnable -->\n```python\n(.*?)^```", markdown, re.S | re.M)


def test_runnable_snippets_of_the_guides_run(tmp_path):
    """Each page's ``<!-- runnable -->`` blocks run in order, in one fresh interpreter."""
    jobs = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    for page in [README] + sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True)):
        blocks = _runnable_blocks(_read(page))
        if not blocks:
            continue
        script = tmp_path / (os.path.relpath(page, ROOT).replace(os.sep, "_") + ".py")
        script.write_text("\n\n".join(blocks))
        jobs.append((page, subprocess.Popen(
            [sys.executable, str(script)], cwd=str(tmp_path), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    assert len(jobs) >= 3, "the guides should show runnable code"
    failures = []
    deadline = time.monotonic() + 90
    for page, proc in jobs:
        try:
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            failures.append(f"{page}: timed out\n{output[-2000:]}")
            continue
        if proc.returncode != 0:
            failures.append(f"{page}: exit {proc.returncode}\n{output[-2000:]}")
    assert not failures, "\n\n".join(failures)


def test_every_python_block_of_the_docs_parses():
    """Blocks that cannot run here (a cluster, a GPU, your data) must still be Python."""
    import ast

    bad = []
    pages = [README] + sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
    for page in pages:
        text = _read(page)
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            try:
                ast.parse(m.group(1))
            except SyntaxError as e:
                line = text.count("\n", 0, m.start()) + 1 + (e.lineno or 0)
                bad.append(f"{os.path.relpath(page, ROOT)}:{line}: {e.msg}")
    assert not bad, "\n".join(bad)


def test_every_guide_opens_with_what_the_reader_will_be_able_to_do():
    bad = []
    for page in glob.glob(os.path.join(DOCS, "*.md")):
        name = os.path.basename(page)
        if name in EVIDENCE_PAGES or name == "index.md":
            continue
        if "you will be able to" not in _read(page)[:700]:
            bad.append(name)
    assert not bad, f"guides that do not open with what the reader will be able to do: {bad}"


#: What a user page must not hold: test ids, goals and verdicts, lab notes, private modules.
_NOT_FOR_USERS = [
    (r"tests/test_\w+|::test_\w+|`test_\w+", "a test id"),
    (r"\bPASS\b|\bMISS\b", "a goal verdict"),
    (r"scratch script|the attack it answers|^For tests,", "lab notes"),
    (r"data_workers\._\w+|`_(?:core|workers|caffe2|torch)/|_compat\.py", "a private module"),
]


def test_user_pages_hold_no_evidence_or_internals():
    bad = []
    pages = [README] + [p for p in glob.glob(os.path.join(DOCS, "*.md"))
                        if os.path.basename(p) not in EVIDENCE_PAGES]
    for page in pages:
        text = _read(page)
        for pattern, what in _NOT_FOR_USERS:
            for m in re.finditer(pattern, text, re.M):
                line = text.count("\n", 0, m.start()) + 1
                bad.append(f"{os.path.relpath(page, ROOT)}:{line}: {what}: {m.group(0)!r}")
    assert not bad, "\n".join(bad)


def test_benchmark_tables_are_generated_from_the_committed_json():
    result = subprocess.run([sys.executable, "-m", "benchmarks.doc_tables", "--check"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_is_a_newcomers_path():
    text = _read(README)
    assert len(text.splitlines()) < 250
    opening = "\n".join(text.splitlines()[:60])
    for must in ("make demo", "make test", "init_data_input_workers"):
        assert must in opening, must
    for must in ("docs/benchmarks.png", "## Limits"):
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
