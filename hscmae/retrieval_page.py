"""``retrieval.html``: what the test numbers of a run mean, as retrieved clips and a map of the embeddings.

For a fixed sample of test queries (seeded, the same for every run of the same data) in each
direction, the page shows the query beside its top :data:`TOP` test clips of the other modality,
each marked relevant (same label) or not, and the query's average precision: the very numbers the
evaluation averages into mAP (whole test gallery, own pair included). Video sources get a frame
thumbnail (the middle of the annotated event when there is one) and an audio player (files in
``<run>/retrieval/``); imported or generated features show the clip id. Below, a 2-D map of the test
embeddings coloured by class (UMAP when installed, else PCA): audio, visual, and both in one space
(``<run>/plots/embedding_map.png``). The page uses relative links only, so it opens from disk and
through any file server of the run folder.

The model shown is ``hscmae`` when the run has it (else the first method), with the run's first seed.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from hscmae.checkpoint import checkpoint_dir
from hscmae.config import MethodConfig
from hscmae.data import ClipArrays
from hscmae.embeddings import load_embedder
from hscmae.metrics import retrieval_metrics
from hscmae.search import Index, unit_rows
from pipeline.io.atomic import atomic_path
from pipeline.features.shards import shard_paths
from pipeline.vocab import DIRECTIONS

PAGE = "retrieval.html"
MEDIA_DIR = "retrieval"
MAP_PLOT = "plots/embedding_map.png"
TOP = 5
QUERIES = 6
SAMPLE_SEED = 0
MAP_POINTS = 2000  # at most this many test clips in the 2-D map (a seeded sample)


def label_names(shards: str | Path) -> dict[str, str]:
    """``clip_id -> label`` of every clip in the feature shards (reads two columns only)."""
    names: dict[str, str] = {}
    for path in shard_paths(shards):
        table = pq.read_table(path, columns=["clip_id", "label"])
        names.update(zip(table.column("clip_id").to_pylist(), table.column("label").to_pylist()))
    return names


def media_sources(shards: str | Path) -> dict[str, tuple[str, float, float, float]]:
    """``clip_id -> (file, clip start, clip end, thumbnail time)`` from the manifest beside a build-features shard folder.

    Times are seconds in the file; the thumbnail time is the middle of the annotated event (NaN without one).

    Empty for generated or imported features, and for sources that are not local files.
    """
    from pipeline.datasets.schema import manifest_root, read_manifest

    manifest = Path(shards).parent / "manifest.parquet"
    if not Path(shards).is_dir() or not manifest.is_file():
        return {}
    frame = read_manifest(manifest)
    root = manifest_root(frame)
    found = {}
    for row in frame[frame["source_kind"] == "file"].itertuples():
        path = Path(row.source)
        if not path.is_absolute():  # relative to the dataset root, and confined to it
            if root is None or not (root / path).resolve().is_relative_to(root.resolve()):
                continue
            path = root / path
        if path.is_file():
            event = row.clip_start_s + (row.event_start_s + row.event_end_s) / 2
            found[row.clip_id] = (str(path), float(row.clip_start_s), float(row.clip_end_s), float(event))
    return found


def embedding_map(audio: np.ndarray, visual: np.ndarray, labels: Sequence[str], path: Path, title: str) -> str:
    """Plot the 2-D map (three panels) of ``audio, visual: [N, L]`` coloured by ``labels``; returns the method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        from umap import UMAP

        def reduce(x: np.ndarray) -> np.ndarray:
            return UMAP(n_components=2, random_state=SAMPLE_SEED).fit_transform(x)
        method = "UMAP"
    except ImportError:
        from sklearn.decomposition import PCA

        def reduce(x: np.ndarray) -> np.ndarray:
            return PCA(n_components=2, random_state=SAMPLE_SEED).fit_transform(x)
        method = "PCA"
    a, v = unit_rows(audio, "audio"), unit_rows(visual, "visual")
    labels = np.asarray(labels, dtype=object)
    classes = sorted(set(labels))
    colours = matplotlib.colormaps["tab20" if len(classes) > 10 else "tab10"]
    joint = reduce(np.concatenate([a, v]))
    panels = [("audio", [(reduce(a), "o")]), ("visual", [(reduce(v), "^")]),
              ("audio (o) and visual (^), one space", [(joint[:len(a)], "o"), (joint[len(a):], "^")])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    for ax, (name, layers) in zip(axes, panels):
        for points, marker in layers:
            for i, c in enumerate(classes):
                at = labels == c
                ax.scatter(points[at, 0], points[at, 1], s=10, marker=marker, color=colours(i % colours.N),
                           label=c if marker == "o" or name == "visual" else None, alpha=0.7)
        ax.set_title(f"{name} ({method})")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7, markerscale=1.5, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return method


def _clip_cell(clip_id: str, label: str, media: dict[str, Any], extra: str = "") -> str:
    """One clip's cell: thumbnail and player when a preview exists, else its id; then its label."""
    found = media.get(clip_id)
    body = f"<code>{html.escape(clip_id)}</code>"
    if isinstance(found, tuple):
        thumb, sound = found
        body = (f'<img src="{html.escape(thumb)}" alt="{html.escape(clip_id)}"><br>'
                f'<audio controls preload="none" src="{html.escape(sound)}"></audio><br>{body}')
    elif isinstance(found, str):
        body += f'<br><small title="{html.escape(found)}">(no preview)</small>'
    return f"<td{extra}>{body}<br>{html.escape(str(label))}</td>"


def _previews(run_dir: Path, clip_ids: set[str], sources: dict[str, tuple[str, float, float, float]]
              ) -> dict[str, Any]:
    """``clip_id -> (thumbnail, audio)`` relative paths, or the reason there is none."""
    from pipeline.media.preview import try_preview

    shutil.rmtree(run_dir / MEDIA_DIR, ignore_errors=True)  # an earlier page's previews
    out: dict[str, Any] = {}
    for clip_id in sorted(clip_ids & set(sources)):
        source, start, end, event = sources[clip_id]
        made = try_preview(source, start, end, run_dir / MEDIA_DIR, clip_id, frame_s=event)
        out[clip_id] = made if isinstance(made, str) else (
            f"{MEDIA_DIR}/{made.thumbnail.name}", f"{MEDIA_DIR}/{made.audio.name}")
    return out


def shown_run(runs: Sequence[tuple[str, int]]) -> tuple[str, int]:
    """The ``(method, seed)`` the page shows among a run's ``(method, seed)`` pairs: ``hscmae`` when the run
    has it, else the first method, with its lowest seed."""
    methods = [m for m, _ in runs]
    method = "hscmae" if "hscmae" in methods else methods[0]
    return method, min(s for m, s in runs if m == method)


def write_retrieval_page(run_dir: str | Path, test: ClipArrays, info: dict[str, Any], *, method: MethodConfig,
                         seed: int) -> Path:
    """Write ``run_dir/retrieval.html`` (and its thumbnails, sounds and map) for a finished experiment.

    Args:
        test: the test clips shown; info: what the tables say about the data (``hscmae.report.data_info``):
            the shards named in ``info["source"]`` give label names and, for videos, the manifest.
        method, seed: the resolved config and seed of the run shown (see :func:`shown_run`); its selected
            model is read from ``run_dir``'s checkpoints.
    """
    run_dir = Path(run_dir)
    embedder = load_embedder(method, checkpoint_dir(run_dir, method.name, seed), test.dims, seed=seed)
    audio, visual = embedder.embed(test)
    shards = info["source"]  # the feature shards the data came from
    names = label_names(shards)
    ids = np.asarray(test.clip_id, dtype=object)
    labels = np.array([names.get(c, str(i)) for c, i in zip(ids, test.label_id)], dtype=object)
    index = Index(clip_id=ids, label=labels, split=np.full(len(ids), "test", dtype=object), audio=audio, visual=visual)
    rng = np.random.default_rng(SAMPLE_SEED)
    rows = np.sort(rng.choice(len(ids), size=min(QUERIES, len(ids)), replace=False))
    k = min(TOP, len(ids))
    found = {}
    for direction, (query_m, gallery_m) in DIRECTIONS.items():
        result = index.search(index.vectors(query_m)[rows], k, direction)
        ap = retrieval_metrics(index.vectors(query_m)[rows], index.vectors(gallery_m), test.label_id[rows],
                               test.label_id, ks=(), recall_levels=[0.0]).average_precision
        found[direction] = (result, ap)
    wanted = set(ids[rows]) | {ids[i] for r, _ in found.values() for i in r.index.reshape(-1)}
    media = _previews(run_dir, {str(c) for c in wanted}, media_sources(shards))
    sample = np.sort(rng.choice(len(ids), size=min(MAP_POINTS, len(ids)), replace=False))
    title = f"test embeddings of {method.name} seed {seed} ({len(sample)} of {len(ids)} clips)"
    reducer = embedding_map(audio[sample], visual[sample], labels[sample], run_dir / MAP_PLOT, title)
    page = _html(method.name, seed, info, found, index, rows, media, reducer)
    with atomic_path(run_dir / PAGE) as tmp:
        tmp.write_text(page)
    return run_dir / PAGE


def _html(method: str, seed: int, info: dict[str, Any], found: dict[str, Any], index: Index, rows: np.ndarray,
          media: dict[str, Any], reducer: str) -> str:
    words = {"a2v": ("sound", "clips that look like it"), "v2a": ("picture", "clips that sound like it")}
    parts = [f"<h1>Retrieval: {html.escape(method)}, seed {seed}</h1>",
             f"<p>Data: {html.escape(str(info.get('dataset')))}, test split ({len(index)} clips); "
             f"features: {html.escape(str(info.get('weights')))}. Relevant = same label as the query "
             f"(<span class=rel>green</span>), else <span class=irr>red</span>. AP: the query's average precision "
             f"over the whole test gallery, as in the mAP of <a href=\"results.md\">results.md</a>.</p>"]
    if info.get("random_weights") or info.get("synthetic"):
        parts.append("<p><b>The features come from random extractor weights or are generated: these retrievals "
                     "show that the path works, not how well the method does on real data.</b></p>")
    for direction, (result, ap) in found.items():
        query_m, gallery_m = DIRECTIONS[direction]
        what, wanted = words[direction]
        parts.append(f"<h2>{query_m} → {gallery_m}: a clip's {what}, and the {wanted}</h2><table>"
                     f"<tr><th>query ({query_m})</th><th>AP</th>"
                     + "".join(f"<th>#{i + 1}</th>" for i in range(result.index.shape[1])) + "</tr>")
        for row, hits, scores, value in zip(rows, result.index, result.score, ap):
            cells = [_clip_cell(index.clip_id[row], index.label[row], media, " class=query"),
                     f"<td class=ap>{value:.3f}</td>"]
            for hit, score in zip(hits, scores):
                relevant = index.label[hit] == index.label[row]
                cells.append(_clip_cell(index.clip_id[hit], f"{index.label[hit]} · {score:.3f}", media,
                                        " class=rel" if relevant else " class=irr"))
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append(f"<h2>Map of the test embeddings ({reducer})</h2><img class=map src=\"{MAP_PLOT}\" "
                 "alt=\"2-D map of the test embeddings\">")
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:2em}"
             "td,th{border:1px solid #ccc;padding:4px;text-align:center;font-size:12px;vertical-align:top}"
             "td.rel,.rel{background:#e3f6e3}td.irr,.irr{background:#fbe4e4}td.query{background:#eef}"
             "audio{width:120px}img.map{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Retrieval: {html.escape(method)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
