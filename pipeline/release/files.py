"""The names of a release's files, in one place (docs/reference/manifest.md describes each).

    releases/<name>/
        model.onnx            the unlearned model, CWM baked into its head(s)
        model.safetensors     the unlearned PyTorch weights (fp32 releases)
        manifest.json         every digest, metric, gate and setting, sealed
        report.md, report.html
        release.sig           the signature, when the release is signed (not in the manifest)
        triton/<name>/        the Triton model repository
    NOT_RELEASED              only in a failed run's staging folder
"""

MODEL = "model.onnx"
# The unlearned PyTorch weights (safetensors) beside model.onnx: users go on training their
# unlearned model from them; verify checks they give model.onnx's logits.
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORTS = (REPORT_MD, REPORT_HTML)
SIGNATURE = "release.sig"
TRITON_DIR = "triton"
NOT_RELEASED = "NOT_RELEASED"  # the marker of a failed run's staging folder
SCRATCH = ".work"  # inside staging; removed before release (e.g. the original's ONNX)
