"""A corpus of broken inputs, made at test time, and the exact answer to each.

Row-level cases run in-process (fast); a few run each CLI as a subprocess to check the
contract: one ``error:`` line, exit status 2, nothing written, no traceback unless ``--debug``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from pipeline.media.acquire import AcquireConfig, acquire
from pipeline.io.errors import UserError
from pipeline.datasets.folder import SplitConfig, build_folder_manifest
from pipeline.features.import_features import FeatureImportError, import_single_file
from pipeline.features.shards import check_shards
from pipeline.datasets.schema import ManifestError, read_manifest, write_build, write_manifest
from pipeline.datasets.splits import stratified_holdout
from pipeline.features.shards import ShardError

ROOT = Path(__file__).resolve().parents[1]
NO_VAL = SplitConfig(val_fraction=0.0)
LINE_BREAK = "holds a line break (a quoted cell over several lines); a label is one line"


def _dataset(tmp_path: Path, rows: str, files: tuple[str, ...] = ("a/x.mp4", "a/y.mp4", "b/z.mp4")) -> Path:
    """A dataset root holding ``files`` (a few bytes each) and ``labels.csv`` with ``rows`` below its header."""
    root = tmp_path / "data"
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"video")
    (root / "labels.csv").write_text(rows)
    return root / "labels.csv"


def _problems(exc: pytest.ExceptionInfo[ManifestError]) -> list[tuple[str, str, str]]:
    return [(p.line, p.column, p.problem) for p in exc.value.problems]


def test_every_bad_row_is_reported_at_once(tmp_path):
    csv = _dataset(tmp_path, "path,label,split,start,end\n"
                             "a/x.mp4,cat,train,1,ten\n"       # 2: end not a number
                             "a/y.mp4,,train,,\n"              # 3: label empty (blank times are fine)
                             "b/z.mp4,dog,holdout,5,2\n"       # 4: split unknown, end before start
                             "a/x.mp4,cat,test,,\n")           # 5: duplicate derived id of line 2
    with pytest.raises(ManifestError) as exc:
        build_folder_manifest(csv, split_file=None, splitting=NO_VAL)
    assert _problems(exc) == [
        ("line 2", "end", "not a finite number"),
        ("line 3", "label", "empty"),
        ("line 4", "end", "not after start 5"),
        ("line 4", "split", "not one of ('train', 'val', 'test')"),
        ("line 5", "clip_id", "duplicate clip_id (also line 2: a/x.mp4)"),
    ]
    assert str(exc.value).startswith(f"{csv}: 5 problems in 4 rows (line | column | value | problem):\n")


def test_problems_name_the_line_an_editor_shows(tmp_path):
    """Blank lines and a quoted cell spanning two lines still count, as in the file."""
    csv = _dataset(tmp_path, "path,label,split\n"
                             "\n"                               # 2: blank (pandas skips it)
                             "a/x.mp4,\"cat\nsitting\",train\n"  # 3-4: one row, a label over two lines
                             "   \n"                            # 5: whitespace only
                             "a/y.mp4,,train\n")                # 6: label empty
    with pytest.raises(ManifestError) as exc:
        build_folder_manifest(csv, split_file=None, splitting=NO_VAL)
    assert _problems(exc) == [("line 3", "label", LINE_BREAK), ("line 6", "label", "empty")]


def test_a_label_over_several_lines_is_a_bad_row_in_every_mode(tmp_path):
    """skipped, it was its own class ('cat\\nsitting') with no warning; now it is a bad row, named."""
    csv = _dataset(tmp_path, 'path,label,split\na/x.mp4,cat,train\na/y.mp4,"cat\nsitting",test\nb/z.mp4,dog,test\n')
    with pytest.raises(ManifestError) as exc:
        build_folder_manifest(csv, splitting=NO_VAL)
    assert str(exc.value) == f"{csv}, line 3: label 'cat\\nsitting': {LINE_BREAK}"
    built = build_folder_manifest(csv, splitting=NO_VAL, on_bad_row="skip")
    assert [(p.line, p.column, p.problem) for p in built.skipped] == [("line 3", "label", LINE_BREAK)]
    assert built.classes == ("cat", "dog") and built.frame["label"].tolist() == ["cat", "dog"]
    assert built.frame["label_id"].tolist() == [0, 1] and not built.anomalies


def test_skip_writes_the_good_rows_and_lists_every_skipped_one(tmp_path):
    csv = _dataset(tmp_path, "path,label,split,start,end\na/x.mp4,cat,train,,\na/y.mp4,cat,test,2,1\n"
                             "b/z.mp4,dog,train,0,4\nb/z.mp4,dog,test,,\n../../etc/passwd,dog,test,,\n")
    strict = pytest.raises(ManifestError)
    with strict:
        build_folder_manifest(csv, splitting=NO_VAL)
    built = build_folder_manifest(csv, splitting=NO_VAL, on_bad_row="skip")
    assert built.frame["clip_id"].tolist() == ["a.x", "b.z"]
    assert built.frame["source"].tolist() == ["a/x.mp4", "b/z.mp4"]
    # blank optional cells on a good row: the whole file
    assert built.frame["clip_start_s"].tolist() == [0.0, 0.0] and np.isnan(built.frame["clip_end_s"].iloc[0])
    assert built.frame["clip_end_s"].iloc[1] == 4.0
    assert [(p.line, p.column) for p in built.skipped] == [("line 3", "end"), ("line 5", "clip_id"), ("line 6", "path")]
    assert built.skipped[1].problem == "duplicate clip_id (also line 4: b/z.mp4)"
    assert built.frame.attrs["root"] == str(csv.parent.resolve())


def test_two_duplicated_ids_pair_the_right_rows(tmp_path):
    csv = _dataset(tmp_path, "path,label,clip_id\na/x.mp4,cat,p\na/y.mp4,cat,q\nb/z.mp4,dog,p\na/x.mp4,cat,q\n")
    with pytest.raises(ManifestError) as exc:
        build_folder_manifest(csv, splitting=NO_VAL)
    assert _problems(exc) == [("line 4", "clip_id", "duplicate clip_id (also line 2: a/x.mp4)"),
                              ("line 5", "clip_id", "duplicate clip_id (also line 3: a/y.mp4)")]


@pytest.mark.parametrize("given", ["../../etc/passwd", "../../../../../../etc/passwd", "/etc/hostname"])
def test_paths_outside_the_root_are_refused_unless_allowed(tmp_path, given):
    csv = _dataset(tmp_path, f"path,label,split\na/x.mp4,cat,train\n{given},dog,test\n")
    with pytest.raises(ManifestError) as exc:
        build_folder_manifest(csv, splitting=NO_VAL)
    resolved = (csv.parent / given).resolve()
    assert str(exc.value) == (f"{csv}, line 3: path {given!r}: resolves to {resolved}, outside the dataset root "
                              f"{csv.parent.resolve()} (--allow-outside-root to accept)")
    allowed = build_folder_manifest(csv, splitting=NO_VAL, allow_outside_root=True).frame
    assert allowed["source"].tolist() == ["a/x.mp4", str(resolved)]


def test_absolute_path_inside_the_root_is_stored_relative(tmp_path):
    csv = _dataset(tmp_path, "")
    csv.write_text(f"path,label,split\n{csv.parent.resolve() / 'a/x.mp4'},cat,train\nb/z.mp4,dog,test\n")
    assert build_folder_manifest(csv, splitting=NO_VAL).frame["source"].tolist() == ["a/x.mp4", "b/z.mp4"]


def test_symlinks_in_and_out_of_the_root(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "far.mp4").write_bytes(b"video")
    root = tmp_path / "tree"
    for name in ("a/x.mp4", "a/y.mp4", "b/z.mp4", "b/w.mp4"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"video")
    (root / "a" / "inside.mp4").symlink_to(root / "b" / "z.mp4")
    (root / "a" / "dangling.mp4").symlink_to(root / "gone.mp4")
    (root / "b" / "folder.mp4").symlink_to(outside)
    built = build_folder_manifest(root, splitting=SplitConfig(test_fraction=0.5, val_fraction=0.0))
    assert built.frame["source"].tolist() == ["a/inside.mp4", "a/x.mp4", "a/y.mp4", "b/w.mp4", "b/z.mp4"]
    assert sorted((a.kind, a.subject) for a in built.anomalies) == [
        ("dangling_symlink", "a/dangling.mp4"), ("symlink_to_folder", "b/folder.mp4")]
    (root / "a" / "out.mp4").symlink_to(outside / "far.mp4")
    with pytest.raises(ManifestError) as exc:
        build_folder_manifest(root, splitting=SplitConfig(test_fraction=0.5, val_fraction=0.0))
    assert _problems(exc) == [("file a/out.mp4", "path", f"resolves to {(outside / 'far.mp4').resolve()}, outside "
                               f"the dataset root {root.resolve()} (--allow-outside-root to accept)")]


def test_a_folder_with_labels_csv_uses_it(tmp_path, capsys):
    csv = _dataset(tmp_path, "path,label,split\na/x.mp4,cat,test\na/y.mp4,cat,train\nb/z.mp4,dog,train\n")
    built = build_folder_manifest(csv.parent, splitting=NO_VAL)
    assert dict(zip(built.frame["clip_id"], built.frame["split"])) == {"a.x": "test", "a.y": "train", "b.z": "train"}
    assert built.frame["label"].tolist() == ["cat", "cat", "dog"]  # from the CSV, not the folder names
    assert built.anomalies[0].kind == "labels_csv_used"
    assert f"reading the clips and labels of {csv}" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("", "the labels CSV is empty (no header line)"),
    ("path,label,split\n", "no rows below the header line"),
])
def test_empty_and_header_only_csv(tmp_path, text, message):
    csv = _dataset(tmp_path, text)
    with pytest.raises(ManifestError, match="^" + __import__("re").escape(f"{csv}: {message}") + "$"):
        build_folder_manifest(csv)


def test_a_class_with_one_training_clip_is_named(tmp_path):
    csv = _dataset(tmp_path, "path,label\na/x.mp4,cat\na/y.mp4,cat\nb/z.mp4,dog\n")
    with pytest.raises(ManifestError) as exc:
        build_folder_manifest(csv)
    assert str(exc.value).startswith(f"{csv}: holding out test: cannot stratify: class 'dog' has only one item (give splits")


def test_a_failed_val_carve_says_so_when_the_csv_gives_splits(tmp_path):
    csv = _dataset(tmp_path, "path,label,split\na/x.mp4,cat,train\na/y.mp4,cat,train\nb/z.mp4,dog,train\n"
                             "b/w.mp4,dog,test\n", files=("a/x.mp4", "a/y.mp4", "b/z.mp4", "b/w.mp4"))
    with pytest.raises(ManifestError) as exc:
        build_folder_manifest(csv)
    assert str(exc.value) == (f"{csv}: carving val from the train split: cannot stratify: class 'dog' has only one item "
                              "(give val rows in the splits, or change --val-fraction; 0 for no val)")
    assert (build_folder_manifest(csv, splitting=NO_VAL).frame["split"] == ["train", "train", "train", "test"]).all()


@pytest.mark.parametrize("fraction, held, bound", [(0.1, 2, "at least 0.15"), (0.95, 19, "at most 0.85")])
def test_a_fraction_too_small_or_too_large_to_stratify_says_which_would_do(fraction, held, bound):
    labels = np.arange(20) % 3  # 20 items of 3 classes: each side needs 3, so 3 to 17 held out
    with pytest.raises(ValueError) as exc:
        stratified_holdout(labels, fraction, seed=0)
    assert str(exc.value) == (f"cannot stratify 20 items of 3 classes with fraction {fraction}: {held} held out and "
                              f"{20 - held} kept, but each side needs one item per class (a fraction of {bound} "
                              "would do)")
    said = float(bound.split()[-1])
    assert stratified_holdout(labels, said, seed=0).sum() == round(said * 20)  # the bound named does stratify


def test_acquisition_refuses_a_symlink_leaving_the_root(tmp_path):
    csv = _dataset(tmp_path, "path,label,split\na/x.mp4,cat,train\nb/z.mp4,dog,test\n")
    frame = build_folder_manifest(csv, splitting=NO_VAL).frame
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"secret")
    (csv.parent / "b" / "z.mp4").unlink()
    (csv.parent / "b" / "z.mp4").symlink_to(outside)  # replaced after the manifest was built
    table = acquire(frame, AcquireConfig(cache_dir=tmp_path / "media"))
    assert table["outcome"].tolist() == ["present", "outside_root"]
    assert table["path"].tolist() == [str(csv.parent.resolve() / "a/x.mp4"), ""]


def test_hand_made_manifest_cannot_read_outside_its_root_without_the_opt_in(tmp_path):
    """An absolute source in a manifest not built with --allow-outside-root is not read; with the opt-in it is."""
    if not Path("/etc/hostname").is_file():
        pytest.skip("no /etc/hostname here")
    csv = _dataset(tmp_path, "path,label,split\na/x.mp4,cat,train\nb/z.mp4,dog,test\n")
    frame = build_folder_manifest(csv, splitting=NO_VAL).frame.assign(source=["a/x.mp4", "/etc/hostname"])
    write_manifest(frame, tmp_path / "m.parquet")  # the schema accepts an absolute source...
    table = acquire(read_manifest(tmp_path / "m.parquet"), AcquireConfig(cache_dir=tmp_path / "media"))
    assert table["outcome"].tolist() == ["present", "outside_root"]  # ...acquisition does not read it
    assert table["message"][1] == (f"/etc/hostname resolves to {Path('/etc/hostname').resolve()}, outside the dataset "
                                   f"root {csv.parent.resolve()} (the manifest was not built with --allow-outside-root)")
    built = build_folder_manifest(csv.parent / "labels.csv", splitting=NO_VAL, allow_outside_root=True)
    built.frame = built.frame.assign(source=["a/x.mp4", "/etc/hostname"])
    write_build(built, tmp_path / "opted.parquet")
    opted = read_manifest(tmp_path / "opted.parquet")
    assert opted.attrs["allow_outside_root"] is True
    table = acquire(opted, AcquireConfig(cache_dir=tmp_path / "media2"))
    assert table["outcome"].tolist() == ["present", "present"] and table["path"][1] == "/etc/hostname"


# --- imports -----------------------------------------------------------------------------------

def _h5(path: Path, *, width_test: int = 3, labels: np.ndarray | None = None, zero_row: int | None = None,
        seconds: int = 2) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for split, n, width in (("train", 9, 3), ("test", 3, width_test)):
            audio = rng.normal(size=(n, seconds, 128))
            if zero_row is not None and split == "train":
                audio[zero_row] = 0.0
            h5[f"audio_{split}"], h5[f"visual_{split}"] = audio, rng.normal(size=(n, seconds, 1024))
            h5[f"lab_{split}"] = np.eye(width)[np.arange(n) % width] if labels is None else labels[:n]
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("not hdf5"), "{h5}: not a readable HDF5 file ("),
    (lambda p: p.write_bytes(_h5(p).read_bytes()[:3000]), "{h5}: "),
    (lambda p: _h5(p, labels=np.array([b"cat"] * 9)), "{h5}: dataset 'lab_train' holds |S3, expected numbers"),
    (lambda p: _h5(p, width_test=4), "{h5}: one-hot label widths differ between splits (lab_train 3, lab_test 4)"),
    (lambda p: _h5(p, zero_row=4), "{h5}: audio_train, row 4 (clip 'train_00004'): every value is 0 "
                                   "(--constant-rows keep imports it)"),
    (lambda p: _h5(p, seconds=0), "{h5}: audio_train has shape (9, 0, 128), expected [N, 128] or [N, T>0, 128]"),
])
def test_bad_feature_files_name_the_input_and_leave_nothing(tmp_path, make, message):
    h5 = tmp_path / "features.h5"
    make(h5)
    with pytest.raises(FeatureImportError) as exc:
        import_single_file(h5, tmp_path / "out", val_fraction=0.0)
    assert str(exc.value).startswith(message.format(h5=h5)) and ".tmp" not in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.h5"]


def test_constant_rows_can_be_kept_and_are_listed(tmp_path, capsys):
    h5 = _h5(tmp_path / "f.h5", zero_row=4)
    import_single_file(h5, tmp_path / "out", val_fraction=0.0, constant_rows="keep")
    assert f"{h5}: audio_train, row 4 (clip 'train_00004'): every value is 0" in capsys.readouterr().err


def _truncated_shard(folder: Path) -> Path:
    from pipeline.features.shards import ClipFeatures, write_shard

    clip = ClipFeatures("c1", "cat", 0, "train", np.ones((2, 4), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3))
    meta = {m: {"extractor": "x", "version": "1", "params": {}, "weights": "random"} for m in ("audio", "visual")}
    shard = write_shard(folder / "shard-00000.parquet", [clip], meta)
    assert check_shards(folder) == [shard]
    shard.write_bytes(shard.read_bytes()[:-40])
    return shard


def test_truncated_shard_is_named(tmp_path, capsys):
    shard = _truncated_shard(tmp_path / "shards")
    with pytest.raises(ShardError, match=f"^{shard}: not a readable Parquet shard, truncated or damaged"):
        check_shards(tmp_path / "shards")
    from flows.train_eval import main  # the CLI says so before Prefect starts, with no run left PENDING

    with pytest.raises(SystemExit) as exit_:
        main(["--features", str(tmp_path / "shards")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"error: {shard}: not a readable Parquet shard") and err.count("\n") == 1
    with pytest.raises(ShardError, match=f"^{tmp_path / 'none'}: no such feature shard folder or file$"):
        check_shards(tmp_path / "none")
    with pytest.raises(ShardError, match=f"^{tmp_path}: no shard files"):
        check_shards(tmp_path)


# --- the command lines, as a user runs them ---------------------------------------------------

def _cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_every_cli_answers_bad_input_with_one_line_and_status_2(tmp_path):
    csv = _dataset(tmp_path, "path,label\n../../etc/passwd,cat\na/x.mp4,\n")
    (tmp_path / "bad.h5").write_text("not hdf5")
    out = tmp_path / "m.parquet"
    runs = {
        "manifest": (_cli("pipeline.datasets.manifest", "folder", "--source", str(csv), "--out", str(out)),
                     f"error: {csv}: 2 problems in 2 rows (line | column | value | problem):"),
        "import": (_cli("pipeline.features.import_features", "single", "--h5", str(tmp_path / "bad.h5"), "--out",
                        str(tmp_path / "shards")), f"error: {tmp_path / 'bad.h5'}: not a readable HDF5 file ("),
        "train": (_cli("flows.train_eval", "--features", str(tmp_path / "none")),
                  f"error: {tmp_path / 'none'}: no such feature shard folder or file"),
        "bounds": (_cli("flows.demo", "--clips", "5", "--out", str(tmp_path / "shards")),
                   "error: demo: clips: Input should be greater than or equal to 20"),
        "debug": (_cli("pipeline.datasets.manifest", "folder", "--source", str(tmp_path / "none.csv"), "--out", str(out),
                       "--debug"), None),
    }
    for name, (run, first_line) in runs.items():
        stdout, stderr = run.communicate(timeout=120)
        if first_line is None:  # --debug: the traceback
            assert run.returncode == 1 and "Traceback" in stderr and stderr.strip().endswith("no such labels CSV or dataset folder")
            continue
        assert run.returncode == 2, (name, stderr)
        assert stderr.splitlines()[0].startswith(first_line), (name, stderr)
        assert "Traceback" not in stderr and stdout == "", (name, stdout, stderr)
        if name != "manifest":
            assert len(stderr.splitlines()) == 1, (name, stderr)
    assert not out.exists() and not (tmp_path / "shards").exists()


def _small_h5(path: Path, *, train: int, classes: int) -> Path:
    """A valid single-file feature set: ``train`` training and 6 test clips of ``classes`` classes (one-hot)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for split, n in (("train", train), ("test", 6)):
            h5[f"audio_{split}"], h5[f"visual_{split}"] = rng.normal(size=(n, 2, 128)), rng.normal(size=(n, 2, 1024))
            h5[f"lab_{split}"] = np.eye(classes)[np.arange(n) % classes]
    return path


def test_bad_flags_and_files_answer_in_one_line_before_prefect_or_torch_load(tmp_path):
    """Each case, run as a user runs it: one ``error:`` line, exit status 2, nothing written, and neither Prefect
    nor torch imported (so it answers in a second or two, before a server or a model starts)."""
    no_weights = {"TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf")}  # empty caches
    out, h5, config = tmp_path / "out", _small_h5(tmp_path / "small.h5", train=20, classes=3), tmp_path / "c.yaml"
    config.write_text('epochs: "many"\n')
    csv = _dataset(tmp_path, 'path,label,split\na/x.mp4,cat,train\na/y.mp4,"cat\nsitting",test\n')
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    cases = {
        # no --weights random and no weight files: named, with the command that fetches them
        ("flows.build_features", "--out", str(out)):
            f"error: weight file vggish-10086976.pth not found (looked in {hub / 'vggish-10086976.pth'}); weight file "
            f"resnet50-0676ba61.pth not found (looked in {hub / 'resnet50-0676ba61.pth'}); get them with "
            "`python -m extractors.weights fetch vggish resnet50` or run with --weights random",
        # pools of no threads and Dask clusters of no workers (the latter waited forever)
        ("flows.build_features", "--weights", "random", "--threads", "0", "--out", str(out)):
            "error: --threads: must be > 0, got 0",
        ("flows.train_eval", "--threads", "-1", "--out", str(out)): "error: --threads: must be > 0, got -1",
        ("flows.tune", "--task-runner", "dask", "--dask-workers", "0", "--out", str(out)):
            "error: --dask-workers: must be > 0, got 0",
        ("flows.train_eval", "--dask-workers", "0", "--print-config"): "error: --dask-workers: must be > 0, got 0",
        # too few training clips for the val fraction: what is too small, and what would do
        ("pipeline.features.import_features", "single", "--h5", str(h5), "--out", str(out)):
            f"error: {h5}: carving val from lab_train: cannot stratify 20 items of 3 classes with fraction 0.1: 2 held "
            "out and 18 kept, but each side needs one item per class (a fraction of at least 0.15 would do); change "
            "--val-fraction (0 for no val)",
        ("flows.train_eval", "--config", str(config), "--out", str(out)):
            f"error: {config}: epochs: Input should be a valid integer, unable to parse string as an integer, got 'many'",
        # the flows' bounds, checked against the types their signatures declare
        ("flows.demo", "--clips", "5", "--out", str(out)): "error: demo: clips: Input should be greater than or equal to 20",
        ("flows.build_features", "--weights", "random", "--demo-clips", "0", "--out", str(out)):
            "error: build-features: demo_clips: Input should be greater than or equal to 1",
        ("flows.build_features", "--weights", "random", "--demo-seconds", "1000", "--out", str(out)):
            "error: build-features: demo.seconds: Input should be less than or equal to 600",
        ("pipeline.datasets.manifest", "folder", "--source", str(csv), "--out", str(out / "m.parquet")):
            f"error: {csv}, line 3: label 'cat\\nsitting': {LINE_BREAK}",
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), **no_weights}
    runs = {args: subprocess.Popen([sys.executable, "-X", "importtime", "-m", *args], cwd=ROOT, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in cases}
    for args, line in cases.items():
        stdout, stderr = runs[args].communicate(timeout=120)
        said = [text for text in stderr.splitlines() if not text.startswith("import time:")]
        imported = {text.rsplit("|", 1)[-1].strip().split(".")[0] for text in stderr.splitlines()
                    if text.startswith("import time:")}
        assert (runs[args].returncode, said, stdout) == (2, [line], ""), args
        assert not imported & {"torch", "prefect"}, args
    assert not out.exists()


@pytest.mark.parametrize("variable", ["TORCH_HOME", "XDG_CACHE_HOME", None])
def test_weights_are_looked_for_where_torch_looks_before_torch_loads(tmp_path, variable):
    """The command lines check weight files without torch; the folder they look in is torch.hub.get_dir()'s."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_HOME", "XDG_CACHE_HOME")}
    env |= {"PYTHONPATH": str(ROOT)} | ({variable: str(tmp_path)} if variable else {})
    code = ("import sys; from extractors.weights import torch_hub_dir; before = torch_hub_dir(); "
            "assert 'torch' not in sys.modules; import torch; print(before, torch.hub.get_dir())")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    expected = {"TORCH_HOME": tmp_path / "hub", "XDG_CACHE_HOME": tmp_path / "torch" / "hub",
                None: Path.home() / ".cache" / "torch" / "hub"}[variable]
    assert done.returncode == 0 and done.stdout.split() == [str(expected)] * 2, done.stderr


@pytest.mark.parametrize("module, args, line", [
    ("flows.build_features", ["--manifest", "{tmp}/none.parquet"], "error: {tmp}/none.parquet: no such manifest file"),
    ("flows.build_features", ["--clips-per-shard", "0"],
     "error: build-features: clips_per_shard: Input should be greater than or equal to 1"),
    ("flows.demo", ["--clips", "0"], "error: demo: clips: Input should be greater than or equal to 20"),
    ("flows.demo", ["--batch-size", "100000"], "error: demo: batch_size: Input should be less than or equal to 65536"),
    ("flows.train_eval", ["--epochs", "0"], "error: command line: epochs: Input should be greater than or equal to 1, got 0"),
    # bounds of the flows' typed signatures (the UI's run forms), checked before a server or run starts
    ("flows.demo", ["--clips", "5", "--seconds", "1000"],
     "error: demo: clips: Input should be greater than or equal to 20; seconds: Input should be less than or equal to 600"),
    ("flows.build_features", ["--demo-seconds", "1000", "--weights", "random"],
     "error: build-features: demo.seconds: Input should be less than or equal to 600"),
    ("flows.train_eval", ["--config", "{tmp}/c.yaml"], "error: {tmp}/c.yaml: val_fraction: Input should be greater than 0, got 0"),
])
def test_flow_mains_check_before_starting_prefect(tmp_path, capsys, module, args, line):
    (tmp_path / "c.yaml").write_text("val_fraction: 0\n")
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as exit_:
        main([a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and capsys.readouterr().err == line.format(tmp=tmp_path) + "\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module, args", [
    ("flows.demo", ["--clip", "50"]),  # not read as --clips 50
    ("flows.train_eval", ["--seed", "1"]),
    ("flows.build_features", ["--demo-clip", "5"]),
    ("flows.embed", ["--run", "r", "--features", "f", "--out", "o", "--posthoc"]),
    ("pipeline.datasets.manifest", ["folder", "--sour", "x.csv", "--out", "m.parquet"]),
    ("pipeline.features.import_features", ["single", "--h5", "x.h5", "--ou", "o"]),
    ("hscmae.search", ["--ind", "i"]),
])
def test_abbreviated_flags_are_refused_not_guessed(capsys, module, args):
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err  # argparse refuses the short form (had it guessed, the inputs would be checked)
    assert exit_.value.code == 2 and ("unrecognized arguments" in err or "the following arguments are required" in err)


def test_user_errors_are_value_errors():
    assert issubclass(ManifestError, UserError) and issubclass(UserError, ValueError)
    assert issubclass(FeatureImportError, UserError) and issubclass(ShardError, UserError)


def test_written_manifest_keeps_its_root_and_refuses_escapes(tmp_path):
    csv = _dataset(tmp_path, "path,label,split\na/x.mp4,cat,train\nb/z.mp4,dog,test\n")
    frame = build_folder_manifest(csv, splitting=NO_VAL).frame
    write_manifest(frame, tmp_path / "m.parquet")
    assert pd.read_parquet(tmp_path / "m.parquet").attrs["root"] == str(csv.parent.resolve())
    with pytest.raises(ManifestError, match=r"row 1 \(clip_id 'b.z'\): source '../z.mp4': relative file source leaves"):
        write_manifest(frame.assign(source=["a/x.mp4", "../z.mp4"]), tmp_path / "n.parquet")


def test_source_index_hashes_a_file_once_until_it_changes(tmp_path, monkeypatch):
    import hashlib

    from pipeline.media import source_index

    calls: list[Path] = []
    real = source_index.sha256_file
    monkeypatch.setattr(source_index, "sha256_file", lambda p: calls.append(p) or real(p))
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"one")
    first = source_index.SourceIndex(tmp_path / "sources.json")
    assert first.digest(clip) == hashlib.sha256(b"one").hexdigest()
    first.save()
    again = source_index.SourceIndex(tmp_path / "sources.json")  # a re-run: read from the index
    assert again.digest(clip) == hashlib.sha256(b"one").hexdigest() and len(calls) == 1
    clip.write_bytes(b"fixed")  # size and mtime change: hashed again
    assert again.digest(clip) == hashlib.sha256(b"fixed").hexdigest() and len(calls) == 2
    assert again.digest(tmp_path / "gone.mp4") == source_index.MISSING


def test_source_index_digests_each_zip_member_so_a_changed_zip_changes_only_its_changed_members(tmp_path, monkeypatch):
    import hashlib
    import zipfile

    from pipeline.media import source_index

    bundle = tmp_path / "clips.zip"
    with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("AVE/a.mp4", b"one" * 1000)
        z.writestr("AVE/b.mp4", b"two")
    index = source_index.SourceIndex(tmp_path / "sources.json")
    assert index.digest(bundle, "AVE/a.mp4") == hashlib.sha256(b"one" * 1000).hexdigest()  # decompressed bytes
    assert index.digest(bundle, "AVE/gone.mp4") == source_index.MISSING
    before = {m: index.digest(bundle, m) for m in ("AVE/a.mp4", "AVE/b.mp4")}
    index.save()
    with zipfile.ZipFile(bundle, "w") as z:  # rewritten: b replaced, c added, a the same bytes
        z.writestr("AVE/a.mp4", b"one" * 1000)
        z.writestr("AVE/b.mp4", b"fixed")
        z.writestr("AVE/c.mp4", b"new")
    again = source_index.SourceIndex(tmp_path / "sources.json")
    assert again.digest(bundle, "AVE/a.mp4") == before["AVE/a.mp4"]
    assert again.digest(bundle, "AVE/b.mp4") == hashlib.sha256(b"fixed").hexdigest() != before["AVE/b.mp4"]
    assert again.digest(bundle, "AVE/c.mp4") == hashlib.sha256(b"new").hexdigest()
    reads: list[Path] = []
    real = source_index._member_digests
    monkeypatch.setattr(source_index, "_member_digests", lambda p: reads.append(p) or real(p))
    not_zip = tmp_path / "broken.zip"
    not_zip.write_bytes(b"not a zip")  # keyed by its bytes for every member, read once per change
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(damaged, "w") as z:  # stored: flipping a byte of the data breaks its CRC
        z.writestr("AVE/a.mp4", b"x" * 100)
    damaged.write_bytes(damaged.read_bytes().replace(b"x" * 100, b"x" * 99 + b"y"))
    for bundle_ in (not_zip, damaged):
        whole = hashlib.sha256(bundle_.read_bytes()).hexdigest()
        assert [again.digest(bundle_, m) for m in ("AVE/a.mp4", "AVE/b.mp4")] == [whole, whole]
    assert reads == [not_zip, damaged]
