"""The files of a release, written into its staging folder: the two reports, then the
manifest with the digest of every other file (sealed later, at publication)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from nhle_pipeline.pipeline.release.files import MANIFEST, REPORT_HTML, REPORT_MD
from nhle_pipeline.pipeline.release.manifest import (
    FileDigest,
    Manifest,
    file_digests,
    write_manifest,
)
from nhle_pipeline.pipeline.release.report_html import write_html_report
from nhle_pipeline.pipeline.release.report_md import write_report
from nhle_pipeline.pipeline.release.report_view import created_at


def write_release_files(
    staging: Path, manifest: Manifest, features: dict[str, tuple[np.ndarray, np.ndarray]], stage: str = "release"
) -> None:
    """report.md, report.html, then manifest.json listing the digests of everything else.

    The reports list (and show the model's sha256 from) the digests of every file written
    before them; the manifest then lists the reports too, and the time this took as
    ``timings_s[stage]`` (the reports, written before, cannot show it)."""
    t0 = time.perf_counter()
    reports = (REPORT_MD, REPORT_HTML)
    manifest.files = {k: FileDigest.model_validate(v)
                      for k, v in file_digests(staging, exclude=(MANIFEST, *reports)).items()}
    created = created_at()
    write_report(staging / REPORT_MD, manifest, created)
    write_html_report(staging / REPORT_HTML, manifest, features, created)
    manifest.files = {k: FileDigest.model_validate(v) for k, v in file_digests(staging).items()}
    manifest.timings_s = {**manifest.timings_s, stage: round(time.perf_counter() - t0, 3)}
    write_manifest(staging / MANIFEST, manifest)
