"""The pre-flight (real ONNX graphs, no GPU) and the trtexec line `build --dry-run` prints."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from convdeploy.cli import main
from convdeploy.runtime.build import make_plan, preflight, trtexec_command
from convdeploy.runtime.build.plan import parse_line
from convdeploy.runtime.build.trtexec import OPTIONS, has_option
from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.errors import BundleError, UsageError
from convdeploy.runtime.fsutil import atomic_write_json
from convdeploy.runtime.targets import list_profiles, load_profile
from tests.conftest import cli_runner
from tests.runtime.conftest import build_classifier_onnx, rehash, write_bundle

# A Xavier building for its first DLA core (DLA is opt-in: `build --dla-core 0`).
XAVIER_DLA = dataclasses.replace(load_profile("jetson-agx-xavier"), dla_core=0)


def test_a_graph_tensorrt_can_parse_passes(trt_int8_bundle):
    for precision, name in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        report = preflight(trt_int8_bundle / name, load_profile("jetson-agx-orin"), precision)
        assert report.ok and not report.skipped, report.summary()


def test_int32_biases_into_dequantizelinear_are_refused_with_the_reason(tiny_bundle):
    """Audit #1: onnxruntime's default QuantizeBias=True writes INT32 biases no TensorRT parses."""
    report = preflight(tiny_bundle / "model.int8.onnx", load_profile("jetson-agx-orin"), "int8")
    assert not report.ok and "DequantizeLinear of an INT32 tensor" in report.summary()
    with pytest.raises(BundleError, match="TensorRT cannot build model.int8.onnx: DequantizeLinear") as exc:
        report.raise_for_problems()
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2


def test_opset_above_the_profiles_parser_and_foreign_operators(tmp_path):
    import onnx

    path = build_classifier_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    model.graph.node[1].domain = "com.microsoft"
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    report = preflight(path, load_profile("jetson-nano"), "fp32")  # TensorRT 8.2: opset <= 13
    assert "opset 17 is above 13" in report.summary() and "com.microsoft::Relu" in report.summary()


def test_dla_needs_static_spatial_shapes(tmp_path):
    import onnx

    path = build_classifier_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    onnx.save(model, str(path))
    assert "dynamic spatial axes" in preflight(path, XAVIER_DLA, "fp16").summary()
    assert preflight(path, XAVIER_DLA, "fp32").ok  # fp32 goes to the GPU


def test_without_the_onnx_package_the_preflight_says_it_was_skipped(trt_int8_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    report = preflight(trt_int8_bundle / "model.onnx", load_profile("jetson-agx-orin"), "fp32")
    assert report.ok and report.skipped and "skipped: the onnx package is not installed" in report.summary()


@pytest.mark.parametrize("profile,precision,expected,absent", [
    ("jetson-agx-xavier:dla0", "fp16", ["--fp16", "--useDLACore=0", "--allowGPUFallback", "--noTF32",
                                        "--shapes=input:8x3x32x32", "--memPoolSize=workspace:2048"],
     ["--stronglyTyped", "--builderOptimizationLevel=3"]),  # TensorRT 8.5: no optimization level
    ("jetson-agx-xavier", "int8", ["--int8", "--fp16", "--minShapes=input:1x3x32x32"],
     ["--useDLACore=0", "--stronglyTyped"]),  # the GPU: INT8 from the Q/DQ graph needs the INT8 flag on 8.x
    ("jetson-agx-orin", "int8", ["--stronglyTyped", "--builderOptimizationLevel=3", "--minShapes=input:1x3x32x32",
                             "--optShapes=input:8x3x32x32", "--maxShapes=input:32x3x32x32"], ["--int8", "--fp16"]),
    ("server-a100", "fp32", ["--stronglyTyped", "--memPoolSize=workspace:8192", "--noTF32"], ["--fp16"]),
])
def test_the_dry_run_command_matches_the_profile(trt_int8_bundle, profile, precision, expected, absent):
    name, _, dla = profile.partition(":dla")
    prof = load_profile(name)
    if dla:
        prof = dataclasses.replace(prof, dla_core=int(dla))
    plan = make_plan(Bundle.load(trt_int8_bundle), prof, precision, prof.tensorrt[0])  # the first line it ships
    argv = trtexec_command(plan, trt_int8_bundle)
    assert argv[0] == "trtexec" and argv[1] == f"--onnx={trt_int8_bundle / plan.onnx_file}"
    assert f"--saveEngine={trt_int8_bundle / plan.engine_file}" in argv
    assert any(a.startswith("--timingCacheFile=") for a in argv)
    for flag in expected:
        assert flag in argv, (flag, shlex.join(argv))
    for flag in absent:
        assert flag not in argv, (flag, shlex.join(argv))


def test_tensorrt_11_is_strongly_typed_without_a_switch(trt_int8_bundle):
    prof = dataclasses.replace(load_profile("server-a100"), tensorrt="11.4")
    argv = trtexec_command(make_plan(Bundle.load(trt_int8_bundle), prof, "int8", "11.4"))
    assert not {"--stronglyTyped", "--int8", "--fp16"} & set(argv)


# ----------------------------------------------------------------------------- every printed line, every release
# trtexec options per release, from NVIDIA's sampleOptions.cpp at each tag (see tests/fixtures/trtexec/README.md).
FLAGS_FILE = Path(__file__).resolve().parents[2] / "fixtures" / "trtexec" / "trtexec-flags.json"
TABLES = {release: set(row["flags"]) for release, row in json.loads(FLAGS_FILE.read_text())["releases"].items()}
TRT_PROFILES = [name for name in list_profiles() if load_profile(name).backend == "tensorrt"]
SHAPE_OPTIONS = {"--shapes", "--minShapes", "--optShapes", "--maxShapes"}
LABEL = re.compile(r"^# (fp32|fp16|int8), TensorRT (\S+): (.+)$")


def tables_for(release: str) -> list[str]:
    """The option tables a profile's TensorRT release may meet: ``10.3`` -> 10.3.0, ``10.x`` -> every
    10.x table, ``11.4.1`` (newer than any 11.x table) -> the newest 11.x table before it."""
    if release.endswith(".x"):
        return [t for t in TABLES if t.split(".")[0] == release[:-2]]
    wanted = parse_line(release)
    exact = [t for t in TABLES if parse_line(t)[:len(wanted)] == wanted or parse_line(t) == wanted[:len(parse_line(t))]]
    if exact:
        return exact
    older = [t for t in TABLES if parse_line(t)[0] == wanted[0] and parse_line(t) < wanted]
    assert older, f"no trtexec table for TensorRT {release}"
    return [max(older, key=parse_line)]


def test_the_tables_of_the_fixture_are_the_ones_the_issue_names():
    assert "--workspace" in TABLES["8.0.1"] and not {"--memPoolSize", "--profilingVerbosity"} & TABLES["8.0.1"]
    assert "--profilingVerbosity" in TABLES["8.2.1"] and "--memPoolSize" not in TABLES["8.2.1"]
    assert not {"--fp16", "--best"} & TABLES["11.0"] and "--fp16" in TABLES["10.16"]
    assert tables_for("10.x") == ["10.0.1", "10.3.0", "10.7.0", "10.13.3", "10.16"]
    assert tables_for("10.3") == ["10.3.0"] and tables_for("11.4.1") == ["11.1"] and tables_for("8.5.2") == ["8.5.2"]


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_trtexec_py_knows_when_each_option_it_prints_exists(option):
    """runtime/build/trtexec.py's own window of each option agrees with NVIDIA's table of every release."""
    for release, flags in TABLES.items():
        assert has_option(option, parse_line(release)) == (option in flags), (option, release)


def at_opset_13(root: Path) -> Path:
    """Every ONNX graph of the bundle declared at opset 13 (its operators are the same there): the
    Jetson Nano's TensorRT 8.0/8.2 parse up to 13, so every profile's pre-flight passes."""
    import onnx

    for path in root.glob("*.onnx"):
        model = onnx.load(str(path))
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = 13
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    rehash(root)
    return root


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, trt_int8_bundle) -> Path:
    """The TensorRT bundle (fp32 + Q/DQ int8, no FP16 graph) at opset 13."""
    root = tmp_path_factory.mktemp("int8") / "tiny-int8"
    shutil.copytree(trt_int8_bundle, root)
    return at_opset_13(root)


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory, trt_int8_bundle) -> Path:
    """The TensorRT bundle plus a real FP16 ONNX graph (float16 weights and I/O), as `export --precision fp16`."""
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    root = tmp_path_factory.mktemp("fp16") / "tiny-fp16"
    shutil.copytree(trt_int8_bundle, root)
    model = onnx.load(str(root / "model.onnx"))
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model)
    onnx.save(model, str(root / "model.fp16.onnx"))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["artifacts"]["fp16"] = {"file": "model.fp16.onnx"}
    manifest["files"]["model.fp16.onnx"] = ""
    atomic_write_json(root / "manifest.json", manifest)
    return at_opset_13(root)


@pytest.fixture(scope="module")
def static_bundle(tmp_path_factory, sample_photos) -> Path:
    """A bundle whose ONNX has every input axis fixed (batch 1), as `export --static-batch` writes it."""
    root = write_bundle(tmp_path_factory.mktemp("static") / "tiny-static", sample_photos, golden=False)
    build_classifier_onnx(root / "model.onnx", fixed_batch=1)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["inputs"][0]["shape"] = [1, 3, 32, 32]
    manifest["outputs"][0]["shape"] = [1, 10]
    atomic_write_json(root / "manifest.json", manifest)
    return at_opset_13(root)


def dry_run(bundle: Path, *args: str):
    return cli_runner().invoke(main, ["build", str(bundle), "--dry-run", *args], catch_exceptions=False)


def printed_commands(result, releases: list[str], precision: str) -> list[tuple[str, list[str]]]:
    """Every stdout line checked: a label per release, notes, trtexec lines; -> (release, argv) per command."""
    commands, labels, current = [], [], None
    for line in result.stdout.splitlines():
        assert "this-gpu" not in line, line
        label = LABEL.match(line)
        if label:
            assert label.group(1) == precision, line
            current = label.group(2)
            labels.append(current)
            assert "not built:" in line or "typed" in line, line
        elif line.startswith("#   note: "):
            assert current is not None, line
        else:
            assert line.startswith("trtexec --onnx="), f"unexpected line {line!r}"
            assert current is not None and current not in [r for r, _ in commands], line
            commands.append((current, shlex.split(line)))
    assert labels == releases, result.stdout
    return commands


def check_against_tables(release: str, argv: list[str]) -> None:
    options = [arg.split("=", 1)[0] for arg in argv[1:]]
    assert all(option.startswith("--") for option in options), argv
    for table in tables_for(release):
        unknown = [option for option in options if option not in TABLES[table]]
        assert not unknown, f"trtexec {table} has no {unknown}: {shlex.join(argv)}"


@pytest.mark.parametrize("profile", TRT_PROFILES)
@pytest.mark.parametrize("which", ["int8-bundle", "fp16-bundle", "static-bundle"])
def test_every_line_the_dry_run_prints_is_valid_for_the_trtexec_of_its_release(
        request, profile, which):
    """Every profile x precision x DLA choice x release: the labelled lines parse, and each option of each
    trtexec line is in that release's table (a refusal is one line on stderr, exit 2)."""
    bundle = {"int8-bundle": request.getfixturevalue("int8_bundle"), "fp16-bundle": request.getfixturevalue("fp16_bundle"),
              "static-bundle": request.getfixturevalue("static_bundle")}[which]
    prof = load_profile(profile)
    releases = [str(r) for r in prof.tensorrt]
    printed = 0
    for precision in prof.allowed_precisions:
        for dla in [None, *range(prof.dla_cores)]:
            args = ["--profile", profile, "--precision", precision] + ([] if dla is None else ["--dla-core", str(dla)])
            r = dry_run(bundle, *args)
            if r.exit_code == 2:  # refused by every release: one line that says why
                errors = [line for line in r.stderr.splitlines() if line.strip()]
                assert len(errors) == 1 and errors[0].startswith("error: ") and not r.stdout, r.output
                continue
            assert r.exit_code == 0, r.output
            for release, argv in printed_commands(r, releases, precision):
                check_against_tables(release, argv)
                assert f"--useDLACore={dla}" in argv if dla is not None and precision == "fp16" else True
                if which == "static-bundle":
                    assert not SHAPE_OPTIONS & {a.split("=", 1)[0] for a in argv}, argv
                printed += 1
            for release in releases:  # and each release alone, picked with --tensorrt
                one = dry_run(bundle, *args, "--tensorrt", release)
                if one.exit_code == 0:
                    assert [rel for rel, _ in printed_commands(one, [release], precision)] in ([release], []), one.stdout
                else:
                    assert one.exit_code == 2 and len(one.stderr.strip().splitlines()) == 1, one.output
    assert printed, "no line was printed for this profile at all"


def test_the_nanos_lines_run_on_trtexec_8_0_1_and_8_2_1(int8_bundle):
    r = dry_run(int8_bundle, "--profile", "jetson-nano", "--precision", "fp16")
    assert r.exit_code == 0, r.output
    (_, old), (_, new) = printed_commands(r, ["8.0.1", "8.2.1"], "fp16")
    for argv in (old, new):
        assert "--workspace=512" in argv and "--fp16" in argv
        assert not any(a.startswith("--memPoolSize") for a in argv)
        assert any(a.startswith("--saveEngine=") and a.endswith(".sm53.engine") for a in argv), argv
    assert "--profilingVerbosity=detailed" in new and not any(a.startswith("--profilingVerbosity") for a in old)


def test_tensorrt_picks_one_release_and_an_unknown_one_is_one_line(int8_bundle):
    r = dry_run(int8_bundle, "--profile", "jetson-nano", "--precision", "fp16", "--tensorrt", "8.2.1")
    assert r.exit_code == 0 and [rel for rel, _ in printed_commands(r, ["8.2.1"], "fp16")] == ["8.2.1"], r.output
    r = dry_run(int8_bundle, "--profile", "jetson-nano", "--tensorrt", "10.3")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and "names no TensorRT 10.3" in errors[0] and "8.0.1, 8.2.1" in errors[0], r.stderr


def test_fp16_on_tensorrt_11_comes_from_the_fp16_graph_or_is_refused(trt_int8_bundle, fp16_bundle):
    r = dry_run(fp16_bundle, "--profile", "server-a100", "--precision", "fp16", "--tensorrt", "11.x")
    (_, argv), = printed_commands(r, ["11.x"], "fp16")
    assert argv[1].endswith("model.fp16.onnx") and not {"--fp16", "--stronglyTyped"} & set(argv), argv
    r = dry_run(trt_int8_bundle, "--profile", "server-a100", "--precision", "fp16", "--tensorrt", "11.x")
    assert r.exit_code == 2 and "has no fp16 ONNX graph" in r.stderr and "--precision fp16" in r.stderr, r.output
    plan = make_plan(Bundle.load(trt_int8_bundle), load_profile("server-a100"), "fp16", "10.16")
    weak_on_11 = dataclasses.replace(plan, tensorrt="11.1")  # a plan that needs --fp16 on 11: refused, not dropped
    with pytest.raises(UsageError, match="trtexec of TensorRT 11.1 has no --fp16"):
        trtexec_command(weak_on_11)


def test_a_static_onnx_gets_no_explicit_shapes_in_trtexec_nor_in_the_builder(static_bundle, monkeypatch):
    from tests.runtime.backends import fake_tensorrt as fake
    from convdeploy.runtime.build.builder import build_serialized_engine

    plan = make_plan(Bundle.load(static_bundle), load_profile("server-a100"), "fp32", "10.3.0")
    assert plan.static_input and plan.min_shape == plan.opt_shape == plan.max_shape == (1, 3, 32, 32)
    assert not SHAPE_OPTIONS & {a.split("=", 1)[0] for a in trtexec_command(plan, static_bundle)}
    trt = fake.install(monkeypatch, "10.3.0")
    made = []
    real = fake._Builder.create_optimization_profile
    monkeypatch.setattr(fake._Builder, "create_optimization_profile", lambda self: made.append(1) or real(self))
    assert build_serialized_engine(trt.module, plan, static_bundle).plan_bytes
    assert made == []  # no optimization profile for a static network
