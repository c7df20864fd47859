"""Which tensors of an exported graph the layer-wise representation audit reads.

The head's input is always audited (verify/representation.py). Layer-wise, the
audit also reads the outputs of the model's last stages, found in the ONNX
graph itself, so registry, library and users' models get the same rule:

- a convolutional network: the input of its last downsampling node (a Conv,
  MaxPool or AveragePool with a stride above 1) that a weighted layer
  computed — the output of the stage before the last; the last stage's output
  is the head's input (after its global pooling);
- otherwise (an MLP, a transformer): the inputs of the last ``MLP_LAYERS``
  weighted layers (Gemm/MatMul with a weight initializer) before the head that
  a weighted layer computed — each hidden layer of an MLP.

A tensor never computed by a weighted layer (the image, its flattening) is not
a layer. Each audited tensor is pooled to one vector per image: rank 4
``(N, C, H, W)`` by global average pooling, rank 3 ``(N, T, D)`` by the mean
over its tokens, rank 2 as it is. ``verify.audit.layers`` names them instead.
"""

from __future__ import annotations

MLP_LAYERS = 2  # hidden layers audited in a network without downsampling
WEIGHTED_OPS = ("Gemm", "MatMul", "Conv")
DOWNSAMPLING_OPS = ("Conv", "MaxPool", "AveragePool")


def _strided(node) -> bool:
    return any(a.name == "strides" and any(s > 1 for s in a.ints) for a in node.attribute)


def _weighted(node, inits: set[str]) -> bool:
    """A layer with a weight initializer (a Gemm/MatMul/Conv of the model, not of two activations)."""
    return node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits


def _computed(model) -> tuple[list, set[str], set[str]]:
    """The graph's nodes, its initializers' names, and the tensors some weighted layer computed,
    directly or through later nodes."""
    inits = {t.name for t in model.graph.initializer}
    computed: set[str] = set()
    for node in model.graph.node:
        if _weighted(node, inits) or any(i in computed for i in node.input):
            computed.update(o for o in node.output if o)
    return list(model.graph.node), inits, computed


def _inputs(nodes, keep, head_features: str, computed: set[str]) -> list[str]:
    """The first inputs of the nodes ``keep`` selects that a weighted layer computed, in graph
    order, once each, the head's input left out."""
    out: list[str] = []
    for n in nodes:
        if keep(n) and n.input and n.input[0] in computed and n.input[0] != head_features and n.input[0] not in out:
            out.append(n.input[0])
    return out


def candidate_layers(model, head_features: str) -> list[str]:
    """Every tensor the audit could read (a layer's input that a weighted layer computed), in
    graph order, the head's input excluded: what a wrong ``verify.audit.layers`` is told."""
    nodes, inits, computed = _computed(model)
    return _inputs(nodes, lambda n: _weighted(n, inits) or n.op_type in ("MaxPool", "AveragePool"),
                   head_features, computed)


def auto_layers(model, head_features: str) -> list[str]:
    """The tensors the layer-wise audit reads by default (see the module docstring)."""
    nodes, inits, computed = _computed(model)
    if any(n.op_type == "Conv" for n in nodes):
        return _inputs(nodes, lambda n: n.op_type in DOWNSAMPLING_OPS and _strided(n), head_features, computed)[-1:]
    return _inputs(nodes, lambda n: n.op_type in ("Gemm", "MatMul") and _weighted(n, inits), head_features,
                   computed)[-MLP_LAYERS:]


def tensor_ranks(model, names: list[str]) -> dict[str, int | None]:
    """The rank of each of ``names`` as onnx's shape inference finds it (None: unknown)."""
    from nhle_pipeline.verify.output_masking import inferred_shapes

    inferred = inferred_shapes(model)
    ranks: dict[str, int | None] = dict.fromkeys(names)
    for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if v.name in ranks and v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    return ranks


def resolve_layers(model, head_features: str, requested: list[str] | None) -> list[tuple[str, int]]:
    """(tensor, rank) of each layer to audit: ``requested`` (``verify.audit.layers``, or a manifest's
    record), else ``auto_layers`` (those whose rank is unknown left out). Raises AuditLayerError for
    a requested tensor the graph does not have or cannot pool."""
    from nhle_pipeline.verify.errors import AuditLayerError

    names = auto_layers(model, head_features) if requested is None else list(requested)
    ranks = tensor_ranks(model, names)
    if requested is None:
        return [(n, r) for n, r in ranks.items() if r in (2, 3, 4)]
    known = candidate_layers(model, head_features)
    for n in names:
        if n == head_features:
            raise AuditLayerError(f"'{n}' is the head's input, which is always audited")
        if n not in known:
            raise AuditLayerError(f"'{n}' is not a layer of the graph; its layers: {', '.join(known) or 'none'}")
        if ranks[n] not in (2, 3, 4):
            raise AuditLayerError(f"'{n}' has rank {ranks[n]} (shape inference), not a (N, D), (N, T, D) or "
                                  "(N, C, H, W) tensor that can be pooled to one vector per image")
    return [(n, ranks[n]) for n in names]  # type: ignore[misc]
