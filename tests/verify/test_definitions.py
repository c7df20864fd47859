"""Each metric is defined once (verify/definitions.py): the reports show those definitions and
docs/reference/metrics.md is generated from them."""

from pathlib import Path

from nhle_pipeline.pipeline.metrics_reference import markdown_table, with_table
from nhle_pipeline.verify.definitions import DEFINITIONS, REPRESENTATION_TERMS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "metrics.md"


def test_the_committed_metrics_page_is_the_codes():
    page = PAGE.read_text(encoding="utf-8")
    assert with_table(page) == page, (
        "docs/reference/metrics.md's table differs from verify/definitions.py: run "
        "`python -m nhle_pipeline.pipeline.metrics_reference --write docs/reference/metrics.md`")


def test_every_term_is_defined_once_and_shown_in_the_table():
    names = [n for n, _ in DEFINITIONS]
    assert len(names) == len(set(names)) and set(REPRESENTATION_TERMS) <= set(names)
    assert all(text.strip().endswith(".") for _, text in DEFINITIONS)
    rows = [line.split(" | ")[0].removeprefix("| ") for line in markdown_table().splitlines() if line.startswith("| ")]
    assert rows[2:] == names  # after the header and its rule


def test_a_report_shows_the_audits_terms_only_where_the_release_has_the_audit():
    from nhle_pipeline.pipeline.release.report_view import definitions_for
    from tests.manifests import sample_manifest

    m = sample_manifest()
    shown = [n for n, _ in definitions_for(m)]
    has_audit = m.metrics.representation is not None
    assert set(REPRESENTATION_TERMS) <= set(shown) if has_audit else not set(REPRESENTATION_TERMS) & set(shown)
    assert ("relearning" in shown) == (m.metrics.evidence.relearn is not None)
    bare = m.model_copy(update={"metrics": m.metrics.model_copy(update={"representation": None})})
    assert not set(REPRESENTATION_TERMS) & {n for n, _ in definitions_for(bare)}
