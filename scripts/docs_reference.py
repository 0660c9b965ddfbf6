"""The API reference, rendered from the package's own docstrings when the site is built.

A page under ``docs/reference/`` names what it documents with one line per object::

    ::: data_workers.init_data_input_workers

and this MkDocs hook (``hooks:`` in ``mkdocs.yml``) replaces each such line with the
object's heading (anchor: its dotted name), signature, description, arguments (type and
default from the signature, meaning from the docstring), return value, errors, usage
block and, for a class, its public methods, properties, fields and members.  Docstrings
are Google style (``Args:``, ``Returns:``, ``Raises:``, ``Usage:``/``Example:``);
reST literals (``code``, ``:class:`X```, a paragraph ending in ``::``) become Markdown.

Nothing is written to disk: the reference cannot go stale.  ``tests/test_docs.py`` uses
:func:`audit` to fail on a public name with no entry, or an entry whose arguments are
not all described.  ``python scripts/docs_reference.py`` prints that audit.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import re
import sys
import textwrap
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

#: The modules whose ``__all__`` the reference must cover.
PUBLIC_MODULES = (
    "data_workers",
    "data_workers.torch",
    "data_workers.sharding",
    "data_workers.ray_source",
    "data_workers.parallel_workers",
)

DIRECTIVE = re.compile(r"^::: ([\w.]+)[ \t]*$", re.M)
SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Returns|Yields|Raises|Attributes|Usage|Example|Examples"
    r"|Note|Notes|Warning):[ \t]*$")
ENTRY = re.compile(r"^(\*{0,2}[\w.]+(?:\s*,\s*[\w.]+)*)(?:\s*\(([^)]*)\))?:\s*(.*)$")


# -- resolving names ---------------------------------------------------------------


def resolve(path: str) -> Any:
    """The object a dotted name denotes: the longest importable module, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(f"cannot resolve {path!r}")


# -- docstring to Markdown ----------------------------------------------------------


def _inline(text: str) -> str:
    """reST inline markup to Markdown: ``x`` and :role:`x` become `x`."""
    text = re.sub(r":(?:class|meth|func|attr|data|exc|mod|obj):`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _prose(text: str) -> str:
    """Free text: inline markup, and each ``::`` paragraph's indented block fenced."""
    out: List[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(_inline(head) + ":")
            i += 1
            block: List[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            out += ["", "```python", textwrap.dedent("\n".join(block)), "```", ""]
            continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out).strip()


def _sections(doc: str) -> Tuple[str, Dict[str, str]]:
    """Split a dedented docstring into its free text and its named sections."""
    intro: List[str] = []
    sections: Dict[str, List[str]] = {}
    current: Optional[List[str]] = intro
    for line in doc.splitlines():
        m = SECTION.match(line)
        if m:
            name = {"Arguments": "Args", "Parameters": "Args", "Examples": "Example",
                    "Notes": "Note"}.get(m.group(1), m.group(1))
            current = sections.setdefault(name, [])
            continue
        if current is not intro and line.strip() and not line.startswith((" ", "\t")):
            current = intro  # a section ends at the first unindented line
        assert current is not None
        current.append(line)
    return "\n".join(intro).strip(), {k: textwrap.dedent("\n".join(v)).strip("\n")
                                      for k, v in sections.items()}


def _entries(body: str) -> List[Tuple[str, str, str]]:
    """``name (type): text`` entries of an Args/Raises/Attributes section."""
    entries: List[Tuple[str, str, List[str]]] = []
    for line in body.splitlines():
        m = ENTRY.match(line) if not line.startswith((" ", "\t")) else None
        if m:
            entries.append((m.group(1), m.group(2) or "", [m.group(3)]))
        elif entries:
            entries[-1][2].append(line)
    return [(name, typ, textwrap.dedent("\n".join(text[1:])).strip() and
             (text[0] + "\n" + textwrap.dedent("\n".join(text[1:]))).strip() or text[0].strip())
            for name, typ, text in entries]


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line.strip() else "" for line in text.splitlines())


def _annotation(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return re.sub(r"\btyping\.", "", text)


class _Shown:
    """A default value as the reader would write it (``LastBatchPolicy.DROP``, not its repr)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        if isinstance(self.value, enum.Enum):
            return f"{type(self.value).__name__}.{self.value.name}"
        return repr(self.value)


def _signature(obj: Any) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _params(sig: Optional[inspect.Signature]) -> Dict[str, inspect.Parameter]:
    if sig is None:
        return {}
    return {name: p for name, p in sig.parameters.items() if name not in ("self", "cls")}


def _args_markdown(body: str, params: Dict[str, inspect.Parameter]) -> str:
    items = []
    for names, typ, text in _entries(body):
        for name in re.split(r"\s*,\s*", names):
            bare = name.lstrip("*")
            p = params.get(bare)
            facts = []
            shown_type = typ or (_annotation(p.annotation) if p is not None else "")
            if shown_type:
                facts.append(f"`{shown_type}`")
            if p is not None and p.default is not inspect.Parameter.empty:
                facts.append(f"default `{_Shown(p.default)!r}`")
            if p is not None and p.kind is inspect.Parameter.KEYWORD_ONLY:
                facts.append("keyword-only")
            head = f"- **`{name}`**" + (f" ({', '.join(facts)})" if facts else "")
            first, _, rest = _prose(text).partition("\n")
            items.append(head + ": " + first + ("\n" + _indent(rest) if rest.strip() else ""))
    return "\n".join(items)


def _raises_markdown(body: str) -> str:
    items = []
    for names, _typ, text in _entries(body):
        first, _, rest = _prose(text).partition("\n")
        exc = ", ".join(f"`{n}`" for n in re.split(r"\s*,\s*", names))
        items.append(f"- {exc}: {first}" + ("\n" + _indent(rest) if rest.strip() else ""))
    return "\n".join(items)


def _code(body: str) -> str:
    lines = body.splitlines()
    if lines and lines[0].rstrip().endswith("::"):
        return _prose(body)
    return "```python\n" + body.strip("\n") + "\n```"


def _constants() -> Dict[str, str]:
    """Private constants docstrings name, as the value a user reads."""
    from data_workers._core import coordinator

    return {"STOP_TIMEOUT_SECS": f"{coordinator.STOP_TIMEOUT_SECS:g} s"}


def _for_users(doc: str) -> str:
    """The docstring without what is for maintainers: paragraphs citing a ``NOTE [``,
    parenthesised pointers to a NOTE or a private module, private constant names."""
    paragraphs = re.split(r"\n[ \t]*\n", doc)
    doc = "\n\n".join(p for p in paragraphs if not re.match(r"\s*(See\s+)?NOTE\s+\[", p))
    doc = re.sub(r"\s*\((?:see\s+)?NOTE\s+\[[^\]]*\][^)]*\)", "", doc)
    doc = re.sub(r"\s*\(``_\w+/[\w./]+``\)", "", doc)
    doc = re.sub(r"\s*(?:See|Implemented in)\s+``(?:data_workers/)?_\w+/[\w./]+``\.", "", doc)
    for name, value in _constants().items():
        doc = doc.replace(f"``{name}``", value)
    return doc


def docstring_markdown(doc: str, params: Dict[str, inspect.Parameter]) -> str:
    """A Google-style docstring as Markdown (arguments with type and default)."""
    intro, sections = _sections(_for_users(doc))
    parts = [_prose(intro)] if intro else []
    if "Args" in sections:
        parts.append("**Arguments**\n\n" + _args_markdown(sections["Args"], params))
    if "Attributes" in sections:
        parts.append("**Attributes**\n\n" + _args_markdown(sections["Attributes"], {}))
    for key, title in (("Returns", "Returns"), ("Yields", "Yields")):
        if key in sections:
            parts.append(f"**{title}**: " + _prose(textwrap.dedent(sections[key])))
    if "Raises" in sections:
        parts.append("**Raises**\n\n" + _raises_markdown(sections["Raises"]))
    for key in ("Note", "Warning"):
        if key in sections:
            parts.append(f"!!! {key.lower()}\n\n" + _indent(_prose(sections[key])))
    for key in ("Usage", "Example"):
        if key in sections:
            parts.append(f"**{key}**\n\n" + _code(sections[key]))
    return "\n\n".join(p for p in parts if p.strip())


# -- objects to Markdown ------------------------------------------------------------


def _field_docs(cls: type) -> Dict[str, str]:
    """``#:`` comments above a class's annotated fields (the Sphinx convention)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    docs: Dict[str, str] = {}
    pending: List[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        m = re.match(r"^\s+(\w+)\s*(?::|=)", line)
        if m and pending:
            docs[m.group(1)] = " ".join(pending)
        pending = []
    return docs


def _own_members(cls: type) -> Iterator[Tuple[str, Any]]:
    """Public methods and properties a class defines or inherits from this package."""
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("data_workers"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") and name not in ("__iter__", "__next__", "__len__",
                                                    "__enter__", "__exit__", "__call__"):
                continue
            if name in seen:
                continue
            seen.add(name)
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value) or isinstance(value, property):
                yield name, value


def _heading(level: int, label: str, anchor: str) -> str:
    # Underscores are dropped from a dunder's anchor: Markdown would read them as emphasis.
    anchor = re.sub(r"\.__(\w+)__$", r".\1", anchor)
    return f"{'#' * level} `{label}` {{ #{anchor} }}"


def _sig_block(name: str, obj: Any, sig: Optional[inspect.Signature]) -> str:
    if sig is None:
        return ""
    params = [p.replace(annotation=inspect.Parameter.empty,
                        default=p.default if p.default is inspect.Parameter.empty
                        else _Shown(p.default))
              for p in sig.parameters.values() if p.name not in ("self", "cls")]
    text = name + str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
    ret = _annotation(sig.return_annotation)
    if ret and not inspect.isclass(obj):
        text += " -> " + ret
    if len(text) > 88:  # one argument per line
        inner = text[len(name) + 1:text.rindex(")")]
        pieces = [p.strip() for p in re.split(r",\s(?![^\[\]()]*[\])])", inner)]
        text = name + "(\n" + "".join(f"    {p},\n" for p in pieces) + text[text.rindex(")"):]
    return f"```python\n{text}\n```"


def render(path: str, level: int = 2) -> str:
    """The Markdown entry of the object named ``path``."""
    obj = resolve(path)
    short = path.rsplit(".", 1)[-1]
    doc = inspect.getdoc(obj) or ""
    if inspect.ismodule(obj):
        return _prose(doc)
    if not inspect.isclass(obj) and not inspect.isroutine(obj):  # a constant or an instance
        if isinstance(obj, (int, float, str, bool, tuple)):
            shown = f"```python\n{short} = {obj!r}\n```"
        else:
            cls = type(obj)
            shown = f"An instance of `{cls.__name__}`."
        return "\n\n".join(filter(None, [
            _heading(level, short, path), shown, _prose(_field_docs_of_module(path))]))
    sig = _signature(obj)
    kind = "class " if inspect.isclass(obj) else ""
    parts = [_heading(level, short, path)]
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        bases = [b.__name__ for b in obj.__bases__]
        parts.append(f"*exception*, subclass of {', '.join(f'`{b}`' for b in bases)}")
    elif inspect.isclass(obj) and issubclass(obj, enum.Enum):
        parts.append("*enum*")
    elif inspect.isclass(obj):
        parts.append(_sig_block(kind + short, obj, sig))
    else:
        parts.append(_sig_block(short, obj, sig))
    params = _params(sig)
    if inspect.isclass(obj) and "__init__" in vars(obj):
        init_doc = inspect.getdoc(vars(obj)["__init__"])
        if init_doc and init_doc != inspect.getdoc(object.__init__):
            doc = doc + "\n\n" + init_doc
    parts.append(docstring_markdown(doc, params))
    if inspect.isclass(obj) and issubclass(obj, enum.Enum):
        parts.append("| member | value |\n|---|---|\n" + "\n".join(
            f"| `{m.name}` | `{m.value!r}` |" for m in obj))
    elif inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        fdocs = _field_docs(obj)
        parts.append("| field | type | meaning |\n|---|---|---|\n" + "\n".join(
            f"| `{f.name}` | `{_annotation(f.type)}` | {_inline(fdocs.get(f.name, ''))} |"
            for f in dataclasses.fields(obj)))
    elif inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
        fdocs = _field_docs(obj)
        parts.append("| field | meaning |\n|---|---|\n" + "\n".join(
            f"| `{f}` | {_inline(fdocs.get(f, ''))} |" for f in obj._fields))
    if inspect.isclass(obj) and not issubclass(obj, (BaseException, enum.Enum)):
        for name, member in _own_members(obj):
            if (inspect.getdoc(member) or "").strip():  # undocumented: an internal
                parts.append(_member(obj, path, name, member, level + 1))
    return "\n\n".join(p for p in parts if p.strip())


def _field_docs_of_module(path: str) -> str:
    module_name, _, name = path.rpartition(".")
    module = resolve(module_name)
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return ""
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(name)}\s*(:|=)", line):
            comments = []
            j = i - 1
            while j >= 0 and lines[j].startswith("#:"):
                comments.insert(0, lines[j][2:].strip())
                j -= 1
            return " ".join(comments)
    return ""


def _member(cls: type, path: str, name: str, member: Any, level: int) -> str:
    anchor = f"{path}.{name}"
    if isinstance(member, property):
        doc = inspect.getdoc(member) or ""
        return "\n\n".join(filter(None, [_heading(level, name, anchor), "*property*",
                                         docstring_markdown(doc, {})]))
    sig = _signature(member)
    doc = inspect.getdoc(member) or ""
    return "\n\n".join(filter(None, [_heading(level, name, anchor), _sig_block(name, member, sig),
                                     docstring_markdown(doc, _params(sig))]))


# -- the audit the docs test runs ---------------------------------------------------


def directives(docs_dir: str) -> List[str]:
    """Every ``::: name`` in the pages under ``docs_dir/reference``."""
    import glob
    import os

    names: List[str] = []
    for page in sorted(glob.glob(os.path.join(docs_dir, "reference", "*.md"))):
        with open(page, encoding="utf-8") as f:
            names += DIRECTIVE.findall(f.read())
    return names


def _documented_args(obj: Any) -> Optional[set]:
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and "__init__" in vars(obj):
        doc += "\n\n" + (inspect.getdoc(vars(obj)["__init__"]) or "")
    _intro, sections = _sections(doc)
    names = set()
    for entry, _typ, _text in _entries(sections.get("Args", "")):
        names |= {n.lstrip("*") for n in re.split(r"\s*,\s*", entry)}
    return names


def _undocumented(path: str, obj: Any) -> List[str]:
    problems = []
    if not (inspect.getdoc(obj) or "").strip():
        problems.append(f"{path}: no docstring")
    if inspect.isclass(obj) and issubclass(obj, (BaseException, enum.Enum)):
        return problems
    if inspect.isclass(obj) and (dataclasses.is_dataclass(obj) or hasattr(obj, "_fields")):
        return problems
    if callable(obj):
        wanted = set(_params(_signature(obj))) - {"args", "kwargs"}
        missing = sorted(wanted - (_documented_args(obj) or set()))
        if missing:
            problems.append(f"{path}: arguments not described under Args: {', '.join(missing)}")
    return problems


def audit(docs_dir: str, modules: Sequence[str] = PUBLIC_MODULES,
          strict_args: Sequence[str] = ()) -> List[str]:
    """What the reference lacks: public names with no entry, and entries that cannot render.

    ``strict_args`` lists entries (dotted names) whose every argument must be described
    under ``Args:``, and whose public methods must be too.
    """
    problems: List[str] = []
    entries = directives(docs_dir)
    rendered = {}
    for path in entries:
        try:
            rendered[path] = resolve(path)
            render(path)
        except Exception as e:  # the audit reports, the build would fail
            problems.append(f"{path}: cannot render: {type(e).__name__}: {e}")
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.ismodule(value):
                continue
            hit = f"{module_name}.{name}" in rendered or (
                (inspect.isclass(value) or inspect.isroutine(value))
                and any(v is value for v in rendered.values()))
            if not hit:
                problems.append(f"{module_name}.{name}: no entry in docs/reference/")
    for path in strict_args:
        obj = rendered.get(path)
        if obj is None:
            problems.append(f"{path}: no entry in docs/reference/")
            continue
        problems += _undocumented(path, obj)
        if inspect.isclass(obj):
            for name, member in _own_members(obj):
                if not isinstance(member, property) and not name.startswith("__"):
                    problems += _undocumented(f"{path}.{name}", member)
    return problems


# -- the MkDocs hook ----------------------------------------------------------------


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "reference/" not in page.file.src_uri:
        return markdown
    return DIRECTIVE.sub(lambda m: render(m.group(1)), markdown)


if __name__ == "__main__":
    import os

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = audit(os.path.join(here, "docs"))
    print("\n".join(found) or "the reference covers every public name")
    sys.exit(1 if found else 0)
