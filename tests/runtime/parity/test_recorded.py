"""The limits a bundle was exported under: read from parity.json, layered under --tol, and said."""

from __future__ import annotations

import json

from convdeploy.runtime.bundle.reader import Bundle
from convdeploy.runtime.parity.recorded import check_overrides, limit_notes, recorded_limits
from convdeploy.runtime.parity.report import ParityRow
from convdeploy.runtime.parity.tolerances import TIERS, resolve
from convdeploy.runtime.parity.metrics import Verdict


def _row(tier, tol):
    return ParityRow(tier, tier, f"model.{tier}.onnx", {}, Verdict(True, tier), tol)


def test_recorded_limits_come_from_parity_json_rows(bundle_copy):
    root = bundle_copy()
    tight = {**TIERS["int8"], "max_accuracy_drop": 0.1, "retired_key": 1.0}
    (root / "parity.json").write_text(json.dumps({"status": "failed", "rows": [
        {"name": "int8", "precision": "int8", "tolerances": tight}]}))
    recorded = recorded_limits(Bundle.load(root, verify_hashes=False))
    assert recorded == {"int8": {**TIERS["int8"], "max_accuracy_drop": 0.1}}  # a key no longer known is left out


def test_recorded_limits_judge_unless_a_profile_is_named_and_tol_goes_on_top():
    recorded = {"int8": {**TIERS["int8"], "max_accuracy_drop": 0.1}}
    layered = check_overrides(recorded, {"int8": {"min_cosine": 0.9}}, explicit_profile=False)
    assert resolve("int8", None, layered) == {**TIERS["int8"], "max_accuracy_drop": 0.1, "min_cosine": 0.9}
    assert check_overrides(recorded, None, explicit_profile=True) is None
    assert check_overrides({}, {"fp32": {"max_rel_err": 1.0}}, explicit_profile=False) == {"fp32": {"max_rel_err": 1.0}}


def test_limit_notes_say_where_limits_differ():
    recorded = {"int8": {**TIERS["int8"], "max_accuracy_drop": 0.1}}
    same = limit_notes([_row("int8", dict(recorded["int8"]))], recorded, None)
    assert same == ["judged with the limits the bundle was exported under (parity.json), not the defaults: "
                    "int8.max_accuracy_drop=0.1 (default 1); pass --tol or --profile to judge otherwise"]
    loose = limit_notes([_row("int8", dict(TIERS["int8"]))], recorded, None)
    assert loose == ["this check's limits differ from the ones the bundle was exported under (parity.json): "
                     "int8.max_accuracy_drop=1 (export: 0.1)"]
    assert limit_notes([_row("int8", dict(TIERS["int8"]))], {"int8": dict(TIERS["int8"])}, None) == []
