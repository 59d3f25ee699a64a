"""The low-resource experiment's report: targets computed from the runs, curves in the md and the plot."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "low_resource_experiment.py"
spec = importlib.util.spec_from_file_location("low_resource_experiment", SCRIPT)
experiment = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = experiment  # its dataclass looks its module up there
spec.loader.exec_module(experiment)


def _run(system: str, labelled: str, test_cer: float) -> dict:
    curve = [{"updates": 500, "cer": 95.0}, {"updates": 1000, "cer": test_cer + 1}]
    return {"system": system, "labelled": labelled, "pretrain_minutes": 0 if system == "zipformer_scratch" else 60.1,
            "pretrain_updates": 0 if system == "zipformer_scratch" else 2000, "finetune_updates": 1000,
            "test_cer": test_cer, "test_wer": 99.0, "valid_cer": test_cer + 1, "valid_wer": 99.0,
            "finetune_command": f"train {system} {labelled}", "valid_cer_curve": curve}


def _payload(zipformer: float, scratch: float, hubert: float) -> dict:
    runs = [_run("zipformer_small", "10min", zipformer), _run("hubert_small", "10min", hubert),
            _run("zipformer_scratch", "10min", scratch), _run("zipformer_small", "1h", zipformer - 10)]
    pre = {name: {"updates": 2000, "wall_seconds": 3606.0, "command": f"pretrain {name}",
                  "curve": [{"minutes": 1.0, "updates": 50, "masked_accuracy": 0.05},
                            {"minutes": 30.5, "updates": 1500, "masked_accuracy": 0.1},
                            {"minutes": 60.0, "updates": 2000, "masked_accuracy": 0.2}]}
           for name in ("zipformer_small", "hubert_small")}
    return {"runs": runs, "command": "python low_resource_experiment.py", "git_commit": "abc", "machine": "cpu",
            "settings": {"finetune_updates": "1000", "expected_updates": "1500"}, "labels_command": "make labels",
            "pretrain": pre, "targets": experiment.targets(runs),
            "pretraining_curve": experiment.pretraining_curve(runs)}


def test_targets_are_judged_on_ten_minutes_of_labels():
    holds = {t["target"]: t["holds"] for t in experiment.targets(_payload(40.0, 60.0, 70.0)["runs"])}
    assert list(holds.values()) == [True, True]
    fails = experiment.targets(_payload(50.0, 60.0, 45.0)["runs"])
    assert [t["holds"] for t in fails] == [False, False]
    assert fails[0]["measured"] == "50.00 / 60.00 = 0.833x"


def test_pretraining_curve_orders_the_zipformer_on_ten_minutes_by_pretraining_and_compares_with_scratch():
    payload = _payload(40.0, 60.0, 70.0)
    along = dict(_run("zipformer_small@1500", "10min", 48.0), pretrain_minutes=30.5, pretrain_updates=1500)
    curve = experiment.pretraining_curve(payload["runs"] + [along])
    assert [(p["system"], p["pretrain_minutes"], p["vs_scratch"]) for p in curve] == [
        ("zipformer_scratch", 0, 1.0), ("zipformer_small@1500", 30.5, 0.8), ("zipformer_small", 60.1, 0.667)]
    assert experiment.pretraining_curve([_run("zipformer_small", "10min", 40.0)])[0]["vs_scratch"] is None


def test_report_lists_every_run_its_valid_curve_and_command(tmp_path: Path):
    payload = _payload(40.0, 60.0, 70.0)
    payload["continued_pretraining"] = {"zipformer_small@4000": {
        "updates": 4000, "wall_seconds": 1200.0, "command": "resume zipformer_small",
        "curve": [{"minutes": 10.0, "updates": 3000, "masked_accuracy": 0.25}]}}
    text = experiment.markdown(payload)
    assert "- zipformer_small@4000: zipformer_small's pre-training resumed from its final checkpoint until " \
           "update 4000, 20.0 more minutes, masked accuracy 0.250 over its last 50 updates" in text
    assert "| zipformer_small | 1h | 60.1 | 2000 | 1000 | 31.00 | 30.00 | 99.00 |" in text
    assert "- hubert_small / 10min: 500: 95.0, 1000: 71.0" in text
    assert "`train zipformer_scratch 10min`" in text and "**holds** (40.00 / 60.00 = 0.667x)" in text
    assert "- 60.1 min (2000 updates, zipformer_small): test CER 40.00, valid CER 41.00, 0.667x scratch's" in text
    hubert = next(line for line in text.splitlines() if line.startswith("- hubert_small: 2000 updates"))
    assert "decay ends at update 1500 (`--expected-updates`), reached after 30.5 min" in hubert
    zipformer = next(line for line in text.splitlines() if line.startswith("- zipformer_small: 2000 updates"))
    assert "decay" not in zipformer
    experiment.plot(payload, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finetunings_cover_every_system_and_labelled_size_then_points_along_pretraining(tmp_path: Path):
    pre = _payload(40.0, 60.0, 70.0)["pretrain"]
    ckpt = tmp_path / "zipformer_small_pt" / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "checkpoint_1_1500.pt").write_bytes(b"")
    plan = experiment.plan_finetunings(pre, tmp_path, [1500], {})
    assert [(f.system, f.labelled) for f in plan] == [
        ("zipformer_small", "10min"), ("hubert_small", "10min"), ("zipformer_scratch", "10min"),
        ("zipformer_small", "1h"), ("hubert_small", "1h"), ("zipformer_scratch", "1h"),
        ("zipformer_small@1500", "10min")]
    assert plan[1].checkpoint == tmp_path / "hubert_small_pt" / "ckpt" / "checkpoint_last.pt"
    assert (plan[1].preset, plan[1].pretrain_minutes, plan[2].pretrain_updates) == ("hubert_small", 60.1, 0)
    along = plan[-1]
    assert (along.checkpoint, along.pretrain_minutes, along.pretrain_updates, along.name) == (
        ckpt / "checkpoint_1_1500.pt", 30.5, 1500, "zipformer_small_at1500_10min")
    with pytest.raises(SystemExit, match="kept no checkpoint after 1000 updates"):
        experiment.plan_finetunings(pre, tmp_path, [1000], {})


def test_a_point_beyond_the_budget_fine_tunes_the_resumed_pretraining(tmp_path: Path):
    pre = _payload(40.0, 60.0, 70.0)["pretrain"]
    plan = experiment.plan_finetunings(pre, tmp_path, [4000], {4000: {"updates": 4000, "wall_seconds": 1200.0}})
    beyond = plan[-1]
    assert (beyond.system, beyond.labelled, beyond.pretrain_minutes, beyond.pretrain_updates) == (
        "zipformer_small@4000", "10min", 80.1, 4000)
    assert beyond.checkpoint == tmp_path / "zipformer_small_at4000_pt" / "ckpt" / "checkpoint_last.pt"


def test_resumed_pretraining_restores_the_final_checkpoint_and_counts_updates_not_minutes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen = {}

    def fake_train_once(overrides, run_dir, config_dir, config_name, env=None, inputs=()):
        seen.update(overrides=list(overrides), run_dir=run_dir, config_name=config_name, inputs=list(inputs))
        run_dir.mkdir(parents=True)
        (run_dir / "train.log").write_text("")
        return {"updates": 4000, "wall_seconds": 1.0}

    monkeypatch.setattr(experiment, "train_once", fake_train_once)
    experiment.continue_pretraining(tmp_path / "corpus", tmp_path / "labels", 60.0, 4000, tmp_path)
    last = tmp_path / "zipformer_small_pt" / "ckpt" / "checkpoint_last.pt"
    assert seen["inputs"] == [last, tmp_path / "labels" / "pretrain.km"] and seen["config_name"] == "zipformer_small"
    assert seen["run_dir"] == tmp_path / "zipformer_small_at4000_pt"
    keys = [o.split("=", 1)[0] for o in seen["overrides"]]
    assert len(keys) == len(set(keys)), "hydra rejects a key given twice"
    assert {f"checkpoint.restore_file={last}", "optimization.max_update=4000",
            "optimization.stop_time_hours=0"} <= set(seen["overrides"])
    budgeted, _, _ = experiment.pretrain_command("zipformer_small", tmp_path / "corpus", tmp_path / "labels", 60.0, 0)
    assert [o for o in budgeted if o.startswith("optimization.")] == [
        "optimization.max_update=10000000", "optimization.stop_time_hours=1.0"]


def test_with_overrides_replaces_keys_in_place_of_appending_twice():
    assert experiment.with_overrides(["a.b=1", "+c.d=2", "e=3"], ["c.d=5", "a.b=4"]) == ["e=3", "c.d=5", "a.b=4"]


def test_second_iteration_labels_from_the_first_model_then_a_fresh_run_and_a_resumed_one_on_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    made, trained = [], {}

    def fake_make_labels(corpus, labels, clusters, from_checkpoint=None):
        made.append((labels, clusters, from_checkpoint))
        return "make labels it2"

    def fake_train_once(overrides, run_dir, config_dir, config_name, env=None, inputs=()):
        trained[run_dir.name] = (list(overrides), list(inputs))
        run_dir.mkdir(parents=True)
        (run_dir / "train.log").write_text("")
        return {"updates": 6000 if "_at" in run_dir.name else 3957, "wall_seconds": 60.0}

    monkeypatch.setattr(experiment, "make_labels", fake_make_labels)
    monkeypatch.setattr(experiment, "train_once", fake_train_once)
    records = experiment.second_iteration(tmp_path / "corpus", tmp_path, 100, 4, 60.0, 3957, 6000)
    last = tmp_path / "zipformer_small_pt" / "ckpt" / "checkpoint_last.pt"
    labels = tmp_path / "labels_it2"
    assert made == [(labels, 100, (last, 4))]
    assert sorted(trained) == ["zipformer_small_it2_at6000_pt", "zipformer_small_it2_pt"]
    fresh, fresh_inputs = trained["zipformer_small_it2_pt"]
    assert {f"task.label_dir={labels}", "optimization.max_update=3957", "optimization.stop_time_hours=0"} <= set(fresh)
    assert not any(o.startswith("checkpoint.restore_file=") for o in fresh) and fresh_inputs == [labels / "pretrain.km"]
    resumed, resumed_inputs = trained["zipformer_small_it2_at6000_pt"]
    assert {f"task.label_dir={labels}", f"checkpoint.restore_file={last}", "optimization.max_update=6000"} <= set(
        resumed)
    assert resumed_inputs == [last, labels / "pretrain.km"]
    assert {name: (r["layer"], r["labels_command"]) for name, r in records.items()} == {
        "zipformer_small_it2": (4, "make labels it2"), "zipformer_small_it2@6000": (4, "make labels it2")}


def test_second_iteration_runs_are_fine_tuned_and_set_beside_their_mfcc_label_counterparts(tmp_path: Path):
    payload = _payload(40.0, 60.0, 70.0)
    relabelled = {name: {"updates": updates, "wall_seconds": 1800.0, "layer": 4, "labels_command": "make it2",
                         "command": f"pretrain {name}", "curve": [{"minutes": 1.0, "updates": 50,
                                                                   "masked_accuracy": 0.3}]}
                  for name, updates in (("zipformer_small_it2", 2000), ("zipformer_small_it2@4000", 4000))}
    plan = experiment.plan_finetunings(payload["pretrain"], tmp_path, [4000],
                                       {4000: {"updates": 4000, "wall_seconds": 1200.0}}, relabelled)
    assert [(f.system, f.labelled, f.pretrain_minutes, f.pretrain_updates) for f in plan[-2:]] == [
        ("zipformer_small_it2", "10min", 90.1, 2000), ("zipformer_small_it2@4000", "10min", 90.1, 4000)]
    assert plan[-1].checkpoint == tmp_path / "zipformer_small_it2_at4000_pt" / "ckpt" / "checkpoint_last.pt"
    runs = payload["runs"] + [_run("zipformer_small@4000", "10min", 38.0), _run("zipformer_small_it2", "10min", 35.0),
                              _run("zipformer_small_it2@4000", "10min", 33.0)]
    effect = experiment.second_iteration_effect(runs)
    assert [(e["system"], e["baseline"], e["test_cer"], e["baseline_test_cer"]) for e in effect] == [
        ("zipformer_small_it2", "zipformer_small", 35.0, 40.0),
        ("zipformer_small_it2@4000", "zipformer_small@4000", 33.0, 38.0)]
    assert [p["system"] for p in experiment.pretraining_curve(runs)] == [
        "zipformer_scratch", "zipformer_small", "zipformer_small@4000"], "iteration 2 is not on the MFCC curve"
    payload.update(runs=runs, second_iteration=relabelled, second_iteration_effect=effect,
                   pretraining_curve=experiment.pretraining_curve(runs))
    text = experiment.markdown(payload)
    assert "- zipformer_small_it2: labels from k-means on stack 4 of zipformer_small's final checkpoint; a fresh " \
           "zipformer_small pre-trained on them for 2000 updates, 30.0 min" in text
    assert "- zipformer_small_it2@4000: labels from k-means on stack 4 of zipformer_small's final checkpoint; " \
           "zipformer_small's pre-training resumed on them until update 4000" in text
    assert "- effect: test CER 33.00 (zipformer_small_it2@4000) vs 38.00 (zipformer_small@4000: as many updates " \
           "on MFCC labels); valid CER 34.00 vs 39.00" in text
    experiment.plot(payload, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
