"""The sweep report: every trial in a table sorted by the metric, and each searched setting plotted against it."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from yolokf.sweeps.plan import searched_keys, trial_table


def render_markdown(records: list[dict[str, Any]], metric: str) -> str:
    header, body = trial_table(records, metric)
    lines = [f"# Sweep: {len(records)} trials by {metric}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _plot(records: list[dict[str, Any]], key: str, metric: str) -> str:
    """A PNG (base64) of `key` against `metric` for the trials that reported it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        (r["values"][key], r["metrics"][metric])
        for r in records
        if key in r.get("values", {}) and isinstance(r.get("metrics", {}).get(metric), (int, float))
    ]
    figure, axes = plt.subplots(figsize=(4, 3), dpi=100)
    ys = [y for _, y in points]
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points):
        numbers = [float(x) for x, _ in points]
        axes.scatter(numbers, ys)
        if numbers and min(numbers) > 0 and max(numbers) / min(numbers) >= 100:
            axes.set_xscale("log")
    else:
        axes.scatter([str(x) for x, _ in points], ys)
    axes.set_xlabel(key)
    axes.set_ylabel(metric)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def render_html(records: list[dict[str, Any]], best: dict[str, Any], metric: str, mode: str) -> str:
    header, body = trial_table(records, metric)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    table = "".join(
        f"<tr{' class=best' if row[0] == str(best['trial']) else ''}>"
        + "".join(f"<td>{html.escape(c)}</td>" for c in row)
        + "</tr>"
        for row in body
    )
    plots = "".join(
        f'<figure><img alt="{html.escape(key)} against {html.escape(metric)}" '
        f'src="data:image/png;base64,{_plot(records, key, metric)}"></figure>'
        for key in searched_keys(records)
    )
    value = best["metrics"][metric]
    spent = sum(int(r.get("epochs") or 0) for r in records)
    return (
        "<html><head><meta charset=utf-8><title>yolokf sweep</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
        "tr.best{background:#dfd}figure{display:inline-block;margin:4px}</style></head><body>"
        f"<h2>Sweep: {len(records)} trials, {spent} trial-epochs</h2>"
        f"<p>Best: trial {best['trial']}, {html.escape(metric)} = {value:.4f} ({mode}), "
        f"{html.escape(str(best['values']))}</p>"
        f"<table><tr>{head}</tr>{table}</table>{plots}</body></html>"
    )
