"""bench/device_check.py --small: one subprocess run, its report's structure and its real values.

The run is shared by every test here (module fixture); it takes a few seconds on two cores. Values
are checked against independent references: the A->V and V->A mAP against scikit-learn's
``average_precision_score`` on the embeddings the script saved, the end-to-end/forward ratio
against the two speeds, and on the CPU the float32-vs-float32 feature difference against 0.
"""

from __future__ import annotations

import json
import math
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from hscmae.search import SCORE_GRID

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "device_check.py"
PARTS = ("environment", "extraction", "training", "evaluation", "search")
NEVER_ON_GPU = "never run on a GPU"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The ``--small`` run: its report (JSON), Markdown, saved embeddings and stdout."""
    root = tmp_path_factory.mktemp("device_check")
    done = subprocess.run([sys.executable, str(SCRIPT), "--small", "--out", str(root)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = root / "device_check"
    return {"report": json.loads((folder / "device_check.json").read_text()),
            "markdown": (folder / "device_check.md").read_text(),
            "embeddings": dict(np.load(folder / "eval_embeddings.npz")), "stdout": done.stdout}


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.slow  # the first to use the module's run: it waits for it
def test_structure_and_cuda_marks(run: dict[str, Any]) -> None:
    report = run["report"]
    assert report["small"] is True
    assert all(part in report for part in PARTS)
    cuda = report["environment"]["cuda_available"]
    for part in PARTS[1:]:
        marks = [name for name in report[part] if "peak_gpu_mib" in name]
        assert marks, part
        if cuda:
            assert report[part]["cuda"].startswith("measured on cuda")
            assert all(_positive(report[part][name]) for name in marks)
        else:  # every CUDA figure says it was not measured, in the JSON and in the Markdown
            assert NEVER_ON_GPU in report[part]["cuda"]
            assert all(NEVER_ON_GPU in report[part][name] for name in marks)
    if not cuda:
        assert "cuda: not available — GPU rows not measured" in run["markdown"]
        assert "cuda: not available — GPU rows not measured" in run["stdout"]
        assert report["environment"]["gpu_free_mib"].startswith("not measured")
    for part in PARTS:  # the Markdown table holds every figure of the JSON
        for name in report[part]:
            assert f"| {part} | {name} |" in run["markdown"]


def test_extraction(run: dict[str, Any]) -> None:
    found = run["report"]["extraction"]
    sizes = run["report"]["sizes"]
    assert found["clips"] == sizes["demo_clips"] and found["failures"] == 0
    assert _positive(found["end_to_end_clips_per_s"]) and _positive(found["forward_only_clips_per_s"])
    assert found["ratio_end_to_end_over_forward"] == pytest.approx(
        found["end_to_end_clips_per_s"] / found["forward_only_clips_per_s"], rel=1e-9)
    for m in ("audio", "visual"):
        assert _positive(found[f"{m}_max_abs_value_cpu_fp32"])
        if run["report"]["environment"]["cuda_available"]:  # float16 autocast: close, not equal
            assert found[f"{m}_relative_diff_vs_cpu_fp32"] < 0.05
        else:  # the same float32 computation on the same CPU: bit-for-bit equal
            assert found[f"{m}_max_abs_diff_vs_cpu_fp32"] == 0.0
    assert "random" in found["weights"]


def test_training(run: dict[str, Any]) -> None:
    found = run["report"]["training"]
    assert found["train_clips"] == run["report"]["sizes"]["train_clips"] and found["batch"] == 512
    for name in ("hscmae", "clip"):
        assert _positive(found[f"{name}_s_per_epoch"]) and _positive(found[f"{name}_first_epoch_s"])
        assert _positive(found[f"{name}_parameters"])


def _sklearn_map(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> float:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    return float(np.mean([average_precision_score(labels == labels[i], scores[i]) for i in range(len(q))]))


def test_evaluation_against_sklearn(run: dict[str, Any]) -> None:
    found, emb = run["report"]["evaluation"], run["embeddings"]
    assert len(emb["label_id"]) == found["test_clips"] == run["report"]["sizes"]["test_clips"]
    assert found["a2v_map"] == pytest.approx(_sklearn_map(emb["audio"], emb["visual"], emb["label_id"]), abs=1e-6)
    assert found["v2a_map"] == pytest.approx(_sklearn_map(emb["visual"], emb["audio"], emb["label_id"]), abs=1e-6)
    assert found["a2v_map_matches_cpu_1e-6"] is True
    assert found["a2v_map_abs_diff_vs_cpu"] <= 1e-6
    for view in ("a2v", "v2a", "cca_a2v", "cca_v2a"):
        assert 0.0 < found[f"{view}_map"] <= 1.0
        assert found[f"{view}_map_in_full_pass"] == pytest.approx(found[f"{view}_map"], abs=1e-12)
        assert _positive(found[f"{view}_map_s"]) and _positive(found[f"{view}_floor_s"])
    assert _positive(found["full_pass_s"]) and _positive(found["cca_fit_s"])


def test_search(run: dict[str, Any]) -> None:
    found = run["report"]["search"]
    sizes = run["report"]["sizes"]
    assert (found["gallery_clips"], found["queries"]) == (sizes["gallery"], sizes["queries"])
    assert found["topk_identical_to_index_share"] == 1.0
    assert found["topk_max_abs_score_diff_vs_index"] <= SCORE_GRID
    for name in ("device_1_query_ms", f"device_{sizes['queries']}_queries_s", "index_cpu_1_query_ms"):
        assert _positive(found[name])


def test_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad input: one error line naming the path, exit status 2, nothing measured."""
    (tmp_path / "device_check").write_text("not a folder")
    main = runpy.run_path(str(SCRIPT), run_name="device_check")["main"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--small", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(tmp_path / "device_check") in err[0]
