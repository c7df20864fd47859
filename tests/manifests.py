"""A complete, typed sample manifest for tests of what renders or checks one."""

from __future__ import annotations

from nhle_pipeline.pipeline.release.manifest import Manifest


def sample_manifest(**overrides) -> Manifest:
    """A released digits-like manifest (3 classes, forget class 0); ``overrides`` replace top-level fields."""
    ev_orig = {"ratio_d": 4.0, "d_inter": 8.0, "d_intra": 2.0, "probe_auc": 1.0, "mia_efficacy": 0.0}
    ev_unl = {"ratio_d": 3.0, "d_inter": 6.0, "d_intra": 2.0, "probe_auc": 0.99, "mia_efficacy": 1.0}
    data = {
        "name": "demo", "status": "released", "method": "nhle-cwm", "forget_classes": [0], "num_classes": 3,
        "seed": 0, "config": {"unlearn": {"cwm": {"mode": "suppress"}}}, "config_sha256": "ab" * 32,
        "source_model": {"path": "runs/m.safetensors", "arch": "mlp", "sha256": "cd" * 32},
        "head": "classifier",
        "metrics": {
            "original": {"acc_f": 0.9, "acc_r": 0.96, "per_class": [0.9, 0.95, 0.97], "n_forget": 30, "n_retain": 60},
            "unlearned": {"acc_f": 0.0, "acc_r": 0.95, "per_class": [0.0, 0.94, 0.96], "n_forget": 30, "n_retain": 60},
            "reference": None, "acc_f": 0.0, "delta_acc_r": -0.01, "parity_max_abs": 1e-6,
            "graph_unchanged": True, "cwm_in_graph": True,
            "evidence": {"original": ev_orig, "unlearned": ev_unl, "reference": None, "gap_to_reference": None},
            "nhle": {"steps": 12, "stopped": "forgotten", "forget_acc_start": 1.0, "forget_acc_end": 0.0,
                     "n_samples": 16, "n_retained_samples": 0, "settings": {"variant": "anchored"}},
        },
        "gates": [
            {"name": "acc_f", "value": 0.0, "threshold": 0.01, "op": "<=", "passed": True, "description": "d"},
            {"name": "acc_r_drop", "value": -0.01, "threshold": -0.035, "op": ">=", "passed": True, "description": "d"},
        ],
        "passed": True,
        "runtime": {"torch_device": "cpu", "onnxruntime_provider": "CPUExecutionProvider",
                    "versions": {"torch": "x"}, "platform": "linux"},
        "timings_s": {"load": 1.0, "verify": 0.5},
    }
    data.update(overrides)
    return Manifest.model_validate(data)
