"""The interface every architecture implements (after timm's):

``forward(x) == forward_head(forward_features(x))``; ``forward_features`` returns the
last feature map (N x C x H x W) before global pooling, ``forward_head`` pools (if the
family pools), flattens and classifies; ``reset_classifier(k)`` swaps in a fresh head
with ``k`` outputs, which is what transfer learning does.

Some models return more than logits in training mode (GoogLeNet's auxiliary heads);
:func:`split_outputs` is the one reader of such outputs, and :class:`LogitsOnly` the
wrapper that exports and compares the main logits alone.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["ClassifierBase", "LOGITS_KEYS", "split_outputs", "LogitsOnly"]

#: keys that name the main logits in a Mapping output, in order of preference
LOGITS_KEYS = ("logits", "out")


def split_outputs(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The main logits and the auxiliary logits of a model's output.

    Accepted outputs:

    * a tensor: the logits, no auxiliary heads;
    * a Mapping: the value under ``"logits"`` or else ``"out"`` (else the first value);
      the auxiliary heads are the tensors under keys starting with ``"aux"``;
    * an object with a ``logits`` attribute (named tuples such as ``GoogLeNetOutputs``):
      ``logits``, and its other named fields that are not ``None``;
    * a non-empty tuple or list: the first item, and the other items that are not ``None``.

    Anything else raises ``TypeError``: the model does not return classification logits.
    """
    aux: list[torch.Tensor] = []
    if isinstance(out, torch.Tensor):
        logits: Any = out
    elif isinstance(out, Mapping):
        key = next((k for k in LOGITS_KEYS if k in out), next(iter(out), None))
        logits = out.get(key) if key is not None else None
        aux = [v for k, v in out.items() if isinstance(k, str) and k.startswith("aux") and isinstance(v, torch.Tensor)]
    elif hasattr(out, "logits"):
        logits = out.logits
        names = getattr(out, "_fields", ())
        aux = [v for k, v in zip(names, out) if k != "logits" and v is not None]
    elif isinstance(out, (tuple, list)) and out:
        logits, aux = out[0], [o for o in out[1:] if o is not None]
    else:
        logits = None
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"cannot read logits from a model output of type {type(out).__name__}")
    return logits, aux


class LogitsOnly(nn.Module):
    """Wraps a model so that ``forward`` returns its main logits tensor alone
    (auxiliary heads and extras dropped): what an exported graph and a parity check see."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_outputs(self.inner(x))[0]


class ClassifierBase(nn.Module):
    """Mixin-style base: subclasses define forward_features, forward_head, classifier_name."""

    #: attribute path of the final classification layer, e.g. "fc" or "classifier.6"
    classifier_name: str = "fc"
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer with a freshly initialised one of ``num_classes`` outputs."""
        old = self.get_classifier()
        if not isinstance(old, nn.Linear):  # pragma: no cover - families override when needed
            raise TypeError(f"{type(self).__name__} must override reset_classifier")
        new = nn.Linear(old.in_features, num_classes)
        parent_name, _, attr = self.classifier_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        setattr(parent, attr, new)
        self.num_classes = num_classes

    def head_parameter_names(self) -> list[str]:
        """state_dict keys of the classifier (dropped when a checkpoint's head differs)."""
        return [f"{self.classifier_name}.{k}" for k in self.get_classifier().state_dict()]
