"""Fuzzing the config loader: it returns a valid Config or raises ConfigError, nothing else.

Random YAML documents, random text and bytes, and mutations of a complete valid
config (keys dropped or added, values replaced by other types, deep nesting).
A Config that comes back must also survive what a run does with it: hashing,
and re-validation of its JSON dump (``pipeline verify`` re-parses the
manifest's copy).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nhle_pipeline.pipeline.config import Config, load_config, parse_config
from nhle_pipeline.pipeline.errors import ConfigError

# Per test (the YAML-oddity test: EXAMPLES // 4); 500: about 15 s for the file on one core.
# `make test-fast` sets CONFIG_FUZZ_EXAMPLES=100; `make test` runs the full 500.
EXAMPLES = int(os.environ.get("CONFIG_FUZZ_EXAMPLES", "500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Every field, non-default where it can be: mutations then hit real keys at every depth.
VALID = {
    "seed": 3,
    "device": "cpu",
    "model": {"arch": "mlp", "weights": "w.safetensors", "num_classes": 10, "head": "classifier",
              "kwargs": {"hidden": [32, 16]}, "trust_pickle": False},
    "data": {"dataset": "npz", "root": "data", "download": False,
             "normalize": {"mean": [0.5], "std": [0.25]}, "batch_size": 64},
    "forget": {"classes": [0, 4], "samples_per_class": 8, "selection": "random"},
    "unlearn": {"nhle": {"enabled": True, "variant": "paper", "lr": 0.05, "momentum": 0.5, "max_steps": 20,
                         "stop_forget_acc": 0.25, "grad_clip": None, "freeze_batchnorm": True},
                "cwm": {"mode": "suppress", "suppress_bias": -100.0}},
    "export": {"opset": 18},
    "verify": {"gates": {"acc_f_max": 0.02, "acc_r_drop_max": 0.05, "parity_atol": 0.01}},
    "release": {"dir": "out", "name": "fuzz-1"},
    "train": {"epochs": 2, "lr": 0.01, "batch_size": 16, "weight_decay": 0.0, "optimizer": "sgd"},
}

FIELD_NAMES = sorted({k for section in VALID.values() if isinstance(section, dict) for k in section} | set(VALID))

scalars = (
    st.none() | st.booleans()
    | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["0.1", "mlp", "digits", "cpu", "", "null", "1e-3", "zero"])
)
keys = st.text(max_size=10) | st.sampled_from(FIELD_NAMES)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=25,
)
yaml_alphabet = st.sampled_from(list(":-[]{},#&*!|>'\"%@`?\t\n ") + list("abcdemolsx0159._"))


def _paths(doc, prefix=()):
    """Every key path into nested dicts/lists of ``doc`` (the root included)."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _parent(doc, path):
    for p in path[:-1]:
        doc = doc[p]
    return doc


@st.composite
def mutated(draw):
    """VALID with 1-4 random edits: drop, add, replace, or bury a value under deep nesting."""
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(doc, path), path[-1]
        op = draw(st.sampled_from(["drop", "add", "replace", "nest"]))
        if op == "drop":
            del parent[last]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(documents)
        elif op == "add":
            parent.append(draw(documents))
        elif op == "replace":
            parent[last] = draw(documents)
        else:
            value = parent[last]
            for _ in range(draw(st.integers(1, 60))):
                value = draw(st.sampled_from([[value], {"x": value}, {draw(keys): value}]))
            parent[last] = value
    return doc


def _check_valid(cfg: Config) -> None:
    """What a run and `pipeline verify` do with a config must work on every config the loader accepts."""
    assert isinstance(cfg, Config)
    dumped = json.loads(json.dumps(cfg.model_dump(mode="json")))
    again = parse_config(dumped, "manifest config")
    assert again.sha256() == cfg.sha256()
    n = cfg.model.num_classes
    # ids in range, or class names (non-empty strings, resolved against the data at load)
    assert cfg.forget.classes and all(0 <= c < n if isinstance(c, int) else isinstance(c, str) and c
                                      for c in cfg.forget.classes)
    assert len(set(cfg.forget.classes)) == len(cfg.forget.classes) < n
    assert cfg.unlearn.nhle.resolved()["lr"] > 0 and cfg.forget.samples_per_class >= 1
    assert 0 <= cfg.seed < 2**32


def _outcome(call) -> str:
    try:
        cfg = call()
    except ConfigError as e:
        msg = str(e)
        assert msg.strip() and len(msg) < 2000, msg  # a short message, not a dump of the input
        event("ConfigError")
        return "error"
    _check_valid(cfg)
    event("valid Config")
    return "valid"


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="config-fuzz-") as d:
        yield Path(d)


@FUZZ
@given(doc=documents)
def test_parse_random_documents(doc):
    _outcome(lambda: parse_config(doc))


@FUZZ
@given(doc=mutated())
def test_parse_mutated_valid_config(doc):
    _outcome(lambda: parse_config(doc))


@settings(FUZZ, suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(documents, mutated()))
def test_load_random_yaml_files(scratch, doc):
    path = scratch / "doc.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    _outcome(lambda: load_config(path))


@settings(FUZZ, suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.text(max_size=200), st.text(yaml_alphabet, max_size=200), st.binary(max_size=200)))
def test_load_random_text_and_bytes(scratch, raw):
    path = scratch / "raw.yaml"
    if isinstance(raw, bytes):
        path.write_bytes(raw)
    else:
        path.write_text(raw, encoding="utf-8", errors="surrogatepass")
    _outcome(lambda: load_config(path))


@settings(FUZZ, max_examples=EXAMPLES // 4,
          suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.function_scoped_fixture])
@given(doc=mutated(), seed_text=st.sampled_from([
    "&a [*a]", "[" * 600 + "]" * 600, "9" * 5000, "!!binary /w==", "2020-01-01", "!!set {a, b}",
    ".nan", "-.inf", "0x" + "f" * 3000, "!!python/name:os.system", "*undefined",
]), which=st.integers(0, 10**6))
def test_mutated_config_with_pathological_yaml_values(scratch, doc, seed_text, which):
    """A valid config's text with one value swapped for a YAML oddity, at a random field."""
    paths = [p for p in _paths(doc) if p and all(isinstance(k, str) and k.isidentifier() for k in p)]
    if not paths:
        return
    text = yaml.safe_dump(doc, default_flow_style=True, width=math.inf)
    # replace the value of a randomly chosen key (its first occurrence) with the oddity, textually
    key = paths[which % len(paths)][-1]
    marker = f"{key}: "
    if marker in text:
        i = text.index(marker) + len(marker)
        j = i
        depth = 0
        while j < len(text) and not (depth == 0 and text[j] in ",}"):
            depth += text[j] in "[{"
            depth -= text[j] in "]}"
            j += 1
        text = text[:i] + seed_text + text[j:]
    path = scratch / "odd.yaml"
    path.write_text(text, encoding="utf-8")
    _outcome(lambda: load_config(path))


def test_the_valid_base_is_valid():
    _check_valid(parse_config(copy.deepcopy(VALID)))
