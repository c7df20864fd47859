"""Is a shipped graph the one the exporter makes? What verify accepts as a model.

onnxruntime serves whatever the file says, so a check that reads only part of
the file (its first initializer of a name, its top-level op types) can be
fooled: a second initializer of the same name shadows the masked one, a
model-local function named ``Gemm`` hides extra nodes, nodes keyed on the
batch dimension change the answer at batch 1. Two checks close that:

- ``graph_problems``: what no export of ours contains — ops outside the
  standard domain, model-local functions, subgraphs, sparse or duplicate
  initializers, an initializer named like a graph input (a default the
  caller overrides), a tensor with two producers, an initializer no node
  reads, a node that does not contribute to the outputs;
- ``structure_difference``: the node list (op, domain, wiring, attributes),
  the initializers' names, types and shapes (integer ones by value: shapes
  and axes), and the graph's inputs and outputs, against a fresh export of
  the same architecture. The float weights are the release's own and are
  measured, not compared.
"""

from __future__ import annotations

STANDARD_DOMAINS = ("", "ai.onnx")
# Reduced-precision derivatives (onnxruntime's quantization tools) also use its contrib ops.
DERIVED_DOMAINS = (*STANDARD_DOMAINS, "com.microsoft")


def graph_problems(model, *, domains: tuple[str, ...] = STANDARD_DOMAINS) -> list[str]:
    """Everything in ``model``'s graph that no export of ours makes (empty: none)."""
    g = model.graph
    problems: list[str] = []
    if len(model.functions):
        problems.append(f"model-local functions {[f'{f.domain}:{f.name}' for f in model.functions]}")
    odd = sorted({f"{n.domain}:{n.op_type}" for n in g.node if n.domain not in domains})
    if odd:
        problems.append(f"ops outside the standard domain {odd}")
    sub = sorted({n.op_type for n in g.node if any(a.type in (a.GRAPH, a.GRAPHS) for a in n.attribute)})
    if sub:
        problems.append(f"nodes with subgraphs {sub}")
    sparse = sorted({n.output[0] for n in g.node if n.op_type == "Constant"
                     and any(a.name == "sparse_value" for a in n.attribute)})
    if sparse:
        problems.append(f"sparse Constant nodes {sparse[:5]}")
    if len(g.sparse_initializer):
        problems.append(f"sparse initializers {[t.values.name for t in g.sparse_initializer]}")
    names = [t.name for t in g.initializer]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"initializers defined twice {dup[:5]}")
    inputs = {i.name for i in g.input}
    shadow = sorted(inputs & set(names))
    if shadow:
        problems.append(f"initializers named like graph inputs {shadow[:5]}")
    produced = [o for n in g.node for o in n.output if o]
    twice = sorted({o for o in produced if produced.count(o) > 1} | (set(produced) & (set(names) | inputs)))
    if twice:
        problems.append(f"tensors with two producers {twice[:5]}")
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    unused = sorted(set(names) - read)
    if unused:
        problems.append(f"initializers no node reads {unused[:5]}")
    dead = _dead_nodes(g)
    if dead:
        problems.append(f"nodes that do not contribute to the outputs {dead[:5]}")
    return problems


def _dead_nodes(g) -> list[str]:
    """Nodes from which no graph output can be reached."""
    producer = {o: n for n in g.node for o in n.output if o}
    live: set[int] = set()
    todo = [o.name for o in g.output]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        live.add(id(node))
        todo.extend(i for i in node.input if i)
    return [f"{n.op_type} '{n.name or n.output[0]}'" for n in g.node if id(n) not in live]


def structure(model) -> dict:
    """What two exports of one architecture share whatever their weights."""
    import onnx
    from onnx import numpy_helper

    def attrs(n) -> list:
        out = []
        for a in n.attribute:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, onnx.TensorProto):
                v = ("tensor", v.data_type, tuple(v.dims), numpy_helper.to_array(v).tobytes())
            elif isinstance(v, list):
                v = tuple(x if isinstance(x, int | float | bytes | str) else str(x) for x in v)
            out.append((a.name, v if isinstance(v, int | float | bytes | str | tuple) else str(v)))
        return out

    def value_info(v) -> tuple:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim)
        return (v.name, t.elem_type, dims)

    inits = {}
    for t in model.graph.initializer:
        integer = t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)
        inits[t.name] = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes() if integer else None)
    return {
        "nodes": [(n.op_type, n.domain, tuple(n.input), tuple(n.output), tuple(attrs(n))) for n in model.graph.node],
        "initializers": inits,
        "inputs": [value_info(v) for v in model.graph.input],
        "outputs": [value_info(v) for v in model.graph.output],
        "opsets": sorted((o.domain, o.version) for o in model.opset_import),
    }


def structure_difference(shipped, fresh) -> str | None:
    """The first way ``shipped`` differs from ``fresh`` (None: the same graph)."""
    a, b = structure(shipped), structure(fresh)
    for key in ("inputs", "outputs", "opsets"):
        if a[key] != b[key]:
            return f"graph {key} {a[key]} differ from a fresh export's {b[key]}"
    if len(a["nodes"]) != len(b["nodes"]):
        return f"{len(a['nodes'])} nodes where a fresh export has {len(b['nodes'])}"
    for i, (x, y) in enumerate(zip(a["nodes"], b["nodes"], strict=True)):
        if x != y:
            return f"node {i} is {x[0]} {list(x[2])} -> {list(x[3])}, a fresh export has {y[0]} {list(y[2])} -> {list(y[3])}"
    extra, missing = sorted(set(a["initializers"]) - set(b["initializers"])), sorted(set(b["initializers"]) - set(a["initializers"]))
    if extra or missing:
        return f"initializers {extra[:3]} not in a fresh export, {missing[:3]} missing"
    for name, spec in a["initializers"].items():
        other = b["initializers"][name]
        if spec[:2] != other[:2]:
            return f"initializer '{name}' is type {spec[0]} shape {list(spec[1])}, a fresh export's {other[0]} {list(other[1])}"
        if spec[2] != other[2]:
            return f"integer initializer '{name}' (a shape or axes) differs from a fresh export's"
    return None
