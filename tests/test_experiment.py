"""End to end: 2 methods x 2 seeds on a tiny synthetic set; files, numbers and selection checked."""

from __future__ import annotations

import csv
import math
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from hscmae.cca import LinearCCA, fit_cca
from hscmae.checkpoint import load_module
from hscmae.evaluate import drop_seconds
from hscmae.experiment import ExperimentConfig, prepare, run_experiment, run_one
from hscmae.metrics import mean_average_precision
from hscmae.model import HSCMAE
from hscmae.synthetic import SyntheticConfig
from hscmae.train import embed

TINY = SyntheticConfig(clips=640, classes=4, seconds=4, audio_dim=16, visual_dim=32, signal_dim=4, test_fraction=0.2,
                       modes=1, nuisance_dim=2, hidden=32,
                       val_fraction=0.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    config = ExperimentConfig(synthetic=TINY, data_root=str(root / "data"), methods=["hscmae", "linear-cca"],
                              seeds=[0, 1], epochs=4, batch_size=128, runs_root=str(root / "runs"))
    run_dir = run_experiment(config, progress=False)
    return config, run_dir, json.loads((run_dir / "metrics.json").read_text()), prepare(config)


def test_run_directory_holds_every_artifact(run):
    config, run_dir, metrics, _ = run
    assert run_dir == config.resolved_run_dir() and run_dir.parent == Path(config.runs_root)
    for name in ("config.json", "metrics.json", "results.md", "results.csv", "log.jsonl"):
        assert (run_dir / name).stat().st_size > 0, name
    for plot in ("loss_curves.png", "pr_curves.png"):
        assert (run_dir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {(r["method"], r["seed"]) for r in metrics["runs"]} == {(m, s) for m in config.methods for s in config.seeds}
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert sum(1 for entry in log if entry["method"] == "hscmae") == 2 * 4  # every epoch of both seeds


def test_config_round_trips_through_the_run_directory(run):
    config, run_dir, _, _ = run
    saved = json.loads((run_dir / "config.json").read_text())
    assert ExperimentConfig.from_dict(saved["experiment"]) == config
    assert saved["methods"]["hscmae"]["train"]["epochs"] == 4
    with pytest.raises(ValueError, match="unknown keys"):
        ExperimentConfig.from_dict({"method": ["hscmae"]})
    with pytest.raises(ValueError, match="unknown or no methods"):
        ExperimentConfig(methods=["nope"])


def test_val_is_carved_from_train_and_tables_state_the_data(run):
    _, run_dir, metrics, data = run
    clips = metrics["data"]["clips"]
    assert clips == {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    assert clips["val"] == math.ceil(0.1 * (clips["train"] + clips["val"])) and clips["test"] == 128
    table = (run_dir / "results.md").read_text()
    assert "generated features (no extractor network" in table and "seeds: 2" in table
    assert f"train {clips['train']}, val {clips['val']}, test 128" in table
    rows = {r["method"]: r for r in csv.DictReader((run_dir / "results.csv").open())}
    assert rows["hscmae"]["random_weights"] == "False" and rows["hscmae"]["seeds"] == "2"
    values = [r["metrics"]["mean_map"] for r in metrics["runs"] if r["method"] == "hscmae"]
    assert float(rows["hscmae"]["mean_map_mean"]) == pytest.approx(np.mean(values))
    assert float(rows["hscmae"]["mean_map_std"]) == pytest.approx(np.std(values, ddof=1))
    assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in table


def test_metrics_equal_a_recomputation_from_the_saved_checkpoints(run):
    config, _, metrics, data = run
    labels = data.test.label_id
    for entry in metrics["runs"]:
        if entry["method"] == "hscmae":
            model = HSCMAE(in_dims=data.train.dims, config=config.method_config("hscmae").model)
            load_module(Path(entry["checkpoint"]), model)
            audio, visual = embed(model, data.test)
            # the saved post-hoc CCA is the TRAIN fit with the val-chosen ridge
            posthoc = LinearCCA.load(str(Path(entry["checkpoint"]).with_name("posthoc_cca.safetensors")))
            refit = fit_cca(*embed(model, data.train), k=audio.shape[1], ridge=entry["posthoc_ridge"])
            np.testing.assert_allclose(posthoc.proj_x, refit.proj_x, atol=1e-9)
            a, v = posthoc.transform_x(audio) * posthoc.correlations, posthoc.transform_y(visual) * posthoc.correlations
            assert entry["metrics"]["cca_a2v_map"] == pytest.approx(mean_average_precision(a, v, labels, labels), abs=1e-9)
        else:
            cca = LinearCCA.load(entry["checkpoint"])
            pooled_audio, pooled_visual = data.test.pooled()
            audio = cca.transform_x(pooled_audio) * cca.correlations
            visual = cca.transform_y(pooled_visual) * cca.correlations
        assert entry["metrics"]["a2v_map"] == pytest.approx(mean_average_precision(audio, visual, labels, labels), abs=1e-9)
        assert entry["metrics"]["v2a_map"] == pytest.approx(mean_average_precision(visual, audio, labels, labels), abs=1e-9)


def test_trained_methods_beat_chance(run):
    _, _, metrics, data = run
    labels = data.test.label_id
    rng = np.random.default_rng(0)
    # chance: the same retrieval with random embeddings (sd about 0.003 at this size)
    null = max(mean_average_precision(a, v, labels, labels)
               for a, v in ((rng.normal(size=(len(labels), 64)), rng.normal(size=(len(labels), 64))) for _ in range(5)))
    for entry in metrics["runs"]:
        assert entry["metrics"]["mean_map"] > null + 0.03, (entry["method"], entry["seed"], null)


def test_test_split_never_influences_selection(run, tmp_path):
    config, run_dir, metrics, data = run
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.test))
    scrambled = dataclasses.replace(data, test=dataclasses.replace(
        data.test.subset(order), label_id=rng.permutation(data.test.label_id)))
    original = next(r for r in metrics["runs"] if r["method"] == "hscmae" and r["seed"] == 0)
    again = run_one("hscmae", 0, scrambled, tmp_path, config=config, progress=False)
    assert again.best_epoch == original["best_epoch"] and again.val_score == original["val_score"]
    saved, redone = load_file(original["checkpoint"]), load_file(again.checkpoint)
    assert saved.keys() == redone.keys()
    for key in saved:
        np.testing.assert_array_equal(saved[key], redone[key])
    assert again.metrics["mean_map"] != original["metrics"]["mean_map"]  # the test numbers did read test


def test_missing_split_is_a_clear_error(tmp_path):
    config = ExperimentConfig(synthetic=dataclasses.replace(TINY, val_fraction=0.0), data_root=str(tmp_path),
                              shards=None, methods=["linear-cca"], seeds=[0])
    data_dir = prepare(config).info["source"]
    with pytest.raises(ValueError, match=r"no clips in split\(s\) \['test'\]"):
        prepare(dataclasses.replace(config, shards=str(Path(data_dir) / "train.parquet")))


def test_every_row_has_partial_observation_columns(run):
    _, run_dir, metrics, data = run
    labels = data.test.label_id
    for entry in metrics["runs"]:
        for drop in ("drop30", "drop50"):
            assert {f"{drop}_a2v_map", f"{drop}_v2a_map", f"{drop}_mean_map"} <= entry["metrics"].keys()
        if entry["method"] == "linear-cca":  # recomputed: the CCA of the pooled valid seconds left
            cca = LinearCCA.load(entry["checkpoint"])
            audio, visual = drop_seconds(data.test, 0.5).pooled()
            a, v = cca.transform_x(audio) * cca.correlations, cca.transform_y(visual) * cca.correlations
            assert entry["metrics"]["drop50_a2v_map"] == pytest.approx(mean_average_precision(a, v, labels, labels),
                                                                       abs=1e-9)
    assert "mean mAP, 50 % s dropped" in (run_dir / "results.md").read_text()


def test_linear_cca_depends_on_its_own_dimension_not_the_model_latent(run, tmp_path):
    config, _, metrics, data = run
    original = next(r for r in metrics["runs"] if r["method"] == "linear-cca" and r["seed"] == 0)
    wider = dataclasses.replace(config, model={"latent": 5}, method_configs={"hscmae": {"model": {"latent": 3}}})
    again = run_one("linear-cca", 0, data, tmp_path / "a", config=wider, progress=False)
    assert again.metrics == original["metrics"]
    assert load_file(again.checkpoint)["proj_x"].shape[1] == min(config.method_config("linear-cca").cca_dim, 16)
    smaller = dataclasses.replace(config, method_configs={"linear-cca": {"cca_dim": 2}})
    two = run_one("linear-cca", 0, data, tmp_path / "b", config=smaller, progress=False)
    assert load_file(two.checkpoint)["proj_x"].shape[1] == 2
    # plain and +CCA columns of linear-cca are the same numbers (it is the CCA), so every row's +CCA compares
    assert two.metrics["cca_mean_map"] == two.metrics["mean_map"]


def test_config_file_sets_model_and_method_fields_and_rejects_unknown_keys(tmp_path, capsys):
    from flows.train_eval import main

    good = tmp_path / "c.yaml"
    good.write_text("seeds: [4]\nmodel_preset: paper\nmodel: {depth: 3}\n"
                    "method_configs: {hscmae: {loss: {topk: 9}, train: {lr: 0.01}}, linear-cca: {cca_dim: 8}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(good), "--print-config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    hscmae = printed["methods"]["hscmae"]
    assert (hscmae["model"]["hidden"], hscmae["model"]["depth"], hscmae["loss"]["topk"], hscmae["train"]["lr"]) \
        == (1024, 3, 9, 0.01)
    assert printed["methods"]["dcca"]["loss"]["topk"] == 5 and printed["methods"]["linear-cca"]["cca_dim"] == 8
    assert printed["experiment"]["seeds"] == [4]
    for text, name in (("model: {widht: 3}\n", "widht"), ("method_configs: {hscmae: {loss: {tau: 1}}}\n", "tau"),
                       ("synthetic: {clipz: 3}\n", "clipz"), ("method_configs: {nope: {}}\n", "nope")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            main(["--config", str(bad), "--print-config"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1, err
        assert err[0].startswith(f"error: {bad}: ") and name in err[0], err
