"""Feature projection: the forgotten classes' own directions removed from every layer's input.

NHLE and CWM act on the decision: the features still carry the class, and a
fresh linear head on them recovers it. This stage acts on the features, in
closed form and without gradients (after DAMP, arXiv 2604.15166; our own
formulation):

For every ``nn.Linear`` and ungrouped ``nn.Conv2d`` except the heads, in the
space the layer reads (a Linear's input vector; a Conv2d's k×k patch,
C_in·k·k long, averaged over the positions), take

- R: the mean input of each retained class, over a small seeded set of
  retained training samples (``retained_per_class``);
- F: the inputs of the forget samples, minus their projection onto span(R):
  what the forgotten classes put into the layer that the retained classes'
  prototypes do not explain;
- U: F's top ``rank_per_class`` × |forgotten| right singular vectors;

and replace the layer's weight W (C_out × D) by W (I − α U Uᵀ): the layer no
longer responds to the forgotten classes' own directions, at every position
of a convolution, while the retained prototypes (orthogonal to U) pass as
before. Every layer's inputs are read in one pass of the original model
before any weight changes. The graph is unchanged (only weights move), so
the export, CWM and every check after it work as before.

Cost: one forward pass over the forget and retained samples, one QR and one
SVD per layer (D ≤ a few thousand): well under a second on the paper's nets.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ProjectionResult:
    layers: list[str]  # the layers whose weights were projected, in order
    skipped: list[str]  # eligible by type but not projected (grouped convolutions, layers never called)
    rank: int  # directions removed per layer
    n_forget: int
    n_retained: int
    seconds: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _mean_patch(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """(N, C_in, H, W) input of ``conv`` -> (N, C_in·kh·kw): its k×k patches averaged over the
    output positions (the mean of F.unfold, without materialising it)."""
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    if isinstance(conv.padding, str):  # "same" / "valid"
        pad = (0, 0) if conv.padding == "valid" else (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    else:
        pad = conv.padding
    xp = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = [xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw].mean(dim=(2, 3))
            for i in range(kh) for j in range(kw)]  # each (N, C_in)
    return torch.stack(cols, dim=2).reshape(len(x), -1)  # (N, C_in, kh*kw) -> unfold's (c, i, j) order


def _eligible(model: nn.Module, heads: list[str]) -> tuple[list[str], list[str]]:
    layers, skipped = [], []
    for name, m in model.named_modules():
        if name in heads:
            continue
        if isinstance(m, nn.Linear):
            layers.append(name)
        elif isinstance(m, nn.Conv2d):
            (layers if m.groups == 1 else skipped).append(name)
    return layers, skipped


@torch.no_grad()
def layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor, micro_batch: int) -> dict[str, torch.Tensor]:
    """Each named layer's input as (N, D) rows (Linear: flattened; Conv2d: the mean patch)."""
    modules = dict(model.named_modules())
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []
    for n in names:
        m = modules[n]

        def hook(mod, inputs, _out, n=n):
            a = inputs[0].detach()
            got[n].append((_mean_patch(a, mod) if isinstance(mod, nn.Conv2d) else a.reshape(len(a), -1)).float().cpu())

        hooks.append(m.register_forward_hook(hook))
    try:
        for i in range(0, len(x), micro_batch):
            model(x[i: i + micro_batch])
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in got.items() if v}  # a layer that never ran has no inputs


def forgotten_directions(forget: torch.Tensor, retained: torch.Tensor, retained_y: torch.Tensor, rank: int) -> torch.Tensor:
    """(D, r) orthonormal: the forget rows' top directions outside the span of the retained class means."""
    protos = torch.stack([retained[retained_y == c].mean(0) for c in retained_y.unique()]).double()  # (C_r, D)
    q, _ = torch.linalg.qr(protos.T)  # (D, C_r)
    f = forget.double()
    resid = f - (f @ q) @ q.T  # (N_f, D)
    _, s, vt = torch.linalg.svd(resid, full_matrices=False)
    keep = int(min(rank, int((s > s.max() * 1e-6).sum()) if len(s) else 0))
    return vt[:keep].T  # (D, keep)


@torch.no_grad()
def project_forgotten_directions(
    model: nn.Module,
    forget_x: torch.Tensor,
    retained_x: torch.Tensor,
    retained_y: torch.Tensor,
    *,
    heads: list[str],
    num_forgotten: int,
    rank_per_class: int = 1,
    alpha: float = 1.0,
    micro_batch: int = 64,
) -> ProjectionResult:
    """Project every eligible layer's weight in place (module docstring); returns what was done."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    names, skipped = _eligible(model, heads)
    rank = rank_per_class * num_forgotten
    ins_f = layer_inputs(model, names, forget_x, micro_batch)
    ins_r = layer_inputs(model, names, retained_x, micro_batch)
    ry = retained_y.cpu()
    modules = dict(model.named_modules())
    done = []
    for n in names:
        if n not in ins_f or n not in ins_r:  # never called in eval (an auxiliary head, attention's out_proj)
            skipped.append(n)
            continue
        u = forgotten_directions(ins_f[n], ins_r[n], ry, rank)
        if u.shape[1] == 0:
            continue
        w = modules[n].weight
        flat = w.reshape(w.shape[0], -1).double()  # (C_out, D)
        flat = flat - alpha * (flat @ u.to(flat.device)) @ u.T.to(flat.device)  # W (I - a U U^T)
        w.copy_(flat.reshape(w.shape).to(w.dtype))
        done.append(n)
    model.train(was_training)
    return ProjectionResult(done, skipped, rank, int(len(forget_x)), int(len(retained_x)),
                            round(time.perf_counter() - t0, 3),
                            {"rank_per_class": rank_per_class, "alpha": alpha})
