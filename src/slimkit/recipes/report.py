"""Render results.json as a table (terminal, Markdown, HTML) and a Pareto plot.

Markdown and HTML are two renderings of the same sections, so the page shows what the file does.
A latency figure timed on a busy CPU (its ``timing_warning``) is marked "⚠k" wherever it or a
ratio resting on it appears, with footnote k saying why.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimkit.core.io import atomic_write_bytes, atomic_write_text
from slimkit.measure.pareto import pareto_front

COLUMNS = ("step", "technique", "quality", "Δ quality", "size", "× smaller", "params (nonzero)",
           "MACs", "× fewer MACs", "latency b1 ms", "× faster b1", "latency bN ms", "× faster bN", "backend")
WARN = "⚠"
LOG_RANGE = 20.0  # an axis whose largest value exceeds its smallest by more than this is drawn in log scale


class Notes:
    """Numbered footnotes for contaminated latency figures; ``mark`` gives a cell its suffix."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, *warnings: str | None) -> str:
        """' ⚠1,3' for the footnotes of the given warnings (added on first sight), '' for none."""
        keys = []
        for w in warnings:
            if w:
                if w not in self.texts:
                    self.texts.append(w)
                keys.append(str(self.texts.index(w) + 1))
        return f" {WARN}{','.join(dict.fromkeys(keys))}" if keys else ""

    def lines(self) -> list[str]:
        return [f"{WARN}{k} {text}" for k, text in enumerate(self.texts, 1)]


@dataclass
class Section:
    """One block of the report: a heading, a note, then a table (``columns``/``rows``) or a list."""
    title: str | None
    note: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    items: list[tuple[str, str]] = field(default_factory=list)
    image: str | None = None  # a figure written beside the report, shown after the section


def step_warning(step: dict[str, Any], tag: str) -> str | None:
    """The footnote text for a step's ``latency_b1`` / ``latency_bN`` figure, or None if clean."""
    stats = step["metrics"].get(f"latency_{tag}") or {}
    w = stats.get("timing_warning")
    return f"{step['name']}, batch {stats.get('batch_size', '?')} ({step['metrics']['backend']}): {w}" if w else None


def table_rows(results: dict[str, Any], notes: Notes | None = None) -> list[list[str]]:
    """One row of formatted cells per step, ratios against the baseline (the first step)."""
    notes = notes if notes is not None else Notes()
    steps = results["steps"]
    if not steps:
        return []
    base = steps[0]["metrics"]
    base_w = {tag: step_warning(steps[0], tag) for tag in ("b1", "bN")}
    rows = []
    for s in steps:
        m = s["metrics"]
        w = {tag: step_warning(s, tag) for tag in ("b1", "bN")}
        rows.append([
            s["name"], s["technique"], f"{m['quality']:.4f}", f"{m['quality'] - base['quality']:+.4f}",
            _bytes(m["size_bytes"]), _ratio(base["size_bytes"], m["size_bytes"]),
            f"{m['params']:,} ({m['nonzero_params']:,})", _count(m["macs"]), _ratio(base["macs"], m["macs"]),
            _spread(m["latency_b1"]) + notes.mark(w["b1"]),
            _ratio(base["latency_ms_b1"], m["latency_ms_b1"]) + notes.mark(base_w["b1"], w["b1"]),
            _spread(m["latency_bN"]) + notes.mark(w["bN"]),
            _ratio(base["latency_ms_bN"], m["latency_ms_bN"]) + notes.mark(base_w["bN"], w["bN"]),
            _runtime(m) + f" ({m['device']})",
        ])
    return rows


def caption(results: dict[str, Any]) -> str:
    steps = results["steps"]
    n = steps[0]["metrics"]["batch_N"] if steps else "?"
    env = results.get("environment", {})
    return (f"task {results['task']}; quality = {results['quality_metric']} on the held-out test split; "
            f"size = bytes of each step's saved artifact; latency = median (p25–p75) at batch 1 and batch {n}, "
            f"{env.get('threads', '?')} thread{'' if env.get('threads') == 1 else 's'}, torch {env.get('torch', '?')}; ratios are against the baseline.")


def sections(results: dict[str, Any]) -> tuple[list[Section], Notes]:
    """Every block of the report in order, and the footnotes their cells point to."""
    notes = Notes()
    out = [Section(None, caption(results), list(COLUMNS), table_rows(results, notes)),
           _other_metrics(results), _details(results)]
    out += [_candidates(s, notes) for s in results["steps"][1:]
            if s["technique"] == "deploy" and (s.get("info") or {}).get("candidates")]
    out += [_search(s) for s in search_steps(results)]
    out += [_microcontroller(s) for s in results["steps"][1:]
            if s["technique"] == "tinyml" and (s.get("info") or {}).get("fit")]
    return out, notes


def _microcontroller(step: dict[str, Any]) -> Section:
    """A tinyml step's footprint against microcontroller classes."""
    info = step["info"]
    flash = ("the ARM object's text + data (arm-none-eabi-gcc, Cortex-M4, -Os): code and constants"
             if info["flash_measured"] else "the constant arrays only (no ARM cross compiler here: code not counted)")
    note = (f"generated C ({', '.join(info['files'])}): bit-exact against the Python integer reference on "
            f"{info['bit_exact_rows']} of {info['test_rows']} test rows; quality {info['c_quality']:.4f} (int8 eager "
            f"{info['int8_eager_quality']:.4f}); {info['macs']:,} MACs; arena {info['arena_bytes']:,} B (one region per "
            f"tensor: {info['naive_arena_bytes']:,} B; bytes a run touched: {info['arena_high_water']:,} B); "
            f"SRAM = arena + input and output buffers; flash = {flash}")
    patch = info.get("patch") or {}
    if patch.get("ops"):
        note += (f"; the first {patch['ops']} ops run patch by patch ({patch['grid']}x{patch['grid']} tiles): arena "
                 f"{info['arena_bytes']:,} B instead of {info['whole_map_arena_bytes']:,} B on whole maps, "
                 f"{patch['executed_macs']:,} MACs executed (halos recomputed)")
    rows = [[f["target"], f"{info['sram_bytes']:,}", f"{info['flash_bytes']:,}", "yes" if f["fits"] else f["why"]]
            for f in info["fit"]]
    return Section(f"Microcontroller fit of {step['name']}", note, ["target", "SRAM B", "flash B", "fits"], rows)


def search_steps(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps that searched architectures (a ``nas`` step's info holds its trials)."""
    return [s for s in results["steps"][1:] if s["technique"] == "nas" and (s.get("info") or {}).get("trials")]


def _search_points(info: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    cost = info["pareto"]["cost"]
    return cost, [t for t in info["trials"] if t.get("feasible") and t.get("quality") is not None]


def _search(step: dict[str, Any]) -> Section:
    """A nas step's search: its Pareto front of validation quality against cost, the chosen one."""
    info = step["info"]
    cost, feasible = _search_points(info)
    front = set(info["pareto"]["trials"])
    chosen = info["chosen"]["trial"]
    unit = "ms (predicted)" if cost == "latency_ms" else cost
    note = (f"{len(info['trials'])} candidates of {info['space_size']:,} ({info['strategy']}), {len(feasible)} within "
            f"the budget; the Pareto front of validation quality against {unit}, and the chosen candidate "
            f"(the most accurate within the budget)")
    if info.get("supernet"):
        note += f"; one-shot: each scored as a slice of a supernet trained {info['supernet']['epochs']} epochs"
    rows = []
    for t in sorted((t for t in feasible if t["number"] in front or t["number"] == chosen), key=lambda t: t[cost]):
        marks = " ".join(m for m, on in (("front", t["number"] in front), ("chosen", t["number"] == chosen)) if on)
        rows.append([str(t["number"]), " ".join(t["spec"]), _fmt(t[cost]), f"{t['quality']:.4f}", marks])
    return Section(f"Search of {step['name']}", note, ["trial", "architecture", unit, "val quality", ""], rows,
                   image=_search_file(step))


def search_png(step: dict[str, Any]) -> bytes:
    """A nas step's trials: validation quality against cost, the front dashed, the chosen starred."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    info = step["info"]
    cost, feasible = _search_points(info)
    front = [t for t in sorted(feasible, key=lambda t: t[cost]) if t["number"] in set(info["pareto"]["trials"])]
    chosen = [t for t in feasible if t["number"] == info["chosen"]["trial"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    ax.scatter([t[cost] for t in feasible], [t["quality"] for t in feasible], s=18, alpha=0.5, label="candidates")
    ax.plot([t[cost] for t in front], [t["quality"] for t in front], "--o", color="black", markersize=4,
            linewidth=1, label="Pareto front")
    ax.scatter([t[cost] for t in chosen], [t["quality"] for t in chosen], marker="*", s=220, color="crimson",
               zorder=3, label="chosen")
    ax.set_xlabel("latency at batch 1, ms (predicted)" if cost == "latency_ms" else cost)
    ax.set_ylabel("validation quality")
    ax.set_title(f"{step['name']}: {len(feasible)} candidates within the budget", fontsize=10)
    _x_scale(ax, [t[cost] for t in feasible])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _search_file(step: dict[str, Any]) -> str:
    return "search-" + re.sub(r"[^\w.-]", "_", step["name"]) + ".png"


def _other_metrics(results: dict[str, Any]) -> Section:
    rows = []
    for s in results["steps"]:
        mem = s["metrics"].get("peak_memory_bytes")
        qm = s["metrics"].get("quality_metrics", {})
        rows.append([s["name"], _bytes(mem) if mem is not None else "—",
                     ", ".join(f"{k} {v:.4f}" for k, v in qm.items())])
    return Section("Other metrics", columns=["step", "peak memory (b N)", "task metrics"], rows=rows)


def _details(results: dict[str, Any]) -> Section:
    """What each step reported about itself (its info's plain values)."""
    items = []
    for s in results["steps"][1:]:
        info = s.get("info") or {}
        scalars = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool)) and v is not None}
        items.append((s["name"], ", ".join(f"{k} = {_fmt(v)}" for k, v in scalars.items()) or "—"))
    return Section("What each step did", items=items)


def _candidates(step: dict[str, Any], notes: Notes) -> Section:
    """A deploy step's candidates, each runtime timed in its own process."""
    candidates = step["info"]["candidates"]
    versus = any(c.get("versus_b1_ms") is not None for c in candidates)
    eager = next((c for c in candidates if c["backend"] == "eager" and c["precision"] == "fp32"), None)
    eager_w = _candidate_warning(step, eager) if eager else None
    note = ("; × vs baseline = the run's baseline model's latency / this model's, on the same backend, "
            "both timed interleaved in one process (> 1: this model is faster)") if versus else ""
    columns = ["backend", "precision", "b1 ms", "bN ms", "speed-up b1", "speed-up bN", "max rel diff", "quality",
               "artifact"] + (["× vs baseline b1", "× vs baseline bN"] if versus else []) + ["decision"]
    rows = []
    for c in candidates:
        mark = notes.mark(_candidate_warning(step, c))
        speed_mark = notes.mark(eager_w, _candidate_warning(step, c))
        cells = [c["backend"], c["precision"], _num(c["b1_ms"], ".3f") + mark, _num(c["bN_ms"], ".3f") + mark,
                 _num(c["speedup_b1"], ".2f", "×") + speed_mark, _num(c["speedup_bN"], ".2f", "×") + speed_mark,
                 _num(c["max_rel_diff"], ".2g"), _num(c["quality"], ".4f"),
                 _bytes(c["artifact_bytes"]) if c["artifact_bytes"] is not None else "—"]
        if versus:
            cells += [_num(c.get("speedup_vs_versus_b1"), ".3f", "×") + mark,
                      _num(c.get("speedup_vs_versus_bN"), ".3f", "×") + mark]
        cells.append(str(c.get("decision", "")).replace("|", "/"))
        rows.append(cells)
    return Section(f"Candidates of {step['name']}",
                   f"each timed in its own process; speed-up = eager fp32 / backend; max rel diff = "
                   f"max |out - eager fp32| / max |eager fp32|{note}", columns, rows)


def _candidate_warning(step: dict[str, Any], c: dict[str, Any]) -> str | None:
    w = c.get("timing_warning")
    return f"{step['name']} candidate {c['backend']} {c['precision']}: {w}" if w else None


def render_markdown(results: dict[str, Any]) -> str:
    parts, notes = sections(results)
    lines = [f"# slimkit report: {results['task']}", ""]
    for i, sec in enumerate(parts):
        if sec.title:
            lines += [f"## {sec.title}", ""]
        if sec.note:
            lines += [sec.note, ""]
        if sec.columns:
            lines += ["| " + " | ".join(sec.columns) + " |", "|" + "---|" * len(sec.columns)]
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in sec.rows]
        lines += [f"- **{name}**: {text}" for name, text in sec.items]
        lines.append("")
        if i == 0:
            lines += _footnotes_markdown(notes) + ["![quality vs latency](pareto.png)", ""]
        if sec.image:
            lines += [f"![{sec.title}]({sec.image})", ""]
    return "\n".join(lines)


def _footnotes_markdown(notes: Notes) -> list[str]:
    if not notes.texts:
        return []
    return [f"{WARN} Latency timed while the CPU was busy; these figures and every ratio marked with them "
            "may be wrong:", ""] + [f"- {line}" for line in notes.lines()] + [""]


def render_html(results: dict[str, Any], plot_png: bytes | None, images: dict[str, bytes] | None = None) -> str:
    parts, notes = sections(results)
    images = images or {}
    body = []
    for i, sec in enumerate(parts):
        if sec.title:
            body.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.note:
            body.append(f"<p>{html.escape(sec.note)}</p>")
        if sec.columns:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in sec.columns)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in sec.rows)
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        if sec.items:
            body.append("<ul>" + "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(t)}</li>" for n, t in sec.items)
                        + "</ul>")
        if i == 0:
            body.append(_footnotes_html(notes))
            if plot_png:
                body.append(f'<img alt="quality vs latency" '
                            f'src="data:image/png;base64,{base64.b64encode(plot_png).decode()}">')
        if sec.image and sec.image in images:
            body.append(f'<img alt="{html.escape(sec.title or "")}" '
                        f'src="data:image/png;base64,{base64.b64encode(images[sec.image]).decode()}">')
    title = html.escape(f"slimkit report: {results['task']}")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;margin:0.5em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}
td:first-child,td:nth-child(2){{text-align:left}}img{{max-width:100%;margin-top:1em}}
.warn{{color:#a15c00}}.scroll{{overflow-x:auto;font-size:13px}}</style></head>
<body><h1>{title}</h1>
{chr(10).join(body)}
</body></html>
"""


def _footnotes_html(notes: Notes) -> str:
    if not notes.texts:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in notes.lines())
    return (f'<div class="warn"><p>{WARN} Latency timed while the CPU was busy; these figures and every ratio '
            f"marked with them may be wrong:</p><ul>{items}</ul></div>")


def pareto_png(results: dict[str, Any]) -> bytes:
    """The Pareto figure as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(results)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def pareto_figure(results: dict[str, Any]):
    """Left: quality against batch-1 latency, marker area by artifact bytes, Pareto front dashed.
    Right: quality against artifact bytes, marker area by MACs. Points are numbered (the key below
    names them); linear axes start at zero so distances read as ratios, and an axis spanning more
    than LOG_RANGE× is logarithmic so one outlier does not squash the rest."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = results["steps"]
    lat = [s["metrics"]["latency_ms_b1"] for s in steps]
    qual = [s["metrics"]["quality"] for s in steps]
    size = [s["metrics"]["size_bytes"] / 1024 for s in steps]
    macs = [s["metrics"]["macs"] or 0 for s in steps]
    warned = [step_warning(s, "b1") is not None for s in steps]
    key = _key_lines(steps, warned)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6 + 0.19 * len(key)), dpi=110)
    _scatter(left, lat, qual, size)
    front = pareto_front(list(zip(lat, qual)))
    if len(front) > 1:
        left.plot([lat[i] for i in front], [qual[i] for i in front], "--", color="gray", linewidth=1,
                  label="Pareto front")
        left.legend(loc="lower right", fontsize=8)
    left.set_xlabel(f"latency at batch 1, ms (median; {_runtimes_label(steps)})")
    left.set_title("quality vs latency (marker area ~ bytes)", fontsize=10)
    _scatter(right, size, qual, macs)
    right.set_xlabel("artifact size, KiB")
    right.set_title("quality vs size (marker area ~ MACs)", fontsize=10)
    for ax, xs in ((left, lat), (right, size)):
        ax.set_ylabel(f"{results['quality_metric']} (test)")
        ax.margins(y=0.2)
        _x_scale(ax, xs)
        ax.grid(alpha=0.3)
    fig.suptitle(f"slimkit: {results['task']}")
    fig.tight_layout(rect=(0, 0.19 * len(key) / fig.get_figheight() + 0.02, 1, 1))
    for ax, xs in ((left, lat), (right, size)):
        _number_points(ax, xs, qual, [f"{i + 1}{WARN if warned[i] and ax is left else ''}" for i in range(len(xs))])
    fig.text(0.01, 0.01, "\n".join(key), fontsize=8, family="DejaVu Sans Mono", va="bottom")
    return fig


def _key_lines(steps: list[dict[str, Any]], warned: list[bool]) -> list[str]:
    """One line per numbered point: step, runtime, figures; a warned latency says so."""
    width = max((len(s["name"]) for s in steps), default=4)
    lines = []
    for i, s in enumerate(steps):
        m = s["metrics"]
        lines.append(f"{i + 1:>2}  {s['name']:<{width}}  {_runtime(m):<18} {m['latency_ms_b1']:.3f} ms"
                     f"{' ' + WARN + ' busy CPU' if warned[i] else ''}, {_bytes(m['size_bytes'])}, "
                     f"{_count(m['macs'] or 0)} MACs, quality {m['quality']:.4f}")
    if any(warned):
        lines.append(f"{WARN} latency timed while the CPU was busy: it may be wrong (see the report's footnotes)")
    return lines


def _runtimes_label(steps: list[dict[str, Any]]) -> str:
    """Which runtime each point's latency was timed on: 'eager' or 'eager: 1-3; onnxruntime: 4'."""
    by_runtime: dict[str, list[int]] = {}
    for i, s in enumerate(steps, 1):
        by_runtime.setdefault(_runtime(s["metrics"]), []).append(i)
    if len(by_runtime) <= 1:
        return next(iter(by_runtime), "")
    return "; ".join(f"{rt}: {_numbers(ids)}" for rt, ids in by_runtime.items())


def _numbers(ids: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _x_scale(ax, xs: list[float]) -> None:
    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) > LOG_RANGE:
        ax.set_xscale("log")
        ax.set_xlim(min(positive) / 1.6, max(positive) * 1.6)
    else:
        ax.set_xlim(left=0, right=max(max(xs, default=0), 1e-9) * 1.15)


def _scatter(ax, xs, ys, weights) -> None:
    biggest = max(weights) or 1
    ax.scatter(xs, ys, s=[40 + 700 * (w / biggest) for w in weights], alpha=0.55, c=range(len(xs)),
               cmap="viridis", edgecolors="black")


# offsets in points tried in turn for a point's number, nearest first
_OFFSETS = [(dx * r, dy + (r - 1) * (12 if dy > 0 else -12))
            for r in (1, 2, 3, 4, 5) for dx, dy in ((7, 5), (7, -13), (-15, 5), (-15, -13))]


def _number_points(ax, xs, ys, labels: list[str]) -> None:
    """Put each label beside its point where it overlaps no label placed before it."""
    fig = ax.figure
    to_px = fig.dpi / 72
    placed: list[tuple[float, float, float, float]] = []
    for x, y, label in zip(xs, ys, labels):
        px, py = ax.transData.transform((x, y))
        w, h = (6.5 * len(label) + 2) * to_px, 11 * to_px
        boxes = [(px + dx * to_px, py + dy * to_px, px + dx * to_px + w, py + dy * to_px + h) for dx, dy in _OFFSETS]
        free = [b for b in boxes if not any(_overlap(b, other) for other in placed)] or boxes[-1:]
        box = next((b for b in free if _inside(b, ax.bbox.extents)), free[0])
        placed.append(box)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=((box[0] - px) / to_px, (box[1] - py) / to_px),
                    fontsize=8, fontweight="bold", va="bottom", ha="left")


def _inside(box: tuple[float, ...], frame: tuple[float, ...]) -> bool:
    return frame[0] <= box[0] and box[2] <= frame[2] and frame[1] <= box[1] and box[3] <= frame[3]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def write_report(results: dict[str, Any], out: Path) -> None:
    png = pareto_png(results) if results["steps"] else None
    if png is not None:
        atomic_write_bytes(out / "pareto.png", png)
    images = {_search_file(s): search_png(s) for s in search_steps(results)}
    for name, data in images.items():
        atomic_write_bytes(out / name, data)
    atomic_write_text(out / "report.md", render_markdown(results))
    atomic_write_text(out / "report.html", render_html(results, png, images))


def rich_table(results: dict[str, Any]):
    """The terminal table: fewer, denser columns than the report (ratio beside each figure);
    a figure timed on a busy CPU is marked and its footnote closes the caption."""
    from rich.table import Table

    notes = Notes()
    rows = table_rows(results, notes)
    text = caption(results) + "".join(f"\n{line}" for line in notes.lines())
    table = Table(title=f"slimkit: {results['task']}", caption=text, caption_justify="left")
    for c in ("step", results["quality_metric"], "size", "MACs", "b1 ms", f"b{_batch_n(results)} ms"):
        table.add_column(c, justify="left" if c == "step" else "right")
    for r in rows:
        table.add_row(r[0], f"{r[2]} ({r[3]})", f"{r[4]} {r[5]}", f"{r[7]} {r[8]}",
                      f"{_median_of(r[9])} {r[10]}", f"{_median_of(r[11])} {r[12]}")
    return table


def _median_of(cell: str) -> str:
    """'0.093 (0.090–0.095) ⚠1' -> '0.093 ⚠1': the median and its mark, without the spread."""
    median, _, rest = cell.partition(" ")
    return median + ("" if WARN not in rest else " " + rest[rest.index(WARN):])


def _batch_n(results: dict[str, Any]) -> Any:
    return results["steps"][0]["metrics"]["batch_N"] if results["steps"] else "N"


def _spread(stats: dict[str, Any]) -> str:
    return f"{stats['median_ms']:.3f} ({stats['p25_ms']:.3f}–{stats['p75_ms']:.3f})"


def _runtime(m: dict[str, Any]) -> str:
    """Where a figure was timed: 'eager', 'onnxruntime int8'."""
    precision = m.get("precision", "fp32")
    return m["backend"] + ("" if precision == "fp32" else f" {precision}")


def _num(v: float | None, fmt: str, suffix: str = "") -> str:
    return "—" if v is None else format(v, fmt) + suffix


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


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
