"""Griffe extension for the API reference: read trl_pro's docstrings, written in TRL's (Hugging Face doc-builder)
style, as Google-style docstrings, without changing the source.

The docstrings follow TRL's conventions, which Google-style parsing does not know:

- `Parameters:` blocks split into groups by a `> Parameters that control ...` line: each group becomes a section
  of its own, titled by that line (`Parameters: Parameters that control ...`);
- items typed in the doc-builder way, `name (`float`, *optional*, defaults to `0.05`):`: the type and default are
  taken from the signature instead (the dataclass fields, the `__init__` annotations), so that the table shows real
  types and defaults rather than the doc-builder markup;
- one item for several names (`callbacks, optimizers:`): one item per name, with the same description;
- `[`PROTrainer`]` / `[`~transformers.TrainingArguments`]` cross-references: a link to the API page for the names
  given in the `crossrefs` option (an autorefs identifier or a URL), inline code otherwise;
- `> [!NOTE]` blocks: a Google-style `Note:` admonition.

Everything else (the warnings about unknown parameters, missing docstrings, broken references) is left to griffe
and mkdocstrings, so that `mkdocs build --strict` still fails on them.
"""

from __future__ import annotations

import re
from typing import Any

import griffe


_PARAMS_HEADER = re.compile(r"^(?P<indent>\s*)(?:Parameters|Args|Arguments):\s*$")
_GROUP_LINE = re.compile(r"^(?P<indent>\s+)>\s+(?P<title>\S.*?)\s*$")
_TYPED_ITEM = re.compile(r"^(?P<indent>\s+)(?P<name>\w+)\s+\((?P<type>.*)\)\s*:\s*(?P<rest>.*)$")
_MULTI_ITEM = re.compile(r"^(?P<indent>\s+)(?P<names>\w+(?:\s*,\s*\w+)+)\s*:\s*(?P<rest>.*)$")
_CALLOUT_START = re.compile(r"^(?P<indent>\s*)>\s*\[!(?P<kind>[A-Z]+)\]\s*$")
_CROSSREF = re.compile(r"\[`(?P<tilde>~?)(?P<path>[\w.]+)`\](?![\[(])")
_CALLOUT_TITLES = {"NOTE": "Note", "TIP": "Tip", "IMPORTANT": "Important", "WARNING": "Warning", "CAUTION": "Caution"}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _convert_crossrefs(text: str, crossrefs: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        path = match["path"]
        shown = path.rsplit(".", 1)[-1] if match["tilde"] else path
        target = crossrefs.get(path) or crossrefs.get(path.rsplit(".", 1)[-1])
        if target is None:
            return f"`{shown}`"
        if target.startswith(("http://", "https://")):
            return f"[`{shown}`]({target})"
        return f"[`{shown}`][{target}]"

    return _CROSSREF.sub(replace, text)


def _convert_callouts(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _CALLOUT_START.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match["indent"]
        if out and out[-1].strip():
            out.append("")
        out.append(f"{indent}{_CALLOUT_TITLES.get(match['kind'], match['kind'].title())}:")
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].lstrip().startswith(">"):
            body.append(lines[i].lstrip()[1:].removeprefix(" "))
            i += 1
        for j, text in enumerate(body):
            # Markdown needs a blank line between a paragraph and the list that follows it
            if (
                text.startswith(("- ", "* "))
                and j > 0
                and body[j - 1].strip()
                and not body[j - 1].startswith(("- ", "* "))
            ):
                out.append("")
            out.append(f"{indent}    {text}" if text else "")
    return out


def _convert_parameters(lines: list[str]) -> list[str]:
    out: list[str] = []
    header_indent: int | None = None  # indentation of the current `Parameters:` header, None outside one
    header_index = -1  # index in `out` of that header
    item_indent: int | None = None
    for line in lines:
        header = _PARAMS_HEADER.match(line)
        if header:
            header_indent, item_indent = len(header["indent"]), None
            header_index = len(out)
            out.append(line)
            continue
        if header_indent is not None and line.strip() and _indent(line) <= header_indent:
            header_indent = item_indent = None  # the block ended
        if header_indent is None:
            out.append(line)
            continue
        if not line.strip():
            # No blank line directly below a section header (Google style would skip the section)
            if len(out) - 1 != header_index:
                out.append(line)
            continue
        if item_indent is None:
            item_indent = _indent(line)
        group = _GROUP_LINE.match(line)
        if group and _indent(line) == item_indent:
            title = f"{' ' * header_indent}Parameters: {group['title'].replace('`', '')}"
            if len(out) - 1 == header_index and _PARAMS_HEADER.match(out[header_index]):
                out[header_index] = title  # a group right below the header titles it
            else:
                while out and not out[-1].strip():
                    out.pop()
                out.extend(["", title])
                header_index = len(out) - 1
            continue
        if _indent(line) == item_indent:
            typed = _TYPED_ITEM.match(line)
            if typed:
                out.append(f"{typed['indent']}{typed['name']}: {typed['rest']}".rstrip())
                continue
            multi = _MULTI_ITEM.match(line)
            if multi:
                names = [name.strip() for name in multi["names"].split(",")]
                out.append(f"{multi['indent']}{names[0]}: {multi['rest']}".rstrip())
                # The description lines that follow are copied for the other names when the item ends
                out.append(_PendingCopies(names[1:]))
                continue
        out.append(line)
    return _expand_copies(out)


class _PendingCopies:
    """Marker after an item line: repeat that item for `names`, once its description lines are known."""

    def __init__(self, names: list[str]):
        self.names = names


def _expand_copies(lines: list) -> list[str]:
    out: list[str] = []
    pending: tuple[list[str], list[str], int] | None = None  # (names, item lines, item indent)

    def flush() -> None:
        # The copies go right after the item, before the blank lines that separate it from what follows
        blanks = 0
        while out and not out[-1].strip():
            out.pop()
            blanks += 1
        out.extend(_copies(pending))
        out.extend([""] * blanks)

    for line in lines:
        if isinstance(line, _PendingCopies):
            if pending:
                flush()
            pending = (line.names, [out[-1]], _indent(out[-1]))
            continue
        if pending and line.strip() and _indent(line) <= pending[2]:
            flush()
            pending = None
        elif pending and line.strip():
            pending[1].append(line)
        out.append(line)
    if pending:
        flush()
    return out


def _copies(entry: tuple[list[str], list[str], int]) -> list[str]:
    names, item_lines, indent = entry
    first, rest = item_lines[0], item_lines[1:]
    description = first.split(":", 1)[1]
    copies = []
    for name in names:
        copies.append(f"{' ' * indent}{name}:{description}")
        copies.extend(rest)
    return copies


def convert(text: str, crossrefs: dict[str, str]) -> str:
    """The docstring `text` (cleaned, as griffe stores it) in Google style."""
    lines = _convert_callouts(text.split("\n"))
    lines = _convert_parameters(lines)
    return _convert_crossrefs("\n".join(lines), crossrefs)


class HFDocstrings(griffe.Extension):
    """Convert every docstring of the loaded package once it is fully loaded."""

    def __init__(self, crossrefs: dict[str, str] | None = None):
        super().__init__()
        self.crossrefs = dict(crossrefs or {})

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._visit(pkg, set())

    def _visit(self, obj: griffe.Object, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value, self.crossrefs)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, seen)
