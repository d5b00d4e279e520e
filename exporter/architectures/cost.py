"""Where a model's multiplies go, layer by layer, in the source's own module paths.

:func:`layer_costs` runs one real forward pass with a forward hook on every layer (the
leaves of the module tree, and modules that count themselves with ``mac_count``) and
records each layer's output shape, parameters and multiply-accumulates, with the MAC
convention of :mod:`.complexity` (convolutions and fully connected layers only).

:func:`bottleneck_savings` answers the seed's question about 1x1 "bottleneck" layers
("using a 1x1 convolution as an intermediate step can reduce computation cost by a
factor of 10"): for every block where a 1x1 reduction feeds a wider convolution (an
Inception module's branches, a ResNet bottleneck, an Inception-ResNet block), it
measures the block as built and a copy of the same block with the reduction removed
and the wide convolution applied directly to the block's input channels, both with the
same hooks, on the input the block received in the real forward pass. Nothing here is
a formula written beside the modules: the numbers come from running them.
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .complexity import MacCounter, mac_function

__all__ = ["LayerCost", "ReductionPair", "bottleneck_savings", "cost_table_csv", "layer_costs", "measure_macs",
           "reduction_owners", "without_reductions"]


@dataclass
class LayerCost:
    """One layer of the source model as the forward pass saw it."""

    path: str  # module path in the source (state_dict prefix), e.g. "layer1.0.conv1"
    block: str  # the top-level child it belongs to ("layer1", "inception3a", "features")
    type: str  # class name
    output_shape: list[int]
    params: int
    macs: int
    calls: int = 1
    kernel: list[int] | None = None  # convolutions only

    def as_dict(self, total_macs: int) -> dict[str, Any]:
        d = asdict(self)
        d["share"] = self.macs / total_macs if total_macs else 0.0
        return d


@dataclass
class ReductionPair:
    """A 1x1 reduction feeding a wider convolution inside one block."""

    reduce: str  # path of the unit removed (the 1x1 conv, or its conv-BN-ReLU wrapper)
    wide: str  # path of the convolution that then reads the block's input directly
    in_channels: int
    reduced_channels: int
    out_channels: int
    kernel: list[int]
    drop: list[str] = field(default_factory=list)  # every module path replaced by Identity


def _is_leaf(m: nn.Module) -> bool:
    return not any(True for _ in m.children()) or callable(getattr(m, "mac_count", None))


def _convs(m: nn.Module) -> list[tuple[str, _ConvNd]]:
    return [(n, c) for n, c in m.named_modules() if isinstance(c, _ConvNd)]


def measure_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``module`` on ``inputs`` (hooks, no formula)."""
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad(), MacCounter(module) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return counter.macs


def layer_costs(model: nn.Module, input_size: Sequence[int], *, savings: bool = True) -> dict[str, Any]:
    """Per-layer cost of one forward pass of a single ``input_size`` (C, H, W) image.

    Returns ``{"input": [...], "total_macs", "total_params", "layers": [row...],
    "blocks": [{"block", "params", "macs", "share"}...], "one_by_one": {...},
    "bottlenecks": [...]}`` (the last from :func:`bottleneck_savings` when ``savings``).
    Shares are of the model's total multiply-accumulates.
    """
    size = tuple(int(s) for s in input_size)
    if len(size) == 3:
        size = (1, *size)
    rows: dict[str, LayerCost] = {}
    order: list[str] = []
    block_inputs: dict[str, tuple[torch.Tensor, ...]] = {}
    owners = reduction_owners(model)
    handles = []
    hidden: set[int] = set()
    for m in model.modules():
        if callable(getattr(m, "mac_count", None)):
            hidden.update(id(c) for c in m.modules() if c is not m)

    def leaf_hook(path: str, fn: Any):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            macs = int(fn(module, inputs, output)) if fn is not None else 0
            shape = list(output.shape) if isinstance(output, torch.Tensor) else []
            row = rows.get(path)
            if row is None:
                params = sum(p.numel() for p in module.parameters())
                kernel = list(module.kernel_size) if isinstance(module, _ConvNd) else None
                rows[path] = LayerCost(path, path.split(".", 1)[0], type(module).__name__, shape, params, macs,
                                       kernel=kernel)
                order.append(path)
            else:  # a module called twice (ResNet's shared ReLU): its MACs add up, the last shape stays
                row.calls += 1
                row.macs += macs
                row.output_shape = shape

        return hook

    def input_hook(path: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            block_inputs[path] = tuple(t.detach().clone() if isinstance(t, torch.Tensor) else t for t in inputs)

        return hook

    for path, m in model.named_modules():
        if not path or id(m) in hidden or not _is_leaf(m):
            if path in owners:
                handles.append(m.register_forward_pre_hook(input_hook(path)))
            continue
        handles.append(m.register_forward_hook(leaf_hook(path, mac_function(m))))
        if path in owners:
            handles.append(m.register_forward_pre_hook(input_hook(path)))
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(size, dtype=dtype, device=param.device if param is not None else "cpu"))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    layers = [rows[p] for p in order]
    total = sum(r.macs for r in layers)
    total_params = sum(p.numel() for p in model.parameters())
    blocks: dict[str, dict[str, Any]] = {}
    for r in layers:
        b = blocks.setdefault(r.block, {"block": r.block, "params": 0, "macs": 0, "layers": 0})
        b["params"] += r.params
        b["macs"] += r.macs
        b["layers"] += 1
    for b in blocks.values():
        b["share"] = b["macs"] / total if total else 0.0
    one = [r for r in layers if r.kernel is not None and all(k == 1 for k in r.kernel)]
    result: dict[str, Any] = {
        "input": list(size[1:]),
        "total_macs": total,
        "total_params": total_params,
        "layers": [r.as_dict(total) for r in layers],
        "blocks": list(blocks.values()),
        "one_by_one": {"layers": len(one), "macs": sum(r.macs for r in one),
                       "share": sum(r.macs for r in one) / total if total else 0.0,
                       "params": sum(r.params for r in one)},
    }
    if savings:
        result["bottlenecks"] = bottleneck_savings(model, block_inputs, owners)
    return result


# ---------------------------------------------------------------------------------- bottlenecks
def _reduction_unit(m: nn.Module) -> _ConvNd | None:
    """``m`` is a 1x1 reduction unit: one 1x1, stride-1, ungrouped conv that narrows the channels,
    alone or wrapped with channel-wise layers (BatchNorm, ReLU) only."""
    convs = _convs(m)
    if len(convs) != 1:
        return None
    conv = convs[0][1]
    others = [c for c in m.modules() if c is not m and c is not conv]
    if any(any(True for _ in c.parameters(recurse=False)) and not isinstance(c, nn.modules.batchnorm._BatchNorm)
           for c in others):
        return None
    if (all(k == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride) and conv.groups == 1
            and conv.out_channels < conv.in_channels):
        return conv
    return None


def _wide_conv(m: nn.Module, channels: int) -> tuple[str, _ConvNd] | None:
    convs = _convs(m)
    if not convs:
        return None
    name, conv = convs[0]
    if conv.groups == 1 and conv.in_channels == channels and any(k > 1 for k in conv.kernel_size):
        return name, conv
    return None


def _find_pairs(block: nn.Module) -> list[ReductionPair]:
    """The 1x1 reductions inside ``block`` that feed a wider convolution, found in its structure:
    consecutive children of a Sequential (Inception branches), or ``conv1``/``bn1`` -> ``conv2``
    (a ResNet bottleneck)."""
    pairs: list[ReductionPair] = []
    conv1, conv2 = getattr(block, "conv1", None), getattr(block, "conv2", None)
    if isinstance(conv1, _ConvNd) and isinstance(conv2, _ConvNd) and _reduction_unit(conv1) is not None:
        wide = _wide_conv(conv2, conv1.out_channels)
        if wide is not None:
            drop = ["conv1"] + (["bn1"] if isinstance(getattr(block, "bn1", None), nn.modules.batchnorm._BatchNorm)
                                else [])
            pairs.append(ReductionPair("conv1", "conv2", conv1.in_channels, conv1.out_channels, conv2.out_channels,
                                       list(conv2.kernel_size), drop))
    for name, child in block.named_modules():
        if not isinstance(child, nn.Sequential) or not name:
            continue
        items = list(child.named_children())
        for (n0, a), (n1, b) in zip(items, items[1:]):
            red = _reduction_unit(a)
            if red is None:
                continue
            wide = _wide_conv(b, red.out_channels)
            if wide is None:
                continue
            wname = f"{name}.{n1}" + (f".{wide[0]}" if wide[0] else "")
            pairs.append(ReductionPair(f"{name}.{n0}", wname, red.in_channels, red.out_channels,
                                       wide[1].out_channels, list(wide[1].kernel_size), [f"{name}.{n0}"]))
    return pairs


def reduction_owners(model: nn.Module) -> dict[str, list[ReductionPair]]:
    """Blocks (module path -> pairs) that hold 1x1 reductions. A block is the module that owns
    the branches: a Sequential branch's parent, a bottleneck itself; nested owners are not
    counted twice (the outermost module whose direct structure has the pairs wins)."""
    owners: dict[str, list[ReductionPair]] = {}
    for path, m in model.named_modules():
        if not path or isinstance(m, nn.Sequential):
            continue
        if any(path.startswith(o + ".") for o in owners):
            continue
        direct = [p for p in _find_pairs(m) if p.reduce.count(".") <= 1]
        if direct:
            owners[path] = _find_pairs(m)
    return owners


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def without_reductions(block: nn.Module, pairs: Sequence[ReductionPair]) -> nn.Module:
    """A copy of ``block`` with each 1x1 reduction removed and the wide convolution reading the
    block's input channels directly (same kernel, stride, padding, dilation, output channels)."""
    twin = copy.deepcopy(block)
    for p in pairs:
        for d in p.drop:
            _replace(twin, d, nn.Identity())
        old = twin.get_submodule(p.wide)
        new = type(old)(p.in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                        dilation=old.dilation, groups=1, bias=old.bias is not None, padding_mode=old.padding_mode)
        _replace(twin, p.wide, new.to(dtype=old.weight.dtype, device=old.weight.device))
    return twin


def bottleneck_savings(model: nn.Module, block_inputs: dict[str, tuple[torch.Tensor, ...]],
                       owners: dict[str, list[ReductionPair]] | None = None) -> list[dict[str, Any]]:
    """Per block with 1x1 reductions: its MACs as built and without the reductions.

    ``block_inputs``: what each block received in the real forward pass (``layer_costs``
    records it). Each side is measured by running the block (or its twin from
    :func:`without_reductions`) on that input with the same MAC hooks.
    """
    owners = owners if owners is not None else reduction_owners(model)
    out = []
    for path, pairs in owners.items():
        if path not in block_inputs:
            continue  # did not run in eval mode (an auxiliary head)
        block = model.get_submodule(path)
        inputs = block_inputs[path]
        with_, with_pairs = _measure_parts(block, inputs, [[p.reduce, p.wide] for p in pairs])
        without, without_pairs = _measure_parts(without_reductions(block, pairs), inputs, [[p.wide] for p in pairs])
        rows = []
        for p, w, wo in zip(pairs, with_pairs, without_pairs):
            rows.append({**asdict(p), "macs_with_reduction": w, "macs_without_reduction": wo,
                         "factor": wo / w if w else None})
        out.append({
            "block": path, "type": type(block).__name__, "input_shape": list(inputs[0].shape[1:]),
            "macs_with_reduction": with_, "macs_without_reduction": without,
            "saving": 1 - with_ / without if without else 0.0,
            "factor": without / with_ if with_ else None,
            "pairs": rows,
        })
    return out


def _measure_parts(block: nn.Module, inputs: tuple[torch.Tensor, ...],
                   parts: Sequence[Sequence[str]]) -> tuple[int, list[int]]:
    """MACs of one forward pass of ``block`` and, counted by the same hooks during that pass,
    of each group of its submodules in ``parts``."""
    counters = [[MacCounter(block.get_submodule(n)) for n in group] for group in parts]
    was_training = block.training
    entered: list[MacCounter] = []
    try:
        block.eval()
        with torch.no_grad(), MacCounter(block) as total:
            for group in counters:
                for c in group:
                    entered.append(c.__enter__())
            block(*inputs)
    finally:
        for c in entered:
            c.__exit__(None, None, None)
        block.train(was_training)
    return total.macs, [sum(c.macs for c in group) for group in counters]


def cost_table_csv(costs: dict[str, Any]) -> str:
    """The per-layer table of :func:`layer_costs` as CSV text."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "block", "type", "output_shape", "kernel", "params", "macs", "share"])
    for r in costs["layers"]:
        w.writerow([r["path"], r["block"], r["type"], "x".join(map(str, r["output_shape"])),
                    "x".join(map(str, r["kernel"])) if r["kernel"] else "", r["params"], r["macs"],
                    f"{r['share']:.6f}"])
    return buf.getvalue()
