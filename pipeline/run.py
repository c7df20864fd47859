"""The runner: chains the stages, times them, reports progress, owns the staging folder.

    load -> baseline -> [project] -> nhle -> cwm -> export -> [reference] -> verify -> release

One small function per stage; ``run_pipeline`` reads like the chain. The
verdict is computed by onnxruntime on the exported file that ships (verify/),
with the gate policy of verify.gates. Nothing is written before the load stage
has validated every input; nothing reaches ``releases/`` unless every gate
passed.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from nhle_pipeline.export.errors import ExportError
from nhle_pipeline.export.metadata import stamp_metadata
from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.export.onnx_file import check_onnx, load_onnx
from nhle_pipeline.pipeline.baseline_cache import (
    BaselineCache,
    CachedBaseline,
    baseline_key,
    data_fingerprint,
)
from nhle_pipeline.pipeline.checkpoint import save_weights
from nhle_pipeline.pipeline.config import Config, release_name
from nhle_pipeline.pipeline.cwm import (
    CALIBRATION_SAMPLES,
    Calibration,
    apply_cwm,
    calibrated_bias,
    masked_bias,
)
from nhle_pipeline.pipeline.data import eval_batch_size
from nhle_pipeline.pipeline.device import exact_fp32, seed_everything
from nhle_pipeline.pipeline.distributed import Group
from nhle_pipeline.pipeline.errors import ConfigError, GateFailure
from nhle_pipeline.pipeline.inference import torch_logits
from nhle_pipeline.pipeline.loading import Loaded, cache_dir_for, load_inputs
from nhle_pipeline.pipeline.logits_adapter import logits_from
from nhle_pipeline.pipeline.models import find_head
from nhle_pipeline.pipeline.nhle import NHLEResult, micro_batch_for, nhle_finetune
from nhle_pipeline.pipeline.projection import ProjectionResult, project_forgotten_directions
from nhle_pipeline.pipeline.reference import retrain_reference
from nhle_pipeline.pipeline.release.files import MODEL, SCRATCH, TRITON_DIR, WEIGHTS
from nhle_pipeline.pipeline.release.manifest import Manifest, build_manifest, onnx_provenance
from nhle_pipeline.pipeline.release.package import write_release_files
from nhle_pipeline.pipeline.release.signing import load_signing_key
from nhle_pipeline.pipeline.release.staging import (
    check_target,
    create_staging,
    discard_staging,
    publish,
    write_not_released,
)
from nhle_pipeline.pipeline.release.triton import KINDS, write_triton_repository
from nhle_pipeline.pipeline.testhooks import die_if_rank, pause_at
from nhle_pipeline.pipeline.tracking import open_tracker
from nhle_pipeline.verify.batch_independence import batch_disagreement, batch_sample
from nhle_pipeline.verify.canonical import graph_problems
from nhle_pipeline.verify.errors import AuditLayerError
from nhle_pipeline.verify.evidence import subsample
from nhle_pipeline.verify.gates import GateResult, evaluate_gates
from nhle_pipeline.verify.graph import op_types, rows_masked
from nhle_pipeline.verify.measure import (
    Measurement,
    ModelOutputs,
    measurement,
    merge_outputs,
    run_model,
)
from nhle_pipeline.verify.output_masking import forgotten_logits_constant
from nhle_pipeline.verify.relearn import relearn_block
from nhle_pipeline.verify.representation import Audit, audit, representation_block
from nhle_pipeline.verify.verification import PARITY_MAX_SAMPLES, verification_metrics


class Listener(Protocol):
    """Progress sink; the CLI renders it, library code never prints."""

    def stage_start(self, stage: str) -> None: ...
    def stage_end(self, stage: str, seconds: float, detail: str) -> None: ...
    def step(self, stage: str, done: int, total: int, info: str) -> None: ...


class NullListener:
    def stage_start(self, stage: str) -> None: ...
    def stage_end(self, stage: str, seconds: float, detail: str) -> None: ...
    def step(self, stage: str, done: int, total: int, info: str) -> None: ...


@dataclass
class RunResult:
    manifest: Manifest
    path: Path  # the release folder (a run that does not release raises instead)


class _Timer:
    """Times each stage and tells the listener; a stage sets ``detail`` for its summary line."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.timings: dict[str, float] = {}
        self.detail = ""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.listener.stage_start(name)
        pause_at(name)  # inert unless a test sets PIPELINE_TEST_PAUSE_AT (pipeline/testhooks.py)
        self.detail = ""
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.listener.stage_end(name, self.timings[name], self.detail)


@dataclass
class _Run:
    """What every stage after load shares: the request, its inputs and the staging folder."""

    cfg: Config
    name: str
    inp: Loaded
    staging: Path
    listener: Listener
    use_cache: bool = True
    group: Group = field(default_factory=Group)
    measured: dict[str, Measurement] = field(default_factory=dict)
    original_ops: list[str] = field(default_factory=list)  # the original export's op types
    calibration: Calibration | None = None  # how the calibrated CWM bias was chosen
    bias: float | None = None  # the forgotten rows' bias, decided once by the CWM stage (None: CWM off)
    cache_note: str = "off"  # "hit" | "miss" | "off"

    @property
    def forget(self) -> list[int]:
        return self.cfg.forget_ids

    @property
    def scratch(self) -> Path:
        return self.staging / SCRATCH

    @property
    def batch_size(self) -> int:
        return eval_batch_size(self.cfg.data, self.inp.data.input_shape)

    @property
    def ort_device(self) -> str:
        return _ort_device(self.inp)

    def outputs(self, onnx_path: Path, layers: list[str] | None) -> ModelOutputs:
        """One exported model's pass over the data, by onnxruntime (sharded over the group's ranks);
        ``layers``: the layer-wise audit's tensors (None: the automatic choice)."""
        if self.group.sharded:
            self.group.broadcast(("measure", onnx_path.name, onnx_path.read_bytes(), layers))
        part = _shard_outputs(self.cfg, self.inp, onnx_path, self.scratch, self.group, layers)
        return merge_outputs(self.group.gather(part))

    def measure(self, onnx_path: Path) -> Measurement:
        """Accuracy and evidence of one exported model for this forget request, at the original's
        audited layers (the same graph, the same tensor names)."""
        return self.measurement(self.outputs(onnx_path, list(self.measured["original"].layers)))

    def measurement(self, out: ModelOutputs) -> Measurement:
        data, cfg = self.inp.data, self.cfg
        return measurement(out, data.train.y, data.test.y, self.forget, cfg.model.num_classes, cfg.seed)

    def baseline_key(self) -> str:
        cfg, inp = self.cfg, self.inp
        import onnx
        import onnxruntime

        return baseline_key({
            "weights_sha256": inp.weights_sha256, "arch": cfg.model.arch, "kwargs": cfg.model.kwargs,
            "num_classes": cfg.model.num_classes, "head": inp.head_name, "seed": cfg.seed,
            "data": data_fingerprint(inp.data.train, inp.data.test), "input_shape": inp.data.input_shape,
            "opset": cfg.export.opset, "ort_device": self.ort_device, "torch_device": inp.device.type,
            "audit_layers": cfg.verify.audit.layers,
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        })


def _ort_device(inp: Loaded) -> str:
    """onnxruntime follows PyTorch: CPU when the run is on the CPU, else CUDA where it really runs."""
    return "cpu" if inp.device.type == "cpu" else "auto"


def _shard_outputs(cfg: Config, inp: Loaded, onnx_path: Path, scratch: Path, group: Group,
                   layers: list[str] | None) -> ModelOutputs:
    data = inp.data
    try:
        return run_model(onnx_path, inp.head_name, data.train, data.test, cfg.model.num_classes, seed=cfg.seed,
                         device=_ort_device(inp), batch_size=eval_batch_size(cfg.data, data.input_shape),
                         scratch=scratch, shard=(group.rank, group.world), device_id=group.gpu, layers=layers)
    except AuditLayerError as e:
        raise ConfigError(f"verify.audit.layers: {e}") from e


def serve_shards(cfg: Config, group: Group, device: str | None = None) -> tuple[int, str]:
    """A rank other than 0: load the same inputs, measure its shard of every pass rank 0
    asks for, and return rank 0's verdict (exit code, message). Writes only a temp folder."""
    import shutil
    import tempfile

    seed_everything(cfg.seed)
    inp = load_inputs(cfg, device)
    cfg = inp.cfg
    scratch = Path(tempfile.mkdtemp(prefix=f"pipeline-rank{group.rank}-"))
    try:
        while True:
            command = group.broadcast(None)
            if command[0] == "done":
                return command[1], command[2]
            die_if_rank(group.rank)  # inert unless a test asks (pipeline/testhooks.py)
            _, name, blob, layers = command
            path = scratch / Path(name).name
            path.write_bytes(blob)
            group.gather(_shard_outputs(cfg, inp, path, scratch, group, layers))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _baseline(run: _Run) -> str:
    """The original model's outputs (from the cache when it holds them; else export and
    measure it, and cache that): the reference point of every delta."""
    cache = BaselineCache(cache_dir_for(run.cfg)) if run.use_cache else None
    key = run.baseline_key() if cache else ""
    entry = cache.load(key) if cache else None
    run.cache_note = "hit" if entry is not None else ("miss" if cache else "off")
    if entry is None:
        original_onnx = run.scratch / "original.onnx"
        export_onnx(run.inp.model, run.inp.data.input_shape, original_onnx, opset=run.cfg.export.opset)
        entry = CachedBaseline(run.outputs(original_onnx, run.cfg.verify.audit.layers), op_types(original_onnx))
        if cache:
            cache.store(key, entry)
    run.original_ops = entry.op_types
    before = run.measured["original"] = run.measurement(entry.outputs)
    return (f"original Acc_F {before.accuracy.acc_f:.4f}, Acc_R {before.accuracy.acc_r:.4f}, "
            f"Ratio_D {before.evidence.ratio_d:.3f} ({before.provider}; cache {run.cache_note})")


def _project(run: _Run, model: nn.Module) -> tuple[ProjectionResult, str]:
    """Remove the forgotten classes' own directions from every layer's input (pipeline/projection.py)."""
    inp, cfg = run.inp, run.cfg.unlearn.projection
    xf = torch.from_numpy(inp.data.train.get(inp.forget_idx)).to(inp.device)
    xr = torch.from_numpy(inp.data.train.get(inp.projection_idx)).to(inp.device)
    yr = torch.from_numpy(inp.data.train.y[inp.projection_idx])
    pr = project_forgotten_directions(model, xf, xr, yr, heads=_heads(run), num_forgotten=len(run.forget),
                                      rank_per_class=cfg.rank_per_class, alpha=cfg.alpha,
                                      micro_batch=micro_batch_for(inp.data.input_shape))
    skipped = f", {len(pr.skipped)} grouped convolutions skipped" if pr.skipped else ""
    return pr, (f"{len(pr.layers)} layers, rank {pr.rank}, from {pr.n_forget} forget + {pr.n_retained} "
                f"retained samples{skipped}")


def _nhle(run: _Run, model: nn.Module) -> tuple[NHLEResult, str]:
    """Fine-tune ``model`` (a copy of the original) on the forget samples (and the opt-in retained ones)."""
    inp = run.inp
    xf = torch.from_numpy(inp.data.train.get(inp.forget_idx)).to(inp.device)
    yf = torch.from_numpy(inp.data.train.y[inp.forget_idx]).to(inp.device)
    xr = torch.from_numpy(inp.data.train.get(inp.retained_idx)).to(inp.device) if len(inp.retained_idx) else None
    nh = nhle_finetune(
        model, xf, yf, run.cfg.model.num_classes, run.cfg.unlearn.nhle, retained_x=xr,
        micro_batch=micro_batch_for(inp.data.input_shape),
        on_step=lambda s, t, loss, acc: run.listener.step("nhle", s, t, f"loss {loss:.3f}, forget acc {acc:.2f}"),
    )
    retained_note = f" + {len(inp.retained_idx)} retained samples" if len(inp.retained_idx) else ""
    return nh, f"{nh.steps} steps on {len(yf)} forget samples{retained_note}, stopped: {nh.stopped}"


def _heads(run: _Run) -> list[str]:
    return run.inp.heads or [run.inp.head_name]


def _cwm(run: _Run, model: nn.Module) -> str:
    """Fold Class Weight Masking into every head's weight rows and bias (the same bias in each:
    heads that are averaged or summed give the forgotten logit that bias, or a multiple of it)."""
    cwm = run.cfg.unlearn.cwm
    if cwm.mode == "calibrated":
        run.calibration = _calibrate(run, model)
    bias = run.bias = masked_bias(cwm.mode, cwm.suppress_bias, run.calibration)
    for name in _heads(run):
        _, head = find_head(model, run.cfg.model.num_classes, name)
        apply_cwm(head, run.forget, cwm.mode, cwm.suppress_bias if bias is None else bias)
    shown = "" if bias is None else f", bias {bias:.4g}"
    return f"mode {cwm.mode} on {', '.join(repr(h) for h in _heads(run))} rows {run.forget}{shown}"


def _calibrate(run: _Run, model: nn.Module) -> Calibration:
    """The unlearned model's retained logits on a seeded sample of training images."""
    train = run.inp.data.train
    idx = subsample(len(train), CALIBRATION_SAMPLES, run.cfg.seed)
    retained = [c for c in range(run.cfg.model.num_classes) if c not in run.forget]
    with exact_fp32():  # verify recomputes the bias with onnxruntime in fp32 (cwm_calibration gate)
        logits = np.concatenate([
            torch_logits(model, x, run.batch_size, run.inp.device)
            for x in train.image_batches(idx, run.batch_size)
        ])
    return calibrated_bias(logits[:, retained])


def _export(run: _Run, model: nn.Module) -> tuple[Path, list[str], str]:
    """model.onnx with its provenance, checked, and its Triton repository."""
    model_onnx = run.staging / MODEL
    external = export_onnx(model, run.inp.data.input_shape, model_onnx, opset=run.cfg.export.opset, ir_version=run.cfg.export.ir_version)
    stamp_metadata(model_onnx, onnx_provenance(run.cfg, run.inp.weights_sha256, run.inp.class_names))
    check_onnx(model_onnx)
    problems = graph_problems(load_onnx(model_onnx, weights=False))
    if problems:  # pipeline verify would refuse it: fail before any measurement
        raise ExportError(f"export: the exported graph is not one verify accepts: {'; '.join(problems)}")
    save_weights(model, run.staging / WEIGHTS)  # the unlearned PyTorch weights, for further training
    tri = run.cfg.release.triton  # triton/<name>/{config.pbtxt,1/model.onnx[,labels.txt]}
    write_triton_repository(run.staging, run.name, model_onnx, max_batch_size=tri.max_batch_size,
                            instance_kind=KINDS[tri.kind], instance_count=tri.instances,
                            class_names=run.inp.class_names)
    return model_onnx, external, f"opset {run.cfg.export.opset}, {model_onnx.stat().st_size / 1024:.0f} KiB"


def _reference(run: _Run) -> str:
    """Retrain without the forgotten classes (verify.reference: retrain) and measure it."""
    ref_path = retrain_reference(
        run.cfg, run.inp.data, run.inp.device, run.scratch / "reference.onnx",
        on_epoch=lambda e, n, loss: run.listener.step("reference", e, n, f"retrain loss {loss:.4f}"),
    )
    ref = run.measured["reference"] = run.measure(ref_path)
    return (f"retrained without {run.forget}: Acc_R {ref.accuracy.acc_r:.4f}, "
            f"Ratio_D {ref.evidence.ratio_d:.3f}")


def _verify(run: _Run, model: nn.Module, nh: NHLEResult, model_onnx: Path,
            projection: ProjectionResult | None) -> tuple[dict, list[GateResult], str]:
    """Measure the shipped file, assemble every metric, apply the gates."""
    after = run.measured["unlearned"] = run.measure(model_onnx)
    cwm, bias = run.cfg.unlearn.cwm, run.bias
    cpu = torch.device("cpu")
    model = model.to(cpu)
    parity_logits = np.concatenate([  # streamed: 1,024 images at 224 px are 600 MB as one array
        torch_logits(model, x, run.batch_size, cpu)
        for x in run.inp.data.test.image_batches(after.test_idx[:PARITY_MAX_SAMPLES], run.batch_size)
    ])
    rows = batch_sample(after.test_idx, run.inp.data.test.y, run.forget)
    images = np.concatenate(list(run.inp.data.test.image_batches(after.test_idx[rows], run.batch_size)))
    metrics = verification_metrics(
        run.measured["original"], after, run.measured.get("reference"),
        torch_logits=parity_logits,
        output_masked_proved=None if bias is None else forgotten_logits_constant(model_onnx, run.forget),
        forget=run.forget,
        batch_max_abs=batch_disagreement(model_onnx, images, after.test_logits[rows], device=run.ort_device),
        graph_unchanged=op_types(model_onnx) == run.original_ops,
        cwm_in_graph=None if bias is None else all(rows_masked(model_onnx, h, run.forget, bias) for h in _heads(run)),
        cwm={"mode": cwm.mode, "bias": bias,
             "calibration": run.calibration.to_dict() if run.calibration else None},
        nhle={"steps": nh.steps, "stopped": nh.stopped, "forget_acc_start": nh.forget_acc_start,
              "forget_acc_end": nh.forget_acc_end, "n_samples": int(len(run.inp.forget_idx)),
              "n_retained_samples": int(len(run.inp.retained_idx)), "settings": nh.settings},
    )
    metrics["representation"] = _representation(run, metrics.get("output_masked"))
    metrics["projection"] = projection.to_dict() if projection is not None else None
    relearned = ""
    if run.cfg.verify.evidence.relearn:  # the PyTorch models (parity ties the unlearned one to model.onnx)
        data = run.inp.data
        rl = metrics["evidence"]["relearn"] = relearn_block(
            run.inp.model, model, run.forget, run.cfg.model.num_classes, data.train.get, data.train.y,
            data.test.get, data.test.y, exclude=run.inp.forget_idx, seed=run.cfg.seed, head=run.inp.head_name,
            device=run.inp.device)
        relearned = f", relearn steps x{rl['steps_relative']:.2f} the original's ({rl['seconds']:.1f} s)"
    gates = evaluate_gates(metrics, run.cfg.verify.gates, cwm_applied=cwm.mode != "none")
    passed = all(g.passed for g in gates)
    rep = metrics["representation"]
    return metrics, gates, (f"Acc_F {after.accuracy.acc_f:.4f}, ΔAcc_R {metrics['delta_acc_r']:+.4f}, "
                            f"Ratio_D {after.evidence.ratio_d:.3f}, LPR_F {rep['unlearned']['lpr_f']:.3f}{relearned}, "
                            f"level {rep['level']}, gates {'pass' if passed else 'FAIL'}")


def _representation(run: _Run, output_masked: bool | None) -> dict:
    """The representation-level audit at the head input and the audited layers, from the passes
    already made."""
    data, forget, seed = run.inp.data, run.forget, run.cfg.seed
    original, reference = run.measured["original"], run.measured.get("reference")
    unlearned = run.measured["unlearned"]

    def one(m: Measurement, layer: int | None) -> Audit:
        def test_of(x: Measurement) -> np.ndarray:
            return x.test_features if layer is None else x.test_layer_features[layer]

        train = m.train_features if layer is None else m.train_layer_features[layer]
        return audit(f"input of '{run.inp.head_name}'" if layer is None else m.layers[layer],
                     (train, data.train.y[m.train_idx]), (test_of(m), data.test.y[m.test_idx]),
                     forget, seed, original_test=test_of(original),
                     reference_test=test_of(reference) if reference is not None else None)

    def at(layer: int | None) -> tuple[Audit, Audit, Audit | None]:
        return one(original, layer), one(unlearned, layer), one(reference, layer) if reference is not None else None

    ratio_d = (original.evidence.ratio_d, unlearned.evidence.ratio_d,
               reference.evidence.ratio_d if reference is not None else None)
    n_forget = int(np.isin(data.test.y[unlearned.test_idx], forget).sum())
    return representation_block(*at(None), output_masked, ratio_d, [at(i) for i in range(len(original.layers))],
                                n_forget)


def _features(run: _Run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Test-split features of each measured model, for the report's PCA."""
    labels = {"original": "original", "unlearned": "unlearned", "reference": "retrained reference"}
    y = run.inp.data.test.y
    return {labels[k]: (m.test_features, y[m.test_idx]) for k, m in run.measured.items()}


def run_pipeline(
    cfg: Config,
    config_path: str | Path,
    *,
    out_dir: str | Path | None = None,
    device: str | None = None,
    force: bool = False,
    listener: Listener | None = None,
    use_cache: bool = True,
    group: Group | None = None,
    sign_key: str | Path | None = None,
) -> RunResult:
    """Run every stage; return the released folder, or raise GateFailure (staging kept with
    its report). Any other error or an interruption removes the staging folder.

    ``sign_key`` (else ``release.sign_key``): a PEM EC private key that signs the release."""
    listener = listener or NullListener()
    timer = _Timer(listener)
    release_dir = Path(out_dir or cfg.release.dir)
    name = release_name(cfg, config_path)

    with timer.stage("load"):
        target = check_target(release_dir, name, force)
        key_path = sign_key or cfg.release.sign_key  # checked before any work, used at publication
        signer = load_signing_key(key_path, "--sign-key" if sign_key else "release.sign_key") if key_path else None
        tracker = open_tracker(cfg.tracking, group)  # None unless tracking.mlflow_uri (mlflow checked here)
        seed_everything(cfg.seed)
        inp = load_inputs(cfg, device)
        cfg = inp.cfg  # forget.classes as ids (class names resolved)
        timer.detail = f"{inp.data.name}: {len(inp.data.train)} train / {len(inp.data.test)} test, device {inp.device}"
        if inp.weights_prefix:
            timer.detail += f"; the checkpoint's keys had the prefix '{inp.weights_prefix}' (removed)"
        adapter = logits_from(inp.model)
        if adapter:
            timer.detail += f"; the model's logits are its {adapter}"
    run = _Run(cfg, name, inp, create_staging(release_dir, name), listener,  # the run's first write
               use_cache=use_cache and cfg.cache.enabled, group=group or Group())

    try:
        result = _stages(run, timer, target, force, signer)
    except GateFailure as e:
        if tracker:  # the verdict is final; a tracking failure is one warning line
            tracker.log(run.staging, e.manifest)
        raise  # the staging folder keeps the report that says why
    except BaseException:  # an error, Ctrl-C, SIGTERM, a full disk: nothing half-made stays
        discard_staging(run.staging)
        raise
    if tracker:
        tracker.log(result.path, result.manifest)
    return result


def _stages(run: _Run, timer: _Timer, target: Path, force: bool, signer) -> RunResult:
    """baseline -> [project] -> nhle -> cwm -> export -> [reference] -> verify -> release, in the staging folder."""
    cfg, inp = run.cfg, run.inp
    with timer.stage("baseline"):
        timer.detail = _baseline(run)
    model = copy.deepcopy(inp.model).to(inp.device)
    projection = None
    if cfg.unlearn.projection.enabled:
        with timer.stage("project"):
            projection, timer.detail = _project(run, model)
    with timer.stage("nhle"):
        nh, timer.detail = _nhle(run, model)
    # the stage's cost split (not stages: left out of totals, see report_view.total_seconds)
    timer.timings["nhle.setup"], timer.timings["nhle.per_step"] = nh.setup_seconds, nh.seconds_per_step
    with timer.stage("cwm"):
        timer.detail = _cwm(run, model)
    with timer.stage("export"):
        model_onnx, external, timer.detail = _export(run, model)
    if cfg.verify.reference == "retrain":
        with timer.stage("reference"):
            timer.detail = _reference(run)
    with timer.stage("verify"):
        metrics, gates, timer.detail = _verify(run, model, nh, model_onnx, projection)

    passed = all(g.passed for g in gates)
    manifest = build_manifest(
        cfg, name=run.name, passed=passed, weights_sha256=inp.weights_sha256, head_name=inp.head_name,
        heads=_heads(run),
        metrics=metrics, gates=gates, torch_device=str(inp.device),
        provider=run.measured["unlearned"].provider, external_data=external, timings=timer.timings,
        baseline_cache=run.cache_note, class_names=inp.class_names, key_prefix=inp.weights_prefix,
        logits_from=logits_from(inp.model),
    )
    if not passed:  # no servable copy of a model that failed (a server scanning folders would load it)
        shutil.rmtree(run.staging / TRITON_DIR, ignore_errors=True)
        write_release_files(run.staging, manifest, _features(run), stage="report")
        write_not_released(run.staging, [g.name for g in gates if not g.passed])
        failed = [g.name for g in gates if not g.passed]
        ties = metrics.get("forgotten_ties") if "acc_f" in failed else None
        why = (f" ({ties} test image(s) take a forgotten class only by a tie with the highest retained logit: a "
               "head clamped before the logits, see Known limitations)") if ties else ""
        raise GateFailure(f"gate(s) failed: {', '.join(failed)}{why}; nothing released", str(run.staging), manifest)

    with timer.stage("release"):
        # manifest.json records the release stage up to its own writing (the reports, the
        # digests); the summary and --json, the whole stage with the seal and the rename.
        write_release_files(run.staging, manifest, _features(run))
        path = publish(run.staging, target, force, sign_key=signer)
        timer.detail = f"{path}, signed" if signer else str(path)
    manifest.timings_s = dict(timer.timings)
    return RunResult(manifest, path)
