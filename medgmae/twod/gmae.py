"""2D GMAE: an image masked autoencoder whose decoder predicts 3D Gaussians that are splatted back to the image.

The encoder is :class:`~medgmae.networks.vit.MaskedViTEncoder` over 2D patches (it sees the visible patches
only). The decoder is the query-token decoder of the 3D MedGMAE (:class:`~medgmae.networks.medgmae.MedGMAE`):
``[cls] + K learnable query tokens + visible tokens`` (projected to the decoder width, the visible ones with the
sin-cos embedding of their patch positions) through MONAI transformer blocks; one Gaussian of 14 numbers is read
off every query token. Centre and scale follow the GMAE paper; the rotation does not:

* centre ``(x, y, z) = tanh(.)``: ``x, y`` in the ``[-1, 1]`` image-plane frame of
  :func:`~medgmae.twod.render.render_gaussians_2d` (the image spans 2 units), ``z`` the depth;
* scale ``c * sigmoid(.)`` with the cap ``c`` in the same units (``c = 1``: a standard deviation of at most half
  the image width). The paper ablates ``c`` and finds that it "has only a small effect on the classification
  performance" while small caps "greatly hinder the reconstruction quality"; it names no best value;
* rotation: L2-normalised quaternion ``(w, x, y, z)``, as in MedGMAE and 3D Gaussian splatting. The GMAE paper
  passes the quaternion through a sigmoid; a quaternion of four positive components reaches only the rotations
  that have such a representative (a turn of -30 degrees about one axis, ``(cos 15, -sin 15, 0, 0)`` or its
  negative, has none), so the sign-free normalisation is kept;
* colour (``in_channels`` values) and opacity: sigmoid.

The Gaussians are rendered with a fixed orthographic camera (front-to-back alpha compositing) and the loss is the
MSE on the masked pixels only (no normalised-patch target: every Gaussian can reach every pixel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from medgmae.checkpoint import run_record
from medgmae.gaussians import SCALE_BIAS_INIT
from medgmae.networks.mae_base import MaskedAutoencoder, full_precision, sincos_embedding_2d
from medgmae.twod.render import render_gaussians_2d
from medgmae.whole_numbers import positive_count

__all__ = ["SplatGaussians", "GMAE2D", "activate_splat_heads", "sincos_embedding_2d", "SCALE_CAP_MAX", "scale_cap_check"]

GMAE2D_KIND = "gmae2d"

#: Largest ``scale_cap`` a training run takes: a standard deviation of the image's extent (the image spans 2 in
#: image-plane units), as the 3D bundle's ``scale_cap`` is at most 1 (the crop's extent). A Gaussian wider than the
#: image is flat over it; far wider caps make the first steps' gradients overflow (``1e10`` diverges at once).
SCALE_CAP_MAX = 2.0

#: The lower clamp of the scales (:class:`GMAE2D`'s ``min_scale``), below which a cap leaves no room.
MIN_SCALE = 1e-4
#: Standard deviation of the query tokens at initialisation. With MAE's 0.02 the K tokens start nearly equal and
#: the decoder predicts K nearly identical Gaussians; unit-scale tokens start them apart (on phantom slices, 80
#: CPU steps: full-image MSE 0.017 with 1.0 against 0.023 with 0.02, Gaussian centres spread 3x wider).
QUERY_INIT_STD = 1.0


@dataclass
class SplatGaussians:
    """A batch of coloured 3D Gaussians in the image-plane frame of :func:`render_gaussians_2d`.

    Attributes:
        means: ``(B, K, 3)`` centres ``(x, y, z)``; ``x, y`` in ``[-1, 1]``, ``z`` depth (smaller is nearer).
        scales: ``(B, K, 3)`` positive standard deviations.
        quats: ``(B, K, 4)`` unit quaternions ``(w, x, y, z)``.
        colors: ``(B, K, C)``.
        opacities: ``(B, K)`` in ``[0, 1]``.
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    colors: Tensor
    opacities: Tensor

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.means, self.scales, self.quats, self.colors, self.opacities

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    def detach(self) -> "SplatGaussians":
        return SplatGaussians(*(t.detach() for t in self.tensors()))

    def take(self, index: Tensor) -> "SplatGaussians":
        """The Gaussians at ``index`` ``(B, K')`` along the Gaussian dimension."""
        pick = lambda t: torch.gather(t, 1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand(*index.shape, *t.shape[2:]))  # noqa: E731
        return SplatGaussians(*(pick(t) for t in self.tensors()))

    def depth_order(self) -> Tensor:
        """``(B, K)`` indices sorting the Gaussians front to back (stable, as the renderer composites them)."""
        return torch.argsort(self.means[..., 2], dim=1, stable=True)

    def render(self, image_size: Sequence[int], backend: str = "auto", background: Tensor | None = None) -> Tensor:
        """``(B, C, H, W)`` rendering with :func:`render_gaussians_2d`."""
        return render_gaussians_2d(*self.tensors(), image_size=image_size, backend=backend, background=background)

    def as_tensor(self) -> Tensor:
        """``(B, K, 3 + 3 + 4 + C + 1)``: the paper's 14 numbers per Gaussian for RGB."""
        return torch.cat([self.means, self.scales, self.quats, self.colors, self.opacities.unsqueeze(-1)], -1)


def activate_splat_heads(
    raw_means: Tensor,
    raw_scales: Tensor,
    raw_quats: Tensor,
    raw_colors: Tensor,
    raw_opacities: Tensor,
    scale_cap: float = 1.0,
    min_scale: float = 1e-4,
) -> SplatGaussians:
    """GMAE's head activations: tanh centres, ``scale_cap * sigmoid`` scales (clamped below at ``min_scale``),
    L2-normalised quaternions, sigmoid colours and opacities.

    Args:
        raw_means: ``(B, K, 3)``.
        raw_scales: ``(B, K, 3)``.
        raw_quats: ``(B, K, 4)``.
        raw_colors: ``(B, K, C)``.
        raw_opacities: ``(B, K)`` or ``(B, K, 1)``.
        scale_cap: the cap ``c`` (image-plane units, the image spans 2).
        min_scale: lower clamp keeping the scales positive.

    Returns:
        :class:`SplatGaussians`.
    """
    if raw_opacities.dim() == 3:
        raw_opacities = raw_opacities.squeeze(-1)
    return SplatGaussians(
        means=torch.tanh(raw_means),
        scales=(scale_cap * torch.sigmoid(raw_scales)).clamp_min(min_scale),
        quats=F.normalize(raw_quats, dim=-1, eps=1e-8),
        colors=torch.sigmoid(raw_colors),
        opacities=torch.sigmoid(raw_opacities),
    )


def scale_cap_check(value: object) -> None:
    """The 2D bundle's check of ``scale_cap`` (``checked_settings``): a number in ``(MIN_SCALE, SCALE_CAP_MAX]``.

    Raises:
        ValueError: naming the value and the bound, e.g. ``expected a number in (0.0001, 2] ..., got 1e+30``.
    """
    from medgmae.setting_kinds import kind_problem

    if problem := kind_problem(value, "positive_float"):
        raise ValueError(problem)
    if not MIN_SCALE < float(value) <= SCALE_CAP_MAX:
        raise ValueError(f"expected a number in ({MIN_SCALE:g}, {SCALE_CAP_MAX:g}] (a standard deviation of at most the "
                         f"image's extent, which spans 2; above the scale clamp {MIN_SCALE:g}), got {value!r}")  # fmt: skip


class GMAE2D(MaskedAutoencoder):
    """Gaussian masked autoencoder for 1- or 3-channel images.

    The encoder, the decoder trunk, masking, the loss and (de)serialisation are
    :class:`~medgmae.networks.mae_base.MaskedAutoencoder`'s (``spatial_dims=2``); this class adds the query tokens,
    the Gaussian heads and the splatting renderer.

    Args:
        img_size: ``(H, W)`` (or one int) of the input images.
        patch_size: patch edge(s); must divide ``img_size``.
        in_channels: image channels (1 for CT/MR/X-ray, 3 for RGB); the Gaussians' colours have as many.
        model_size: a key of :data:`~medgmae.networks.vit.VIT_PRESETS`.
        mask_ratio: fraction of patches hidden from the encoder during training (paper: 0.75).
        num_gaussians: K, the number of query tokens and Gaussians, independent of the mask.
        scale_cap: the cap ``c`` of ``c * sigmoid(s)``, in image-plane units (the image spans 2).
        min_scale: lower clamp of the scales.
        render_backend: ``"auto"``, ``"torch"`` or ``"gsplat"``.
        loss_on_all_pixels: score every pixel instead of the masked ones only (ablation; the paper's default
            scores the masked pixels).
        data_settings: the training data's settings that the architecture does not show (the bundle's ``flip`` and
            ``window``), recorded in ``model.pt`` / ``encoder.pt`` / ``best_model.pt`` as ``extra["data"]`` and
            read back by :meth:`from_checkpoint` as :attr:`data_settings`; ``medgmae-2d`` windows NIfTI/DICOM
            images with the recorded ``window``. Not part of :meth:`config`.
        run_settings: the training run's seed and data loader workers, ``{"seed", "num_workers"}``
            (:func:`medgmae.checkpoint.run_record`), recorded in those files as ``extra["run"]`` and read back as
            :attr:`run_settings`. Not part of :meth:`config`.
    """

    kind = GMAE2D_KIND

    def __init__(
        self,
        img_size: Sequence[int] | int = 224,
        patch_size: Sequence[int] | int = 16,
        in_channels: int = 3,
        model_size: str = "base",
        mask_ratio: float = 0.75,
        num_gaussians: int = 256,
        scale_cap: float = 1.0,
        min_scale: float = MIN_SCALE,
        render_backend: str = "auto",
        loss_on_all_pixels: bool = False,
        data_settings: Mapping | None = None,
        run_settings: Mapping | None = None,
    ) -> None:
        num_gaussians = positive_count(num_gaussians, "num_gaussians")
        if not (0.0 < float(min_scale) < float(scale_cap)):
            raise ValueError(f"need 0 < min_scale < scale_cap, got min_scale={min_scale}, scale_cap={scale_cap}")
        if render_backend not in ("auto", "torch", "gsplat"):
            raise ValueError(f"render_backend must be 'auto', 'torch' or 'gsplat', got {render_backend!r}")
        super().__init__(img_size, patch_size, in_channels, model_size, mask_ratio, loss_on_all_pixels, spatial_dims=2)
        self.num_gaussians, self.scale_cap, self.min_scale = int(num_gaussians), float(scale_cap), float(min_scale)
        self.render_backend = render_backend
        self.data_settings = dict(data_settings) if data_settings is not None else None
        self.run_settings = run_record(run_settings) if run_settings is not None else None
        dec = self.preset.decoder_hidden_size
        self.query_tokens = nn.Parameter(torch.randn(1, self.num_gaussians, dec) * QUERY_INIT_STD)
        self.head_mean = nn.Linear(dec, 3)
        self.head_scale = nn.Linear(dec, 3)
        self.head_rotation = nn.Linear(dec, 4)
        self.head_color = nn.Linear(dec, self.in_channels)
        self.head_opacity = nn.Linear(dec, 1)
        self._init_heads()

    @property
    def loss_on_all_pixels(self) -> bool:
        """Whether the loss scores every pixel (the base class's ``loss_on_all_voxels``)."""
        return self.loss_on_all_voxels

    def _init_heads(self) -> None:
        for head in (self.head_mean, self.head_scale, self.head_rotation, self.head_color, self.head_opacity):
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)
        # sigmoid(-1.386) = 0.2 of the cap for a zero input; with the Xavier weights the starting scales spread
        # widely around it (unlike MedGMAE's small-weight heads, where every Gaussian starts near 0.2)
        nn.init.constant_(self.head_scale.bias, SCALE_BIAS_INIT)
        with torch.no_grad():
            self.head_rotation.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), saved beside the weights."""
        cfg = super().config()
        del cfg["loss_on_all_voxels"]
        cfg.update(
            num_gaussians=self.num_gaussians,
            scale_cap=self.scale_cap,
            min_scale=self.min_scale,
            render_backend=self.render_backend,
            loss_on_all_pixels=self.loss_on_all_pixels,
        )
        return cfg

    # ------------------------------------------------------------------ model
    def decode_gaussians(self, latent: Tensor, ids_restore: Tensor) -> SplatGaussians:
        """``[cls] + queries + visible`` decoder tokens -> K Gaussians.

        Args:
            latent: ``(B, 1 + N_vis, C_enc)`` encoder output, class token first.
            ids_restore: ``(B, N)`` from the encoder.

        Returns:
            :class:`SplatGaussians` with ``num_gaussians`` Gaussians per image, float32 (float64 for a float64
            model).
        """
        b, k = latent.shape[0], self.num_gaussians
        x = self.decoder_embed(latent)
        visible = x[:, 1:] + self.visible_positions(ids_restore, x.shape[1] - 1)
        tokens = torch.cat([x[:, :1], self.query_tokens.expand(b, -1, -1), visible], dim=1)
        feats = full_precision(self.run_decoder(tokens)[:, 1 : 1 + k])
        # the heads run in float32 even under autocast (as the 3D model's): bf16 centres are ~0.4 px coarse at 224
        with torch.autocast(device_type=feats.device.type, enabled=False):
            return activate_splat_heads(
                self.head_mean(feats), self.head_scale(feats), self.head_rotation(feats), self.head_color(feats),
                self.head_opacity(feats), self.scale_cap, self.min_scale,
            )  # fmt: skip

    def render(self, gaussians: SplatGaussians, image_size: Sequence[int] | None = None) -> Tensor:
        """``(B, C, H, W)`` rendering at ``image_size`` (default: the model's input size) on a black background, in
        the Gaussians' precision also under autocast (a bf16 pixel grid cannot hold x.5 beyond 128)."""
        with torch.autocast(device_type=gaussians.means.device.type, enabled=False):
            return gaussians.render(self.img_size if image_size is None else image_size, self.render_backend)

    def reconstruct(self, latent: Tensor, ids_restore: Tensor) -> tuple[Tensor, SplatGaussians]:
        """Decode and render: ``((B, C, H, W) prediction, SplatGaussians)``; :meth:`forward` is the base class's
        (MSE on the masked pixels, ``mask`` ``(B, 1, H, W)``, 1 = hidden from the encoder)."""
        gaussians = self.decode_gaussians(latent, ids_restore)
        return self.render(gaussians), gaussians

    @torch.no_grad()
    def predict_gaussians(self, x: Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None) -> SplatGaussians:
        """Zero-shot use: the Gaussians describing ``x`` (the encoder sees every patch by default).

        Args:
            x: ``(B, C, H, W)`` images scaled to ``[0, 1]``.
            mask_ratio: fraction of patches hidden.
            generator: random generator for the mask when ``mask_ratio > 0``.

        Returns:
            :class:`SplatGaussians`, float32 (float64 for a float64 model), as :meth:`decode_gaussians`.
        """
        self._check_input(x)
        latent, _, ids_restore = self.encoder(x, mask_ratio=self._mask_ratio(mask_ratio), generator=generator)
        return self.decode_gaussians(latent, ids_restore)
