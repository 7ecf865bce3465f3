"""Clip arrays, masking and the student model against numpy references."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import scipy.special
import torch

from hscmae import losses
from hscmae.config import LOSS_TERMS, MODEL_PRESETS, LossConfig, MethodConfig, ModelConfig, methods
from hscmae.data import ClipArrays
from hscmae.inference import embed
from hscmae.model import HSCMAE, Dropout, mask_elements, mask_seconds, teacher_space
from pipeline.features.shards import FeatureSet


def _feature_set(seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    lengths = [(3, 2), (1, 4), (5, 5), (2, 1)]
    return FeatureSet(
        clip_id=np.array([f"c{i}" for i in range(4)], dtype=object),
        label=np.array(["x", "y", "x", "y"], dtype=object),
        label_id=np.array([0, 1, 0, 1], dtype=np.int64),
        split=np.array(["train"] * 4, dtype=object),
        audio=[rng.normal(size=(ta, 6)).astype(np.float32) for ta, _ in lengths],
        visual=[rng.normal(size=(tv, 9)).astype(np.float32) for _, tv in lengths],
    )


def test_clip_arrays_pool_like_feature_set_and_subset():
    fs = _feature_set()
    arrays = ClipArrays.from_feature_set(fs)
    assert arrays.audio.shape == (4, 5, 6) and arrays.visual_valid.sum(1).tolist() == [2, 4, 5, 1]
    for got, ref in zip(arrays.pooled(), fs.pooled()):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    sub = arrays.subset(np.array([False, True, False, True]))
    np.testing.assert_allclose(sub.pooled()[1], fs.subset(np.array([1, 3])).pooled()[1], atol=1e-6)
    assert sub.clip_id.tolist() == ["c1", "c3"] and len(sub) == 2


def test_clip_arrays_errors_name_the_clip():
    arrays = ClipArrays.from_feature_set(_feature_set())
    arrays.visual[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"train: visual of clip row 2 \(c2\) is not finite \(second 3\)"):
        arrays.check_finite("train")
    arrays.visual[2, 3, 1] = 0.0
    arrays.audio[1, 4, 0] = np.inf  # padding is not checked
    arrays.check_finite("train")
    valid = arrays.audio_valid.copy()
    valid[3] = False
    with pytest.raises(ValueError, match=r"audio: clip row 3 \(c3\) has no valid second"):
        ClipArrays(audio=arrays.audio, visual=arrays.visual, audio_valid=valid,
                   visual_valid=arrays.visual_valid, label_id=arrays.label_id, clip_id=arrays.clip_id)


def test_mask_elements_zeroes_a_ratio_of_entries_and_rescales_the_rest():
    x = torch.arange(1, 20001, dtype=torch.float32).reshape(20, 1000)
    masked, mask = mask_elements(x, ratio=0.3, generator=torch.Generator().manual_seed(0))
    assert abs(float(mask.float().mean()) - 0.3) < 0.01  # 20,000 Bernoulli(0.3) draws: sd 0.0032
    assert torch.equal(masked[mask], torch.zeros(int(mask.sum())))
    torch.testing.assert_close(masked[~mask], x[~mask] / 0.7)  # inverted dropout: E[masked] = x
    assert abs(float(masked.mean() / x.mean()) - 1.0) < 0.02
    _, again = mask_elements(x, ratio=0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    assert not torch.equal(mask[0], mask[1])


def test_dropout_zeroes_a_share_p_scales_the_rest_and_backpropagates_through_the_mask():
    torch.manual_seed(0)
    p, n = 0.2, 200_000
    x = torch.full((n,), 3.0, requires_grad=True)
    drop = Dropout(p)
    y = drop(x)
    zeroed = (y == 0).double().mean().item()
    assert abs(zeroed - p) < 4 * np.sqrt(p * (1 - p) / n)  # binomial bound
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 3.0 / (1 - p)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y.detach() / 3.0))  # d y / d x = mask / (1 - p)
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_mask_seconds_drops_seconds_from_the_mean():
    # Second t of every clip is the one-hot vector e_t, so the pooled mean reveals which seconds were kept.
    t = 10
    seq = torch.eye(t).repeat(4, 1, 1)
    valid = torch.zeros(4, t, dtype=torch.bool)
    for b, n in enumerate([10, 5, 2, 1]):
        valid[b, :n] = True
    pooled, lost = mask_seconds(seq, valid, ratio=0.3, generator=torch.Generator().manual_seed(1))
    expected_dropped = [3, 2, 1, 0]  # round(0.3 n), at most n - 1
    for b, n in enumerate([10, 5, 2, 1]):
        kept = pooled[b] > 0
        assert int(kept.sum()) == n - expected_dropped[b]
        assert bool((valid[b] | ~kept).all())  # only valid seconds are kept
        np.testing.assert_allclose(pooled[b][kept].numpy(), 1.0 / (n - expected_dropped[b]), rtol=1e-6)
    assert lost.tolist() == [True, True, True, False]


def _model(dims=None, seed=0) -> HSCMAE:
    torch.manual_seed(seed)
    return HSCMAE(in_dims=dims or {"audio": 6, "visual": 9}, config=ModelConfig(hidden=16, depth=1, latent=4, dropout=0.1))


def test_standardize_uses_training_statistics():
    rng = np.random.default_rng(0)
    audio = rng.normal(3.0, 2.0, size=(50, 6))
    audio[:, 2] = 7.0
    visual = rng.normal(size=(50, 9))
    model = _model()
    model.set_input_stats({"audio": audio, "visual": visual})
    z = model.standardize({"audio": torch.tensor(audio, dtype=torch.float32),
                           "visual": torch.tensor(visual, dtype=torch.float32)})["audio"].numpy()
    expected = (audio - audio.mean(0)) / np.where(audio.std(0) < 1e-8, 1.0, audio.std(0))
    np.testing.assert_allclose(z, expected, atol=1e-5)
    assert np.all(z[:, 2] == 0.0)


def test_embed_is_the_eval_encoder_of_standardised_inputs_in_any_batch_size():
    arrays = ClipArrays.from_feature_set(_feature_set())
    model = _model()
    model.set_input_stats(dict(zip(("audio", "visual"), arrays.pooled())))
    model.train()
    a1, v1 = embed(model, arrays, batch_size=3)
    a2, v2 = embed(model, arrays, batch_size=4096)
    np.testing.assert_allclose(a1, a2, atol=1e-6)  # BLAS may block differently: float32 rounding only
    np.testing.assert_allclose(v1, v2, atol=1e-6)
    assert model.training  # embed restores the mode it found
    pooled_a = arrays.pooled()[0].astype(np.float64)
    lin1, norm, _, _, lin2 = model.encoders["audio"]
    h = (pooled_a - model.audio_mean.numpy()) / model.audio_std.numpy()
    h = h @ lin1.weight.detach().numpy().T + lin1.bias.detach().numpy()
    h = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + norm.eps)
    h = h * norm.weight.detach().numpy() + norm.bias.detach().numpy()
    h = 0.5 * h * (1 + scipy.special.erf(h / np.sqrt(2)))  # exact GELU
    h = h @ lin2.weight.detach().numpy().T + lin2.bias.detach().numpy()
    np.testing.assert_allclose(a1, h, atol=1e-5)


def _batch(n: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    """Raw pooled features of ``n`` clips (audio 6-d, visual 9-d) with their 3 seconds each (time mode)."""
    g = torch.Generator().manual_seed(seed)
    seq = {"audio": torch.randn(n, 3, 6, generator=g) + 2.0, "visual": torch.randn(n, 3, 9, generator=g)}
    valid = torch.ones(n, 3, dtype=torch.bool)
    return {**{m: x.mean(1) for m, x in seq.items()}, **{f"{m}_seq": x for m, x in seq.items()},
            **{f"{m}_valid": valid for m in seq}}


def _stats_model() -> HSCMAE:
    model = _model().eval()  # dropout off: the terms below are deterministic given the masking noise
    batch = _batch(200, seed=9)
    model.set_input_stats({m: batch[m].numpy() for m in ("audio", "visual")})
    return model


def test_forward_loss_terms_are_the_levels_of_its_masked_view():
    model, batch = _stats_model(), _batch()
    cfg = LossConfig(mask_mode="element", mask_ratio=0.4, topk=0, learn_weights=False)
    terms = {name: float(value.detach()) for name, value in model.forward_loss(
        batch, config=cfg, teacher=None, generator=torch.Generator().manual_seed(5)).items()}
    assert tuple(terms) == ("global", "local", "recon")
    # the same steps by hand: standardise, mask audio then visual from the same noise, encode, decode
    g = torch.Generator().manual_seed(5)
    clean = {m: (batch[m] - getattr(model, f"{m}_mean")) / getattr(model, f"{m}_std") for m in ("audio", "visual")}
    masked = {m: mask_elements(clean[m], ratio=0.4, generator=g) for m in ("audio", "visual")}
    with torch.no_grad():
        latent = {m: model.encoders[m](masked[m][0]) for m in masked}
        clean_latent = {m: model.encoders[m](clean[m]) for m in clean}
        recon = [((model.decoders[m](latent[m]) - clean[m]) ** 2)[masked[m][1]].mean() for m in masked]
    assert terms["recon"] == pytest.approx(float(sum(recon) / 2), rel=1e-6)
    assert terms["global"] == pytest.approx(float(losses.cca_loss(
        clean_latent["audio"], clean_latent["visual"], k=None, ridge=cfg.cca_ridge)), rel=1e-9)
    a = torch.nn.functional.normalize(latent["audio"], dim=1)
    v = torch.nn.functional.normalize(latent["visual"], dim=1)
    logits = (a @ v.T / cfg.nce_temperature).double().numpy()
    own = np.arange(len(logits))
    nce = [-(scipy.special.log_softmax(x, axis=1)[own, own]).mean() for x in (logits, logits.T)]
    assert terms["local"] == pytest.approx(np.mean(nce), rel=1e-5)  # plain InfoNCE: topk=0


def test_forward_view_is_clean_without_masking_and_drops_seconds_in_time_mode():
    model, batch = _stats_model(), _batch()
    clean = model.standardize(batch)
    view, mask = model.forward_view(batch, clean, ratio=0.0, mode="time", generator=torch.Generator())
    assert view is clean and mask == {"audio": None, "visual": None}
    view, mask = model.forward_view(batch, clean, ratio=0.4, mode="time", generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    for m in ("audio", "visual"):  # 3 seconds at 0.4: one second of every clip is left out of its mean
        pooled, lost = mask_seconds(batch[f"{m}_seq"], batch[f"{m}_valid"], ratio=0.4, generator=g)
        torch.testing.assert_close(view[m], (pooled - getattr(model, f"{m}_mean")) / getattr(model, f"{m}_std"))
        assert bool(lost.all()) and bool(mask[m].all()) and not torch.allclose(view[m], clean[m])


def test_a_teacher_equal_to_the_student_leaves_nothing_to_distill():
    model, batch = _stats_model(), _batch(40)
    teacher = copy.deepcopy(model.encoders)
    cfg = dataclasses.replace(methods()["hscmae+distill"].loss, mask_ratio=0.0, recon_target="full")
    found = model.forward_loss(batch, config=cfg, teacher=teacher, generator=torch.Generator())
    terms = {name: float(value.detach()) for name, value in found.items()}
    assert terms["distill"] == pytest.approx(0.0, abs=1e-5)  # clean view: the teacher's own latents
    canonical, cmap = teacher_space(teacher, model.standardize(batch), ridge=cfg.cca_ridge)
    targets = losses.soft_targets(canonical, topk=cfg.topk, temperature=cfg.teacher_temperature, self_weight=1.0)
    with torch.no_grad():
        latent = model.forward_encoder(model.standardize(batch))
    assert terms["local"] == pytest.approx(float(losses.multi_positive_infonce(
        latent["audio"], latent["visual"], targets, temperature=cfg.nce_temperature)), rel=1e-6)
    torch.testing.assert_close(cmap(latent)["audio"], canonical["audio"])


@pytest.mark.parametrize("name", sorted(methods()))
def test_method_configs_round_trip_through_json(name):
    method = methods()[name]
    assert MethodConfig.from_dict(json.loads(json.dumps(method.to_dict()))) == method


def test_ablations_remove_what_their_names_say():
    registry = methods()
    base = registry["hscmae"].loss
    assert base.active == ("global", "local", "recon")
    flips = {"hscmae-no-global": {"use_global"}, "hscmae-no-local": {"use_local"},
             "hscmae-no-recon-decoder": {"use_recon"},  # the decoder only: the student still sees the masked view
             "hscmae-no-sample": {"use_recon", "mask_ratio"},  # the whole sample level: clean view, no decoder
             "hscmae-fixed-weights": {"learn_weights"}, "hscmae+distill": {"use_distill"}}
    for name, flags in flips.items():
        changed = {k for k, v in vars(registry[name].loss).items() if v != getattr(base, k)}
        assert changed == flags, name
    assert registry["hscmae-no-recon-decoder"].loss.mask_ratio == base.mask_ratio > 0
    assert registry["hscmae-no-sample"].loss.mask_ratio == 0 and "hscmae-no-recon" not in registry
    assert registry["dcca"].loss.active == ("global",)
    assert registry["clip"].loss.active == ("local",) and registry["clip"].loss.topk == 0
    assert registry["cav-mae"].loss.active == ("local", "recon") and not registry["cav-mae"].loss.needs_teacher
    assert registry["linear-cca"].kind == "closed_form"
    assert set(LOSS_TERMS) >= set(registry["hscmae+distill"].loss.active)


def test_encoder_width_and_depth_follow_the_config():
    model = HSCMAE(in_dims={"audio": 6, "visual": 9}, config=ModelConfig(hidden=16, depth=3, latent=4))
    shapes = [tuple(layer.weight.shape) for layer in model.encoders["visual"] if isinstance(layer, torch.nn.Linear)]
    assert shapes == [(16, 9), (16, 16), (16, 16), (4, 16)]
    shapes = [tuple(layer.weight.shape) for layer in model.decoders["audio"] if isinstance(layer, torch.nn.Linear)]
    assert shapes == [(16, 4), (16, 16), (16, 16), (6, 16)]
    assert MODEL_PRESETS["paper"].hidden == 1024 and MODEL_PRESETS["demo"].hidden < MODEL_PRESETS["paper"].hidden


def test_updated_merges_parts_field_by_field_and_rejects_unknown_keys():
    base = methods()["hscmae"]
    changed = base.updated({"model": {"hidden": 64}, "loss": {"topk": 9}, "cca_dim": 7})
    assert (changed.model.hidden, changed.model.latent, changed.loss.topk, changed.loss.use_global, changed.cca_dim) \
        == (64, base.model.latent, 9, True, 7)
    with pytest.raises(ValueError, match=r"loss.top_k\n  Unexpected keyword argument"):
        base.updated({"loss": {"top_k": 3}})
    with pytest.raises(ValueError, match=r"loss.mask_ratio\n  Input should be less than 1"):
        base.updated({"loss": {"mask_ratio": 1.0}})


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"model.hiden\n  Unexpected keyword argument"):
        MethodConfig.from_dict({"name": "x", "model": {"hiden": 3}})
    with pytest.raises(ValueError, match=r"loss.mask_mode\n  Input should be 'auto', 'element' or 'time'"):
        MethodConfig.from_dict({"name": "x", "loss": {"mask_mode": "frames"}})
    with pytest.raises(ValueError, match="no loss term"):
        MethodConfig.from_dict({"name": "x", "loss": {"use_global": False, "use_local": False, "use_recon": False}})
    with pytest.raises(ValueError, match="recon_target 'masked' needs mask_ratio > 0"):
        LossConfig(mask_ratio=0.0)
    with pytest.raises(ValueError, match="topk > 0 or self_weight > 0"):
        LossConfig(topk=0, self_weight=0.0)
    with pytest.raises(ValueError, match=r"cca_ridge\n  Input should be greater than 0"):
        methods()["linear-cca"].updated({"cca_ridge": 0.0})
    with pytest.raises(ValueError, match="cca_ridge is the ridge of closed-form methods"):
        methods()["hscmae"].updated({"cca_ridge": 0.1})
    with pytest.raises(ValueError, match=r"train.patience\n  Input should be greater than or equal to 1"):
        methods()["hscmae"].updated({"train": {"patience": 0}})


def test_auto_masking_resolves_to_elements_on_clip_level_input_and_seconds_otherwise():
    arrays = ClipArrays.from_feature_set(_feature_set())  # 1 to 5 seconds per clip
    assert arrays.clip_level_modalities == ()
    pooled = dataclasses.replace(arrays, audio=arrays.audio[:, :1], audio_valid=arrays.audio_valid[:, :1])
    assert pooled.clip_level_modalities == ("audio",)  # one second in every clip: nothing to drop there
    hscmae = methods()["hscmae"]
    assert hscmae.loss.mask_mode == "auto"
    assert hscmae.for_input(clip_level=False).loss.mask_mode == "time"
    assert hscmae.for_input(clip_level=True).loss.mask_mode == "element"
    explicit = hscmae.updated({"loss": {"mask_mode": "time"}})
    assert explicit.for_input(clip_level=True) == explicit  # an explicit choice is kept
    resolved = hscmae.for_input(clip_level=True)
    assert dataclasses.replace(resolved, loss=dataclasses.replace(resolved.loss, mask_mode="auto")) == hscmae
    model = _stats_model()
    with pytest.raises(ValueError, match="mask_mode 'auto': resolve it for the data first"):
        model.forward_view(_batch(), model.standardize(_batch()), ratio=0.3, mode="auto", generator=torch.Generator())
