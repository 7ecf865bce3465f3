"""Training: learning, determinism, resume, early stopping, non-finite and dead terms, schedules, clip-level
input, the degenerate-batch warning."""

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hscmae.config import MethodConfig, ModelConfig, TrainConfig, methods
from hscmae.data import ClipArrays
from hscmae.engine import check_alive, check_finite
from hscmae.inference import embed
from hscmae.schedules import ema_momentum, ema_update, lr_factor
from hscmae.train import fit, stops, warn_degenerate_cca


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clips(n: int, seed: int) -> ClipArrays:
    """Audio and visual seconds are noisy linear images of one shared per-clip latent (3 seconds each)."""
    rng = np.random.default_rng(seed)
    maps = np.random.default_rng(99)
    wa, wv = maps.normal(size=(4, 12)), maps.normal(size=(4, 20))
    z = rng.normal(size=(n, 1, 4))
    audio = z @ wa + 0.3 * rng.normal(size=(n, 3, 12))
    visual = np.tanh(z @ wv) + 0.3 * rng.normal(size=(n, 3, 20))
    valid = np.ones((n, 3), dtype=bool)
    return ClipArrays(audio=audio.astype(np.float32), visual=visual.astype(np.float32), audio_valid=valid,
                      visual_valid=valid.copy(), label_id=np.zeros(n, dtype=np.int64))


TRAIN, VAL = _clips(256, 0), _clips(96, 1)


def recall_at_1(audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> float:
    """Share of audio clips whose nearest visual clip (cosine) is their own pair."""
    a = audio / np.linalg.norm(audio, axis=1, keepdims=True)
    v = visual / np.linalg.norm(visual, axis=1, keepdims=True)
    return float(((a @ v.T).argmax(1) == np.arange(len(a))).mean())


def _small(name: str, epochs: int = 4, patience: int = 100, **loss_changes) -> MethodConfig:
    method = methods()[name]
    return dataclasses.replace(
        method, model=ModelConfig(hidden=32, depth=1, latent=8, dropout=0.1),
        loss=dataclasses.replace(method.loss, weight_warmup_epochs=1, **loss_changes),
        train=TrainConfig(batch_size=64, epochs=epochs, patience=patience, warmup_epochs=1, lr=3e-3, device="cpu"),
    )


class Scripted:
    """A scorer that returns ``scores`` in turn (from ``start``) and keeps the val embeddings it was shown;
    it raises ``KeyboardInterrupt`` at call ``crash`` (a killed run)."""

    def __init__(self, scores: list[float], *, start: int = 0, crash: int | None = None) -> None:
        self.scores, self.calls, self.crash, self.seen = scores, start, crash, []

    def __call__(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> float:
        self.calls += 1
        if self.calls == self.crash:
            raise KeyboardInterrupt(f"simulated crash during epoch {self.calls}")
        self.seen.append((audio.copy(), visual.copy()))
        return self.scores[self.calls - 1]


SCRIPT = [0.1, 0.5, 0.4, 0.45, 0.3, 0.6, 0.2]  # best at epoch 2, then three epochs without a better score


def _drop_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("name", ["hscmae", "dcca", "clip", "cav-mae"])
def test_training_beats_the_untrained_model(name):
    method = _small(name, epochs=12)
    untrained = fit(dataclasses.replace(method, train=dataclasses.replace(method.train, lr=1e-12, epochs=1)),
                    TRAIN, VAL, seed=0, scorer=recall_at_1, progress=False)
    result = fit(method, TRAIN, VAL, seed=0, scorer=recall_at_1, progress=False)
    before = recall_at_1(*embed(untrained.model, VAL), VAL.label_id)
    after = recall_at_1(*embed(result.model, VAL), VAL.label_id)
    assert after > before + 0.2 and after > 0.4, (before, after)
    best = result.history[result.best_epoch - 1]["val_score"]
    assert after == pytest.approx(best) and best == result.val_score == max(h["val_score"] for h in result.history)
    assert [h["epoch"] for h in result.history] == list(range(1, 13)) and result.stopped_epoch == 12
    assert set(result.history[0]) >= set(method.loss.active) | {"total", "weights", "val_score", "seconds"}


def test_same_seed_gives_identical_history_and_embeddings():
    method = _small("hscmae+distill", epochs=2)
    runs = [fit(method, TRAIN, VAL, seed=3, scorer=recall_at_1, progress=False) for _ in range(2)]
    assert _drop_seconds(runs[0].history) == _drop_seconds(runs[1].history)
    for x, y in zip(embed(runs[0].model, VAL), embed(runs[1].model, VAL)):
        np.testing.assert_array_equal(x, y)
    other = fit(method, TRAIN, VAL, seed=4, scorer=recall_at_1, progress=False)
    assert _drop_seconds(other.history) != _drop_seconds(runs[0].history)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    method = _small("hscmae", epochs=4, mask_mode="time")
    straight = fit(method, TRAIN, VAL, seed=1, scorer=recall_at_1, checkpoint_dir=tmp_path / "a", progress=False)
    calls = []

    def crashing_scorer(a, v, labels):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash during epoch 2")
        return recall_at_1(a, v, labels)

    with pytest.raises(KeyboardInterrupt):
        fit(method, TRAIN, VAL, seed=1, scorer=crashing_scorer, checkpoint_dir=tmp_path / "b", progress=False)
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if p.is_dir()) == ["epoch_0002"]
    resumed = fit(method, TRAIN, VAL, seed=1, scorer=recall_at_1, checkpoint_dir=tmp_path / "b", progress=False)
    assert _drop_seconds(resumed.history) == _drop_seconds(straight.history)
    assert resumed.best_epoch == straight.best_epoch
    for key in ("last.json", "best.safetensors"):
        assert (tmp_path / "b" / key).exists()
    final_a = load_file(str(tmp_path / "a" / "epoch_0004" / "student.safetensors"))
    final_b = load_file(str(tmp_path / "b" / "epoch_0004" / "student.safetensors"))
    teacher_a = load_file(str(tmp_path / "a" / "epoch_0004" / "teacher.safetensors"))
    teacher_b = load_file(str(tmp_path / "b" / "epoch_0004" / "teacher.safetensors"))
    for k in final_a:
        assert torch.equal(final_a[k], final_b[k]), k
    for k in teacher_a:
        assert torch.equal(teacher_a[k], teacher_b[k]), k
    best = load_file(str(tmp_path / "b" / "best.safetensors"))
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(best[k], v), k


def test_stopping_rule_counts_epochs_without_a_better_score():
    train = TrainConfig(epochs=10, patience=3)
    assert not stops(train, epoch=0, best_epoch=0)  # nothing trained yet
    assert not stops(train, epoch=4, best_epoch=2) and stops(train, epoch=5, best_epoch=2)
    assert stops(train, epoch=10, best_epoch=10)  # the budget is spent
    assert not any(stops(TrainConfig(epochs=10, patience=10), epoch=e, best_epoch=1) for e in range(1, 10))


def test_early_stopping_cuts_the_run_it_does_not_change():
    """Patience 3 stops after epoch 5 (best at 2); its epochs are those of the full run, and the model it keeps
    is the full run's epoch 2. Patience >= epochs is the run without early stopping."""
    method = _small("hscmae", epochs=7)
    full = fit(method, TRAIN, VAL, seed=2, scorer=(seen := Scripted(SCRIPT)), progress=False)
    assert (len(full.history), full.best_epoch, full.stopped_epoch) == (7, 6, 7)
    assert [h["best_epoch"] for h in full.history] == [1, 2, 2, 2, 2, 6, 6]
    same = fit(dataclasses.replace(method, train=dataclasses.replace(method.train, patience=7)), TRAIN, VAL, seed=2,
               scorer=Scripted(SCRIPT), progress=False)
    assert _drop_seconds(same.history) == _drop_seconds(full.history) and same.best_epoch == full.best_epoch
    stopped = fit(dataclasses.replace(method, train=dataclasses.replace(method.train, patience=3)), TRAIN, VAL, seed=2,
                  scorer=Scripted(SCRIPT), progress=False)
    assert (stopped.best_epoch, stopped.stopped_epoch, stopped.val_score) == (2, 5, 0.5)
    assert _drop_seconds(stopped.history) == _drop_seconds(full.history[:5])
    for kept, at_epoch_2 in zip(embed(stopped.model, VAL), seen.seen[1]):
        np.testing.assert_array_equal(kept, at_epoch_2)


def test_a_resumed_run_keeps_counting_its_patience(tmp_path):
    method = _small("hscmae", epochs=7, patience=3)
    straight = fit(method, TRAIN, VAL, seed=2, scorer=Scripted(SCRIPT), checkpoint_dir=tmp_path / "a", progress=False)
    with pytest.raises(KeyboardInterrupt):  # killed during epoch 4: epochs 1-3 are checkpointed, best at 2
        fit(method, TRAIN, VAL, seed=2, scorer=Scripted(SCRIPT, crash=4), checkpoint_dir=tmp_path / "b",
            progress=False)
    resumed = fit(method, TRAIN, VAL, seed=2, scorer=Scripted(SCRIPT, start=3), checkpoint_dir=tmp_path / "b",
                  progress=False)
    assert (resumed.best_epoch, resumed.stopped_epoch) == (straight.best_epoch, straight.stopped_epoch) == (2, 5)
    assert _drop_seconds(resumed.history) == _drop_seconds(straight.history)
    again = fit(method, TRAIN, VAL, seed=2, scorer=Scripted([], crash=1), checkpoint_dir=tmp_path / "b",
                progress=False)  # a run that stopped early is done: resuming trains and scores nothing
    assert again.stopped_epoch == 5 and _drop_seconds(again.history) == _drop_seconds(straight.history)
    for x, y in zip(embed(again.model, VAL), embed(straight.model, VAL)):
        np.testing.assert_array_equal(x, y)


def test_resume_refuses_a_different_config(tmp_path):
    fit(_small("clip", epochs=1), TRAIN, VAL, seed=0, scorer=recall_at_1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"different \['method'\]"):
        fit(_small("dcca", epochs=1), TRAIN, VAL, seed=0, scorer=recall_at_1, checkpoint_dir=tmp_path, progress=False)


def test_non_finite_loss_term_stops_with_its_name_and_step():
    terms = {"global": torch.tensor(-0.5, dtype=torch.float64), "local": torch.tensor(float("nan")),
             "gradient norm": torch.tensor(float("inf"))}
    with pytest.raises(FloatingPointError, match=r"^hscmae: local is nan at epoch 1, step 6; training stopped$"):
        check_finite(terms, method="hscmae", epoch=1, step=6)
    check_finite({"global": torch.tensor(-0.5), "total loss": torch.tensor(2.0)}, method="hscmae", epoch=0, step=0)


def test_a_term_that_is_zero_at_every_step_stops_training():
    with pytest.raises(ValueError, match=r"^hscmae: the recon term is 0 at every step of epoch 2 \(no entry of any "
                                         r"clip was masked\), so it trains nothing; training stopped$"):
        check_alive({"global": 0, "local": 0, "recon": 3}, 3, method="hscmae", epoch=2)
    check_alive({"global": 0, "recon": 2}, 3, method="hscmae", epoch=2)  # zero at some steps only: alive


def _one_second(clips: ClipArrays) -> ClipArrays:
    """The clips as clip-level features: one pooled vector each (``T = 1``), as the authors' published files."""
    pooled = {m: x[:, None, :] for m, x in zip(("audio", "visual"), clips.pooled())}
    valid = np.ones((len(clips), 1), dtype=bool)
    return ClipArrays(audio=pooled["audio"], visual=pooled["visual"], audio_valid=valid, visual_valid=valid.copy(),
                      label_id=clips.label_id)


def test_clip_level_input_masks_entries_and_keeps_reconstruction_alive():
    """One second per clip: time masking would drop nothing, the reconstruction term would be 0 and its learned
    log-variance would fall every step; auto masking zeroes entries instead, and the term lives."""
    train, val = _one_second(TRAIN), _one_second(VAL)
    assert train.clip_level_modalities == ("audio", "visual")
    result = fit(_small("hscmae", epochs=6), train, val, seed=0, scorer=recall_at_1, progress=False)
    recon = [h["recon"] for h in result.history]
    weights = [h["weights"]["recon"] for h in result.history]
    assert all(value > 0.05 for value in recon), recon  # standardised inputs: a masked entry's error is O(1)
    assert all(np.isfinite(w) and 0.2 < w < 5.0 for w in weights), weights
    # the same run as explicit element masking (what auto resolves to), not as the time masking it replaces
    element = fit(_small("hscmae", epochs=6, mask_mode="element"), train, val, seed=0, scorer=recall_at_1,
                  progress=False)
    assert _drop_seconds(element.history) == _drop_seconds(result.history)
    with pytest.raises(ValueError, match=r"^hscmae: mask_mode 'time' at mask_ratio 0.3 drops no second of any "
                                         r"training clip's audio or visual \(longest clip: audio 1, visual 1 s\): "
                                         r"the student would see audio or visual unmasked, and the masked "
                                         r"reconstruction of audio or visual 0 at every step; use mask_mode "
                                         r"'auto' or 'element'"):
        fit(_small("hscmae", mask_mode="time"), train, val, seed=0, scorer=recall_at_1, progress=False)
    with pytest.raises(ValueError, match=r"at mask_ratio 0.1 drops no second of any training clip's audio or "
                                         r"visual \(longest clip: audio 3, visual 3 s\)"):  # round(0.3) = 0 of 3
        fit(_small("hscmae-no-recon-decoder", mask_mode="time", mask_ratio=0.1), TRAIN, VAL, seed=0,
            scorer=recall_at_1, progress=False)


def test_exploding_training_stops_instead_of_going_on():
    method = _small("cav-mae", epochs=3)
    method = dataclasses.replace(method, train=dataclasses.replace(method.train, lr=1e18, grad_clip=1e30))
    with pytest.raises(FloatingPointError, match=r"cav-mae: .* is (nan|inf|-inf) at epoch \d, step \d"):
        fit(method, TRAIN, VAL, seed=0, scorer=recall_at_1, progress=False)


def test_non_finite_input_is_rejected_naming_the_clip():
    bad = TRAIN.subset(np.arange(len(TRAIN)))
    bad.audio[17, 1, 3] = np.nan
    with pytest.raises(ValueError, match=r"train: audio of clip row 17 is not finite"):
        fit(_small("dcca"), bad, VAL, seed=0, scorer=recall_at_1, progress=False)


def test_weights_stay_fixed_during_warmup_then_learn():
    result = fit(_small("hscmae", epochs=3), TRAIN, VAL, seed=0, scorer=recall_at_1, progress=False)
    assert result.history[0]["weights"] == {"global": 1.0, "local": 1.0, "recon": 1.0}
    assert all(w != 1.0 for w in result.history[2]["weights"].values())
    fixed = fit(_small("hscmae-fixed-weights", epochs=2), TRAIN, VAL, seed=0, scorer=recall_at_1, progress=False)
    assert fixed.history[1]["weights"] == {"global": 1.0, "local": 1.0, "recon": 1.0}
    h = fixed.history[1]
    assert h["total"] == pytest.approx(h["global"] + h["local"] + h["recon"], rel=1e-5)


def test_schedules_and_ema_update():
    assert lr_factor(0, warmup_steps=4, total_steps=20) == pytest.approx(0.25)
    assert lr_factor(4, warmup_steps=4, total_steps=20) == pytest.approx(1.0)
    assert lr_factor(12, warmup_steps=4, total_steps=20) == pytest.approx(0.5)
    assert ema_momentum(0, total_steps=10, start=0.95, end=0.999) == pytest.approx(0.95)
    assert ema_momentum(5, total_steps=10, start=0.95, end=0.999) == pytest.approx((0.95 + 0.999) / 2)
    assert ema_momentum(10, total_steps=10, start=0.95, end=0.999) == pytest.approx(0.999)
    teacher, student = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    expected_bias = 0.9 * float(teacher.bias.detach()) + 0.1 * float(student.bias.detach())
    with torch.no_grad():
        teacher.weight.fill_(1.0), student.weight.fill_(3.0)
    ema_update(teacher, student, 0.9)
    assert teacher.weight.detach().flatten().tolist() == pytest.approx([0.9 * 1.0 + 0.1 * 3.0] * 2)
    assert float(teacher.bias.detach()) == pytest.approx(expected_bias)


@pytest.mark.parametrize("name, batch, hurt", [
    ("dcca", 16, "the global term"), ("dcca", 17, None), ("clip", 8, None),
    ("hscmae-no-global", 16, "the teacher's canonical space"),
    ("hscmae", 16, "the global term and the teacher's canonical space")])
def test_degenerate_batch_cca_is_named(name, batch, hurt, recwarn):
    """Latent 8: a batch of 16 leaves one correlation at 1 for any data (2*8 - 15), 17 none; clip has no batch CCA."""
    warn_degenerate_cca(_small(name, epochs=1), batch)
    found = [str(w.message) for w in recwarn if "CCA within batches" in str(w.message)]
    assert found == ([f"{name}: CCA within batches of {batch} clips of 8-d latents is degenerate: 1 canonical "
                      f"correlations are 1 for any data, so {hurt} {'hold' if ' and ' in hurt else 'holds'} chance correlation, not signal "
                      f"(use batches of more than 16 clips)"] if hurt else [])
