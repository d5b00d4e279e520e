"""The report's per-layer section: ``bench --report DIR --layers`` (table, chart, stage split).

Rendered from the ``layers`` and ``stages`` entries of each bench result in report.json
(:func:`runtime.bench_layers.profile_layers`, :func:`runtime.bench_layers.stage_split`);
an empty string when no bench result has them, so reports without ``--layers`` look as before.
"""

from __future__ import annotations

import html
from typing import Any, Mapping

from .report_plots import layer_time_figure

def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _layers_table(lp: Mapping[str, Any]) -> str:
    head = ("<tr><th>layer (source module)</th><th>kernel</th><th>ms</th><th>share</th><th>MACs</th>"
            "<th>GFLOP/s</th><th>of peak</th><th>ran</th></tr>")
    body = []
    for r in lp.get("rows") or []:
        frac, gflops, macs = r.get("fraction_of_peak"), r.get("gflops"), r.get("macs")
        body.append(
            f"<tr><td>{_e(r['layer'])}</td><td>{_e('+'.join(r.get('ops') or []))}</td>"
            f"<td class=num>{r['ms']:.3f}</td><td class=num>{100 * r['share']:.1f}%</td>"
            f"<td class=num>{f'{macs / 1e6:.1f}M' if macs else ''}</td>"
            f"<td class=num>{'' if gflops is None else f'{gflops:.1f}'}</td>"
            f"<td class=num>{'' if frac is None else f'{100 * frac:.0f}%'}</td>"
            f"<td>{_e(r.get('precision') or '')}</td></tr>")
    return "<div class=wide><table>" + head + "".join(body) + "</table></div>"


def _stages_table(st: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><td>{_e(s['stage'])}</td><td class=num>{s['ms_per_image']:.3f}</td>"
                   f"<td class=num>{100 * s['share']:.1f}%</td></tr>" for s in st.get("stages") or [])
    return (f"<h3>End-to-end stages, per image (batch {_e(st.get('batch'))}, {_e(st.get('images'))} images)</h3>"
            "<table><tr><th>stage</th><th>ms / image</th><th>share</th></tr>" + rows + "</table>"
            f"<p class=muted>{_e(st.get('note'))}; wall time {st.get('wall_ms_per_image', 0):.2f} ms per image.</p>")


def layers_section(doc: Mapping[str, Any]) -> str:
    """``<section id=layers>`` for every bench result with a per-layer profile; "" when none has."""
    parts = []
    for res in doc.get("bench") or []:
        lp = res.get("layers")
        if not lp:
            continue
        title = f"{lp.get('backend')} {lp.get('precision')}, {lp.get('artifact')}, batch {lp.get('batch')}"
        parts.append(f"<h3>{_e(title)}</h3>")
        if not lp.get("rows"):
            parts.append(f"<p class=muted>{_e(lp.get('note'))}</p>")
            continue
        uri = layer_time_figure(lp["rows"], f"slowest layers: {title}")
        if uri:
            parts.append(f'<img class=plot src="{uri}" alt="time per layer">')
        s = lp.get("sum_check") or {}
        peak = lp.get("peak") or {}
        notes = [f"{_e(lp.get('source'))}, median of {_e(lp.get('iterations'))} runs."]
        if s.get("model_only_ms"):
            notes.append(f"Per-layer sum {s['layers_ms']:.3f} ms against model-only {s['model_only_ms']:.3f} ms "
                         f"({100 * s['ratio']:.0f}%, {'within' if s.get('within_tolerance') else 'outside'} "
                         f"{100 * s.get('tolerance', 0.15):.0f}%)" + (f": {_e(s['gap_named'])}" if s.get("gap_named")
                                                                      else "") + ".")
        notes.append(f"Peak: {peak['gflops']:.0f} GFLOP/s FP32 FMA ({_e(peak.get('threads'))} threads, "
                     f"{_e(peak.get('cpu'))})." if peak.get("gflops") else
                     f"Peak not measured: {_e(peak.get('reason'))}.")
        if lp.get("int8"):
            notes.append(f"INT8: {len(lp['int8']['quantized'])} layers ran quantized; stayed float: "
                         f"{_e(', '.join(lp['int8']['float']) or 'none')}.")
        parts.append("<p class=muted>" + " ".join(notes) + "</p>")
        parts.append(_layers_table(lp))
        if res.get("stages"):
            parts.append(_stages_table(res["stages"]))
    if not parts:
        return ""
    return ('<section id="layers"><h2>Time per layer (bench --layers)</h2>' + "".join(parts) + "</section>")


__all__ = ["layers_section"]
