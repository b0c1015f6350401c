"""GViT: Gaussian encoder and classifier, losses, eq. (1) guidance, phases, data and evaluation."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import structural_similarity
from torch.utils.data import DataLoader

from medgmae.twod.classification_data import (
    load_classification_data,
    make_dataset,
    read_csv_list,
    scan_image_folder,
)
from medgmae.twod.phantom_task import write_phantom_slice_task
from medgmae.twod.gvit import (
    DenoisingGaussianEncoder,
    GaussianViTClassifier,
    GViT,
    decode_gaussians_2d,
    gaussian_dim,
    sample_gaussian_tokens,
)
from medgmae.twod.gvit_eval import classification_metrics
from medgmae.twod.gvit_figures import ellipse_points
from medgmae.twod.gvit_step import PHASES
from medgmae.twod.gvit_train import build_phase_trainer
from medgmae.twod.guidance import ReconstructionLoss, check_gamma, guidance_gradient, guided_backward

SIZE = 16  # image edge: the smallest that keeps an 11-pixel SSIM window


def tiny_encoder(channels=1, k=6, mode="denoising", **kw):
    return DenoisingGaussianEncoder(channels, SIZE, 4, k, hidden_size=24, num_layers=1, num_heads=2, mlp_ratio=2.0, mode=mode, **kw)


def tiny_classifier(channels=1, num_classes=3):
    return GaussianViTClassifier(channels, num_classes, hidden_size=24, num_layers=2, num_heads=2, mlp_ratio=2.0)


def _perturb_head(enc: DenoisingGaussianEncoder, seed=0):
    """The residual head starts at zero; give it weights so that gradients reach the whole encoder."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.head[-1].parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


# ----------------------------------------------------------------------------------------------- guidance
def _joint_losses(enc, clf, x, y, g0, rec):
    g = enc(x, g0=g0)
    rendered = enc.decode(g).render((SIZE, SIZE), backend="torch")
    return g, rec(rendered, x), F.cross_entropy(clf(g), y)


@pytest.mark.parametrize("gamma", [0.1, 0.03, 0.0])
def test_guided_backward_equals_separate_gradients(gamma):
    torch.manual_seed(0)
    enc, clf = tiny_encoder().double(), tiny_classifier().double()
    _perturb_head(enc)
    x = torch.rand(2, 1, SIZE, SIZE, dtype=torch.float64)
    y = torch.tensor([0, 2])
    g0 = sample_gaussian_tokens(2, 6, 1, generator=torch.Generator().manual_seed(1)).double()
    rec = ReconstructionLoss("bce", 0.1)
    enc_p, clf_p = [p for p in enc.parameters() if p.requires_grad], list(clf.parameters())

    # reference: every gradient on its own, with autograd
    g, l_rec, l_cls = _joint_losses(enc, clf, x, y, g0, rec)
    rec_theta, rec_enc = (lambda t: (t[0], t[1:]))(torch.autograd.grad(l_rec, [g, *enc_p], retain_graph=True, allow_unused=True))
    cls_theta, *cls_rest = torch.autograd.grad(l_cls, [g, *enc_p, *clf_p], allow_unused=True)
    cls_enc, cls_clf = cls_rest[: len(enc_p)], cls_rest[len(enc_p) :]

    g, l_rec, l_cls = _joint_losses(enc, clf, x, y, g0, rec)
    guided = guided_backward(l_rec, l_cls, g, clf.parameters(), gamma)

    torch.testing.assert_close(guided, rec_theta + gamma * cls_theta, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(guided, guidance_gradient(rec_theta, cls_theta, gamma), rtol=1e-9, atol=1e-12)
    n_used = 0
    for p, gr, gc in zip(enc_p, rec_enc, cls_enc):  # every encoder weight gets dL_rec/dpsi + gamma dL_cls/dpsi
        if gr is None and gc is None:  # MONAI's TransformerBlock keeps an unused cross-attention norm
            assert p.grad is None
            continue
        torch.testing.assert_close(p.grad, gr + gamma * gc, rtol=1e-8, atol=1e-12)
        n_used += 1
    assert n_used >= len(enc_p) - 2
    for p, gc in zip(clf_p, cls_clf):  # the classifier follows dL_cls/dphi, not scaled by gamma
        torch.testing.assert_close(p.grad, gc, rtol=1e-8, atol=1e-12)
    if gamma > 0:  # and the classifier term really enters, with the descent sign
        assert (guided - rec_theta).abs().max() > 1e-6
        assert not torch.allclose(guided, rec_theta - gamma * cls_theta)


def test_guided_step_lowers_classification_loss():
    """A descent step along eq. (1) lowers L_cls relative to the reconstruction-only step (first order)."""
    torch.manual_seed(1)
    clf = tiny_classifier().double().requires_grad_(False)
    theta = sample_gaussian_tokens(3, 10, 1, generator=torch.Generator().manual_seed(2)).double().requires_grad_(True)
    y = torch.tensor([0, 1, 2])
    target = torch.rand(3, 1, SIZE, SIZE, dtype=torch.float64)
    l_rec = ReconstructionLoss("mse", 0.1)(decode_gaussians_2d(theta, 1).render((SIZE, SIZE), "torch"), target)
    grad_rec = torch.autograd.grad(l_rec, theta)[0]
    l_cls = F.cross_entropy(clf(theta), y)
    grad_cls = torch.autograd.grad(l_cls, theta)[0]
    eta = 1e-3
    cls_after = {}
    for gamma in (0.0, 0.1):
        with torch.no_grad():
            cls_after[gamma] = F.cross_entropy(clf(theta - eta * guidance_gradient(grad_rec, grad_cls, gamma)), y).item()
    predicted = -eta * 0.1 * grad_cls.square().sum().item()  # first-order change from the guidance term
    assert predicted < 0
    assert cls_after[0.1] - cls_after[0.0] == pytest.approx(predicted, rel=0.05)


@pytest.mark.parametrize("bad", [-0.01, 0.2, float("nan"), "0.1"])
def test_gamma_range(bad):
    with pytest.raises(ValueError, match="gamma"):
        check_gamma(bad)


# ----------------------------------------------------------------------------------------------- losses
def test_reconstruction_loss_matches_references():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 24, 24, generator=gen, dtype=torch.float64)
    pred = (target + 0.2 * torch.randn(2, 1, 24, 24, generator=gen, dtype=torch.float64)).clamp(0.01, 0.99)
    parts = ReconstructionLoss("bce", 0.1).components(pred, target)
    bce = -(target * pred.log() + (1 - target) * (1 - pred).log()).mean()
    torch.testing.assert_close(parts["pixel"], bce)
    # D-SSIM against scikit-image's SSIM with Wang et al.'s Gaussian window (sigma 1.5, population covariance)
    ref = np.mean(
        [
            structural_similarity(t[0].numpy(), p[0].numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, full=True)[1][5:-5, 5:-5].mean()
            for t, p in zip(target, pred)
        ]
    )  # fmt: skip
    assert parts["perceptual"].item() == pytest.approx(1 - ref, abs=1e-6)
    torch.testing.assert_close(parts["total"], bce + 0.1 * parts["perceptual"])
    assert ReconstructionLoss("mse", 0.0)(pred, target).item() == pytest.approx(F.mse_loss(pred, target).item())
    with pytest.raises(ValueError, match="pixel"):
        ReconstructionLoss("l1")
    with pytest.raises(ValueError, match="at least 11"):
        ReconstructionLoss()(pred[..., :8, :8], target[..., :8, :8])


# ----------------------------------------------------------------------------------------------- model
def test_classifier_any_k_and_permutation_invariance():
    torch.manual_seed(0)
    clf = tiny_classifier(channels=3, num_classes=4).eval()
    for k in (8, 37):
        g = sample_gaussian_tokens(2, k, 3, generator=torch.Generator().manual_seed(k))
        out = clf(g)
        assert out.shape == (2, 4)
        perm = torch.randperm(k)
        torch.testing.assert_close(clf(g[:, perm]), out, rtol=1e-5, atol=1e-5)
    # it is not a constant function of the set: moving one Gaussian changes the logits
    g2 = g.clone()
    g2[:, 0, :2] += 1.0
    assert (clf(g2) - out).abs().max() > 1e-4
    with pytest.raises(ValueError, match="expected Gaussians"):
        clf(torch.zeros(2, 5, 7))  # 7 = 1-channel vector for a 3-channel classifier


def test_encoder_residual_and_scale_bound():
    torch.manual_seed(0)
    enc = tiny_encoder(channels=3, k=5, scale_factor=0.5)
    x = torch.rand(2, 3, SIZE, SIZE)
    g0 = sample_gaussian_tokens(2, 5, 3, scale_factor=0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(enc(x, g0=g0), g0)  # zero-initialised residual head: g = g0 + 0
    _perturb_head(enc)
    g = enc(x, g0=g0)
    assert g.shape == (2, 5, gaussian_dim(3)) == (2, 5, 9)
    # the Gaussian tokens carry no index embedding: permuting g0 permutes the prediction
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(enc(x, g0=g0[:, perm]), g[:, perm], rtol=1e-5, atol=1e-5)
    dec = decode_gaussians_2d(torch.full((1, 2, 9), 30.0), 3, scale_factor=0.5)
    assert torch.allclose(dec.scales, torch.tensor(0.5)) and dec.means.abs().max() <= 1
    # eval mode is deterministic, training mode draws new g0
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x))
    enc.train()
    assert not torch.allclose(enc(x), enc(x))


@pytest.mark.parametrize("seed", range(6))
def test_an_eval_prediction_does_not_depend_on_the_batch(seed):
    """In eval mode every image starts from the same seeded ``g0``: an image's Gaussians and logits alone equal
    those it gets at any place in a batch of any size (a ``g0`` drawn per row gave each place other ones)."""
    torch.manual_seed(seed)
    model = GViT(1, SIZE, 3, num_gaussians=6, patch_size=4).eval()
    _perturb_head(model.encoder, seed)
    x = torch.rand(5, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        alone = torch.cat([model(x[i : i + 1]) for i in range(5)])
        gaussians_alone = torch.cat([model.gaussians(x[i : i + 1]) for i in range(5)])
        torch.testing.assert_close(model(x), alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.gaussians(x), gaussians_alone, rtol=1e-5, atol=1e-6)
        order = torch.tensor([3, 0, 4])
        torch.testing.assert_close(model(x[order]), alone[order], rtol=1e-5, atol=1e-6)
        assert (alone[0] - alone[1]).abs().max() > 1e-6  # and the images still differ


def test_the_classifier_phase_learns_a_separable_task():
    """After the warm-up, with the encoder frozen, each image keeps its Gaussians across epochs and batches, so the
    classifier phase fits a task a look at the image answers (a bright blob on the left or the right) on shuffled
    batches, for most seeds (a short CPU schedule: about one seed in ten stalls at chance). The batch's ``g0``
    (:func:`test_an_eval_prediction_does_not_depend_on_the_batch`) and the features' scale
    (:func:`test_the_classifier_centre_features_are_smooth_at_the_pixel_scale`) have their own tests."""
    gen = torch.Generator().manual_seed(0)
    images = []
    for i in range(24):
        img = 0.1 * torch.rand(1, SIZE, SIZE, generator=gen)
        cx = 3 + int(torch.randint(0, 3, (1,), generator=gen)) + (8 if i % 2 else 0)
        cy = 4 + int(torch.randint(0, 8, (1,), generator=gen))
        img[0, cy - 2 : cy + 2, cx - 2 : cx + 2] = 1.0
        images.append({"image": img, "label": torch.tensor(i % 2)})
    x, y = torch.stack([it["image"] for it in images]), torch.stack([it["label"] for it in images])
    fitted = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = GViT(1, SIZE, 2, num_gaussians=16, patch_size=4)
        loader = DataLoader(images, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(seed))
        build_phase_trainer("warmup", model, loader, max_epochs=100, device="cpu", lr=3e-3, render_backend="torch").run()
        build_phase_trainer("classifier", model, loader, max_epochs=40, device="cpu", lr=1e-3, render_backend="torch").run()
        with torch.no_grad():
            fitted.append(float((model.eval()(x).argmax(1) == y).float().mean()))
    assert sum(a >= 0.9 for a in fitted) >= 2, fitted


def test_the_classifier_centre_features_are_smooth_at_the_pixel_scale(tmp_path):
    """The classifier's Fourier features of a centre (``sin`` / ``cos`` of ``freq * centre``, centres spanning
    [-1, 1]) turn by at most pi / 8 for a shift of a quarter pixel of a 24-pixel image: with 6 octaves (periods down
    to 0.75 pixel) a classifier trained on one ``g0``'s Gaussians learnt their exact sub-pixel centres and was at
    chance for Gaussians decoded from any other draw. A model file from before records no setting: 6 octaves."""
    clf = GaussianViTClassifier(1, 3)
    quarter_pixel = 0.25 * 2 / 24
    assert clf.num_freqs >= 1 and float(clf.embed.freqs.max()) * quarter_pixel <= math.pi / 8
    old = GViT(1, SIZE, 3, num_gaussians=4, patch_size=4, classifier_freqs=6)
    config = old.config()
    assert config.pop("classifier_freqs") == 6
    from medgmae.checkpoint import make_checkpoint, save_checkpoint

    path = tmp_path / "model.pt"
    save_checkpoint(path, make_checkpoint("gvit", config, old.state_dict(), extra={"class_names": None, "data": None}))
    assert GViT.from_checkpoint(path).classifier.num_freqs == 6


def test_learned_query_variant():
    torch.manual_seed(0)
    enc = tiny_encoder(k=7, mode="queries")
    x = torch.rand(2, 1, SIZE, SIZE)
    g = enc(x)
    assert g.shape == (2, 7, 7)
    torch.testing.assert_close(enc(x, g0=torch.zeros_like(g)), g)  # no noise input: g0 is zero
    assert (g[0] - g[1]).abs().max() > 0  # but it depends on the image
    with pytest.raises(ValueError, match="mode"):
        tiny_encoder(mode="slots")


def test_model_file_roundtrip_and_wrong_kind(tmp_path):
    m = GViT(1, SIZE, 3, num_gaussians=4, patch_size=4)
    m.save(tmp_path / "model.pt", class_names=["a", "b", "c"])
    back = GViT.from_checkpoint(tmp_path / "model.pt")
    assert back.class_names == ["a", "b", "c"]
    x = torch.rand(2, 1, SIZE, SIZE)
    m.eval(), back.eval()
    torch.testing.assert_close(back(x), m(x))
    torch.save({"kind": "gmae2d", "config": {}, "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt is a gmae2d checkpoint \(2D GMAE model\); expected a gvit model\.pt"):
        GViT.from_checkpoint(tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="broken.pt"):
        GViT.from_checkpoint(tmp_path / "broken.pt")


# ----------------------------------------------------------------------------------------------- phases
def _loader(n=4, channels=1, num_classes=3):
    gen = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(channels, SIZE, SIZE, generator=gen), "label": torch.tensor(i % num_classes)} for i in range(n)]
    return DataLoader(items, batch_size=n)


@pytest.mark.parametrize("phase", PHASES)
def test_phase_freezes_what_it_should(phase):
    torch.manual_seed(0)
    model = GViT(1, SIZE, 3, num_gaussians=6, patch_size=4)
    _perturb_head(model.encoder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = build_phase_trainer(phase, model, _loader(), max_epochs=1, device="cpu", lr=1e-2, render_backend="torch")
    trainer.run()
    trains_enc, trains_cls = phase in ("warmup", "joint"), phase in ("classifier", "joint")
    assert all(p.requires_grad == trains_enc for p in model.encoder.parameters())
    assert all(p.requires_grad == trains_cls for p in model.classifier.parameters())
    assert model.encoder.training == trains_enc  # frozen Gaussians: deterministic g0 in the classifier phase
    after = model.state_dict()
    for prefix, trained in (("encoder.", trains_enc), ("classifier.", trains_cls)):
        changed = [k for k in after if k.startswith(prefix) and not torch.equal(after[k], before[k])]
        if trained:
            assert len(changed) > 0.8 * sum(1 for k in after if k.startswith(prefix) and after[k].is_floating_point())
        else:
            assert changed == []
    out = trainer.state.output
    assert torch.isfinite(out["loss"])
    assert (out["loss_rec"] is None) == (phase == "classifier") and (out["loss_cls"] is None) == (phase == "warmup")


# ----------------------------------------------------------------------------------------------- data
def _write_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(tmp_path, classes=("a", "b"), n=3, rgb_first=False):
    rng = np.random.default_rng(0)
    for c in classes:
        for i in range(n):
            shape = (20, 20, 3) if (rgb_first and c == classes[0]) else (20, 20)
            _write_png(tmp_path / "data" / c / f"{i}.png", rng.integers(0, 255, shape, dtype=np.uint8))
    return tmp_path / "data"


def test_a_dataset_path_with_an_unexpanded_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """``--dataset_dir "~/data"`` (quoted) reads the home folder's dataset, and the run records the expanded path
    (it recorded ``<cwd>/~/data``, which the evaluation then could not find)."""
    from medgmae.twod.classification_data import resolve_classification_data

    home = tmp_path / "home"
    _folder(home, n=3)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    data = resolve_classification_data("~/data", default_root=str(tmp_path / "unused"), val_fraction=0.34)
    assert data.class_names == ["a", "b"] and data.settings["dataset_dir"] == str((home / "data").resolve())
    assert not (tmp_path / "~").exists()


def test_image_folder_and_channels(tmp_path, caplog):
    root = _folder(tmp_path, rgb_first=True)
    with caplog.at_level("WARNING", logger="medgmae"):
        data = load_classification_data(root, val_fraction=0.34, seed=0)
    assert data.class_names == ["a", "b"] and data.channels == 3
    # class a is colour, class b grey: the model could tell them apart by the channels alone
    assert (f"dataset {root} mixes grey and colour images (a: 3 of 3 channels; b: 3 of 1 channel): every image is "
            "converted to 3 channels") in caplog.text  # fmt: skip
    assert len(data.train) == 4 and len(data.val) == 2 and {it["label"] for it in data.val} == {0, 1}
    rgb = root / "a" / "0.png"
    ref = np.asarray(Image.open(rgb), dtype=np.float32) / 255.0
    one = make_dataset([{"image": str(rgb), "label": 0}], 20, 1)[0]
    np.testing.assert_allclose(one["image"][0].numpy(), ref @ np.array([0.299, 0.587, 0.114]), atol=1e-6)  # ITU-R 601 luma
    assert one["label"].dtype == torch.long and int(one["label"]) == 0 and one["path"] == str(rgb)
    gray = root / "b" / "0.png"
    three = make_dataset([{"image": str(gray), "label": 1}], 20, 3)[0]["image"]
    ref_g = np.asarray(Image.open(gray), dtype=np.float32) / 255.0
    for ch in range(3):
        np.testing.assert_allclose(three[ch].numpy(), ref_g, atol=1e-6)
    small = make_dataset([{"image": str(gray), "label": 1}], 8, 1)[0]["image"]
    assert small.shape == (1, 8, 8)
    # 20 -> 10 halves: area resampling is the mean of each 2 x 2 block
    half = make_dataset([{"image": str(gray), "label": 1}], 10, 1)[0]["image"]
    np.testing.assert_allclose(half[0].numpy(), ref_g.reshape(10, 2, 10, 2).mean((1, 3)), atol=1e-6)


def test_data_errors_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        scan_image_folder(tmp_path / "empty")
    single = _folder(tmp_path / "s", classes=("only",))
    with pytest.raises(ValueError, match="at least 2 classes.*only"):
        load_classification_data(single)
    root = _folder(tmp_path / "e", classes=("a", "b"))
    (root / "c").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*c holds no images"):
        scan_image_folder(root)
    (root / "d").mkdir()
    with pytest.raises(ValueError, match=rf"class folders {root / 'c'}, {root / 'd'} hold no images"):
        scan_image_folder(root)  # both named at once
    root = _folder(tmp_path / "u")
    (root / "b" / "bad.png").write_bytes(b"\x89PNG\r\n garbage")
    (root / "a" / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"bad\.png: not a readable image") as err:
        load_classification_data(root)
    assert str(err.value).startswith(f"2 unreadable image(s) in dataset {root}") and "text.png" in str(err.value)
    with pytest.raises(ValueError, match="not found"):
        load_classification_data(tmp_path / "missing")


def test_csv_lists_and_errors(tmp_path):
    root = _folder(tmp_path)
    good = tmp_path / "list.csv"
    with open(good, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for c in ("a", "b"):
            for i in range(3):
                w.writerow([f"data/{c}/{i}.png", f"class_{c}", "val" if i == 0 else "train"])
    items, classes = read_csv_list(good)
    assert classes == ["class_a", "class_b"] and len(items) == 6
    data = load_classification_data(good)
    assert len(data.val) == 2 and len(data.train) == 4
    cases = {
        "short.csv": ("data/a/0.png\n", "line 1: expected 'path,label'"),
        "missing.csv": ("path,label\ndata/a/0.png,a\nnope.png,b\n", r"line 3: image not found: .*nope\.png"),
        "one.csv": ("data/a/0.png,a\ndata/a/1.png,a\n", "at least 2 classes"),
        "split.csv": ("data/a/0.png,a,test\ndata/b/0.png,b\n", "split must be"),
        "blank.csv": ("path,label\n", "lists no images"),
        "several.csv": ("data/a/0.png,a,test\nnope.png,b\ndata/b/0.png\n",  # every bad row at once
                        r"line 1: split must be .*; line 2: image not found: .*nope\.png; line 3: expected 'path,label'"),
    }
    for name, (text, msg) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=msg) as info:
            read_csv_list(tmp_path / name)
        assert name in str(info.value)


def test_phantom_slice_task_is_ordered_by_body_region(tmp_path):
    out = write_phantom_slice_task(tmp_path / "task", num_cases=3, num_val_cases=1, image_size=16, volume_shape=(32, 32, 32))
    data = load_classification_data(out)
    assert {"liver", "lungs"} <= set(data.class_names) and data.channels == 1
    assert all("case2_" in it["image"] for it in data.val) and not any("case2_" in it["image"] for it in data.train)
    # anatomy: the lung bases lie above the liver (slice index z grows towards superior)
    z = {c: np.mean([int(it["image"].rsplit("_z", 1)[1][:3]) for it in data.train if it["label"] == i])
         for i, c in enumerate(data.class_names)}  # fmt: skip
    assert z["lungs"] > z["liver"]
    assert Image.open(data.train[0]["image"]).size == (16, 16)
    mtime = (out / "task.json").stat().st_mtime_ns
    write_phantom_slice_task(tmp_path / "task", num_cases=3, num_val_cases=1, image_size=16, volume_shape=(32, 32, 32))
    assert (out / "task.json").stat().st_mtime_ns == mtime  # same parameters: reused, not rewritten


# ----------------------------------------------------------------------------------------------- evaluation
def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 1, 0, 1, 1, 0])
    m = classification_metrics(labels, preds, ["x", "y", "z", "w"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == {"x": pytest.approx(2 / 3), "y": 1.0, "z": 0.0, "w": None}
    assert m["confusion_matrix"][0] == [2, 1, 0, 0] and m["confusion_matrix"][2] == [1, 0, 0, 0]


def test_ellipse_points_are_two_sigma():
    mean, scales, angle = (0.2, -0.3), (0.1, 0.05), 0.7
    pts = np.array(ellipse_points(mean, scales, angle, (64, 64)))
    p = pts / 32.0 - 1.0 - np.array(mean)  # back to the [-1, 1] frame, centred
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    prec = rot @ np.diag(1 / np.square(scales)) @ rot.T
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", p, prec, p), 4.0, rtol=1e-9)


# ----------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.usefixtures("gsplat_cuda")
def test_joint_phase_on_cuda_with_gsplat_and_amp():
    torch.manual_seed(0)
    model = GViT(3, 32, 3, num_gaussians=16, patch_size=4).cuda()
    _perturb_head(model.encoder)
    x = torch.rand(4, 3, 32, 32, device="cuda")
    y = torch.tensor([0, 1, 2, 0], device="cuda")
    # eq. (1) through the gsplat renderer: the one-pass guided gradient equals the separate gradients
    g0 = sample_gaussian_tokens(4, 16, 3, generator=torch.Generator().manual_seed(0), device="cuda")
    rec = ReconstructionLoss()

    def losses():
        g = model.encoder(x, g0=g0)
        return g, rec(model.encoder.decode(g).render((32, 32), backend="gsplat"), x), F.cross_entropy(model.classifier(g), y)

    g, l_rec, l_cls = losses()
    ref = torch.autograd.grad(l_rec, g, retain_graph=True)[0] + 0.1 * torch.autograd.grad(l_cls, g)[0]
    g, l_rec, l_cls = losses()
    guided = guided_backward(l_rec, l_cls, g, model.classifier.parameters(), 0.1)
    torch.testing.assert_close(guided, ref, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = [{"image": x.cpu(), "label": y.cpu()}]
    trainer = build_phase_trainer("joint", model, loader, 1, "cuda", amp=True, render_backend="gsplat")
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss"])
    assert not torch.equal(model.state_dict()["encoder.head.2.weight"], before["encoder.head.2.weight"])
    assert not torch.equal(model.state_dict()["classifier.head.weight"], before["classifier.head.weight"])
