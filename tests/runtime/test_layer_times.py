"""bench --layers: per-layer times joined to the ONNX graph's source scopes, MACs, the sum check,
INT8 kernels, the stage split, the FMA peak and the report section (torch-free, real onnxruntime)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convdeploy.cli import main
from convdeploy.runtime.bench import bench_bundle
from convdeploy.runtime.bench_layers import OVERHEAD_ROW, STAGES, stage_split
from convdeploy.runtime.layer_times import GraphNode, graph_nodes, module_of, resolve_event
from convdeploy.runtime.parity.report_html import html_available
from convdeploy.runtime.peak import measure_fma_peak
from convdeploy.runtime.predictor import Predictor
from tests.conftest import cli_runner
from tests.runtime.conftest import build_classifier_onnx, rehash


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVDEPLOY_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory, tiny_bundle) -> Path:
    """The tiny bundle with a 64/128-channel model: enough multiplies that kernels, not the
    profiler's per-node cost, make up a run."""
    root = tmp_path_factory.mktemp("wide") / "wide"
    shutil.copytree(tiny_bundle, root)
    (root / "model.int8.onnx").unlink()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["artifacts"].pop("int8")
    manifest["files"].pop("model.int8.onnx")
    (root / "manifest.json").write_text(json.dumps(manifest))
    build_classifier_onnx(root / "model.onnx", width=64)
    rehash(root)
    return root


@pytest.mark.parametrize("name, expected", [
    ("/inner/layer1/layer1.0/conv1/Conv", ("layer1.0.conv1", 0)),
    ("/inner/layer1/layer1.0/relu_1/Relu", ("layer1.0.relu", 1)),
    ("/inner/inception3a/branch2/branch2.0/conv/Conv", ("inception3a.branch2.0.conv", 0)),
    ("/inner/features/features.0/Conv", ("features.0", 0)),
    ("/inner/Flatten", ("", 0)),
    ("/inner/repeat_1/repeat_1.0/branch0/conv/Conv", ("repeat_1.0.branch0.conv", 0)),  # a module named repeat_1
    ("input_QuantizeLinear", (None, 0)),
    ("Conv_0", (None, 0)),
])
def test_module_of_reads_the_exporters_scope(name, expected) -> None:
    assert module_of(name) == expected


def test_macs_come_from_the_graphs_shapes(tmp_path) -> None:
    nodes = graph_nodes(build_classifier_onnx(tmp_path / "m.onnx", width=8))
    macs = {n.op + str(i): n.macs for i, n in enumerate(nodes.values())}
    assert macs["Conv0"] == 32 * 32 * 8 * 3 * 3 * 3  # 3 -> 8 channels, 3x3, stride 1, pad 1
    assert macs["Conv2"] == 16 * 16 * 16 * 8 * 3 * 3  # 8 -> 16, stride 2
    assert macs["Gemm6"] == 10 * 16
    assert sum(macs.values()) == macs["Conv0"] + macs["Conv2"] + macs["Gemm6"]


def _graph() -> dict[str, GraphNode]:
    conv = GraphNode("/inner/layer1/layer1.0/conv1/Conv", "Conv", "layer1.0.conv1", 0, 1000,
                     ["x", "w"], ["/inner/layer1/layer1.0/conv1/Conv_output_0"])
    relu = GraphNode("/inner/layer1/layer1.0/relu/Relu", "Relu", "layer1.0.relu", 0, 0,
                     ["/inner/layer1/layer1.0/conv1/Conv_output_0"], ["/inner/layer1/layer1.0/relu/Relu_output_0"])
    return {n.name: n for n in (conv, relu)}


@pytest.mark.parametrize("event, covered, glue", [
    # onnxruntime names a fused Conv+ReLU after its output tensor (NCHWc layout)
    ("/inner/layer1/layer1.0/relu/Relu_output_0_nchwc", ["Conv", "Relu"], None),
    ("/inner/layer1/layer1.0/conv1/Conv_token_4", ["Conv"], None),  # a QLinearConv from a Q/DQ group
    ("/inner/layer1/layer1.0/conv1/Conv/WithoutBiases", ["Conv"], None),  # OpenVINO
    ("/inner/layer1/layer1.0/conv1/Conv + /inner/layer1/layer1.0/relu/Relu", ["Conv", "Relu"], None),  # TensorRT
    ("/inner/layer1/layer1.0/relu/Relu", ["Relu"], None),  # a kernel of its own
    ("ReorderOutput_token_3", [], "layout reorder (inserted by the backend)"),
    ("Reformatting CopyNode for Input Tensor 0 to /inner/x", [], "layout reorder (inserted by the backend)"),
    ("something_else", [], "unmatched backend node"),
])
def test_each_backends_names_resolve_to_graph_nodes(event, covered, glue) -> None:
    nodes = _graph()
    producers = {o: n for n in nodes.values() for o in n.outputs}
    found, label = resolve_event(event, nodes, producers)
    assert [n.op for n in found] == covered and label == glue


def test_sum_of_layers_against_the_model_only_time(wide_bundle) -> None:
    result = bench_bundle(wide_bundle, "onnxruntime", threads=1, batch_sizes=(1,), iterations=15, layers=True)
    lp = result["layers"]
    rows, check = lp["rows"], lp["sum_check"]
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    assert lp["unjoined_macs"] == 0 and lp["total_macs"] == lp["graph_macs"]  # every MAC node has its row
    mac_rows = [r for r in rows if r["mac_layer"]]
    assert {r["layer"] for r in mac_rows} == {"Conv_0", "Conv_2", "Gemm_6"}
    # the rows (the overhead row included) add up to the profiled run
    assert sum(r["ms"] for r in rows) == pytest.approx(check["profiled_run_ms"], rel=1e-6)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    # the check against the unprofiled model-only time holds, or its gap is named. How close the
    # times come is this machine's noise, so no threshold on them here: the rule that judges them.
    assert check["model_only_ms"] == result["model_only"][0]["p50_ms"]
    assert check["ratio"] == pytest.approx(check["layers_ms"] / check["model_only_ms"])
    assert check["within_tolerance"] == (abs(1 - check["ratio"]) <= check["tolerance"] == 0.15)
    assert check["within_tolerance"] or f"{abs(check['gap_ms']):.3f} ms" in check["gap_named"]
    peak = lp["peak"]
    for r in mac_rows:
        assert r["gflops"] == pytest.approx(2 * r["macs"] / (r["ms"] * 1e-3) / 1e9)
        if peak["gflops"]:
            assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / peak["gflops"])
        assert r["precision"] == "float"


def test_int8_rows_say_which_layers_ran_quantized(tiny_bundle) -> None:
    result = bench_bundle(tiny_bundle, "onnxruntime", precision="int8", threads=1, batch_sizes=(1,),
                          iterations=5, layers=True)
    lp = result["layers"]
    assert lp["artifact"] == "model.int8.onnx"
    convs = [r for r in lp["rows"] if r["mac_layer"] and "Conv" in "".join(r["onnx_nodes"])]
    assert convs and all(r["precision"] == "int8" for r in convs)
    assert all(any(op in ("QLinearConv", "ConvInteger") for op in r["ops"]) for r in convs)
    assert set(lp["int8"]["quantized"]) >= {r["layer"] for r in convs}


def test_openvino_counters_join_the_same_graph(wide_bundle) -> None:
    pytest.importorskip("openvino")
    result = bench_bundle(wide_bundle, "openvino", threads=1, batch_sizes=(1,), iterations=5, layers=True)
    lp = result["layers"]
    assert lp["source"].startswith("OpenVINO")
    assert lp["unjoined_macs"] == 0
    assert {r["layer"] for r in lp["rows"] if r["mac_layer"]} == {"Conv_0", "Conv_2", "Gemm_6"}


def test_stage_split_times_every_stage(tiny_bundle, photo_folder) -> None:
    files = sorted(p for p in photo_folder.rglob("*") if p.is_file())
    with Predictor.from_bundle(tiny_bundle, "onnxruntime", threads=1, verify_hashes=False) as predictor:
        plain = [p.indices for p in predictor.predict(files)]
        split = stage_split(predictor, files, batch=4)
        assert predictor.stage_times is None  # detached: the normal path runs untimed again
        assert [p.indices for p in predictor.predict(files)] == plain
    assert split["images"] == len(files) and split["errors"] == 0
    assert [s["stage"] for s in split["stages"]] == list(STAGES)
    assert all(s["ms_per_image"] > 0 for s in split["stages"])
    assert sum(s["share"] for s in split["stages"]) == pytest.approx(1.0)


def test_fma_peak_is_measured_once_and_cached_unless_the_machine_was_busy(tmp_path, monkeypatch) -> None:
    from convdeploy.runtime import peak

    if not shutil.which("cc") and not shutil.which("gcc"):
        pytest.skip("no C compiler")
    monkeypatch.setattr(peak, "load_average", lambda: 99.0)
    busy = measure_fma_peak(1, repeats=1)
    assert busy["gflops"] > 1, busy  # portable C: every CPU with a compiler gets its number
    assert "not cached" in busy["note"] and not (tmp_path / "cache" / "fma_peak.json").exists()
    monkeypatch.setattr(peak, "load_average", lambda: 0.0)
    first = measure_fma_peak(1, repeats=1)
    assert first["gflops"] > 1 and not first["cached"] and "note" not in first
    again = measure_fma_peak(1, repeats=1)
    assert again["cached"] and again["gflops"] == first["gflops"]
    assert (tmp_path / "cache" / "fma_peak.json").is_file()


def test_fma_peak_without_a_compiler_or_source_says_why(tmp_path) -> None:
    none = measure_fma_peak(1, compiler=str(tmp_path / "no-cc"))
    assert none["gflops"] is None and "compiler" in none["reason"]
    missing = measure_fma_peak(1, source=tmp_path / "fma_peak.c")
    assert missing["gflops"] is None and "reinstall convdeploy" in missing["reason"]


@pytest.mark.parametrize("march, lanes", [("x86-64", 4), ("haswell", 8), ("skylake-avx512", 16)])
def test_the_peak_kernel_uses_the_widest_vectors_the_target_has(tmp_path, march, lanes) -> None:
    """Portable C, not one ISA's intrinsics: the kernel builds for SSE, AVX2 and AVX-512 alike
    (and for a Jetson's NEON: 4 lanes, `fmla v.4s`), its vectors as wide as the ISA allows and
    its multiply-add one FMA instruction where the ISA has one."""
    import platform
    import subprocess

    from convdeploy.runtime.peak import SOURCE

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs a C compiler for x86-64")
    asm = tmp_path / "fma_peak.s"
    subprocess.run([cc, "-O3", f"-march={march}", "-ffp-contract=fast", "-pthread", "-S", str(SOURCE), "-o", str(asm)],
                   check=True, capture_output=True, timeout=120)
    text = asm.read_text()
    register = {4: "xmm", 8: "ymm", 16: "zmm"}[lanes]
    fma = [line for line in text.splitlines() if "vfmadd" in line and register in line]
    assert (len(fma) >= 12) is (lanes > 4), fma[:3]  # twelve chains; x86-64's SSE has no FMA: mulps and addps
    if lanes == 4:
        assert any("mulps" in line and "xmm" in line for line in text.splitlines())


def test_bench_layers_cli_and_report_section(wide_bundle, photo_folder, tmp_path) -> None:
    report = tmp_path / "report"
    res = cli_runner().invoke(main, ["bench", str(wide_bundle), "--layers", "--batch-sizes", "1", "--threads", "1",
                                     "--iterations", "5", "--images", str(photo_folder), "--e2e-images", "8",
                                     "--report", str(report)])
    assert res.exit_code == 0, res.output + res.stderr
    assert "per layer (onnxruntime profiler" in res.output and "Conv_2" in res.output
    assert "sum check:" in res.output and "end-to-end stages per image" in res.output
    doc = json.loads((report / "report.json").read_text())
    assert doc["bench"][0]["layers"]["rows"] and doc["bench"][0]["stages"]["images"] == 8
    if html_available():  # report.html needs matplotlib (absent on the Jetson Pythons' test venvs)
        page = (report / "report.html").read_text()
        assert 'id="layers"' in page and "Conv_2" in page and "decode" in page
    else:
        assert not (report / "report.html").exists()
    res = cli_runner().invoke(main, ["bench", str(wide_bundle), "--layers", "--batch-sizes", "1", "--threads", "1",
                                     "--iterations", "5", "--json"])
    assert res.exit_code == 0, res.output + res.stderr
    assert json.loads(res.output)["layers"]["rows"]


def test_int8_fallback_layers_show_as_float(tmp_path, sample_photos) -> None:
    """A Q/DQ graph that keeps one convolution in float (what int8_fallback does): its row says float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from convdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from convdeploy.runtime.layer_times import join_events, onnxruntime_events
    from convdeploy.runtime.transforms.preprocess import preprocess
    from tests.runtime.conftest import SPEC, real_images

    model = onnx.load(str(build_classifier_onnx(tmp_path / "fp32.onnx", width=16)))
    for i, node in enumerate(model.graph.node):  # the exporter's kind of names, so the profile can name them
        node.name = f"/inner/{node.op_type.lower()}{i}/{node.op_type}"
    onnx.save(model, str(tmp_path / "named.onnx"))
    calib = np.stack([preprocess(im, SPEC) for im in real_images(sample_photos)])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "named.onnx"), str(tmp_path / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=["/inner/conv2/Conv"])
    # Excluded from quantization, the conv keeps float weights, yet onnxruntime would still fuse its
    # DQ'd input into a QLinearConv: feed it the float activation, as a layer kept in float is fed.
    int8 = onnx.load(str(tmp_path / "int8.onnx"))
    conv2 = next(n for n in int8.graph.node if n.name == "/inner/conv2/Conv")
    conv2.input[0] = "r1"
    onnx.save(int8, str(tmp_path / "int8.onnx"))
    backend = OnnxRuntimeBackend(tmp_path / "int8.onnx", threads=1, profiling=str(tmp_path / "prof"))
    for _ in range(4):
        backend.run(calib[:1])
    events, _ = onnxruntime_events(backend.end_profiling(), skip_runs=1)
    rows = {r["layer"]: r for r in join_events(events, graph_nodes(tmp_path / "int8.onnx"))}
    assert rows["conv2"]["int8"] is False  # kept in float: a float kernel
    assert not any(op.startswith("Q") for op in rows["conv2"]["ops"])
    assert rows["gemm6"]["int8"] is True and rows["gemm6"]["ops"] == ["QGemm"]  # still quantized
