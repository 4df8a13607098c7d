"""The report as a reader sees it: every table in both renderings, warned latencies marked
everywhere, a readable plot."""

import io
import itertools
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from rich.console import Console

from slimkit.recipes.report import (WARN, pareto_figure, render_html, render_markdown, rich_table, write_report)

BUSY = "CPU busy: a 2-thread matmul ran 74.1× slower than 1 thread"


def _lat(median, batch, warning=None):
    return {"median_ms": median, "p25_ms": median * 0.95, "p75_ms": median * 1.05, "min_ms": median * 0.9,
            "repeats": 30, "batch_size": batch, "threads": 2, "timing_warning": warning}


def _step(name, technique, quality, size, macs, b1, bN, backend="eager", warning=None, info=None):
    return {"name": name, "technique": technique, "params": {}, "info": info or {}, "metrics": {
        "quality": quality, "size_bytes": size, "dense_fp32_bytes": size, "params": size // 4,
        "nonzero_params": size // 4, "macs": macs, "latency_ms_b1": b1, "latency_ms_bN": bN, "batch_N": 64,
        "backend": backend, "precision": "fp32", "device": "cpu", "latency_b1": _lat(b1, 1, warning),
        "latency_bN": _lat(bN, 64), "timing_warning": warning and f"batch 1: {warning}",
        "quality_metrics": {"accuracy": quality, "macro_f1": quality - 0.01}, "peak_memory_bytes": 3 * size}}


def _candidate(backend, b1, bN, decision, warning=None):
    return {"backend": backend, "precision": "fp32", "b1_ms": b1, "bN_ms": bN, "speedup_b1": 0.1 / b1,
            "speedup_bN": 1.0 / bN, "max_rel_diff": 1e-6, "quality": 0.98, "artifact_bytes": 40_000,
            "decision": decision, "timing_warning": warning, "versus_b1_ms": 0.1, "versus_bN_ms": 1.0,
            "speedup_vs_versus_b1": 0.1 / b1, "speedup_vs_versus_bN": 1.0 / bN}


def results(busy_step="pruned"):
    """A baseline (eager), a pruned step timed on a busy CPU, a deploy step with candidates."""
    deploy_info = {"backend": "onnxruntime", "candidates": [
        _candidate("eager", 0.1, 1.0, "eligible"), _candidate("onnxruntime", 0.05, 0.5, "chosen: fastest at b1"),
        _candidate("openvino", 0.07, 0.6, "eligible", warning="batch 1: " + BUSY)]}
    steps = [_step("baseline", "baseline", 0.98, 400_000, 1_000_000, 0.093, 1.0),
             _step("pruned", "prune", 0.975, 120_000, 1_000_000, 112.0, 0.9, warning=BUSY if busy_step else None),
             _step("deploy", "deploy", 0.98, 40_000, 1_000_000, 0.05, 0.5, backend="onnxruntime", info=deploy_info)]
    return {"schema_version": 1, "task": "digits-cnn", "task_info": {}, "quality_metric": "accuracy",
            "recipe": {}, "environment": {"threads": 2, "torch": "2.x"}, "steps": steps}


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts (header row first), and every <img>."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def markdown_tables(text):
    """Every pipe table of a Markdown text as rows of cell texts, header first, separator dropped."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            if not set(line) <= set("|-: "):
                current.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        else:
            current = None
    return tables


def html_tables(page):
    parser = Tables()
    parser.feed(page)
    return parser


def test_html_shows_every_table_of_the_markdown():
    res = results()
    md_tables = markdown_tables(render_markdown(res))
    page = html_tables(render_html(res, b"png"))
    assert len(md_tables) == 3  # the main table, other metrics (memory), deploy candidates
    assert page.tables == md_tables
    assert any("peak memory (b N)" in t[0] for t in page.tables) and any("decision" in t[0] for t in page.tables)
    assert [img["alt"] for img in page.images] == ["quality vs latency"]


def test_html_shows_each_steps_details_and_footnotes():
    page = render_html(results(), None)
    for text in ("What each step did", "Candidates of deploy", "chosen: fastest at b1", BUSY):
        assert text in page


def _row(table, name):
    return next(r for r in table if r[0] == name)


def test_a_busy_figure_and_every_ratio_on_it_are_marked_in_markdown_and_html():
    res = results()
    for tables in (markdown_tables(render_markdown(res)), html_tables(render_html(res, None)).tables):
        main, _, candidates = tables
        cols = main[0]
        pruned, baseline, deploy = _row(main, "pruned"), _row(main, "baseline"), _row(main, "deploy")
        b1, x_b1 = cols.index("latency b1 ms"), cols.index("× faster b1")
        assert pruned[b1].endswith(f"{WARN}1") and pruned[x_b1].endswith(f"{WARN}1")
        assert WARN not in baseline[b1] + deploy[b1] + deploy[x_b1] + pruned[cols.index("× faster bN")]
        openvino = _row(candidates, "openvino")
        assert WARN in openvino[2] and WARN in openvino[4] and WARN not in _row(candidates, "onnxruntime")[2]
        assert all(WARN in openvino[candidates[0].index(c)] for c in ("× vs baseline b1", "× vs baseline bN"))
    md = render_markdown(res)
    assert f"{WARN}1 pruned, batch 1 (eager): {BUSY}" in md


def test_a_busy_baseline_marks_every_ratio():
    res = results(busy_step=None)
    res["steps"][0]["metrics"]["latency_b1"]["timing_warning"] = BUSY
    main = markdown_tables(render_markdown(res))[0]
    x_b1 = main[0].index("× faster b1")
    assert all(WARN in row[x_b1] for row in main[1:])


def test_a_clean_run_has_no_marks():
    res = results(busy_step=None)
    res["steps"][2]["info"]["candidates"][2]["timing_warning"] = None
    assert WARN not in render_markdown(res) + render_html(res, None)


def test_the_terminal_table_marks_the_busy_figure_and_says_why():
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(rich_table(results()))
    text = console.export_text()
    pruned = next(line for line in text.splitlines() if "pruned" in line)
    assert f"112.000 {WARN}1 0.00× {WARN}1" in pruned
    assert BUSY in text


def _labels(ax):
    return [t for t in ax.texts]


def test_plot_labels_do_not_overlap_and_busy_points_are_marked():
    res = results()
    same = res["steps"][0]
    res["steps"] += [{**same, "name": f"copy{i}"} for i in range(4)]  # four points on top of the baseline
    fig = pareto_figure(res)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:2]:
        boxes = [t.get_window_extent(renderer) for t in _labels(ax)]
        assert len(boxes) == len(res["steps"])
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b)
    left_labels = [t.get_text() for t in _labels(fig.axes[0])]
    assert left_labels[1] == f"2{WARN}" and WARN not in left_labels[0]
    key = fig.texts[-1].get_text()
    assert "busy CPU" in key and "pruned" in key


def test_latency_axis_names_each_points_runtime_and_an_outlier_gives_a_log_axis():
    fig = pareto_figure(results())
    left, right = fig.axes[:2]
    assert "eager: 1-2; onnxruntime: 3" in left.get_xlabel()
    assert left.get_xscale() == "log"  # 112 ms against 0.05 ms
    assert right.get_xscale() == "linear"  # 400 kB to 40 kB: 10x
    res = results(busy_step=None)
    res["steps"][1]["metrics"]["latency_ms_b1"] = 0.08
    res["steps"][0]["metrics"]["size_bytes"] = 60_000
    fig = pareto_figure(res)
    assert fig.axes[0].get_xscale() == "linear" and fig.axes[0].get_xlim()[0] == 0
    assert fig.axes[1].get_xscale() == "linear"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: the headless rendering is not checked")
def test_report_html_renders_in_a_browser(tmp_path):
    write_report(results(), tmp_path)
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", (tmp_path / "report.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=60)
    assert shot.exists() and shot.stat().st_size > 10_000
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        darkest, lightest = image.convert("L").getextrema()
        assert lightest - darkest > 100  # text on a background, not a blank page
    page = html_tables((tmp_path / "report.html").read_text())
    assert page.tables == markdown_tables((tmp_path / "report.md").read_text())
    assert page.images and page.images[0]["src"].startswith("data:image/png;base64,")


def _nas_step():
    trials = [{"number": n, "quality": q, "macs": m, "params": 1, "bytes": 4, "latency_ms": None, "feasible": f,
               "spec": [f"ir_r{n}_k3_s1_e3_c16_relu6"]}
              for n, q, m, f in [(0, 0.90, 100, True), (1, 0.80, 200, True), (2, 0.95, 300, True),
                                 (3, None, 900, False), (4, 0.85, 50, True)]]
    info = {"trials": trials, "chosen": {"trial": 2, "validation_quality": 0.95, "spec": trials[2]["spec"]},
            "pareto": {"cost": "macs", "trials": [4, 0, 2]}, "space_size": 1234, "strategy": "evolution"}
    return _step("nas", "nas", 0.94, 40_000, 300, 0.05, 0.5, info=info)


def test_a_search_shows_its_front_and_chosen_candidate_in_both_renderings_and_a_figure(tmp_path):
    res = results(busy_step=None)
    res["steps"].insert(1, _nas_step())
    md = render_markdown(res)
    search = markdown_tables(md)[-1]
    assert search[0][:4] == ["trial", "architecture", "macs", "val quality"]
    # the front in order of cost (trial 1 is dominated, trial 3 over budget), the chosen one marked
    assert [(r[0], r[-1]) for r in search[1:]] == [("4", "front"), ("0", "front"), ("2", "front chosen")]
    assert "5 candidates of 1,234 (evolution), 4 within the budget" in md and "![Search of nas](search-nas.png)" in md
    page = html_tables(render_html(res, None, {"search-nas.png": b"png"}))
    assert page.tables[-1] == search and [img["alt"] for img in page.images] == ["Search of nas"]
    write_report(res, tmp_path)
    assert (tmp_path / "search-nas.png").read_bytes()[:4] == b"\x89PNG"
