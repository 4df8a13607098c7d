"""Render results.json as a table (terminal, Markdown, HTML) and a Pareto plot."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from slimkit.core.io import atomic_write_bytes, atomic_write_text

COLUMNS = ("step", "technique", "quality", "Δ quality", "size", "× smaller", "params (nonzero)",
           "MACs", "× fewer MACs", "latency b1 ms", "× faster b1", "latency bN ms", "× faster bN", "backend")


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row of formatted cells per step, ratios against the baseline (the first step)."""
    steps = results["steps"]
    if not steps:
        return []
    base = steps[0]["metrics"]
    rows = []
    for s in steps:
        m = s["metrics"]
        b1, bn = m["latency_b1"], m["latency_bN"]
        rows.append([
            s["name"], s["technique"], f"{m['quality']:.4f}", f"{m['quality'] - base['quality']:+.4f}",
            _bytes(m["size_bytes"]), _ratio(base["size_bytes"], m["size_bytes"]),
            f"{m['params']:,} ({m['nonzero_params']:,})", _count(m["macs"]), _ratio(base["macs"], m["macs"]),
            f"{b1['median_ms']:.3f} ({b1['p25_ms']:.3f}–{b1['p75_ms']:.3f})",
            _ratio(base["latency_ms_b1"], m["latency_ms_b1"]),
            f"{bn['median_ms']:.3f} ({bn['p25_ms']:.3f}–{bn['p75_ms']:.3f})",
            _ratio(base["latency_ms_bN"], m["latency_ms_bN"]),
            f"{m['backend']}{'' if m.get('precision', 'fp32') == 'fp32' else ' ' + m['precision']} ({m['device']})",
        ])
    return rows


def caption(results: dict[str, Any]) -> str:
    steps = results["steps"]
    n = steps[0]["metrics"]["batch_N"] if steps else "?"
    env = results.get("environment", {})
    return (f"task {results['task']}; quality = {results['quality_metric']} on the held-out test split; "
            f"size = bytes of each step's saved artifact; latency = median (p25–p75) at batch 1 and batch {n}, "
            f"{env.get('threads', '?')} threads, torch {env.get('torch', '?')}; ratios are against the baseline.")


def render_markdown(results: dict[str, Any]) -> str:
    lines = [f"# slimkit report: {results['task']}", "", caption(results), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    lines += ["", "![quality vs latency](pareto.png)", ""]
    extras = [(s["name"], s["metrics"].get("quality_metrics", {}), s["metrics"].get("peak_memory_bytes"))
              for s in results["steps"]]
    lines += ["## Other metrics", "", "| step | peak memory (b N) | task metrics |", "|---|---|---|"]
    for name, qm, mem in extras:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in qm.items())
        lines.append(f"| {name} | {_bytes(mem) if mem is not None else '—'} | {metrics} |")
    lines += _details_markdown(results)
    return "\n".join(lines) + "\n"


def _details_markdown(results: dict[str, Any]) -> list[str]:
    """What each step reported about itself; a deploy step's candidates as a table of their own."""
    lines = ["", "## What each step did", ""]
    for s in results["steps"][1:]:
        info = s.get("info") or {}
        scalars = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool)) and v is not None}
        lines.append(f"- **{s['name']}**: " + (", ".join(f"{k} = {_fmt(v)}" for k, v in scalars.items()) or "—"))
        if s["technique"] == "deploy" and info.get("candidates"):
            versus = any(c.get("versus_b1_ms") is not None for c in info["candidates"])
            extra = " | × vs baseline b1 | × vs baseline bN" if versus else ""
            note = ("; × vs baseline = the run's baseline model's latency / this model's, on the same backend, "
                    "both timed interleaved in one process (> 1: this model is faster)") if versus else ""
            lines += ["", f"  Candidates of {s['name']} (each timed in its own process; speed-up = eager fp32 / "
                      f"backend; max rel diff = max |out - eager fp32| / max |eager fp32|{note}):", "",
                      "  | backend | precision | b1 ms | bN ms | speed-up b1 | speed-up bN | max rel diff | quality "
                      f"| artifact{extra} | decision |", "  " + "|---" * (10 + 2 * versus) + "|"]
            for c in info["candidates"]:
                cells = [c["backend"], c["precision"]]
                cells += [_num(c["b1_ms"], ".3f"), _num(c["bN_ms"], ".3f"), _num(c["speedup_b1"], ".2f", "×"),
                          _num(c["speedup_bN"], ".2f", "×"), _num(c["max_rel_diff"], ".2g"), _num(c["quality"], ".4f"),
                          _bytes(c["artifact_bytes"]) if c["artifact_bytes"] is not None else "—"]
                if versus:
                    cells += [_num(c.get("speedup_vs_versus_b1"), ".3f", "×"),
                              _num(c.get("speedup_vs_versus_bN"), ".3f", "×")]
                cells.append(str(c.get("decision", "")).replace("|", "/"))
                lines.append("  | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def _num(v: float | None, fmt: str, suffix: str = "") -> str:
    return "—" if v is None else format(v, fmt) + suffix


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_html(results: dict[str, Any], plot_png: bytes | None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in table_rows(results))
    img = (f'<img alt="quality vs latency" src="data:image/png;base64,{base64.b64encode(plot_png).decode()}">'
           if plot_png else "")
    details = "".join(f"<li><b>{html.escape(line[4:].split('**', 1)[0])}</b>{html.escape(line.split('**', 2)[2])}</li>"
                      for line in _details_markdown(results) if line.startswith("- **"))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>slimkit report: {html.escape(results['task'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}
td:first-child,td:nth-child(2){{text-align:left}}img{{max-width:760px;margin-top:1em}}</style></head>
<body><h1>slimkit report: {html.escape(results['task'])}</h1><p>{html.escape(caption(results))}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{img}
<h2>What each step did</h2><ul>{details}</ul></body></html>
"""


def pareto_png(results: dict[str, Any]) -> bytes:
    """Left: quality against batch-1 latency, marker area by artifact bytes, Pareto front dashed.
    Right: quality against artifact bytes, marker area by MACs. Both x axes start at zero so
    distances read as ratios."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = results["steps"]
    names = [s["name"] for s in steps]
    lat = [s["metrics"]["latency_ms_b1"] for s in steps]
    qual = [s["metrics"]["quality"] for s in steps]
    size = [s["metrics"]["size_bytes"] / 1024 for s in steps]
    macs = [s["metrics"]["macs"] for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    _scatter(left, lat, qual, size, names, [f"{_bytes(b * 1024)}" for b in size])
    front = _pareto_front(lat, qual)
    if len(front) > 1:
        left.plot([lat[i] for i in front], [qual[i] for i in front], "--", color="gray", linewidth=1,
                  label="Pareto front")
        left.legend(loc="lower right", fontsize=8)
    backend = steps[0]["metrics"]["backend"] if steps else ""
    left.set_xlabel(f"latency at batch 1, ms (median; {backend})")
    left.set_title("quality vs latency (marker area ~ bytes)", fontsize=10)
    _scatter(right, size, qual, macs, names, [_count(m) + " MACs" for m in macs])
    right.set_xlabel("artifact size, KiB")
    right.set_title("quality vs size (marker area ~ MACs)", fontsize=10)
    for ax in (left, right):
        ax.set_ylabel(f"{results['quality_metric']} (test)")
        ax.margins(y=0.2)
        ax.set_xlim(left=0, right=max(ax.get_xlim()[1], 1e-9) * 1.15)
        ax.grid(alpha=0.3)
    fig.suptitle(f"slimkit: {results['task']}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _scatter(ax, xs, ys, weights, names, notes) -> None:
    biggest = max(weights) or 1
    ax.scatter(xs, ys, s=[40 + 700 * (w / biggest) for w in weights], alpha=0.55, c=range(len(xs)),
               cmap="viridis", edgecolors="black")
    for name, x, y, note in zip(names, xs, ys, notes):
        ax.annotate(f"{name}\n{note}", (x, y), textcoords="offset points", xytext=(8, 6), fontsize=8)


def write_report(results: dict[str, Any], out: Path) -> None:
    png = pareto_png(results) if results["steps"] else None
    if png is not None:
        atomic_write_bytes(out / "pareto.png", png)
    atomic_write_text(out / "report.md", render_markdown(results))
    atomic_write_text(out / "report.html", render_html(results, png))


def rich_table(results: dict[str, Any]):
    """The terminal table: fewer, denser columns than the report (ratio beside each figure)."""
    from rich.table import Table

    table = Table(title=f"slimkit: {results['task']}", caption=caption(results), caption_justify="left")
    for c in ("step", results["quality_metric"], "size", "MACs", "b1 ms", f"b{_batch_n(results)} ms"):
        table.add_column(c, justify="left" if c == "step" else "right")
    for r in table_rows(results):
        table.add_row(r[0], f"{r[2]} ({r[3]})", f"{r[4]} {r[5]}", f"{r[7]} {r[8]}",
                      f"{r[9].split(' ')[0]} {r[10]}", f"{r[11].split(' ')[0]} {r[12]}")
    return table


def _batch_n(results: dict[str, Any]) -> Any:
    return results["steps"][0]["metrics"]["batch_N"] if results["steps"] else "N"


def _pareto_front(lat: list[float], qual: list[float]) -> list[int]:
    """Indices not dominated (lower latency and higher quality), sorted by latency."""
    order = sorted(range(len(lat)), key=lambda i: (lat[i], -qual[i]))
    front, best = [], float("-inf")
    for i in order:
        if qual[i] > best:
            front.append(i)
            best = qual[i]
    return front


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _ratio(base: float, value: float) -> str:
    return f"{base / value:.2f}×" if value else "—"
