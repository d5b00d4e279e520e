"""The interface every architecture implements (after timm's):

``forward(x) == forward_head(forward_features(x))``; ``forward_features`` returns the
last feature map (N x C x H x W) before global pooling, ``forward_head`` pools (if the
family pools), flattens and classifies; ``reset_classifier(k)`` swaps in a fresh head
with ``k`` outputs, which is what transfer learning does.
"""

from __future__ import annotations

import torch
from torch import nn


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
