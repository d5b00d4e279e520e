"""predict --ray: a local Ray (2 CPUs) answers row for row like the single-process predict."""

from __future__ import annotations

import csv

import pytest

from convdeploy.runtime.predictor import PREDICTION_COLUMNS, Predictor, expand_sources
from convdeploy.runtime.serve.ray_batch import write_predictions
from tests.conftest import cli_runner

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_photos):
    from tests.runtime.conftest import real_images

    root = tmp_path_factory.mktemp("ray_images")
    for i, img in enumerate(real_images(sample_photos) * 2):
        img.save(root / f"img{i:02d}.{'png' if i % 3 == 0 else 'jpg'}")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_ray_predict_equals_local_predict_row_for_row(local_ray, tiny_bundle, images, tmp_path):
    from convdeploy.runtime.serve.ray_batch import predict_on_ray

    files, _ = expand_sources([str(images)])
    with Predictor.from_bundle(tiny_bundle) as predictor:
        local = list(predictor.predict_iter(files, 3))
    ran = predict_on_ray(tiny_bundle, [str(images)], topk=3, workers=2, batch_size=4)
    assert ran.workers == 2 and ran.resources == {"num_cpus": 1.0}
    assert [p.to_row() for p in ran.predictions] == [p.to_row() for p in local]
    assert [p.to_dict() for p in ran.predictions] == [p.to_dict() for p in local]  # full precision too
    assert sum(not p.ok for p in ran.predictions) == 1

    # a Parquet listing of the same paths gives the same answers; written as Parquet and CSV
    import pyarrow as pa
    import pyarrow.parquet as pq

    listing = tmp_path / "listing.parquet"
    pq.write_table(pa.table({"path": [str(f) for f in files]}), listing)
    again = predict_on_ray(tiny_bundle, [str(listing)], topk=3, workers=1)
    assert [p.to_row() for p in again.predictions] == [p.to_row() for p in local]
    table = pq.read_table(write_predictions(again.predictions, tmp_path / "p.parquet"))
    assert table.column_names == list(PREDICTION_COLUMNS)
    with open(write_predictions(local, tmp_path / "p.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{k: str(v) for k, v in p.to_row().items()} for p in local]
    assert table.to_pylist() == rows


def test_the_cli_runs_predict_on_ray_with_the_csv_columns(local_ray, tiny_bundle, images):
    
    from convdeploy.cli import main

    local = cli_runner().invoke(main, ["predict", str(tiny_bundle), str(images), "--csv", "--topk", "2"])
    on_ray = cli_runner().invoke(main, ["predict", str(tiny_bundle), str(images), "--csv", "--topk", "2", "--ray"])
    assert local.exit_code == on_ray.exit_code == 2  # the broken file, reported in place
    assert on_ray.stdout == local.stdout and on_ray.stdout.startswith(",".join(PREDICTION_COLUMNS))


def test_out_refuses_an_existing_file_and_unknown_suffixes(tmp_path):
    from convdeploy.runtime.errors import InputError, UsageError

    (tmp_path / "x.csv").write_text("keep")
    with pytest.raises(InputError):
        write_predictions([], tmp_path / "x.csv")
    with pytest.raises(UsageError):
        write_predictions([], tmp_path / "x.json")
