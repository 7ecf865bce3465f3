"""Embedding a small trained run (the session's ``finished_run``): the written vectors reproduce the run's
test metrics, and search over them ranks as a brute-force numpy reference does."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hscmae.checkpoint import checkpoint_dir
from hscmae.embeddings import (EmbeddingError, embed_shard, load_embedder, read_embeddings,
                               run_method_config)
from hscmae.evaluate import evaluate
from hscmae.search import Index
from pipeline.features.shards import shard_paths


@pytest.fixture(scope="module")
def small_run(finished_run, tmp_path_factory):
    """The run folder, its feature shards, a folder for embeddings, and the clips' feature sizes and count."""
    shards = shard_paths(finished_run.data.info["source"])
    synthetic = finished_run.config.synthetic
    dims = {"audio": synthetic.audio_dim, "visual": synthetic.visual_dim}
    return finished_run.run_dir, shards, tmp_path_factory.mktemp("embed"), dims, synthetic.clips


@pytest.mark.parametrize("method, posthoc", [("hscmae", False), ("hscmae", True), ("linear-cca", False)])
def test_embeddings_reproduce_the_runs_test_metrics(small_run, method, posthoc):
    run_dir, shards, root, dims, clips = small_run
    embedder = load_embedder(run_method_config(run_dir, method), checkpoint_dir(run_dir, method, 0), dims, seed=0,
                             posthoc=posthoc)
    out = root / f"{method}-{posthoc}"
    for i, shard in enumerate(shards):
        embed_shard(embedder, shard, out / f"embeddings-{i:05d}.parquet")
    emb = read_embeddings(out)
    assert len(emb) == clips and len(set(emb.clip_id)) == clips
    assert emb.meta["method"] == method and emb.meta["posthoc_cca"] == posthoc
    assert emb.meta["checkpoint_sha256"] == hashlib.sha256((checkpoint_dir(run_dir, method, 0) / "best.safetensors")
                                                           .read_bytes()).hexdigest()
    assert emb.meta["model"]["name"] == method and emb.meta["features"]["audio"]["extractor"]
    test = emb.split == "test"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    recorded = next(r["metrics"] for r in metrics["runs"] if r["method"] == method and r["seed"] == 0)
    found = evaluate(emb.audio[test], emb.visual[test], emb.label_id[test]).metrics
    prefix = "cca_" if posthoc else ""  # the run's metrics after its post-hoc CCA
    for name in ("a2v_map", "v2a_map"):
        assert found[name] == pytest.approx(recorded[prefix + name], abs=1e-6), name


def test_search_over_a_run_matches_brute_force(small_run):
    run_dir, shards, root, dims, _ = small_run
    embedder = load_embedder(run_method_config(run_dir, "hscmae"), checkpoint_dir(run_dir, "hscmae", 0), dims, seed=0)
    embed_shard(embedder, shards[0], root / "one" / "embeddings-00000.parquet")
    index = Index.load(root / "one")
    queries = index.audio[:25]
    found = index.search(queries, 10, "a2v", max_chunk_bytes=4096)
    q = queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
    g = index.visual / np.linalg.norm(index.visual.astype(np.float64), axis=1, keepdims=True)
    scores = q @ g.T
    want = np.array([np.lexsort((np.arange(len(g)), -row))[:10] for row in scores])
    np.testing.assert_array_equal(found.index, want)
    np.testing.assert_allclose(found.score, np.take_along_axis(scores, want, axis=1), atol=1e-10)


def test_loading_a_model_on_features_it_was_not_made_for_fails(small_run):
    run_dir, _, _, dims, _ = small_run
    with pytest.raises(EmbeddingError, match="does not fit hscmae"):
        load_embedder(run_method_config(run_dir, "hscmae"), checkpoint_dir(run_dir, "hscmae", 0),
                      {**dims, "audio": 7}, seed=0)
    with pytest.raises(EmbeddingError, match="has no method 'clip'"):
        run_method_config(run_dir, "clip")


@pytest.mark.parametrize("args, message", [
    (["--seed", "3"], "best.safetensors: no such checkpoint of hscmae seed 3"),
    (["--method", "dcca"], "has no method 'dcca'"),
])
def test_embed_cli_bad_input_is_one_error_line(small_run, capsys, args, message):
    from flows.embed import main

    run_dir, shards, root, _, _ = small_run
    with pytest.raises(SystemExit) as stopped:
        main(["--run", str(run_dir), "--features", str(shards[0]), "--out", str(root / "x"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_inference_loads_no_training_code():
    code = ("import sys, hscmae.embeddings, hscmae.inference, hscmae.retrieval_page; "
            "print(sorted(m for m in sys.modules if m in ('hscmae.train', 'hscmae.engine', 'hscmae.schedules', "
            "'hscmae.experiment', 'prefect')))")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]
