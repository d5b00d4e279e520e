"""How big and how costly a model is: parameters and multiply-accumulates (MACs).

The MAC convention is the one the literature and torchvision's model tables use:
only the multiply-accumulates of convolutions and fully connected layers count,
biases, normalisation, activations and pooling do not. With it AlexNet costs
0.714 G MACs, VGG-16 15.47 G, ResNet-50 4.089 G and GoogLeNet 1.498 G at 224x224
(figures often printed as "GFLOPs" though they count MACs).

A layer that does its own arithmetic (LeNet-5's partially connected C3, say) tells
the counter what it costs by defining ``mac_count(inputs, output) -> int``; the
counter then uses that number and ignores the layers inside it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

__all__ = ["count_parameters", "count_macs", "mac_function", "MacCounter"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _conv_macs(module: _ConvNd, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    kernel = math.prod(module.kernel_size)
    if isinstance(module, _ConvTransposeNd):
        # every input element is scattered through a kernel into out_channels/groups maps
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    return output.numel() * (module.in_channels // module.groups) * kernel


def _linear_macs(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def _bilinear_macs(module: nn.Bilinear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    return output.numel() * module.in1_features * module.in2_features


class MacCounter:
    """Counts the multiply-accumulates of every forward pass run inside a ``with`` block.

    ::

        with MacCounter(model) as counter:
            model(batch)
        counter.macs  # for the whole batch

    Hooks go on convolutions, ``nn.Linear``, ``nn.Bilinear`` and on any module with a
    ``mac_count(inputs, output)`` method (whose children are then not counted).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.macs = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook_for(self, fn: Callable[[nn.Module, tuple, torch.Tensor], int]):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.macs += int(fn(module, inputs, output))

        return hook

    def __enter__(self) -> "MacCounter":
        # Modules that count themselves hide their children from the generic hooks.
        hidden: set[int] = set()
        for m in self.model.modules():
            if callable(getattr(m, "mac_count", None)):
                hidden.update(id(c) for c in m.modules() if c is not m)
        for m in self.model.modules():
            if id(m) in hidden:
                continue
            fn = mac_function(m)
            if fn is None:
                continue
            self._handles.append(m.register_forward_hook(self._hook_for(fn)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def mac_function(module: nn.Module) -> Callable[[nn.Module, tuple, torch.Tensor], int] | None:
    """The function ``(module, inputs, output) -> MACs`` the counter hooks on ``module``, or
    None for a module that does no counted multiplies (normalisation, activation, pooling)."""
    if callable(getattr(module, "mac_count", None)):
        return _self_counted
    if isinstance(module, _ConvNd):
        return _conv_macs
    if isinstance(module, nn.Linear):
        return _linear_macs
    if isinstance(module, nn.Bilinear):
        return _bilinear_macs
    return None


def _self_counted(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    return module.mac_count(inputs, output)


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of a single image.

    ``input_size`` is ``(C, H, W)`` (a batch of one is added) or ``(1, C, H, W)``.
    The model runs once on zeros in eval mode under ``torch.no_grad`` (so auxiliary heads
    that only run in training are not counted) and is put back in its former mode.
    Only modules are seen: a convolution written as ``F.conv2d`` inside a module that
    does not define ``mac_count`` is not counted.
    """
    size = tuple(int(s) for s in input_size)
    if len(size) == 3:
        size = (1, *size)
    if len(size) != 4 or size[0] != 1:
        raise ValueError(f"input_size must be (C, H, W) or (1, C, H, W), got {tuple(input_size)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), MacCounter(model) as counter:
            model(torch.zeros(size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return counter.macs
