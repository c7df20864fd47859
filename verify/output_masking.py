"""Is a forgotten class's logit a constant of the graph? A proof from the ONNX nodes.

CWM zeroes rows of a head; that those rows are zero (``cwm_in_graph``) says
nothing about the *output* when the graph has two heads (DeiT-distilled
averages ``head`` and ``head_dist``), a head that is not the last layer, or
nodes after the head. This module answers the question the gate is about:
does each forgotten logit depend on the input at all?

Forward over the graph (ONNX nodes are topologically sorted), every tensor
gets a boolean mask over its non-batch elements: True where the element is
the same for every input. Initializers and nodes fed only by constants are
constant throughout. The rules are conservative — an op not listed, a
non-standard domain, a shape that is not static, or anything unclear makes
the output depend on the input — so a True at the end is a proof:

- elementwise ops (Relu, Add, Mul, Cast, BatchNormalization, ...): an element
  is constant where every input's broadcast element is;
- ``Gemm``/``MatMul`` with a weight initializer: output column n is constant
  when every input column k with a non-zero weight W[n, k] is (a zero row:
  always — that is CWM);
- ``Conv`` with a weight initializer: output channel c is constant when every
  input channel with a non-zero kernel W[c, i] is wholly constant;
- reshapes keeping the batch first map the mask; reductions and pools over
  non-batch axes keep an element constant when all it reduces over is;
- ``Shape`` and ``Size`` depend on the input (the batch size is input): a
  graph that behaves differently at batch 1 cannot pass.

A zero weight reads nothing only while what it multiplies is finite: after
such a shortcut on an input-dependent tensor only ops that carry NaN and inf
through (``FRAGILE_OK``) may follow, so an overflow a crafted input causes can
make a forgotten logit NaN but not another number; the numeric check on the
test split (``forgotten_logit_spread``) covers the data that is measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STANDARD_DOMAINS = ("", "ai.onnx")

UNARY = {
    "Abs", "Acos", "Asin", "Atan", "Cast", "Ceil", "Celu", "Cos", "Dropout", "Elu", "Erf", "Exp", "Floor",
    "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg",
    "Not", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt",
    "Tan", "Tanh", "ThresholdedRelu",
}
# Elementwise over broadcast inputs (every input a tensor of the same batch, or a constant).
NARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "PRelu", "Clip",
        "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod"}
POOLS = {"AveragePool", "MaxPool", "LpPool"}
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSumExp", "ReduceSumSquare"}
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
INPUT_DEPENDENT = {"Shape", "Size"}  # the batch size is part of the input
RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}

CONST = "const"  # a tensor with no batch dimension, the same for every input
# After a zero-weight shortcut on an input-dependent tensor (0 * x is 0 only while x is finite),
# only ops that carry a NaN or inf through (or map every value alike) may follow: an op that can
# tell NaN from a number (IsNaN, comparisons, Where, Max/Min/Clip, casts to integers) would turn
# an overflow a crafted input causes into an input-dependent logit.
FRAGILE_OK = {"Identity", "Add", "Sub", "Mul", "Div", "Neg", "Relu", "Reshape", "Flatten", "Squeeze",
              "Unsqueeze", "Transpose", "GlobalAveragePool", "AveragePool", "ReduceMean", "ReduceSum",
              "Gemm", "MatMul", "Conv", "Concat", "BatchNormalization", "Dropout", "Cast"}
FLOAT_TYPES = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def constant_outputs(model, output: str | None = None) -> np.ndarray:
    """(C,) bool: which elements of the (N, C) output (the first graph output unless named) are the
    same for every input, as far as the graph proves it."""

    shapes = _static_shapes(inferred_shapes(model))
    state: dict[str, object] = {}
    fragile: set[str] = set()  # tensors whose constancy rests on a zero-weight shortcut
    weights: dict[str, np.ndarray] = {}
    names = [t.name for t in model.graph.initializer]
    for t in model.graph.initializer:
        state[t.name] = CONST
        if names.count(t.name) == 1:  # a name defined twice: which copy runs is the runtime's choice
            weights[t.name] = _array(t)
    for node in model.graph.node:
        masks = _node(node, state, weights, shapes)
        shortcut = node.op_type in ("Gemm", "MatMul", "Conv") and node.input and state.get(node.input[0]) is not CONST
        carries = [i for i in node.input if i in fragile]
        if carries and not _carries_nan(node):
            masks = [False] * len(node.output)  # it could tell an overflow from a number: depends
        for name, mask in zip(node.output, masks, strict=False):
            if name:
                state[name] = mask
                if isinstance(mask, np.ndarray) and mask.any() and (shortcut or carries):
                    fragile.add(name)
    out = output or model.graph.output[0].name
    got = state.get(out)
    width = _width(shapes.get(out))
    if got is CONST:
        return np.ones(width or 0, dtype=bool)
    if not isinstance(got, np.ndarray) or got.ndim != 1:
        return np.zeros(width or 0, dtype=bool)
    return got


def _carries_nan(node) -> bool:
    if node.op_type not in FRAGILE_OK:
        return False
    if node.op_type == "Cast":
        return next((a.i for a in node.attribute if a.name == "to"), 0) in FLOAT_TYPES
    return True


def inferred_shapes(model):
    """Shapes onnx infers from the graph alone: the author's value_info and declared output shapes
    are dropped first (onnxruntime only warns when they are wrong), the input's are kept (enforced).
    Weights stay out of the copy (a model over 2 GB cannot be serialised whole)."""
    import onnx

    g = onnx.GraphProto()
    g.CopyFrom(model.graph)
    del g.value_info[:]
    for out in g.output:
        out.type.tensor_type.ClearField("shape")
    for t in g.initializer:  # shapes and types are all inference needs
        t.ClearField("raw_data")
        del t.float_data[:]
        del t.int64_data[:]
        del t.int32_data[:]
        del t.double_data[:]
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):  # shapes and axes need values
            src = next(x for x in model.graph.initializer if x.name == t.name)
            t.CopyFrom(src)
    light = onnx.helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except Exception:  # noqa: BLE001 - no shapes: every rule that needs one says "depends"
        return light


def forgotten_logits_constant(path: str | Path, forget: list[int]) -> bool:
    """Does the graph prove every forgotten class's logit is a constant? (The output-level mask.)"""
    from nhle_pipeline.export.onnx_file import load_onnx

    const = constant_outputs(load_onnx(path))
    return bool(len(const) > max(forget) and all(const[c] for c in forget))


# --- the rules ----------------------------------------------------------------------------------


def _node(node, state: dict, weights: dict, shapes: dict) -> list:
    """The masks of ``node``'s outputs from its inputs' (False: depends on the input)."""
    n_out = len(node.output)
    dep = [False] * n_out
    if node.domain not in STANDARD_DOMAINS or node.op_type in INPUT_DEPENDENT | RANDOM:
        return dep
    if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):  # If / Loop / Scan bodies: not analysed
        return dep
    ins = [state.get(i, False) if i else CONST for i in node.input]
    if node.op_type in ("Constant", "ConstantOfShape") and all(m is CONST for m in ins):
        if node.op_type == "Constant":
            weights[node.output[0]] = _constant_value(node)
        return [CONST] * n_out
    if ins and all(m is CONST for m in ins):
        return [CONST] * n_out  # computed from constants only
    out_shape = shapes.get(node.output[0]) if n_out else None
    if out_shape is None:
        return dep
    op = node.op_type
    if op == "Dropout" and (any(m is not CONST for m in ins[1:]) or
                            (len(node.input) > 2 and node.input[2] and not _const_false(node.input[2], weights))):
        return dep  # a ratio from the data, or training mode: random, input-dependent
    if op in UNARY:
        return [_broadcast([ins[0]], out_shape)] + dep[1:]
    if op == "BatchNormalization":  # inference: a per-channel affine of constants
        training = next((a.i for a in node.attribute if a.name == "training_mode"), 0)
        if training or len([o for o in node.output if o]) > 1 or any(m is not CONST for m in ins[1:]):
            return dep
        return [_broadcast(ins[:1], out_shape)] + dep[1:]
    if op in NARY:
        return [_broadcast(ins, out_shape)] + dep[1:]
    if op in ("Gemm", "MatMul"):
        return [_linear(node, ins, weights, shapes, out_shape)] + dep[1:]
    if op == "Conv":
        return [_conv(node, ins, weights, out_shape)] + dep[1:]
    if op in RESHAPES or op == "Transpose":
        return [_reshape(node, ins[0], shapes, out_shape)] + dep[1:]
    if op in GLOBAL_POOLS or op in POOLS:
        return [_pool(ins[0], shapes.get(node.input[0]), out_shape)] + dep[1:]
    if op in REDUCE:
        return [_reduce(node, ins, weights, shapes, out_shape)] + dep[1:]
    if op == "Concat":
        return [_concat(node, ins, shapes, out_shape)]
    return dep


def _mask(m, shape: tuple[int, ...]) -> np.ndarray | None:
    """``m`` as a mask over the non-batch ``shape`` (None: cannot say)."""
    if m is CONST:
        return np.ones(shape, dtype=bool)
    if m is False or m is None:
        return np.zeros(shape, dtype=bool)
    return m if isinstance(m, np.ndarray) and m.shape == shape else None


def _broadcast(ins: list, out_shape: tuple[int, ...]):
    """Elementwise: AND of every batched input's mask, broadcast to the output (constants: True)."""
    acc = np.ones(out_shape, dtype=bool)
    for m in ins:
        if m is CONST:
            continue
        if m is False or not isinstance(m, np.ndarray) or m.ndim != len(out_shape):
            return False  # both batched: the same rank, or the batch axes would not line up
        try:
            acc &= np.broadcast_to(m, out_shape)  # both batched: aligned from the right
        except ValueError:
            return False
    return acc


def _linear(node, ins: list, weights: dict, shapes: dict, out_shape: tuple[int, ...]):
    """Gemm (A, B, C) or MatMul (A, B) with B an initializer; A (N, K) / (N, ..., K)."""
    if len(ins) < 2 or ins[1] is not CONST or node.input[1] not in weights:
        return False
    a_mask = ins[0]
    w = weights[node.input[1]]
    if not isinstance(w, np.ndarray) or w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        return False
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Gemm":
        if attrs.get("transA") and attrs["transA"].i:
            return False
        w = w if (attrs.get("transB") and attrs["transB"].i) else w.T  # (N_out, K)
        if len(ins) > 2 and ins[2] is not CONST:
            return False
    else:
        if w.ndim != 2:
            return False
        w = w.T  # MatMul: (K, N_out) -> (N_out, K)
    in_shape = out_shape[:-1] + (w.shape[1],)
    if a_mask is not CONST and shapes.get(node.input[0]) != in_shape:
        return False
    am = _mask(a_mask, in_shape)
    if am is None:
        return False
    uses = w != 0  # (N_out, K): which inputs each output reads
    # output [..., n] is constant when every input [..., k] it reads is
    return np.all(am[..., None, :] | ~uses, axis=-1).reshape(out_shape)


def _conv(node, ins: list, weights: dict, out_shape: tuple[int, ...]):
    """Conv (X, W, B) with W an initializer (C_out, C_in/group, kh, kw)."""
    if len(ins) < 2 or ins[1] is not CONST or node.input[1] not in weights:
        return False
    if len(ins) > 2 and ins[2] is not CONST:
        return False
    w = weights[node.input[1]]
    if not isinstance(w, np.ndarray) or w.ndim != 4 or not np.issubdtype(w.dtype, np.floating):
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    c_out = out_shape[0]
    x_mask = ins[0]
    per_channel_const = np.zeros(0, dtype=bool)
    if x_mask is False:
        c_in = w.shape[1] * group
        per_channel_const = np.zeros(c_in, dtype=bool)
    elif isinstance(x_mask, np.ndarray):
        per_channel_const = x_mask.reshape(x_mask.shape[0], -1).all(axis=1)
    else:
        return False
    out = np.zeros(c_out, dtype=bool)
    per_group = c_out // group
    for c in range(c_out):
        g = c // per_group
        used = np.flatnonzero(np.abs(w[c]).reshape(w.shape[1], -1).sum(axis=1) != 0) + g * w.shape[1]
        out[c] = bool(np.all(per_channel_const[used])) if len(used) else True
    return np.broadcast_to(out.reshape((c_out,) + (1,) * (len(out_shape) - 1)), out_shape).copy()


def _reshape(node, m, shapes: dict, out_shape: tuple[int, ...]):
    """Reshape / Flatten / Squeeze / Unsqueeze / Transpose keeping the batch axis first."""
    in_shape = shapes.get(node.input[0])
    if in_shape is None:
        return False
    mask = _mask(m, in_shape)
    if mask is None:
        return False
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if not perm or perm[0] != 0:
            return False
        return np.transpose(mask, [p - 1 for p in perm[1:]])
    if node.op_type == "Flatten":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if axis != 1:
            return False
    if int(np.prod(in_shape)) != int(np.prod(out_shape)):
        return False  # the batch would have been folded into another axis
    return mask.reshape(out_shape)


def _pool(m, in_shape, out_shape: tuple[int, ...]):
    """A (global) pool over the spatial axes: a channel is constant where all of it is."""
    if in_shape is None:
        return False
    mask = _mask(m, in_shape)
    if mask is None:
        return False
    per_channel = mask.reshape(mask.shape[0], -1).all(axis=1)
    return np.broadcast_to(per_channel.reshape((-1,) + (1,) * (len(out_shape) - 1)), out_shape).copy()


def _reduce(node, ins: list, weights: dict, shapes: dict, out_shape: tuple[int, ...]):
    in_shape = shapes.get(node.input[0])
    if in_shape is None:
        return False
    mask = _mask(ins[0], in_shape)
    if mask is None:
        return False
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        if ins[1] is not CONST or node.input[1] not in weights:
            return False
        axes = [int(v) for v in np.asarray(weights[node.input[1]]).reshape(-1)]
    rank = len(in_shape) + 1
    axes = list(range(rank)) if not axes else [a % rank for a in axes]
    if 0 in axes:
        return False  # over the batch: every image would mix
    keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    reduced = mask.all(axis=tuple(a - 1 for a in axes), keepdims=bool(keep))
    return reduced.reshape(out_shape) if reduced.size == int(np.prod(out_shape)) else False


def _concat(node, ins: list, shapes: dict, out_shape: tuple[int, ...]):
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    rank = len(out_shape) + 1
    axis %= rank
    if axis == 0:
        return False
    parts = []
    for name, m in zip(node.input, ins, strict=True):
        shape = shapes.get(name)
        mask = _mask(m, shape) if shape is not None else None
        if mask is None:
            return False
        parts.append(mask)
    try:
        return np.concatenate(parts, axis=axis - 1)
    except ValueError:
        return False


# --- shapes and values ----------------------------------------------------------------------------


def _static_shapes(model) -> dict[str, tuple[int, ...]]:
    """Non-batch shapes of every batched tensor whose dims after the first are all known."""
    out: dict[str, tuple[int, ...]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape") or len(t.shape.dim) == 0:
            continue
        dims = t.shape.dim
        rest = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
        if all(r is not None and r > 0 for r in rest):
            out[vi.name] = tuple(int(r) for r in rest)
    return out


def _width(shape) -> int | None:
    return shape[0] if shape and len(shape) == 1 else None


def _array(t) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


def _const_false(name: str, weights: dict) -> bool:
    v = weights.get(name)
    return isinstance(v, np.ndarray) and v.size == 1 and not bool(v.reshape(-1)[0])


def _constant_value(node) -> np.ndarray | None:
    from onnx import helper, numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(helper.get_attribute_value(a))
    return None
