"""`pipeline verify`'s numeric re-check of a shipped file: measured with onnxruntime on the
deployer's data (at the layers the manifest names), the batch-size and shipped-weights checks,
the calibrated bias recomputed, the metrics and gates recomputed, and how far they are from the
manifest's (what ``reproduces_manifest`` gates)."""

from __future__ import annotations

import math
from pathlib import Path

from nhle_pipeline.pipeline.errors import TamperedReleaseError
from nhle_pipeline.pipeline.release.files import MANIFEST, MODEL, WEIGHTS
from nhle_pipeline.pipeline.release.manifest import (
    Manifest,
)
from nhle_pipeline.verify.gates import GateResult

# Recomputed metrics may differ from the recorded ones only by float noise
# (probe and attack fits are seeded); one test sample's worth is far above this.
REPRODUCE_ATOL = 1e-4



def check_batch_independence(release: Path, data, got, forget: list[int], atol: float, device: str) -> float:
    """The shipped model's logits at batch 1 and 3 are the measuring pass's (else it would be
    served another model than the one measured)."""
    import numpy as np

    from nhle_pipeline.verify.batch_independence import (
        BATCH_SIZES,
        batch_disagreement,
        batch_sample,
    )

    rows = batch_sample(got.test_idx, data.test.y, forget)
    images = np.concatenate(list(data.test.image_batches(got.test_idx[rows], len(rows))))
    worst = batch_disagreement(release / MODEL, images, got.test_logits[rows], device=device)
    if not worst <= atol:
        raise TamperedReleaseError(
            f"{release / MODEL}: its logits depend on the batch: max |Δ| {worst:.3g} between batches of "
            f"{', '.join(map(str, BATCH_SIZES))} and the measuring pass's on {len(rows)} test images (> {atol:g})")
    return worst



def check_release_weights(release: Path, cfg, data, manifest: Manifest, got, forget: list[int], atol: float,
                          notes: list[str]):
    """``model.safetensors`` (the unlearned PyTorch weights) gives ``model.onnx``'s logits: loaded
    into the architecture (registry and library ones; an import path runs code, so not here).
    Returns that PyTorch model (None: not checked)."""
    import numpy as np
    import torch

    from nhle_pipeline.pipeline.checkpoint import load_weights
    from nhle_pipeline.pipeline.errors import ModelError
    from nhle_pipeline.pipeline.loading import build_configured_model
    from nhle_pipeline.verify.batch_independence import batch_sample
    from nhle_pipeline.verify.metrics import parity_max_abs

    if ":" in cfg.model.arch and not library_arch(cfg.model.arch):
        notes.append(f"{WEIGHTS} not checked against model.onnx: model.arch '{cfg.model.arch}' imports code")
        return None
    model, _ = build_configured_model(cfg, data)
    try:
        load_weights(model, release / WEIGHTS, trust_pickle=False)
    except ModelError as e:
        raise TamperedReleaseError(f"{release / WEIGHTS}: not the weights of the release's architecture ({e})") from e
    from nhle_pipeline.export.onnx_file import load_onnx
    from nhle_pipeline.verify.graph import initializer_arrays

    # The heads' tensors are the exporter's initializers unchanged (other layers may be folded,
    # BatchNorm into its Conv): CWM's masked rows must be the same bits in both files.
    inits = initializer_arrays(load_onnx(release / MODEL))
    state = model.state_dict()
    for head in manifest.heads or [manifest.head]:
        for k in (f"{head}.weight", f"{head}.bias"):
            if k in state and k in inits and not np.array_equal(state[k].detach().cpu().numpy(), inits[k]):
                raise TamperedReleaseError(
                    f"{release / WEIGHTS}: tensor '{k}' is not model.onnx's initializer of that name")
    rows = batch_sample(got.test_idx, data.test.y, forget)
    x = np.concatenate(list(data.test.image_batches(got.test_idx[rows], len(rows))))
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x)).numpy()
    diff = parity_max_abs(logits.astype(np.float32), got.test_logits[rows].astype(np.float32))
    if not diff <= atol:
        raise TamperedReleaseError(f"{release / WEIGHTS}: its logits differ from model.onnx's by {diff:.3g} "
                                   f"(> {atol:g}) on {len(rows)} test images: not the weights of the shipped model")
    notes.append(f"{WEIGHTS} gives model.onnx's logits (max |Δ| {diff:.2g} on {len(rows)} test images)")
    return model


def relearn_again(cfg, data, manifest: Manifest, unlearned, source_weights: Path, notes: list[str]) -> dict:
    """The run's relearning evidence recomputed (``verify.evidence.relearn``): the shipped PyTorch
    weights (``unlearned``, tied to model.onnx by ``check_release_weights``) and the original from
    --source-weights, under the run's draws (its seed, its held-out forget samples excluded)."""
    from nhle_pipeline.pipeline.checkpoint import load_weights
    from nhle_pipeline.pipeline.data import select_forget_indices
    from nhle_pipeline.pipeline.loading import build_configured_model
    from nhle_pipeline.verify.relearn import relearn_block

    original, _ = build_configured_model(cfg, data)
    load_weights(original, source_weights, trust_pickle=False)
    forget = cfg.forget_ids
    exclude = select_forget_indices(data.train.y, forget, cfg.forget.samples_per_class, cfg.forget.selection, cfg.seed)
    block = relearn_block(original.eval(), unlearned.eval(), forget, cfg.model.num_classes, data.train.get, data.train.y,
                          data.test.get, data.test.y, exclude=exclude, seed=cfg.seed, head=manifest.head)
    recorded = manifest.metrics.evidence.relearn
    notes.append(f"relearning recomputed from {WEIGHTS} and --source-weights ({block['seconds']:.1f} s): steps "
                 f"x{block['steps_relative']:.2f} the original's (the manifest records x{recorded.steps_relative:.2f})")
    return block



def check_derived_batch_independence(release: Path, data, got, forget: list[int], device: str) -> None:
    """A reduced-precision derivative answers the same top-1 class at batch 1 and 3 as in the
    measuring pass (its logits may move by a quantization step: dynamic INT8 scales per batch)."""
    import numpy as np

    from nhle_pipeline.verify.batch_independence import BATCH_SIZES, batch_sample
    from nhle_pipeline.verify.ort import open_session, ort_logits

    rows = batch_sample(got.test_idx, data.test.y, forget)
    images = np.concatenate(list(data.test.image_batches(got.test_idx[rows], len(rows))))
    sess, _ = open_session(release / MODEL, device)
    want = got.test_logits[rows].argmax(1)
    for size in BATCH_SIZES:
        top1 = ort_logits(sess, images, size).argmax(1)
        if not np.array_equal(top1, want):
            raise TamperedReleaseError(
                f"{release / MODEL}: its top-1 class depends on the batch: {int((top1 != want).sum())} of "
                f"{len(rows)} test images change class at batch {size}")


# Gates whose recorded value verify recomputes the same way (the rest are producer-side or depend
# on the verifying machine's floats: parity, evidence_copy, batch_independent).
RECOMPUTED_GATES = ("acc_f", "acc_r_drop", "ratio_d_relative", "probe_auc", "mia_efficacy",
                    "cwm_in_graph", "output_masked")



def check_recorded_gates(release: Path, manifest: Manifest, gates: list[GateResult]) -> None:
    """Each recorded gate verify also computes must record the value verify finds."""
    got = {g.name: g.value for g in gates}
    for g in manifest.gates:
        if g.name not in RECOMPUTED_GATES or g.name not in got:
            continue
        a, b = g.value, got[g.name]
        if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
            same = a == b
        else:
            same = reproduction_drift([(float(a), float(b))]) <= REPRODUCE_ATOL
        if not same:
            raise TamperedReleaseError(f"{release / MANIFEST}: gate '{g.name}' records {a!r}, "
                                       f"verify recomputes {b!r}: the record is not this model's")



def reproduction_drift(pairs: list[tuple[float, float]]) -> float:
    """Largest |recomputed - recorded|; NaN on both sides agrees, NaN or inf on one side is inf."""
    worst = 0.0
    for a, b in pairs:
        a, b = float(a), float(b)
        if (math.isnan(a) and math.isnan(b)) or a == b:
            continue
        if not (math.isfinite(a) and math.isfinite(b)):
            return math.inf
        worst = max(worst, abs(a - b))
    return worst



def accuracy_pairs(got, recorded) -> list[tuple[float, float]]:
    pairs = [(got.acc_f, recorded.acc_f), (got.acc_r, recorded.acc_r)]
    if len(got.per_class) != len(recorded.per_class):
        return [*pairs, (math.inf, 0.0)]
    return pairs + list(zip(got.per_class, recorded.per_class, strict=True))



def evidence_pairs(got: dict, recorded) -> list[tuple[float, float]]:
    rec = recorded.model_dump()
    return [(got[k], rec[k]) for k in ("ratio_d", "probe_auc", "mia_efficacy")]



def recorded_masked_bias(cfg, manifest: Manifest) -> tuple[float | None, str]:
    """The bias CWM gives the forgotten rows in ``cfg``'s mode (pipeline.cwm.masked_bias), and where
    that number comes from: ``zero`` and ``suppress`` fix it in the config; ``calibrated`` derives it
    from the model and records it in the manifest, which the rows are checked against (its Acc_F is
    recomputed regardless)."""
    from nhle_pipeline.pipeline.cwm import masked_bias

    cwm = cfg.unlearn.cwm
    record = getattr(manifest.metrics, "cwm", None)
    bias = masked_bias(cwm.mode, cwm.suppress_bias, record.calibration if record is not None else None)
    if bias is None:
        return None, f"of mode {cwm.mode} (the manifest records none)"
    if cwm.mode == "zero":
        return bias, "0 (mode zero)"
    if cwm.mode == "suppress":
        return bias, f"{bias:g} (suppress_bias)"
    return bias, f"{bias:.6g} (mode {cwm.mode}, the manifest's metrics.cwm.bias)"



def recomputed_metrics(got, original, recorded, graph_unchanged: bool | None, notes: list[str],
                       original_name: str = "original") -> tuple[dict, str]:
    """The gate inputs verify recomputes from the shipped model (``got``): against the original
    measured here from --source-weights (``original``), else the manifest's recorded one (said in
    ``notes``). Returns the metrics and where the original's numbers came from."""
    if original is not None:
        acc_r_before, ev_before = original.accuracy.acc_r, original.evidence.to_dict()
        original_from = "source weights"
        notes.append(f"the {original_name} was measured here from --source-weights (sha256 matches "
                     f"source_model.sha256): Acc_R {acc_r_before:.4f}")
    else:
        acc_r_before, ev_before = recorded.original.acc_r, recorded.evidence.original.model_dump()
        original_from = "manifest"
        notes.append(f"ΔAcc_R is against the manifest's recorded {original_name} Acc_R {acc_r_before:.4f}, not "
                     "recomputed (pass --source-weights to measure the original here)")
    after = got.accuracy
    metrics = {
        "acc_f": after.acc_f,
        "delta_acc_r": after.acc_r - acc_r_before,
        "unlearned": after.to_dict(),
        "original": original.accuracy.to_dict() if original is not None else None,
        "evidence_copy_max_abs": got.copy_max_abs,
        "evidence": {"original": ev_before, "unlearned": got.evidence.to_dict()},
        "graph_unchanged": graph_unchanged,
    }
    return metrics, original_from



CALIBRATION_ATOL = 1e-3  # relative to max(1, |bias|): onnxruntime vs PyTorch logits, other hardware



def recalibrate(model: Path, cfg, data, device: str):
    """The calibrated CWM bias recomputed from the shipped model: the forgotten rows do not touch
    the retained logits, so the release's retained logits on the run's seeded calibration images
    are the ones the run calibrated on (pipeline.cwm.calibrated_bias)."""
    import numpy as np

    from nhle_pipeline.pipeline.cwm import CALIBRATION_SAMPLES, calibrated_bias
    from nhle_pipeline.pipeline.data import eval_batch_size
    from nhle_pipeline.verify.evidence import subsample
    from nhle_pipeline.verify.ort import open_session, ort_logits

    batch = eval_batch_size(cfg.data, data.input_shape)
    sess, _ = open_session(model, device)
    idx = subsample(len(data.train), CALIBRATION_SAMPLES, cfg.seed)
    logits = np.concatenate([ort_logits(sess, x, batch) for x in data.train.image_batches(idx, batch)])
    retained = [c for c in range(cfg.model.num_classes) if c not in cfg.forget_ids]
    return calibrated_bias(logits[:, retained])



def export_original(cfg, data, manifest: Manifest, weights: Path, scratch: Path) -> Path:
    """Export the original model (the manifest's config, the deployer's weights) into ``scratch``."""
    from nhle_pipeline.export.onnx_export import export_onnx
    from nhle_pipeline.pipeline.checkpoint import load_weights
    from nhle_pipeline.pipeline.loading import build_configured_model

    model, head = build_configured_model(cfg, data)
    if head != manifest.head:
        raise TamperedReleaseError(f"{MANIFEST}: head '{manifest.head}' is not the config's model head '{head}'")
    load_weights(model, weights, trust_pickle=False)
    path = scratch / "original.onnx"
    export_onnx(model.eval(), data.input_shape, path, opset=cfg.export.opset)
    return path



def library_arch(arch: str) -> str | None:
    from nhle_pipeline.pipeline.models import library_of

    return library_of(arch)



def measure_release_file(path: Path, manifest: Manifest, data, forget: list[int], n: int, cfg, layers: list[str], scratch: Path,
              *, device: str, shipped_logits: bool = False):
    """verify's pass over ``path`` (the shipped file, or the original's export), with the
    layer-wise audit's features at ``layers``: tensors the graph must have."""
    from nhle_pipeline.pipeline.data import eval_batch_size
    from nhle_pipeline.verify.errors import AuditLayerError
    from nhle_pipeline.verify.measure import measure_onnx

    try:
        return measure_onnx(path, manifest.head, data.train, data.test, forget, n, seed=cfg.seed, device=device,
                            batch_size=eval_batch_size(cfg.data, data.input_shape), scratch=scratch,
                            shipped_logits=shipped_logits, layers=layers)
    except AuditLayerError as e:
        raise TamperedReleaseError(f"{MANIFEST}: metrics.representation.layers: {e} (in {path.name})") from e



def export_fresh(cfg, data, manifest: Manifest, scratch: Path) -> Path:
    """A fresh export of the release's (registry) architecture, seeded random weights."""
    import torch

    from nhle_pipeline.export.onnx_export import export_onnx
    from nhle_pipeline.pipeline.loading import build_configured_model

    torch.manual_seed(cfg.seed)
    model, head = build_configured_model(cfg, data)
    if head != manifest.head:
        raise TamperedReleaseError(f"{MANIFEST}: head '{manifest.head}' is not the config's model head '{head}'")
    with torch.no_grad():  # a parameter initialised to one value (transformers' zero biases) is one that the
        for p in model.parameters():  # exporter's optimiser may drop: trained weights are never so
            if p.numel() > 1 and bool((p == p.flatten()[0]).all()):
                p.add_(torch.randn_like(p) * 0.02)
    path = scratch / "fresh.onnx"
    export_onnx(model.eval(), data.input_shape, path, opset=cfg.export.opset)
    return path
