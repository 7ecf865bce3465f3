"""End to end: 2 methods x 2 seeds on a tiny synthetic set (the session's ``finished_run``); files, numbers,
selection and the experiment config checked."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import TypeAdapter
from safetensors.numpy import load_file

from hscmae.cca import LinearCCA, fit_cca
from hscmae.checkpoint import load_module
from hscmae.config import ExperimentConfig, LossConfig, MethodConfig, ModelConfig, TrainConfig
from hscmae.evaluate import CCA_RIDGES, drop_entries, drop_seconds
from hscmae.experiment import (data_key, epoch_logger, feature_source, prepare, progress_text, run_experiment,
                               run_folder, run_one)
from hscmae.inference import embed
from hscmae.metrics import mean_average_precision
from hscmae.model import HSCMAE
from hscmae.synthetic import SyntheticConfig


@pytest.fixture(scope="module")
def run(finished_run):
    return finished_run.config, finished_run.run_dir, finished_run.metrics, finished_run.data


def test_run_directory_holds_every_artifact(run):
    config, run_dir, metrics, _ = run
    assert run_dir == run_folder(config, data_key(feature_source(config))) and run_dir.parent == Path(config.runs_root)
    for name in ("config.json", "metrics.json", "results.md", "results.csv", "log.jsonl"):
        assert (run_dir / name).stat().st_size > 0, name
    for plot in ("loss_curves.png", "pr_curves.png"):
        assert (run_dir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {(r["method"], r["seed"]) for r in metrics["runs"]} == {(m, s) for m in config.methods for s in config.seeds}
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert sum(1 for entry in log if entry["method"] == "hscmae") == 2 * 4  # every epoch of both seeds


def test_selection_is_recorded_with_epochs_counted_from_1(run):
    _, run_dir, metrics, _ = run
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    for entry in metrics["runs"]:
        if entry["kind"] == "trainable":
            epochs = [e for e in log if e["method"] == entry["method"] and e["seed"] == entry["seed"]]
            assert [e["epoch"] for e in epochs] == [1, 2, 3, 4] and entry["stopped_epoch"] == 4
            scores = [e["val_score"] for e in epochs]
            assert entry["best_epoch"] == int(np.argmax(scores)) + 1 and entry["cca_ridge"] is None
            assert entry["val_score"] == scores[entry["best_epoch"] - 1] == max(scores)
            assert epochs[-1]["best_epoch"] == entry["best_epoch"]  # each epoch's line: the best so far
        else:  # linear CCA selects a ridge, not an epoch
            tried = [e for e in log if e["method"] == entry["method"] and e["seed"] == entry["seed"]]
            assert [e["ridge"] for e in tried] == list(CCA_RIDGES) and entry["best_epoch"] is None
            assert entry["val_score"] == max(e["val_score"] for e in tried)
            assert entry["cca_ridge"] == max(tried, key=lambda e: e["val_score"])["ridge"]


def test_config_round_trips_through_the_run_directory(run):
    config, run_dir, _, _ = run
    saved = json.loads((run_dir / "config.json").read_text())
    assert ExperimentConfig.from_dict(saved["experiment"]) == dataclasses.replace(config, model_preset="demo")
    assert saved["methods"]["hscmae"]["train"]["epochs"] == 4
    assert saved["methods"]["hscmae"]["loss"]["mask_mode"] == "time"  # "auto" resolved for per-second data
    with pytest.raises(ValueError, match="method\n  Unexpected keyword argument"):
        ExperimentConfig.from_dict({"method": ["hscmae"]})
    with pytest.raises(ValueError, match="Input should be 'hscmae'"):
        ExperimentConfig(methods=["nope"])


def test_run_folder_is_named_by_the_data_settings_and_code_not_paths(run, tmp_path):
    config, run_dir, _, _ = run
    key = data_key(feature_source(config))
    elsewhere = dataclasses.replace(config, data_root=str(tmp_path), runs_root=str(tmp_path / "runs"))
    assert run_folder(elsewhere, key) == tmp_path / "runs" / run_dir.name  # moved folders: the same name
    assert run_folder(dataclasses.replace(config, epochs=5), key) != run_dir  # a changed setting lands beside
    assert run_folder(config, "other bytes") != run_dir
    assert run_folder(dataclasses.replace(config, run_dir=str(tmp_path / "x")), key) == tmp_path / "x"


def test_val_is_carved_from_train_and_tables_state_the_data(run):
    _, run_dir, metrics, data = run
    clips = metrics["data"]["clips"]
    assert clips == {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    assert clips["val"] == math.ceil(0.1 * (clips["train"] + clips["val"])) and clips["test"] == 128
    table = (run_dir / "results.md").read_text()
    assert "generated features (no extractor network" in table and "seeds: 2" in table
    assert "> input: per-second features; the sample level (mask_mode auto → time) drops whole seconds" in table
    assert "> training: at most 4 epochs, no early stopping (patience ≥ epochs)" in table
    assert "> tuning: none (each method's default recipe)" in table
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


def test_missing_split_is_a_clear_error(run):
    config, _, _, data = run
    train_only = Path(data.info["source"]) / "train.parquet"
    with pytest.raises(ValueError, match=r"no clips in split\(s\) \['test'\]"):
        prepare(dataclasses.replace(config, shards=str(train_only)))


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


def test_linear_cca_with_a_set_ridge_uses_that_ridge_only(run, tmp_path):
    config, _, _, data = run
    fixed = dataclasses.replace(config, method_configs={"linear-cca": {"cca_ridge": 0.37}})
    result = run_one("linear-cca", 0, data, tmp_path, config=fixed, progress=False)
    assert result.cca_ridge == 0.37 and [h["ridge"] for h in result.history] == [0.37]
    cca = fit_cca(*data.train.pooled(), k=16, ridge=0.37)  # min(cca_dim 32, audio 16-d)
    audio, visual = data.test.pooled()
    a, v = cca.transform_x(audio) * cca.correlations, cca.transform_y(visual) * cca.correlations
    labels = data.test.label_id
    assert result.metrics["a2v_map"] == pytest.approx(mean_average_precision(a, v, labels, labels), abs=1e-9)
    assert result.selection() == "ridge 0.37"


def test_clip_level_features_train_every_level_and_drop_entries(tmp_path):
    """One second per clip (as the authors' published features): the reconstruction term is non-zero at every
    epoch of hscmae and its learned weight stays finite (log.jsonl); the no-sample ablation differs from the
    no-decoder one; the partial-observation columns drop entries and do not repeat the plain scores."""
    one_second = SyntheticConfig(clips=400, classes=4, seconds=1, min_event_seconds=1, min_valid_seconds=1,
                                 audio_dim=16, visual_dim=24, signal_dim=4, modes=1, nuisance_dim=2, hidden=32)
    config = ExperimentConfig(synthetic=one_second, data_root=str(tmp_path / "data"), seeds=[0], epochs=4,
                              batch_size=96, methods=["hscmae", "hscmae-no-recon-decoder", "hscmae-no-sample",
                                                      "linear-cca"], runs_root=str(tmp_path / "runs"))
    run_dir = run_experiment(config, progress=False)
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    hscmae = [e for e in log if e["method"] == "hscmae"]
    assert len(hscmae) == 4 and all(e["recon"] > 0.05 and 0.1 < e["weights"]["recon"] < 10 for e in hscmae), hscmae
    saved = json.loads((run_dir / "config.json").read_text())
    modes = {m: saved["methods"][m]["loss"]["mask_mode"] for m in config.methods}
    assert modes == {m: "element" for m in config.methods}  # "auto" resolved for clip-level data
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["clip_level"] == ["audio", "visual"]
    runs = {r["method"]: r for r in metrics["runs"]}
    assert runs["hscmae-no-sample"]["metrics"] != runs["hscmae-no-recon-decoder"]["metrics"]
    for entry in runs.values():
        for drop in ("drop30", "drop50"):
            assert entry["metrics"][f"{drop}_mean_map"] != entry["metrics"]["mean_map"], entry["method"]
    data = prepare(config)  # linear CCA's dropped column recomputed: entries set to the training mean
    fill = {m: x.mean(axis=0) for m, x in zip(("audio", "visual"), data.train.pooled())}
    cca = LinearCCA.load(runs["linear-cca"]["checkpoint"])
    audio, visual = drop_entries(data.test, 0.3, fill=fill, modalities=("audio", "visual")).pooled()
    a, v = cca.transform_x(audio) * cca.correlations, cca.transform_y(visual) * cca.correlations
    labels = data.test.label_id
    assert runs["linear-cca"]["metrics"]["drop30_a2v_map"] == pytest.approx(
        mean_average_precision(a, v, labels, labels), abs=1e-9)
    table = (run_dir / "results.md").read_text()
    assert "input: clip-level features in every modality" in table and "30 % entries dropped" in table


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


def test_one_declaration_bounds_the_form_the_command_line_and_python(tmp_path, capsys):
    """mask_ratio's bounds and description, declared once on LossConfig, in all three entry points."""
    import jsonschema

    from flows.train_eval import main, train_eval

    schema = train_eval.parameters.model_dump(mode="json")
    declared = TypeAdapter(LossConfig).json_schema()["properties"]["mask_ratio"]
    in_form = schema["definitions"]["LossChanges"]["properties"]["mask_ratio"]
    assert in_form["anyOf"] == [{"exclusiveMaximum": 1.0, "minimum": 0.0, "type": "number"}, {"type": "null"}]
    assert in_form["description"] == declared["description"] and declared["exclusiveMaximum"] == 1.0
    jsonschema.validate({k: v["default"] for k, v in schema["properties"].items()}, schema)  # its own defaults
    with pytest.raises(jsonschema.ValidationError, match="1.0 is greater than or equal to the maximum of 1.0"):
        jsonschema.validate({"config": {"method_configs": {"hscmae": {"loss": {"mask_ratio": 1.0}}}}}, schema)
    with pytest.raises(ValueError, match="mask_ratio\n  Input should be less than 1"):
        LossConfig(mask_ratio=1.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("method_configs: {hscmae: {loss: {mask_ratio: 1.0}}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(bad), "--epochs", "0", "--print-config"])
    assert exit_info.value.code == 2 and capsys.readouterr().err == (
        f"error: {bad}: method_configs.hscmae.loss.mask_ratio: Input should be less than 1, got 1.0; "
        "command line: epochs: Input should be greater than or equal to 1, got 0\n")
    for config in (ExperimentConfig, MethodConfig, ModelConfig, LossConfig, TrainConfig, SyntheticConfig):
        fields = TypeAdapter(config).json_schema()["properties"]
        assert all(field.get("description") for field in fields.values()), config.__name__


def test_changes_merge_onto_each_method_and_folders_go_under_the_output_root():
    config = ExperimentConfig(model={"latent": 8},
                              method_configs={"dcca": {"loss": {"cca_k": 4}, "train": {"lr": 0.01}}})
    dcca, hscmae = config.method_config("dcca"), config.method_config("hscmae")
    assert (dcca.model.latent, dcca.loss.cca_k, dcca.train.lr, dcca.loss.use_local) == (8, 4, 0.01, False)
    assert (hscmae.model.latent, hscmae.loss.cca_k, hscmae.train.lr) == (8, None, 3e-4)
    assert config.to_dict()["method_configs"] == {"dcca": {"loss": {"cca_k": 4}, "train": {"lr": 0.01}}}
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="method 'dcca': recon_target 'masked' needs mask_ratio > 0"):
        ExperimentConfig(methods=["dcca"], method_configs={"dcca": {"loss": {"use_recon": True}}})
    got = ExperimentConfig().under(Path("/out"))
    assert (got.data_root, got.runs_root, got.run_dir) == ("/out/data", "/out/runs", None)
    assert dataclasses.replace(got, data_root="d", runs_root="r") == ExperimentConfig(data_root="d", runs_root="r")
    # "auto": the demo encoders for the built-in set, the paper's for real shards, pinned once the set is written
    assert (ExperimentConfig().preset, ExperimentConfig(shards="s").preset) == ("demo", "paper")
    assert ExperimentConfig().with_shards("data/synthetic-x").preset == "demo"
    assert TypeAdapter(ExperimentConfig).json_schema()["properties"]["model_preset"]["default"] == "auto"


def test_epoch_log_and_progress_lines():
    lines = []
    log = epoch_logger(lines.append, "hscmae", 1, TrainConfig(epochs=40, patience=40))
    for epoch in range(1, 41):
        log({"epoch": epoch, "best_epoch": epoch, "total": 0.5, "val_score": 0.25})
    assert len(lines) == 10 and lines[0] == "hscmae seed 1: epoch 4/40, loss 0.5000, val mAP 0.2500"
    short = []
    for epoch in range(1, 8):
        epoch_logger(short.append, "clip", 0, TrainConfig(epochs=7))({"epoch": epoch, "best_epoch": 1,
                                                                     "val_score": 0.5})
    assert len(short) == 7 and short[-1] == "clip seed 0: epoch 7/7, loss nan, val mAP 0.5000"
    stopped = []
    log = epoch_logger(stopped.append, "dcca", 0, TrainConfig(epochs=40, patience=5))
    for epoch in range(1, 14):  # best at epoch 8: the 13th epoch is the fifth without a better score, the last
        log({"epoch": epoch, "best_epoch": min(epoch, 8), "total": 0.5, "val_score": 0.25})
    assert stopped == ["dcca seed 0: epoch 4/40, loss 0.5000, val mAP 0.2500",
                       "dcca seed 0: epoch 8/40, loss 0.5000, val mAP 0.2500",
                       "dcca seed 0: epoch 12/40, loss 0.5000, val mAP 0.2500",
                       "dcca seed 0: epoch 13/40, loss 0.5000, val mAP 0.2500; stopped early: no better val mAP "
                       "in 5 epochs, selected epoch 8"]
    assert progress_text([], 1, 3) == "1 of 3 method x seed done (1 failed)"
