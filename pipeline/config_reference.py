"""The config's documentation, generated from its pydantic model (written once, in config.py).

Every field's ``description`` (and, where the value alone does not say it, its shown default)
makes the reference table of docs/reference/config.md and the commented starter file that
``pipeline init`` writes. A test fails when the committed table drifts from the code:

    python -m nhle_pipeline.pipeline.config_reference --write docs/reference/config.md
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from nhle_pipeline.pipeline.config import Config
from nhle_pipeline.pipeline.docs_tables import replace_between, write_or_print

TABLE_START = "<!-- config table: generated from pipeline/config.py by `python -m nhle_pipeline.pipeline.config_reference --write docs/reference/config.md` -->"
TABLE_END = "<!-- end of config table -->"
STARTER_HEADER = """\
# Starter config for `pipeline run` (written by `pipeline init`).
# Every field shows its default, but for the required ones (an example value is given).
# Relative paths are resolved from the directory you run `pipeline` in.
# The fields, with links: docs/reference/config.md.
"""
COMMENT_WIDTH = 96
_LINK = re.compile(r"\[([^\]]+)\]\([^)]+\)")


@dataclass(frozen=True)
class Field:
    """One leaf of the config: its dotted key, its default (or that it is required) and its text."""

    key: str
    depth: int
    required: bool
    default: Any
    shown_default: str | None
    description: str
    example: Any


@dataclass(frozen=True)
class Section:
    """A nested section (``model``, ``unlearn.nhle``): its key and its class's docstring."""

    key: str
    depth: int
    doc: str


def _section_class(info: FieldInfo) -> type[BaseModel] | None:
    """The section model a field holds (a sub-mapping of the config), or None for a leaf."""
    if isinstance(info.default_factory, type) and issubclass(info.default_factory, BaseModel):
        return info.default_factory
    ann = info.annotation
    if info.is_required() and isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def walk(model: type[BaseModel] = Config, prefix: str = "", depth: int = 0) -> list[Field | Section]:
    """Every section and leaf field of ``model``, in declaration order (the order of the file)."""
    out: list[Field | Section] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _section_class(info)
        if sub is not None:
            doc = (sub.__dict__.get("__doc__") or "").strip()
            out.append(Section(key, depth, " ".join(doc.split())))
            out.extend(walk(sub, key + ".", depth + 1))
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if info.default_factory is not None:
            default = info.default_factory()
        else:
            default = None if info.default is PydanticUndefined else info.default
        out.append(Field(key=key, depth=depth, required=info.is_required(), default=default,
                         shown_default=extra.get("shown_default"), description=info.description or "",
                         example=info.examples[0] if info.examples else None))
    return out


def _yaml_value(value: Any) -> str:
    """``value`` as one line of YAML flow style (``null``, ``[0]``, ``{}``, ``auto``)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _shown_default(f: Field) -> str:
    if f.required:
        return "required"
    if f.shown_default is not None:
        return f.shown_default
    return f"`{_yaml_value(f.default)}`"


def markdown_table() -> str:
    """The reference table of every leaf field (docs/reference/config.md), with its markers."""
    rows = ["| field | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{f.key}` | {_shown_default(f)} | {f.description} |"
             for f in walk() if isinstance(f, Field)]
    return "\n".join([TABLE_START, "", *rows, "", TABLE_END])


def _comment(text: str, indent: str) -> list[str]:
    plain = _LINK.sub(r"\1", text).replace("\\|", "|")
    return [f"{indent}# {line}" for line in textwrap.wrap(plain, COMMENT_WIDTH - len(indent) - 2)]


def starter_yaml() -> str:
    """The commented starter config: every field with its default (an example where required)."""
    lines = [STARTER_HEADER.rstrip("\n")]
    for item in walk():
        indent = "  " * item.depth
        if isinstance(item, Section):
            lines += [*([] if lines[-1].endswith(":") else [""]), *(_comment(item.doc, indent) if item.doc else []),
                      f"{indent}{item.key.rsplit('.', 1)[-1]}:"]
            continue
        text = ("required: " if item.required else "") + item.description
        if not item.required and item.example is not None:
            text += f" (an example; default: {_yaml_value(item.default)})"
        lines += [*([] if lines[-1].endswith(":") else [""]), *_comment(text, indent)]
        value = item.example if item.example is not None else item.default
        lines.append(f"{indent}{item.key.rsplit('.', 1)[-1]}: {_yaml_value(value)}")
    return "\n".join(lines) + "\n"


def with_table(doc: str) -> str:
    """``doc`` (docs/reference/config.md's text) with its generated table replaced by today's."""
    return replace_between(doc, TABLE_START, TABLE_END, markdown_table())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, metavar="PAGE", help="replace the table in PAGE (docs/reference/config.md)")
    parser.add_argument("--starter", action="store_true", help="print the starter config instead of the table")
    args = parser.parse_args(argv)
    if args.starter:
        sys.stdout.write(starter_yaml())
        return 0
    return write_or_print(args.write, markdown_table, with_table)


if __name__ == "__main__":
    raise SystemExit(main())
