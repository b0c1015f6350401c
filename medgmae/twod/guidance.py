"""GViT's losses and the classifier-gradient guidance of the paper's equation (1).

Reconstruction: a pixel loss (binary cross-entropy, the paper's best, or MSE) plus ``lambda`` times D-SSIM
(``1 - SSIM``, :class:`monai.losses.SSIMLoss`: Gaussian window of 11 pixels with sigma 1.5 and the constants of
Wang et al. 2004, exactly the D-SSIM the paper cites; the image must be at least ``win_size`` pixels on each side).
Classification: cross-entropy.

Guidance. With ``theta`` the raw Gaussians predicted by the encoder, equation (1) updates them with

    grad~_theta = grad_theta (L_pix + lambda L_perc) - gamma * grad_theta log p(y | theta)
                = grad_theta L_rec + gamma * grad_theta L_cls,          gamma in [0, 0.1],

computed with the classifier's weights held fixed, and back-propagated through the encoder. The sign: the paper
writes the classifier term as "minus gamma times the gradient" of the classification objective and describes it
as the *opposite* of an adversarial attack, i.e. a step along ``grad~`` must *lower* the cross-entropy (its
equation (2), ``grad_rec - gamma w`` with ``w`` the gradient of the true-class logit, and its Algorithm 1,
``rec_grads + gamma * cls_grads``, say the same). Reading equation (1)'s term as the gradient of the
cross-entropy itself would ascend the cross-entropy, which is the attack it reverses; :func:`guidance_gradient`
therefore implements the descent form above, and the tests check that a step along it lowers ``L_cls``.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import SSIMLoss
from torch import Tensor

__all__ = ["ReconstructionLoss", "guidance_gradient", "guided_backward", "check_gamma", "PIXEL_LOSSES", "GAMMA_MAX"]

PIXEL_LOSSES = ("bce", "mse")
#: Upper end of the paper's guidance range; larger values overshoot and produce NaNs (its Section 3.1).
GAMMA_MAX = 0.1


def check_gamma(gamma: float) -> float:
    """Validate the guidance coefficient: a number in ``[0, 0.1]``."""
    if not isinstance(gamma, (int, float)) or not 0.0 <= float(gamma) <= GAMMA_MAX:
        raise ValueError(f"gamma must be in [0, {GAMMA_MAX}] (the paper's range; larger values diverge), got {gamma!r}")
    return float(gamma)


class ReconstructionLoss(nn.Module):
    """``L_rec = L_pix + perceptual_weight * (1 - SSIM)`` between a rendering and its image, both in ``[0, 1]``.

    Args:
        pixel: ``"bce"`` (binary cross-entropy) or ``"mse"``.
        perceptual_weight: ``lambda`` of the D-SSIM term (the paper's 0.1); 0 disables it.
        win_size: SSIM window (11 in Wang et al.); images must be at least this large.
    """

    def __init__(self, pixel: str = "bce", perceptual_weight: float = 0.1, win_size: int = 11) -> None:
        super().__init__()
        if pixel not in PIXEL_LOSSES:
            raise ValueError(f"pixel loss must be one of {PIXEL_LOSSES}, got {pixel!r}")
        if not perceptual_weight >= 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {perceptual_weight}")
        self.pixel, self.perceptual_weight, self.win_size = pixel, float(perceptual_weight), int(win_size)
        self.dssim = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=self.win_size)

    def components(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"pixel", "perceptual", "total"}`` for ``(B, C, H, W)`` ``pred`` and ``target``."""
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(f"pred and target must be matching (B, C, H, W) tensors, got {tuple(pred.shape)} and {tuple(target.shape)}")
        if pred.dtype in (torch.float16, torch.bfloat16):  # BCE and SSIM in at least float32
            pred = pred.float()
        target = target.to(pred.dtype)
        if self.pixel == "bce":
            pix = F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target.clamp(0, 1))
        else:
            pix = F.mse_loss(pred, target)
        out = {"pixel": pix}
        if self.perceptual_weight > 0:
            if min(pred.shape[-2:]) < self.win_size:
                raise ValueError(f"D-SSIM needs images of at least {self.win_size} pixels per side, got {tuple(pred.shape[-2:])}")
            out["perceptual"] = self.dssim(pred, target)
            out["total"] = pix + self.perceptual_weight * out["perceptual"]
        else:
            out["perceptual"] = pix.new_zeros(())
            out["total"] = pix
        return out

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar ``L_rec``."""
        return self.components(pred, target)["total"]


def guidance_gradient(grad_rec: Tensor, grad_cls: Tensor, gamma: float) -> Tensor:
    """Equation (1) on the Gaussians: ``grad_rec - gamma * grad log p(y|theta) = grad_rec + gamma * grad_cls``.

    Args:
        grad_rec: ``dL_rec/dtheta``, any shape.
        grad_cls: ``dL_cls/dtheta`` (cross-entropy, classifier weights fixed), same shape.
        gamma: guidance strength in ``[0, 0.1]``.

    Returns:
        The guided gradient; a descent step along it lowers ``L_cls`` to first order whenever ``gamma > 0``.
    """
    gamma = check_gamma(gamma)
    if grad_rec.shape != grad_cls.shape:
        raise ValueError(f"gradients must have one shape, got {tuple(grad_rec.shape)} and {tuple(grad_cls.shape)}")
    return grad_rec + gamma * grad_cls


def guided_backward(
    rec_loss: Tensor, cls_loss: Tensor, gaussians: Tensor, classifier_params: Iterable[nn.Parameter], gamma: float
) -> Tensor:
    """One backward pass of GViT's joint phase.

    Accumulates into ``.grad``:

    * classifier parameters: ``dL_cls/dphi`` (the reconstruction loss does not reach them);
    * everything upstream of ``gaussians`` (the encoder): the guided gradient of :func:`guidance_gradient`,
      ``dL_rec/dtheta + gamma * dL_cls/dtheta`` with the classifier fixed, chained through ``dtheta/dpsi``.

    Args:
        rec_loss: scalar reconstruction loss, computed from ``gaussians``.
        cls_loss: scalar cross-entropy of the classifier applied to ``gaussians``.
        gaussians: the non-leaf ``(B, K, D)`` raw Gaussians ``theta`` both losses were computed from.
        classifier_params: the classifier's parameters.
        gamma: guidance strength in ``[0, 0.1]``.

    Returns:
        The guided gradient with respect to ``gaussians`` (detached), for logging or inspection.
    """
    gamma = check_gamma(gamma)
    params = [p for p in classifier_params if p.requires_grad]
    # one backward through the classifier: dL_cls/dtheta and dL_cls/dphi
    grads = torch.autograd.grad(cls_loss, [gaussians, *params], allow_unused=True)
    grad_cls_theta = grads[0] if grads[0] is not None else torch.zeros_like(gaussians)
    for p, g in zip(params, grads[1:]):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    # dL_rec/dtheta and gamma * dL_cls/dtheta meet at theta and flow into the encoder together
    seen: dict[str, Tensor] = {}
    hook = gaussians.register_hook(lambda g: seen.__setitem__("grad", g.detach()))
    try:
        torch.autograd.backward([rec_loss, gaussians], [None, gamma * grad_cls_theta.detach()])
    finally:
        hook.remove()
    return seen["grad"]
