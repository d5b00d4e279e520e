"""report.html: one self-contained page rendered from a report.json document.

Inline CSS, figures and thumbnails as PNG data URIs, no script and no external
resource: the file opens from disk, offline, in any browser, and can be mailed or
attached to a CI run. Sections (each a ``<section id=...>``): ``summary`` (verdict,
inputs, warnings, notes), ``checks`` (each artifact's checks with limit and measured
value), ``accuracy`` (source and artifact accuracy and agreement with 95 % Wilson
intervals), ``per-class``, ``confusion`` (the artifact's decisions against the source's),
``flips`` (every flipped sample: thumbnail, true label, source top-2 with margin,
artifact top-2, near-ties marked), ``provenance`` (INT8 calibration, golden inputs,
versions) and ``bench`` (timings added by ``bench --report``).
"""

from __future__ import annotations

from html import escape
from typing import Any, Mapping, Sequence

from ..bundle.contract import REPORT_FORMAT
from .samples import weak_evidence
from .report_plots import accuracy_figure, confusion_figure, per_class_figure
from .report_layers import layers_section

# The page's <meta name="generator">: how write_report recognises a report.html of its own.
GENERATOR_META = REPORT_FORMAT
# The checks in the order a reader expects them: numbers first, then decisions, then accuracy.
CHECK_ORDER = ("finite", "max_rel_err", "min_cosine", "min_top1_agreement", "min_top1_outside_ties",
               "min_top5_overlap", "max_accuracy_drop")
SECTIONS = ("summary", "checks", "accuracy", "per-class", "confusion", "flips", "provenance", "bench")
# What a reader calls each check (its tolerance key stays in the cell's title and in report.json).
CHECK_LABELS = {
    "finite": "finite outputs",
    "max_rel_err": "max relative error",
    "min_cosine": "min cosine similarity",
    "min_top1_agreement": "top-1 agreement",
    "min_top1_outside_ties": "top-1 agreement outside near-ties",
    "min_top5_overlap": "top-5 overlap",
    "max_accuracy_drop": "accuracy drop",
}
# Checks whose value is a fraction (shown as a percentage) or percentage points.
PERCENT_CHECKS = ("min_top1_agreement", "min_top1_outside_ties", "min_top5_overlap")
POINT_CHECKS = ("max_accuracy_drop",)
BACKEND_NAMES = {"tensorrt": "TensorRT", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}

CSS = """
:root { --ok: #2e7d32; --bad: #c62828; --warn: #8a6d00; --muted: #666; --line: #ddd; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
       background: #fafafa; }
main { max-width: 1180px; margin: 0 auto; padding: 18px 24px 48px; }
h1 { font-size: 22px; margin: 6px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px;
  border-bottom: 1px solid var(--line); padding-bottom: 4px; } h3 { font-size: 15px; margin: 16px 0 6px; }
nav a { margin-right: 12px; color: #1f5fa8; text-decoration: none; font-size: 13px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12px;
         color: #fff; background: var(--muted); vertical-align: middle; }
.badge.passed, .badge.ok { background: var(--ok); } .badge.failed, .badge.bad { background: var(--bad); }
.badge.tie { background: #9e7c00; }
.headline { font-size: 15px; margin: 6px 0; } .muted { color: var(--muted); }
.box { border-radius: 6px; padding: 8px 12px; margin: 8px 0; }
.warnings { background: #fff8e1; border: 1px solid #f0d060; } .warnings li { color: #5d4700; }
.notes { background: #f1f5fb; border: 1px solid #cddcf0; }
table { border-collapse: collapse; margin: 6px 0 10px; background: #fff; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
tr.fail td { background: #fdecea; } td.ok { color: var(--ok); }
td.bad { color: var(--bad); font-weight: 600; }
img.plot { max-width: 100%; height: auto; display: block; margin: 6px 0 12px; background: #fff;
           border: 1px solid var(--line); }
.plots { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.gallery { display: flex; flex-wrap: wrap; gap: 8px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 6px; width: 190px;
        font-size: 12px; }
.card.clear { border-color: #e0a0a0; } .card img { image-rendering: pixelated; display: block; margin: 0 auto 4px;
  border: 1px solid var(--line); }
.card .nopic { height: 64px; display: flex; align-items: center; justify-content: center; color: var(--muted); }
.wide { overflow-x: auto; } .wide td:first-child { min-width: 150px; }
code { font-size: 12px; background: #f3f3f3; padding: 0 3px; border-radius: 3px; word-break: break-all; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
.badge.weak { background: #9e7c00; } .verdict.weak { color: #5d4700; font-weight: 600; }
td.overridden { box-shadow: inset 3px 0 0 #1f5fa8; } .set-by { color: #1f5fa8; font-size: 12px; }
.target { font-size: 14px; margin: 2px 0 6px; }
th.key { font-weight: 600; white-space: nowrap; } th.sub { padding-left: 22px; font-weight: normal; }
sup.why { color: #1f5fa8; font-weight: 600; }
"""


def html_available() -> bool:
    """Whether this environment can render report.html (matplotlib importable)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- small pieces
def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _pct(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage: 1 -> ``100 %`` (a whole number stays whole), 0.99609 -> ``99.61 %``."""
    if value is None:
        return "-"
    percent = 100.0 * float(value)
    if abs(percent - round(percent)) < 1e-9:
        return f"{round(percent):.0f} %"
    return f"{percent:.{digits}f} %"


def _check_value(name: str, value: Any) -> str:
    """A check's value or limit in the check's unit: percentages, percentage points, or the number."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    if name in PERCENT_CHECKS:
        return _pct(value)
    if name in POINT_CHECKS:
        return f"{value:.2f} pt"
    if name == "max_rel_err":
        return f"{value:.3g}"
    return _num(value)


def _label(key: Any) -> str:
    """A record's key as words: ``preprocessing_identical`` -> ``preprocessing identical``."""
    return _e(str(key).replace("_", " "))


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "<span class=muted>-</span>"
    if isinstance(value, float):
        return f"{value:.6g}"
    return _e(value)


def _interval(p: Mapping[str, Any] | None) -> str:
    if not p or p.get("value") is None:
        return "-"
    lo, hi = p["wilson95"]
    return f"{_pct(p['value'])} <span class=muted>[{100 * lo:.1f}, {100 * hi:.1f}]</span>"


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, (int, float)):
        return f"{value:.8g}"
    return _e(value)


def _img(uri: str | None, alt: str, cls: str = "plot") -> str:
    return "" if not uri else f'<img class="{cls}" src="{uri}" alt="{_e(alt)}">'


def _kv_rows(data: Mapping[str, Any], depth: int = 0, skip: Sequence[str] = ()) -> list[str]:
    """Rows of a record: nested records become indented rows under their key, lists of plain
    values a comma-separated cell, lists of records one group of rows per item (no JSON text)."""
    rows = []
    cls = ' class="key"' if depth == 0 else f' class="sub" style="padding-left: {8 + 16 * depth}px"'
    for key, value in data.items():
        if key in skip:
            continue
        if isinstance(value, Mapping):
            if not value:
                rows.append(f"<tr><th{cls}>{_label(key)}</th><td><span class=muted>-</span></td></tr>")
                continue
            rows.append(f'<tr><th{cls} colspan="2">{_label(key)}</th></tr>')
            rows.extend(_kv_rows(value, depth + 1))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value, 1):
                rows.append(f'<tr><th{cls} colspan="2">{_label(key)} {i}</th></tr>')
                rows.extend(_kv_rows(item, depth + 1) if isinstance(item, Mapping) else
                            [f"<tr><th></th><td>{_scalar(item)}</td></tr>"])
        elif isinstance(value, (list, tuple)):
            # Versions and names on one line; sentences (notes) one per line.
            glue = "<br>" if any(isinstance(v, str) and " " in v for v in value) else ", "
            shown = glue.join(_scalar(v) for v in value) if value else "<span class=muted>none</span>"
            rows.append(f"<tr><th{cls}>{_label(key)}</th><td>{shown}</td></tr>")
        else:
            rows.append(f"<tr><th{cls}>{_label(key)}</th><td>{_scalar(value)}</td></tr>")
    return rows


def _kv_table(data: Mapping[str, Any] | None, skip: Sequence[str] = ()) -> str:
    if not data:
        return "<p class=muted>not recorded</p>"
    return '<table class="record">' + "".join(_kv_rows(data, skip=skip)) + "</table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _class_name(doc: Mapping[str, Any], index: int | None) -> str:
    classes = doc.get("classes") or []
    if index is None:
        return "-"
    return str(classes[index]) if 0 <= index < len(classes) else str(index)


# --------------------------------------------------------------------------- sections
def _target(doc: Mapping[str, Any]) -> str:
    """The profile the bundle was exported for (from its provenance), said in the header."""
    profile = (doc.get("provenance") or {}).get("profile") or {}
    if not profile.get("name"):
        return '<p class="target muted">target profile: not recorded</p>'
    backend = profile.get("backend")
    facts = [profile.get("device"), f"runs on {BACKEND_NAMES.get(backend, backend)}" if backend else None]
    where = ""
    if backend == "tensorrt" and doc.get("origin") in ("export", "check"):
        where = ("; these checks ran its ONNX files on the machine that exported it, the TensorRT engine is "
                 "built and verified on the device (<code>convdeploy build</code>)")
    return (f'<p class="target">target profile <b>{_e(profile["name"])}</b> '
            f'<span class=muted>{_e("; ".join(f for f in facts if f))}{where}</span></p>')


def _verdict(doc: Mapping[str, Any]) -> tuple[str, str]:
    """The badge and the sentence under it: a pass that one flipped decision would overturn says so."""
    status = str(doc.get("status"))
    weak = weak_evidence(doc)
    if weak is None:
        return f'<span class="badge {_e(status)}">{_e(status.upper())}</span>', ""
    fragile = "; ".join(f"{_e(name)}: " + ", ".join(_limit_words(c) for c in checks)
                        for name, checks in weak["rows"].items())
    sentence = (f'<p class="verdict weak">PASSED, weak evidence: {weak["samples"]} samples; one flip would fail '
                f"({fragile}). Compare on more labelled images (<code>--data DIR</code>) before trusting it.</p>")
    return '<span class="badge weak">PASSED, weak evidence</span>', sentence


def _summary(doc: Mapping[str, Any]) -> str:
    bundle = doc.get("bundle") or {}
    badge, sentence = _verdict(doc)
    parts = [
        f'<h1>{_e(bundle.get("name") or "convdeploy")} {badge}</h1>',
        _target(doc),
        sentence,
        f'<p class="headline">{_e(doc.get("headline"))}</p>',
        f"<p>{_e(doc.get('summary'))} <span class=muted>({_e(doc.get('origin'))}, {_e(doc.get('created'))}; "
        f"architecture {_e(bundle.get('architecture'))})</span></p>",
    ]
    inputs = doc.get("inputs") or {}
    if inputs:
        parts.append(_kv_table(inputs))
    warnings = doc.get("warnings") or []
    if warnings:
        parts.append('<div class="box warnings"><b>Warnings</b> (what limits this verdict)<ul>'
                     + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>")
    notes = doc.get("notes") or []
    if notes:
        parts.append('<div class="box notes"><b>Notes</b><ul>' + "".join(f"<li>{_e(n)}</li>" for n in notes)
                     + "</ul></div>")
    return f'<section id="summary">{"".join(parts)}</section>'


def _bound(name: str) -> str:
    return "&le;" if name.startswith("max_") else "&ge;"


def _limit_words(check: Mapping[str, Any]) -> str:
    """``top-1 agreement &ge; 99 %``: a check and its limit, in words."""
    name = str(check.get("check"))
    return f"{_e(CHECK_LABELS.get(name, name))} {_bound(name)} {_check_value(name, check.get('limit'))}"


def _checks(artifacts: Sequence[Mapping[str, Any]]) -> str:
    """One row per artifact, one column per check: the measured value over the tier's limit.

    A limit that a profile or ``--tol`` changed from the tier's default is marked, with the default.
    """
    if not artifacts:
        return _section("checks", "Checks", "<p class=muted>no artifact was compared</p>")
    names: list[str] = []
    for art in artifacts:
        names.extend(c["check"] for c in art.get("checks") or [] if c["check"] not in names)
    names.sort(key=lambda n: CHECK_ORDER.index(n) if n in CHECK_ORDER else len(CHECK_ORDER))
    rows = []
    changed_by: set[str] = set()
    for art in artifacts:
        by_name = {c["check"]: c for c in art.get("checks") or []}
        changed = art.get("tolerance_overrides") or {}
        verdict = "passed" if art.get("passed") else "failed"
        cells = []
        for name in names:
            c = by_name.get(name)
            if c is None:
                cells.append("<td class=muted>-</td>")
                continue
            ok = bool(c.get("ok"))
            if name == "finite":
                cells.append(f'<td class="{"ok" if ok else "bad"}">{"yes" if ok else "NO (NaN or inf)"}</td>')
                continue
            override = changed.get(name)
            mark = ""
            if override:
                changed_by.add(str(override.get("set_by")))
                default = override.get("default")
                was = "no check" if default is None else f"{_bound(name)} {_check_value(name, default)}"
                mark = (f'<br><span class="set-by">set by {_e(override.get("set_by"))}; '
                        f"tier default {was}</span>")
            cls = f'num {"ok" if ok else "bad"}{" overridden" if override else ""}'
            cells.append(f'<td class="{cls}" title="{_e(name)}">{_check_value(name, c.get("value"))}<br>'
                         f'<span class=muted>{_bound(name)} {_check_value(name, c.get("limit"))}</span>{mark}</td>')
        rows.append(f'<tr class="{"" if art.get("passed") else "fail"}"><td><b>{_e(art["name"])}</b><br>'
                    f'<span class=muted>{_e(art.get("artifact"))}; {_e(art.get("precision"))} tier; '
                    f'{_e(art.get("samples"))} samples</span></td><td><span class="badge {verdict}">{verdict}</span>'
                    f'</td>{"".join(cells)}</tr>')
    head = "".join(f'<th title="{_e(n)}">{_e(CHECK_LABELS.get(n, n.replace("_", " ")))}</th>' for n in names)
    table = (f'<div class="wide"><table><tr><th>artifact</th><th>verdict</th>{head}</tr>{"".join(rows)}</table>'
             f"</div>")
    explain = ("<p class=muted>Each cell: the measured value, and below it the limit of the precision's tier "
               "(after the profile's and the command line's overrides). Agreement and overlap are percentages of "
               "the samples, the accuracy drop is in percentage points. A dash: the tier does not check it.</p>")
    if changed_by:
        explain += (f"<p>Limits marked <span class=set-by>set by ...</span> differ from the tier's default "
                    f"(changed by {_e(', '.join(sorted(changed_by)))}): this verdict is not the default tier's.</p>")
    return _section("checks", "Checks: measured value against the limit", table + explain)


def _accuracy(artifacts: Sequence[Mapping[str, Any]]) -> str:
    if not artifacts:
        return _section("accuracy", "Accuracy", "<p class=muted>nothing measured</p>")
    rows = []
    for art in artifacts:
        acc = art.get("accuracy") or {}
        agreement = art.get("agreement") or {}
        drop = acc.get("drop_points")
        rows.append(
            f"<tr><td>{_e(art['name'])}</td><td class=num>{_e(art.get('samples'))}</td>"
            f"<td class=num>{_interval(acc.get('source'))}</td><td class=num>{_interval(acc.get('artifact'))}</td>"
            f"<td class=num>{'-' if drop is None else f'{drop:+.2f}'}</td>"
            f"<td class=num>{_interval(agreement)}</td>"
            f"<td class=num>{_e(agreement.get('flips'))} ({_e(agreement.get('flips_on_near_ties'))})</td></tr>")
    table = ("<table><tr><th>artifact</th><th>samples</th><th>source accuracy [95 % CI]</th>"
             "<th>artifact accuracy [95 % CI]</th><th>drop (points)</th><th>top-1 agreement [95 % CI]</th>"
             "<th>flips (near-ties)</th></tr>" + "".join(rows) + "</table>")
    labelled = any(a.get("accuracy") for a in artifacts)
    note = "" if labelled else "<p class=muted>no labels: accuracy is not measured, only agreement with the source</p>"
    explain = ("<p class=muted>Intervals are 95 % Wilson score intervals: how far the true rate could be from the "
               "measured one on this many samples. A drop is in percentage points (positive: the artifact is "
               "worse).</p>")
    return _section("accuracy", "Accuracy and agreement",
                    table + note + explain + _img(accuracy_figure(artifacts), "accuracy and agreement"))


def _groups(artifacts: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rows by view mode: the plain rows share the source's outputs, each TTA mode its own."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for art in artifacts:
        groups.setdefault("single view" if not art.get("tta") else f"TTA {art['tta']}", []).append(art)
    return groups


def _per_class(doc: Mapping[str, Any]) -> str:
    names = doc.get("classes") or []
    parts = []
    for title, rows in _groups(doc.get("artifacts") or []).items():
        rows = [r for r in rows if r.get("per_class")]
        if not rows:
            continue
        source = [c["source"] for c in rows[0]["per_class"]]
        series = {r["name"]: [c["artifact"] for c in r["per_class"]] for r in rows}
        parts.append(_img(per_class_figure(f"per-class accuracy, {title}", names, source, series),
                          f"per-class accuracy, {title}"))
        head = "".join(f"<th>{_e(n)}</th>" for n in series)
        body = []
        for i, c in enumerate(rows[0]["per_class"]):
            cells = "".join(f"<td class=num>{_pct(series[n][i], 1)}</td>" for n in series)
            differs = any(series[n][i] != c["source"] for n in series)
            body.append(f'<tr class="{"fail" if differs else ""}"><td>{_e(c["name"])}</td>'
                        f'<td class=num>{c["support"]}</td><td class=num>{_pct(c["source"], 1)}</td>{cells}</tr>')
        parts.append(f"<details><summary>table ({title})</summary><table><tr><th>class</th><th>samples</th>"
                     f"<th>source</th>{head}</tr>{''.join(body)}</table></details>")
    if not parts:
        parts.append("<p class=muted>no labels that match the model's classes: per-class accuracy is not "
                     "measured</p>")
    return _section("per-class", "Per-class accuracy: source vs artifact", "".join(parts))


def _confusion(doc: Mapping[str, Any]) -> str:
    names = doc.get("classes") or []
    figures, identical = [], []
    for art in doc.get("artifacts") or []:
        conf = art.get("confusion")
        if not conf:
            continue
        if not art["agreement"]["flips"]:  # a diagonal matrix: said in words, not drawn
            identical.append(art["name"])
            continue
        figures.append(_img(confusion_figure(art["name"], names, conf["entries"]),
                            f"confusion of {art['name']} against the source"))
    body = ("<p class=muted>Rows: the source model's decision; columns: the artifact's. The diagonal is "
            "agreement; every circled cell off it holds flipped samples.</p>")
    if figures:
        body += f'<div class="plots">{"".join(figures)}</div>'
    if identical:
        body += (f"<p>Decisions identical to the source's on every sample (a diagonal matrix, not drawn): "
                 f"{_e(', '.join(identical))}.</p>")
    if not figures and not identical:
        body += "<p class=muted>no per-sample outputs recorded</p>"
    return _section("confusion", "Artifact against the source's decisions", body)


def _logit(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _top2(doc: Mapping[str, Any], top: Sequence[Mapping[str, Any]]) -> str:
    return " / ".join(f"<b>{_e(t.get('name'))}</b> ({_logit(t.get('logit'))})" for t in top)


def _flips(doc: Mapping[str, Any]) -> str:
    parts = []
    for art in doc.get("artifacts") or []:
        flips = art.get("flips") or []
        near = sum(1 for f in flips if f.get("near_tie"))
        parts.append(f"<h3>{_e(art['name'])}: {len(flips)} flipped of {_e(art.get('samples'))} "
                     f"<span class=muted>({near} near-ties, "
                     f"a near-tie: a source margin under {_pct((art.get('agreement') or {}).get('near_tie'), 3)}"
                     f" of the logit scale)</span></h3>")
        if not flips:
            parts.append("<p class=muted>no flipped sample: the artifact decides like the source on every input</p>")
            continue
        cards = []
        for f in flips:
            pic = _img(f.get("thumbnail"), f"sample {f['index']}", cls="thumb") or '<div class="nopic">no picture</div>'
            where = f"#{f['index']}" + (f" <code>{_e(f['path'])}</code>" if f.get("path") else "")
            tie = '<span class="badge tie">near-tie</span>' if f.get("near_tie") else \
                '<span class="badge bad">clear flip</span>'
            label = "" if f.get("label") is None else \
                f"<div>true label: <b>{_e(_class_name(doc, f['label']))}</b></div>"
            cards.append(
                f'<div class="card {"tie" if f.get("near_tie") else "clear"}">{pic}<div>{where} {tie}</div>{label}'
                f"<div>source: {_top2(doc, f.get('source_top2') or [])}<br><span class=muted>margin "
                f"{_logit(f.get('source_margin'))}</span></div>"
                f"<div>artifact: {_top2(doc, f.get('artifact_top2') or [])}</div></div>")
        parts.append(f'<div class="gallery">{"".join(cards)}</div>')
    if not parts:
        parts.append("<p class=muted>no artifact was compared</p>")
    intro = ("<p class=muted>Every sample whose top-1 decision differs between the source and the artifact, with the "
             "source's top-2 classes (logits) and its top-1/top-2 margin. A near-tie is a flip where that margin is "
             "below the tier's near_tie fraction of the sample's logit scale.</p>")
    return _section("flips", "Flipped samples", intro + "".join(parts))


def _provenance(doc: Mapping[str, Any]) -> str:
    calibration = doc.get("calibration")
    body = ["<h3>INT8 calibration</h3>",
            _kv_table(calibration) if calibration else "<p class=muted>no INT8 artifact</p>",
            "<h3>Golden inputs (what verify replays on a device)</h3>", _kv_table(doc.get("golden")),
            "<h3>Provenance</h3>", _kv_table(doc.get("provenance"), skip=("timings",))]
    return _section("provenance", "Calibration and provenance", "".join(body))


def e2e_faster_reason(model: Mapping[str, Any], e2e: Mapping[str, Any]) -> str | None:
    """Why end to end measured more images/s than model only at the same batch, or None when it did not.

    End to end runs the same inference calls plus decoding, so it cannot truly be faster:
    the decode workers overlap inference (hiding decoding, not inference), and the rest is
    the two measurements' difference: one timed pass over the images against the mean of
    model-only's timed calls, at different moments on the same machine.
    """
    model_ips, e2e_ips = model.get("throughput_ips"), e2e.get("throughput_ips")
    if not model_ips or not e2e_ips or e2e_ips <= model_ips:
        return None
    excess = 100.0 * (e2e_ips / model_ips - 1.0)
    p50, p90 = model.get("p50_ms"), model.get("p90_ms")
    spread = f" (model only's own p50-p90 spread: {100.0 * (p90 / p50 - 1.0):.0f} %)" if p50 and p90 else ""
    return (f"end to end measured {excess:.0f} % above model only at batch {e2e.get('batch')}: it runs the same "
            f"inference calls plus decoding, which its {e2e.get('workers') or 'decode'} worker threads overlap with "
            f"inference, so the gap is timing variation between the two measurements{spread}: one pass over "
            f"{e2e.get('images')} images against {model.get('iterations')} timed calls, at different moments. "
            f"Read model only as the bound for both.")


def _bench(doc: Mapping[str, Any]) -> str:
    """One table over every timed artifact: latency per batch, time per image and throughput per batch size."""
    results = doc.get("bench") or []
    if not results:
        return _section("bench", "Speed (bench)", "<p class=muted>not measured: run <code>convdeploy bench BUNDLE "
                                                  "--report DIR</code> to add latency and throughput here</p>")
    rows = []
    reasons: list[str] = []
    for res in results:
        backend = res.get("backend") or {}
        e2e = {e["batch"]: e for e in res.get("end_to_end") or []}
        torch_rows = {t["batch"]: t for t in (res.get("torch") or {}).get("model_only") or []}
        who = (f"{_e(backend.get('backend'))} {_e(backend.get('precision'))}<br><span class=muted>"
               f"{_e(backend.get('artifact'))} on {_e(backend.get('device'))}, threads "
               f"{_e(res.get('threads') or 'default')}</span>")
        for m in res.get("model_only") or []:
            run = e2e.get(m["batch"]) or {}
            end_to_end = run.get("throughput_ips")
            speedup = (torch_rows.get(m["batch"]) or {}).get("speedup_vs_torch")
            reason = e2e_faster_reason(m, {**run, "workers": backend.get("workers")}) if run else None
            cell = "-" if end_to_end is None else f"{end_to_end:,.0f}"
            if reason:
                reasons.append(f"{backend.get('backend')} {backend.get('precision')}: {reason}")
                cell += f' <sup class="why" title="{_e(reason)}">{len(reasons)}</sup>'
            rows.append(
                f"<tr><td>{who}</td><td class=num>{m['batch']}</td><td class=num>{m['p50_ms']:.3f}</td>"
                f"<td class=num>{m['p90_ms']:.3f}</td><td class=num>{m['p99_ms']:.3f}</td>"
                f"<td class=num>{m['p50_ms'] / max(1, m['batch']):.4f}</td>"
                f"<td class=num>{m['throughput_ips']:,.0f}</td><td class=num>{cell}</td>"
                f"<td class=num>{'-' if speedup is None else f'{speedup:.2f}x'}</td></tr>")
            who = ""
    inputs = ((results[0].get("model_only") or [{}])[0]).get("inputs")
    table = ("<table><tr><th>backend, precision</th><th>batch<br><span class=muted>images per call</span></th>"
             "<th>p50 ms<br><span class=muted>per batch</span></th><th>p90 ms<br><span class=muted>per batch</span>"
             "</th><th>p99 ms<br><span class=muted>per batch</span></th><th>p50 ms<br><span class=muted>per image"
             "</span></th><th>images/s<br><span class=muted>model only</span></th><th>images/s<br>"
             "<span class=muted>end to end</span></th><th>vs PyTorch<br><span class=muted>model only</span></th>"
             "</tr>" + "".join(rows) + "</table>")
    explain = (f"<p class=muted>Latencies are per call of a whole batch (per image: p50 divided by the batch); "
               f"images/s count images, not batches. Model only: inference on {_e(inputs)}; end to end: decode + "
               "preprocess + infer over image files (measured when bench was given --images). Timings are of the "
               "machine that ran bench, with what else ran on it.</p>")
    if reasons:
        explain += "<ol class=why>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ol>"
    return _section("bench", "Speed (bench)", table + explain)


def render_html(doc: Mapping[str, Any]) -> str:
    """The self-contained page of a report document (:mod:`runtime.parity.report_document`)."""
    artifacts = doc.get("artifacts") or []
    title = f"{(doc.get('bundle') or {}).get('name') or 'convdeploy'}: {doc.get('status')} - convdeploy report"
    nav = "".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS)
    body = "".join([
        f"<nav>{nav}</nav>", _summary(doc), _checks(artifacts), _accuracy(artifacts), _per_class(doc),
        _confusion(doc), _flips(doc), _provenance(doc), _bench(doc), layers_section(doc),
        f"<footer>{_e(doc.get('generator'))}; report schema {_e(doc.get('format'))} v{_e(doc.get('schema_version'))}"
        f"; every number is also in report.json beside this file</footer>",
    ])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="{GENERATOR_META}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


__all__ = ["CHECK_LABELS", "GENERATOR_META", "SECTIONS", "e2e_faster_reason", "html_available", "render_html"]
