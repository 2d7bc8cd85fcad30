"""The fine-tune stage on tiny real models: what each strategy trains, LP-FT, resume, early stopping, and the
fine-tuned model as a backbone."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_image_folder, write_text_csv
from tlcache.backbones import create_backbone
from tlcache.embed import embed_source
from tlcache.errors import UserError
from tlcache.finetune import FinetuneConfig, finetune
from tlcache.finetune.model import FinetuneModel
from tlcache.finetune.trainer import Trainer
from tlcache.heads import fit_head
from tlcache.predict import predict
from tlcache.store import FeatureStore


def _classifier(backbone: str, n_classes: int = 2, **options) -> FinetuneModel:
    return FinetuneModel(create_backbone(backbone, **options), n_classes, device="cpu")


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters)


def _trainable(model: FinetuneModel) -> int:
    return _count(p for p in model.module.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_each_strategy_trains_exactly_what_it_says(kind, tiny_bert_dir, resnet18_weights):
    if kind == "text":
        model = _classifier(f"hf:{tiny_bert_dir}")
        body = model.module["body"]
        expected_blocks = [body.embeddings, *body.encoder.layer]  # embeddings, then 2 transformer layers
    else:
        model = _classifier("torchvision:resnet18", weights=str(resnet18_weights), image_size=32)
        body = model.module["body"]
        bottlenecks = [block for layer in (body.layer1, body.layer2, body.layer3, body.layer4) for block in layer]
        expected_blocks = [body.conv1, body.bn1, *bottlenecks]
    assert [id(b) for b in model.blocks] == [id(b) for b in expected_blocks]
    head = _count(model.module["head"].parameters())
    assert head == 2 * model.bb.dim + 2
    expected = {
        "head": head,
        "top-1": head + _count(expected_blocks[-1].parameters()),
        "top-2": head + _count(expected_blocks[-1].parameters()) + _count(expected_blocks[-2].parameters()),
        "full": head + _count(body.parameters()),
    }
    config = FinetuneConfig()
    for strategy, count in expected.items():
        model.freeze(strategy)
        assert _trainable(model) == count, strategy
        grouped = [p for group in model.param_groups(strategy, config) for p in group["params"]]
        assert _count(grouped) == count and len({id(p) for p in grouped}) == len(grouped)
        model.train_mode(strategy)
        # Frozen blocks stay in eval mode: their norms keep running statistics, their dropout stays off.
        frozen = [b for b in model.blocks if b not in model.trainable_blocks(strategy)]
        assert not any(m.training for b in frozen for m in b.modules())


def test_layer_decay_gives_lower_rates_further_down(tiny_bert_dir):
    model = _classifier(f"hf:{tiny_bert_dir}")
    model.freeze("full")
    config = FinetuneConfig(lr=1e-4, head_lr=1e-2, layer_decay=0.5)
    groups = model.param_groups("full", config)
    rate_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    top, below, embeddings = model.blocks[-1], model.blocks[-2], model.blocks[0]
    assert {rate_of[id(p)] for p in model.module["head"].parameters()} == {1e-2}
    assert {rate_of[id(p)] for p in top.parameters()} == {1e-4}
    assert {rate_of[id(p)] for p in below.parameters()} == {5e-5}
    assert {rate_of[id(p)] for p in embeddings.parameters()} == {1e-4 * 0.5**2}
    decays = {id(p): group["weight_decay"] for group in groups for p in group["params"]}
    assert all(decays[id(p)] == 0 for p in model.module.parameters() if p.ndim == 1)
    assert all(decays[id(p)] == config.weight_decay for p in model.module.parameters() if p.ndim > 1)


def test_unknown_strategy_and_k_beyond_the_blocks_are_refused(tiny_bert_dir, text_csv):
    with pytest.raises(UserError, match="--strategy middle is not known"):
        finetune(text_csv, f"hf:{tiny_bert_dir}", config=FinetuneConfig(strategy="middle"), progress=False)
    with pytest.raises(UserError, match="has 3 blocks; use full"):
        finetune(text_csv, f"hf:{tiny_bert_dir}", config=FinetuneConfig(strategy="top-4"), progress=False)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"lr": float("nan")}, "--lr nan must be a finite number"),
        ({"head_lr": float("inf")}, "--head-lr inf must be a finite number"),
        ({"clip": float("nan")}, "--clip nan must be a finite number"),
        ({"seed": -5}, "--seed -5 must be in 0..4294967295"),
        ({"seed": 2**32}, "--seed 4294967296 must be in"),
    ],
)
def test_settings_that_are_not_numbers_or_seeds_are_refused_before_any_work(setting, message):
    with pytest.raises(UserError, match=message):
        FinetuneConfig(**setting).validate()


def _fast(**overrides) -> FinetuneConfig:
    defaults = dict(epochs=2, batch_size=8, precision="fp32", lr=1e-3, head_lr=1e-2, patience=0, val_fraction=0.25)
    return FinetuneConfig(**{**defaults, **overrides})


def test_lp_ft_starts_from_the_logistic_regression_probe(tmp_path, tiny_bert_dir):
    from tlcache.finetune.data import FinetuneData, make_splits
    from tlcache.finetune.probe import warm_start
    from tlcache.heads import make_head
    from tlcache.sources import load_source

    src = load_source(write_text_csv(tmp_path / "t.csv", n=40))
    config = _fast(lp_ft=True)
    splits = make_splits(src, None, 0.2, config, None)
    model = _classifier(f"hf:{tiny_bert_dir}")
    model.bb.precision = "fp32"
    warm_start(model, src, splits, model.bb, config, tmp_path / "cache", "cpu")
    # The classifier now gives the probabilities of fit-head's logistic regression on the frozen features.
    frozen = create_backbone(f"hf:{tiny_bert_dir}")
    features = frozen.embed([src.items[i] for i in splits.rows["train"]])
    probe = make_head("logreg", config.seed).fit(features, splits.labels["train"])
    model.module.eval()
    data = FinetuneData(src, splits, model.bb, config, 0)
    probabilities = np.zeros((len(features), 2))
    with torch.inference_mode():
        for inputs, _, positions in data.batches("train"):
            probabilities[positions] = torch.softmax(model(inputs), dim=1).numpy()
    np.testing.assert_allclose(probabilities, probe.predict_proba(features), atol=1e-4)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_lp_ft_folds_the_probe_without_dead_features(n_classes):
    from tlcache.finetune.probe import fold_probe
    from tlcache.heads import make_head

    rng = np.random.default_rng(0)
    y = np.arange(120) % n_classes
    X = rng.normal(size=(120, 6)) + y[:, None] * 0.5
    X[:, 2] = rng.normal(size=120) * 1e-33  # dead units, as MiniLM has: values that are rounding residue
    X[:, 4] = -2.7e-8 + rng.normal(size=120) * 6e-9 * 1e-3
    probe = make_head("logreg", 0).fit(X, y)
    assert probe[0].kept_.tolist() == [0, 1, 3, 5]  # the head drops the dead columns itself
    weight, bias = fold_probe(probe, n_classes + 1, X.shape[1])  # one class the probe never saw
    assert np.abs(weight).max() < 100 and (weight[:, [2, 4]] == 0).all()
    logits = X @ weight.T + bias
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities[:, :n_classes], probe.predict_proba(X), atol=1e-6)
    assert probabilities[:, n_classes].max() < 1e-6


def test_a_diverging_fine_tune_stops_with_one_line(tmp_path, tiny_bert_dir):
    source = write_text_csv(tmp_path / "t.csv", n=40)
    with pytest.raises(UserError, match=r"diverged: the gradients turned infinite or NaN at epoch 1, batch 2"):
        finetune(
            source, f"hf:{tiny_bert_dir}", out=tmp_path / "run", config=_fast(lr=1e30, head_lr=1e30), progress=False
        )
    with pytest.raises(UserError, match=r"diverged: the loss turned infinite or NaN at epoch 1, batch 2"):
        finetune(
            source, f"hf:{tiny_bert_dir}", out=tmp_path / "run2", config=_fast(lr=1e30, head_lr=1e30, clip=0.0),
            progress=False,
        )  # fmt: skip


def _interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    original = Trainer._checkpoint

    def checkpoint_then_stop(self, identity, done, *args):
        original(self, identity, done, *args)
        if done == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_checkpoint", checkpoint_then_stop)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_resume_continues_from_the_saved_epoch_with_the_uninterrupted_result(
    kind, tmp_path, tiny_bert_dir, resnet18_weights, monkeypatch
):
    if kind == "text":
        source, backbone, options = write_text_csv(tmp_path / "t.csv", n=40), f"hf:{tiny_bert_dir}", {}
    else:
        source = write_image_folder(tmp_path / "imgs", per_class=8)
        backbone, options = "torchvision:resnet18", {"weights": str(resnet18_weights), "image_size": 32}
    # Two stages (head first, then top-1), dropout, augmentation and mixup (images) on: every source of randomness.
    mixup = 0.4 if kind == "image" else 0.0
    config = _fast(
        head_epochs=1, epochs=2, strategy="top-1", augment=["crop", "flip", "erase"], mixup=mixup, label_smoothing=0.1
    )
    common = dict(config=config, progress=False, num_workers=0, **options)
    whole = finetune(source, backbone, out=tmp_path / "whole", **common)

    _interrupt_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        finetune(source, backbone, out=tmp_path / "cut", **common)
    checkpoint = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    with pytest.raises(UserError, match="holds an interrupted fine-tune; add --resume"):
        finetune(source, backbone, out=tmp_path / "cut", **common)
    monkeypatch.undo()
    resumed = finetune(source, backbone, out=tmp_path / "cut", resume=True, **common)

    assert resumed.report["finetune"]["history"] == whole.report["finetune"]["history"]
    assert resumed.report["metrics"] == whole.report["metrics"]
    from safetensors.torch import load_file

    for name in ("head.safetensors",) + (("body.safetensors",) if kind == "image" else ("body/model.safetensors",)):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "cut" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()  # a finished run keeps its model, not the checkpoint


def test_mixup_blends_each_image_with_its_neighbour_at_a_seeded_weight(tmp_path, resnet18_weights):
    from tlcache.finetune.data import FinetuneData, make_splits
    from tlcache.sources import load_source

    src = load_source(write_image_folder(tmp_path / "imgs", per_class=8))
    config = _fast(mixup=0.4)
    model = _classifier("torchvision:resnet18", weights=str(resnet18_weights), image_size=32)
    data = FinetuneData(src, make_splits(src, None, 0.2, config, None), model.bb, config, 0)
    trainer = Trainer(model, data, config, tmp_path, False)
    pixels = torch.randn(4, 3, 32, 32)
    mixed, weight = trainer._mix(pixels, epoch=1, index=3)
    assert 0 < weight < 1
    torch.testing.assert_close(mixed, weight * pixels + (1 - weight) * pixels[[3, 0, 1, 2]])
    assert trainer._mix(pixels, epoch=1, index=3)[1] == weight  # the same batch of the same epoch: the same mix
    assert trainer._mix(pixels, epoch=1, index=4)[1] != weight
    trainer.config = _fast(mixup=0.0)
    assert trainer._mix(pixels, epoch=1, index=3) == (pixels, 1.0)


def test_shift_moves_the_image_and_fills_the_border_black(resnet18_weights):
    from PIL import Image

    from tlcache.images import training_transform

    bb = create_backbone("torchvision:resnet18", weights=str(resnet18_weights), image_size=32, crop_ratio=1.0)
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    plain = training_transform(bb, [])(white)
    torch.manual_seed(0)
    shifted = [training_transform(bb, ["shift"])(white) for _ in range(8)]
    assert all(s.shape == plain.shape for s in shifted)
    black = (torch.zeros(3) - torch.tensor(bb.mean)) / torch.tensor(bb.std)
    # Every shifted image keeps most of the white and gains black borders of at most 10% of a side.
    border = [int(torch.isclose(s, black[:, None, None], atol=1e-4).all(dim=0).sum()) for s in shifted]
    assert any(n > 0 for n in border) and all(n <= 32 * 32 - 29 * 29 for n in border)


def test_resume_with_other_settings_is_refused(tmp_path, tiny_bert_dir, monkeypatch):
    source = write_text_csv(tmp_path / "t.csv", n=40)
    _interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        finetune(source, f"hf:{tiny_bert_dir}", out=tmp_path / "run", config=_fast(), progress=False)
    monkeypatch.undo()
    with pytest.raises(UserError, match="other settings \\(--lr differs\\); resume with the same command"):
        finetune(source, f"hf:{tiny_bert_dir}", out=tmp_path / "run", config=_fast(lr=1e-4), resume=True)
    with pytest.raises(UserError, match="nothing to resume"):
        finetune(source, f"hf:{tiny_bert_dir}", out=tmp_path / "other", config=_fast(), resume=True)


def test_early_stopping_restores_the_best_epoch(tmp_path, tiny_bert_dir):
    source = write_text_csv(tmp_path / "t.csv", n=80)
    # Two epochs train the classifier alone; then a destructive learning rate wrecks the body, so validation
    # accuracy falls, training stops after `patience` stale epochs, and the best epoch must come back.
    config = _fast(head_epochs=2, epochs=5, strategy="full", lr=1.0, head_lr=0.1, warmup=0, clip=0, patience=2)
    run = finetune(source, f"hf:{tiny_bert_dir}", config=config, out=tmp_path / "run", progress=False)
    history = run.report["finetune"]["history"]
    best = max(history, key=lambda h: h["val_accuracy"])
    assert run.report["finetune"]["best_epoch"] == best["epoch"] == 2
    assert len(history) == 2 + 2  # stopped after two stale epochs, not after all five of the main stage
    assert all(h["val_accuracy"] < best["val_accuracy"] for h in history[2:])
    # The saved model is the best epoch's: re-evaluating it on the validation split gives that epoch's accuracy.
    from safetensors.torch import load_file

    from tlcache.finetune.data import make_splits
    from tlcache.sources import load_source

    src = load_source(source)
    splits = make_splits(src, None, 0.2, config, None)
    features = create_backbone(f"finetuned:{run.out_dir}").embed([src.items[i] for i in splits.rows["val"]])
    head = load_file(run.out_dir / "head.safetensors")
    logits = features @ head["weight"].numpy().T + head["bias"].numpy()
    assert float((logits.argmax(axis=1) == splits.labels["val"]).mean()) == pytest.approx(best["val_accuracy"])


def test_finetuned_model_is_a_backbone_for_embed_fit_head_and_predict(tmp_path, tiny_bert_dir):
    train = write_text_csv(tmp_path / "train.csv", n=40)
    test = write_text_csv(tmp_path / "test.csv", n=16, seed=1)
    run = finetune(train, f"hf:{tiny_bert_dir}", test=test, out=tmp_path / "ft", config=_fast(epochs=3), progress=False)
    saved = json.loads((run.out_dir / "finetune.json").read_text())
    assert saved["classes"] == ["neg", "pos"] and saved["modality"] == "text"
    assert (run.out_dir / "report.md").read_text().startswith(f"# hf:{tiny_bert_dir} fine-tuned (full)")

    name = f"finetuned:{run.out_dir}"
    tuned = FeatureStore(embed_source(test, name, precision="fp32", out=tmp_path / "cache", progress=False).path)
    plain = FeatureStore(embed_source(test, f"hf:{tiny_bert_dir}", precision="fp32", out=tmp_path / "cache").path)
    assert tuned.key != plain.key and not np.allclose(tuned.features(), plain.features(), atol=1e-3)
    # The fine-tuned classifier on these features reproduces the fine-tune's own test accuracy.
    from safetensors.torch import load_file

    head = load_file(run.out_dir / "head.safetensors")
    logits = tuned.features() @ head["weight"].numpy().T + head["bias"].numpy()
    assert float((logits.argmax(axis=1) == tuned.labels()).mean()) == pytest.approx(run.accuracy)
    tested = pd.read_csv(run.out_dir / "predictions.csv")  # every test item, as fit-head writes them
    assert len(tested) == 16 and (tested["label"] == tested["true_label"]).mean() == pytest.approx(run.accuracy)

    train_store = embed_source(train, name, precision="fp32", out=tmp_path / "cache", progress=False).path
    head_run = fit_head(train_store, "logreg", test=tuned.path, out=tmp_path / "head")
    predictions = predict(head_run.out_dir, test, out=tmp_path / "p.csv", cache_dir=tmp_path / "cache", progress=False)
    assert predictions.rows == 16
    # The fine-tune's folder given where a head goes: the way from it to predictions, named
    with pytest.raises(UserError) as refused:
        predict(run.out_dir, test, out=tmp_path / "q.csv", progress=False)
    assert f"is a fine-tune, not a head: its model is a backbone, `-b finetuned:{run.out_dir}`" in str(refused.value)


def test_finetune_on_images_writes_a_model_that_embeds(tmp_path, resnet18_weights):
    source = write_image_folder(tmp_path / "imgs", per_class=6)
    run = finetune(
        source, "torchvision:resnet18", weights=str(resnet18_weights), image_size=32, out=tmp_path / "ft",
        config=_fast(strategy="top-2", lp_ft=True), progress=False, num_workers=0,
    )  # fmt: skip
    assert run.report["finetune"]["lp_ft"] and run.report["n_train"] + run.report["n_val"] + run.report["n_test"] == 12
    bb = create_backbone(f"finetuned:{run.out_dir}")
    assert bb.spec["weights"].endswith("body.safetensors") and bb.dim == 512
    features = bb.embed(sorted(source.rglob("*.png"))[:3])
    assert features.shape == (3, 512) and np.isfinite(features).all()


def test_finetuned_backbone_needs_a_finetune_folder(tmp_path):
    with pytest.raises(UserError, match="holds no finetune.json"):
        create_backbone(f"finetuned:{tmp_path}")


def test_blocks_of_a_vit_are_its_encoder_layers():
    import torchvision

    from tlcache.backbones.base import parameter_blocks

    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    blocks = parameter_blocks(vit)
    # The patch projection, each encoder layer (the encoder is opened: its layers hold nearly all of it), the
    # final norm, then the classifier.
    assert blocks == [vit.conv_proj, *vit.encoder.layers, vit.encoder.ln, vit.heads]


def test_gradient_accumulation_steps_once_per_group_of_batches(tmp_path, tiny_bert_dir, monkeypatch):
    source = write_text_csv(tmp_path / "t.csv", n=40)  # 32 after the test split, 24 after validation: 3 batches
    _interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        finetune(source, f"hf:{tiny_bert_dir}", out=tmp_path / "run", config=_fast(accumulate=2), progress=False)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert checkpoint["scheduler"]["last_epoch"] == 2  # batches 1+2 make one step, batch 3 (the last) another
    assert all(state["step"] == 2 for state in checkpoint["optimizer"]["state"].values())


def test_a_damaged_image_stops_the_fine_tune_with_its_name(tmp_path, resnet18_weights):
    source = write_image_folder(tmp_path / "imgs", per_class=6)
    victim = source / "square" / "square-002.png"
    victim.write_bytes(victim.read_bytes()[:-60])  # the header survives, the pixel data does not
    with pytest.raises(UserError, match=r"square-002\.png could not be decoded"):
        finetune(
            source, "torchvision:resnet18", weights=str(resnet18_weights), image_size=32, config=_fast(),
            out=tmp_path / "ft", progress=False, num_workers=0,
        )  # fmt: skip
