"""Command line: `pipeline run | train | verify | init | inspect`.

The only module that talks to the terminal and picks exit codes:
0 released / passed, 1 a gate failed (report kept, nothing released),
2 bad input (one line naming the field or file; nothing written),
3 an internal error (a bug; traceback kept),
130 interrupted. Heavy libraries are imported inside commands so that
``pipeline --help`` is instant.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path

import click

from nhle_pipeline.pipeline.errors import (
    EXIT_BAD_INPUT,
    EXIT_CRASH,
    EXIT_GATE_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_SPACE,
    EXIT_TERMINATED,
    KNOWN_FAILURES,
    GateFailure,
    Terminated,
    disk_full,
    exit_code_of,
)
from nhle_pipeline.pipeline.release.files import MODEL

CONFIG_ARG = click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
DEVICE_OPTION = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
    help="Override the config's device.",
)
FORCE_OPTION = click.option("--force", is_flag=True, help="Replace an existing output.")
JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True,
    help="Write one JSON document on stdout (schema: pipeline/schemas/<command>.schema.json); human output goes to stderr.",
)
TRUST_CODE_OPTION = click.option(
    "--trust-code", "trust_code", is_flag=True,
    help="Allow a 'package.module:factory' model.arch (importing it runs that module's code).",
)


def _trusting_code(cfg, trust_code: bool):
    """The config with model.trust_code set when --trust-code was given (recorded as such)."""
    if not trust_code:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"trust_code": True})})


INTERRUPTED = "interrupted; nothing was released and nothing half-made was kept"
TERMINATED = "terminated (SIGTERM); nothing was released and nothing half-made was kept"
# pipeline train keeps its state on purpose (pipeline/train.py: the same command resumes)
TRAIN_STOPPED = "; no weights were written (the training state is kept: run the same command to resume)"


def _stopped(fn, terminated: bool) -> str:
    head = TERMINATED if terminated else INTERRUPTED
    return head.split(";")[0] + TRAIN_STOPPED if fn.__name__ == "train" else head


def _on_sigterm(signum, frame):
    raise Terminated()


def _err(msg: str) -> None:
    """The ``error:`` line on stderr, and the --json document's ``error`` (pipeline/output.py)."""
    from nhle_pipeline.pipeline.output import current_document

    # One line whatever the message quotes (a YAML key or a file name may hold a newline).
    line = " ".join(str(msg).splitlines())
    doc = current_document()
    if doc is not None:
        doc.error = line
    click.echo("error: " + line, err=True)


def handle_errors(fn):
    """Turn the project's errors into one line and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as e:  # the exit code from the one table (pipeline/errors.py)
            code = exit_code_of(e)
            if code == EXIT_NO_SPACE:  # a full disk met while reading (npz extraction) is not bad input either
                _exit_no_space(e)
            if code in (EXIT_TERMINATED, EXIT_INTERRUPTED):  # (a library may re-raise Ctrl-C as its own error:
                _err(_stopped(fn, code == EXIT_TERMINATED))  # onnxruntime's import turns it into ImportError)
            elif code != EXIT_CRASH or isinstance(e, KNOWN_FAILURES):  # bad input, a failed gate, a known failure
                _err(str(e))
                if code == EXIT_GATE_FAILED and e.report_dir:
                    click.echo(f"report kept in {e.report_dir}", err=True)
            else:  # a real crash (a bug): the traceback for the report, and an exit code CI can tell
                traceback.print_exc()  # apart from "a gate failed" (1)
                _err(f"internal error ({type(e).__name__}); nothing was released - please report it with the "
                     "traceback above")
            sys.exit(code)

    @functools.wraps(fn)
    def documented(*args, **kwargs):
        # --json: one document on stdout whatever the outcome (pipeline/output.py)
        from nhle_pipeline.pipeline.output import emit, json_mode

        with json_mode(fn.__name__, bool(kwargs.get("as_json"))) as doc:
            try:
                result = wrapper(*args, **kwargs)
            except SystemExit as e:
                emit(doc, e.code if isinstance(e.code, int) else EXIT_CRASH, doc.error if doc is not None else None)
                raise
            emit(doc, 0, None)
            return result

    return documented


def _file_being_written(e: BaseException) -> str | None:
    """The file ``e`` (an OSError without a file name: a failed write(), flush or fsync) was
    raised while writing: the innermost open-for-writing file object among the raising frames'
    locals (``with open(path, "wb") as f: f.write(...)`` keeps ``f`` there), or None."""
    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            name, mode = getattr(value, "name", None), getattr(value, "mode", None)
            if (callable(getattr(value, "write", None)) and isinstance(mode, str) and any(c in mode for c in "wax+")
                    and isinstance(name, (str, bytes, os.PathLike))):
                return os.fsdecode(name)
    return None


def _exit_no_space(e: BaseException) -> None:
    """The disk-full line, naming the file being written, and exit 4."""
    full = disk_full(e)
    filename = getattr(full, "filename", None) or _file_being_written(full)
    where = f" writing '{filename}'" if filename else ""
    _err(f"no space left on the device{where} ({getattr(full, 'strerror', '')}); nothing was released, "
         "nothing half-made was kept: free some space and run again")
    sys.exit(EXIT_NO_SPACE)


class _UsageLine(click.ClickException):
    """A usage error (unknown option, missing argument, a folder given as a file) shown as one line."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file=None) -> None:
        _err(self.message)


class _Group(click.Group):
    """Bad arguments are bad input too: one ``error:`` line and exit 2, not click's usage block."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _UsageLine(e.format_message()) from e

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _UsageLine(e.format_message()) from e


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nhle-pipeline", prog_name="pipeline")
def cli() -> None:
    """Class unlearning to a verified ONNX release (NHLE + CWM).

    Exit codes: 0 released/passed, 1 a gate failed, 2 bad input,
    3 internal error, 4 no space left on the device, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM).
    """


@cli.command()
@CONFIG_ARG
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Release folder root (overrides release.dir).")
@DEVICE_OPTION
@FORCE_OPTION
@click.option("--no-cache", "no_cache", is_flag=True,
              help="Measure the original model even if the baseline cache holds it (and do not cache it).")
@TRUST_CODE_OPTION
@click.option("--sign-key", "sign_key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM elliptic-curve private key: sign the release (release.sig; overrides release.sign_key).")
@JSON_OPTION
@handle_errors
def run(config: Path, out: Path | None, device: str | None, force: bool, no_cache: bool,
        trust_code: bool, sign_key: Path | None, as_json: bool = False) -> None:
    """Unlearn, export, verify and release the model described by CONFIG.

    Under torchrun, rank 0 runs the chain and the other ranks measure their
    shares of the onnxruntime passes; every rank exits with rank 0's code.
    """
    from nhle_pipeline.pipeline.config import load_config

    cfg = _trusting_code(load_config(config), trust_code)
    from nhle_pipeline.pipeline.distributed import (
        join_group,
        leave_group,
        raise_verdict,
        verdict_of,
    )

    group = join_group()  # before torch is imported: it quiets c10d's connection logs
    try:
        if not group.is_main:
            from nhle_pipeline.pipeline.output import current_document
            from nhle_pipeline.pipeline.run import serve_shards

            if current_document() is not None:
                current_document().enabled = False  # rank 0 writes the job's one document

            raise_verdict(*serve_shards(cfg, group, device))
            return
        error = None
        try:
            _run_main(cfg, config, out, device, force, no_cache, group, sign_key)
        except BaseException as e:
            error = e
            raise
        finally:
            if group.sharded:
                group.broadcast(("done", *verdict_of(error)))
    finally:
        leave_group(group)


def _run_main(cfg, config: Path, out: Path | None, device: str | None, force: bool, no_cache: bool, group,
              sign_key: Path | None = None) -> None:
    from nhle_pipeline.pipeline.console import RichListener, print_run_summary
    from nhle_pipeline.pipeline.release.manifest import load_manifest
    from nhle_pipeline.pipeline.run import run_pipeline

    listener = RichListener()
    try:
        result = run_pipeline(cfg, config, out_dir=out, device=device, force=force, listener=listener,
                              use_cache=not no_cache, group=group, sign_key=sign_key)
    except GateFailure as e:
        listener.close()
        if e.report_dir:
            failed = e.manifest or load_manifest(Path(e.report_dir))
            print_run_summary(failed, None)
            _document_run(failed, None, e.report_dir)
        raise
    finally:
        listener.close()
    print_run_summary(result.manifest, result.path)
    _document_run(result.manifest, result.path, None)


def _document_run(manifest, release: Path | None, report_dir: str | None) -> None:
    from nhle_pipeline.pipeline.output import current_document, run_fields

    doc = current_document()
    if doc is not None:
        doc.update(**run_fields(manifest, release, report_dir))


@cli.command()
@CONFIG_ARG
@DEVICE_OPTION
@FORCE_OPTION
@TRUST_CODE_OPTION
@JSON_OPTION
@handle_errors
def train(config: Path, device: str | None, force: bool, trust_code: bool, as_json: bool = False) -> None:
    """Train the original model CONFIG points to (writes model.weights as safetensors)."""
    from nhle_pipeline.pipeline.config import load_config

    cfg = _trusting_code(load_config(config), trust_code)
    from nhle_pipeline.pipeline.console import console, train_original

    path = train_original(cfg, device=device, force=force)
    console.print(f"saved {path}")
    from nhle_pipeline.pipeline.output import current_document

    if current_document() is not None:
        from nhle_pipeline.pipeline.checkpoint import sha256_file

        current_document().update(weights=str(path), sha256=sha256_file(path), bytes=Path(path).stat().st_size,
                                  arch=cfg.model.arch, dataset=cfg.data.dataset, epochs=cfg.train.epochs)


def _hermetic(fn):
    """A read-only command: the libraries' caches and telemetry go to a temporary folder it
    removes (pipeline/hermetic.py), so it writes nothing outside it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from nhle_pipeline.pipeline.hermetic import hermetic_caches

        with hermetic_caches(f"pipeline-{fn.__name__}-env-"):
            return fn(*args, **kwargs)

    return wrapper


def _threshold(flag: str, help_text: str):
    return click.option(flag, type=float, default=None, help=help_text)


@cli.command()
@click.argument("release_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The deployer's policy (YAML): gates, require_signature, public_key, require_source_weights, "
                   "require_cwm. Default: the documented default gates.")
@_threshold("--acc-f-max", "Override the policy's gates.acc_f_max.")
@_threshold("--acc-r-drop-max", "Override the policy's gates.acc_r_drop_max.")
@_threshold("--ratio-d-max-relative", "Override the policy's gates.ratio_d_max_relative.")
@_threshold("--probe-auc-max", "Override the policy's gates.probe_auc_max.")
@_threshold("--mia-efficacy-min", "Override the policy's gates.mia_efficacy_min.")
@click.option("--public-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The producer's PEM public key: release.sig must verify with it.")
@click.option("--source-weights", type=click.Path(path_type=Path), default=None,
              help="The original model's weights, a file or a Hugging Face folder (sha256 must match the "
                   "manifest): measure the original here.")
@click.option("--data-root", default=None, help="Where the evaluation data lives on this machine (overrides data.root).")
@click.option("--parent", "parent", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A derived release's fp32 parent: check it and that it is the one the manifest names.")
@DEVICE_OPTION
@JSON_OPTION
@handle_errors
@_hermetic
def verify(release_dir: Path, policy_file: Path | None, acc_f_max: float | None, acc_r_drop_max: float | None,
           ratio_d_max_relative: float | None, probe_auc_max: float | None, mia_efficacy_min: float | None,
           public_key: Path | None, source_weights: Path | None, data_root: str | None, device: str | None,
           as_json: bool = False, parent: Path | None = None) -> None:
    """Re-check a release under the deployer's policy: hygiene, signature, checksums,
    provenance, then the gates recomputed on its model.onnx. Never writes, never downloads."""
    from nhle_pipeline.pipeline.console import console
    from nhle_pipeline.pipeline.release.check import verify_release
    from nhle_pipeline.pipeline.release.policy import load_policy

    policy, source = load_policy(policy_file, {
        "acc_f_max": acc_f_max, "acc_r_drop_max": acc_r_drop_max, "ratio_d_max_relative": ratio_d_max_relative,
        "probe_auc_max": probe_auc_max, "mia_efficacy_min": mia_efficacy_min,
    })
    check = verify_release(release_dir, data_root=data_root, device=device or "auto", policy=policy,
                           policy_source=source, public_key=public_key, source_weights=source_weights,
                           parent=parent)
    if check.signature:
        sig = f"signature: [green]ok[/] (key sha256 {check.signature[:16]}…)"
    else:
        sig = "signature: present, [yellow]not checked[/] (no --public-key)" if check.signed else "signature: none"
    console.print(f"files, checksums, config and provenance of {release_dir}: [green]ok[/]  "
                  f"(onnxruntime: {check.provider}); {sig}")
    applied = check.policy.gates.model_dump()
    console.print(f"policy ({check.policy_source}): " + ", ".join(
        f"{k} {applied[k]}" for k in ("acc_f_max", "acc_r_drop_max", "ratio_d_max_relative", "probe_auc_max",
                                      "mia_efficacy_min") if applied[k] is not None), markup=False)
    own = {k: v for k, v in check.manifest_gates.items() if v is not None}
    if own:
        console.print("the release's own gates (shown, not applied): " + ", ".join(
            f"{k} {v}{' (≠ policy)' if applied.get(k, v) != v else ''}" for k, v in own.items()), markup=False)
    for note in check.notes:
        console.print(f"note: {note}", markup=False)
    ev = check.metrics["evidence"]["unlearned"]
    console.print(
        f"evidence (recomputed): Ratio_D {ev['ratio_d']:.4f}, probe AUC {ev['probe_auc']:.4f}, "
        f"MIA-efficacy {ev['mia_efficacy']:.4f}"
    )
    rep = check.metrics.get("representation")
    if rep is not None:
        from nhle_pipeline.pipeline.release.manifest import RepresentationRecord
        from nhle_pipeline.pipeline.release.report_view import forgetting_statement

        console.print(f"{forgetting_statement(RepresentationRecord.model_validate(rep))} (recomputed)", markup=False)
    for g in check.gates:
        console.print(g.line(), markup=False)
    from nhle_pipeline.pipeline.output import current_document, verify_fields

    if current_document() is not None:
        current_document().update(**verify_fields(check, release_dir))
    if not check.passed:
        raise GateFailure(f"{release_dir}: gate(s) failed: {', '.join(g.name for g in check.gates if not g.passed)}")
    console.print("verdict: [green]pass[/]")


@cli.command()
@click.argument("release_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--mode", type=click.Choice(["int8-static", "int8-dynamic", "fp16"]), required=True,
              help="int8-static (onnxruntime quantize_static, QDQ, calibrated on training images), "
                   "int8-dynamic (quantize_dynamic), fp16 (onnxruntime's float16 converter, float32 I/O).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The derived release's folder (its name is the release and Triton model name).")
@click.option("--calibration-samples", type=click.IntRange(min=1), default=512, show_default=True,
              help="int8-static: training images (seeded subset of the parent config's training split).")
@click.option("--agreement-min", type=click.FloatRange(min=0, max=1, min_open=True), default=0.99,
              show_default=True, help="Gate: top-1 agreement with the fp32 parent on the test split.")
@click.option("--data-root", default=None, help="Where the data lives on this machine (overrides data.root).")
@click.option("--sign-key", "sign_key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM elliptic-curve private key: sign the derived release (release.sig).")
@FORCE_OPTION
@handle_errors
def quantize(release_dir: Path, mode: str, out: Path, calibration_samples: int, agreement_min: float,
             data_root: str | None, sign_key: Path | None, force: bool) -> None:
    """Make a reduced-precision derived release of the fp32 release RELEASE_DIR: its own model,
    manifest naming the parent, reports and Triton repository; released only if the release's
    gates, top-1 agreement with the parent and masked rows hold on it (onnxruntime, CPU)."""
    from nhle_pipeline.pipeline.console import console
    from nhle_pipeline.pipeline.quantize import quantize_release

    try:
        result = quantize_release(release_dir, mode, out, calibration_samples=calibration_samples,
                                  agreement_min=agreement_min, force=force, sign_key=sign_key, data_root=data_root)
    except GateFailure as e:
        from nhle_pipeline.pipeline.release.manifest import load_manifest

        if e.report_dir:
            _print_derived(console, e.manifest or load_manifest(Path(e.report_dir)))
        raise
    _print_derived(console, result.manifest)
    console.print(f"[bold green]released[/] {result.path}")


def _print_derived(console, m) -> None:
    d, met = m.derived, m.metrics
    console.print(f"{m.name}: {d.precision} of '{d.parent.name}' (parent model sha256 {d.parent.model_sha256[:12]}…)",
                  markup=False)
    console.print(f"Acc_F {met.acc_f:.4f}, Acc_R {met.unlearned.acc_r:.4f} (fp32 parent {d.parent.acc_r:.4f}, "
                  f"original {met.original.acc_r:.4f}), ΔAcc_R {met.delta_acc_r:+.4f}, agreement with the parent "
                  f"{d.agreement:.4f} on {d.agreement_samples} test images, max |Δlogit| {d.max_abs_logit_diff:.4g}",
                  markup=False)
    for g in m.gates:
        console.print(g.line(), markup=False)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="pipeline.yaml")
@FORCE_OPTION
@handle_errors
def init(path: Path, force: bool) -> None:
    """Write a commented starter config to PATH (default: pipeline.yaml)."""
    from nhle_pipeline.pipeline.config_reference import starter_yaml
    from nhle_pipeline.pipeline.errors import ConfigError

    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{path}: a symbolic link to nothing; give a real file name")
    if path.exists() and not force:
        raise ConfigError(f"{path}: already exists; use --force to overwrite")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: folder '{path.parent}' does not exist")
    try:
        path.write_text(starter_yaml(), encoding="utf-8")
    except OSError as e:  # a read-only folder, a full disk
        raise ConfigError(f"{path}: cannot write it ({e.strerror})") from e
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--public-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="When MODEL sits in a signed release: check release.sig with this PEM public key.")
@JSON_OPTION
@handle_errors
@_hermetic
def inspect(model: Path, public_key: Path | None, as_json: bool) -> None:
    """Show MODEL.onnx (or a release folder's model.onnx) as a server sees it: inputs and outputs
    (names, dtypes, shapes), opset, op counts, size, provenance (as onnxruntime reads it), and its
    release's signature status."""
    from nhle_pipeline.pipeline.inspection import describe, human_lines
    from nhle_pipeline.pipeline.output import current_document

    if model.is_dir() and not model.is_symlink():
        if not (model / MODEL).is_file():
            from nhle_pipeline.pipeline.errors import InputError

            raise InputError(f"MODEL: '{model}' is a folder with no model.onnx (give an .onnx file or a release folder)")
        model = model / MODEL

    info = describe(model, public_key)
    doc = current_document()
    if doc is not None:
        doc.update(**info)
        return
    for line in human_lines(info):
        click.echo(line)


def main() -> None:
    import signal

    from nhle_pipeline.pipeline.output import protect_streams

    protect_streams()  # `pipeline … | head`, a closed stdout: never a BrokenPipeError
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli()


if __name__ == "__main__":
    main()
