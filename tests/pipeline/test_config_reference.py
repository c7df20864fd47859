"""The config is described once, in pipeline/config.py: the reference table and the starter file
are generated from it, and the committed table is today's."""

from pathlib import Path

import yaml

from nhle_pipeline.pipeline.config import Config, parse_config
from nhle_pipeline.pipeline.config_reference import (
    Field,
    Section,
    markdown_table,
    starter_yaml,
    walk,
    with_table,
)
from nhle_pipeline.pipeline.models import list_models

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "config.md"


def _leaves(doc: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in doc.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in {"model.kwargs"}:
            out |= _leaves(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def test_the_committed_reference_table_is_the_codes():
    page = PAGE.read_text(encoding="utf-8")
    assert with_table(page) == page, (
        "docs/reference/config.md's table differs from pipeline/config.py: run "
        "`python -m nhle_pipeline.pipeline.config_reference --write docs/reference/config.md`")


def test_every_field_is_described_and_every_section_says_what_it_is():
    items = walk()
    fields = [f for f in items if isinstance(f, Field)]
    assert len(fields) > 60  # the whole config, nested sections included
    assert [f.key for f in fields if not f.description.strip()] == []
    assert [s.key for s in items if isinstance(s, Section) and not s.doc] == []
    # one row per field in the table, in the file's order
    rows = [line.split("|")[1].strip().strip("`") for line in markdown_table().splitlines()[4:-2]]
    assert rows == [f.key for f in fields]


def test_the_starter_holds_every_field_with_its_default():
    text = starter_yaml()
    doc = yaml.safe_load(text)
    assert _leaves(doc) == {f.key for f in walk() if isinstance(f, Field)}
    cfg = parse_config(doc)
    # every field the starter shows equals the code's default (the required ones take its examples)
    defaults = parse_config({"model": cfg.model.model_dump(), "forget": cfg.forget.model_dump()})
    assert cfg.model_dump() == defaults.model_dump()
    assert cfg.tracking == Config.model_fields["tracking"].default_factory()
    # every field has its comment line above it
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#") and not line.endswith(":"):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above {line!r}"


def test_the_arch_field_names_every_registry_model():
    arch = next(f for f in walk() if isinstance(f, Field) and f.key == "model.arch")
    assert [name for name in list_models() if f"`{name}`" not in arch.description] == []
