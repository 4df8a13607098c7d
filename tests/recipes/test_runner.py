import dataclasses
import json

import pytest
import torch

from slimkit.core.errors import CheckpointError, SlimkitError
from slimkit.core.io import load_state_dict
from slimkit.core.registry import STEPS
from slimkit.recipes.runner import run_recipe
from slimkit.train.loop import fit

RECIPE = {
    "task": "digits-mlp",
    "seed": 3,
    "baseline": {"train": {"epochs": 4}},
    "measure": {"batch_n": 8, "repeats": 3, "warmup": 1, "threads": 1, "memory": True},
    "steps": [{"train": {"epochs": 1}}, {"train": {"epochs": 1, "lr": 1e-4}}, {"train": {"epochs": 1, "lr": 5e-5}}],
}
STEP_KEYS = {"quality", "size_bytes", "dense_fp32_bytes", "params", "nonzero_params", "macs",
             "latency_ms_b1", "latency_ms_bN", "batch_N", "backend"}


def test_results_contract_and_outputs(tmp_path):
    result = run_recipe(RECIPE, tmp_path / "run")
    out = tmp_path / "run"
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "digits-mlp" and results["quality_metric"] == "accuracy"
    assert [s["name"] for s in results["steps"]] == ["baseline", "train", "train#2", "train#3"]
    for step in results["steps"]:
        assert STEP_KEYS <= set(step["metrics"]) and {"name", "technique", "params", "metrics"} <= set(step)
        m = step["metrics"]
        assert m["size_bytes"] == (out / step["artifact"]).stat().st_size
        assert m["size_bytes"] > m["dense_fp32_bytes"] == 4 * m["params"]  # fp32 payload + safetensors header
        assert m["macs"] == 64 * 256 + 256 * 128 + 128 * 10 and m["batch_N"] == 8
    assert results["steps"][0]["metrics"]["quality"] >= 0.9
    for name in ("recipe.yaml", "report.md", "report.html", "pareto.png"):
        assert (out / name).stat().st_size > 0
    assert "| baseline | baseline |" in (out / "report.md").read_text()
    assert result.resumed_steps == 0


class _Killed(Exception):
    pass


def _counting_fit(calls, kill_at=None):
    def train_fn(*args, **kwargs):
        calls.append(kwargs["description"])
        if kill_at is not None and len(calls) == kill_at:
            raise _Killed()
        return fit(*args, **kwargs)

    return train_fn


def test_killed_run_resumes_from_next_step_with_same_results(tmp_path):
    calls: list[str] = []
    with pytest.raises(_Killed):  # baseline, step 1, step 2 finish; killed during step 3
        run_recipe(RECIPE, tmp_path / "a", train_fn=_counting_fit(calls, kill_at=4))
    state = json.loads((tmp_path / "a" / "run-state.json").read_text())
    assert [s["name"] for s in state["steps"]] == ["baseline", "train", "train#2"]

    calls.clear()
    resumed = run_recipe(RECIPE, tmp_path / "a", train_fn=_counting_fit(calls))
    assert resumed.resumed_steps == 3 and calls == ["train"]  # only the third step trained again

    straight = run_recipe(RECIPE, tmp_path / "b")
    from slimkit.core.io import load_state_dict

    wa = load_state_dict(tmp_path / "a" / "steps/03-train-3/model.safetensors")
    wb = load_state_dict(tmp_path / "b" / "steps/03-train-3/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # resuming changes nothing
    qa = [s["metrics"]["quality"] for s in resumed.results["steps"]]
    qb = [s["metrics"]["quality"] for s in straight.results["steps"]]
    assert qa == qb


def test_finished_run_is_not_recomputed(tmp_path):
    recipe = {**RECIPE, "steps": RECIPE["steps"][:1]}
    run_recipe(recipe, tmp_path / "r")
    # a run killed inside an atomic write leaves its temporary file; the next run removes such
    # leftovers of its own files (it holds the folder's lock) and leaves the user's alone
    stale = [tmp_path / "r" / ".results.json.k1ll3d.tmp", tmp_path / "r" / "steps" / ".model.safetensors.x9.tmp"]
    for path in stale:
        path.write_text("half")
    (tmp_path / "r" / "steps" / "notes.tmp").write_text("mine")
    calls: list[str] = []
    again = run_recipe(recipe, tmp_path / "r", train_fn=_counting_fit(calls))
    assert calls == [] and again.resumed_steps == 2
    assert not any(p.exists() for p in stale) and (tmp_path / "r" / "steps" / "notes.tmp").read_text() == "mine"


def test_other_recipe_in_out_dir_is_refused_unless_overwrite(tmp_path):
    recipe = {**RECIPE, "steps": []}
    run_recipe(recipe, tmp_path / "r")
    changed = {**recipe, "seed": 4}
    with pytest.raises(CheckpointError, match="different recipe"):
        run_recipe(changed, tmp_path / "r")
    assert run_recipe(changed, tmp_path / "r", overwrite=True).results["recipe"]["seed"] == 4


def test_foreign_folder_is_not_clobbered(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SlimkitError, match="not empty"):
        run_recipe({**RECIPE, "steps": []}, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_corrupt_checkpoint_on_resume_is_a_clear_error(tmp_path):
    recipe = {**RECIPE, "steps": RECIPE["steps"][:1]}
    calls: list[str] = []
    with pytest.raises(_Killed):
        run_recipe(recipe, tmp_path / "r", train_fn=_counting_fit(calls, kill_at=2))
    (tmp_path / "r" / "steps/00-baseline/model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors checkpoint"):
        run_recipe(recipe, tmp_path / "r")


def test_baseline_weights_are_loaded_not_trained(tmp_path):
    first = run_recipe({**RECIPE, "steps": []}, tmp_path / "a")
    weights = tmp_path / "a" / first.results["steps"][0]["artifact"]
    calls: list[str] = []
    second = run_recipe({**RECIPE, "steps": [], "baseline": {"weights": str(weights)}}, tmp_path / "b",
                        train_fn=_counting_fit(calls))
    assert calls == []
    assert second.results["steps"][0]["metrics"]["quality"] == first.results["steps"][0]["metrics"]["quality"]


@pytest.mark.parametrize("tamper, message", [
    (lambda s: s["steps"][0].update(artifact="../../outside.safetensors"), "points outside the run folder"),
    (lambda s: s["steps"][0].pop("technique"), "malformed step record"),
    (lambda s: s["steps"].__setitem__(0, "junk"), "malformed step record"),
    (lambda s: s["steps"][0]["target"].update(device="tpu"), r"steps\[0\]: target: field 'device'"),
    (lambda s: s["steps"][0].pop("target"), r"steps\[0\]: target"),
])
def test_hostile_run_state_is_refused(tmp_path, tamper, message):
    recipe = {**RECIPE, "steps": RECIPE["steps"][:1]}
    calls: list[str] = []
    with pytest.raises(_Killed):
        run_recipe(recipe, tmp_path / "r", train_fn=_counting_fit(calls, kill_at=2))
    state_path = tmp_path / "r" / "run-state.json"
    state = json.loads(state_path.read_text())
    tamper(state)
    state_path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=message):
        run_recipe(recipe, tmp_path / "r")


def test_baseline_initial_weights_are_kept_for_every_step_and_after_resume(tmp_path, monkeypatch):
    seen: list[str | None] = []
    entry = STEPS.entry("train")

    def recording(model, cfg, ctx):
        seen.append(ctx.initial_weights)
        return entry.obj.fn(model, cfg, ctx)

    monkeypatch.setitem(STEPS._entries, "train", dataclasses.replace(entry, obj=dataclasses.replace(entry.obj, fn=recording)))
    recipe = {**RECIPE, "steps": RECIPE["steps"][:2]}
    with pytest.raises(_Killed):  # baseline and step 1 finish; killed during step 2
        run_recipe(recipe, tmp_path / "r", train_fn=_counting_fit([], kill_at=3))
    path = tmp_path / "r" / "steps/00-baseline/initial.safetensors"
    assert seen == [str(path)] * 2
    initial = load_state_dict(path)
    torch.manual_seed(RECIPE["seed"])
    from slimkit.tasks import build_task

    fresh = build_task("digits-mlp").build_model().state_dict()
    assert initial.keys() == fresh.keys() and all(torch.equal(initial[k], fresh[k]) for k in fresh)
    trained = load_state_dict(tmp_path / "r" / "steps/00-baseline/model.safetensors")
    assert not any(torch.equal(initial[k], trained[k]) for k in initial if k.endswith("weight"))

    path.unlink()  # a run folder from before initial weights were kept: re-created from the seed
    run_recipe(recipe, tmp_path / "r")
    assert seen[2:] == [str(path)]
    again = load_state_dict(path)
    assert all(torch.equal(again[k], initial[k]) for k in initial)


def test_run_stopped_during_baseline_restarts_with_same_results(tmp_path):
    recipe = {**RECIPE, "steps": RECIPE["steps"][:1]}
    with pytest.raises(_Killed):  # stopped while training the baseline
        run_recipe(recipe, tmp_path / "a", train_fn=_counting_fit([], kill_at=1))
    assert json.loads((tmp_path / "a" / "run-state.json").read_text())["steps"] == []
    calls: list[str] = []
    again = run_recipe(recipe, tmp_path / "a", train_fn=_counting_fit(calls))
    assert calls == ["baseline", "train"] and again.resumed_steps == 0

    with pytest.raises(_Killed):  # --overwrite replaces a run stopped during its baseline too
        run_recipe(recipe, tmp_path / "b", train_fn=_counting_fit([], kill_at=1))
    over = run_recipe(recipe, tmp_path / "b", overwrite=True)
    for folder in ("a", "b"):
        assert [s["name"] for s in json.loads((tmp_path / folder / "run-state.json").read_text())["steps"]] == \
            ["baseline", "train"]
    wa = load_state_dict(tmp_path / "a" / "steps/01-train/model.safetensors")
    wb = load_state_dict(tmp_path / "b" / "steps/01-train/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [s["metrics"]["quality"] for s in again.results["steps"]] == \
        [s["metrics"]["quality"] for s in over.results["steps"]]


def test_overwrite_removes_only_what_slimkit_wrote(tmp_path):
    recipe = {**RECIPE, "steps": []}
    out = tmp_path / "r"
    run_recipe(recipe, out)
    (out / "notes.txt").write_text("keep me")
    (out / "mine").mkdir()
    (out / "mine" / "data.bin").write_bytes(b"\x01")
    stale = out / "steps" / "07-old"
    stale.mkdir()
    run_recipe({**recipe, "seed": 4}, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me" and (out / "mine" / "data.bin").read_bytes() == b"\x01"
    assert not stale.exists() and json.loads((out / "results.json").read_text())["recipe"]["seed"] == 4


def test_second_writer_into_the_same_folder_is_refused(tmp_path):
    from slimkit.core.lock import folder_lock

    recipe = {**RECIPE, "steps": []}
    with folder_lock(tmp_path / "r"):  # another run holds the folder
        with pytest.raises(CheckpointError, match=r"another slimkit run is writing into this folder"):
            run_recipe(recipe, tmp_path / "r")
        assert not (tmp_path / "r" / "run-state.json").exists()
    assert [s["name"] for s in run_recipe(recipe, tmp_path / "r").results["steps"]] == ["baseline"]
