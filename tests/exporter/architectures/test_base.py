"""exporter.architectures.base: the one reader of model outputs (split_outputs, LogitsOnly)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from convdeploy.exporter.architectures.base import LogitsOnly, split_outputs
from convdeploy.exporter.architectures.googlenet import GoogLeNetOutputs


def test_a_tensor_is_the_logits():
    x = torch.randn(2, 3)
    logits, aux = split_outputs(x)
    assert logits is x and aux == []


def test_googlenet_outputs_give_logits_and_both_aux_heads():
    main, aux2, aux1 = torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5)
    logits, aux = split_outputs(GoogLeNetOutputs(main, aux2, aux1))
    assert logits is main and len(aux) == 2 and aux[0] is aux2 and aux[1] is aux1
    logits, aux = split_outputs(GoogLeNetOutputs(main, None, None))
    assert logits is main and aux == []


def test_tuples_and_lists_lead_with_the_logits():
    main, extra = torch.randn(2, 3), torch.randn(2, 7)
    logits, aux = split_outputs((main, extra, None))
    assert logits is main and len(aux) == 1 and aux[0] is extra
    assert split_outputs([main])[0] is main


def test_mappings_use_logits_then_out_then_the_first_value():
    main, aux, other = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 4)
    logits, heads = split_outputs({"features": other, "logits": main, "aux_logits": aux})
    assert logits is main and len(heads) == 1 and heads[0] is aux
    logits, heads = split_outputs(OrderedDict(out=main, aux=aux))  # torchvision's segmentation style
    assert logits is main and len(heads) == 1 and heads[0] is aux
    logits, heads = split_outputs({"scores": main})
    assert logits is main and heads == []


@pytest.mark.parametrize("output", [None, "logits", 3.0, (), {}, {"logits": None}, ("not a tensor",)],
                         ids=["none", "str", "float", "empty-tuple", "empty-dict", "none-logits", "str-in-tuple"])
def test_anything_else_is_a_type_error(output):
    with pytest.raises(TypeError, match="cannot read logits"):
        split_outputs(output)


def test_logits_only_returns_the_main_logits():
    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head, self.aux = torch.nn.Linear(4, 3), torch.nn.Linear(4, 7)

        def forward(self, x):
            return {"logits": self.head(x), "aux": self.aux(x)}

    model = TwoHeads()
    wrapped = LogitsOnly(model)
    x = torch.randn(2, 4)
    assert torch.equal(wrapped(x), model.head(x))
    assert sorted(wrapped.state_dict()) == sorted(f"inner.{k}" for k in model.state_dict())
