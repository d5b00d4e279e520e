"""Data lost (issue 12): every command that replaces a directory replaces only what convdeploy wrote.

``export``, ``digits``, ``train``/``finetune`` and ``demo`` with ``--overwrite`` on a folder
of the user's are refused with exit 2 and the reason, and the folder is byte-for-byte as it
was; on the tool's own output they replace it. (``serve`` is covered in
tests/runtime/serve/test_triton.py; the rule itself in tests/runtime/test_fsutil.py.)
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from convdeploy.cli import main
from tests.exporter.export.export_helpers import cached_lenet_checkpoint, leftovers

TINY_TRAIN = ["--epochs", "1", "--train-limit", "64", "--val-limit", "32", "--workers", "0", "--no-progress"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def user_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "photos").mkdir()
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    return path


def snapshot(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_refused(r, folder, before):
    assert r.exit_code == 2, r.output
    assert "was not written by convdeploy" in r.output or "that convdeploy did not write" in r.output, r.output
    assert "Traceback" not in r.output
    assert snapshot(folder) == before


@pytest.fixture(scope="module")
def lenet_ckpt():
    return cached_lenet_checkpoint()


def test_export_overwrite_refuses_a_users_folder(lenet_ckpt, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    assert_refused(cli("export", lenet_ckpt, "--out", mine, "--overwrite", "--no-progress"), mine, before)
    # a folder that merely holds a manifest.json of something else is not a bundle either
    (mine / "manifest.json").write_text('{"name": "my web app"}')
    before = snapshot(mine)
    assert_refused(cli("export", lenet_ckpt, "--out", mine, "--overwrite", "--no-progress"), mine, before)
    assert not leftovers(tmp_path)


def test_export_overwrite_replaces_a_bundle_and_the_failed_dir_is_never_a_users(lenet_ckpt, tmp_path):
    out = tmp_path / "b"
    r = cli("export", lenet_ckpt, "--out", out, "--parity-samples", "32", "--no-progress")
    assert r.exit_code == 0, r.output
    r = cli("export", lenet_ckpt, "--out", out, "--parity-samples", "32", "--no-progress")
    assert r.exit_code == 2 and "bundle" in r.output and "already exists" in r.output
    r = cli("export", lenet_ckpt, "--out", out, "--parity-samples", "32", "--no-progress", "--overwrite")
    assert r.exit_code == 0, r.output
    # A failed gate writes <out>.failed; a user's folder of that name is refused, not replaced.
    failed = user_folder(tmp_path / "c.failed")
    before = snapshot(failed)
    wrong = '{"color_mode": "L", "resize": [32, 32], "crop": null, "mean": [0.0], "std": [1.0]}'
    r = cli("export", lenet_ckpt, "--out", tmp_path / "c", "--preprocess", wrong, "--parity-samples", "32",
            "--no-progress")
    assert_refused(r, failed, before)
    assert not (tmp_path / "c").exists() and not leftovers(tmp_path)


def test_digits_overwrite_replaces_only_a_digits_tree(tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    assert_refused(cli("digits", mine, "--overwrite"), mine, before)
    ours = tmp_path / "digits"
    assert cli("digits", ours).exit_code == 0
    assert (ours / ".convdeploy-digits.json").is_file()
    r = cli("digits", ours)
    assert r.exit_code == 2 and "digits tree" in r.output and "already exists" in r.output
    assert cli("digits", ours, "--overwrite").exit_code == 0
    # A tree written before the marker existed is recognised by its exact layout ...
    (ours / ".convdeploy-digits.json").unlink()
    assert cli("digits", ours, "--overwrite").exit_code == 0
    # ... but not once the user added a file of their own to it.
    (ours / ".convdeploy-digits.json").unlink()
    (ours / "train" / "0" / "my-own-scan.png").write_bytes(b"png")
    before = snapshot(ours)
    assert_refused(cli("digits", ours, "--overwrite"), ours, before)
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("planted", ["last", "best", "metrics.json", "curves.png"])
def test_train_never_replaces_a_users_files_even_with_overwrite(tmp_path, planted):
    out = user_folder(tmp_path / "out")
    target = out / planted
    if "." in planted:
        target.write_text("mine")
    else:
        user_folder(target)
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        r = cli("train", "lenet5", "--data", "digits", "--out", out, *TINY_TRAIN, *extra)
        assert r.exit_code == 2, r.output
        assert "that convdeploy did not write" in r.output and planted in r.output
        assert snapshot(out) == before


def test_train_overwrite_replaces_its_own_run(tmp_path):
    out = tmp_path / "run"
    assert cli("train", "lenet5", "--data", "digits", "--out", out, *TINY_TRAIN).exit_code == 0
    r = cli("train", "lenet5", "--data", "digits", "--out", out, *TINY_TRAIN)
    assert r.exit_code == 2 and "already holds a training run" in r.output
    r = cli("train", "lenet5", "--data", "digits", "--out", out, *TINY_TRAIN, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not leftovers(out) and not leftovers(tmp_path)


@pytest.mark.parametrize("planted", ["digits", "bundle", "run/last"])
def test_demo_overwrite_refuses_a_users_folder_before_it_trains(tmp_path, planted):
    out = tmp_path / "demo"
    user_folder(out / planted)
    before = snapshot(out)
    r = cli("demo", "--out", out, "--epochs", "1", "--overwrite", "--no-progress")
    assert r.exit_code == 2, r.output
    assert "[1/4]" not in r.output  # refused up front, not after training
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == [planted.split("/")[0]]
