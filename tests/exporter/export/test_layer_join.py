"""The join bench --layers relies on: every node of a registered model's exported graph maps to
a source module (through the scope the TorchScript exporter writes into its name) or is glue,
and the multiply-accumulates the runtime computes from the graph equal the source's, module by module."""

from __future__ import annotations

import pytest

from convdeploy.exporter.architectures.cost import layer_costs
from convdeploy.exporter.architectures.registry import create_model, get_entry
from convdeploy.exporter.export.onnx_export import export_onnx
from convdeploy.runtime.layer_times import MAC_OPS, graph_nodes


def _resolve(path: str, modules: set[str]) -> str | None:
    """The source module a scope path names. A module its model's forward calls directly
    (LeNet-5 calls features.c1 itself) has the container left out of the scope: a unique
    suffix match finds it, as exporter.export.explain does."""
    if path in modules:
        return path
    hits = [m for m in modules if m.endswith("." + path)]
    return hits[0] if len(hits) == 1 else None


@pytest.mark.parametrize("name", ["lenet5", "nin", "resnet20", "inception_resnet_small", "googlenet"])
def test_every_onnx_node_maps_to_a_source_module_or_is_glue(name: str, tmp_path) -> None:
    model = create_model(name)
    entry = get_entry(name)
    export_onnx(model, tmp_path / "m.onnx", input_shape=entry.input_size)
    nodes = graph_nodes(tmp_path / "m.onnx")
    modules = {n for n, _ in model.named_modules() if n}
    unmapped = []
    graph_macs: dict[str, int] = {}
    for node in nodes.values():
        if node.module == "":  # an op of the model's own forward (Flatten): glue, named as such
            assert node.op not in MAC_OPS, node.name
            continue
        if node.module is None:
            unmapped.append(node.name)
            continue
        source = _resolve(node.module, modules)
        if source is None:
            unmapped.append(node.name)
        elif node.op in MAC_OPS:
            graph_macs[source] = graph_macs.get(source, 0) + node.macs
    assert unmapped == []
    costs = layer_costs(model, entry.input_size, savings=False)
    source_macs = {r["path"]: r["macs"] for r in costs["layers"] if r["macs"]}
    if name == "lenet5":  # C3's partial connection: the graph computes the full conv on masked weights
        assert set(graph_macs) == set(source_macs)
    else:
        assert graph_macs == source_macs
