"""GViT: Gaussian encoder and classifier, losses, eq. (1) guidance, and the model file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch.utils.data import DataLoader

from medgmae.twod.gvit import (
    DenoisingGaussianEncoder,
    GaussianTokenEmbedding,
    GaussianViTClassifier,
    GViT,
    decode_gaussians_2d,
    gaussian_dim,
    sample_gaussian_tokens,
)
from medgmae.twod.gvit_train import build_phase_trainer
from medgmae.twod.guidance import ReconstructionLoss, check_gamma, guidance_gradient, guided_backward

from gvit_helpers import SIZE, perturb_head


def tiny_encoder(channels=1, k=6, mode="denoising", **kw):
    return DenoisingGaussianEncoder(channels, SIZE, 4, k, hidden_size=24, num_layers=1, num_heads=2, mlp_ratio=2.0, mode=mode, **kw)


def tiny_classifier(channels=1, num_classes=3):
    return GaussianViTClassifier(channels, num_classes, hidden_size=24, num_layers=2, num_heads=2, mlp_ratio=2.0)


def _joint_losses(enc, clf, x, y, g0, rec):
    g = enc(x, g0=g0)
    rendered = enc.decode(g).render((SIZE, SIZE), backend="torch")
    return g, rec(rendered, x), F.cross_entropy(clf(g), y)


@pytest.mark.parametrize("gamma", [0.1, 0.03, 0.0])
def test_guided_backward_equals_separate_gradients(gamma):
    torch.manual_seed(0)
    enc, clf = tiny_encoder().double(), tiny_classifier().double()
    perturb_head(enc)
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
    perturb_head(enc)
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


@pytest.mark.parametrize("channels", [1, 3])
def test_decoded_gaussians_read_each_field_from_its_place(channels):
    """A raw Gaussian is ``(m_x, m_y, s_x, s_y, phi, colour_1..C, o)``: with only the last entry (the opacity) set
    to 2, the opacity is sigmoid(2) and every colour sigmoid(0) = 0.5; with only colour ``c`` set, only it moves."""
    g = torch.zeros(1, 2, gaussian_dim(channels))
    g[..., 5 + channels] = 2.0
    d = decode_gaussians_2d(g, channels)
    assert torch.allclose(d.opacities, torch.full((1, 2), 1 / (1 + math.exp(-2.0))))
    assert torch.equal(d.colors, torch.full((1, 2, channels), 0.5))
    g = torch.zeros(1, 2, gaussian_dim(channels))
    g[..., 5 + channels - 1] = 2.0
    d = decode_gaussians_2d(g, channels)
    assert torch.equal(d.opacities, torch.full((1, 2), 0.5)) and d.colors[..., -1].gt(0.8).all()


def test_gaussian_tokens_are_the_same_after_a_half_turn():
    """An ellipse is the same after a half turn: the token embedding reads the angle through ``cos 2 phi`` and
    ``sin 2 phi``, so ``phi + pi`` gives the same tokens (float64), and a quarter turn (another ellipse) others."""
    torch.manual_seed(0)
    embed = GaussianTokenEmbedding(1, 16).double()
    g = torch.randn(2, 4, gaussian_dim(1), dtype=torch.float64)
    turned = {}
    for name, turn in (("half", math.pi), ("quarter", math.pi / 2)):
        turned[name] = g.clone()
        turned[name][..., 4] += turn
    torch.testing.assert_close(embed(turned["half"]), embed(g), rtol=0, atol=1e-12)
    assert (embed(turned["quarter"]) - embed(g)).abs().amax(-1).min() > 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_an_eval_prediction_does_not_depend_on_the_batch(seed):
    """In eval mode every image starts from the same seeded ``g0``: an image's Gaussians and logits alone equal
    those it gets at any place in a batch of any size (a ``g0`` drawn per row gave each place other ones)."""
    torch.manual_seed(seed)
    model = GViT(1, SIZE, 3, num_gaussians=6, patch_size=4).eval()
    perturb_head(model.encoder, seed)
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


def test_a_loaded_model_gives_the_same_logits_on_every_call(tmp_path):
    from medgmae.twod.gvit import load_gvit

    GViT(1, SIZE, 3, num_gaussians=4, patch_size=4).save(tmp_path / "model.pt")
    x = torch.rand(2, 1, SIZE, SIZE)
    for model in (load_gvit(tmp_path / "model.pt"), GViT.from_checkpoint(tmp_path / "model.pt")):
        assert not model.training
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
