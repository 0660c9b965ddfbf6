"""Writes the benchmark tables of the docs from the committed JSON files in ``docs/``.

Usage::

    .venv/bin/python -m benchmarks.doc_tables           # rewrite the generated blocks
    .venv/bin/python -m benchmarks.doc_tables --check   # exit 1 if any block is stale

(``make docs-tables``; ``make docs`` runs it before building the site, and
``tests/test_docs.py`` runs the check; ``make bench`` runs it after measuring.) The
upstream-vs-ours tables come from the run's cases through ``benchmarks.run.summarize``,
the same summaries ``benchmarks.run`` draws the chart (``docs/benchmarks.png``) from;
the peers tables from ``docs/peers.json`` through ``benchmarks.peers.markdown`` (the
chart ``docs/peers.png`` is drawn from the same file); the torch Loader table from
``docs/torch_loader.json`` (the Caffe2 leg: torch 1.10.2) and, beside it,
``docs/torch_loader_torch2.json`` (the modern leg: torch 2.x) through
``benchmarks.torch_loader.markdown_legs``. A figure in the docs is never typed by hand.

Each generated block sits between two markers in a Markdown file::

    <!-- generated:NAME begin ... -->
    ...
    <!-- generated:NAME end -->
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # `python benchmarks/doc_tables.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _harness as h  # noqa: E402
from benchmarks import run  # noqa: E402

JSON_PATH = os.path.join(h.REPO_ROOT, "docs", "benchmarks.json")
#: The process-workers-against-peers run (``python -m benchmarks.run --only peers``).
PEERS_JSON_PATH = os.path.join(h.REPO_ROOT, "docs", "peers.json")
#: The torch Loader against DataLoader run (``benchmarks.torch_loader``).
TORCH_JSON_PATH = os.path.join(h.REPO_ROOT, "docs", "torch_loader.json")
#: The same run on the modern leg (torch 2.x), shown beside it when present.
TORCH2_JSON_PATH = os.path.join(h.REPO_ROOT, "docs", "torch_loader_torch2.json")
Doc = Dict[str, Any]  # a benchmarks.json document


def load(path: str = JSON_PATH) -> Tuple[Doc, run.Summaries]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    info, results = doc["machine"], doc["cases"]
    present = {r["workload"] for r in results}
    only = [n for n, m in run.WORKLOADS.items() if m.__name__.rsplit(".", 1)[1] in present]
    return doc, run.summarize(only, results, info.get("gil_calibration"))


def run_line(doc: Doc) -> str:
    info = doc["machine"]
    repeats = sorted({r.get("repeats", 1) for r in h.merge_repeats(doc["cases"])})
    loads = [r["foreign_load"] for r in doc["cases"] if isinstance(r.get("foreign_load"), float)]
    load = f"{100 * min(loads):.0f}-{100 * max(loads):.0f}%" if loads else "not measured"
    return (f"Run of {info['date_utc'].replace('T', ' ').rstrip('Z')} UTC, {info['mode']} mode "
            f"({doc.get('elapsed_s', 0):.0f} s): {info['cpu_count']} cores ({info.get('cpu', '?')}), "
            f"{info.get('memory_gib', '?')} GiB, Python {info['python']}, numpy {info['numpy']}. "
            f"Each row is the median over {'/'.join(map(str, repeats))} fresh-process repeats "
            f"of its configuration; other programs used {load} of the CPUs during the cases.")


def full_block(doc: Doc, summaries: run.Summaries) -> str:
    """For docs/benchmarks.md: the run, every workload's table with its notes, the targets."""
    parts = [run_line(doc)]
    for _, _, s in summaries:
        table = f"**{s.title}**\n\n" + h.format_markdown(s.headers, s.rows)
        if s.notes:
            table += "\n\n" + "\n".join(f"- {n}" for n in s.notes)
        parts.append(table)
    targets = run.targets_markdown(summaries)
    if targets:
        parts.append("**Targets** (ratios measured in this run; reported, never asserted)\n\n"
                     + targets)
    return "\n\n".join(parts) + "\n"


def _spread_of(values: Sequence[float], fmt: str) -> str:
    """``median (min-max)`` of the repeats, or the one value."""
    import statistics

    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def claims_block(doc: Doc, peer_doc: Doc) -> str:
    """For the README: what a user gets, each figure with its spread and the machine.

    No goals, no verdicts: those belong to the method page.
    """
    from benchmarks import peers

    by_config: Dict[str, List[Any]] = {}
    for r in doc["cases"]:
        if r.get("complete", True) and "error" not in r:
            by_config.setdefault(r["config_key"], []).append(r)

    def values(key: str, fn: Callable[[Any], Optional[float]]) -> List[float]:
        out = [fn(r) for r in by_config.get(key, [])]
        return [v for v in out if v is not None]

    def rate(r: Any) -> Optional[float]:
        return r.get("batches_per_s")

    def gbs(r: Any) -> Optional[float]:
        b = r.get("batches_per_s")
        return None if b is None else b * r["bytes_per_batch"] / 1e9

    def first_ms(r: Any) -> Optional[float]:
        v = r.get("first_batch_s")
        return None if v is None else 1000 * v

    rows = [("small chunks of 1-64 rows, batches/s", "small_chunks", rate, "{:,.0f}"),
            ("19.3 MB batches, GB/s into the net", "large_batches", gbs, "{:.1f}"),
            ("GIL-bound fetcher (~5 ms of Python per batch), batches/s", "gil_bound", rate,
             "{:,.0f}"),
            ("`start()` to the first batch, ms", "startup", first_ms, "{:,.0f}")]
    info = doc["machine"]
    out = [f"Measured {info['date_utc'][:10]} on a {info['cpu_count']}-core {info.get('cpu', '?')} "
           f"VM ({info.get('memory_gib', '?')} GiB, Python {info['python']}), 2 workers on "
           "each side; median (min-max) over fresh-process repeats.", "",
           "| workload | upstream, 2 threads | data_workers, 2 threads "
           "| data_workers, 2 processes |", "| --- | ---: | ---: | ---: |"]
    for title, workload, fn, fmt in rows:
        cells = [_spread_of(values(f"{workload}/{side}/{label}", fn), fmt)
                 for side, label in (("upstream", "2 threads"), ("ours", "2 threads"),
                                     ("ours", "2 processes"))]
        out.append(f"| {title} | " + " | ".join(cells) + " |")
    results = peer_doc["results"]
    out += ["", f"Against torch's `DataLoader` (2 worker processes, each batch fed with "
            f"`FeedBlob`), {peer_doc.get('date_utc', '?')[:10]}, {peer_doc.get('machine', '?')}, "
            f"{peer_doc['repeats']} repeats; batches/s, median (min-max):", "",
            "| workload | data_workers, 2 processes | data_workers, 2 threads "
            "| DataLoader + FeedBlob |", "| --- | ---: | ---: | ---: |"]
    titles = {"one_sample": "one sample per call", "gil_bound": "GIL-bound (~10 ms of Python)",
              "big_batches": "whole 19.3 MB batches"}
    for workload, cases in results.items():
        cells = []
        for case in ("ours-process", "ours-thread", "dataloader"):
            st = peers._stats(cases.get(case, []))
            cells.append("-" if st is None else
                         f"{st[0]:,.0f} ({st[1]:,.0f}-{st[2]:,.0f})")
        out.append(f"| {titles.get(workload, workload)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# file (relative to the repository) -> block name -> renderer
BLOCKS: Dict[str, Dict[str, Callable[[Doc, run.Summaries], str]]] = {
    os.path.join("docs", "benchmarks.md"): {"benchmarks-tables": full_block},
}

_BLOCK_RE = r"(<!-- generated:{name} begin[^>]*-->\n)(.*?)(<!-- generated:{name} end -->)"


def render_file(text: str, path: str, blocks: Dict[str, str]) -> str:
    for name, body in blocks.items():
        pattern = re.compile(_BLOCK_RE.format(name=re.escape(name)), re.S)
        if len(pattern.findall(text)) != 1:
            raise SystemExit(f"{path}: needs exactly one generated:{name} begin/end marker pair")
        text = pattern.sub(lambda m: m.group(1) + "\n" + body + "\n" + m.group(3), text)
    return text


#: Blocks rendered from docs/peers.json by ``benchmarks.peers.markdown``: the
#: file, the block, and whether it gets every workload's table (with the trainer's
#: CPU) or one table of batches/s; both end with the goals.
PEER_BLOCKS: Dict[str, Tuple[str, bool]] = {
    os.path.join("docs", "benchmarks.md"): ("peers-tables", True),
}
#: The README's user-facing figures, from both runs (``claims_block``).
CLAIMS_BLOCKS: Dict[str, str] = {"README.md": "readme-figures",
                                  os.path.join("docs", "workers.md"): "worker-figures"}
#: Blocks rendered from docs/torch_loader.json by ``benchmarks.torch_loader.markdown``.
#: Of those, the pages that also show the goal and its verdict.
TORCH_GOAL_PAGES = {os.path.join("docs", "benchmarks.md")}
TORCH_BLOCKS: Dict[str, str] = {
    os.path.join("docs", "benchmarks.md"): "torch-loader-goals",
    os.path.join("docs", "torch.md"): "torch-loader-tables",
    "README.md": "torch-loader-summary",
}


def _read_json(path: str) -> Doc:
    with open(path, encoding="utf-8") as f:
        doc: Doc = json.load(f)
    return doc


def stale_files(write: bool, json_path: str = JSON_PATH, root: str = h.REPO_ROOT,
                peers_path: str = PEERS_JSON_PATH,
                torch_path: str = TORCH_JSON_PATH,
                torch2_path: str = TORCH2_JSON_PATH) -> List[str]:
    """Renders every block; returns the files whose blocks differ (rewritten if ``write``)."""
    from benchmarks import peers, torch_loader

    doc, summaries = load(json_path)
    peer_doc, torch_doc = _read_json(peers_path), _read_json(torch_path)
    torch_docs = [torch_doc] + ([_read_json(torch2_path)] if os.path.exists(torch2_path) else [])
    stale = []
    for rel in dict.fromkeys([*BLOCKS, *TORCH_BLOCKS, *CLAIMS_BLOCKS]):
        path = os.path.join(root, rel)
        with open(path, encoding="utf-8") as f:
            old = f.read()
        blocks = {name: fn(doc, summaries) for name, fn in BLOCKS.get(rel, {}).items()}
        if rel in CLAIMS_BLOCKS:
            blocks[CLAIMS_BLOCKS[rel]] = claims_block(doc, peer_doc)
        if rel in PEER_BLOCKS:
            name, tables = PEER_BLOCKS[rel]
            blocks[name] = peers.markdown(peer_doc, tables)
        if rel in TORCH_BLOCKS:
            # Goals and verdicts only on the evidence pages (docs/benchmarks.md).
            goals = rel in TORCH_GOAL_PAGES
            blocks[TORCH_BLOCKS[rel]] = (torch_loader.markdown(torch_doc) if len(torch_docs) == 1
                                         else torch_loader.markdown_legs(torch_docs, goals))
        new = render_file(old, rel, blocks)
        if new != old:
            stale.append(rel)
            if write:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    return stale


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.doc_tables",
                                description="Benchmark tables of the docs, from the JSON files in docs/.")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if a generated block is out of date")
    args = p.parse_args(argv)
    stale = stale_files(write=not args.check)
    if args.check and stale:
        print("out of date (run `make docs-tables`): " + ", ".join(stale), file=sys.stderr)
        return 1
    if stale:
        print("rewrote the generated tables in " + ", ".join(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
