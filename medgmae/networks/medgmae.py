"""MedGMAE: a masked autoencoder whose decoder predicts 3D Gaussians that are rendered back to the volume.

The encoder is :class:`~medgmae.networks.vit.MaskedViTEncoder` (it sees the visible patches only). The decoder
takes ``[cls] + K learnable Gaussian query tokens + visible tokens`` (projected to the decoder width, the visible
ones with the sin-cos embedding of their patch positions), runs MONAI transformer blocks and reads one Gaussian
off every query token with four linear heads (centre, scale, rotation, intensity). The Gaussians live in the
normalised ``[0, 1]^3`` frame; they are moved to the voxel frame and rendered with
:func:`medgmae.render.render_volume`. The loss is the MSE on the masked voxels.

MedGMAE* (``multi_level=True``) adds coarse-to-fine residual levels; see :class:`ResidualGaussianLevel`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from medgmae.cli_types import as_bool
from medgmae.render import BACKENDS, as_cutoff
from medgmae.gaussians import INTENSITY_BIAS_INIT, SCALE_BIAS_INIT, Gaussians3D, activate_gaussian_heads
from medgmae.networks.mae_base import (
    MAEOutput,
    MaskedAutoencoder,
    full_precision,
    masked_mse,
    patch_mask_to_voxels,
    sincos_embedding_3d,
)
from medgmae.networks.vit import batch_tokens
from medgmae.whole_numbers import positive_count, whole_sizes

__all__ = [
    "MAEOutput",
    "MaskedAutoencoder",
    "MaskedAutoencoder3D",
    "MedGMAE",
    "ResidualGaussianLevel",
    "INTENSITY_RESIDUALS",
    "masked_mse",
    "patch_mask_to_voxels",
    "sincos_embedding_3d",
]

#: How a MedGMAE* child's intensity follows its parent's (see :class:`ResidualGaussianLevel`).
INTENSITY_RESIDUALS = ("logit", "clamp")
#: The rule a model is built with unless told otherwise (the first of :data:`INTENSITY_RESIDUALS`).
DEFAULT_LEVEL_INTENSITY = INTENSITY_RESIDUALS[0]
#: MedGMAE*'s default level multipliers ``m_l``: level ``l`` has ``m_l * K`` Gaussians.
LEVEL_MULTIPLIERS = (1, 2, 4)

#: The 3D masked autoencoder base of MedGMAE and the voxel-MAE baseline (``spatial_dims`` defaults to 3).
MaskedAutoencoder3D = MaskedAutoencoder


class ResidualGaussianLevel(nn.Module):
    """One MedGMAE* refinement level: every parent Gaussian spawns ``ratio`` children through residual heads.

    For a child of parent ``p`` (level ``l - 1``) whose level-0 ancestor has relative scale ``s_0``:

    * ``s_l = cap * clamp(s_0 + tanh(r_s) * sigma_scale - delta, min_rel_scale)`` (``s_0`` is the level-0 scale
      head's sigmoid output, i.e. scales are measured in units of the scale cap),
    * ``mu_l = mu_p + tanh(r_mu) * sigma_mu`` (normalised frame),
    * ``I_l = sigmoid(logit(I_p) + tanh(r_I) * sigma_intensity)`` (``intensity_residual="logit"``, the default),
      or the paper's literal ``I_l = clamp(I_p + tanh(r_I) * sigma_intensity, 0, 1)`` (``"clamp"``),
    * ``q_l = normalise(q_p + tanh(r_q) * sigma_rotation)``.

    The residuals ``r`` come from four linear heads on child features: the parent's feature plus a learnable
    child embedding, passed through a pre-norm residual MLP.

    Why the logit residual (a deviation from the paper, which gives no activation): the levels' densities add up,
    so training first dims every child; under ``"clamp"`` a child that reaches 0 has no gradient left and stays
    off for good. A MedGMAE* (K = 146, levels 1 / 2 / 4) trained 150 epochs on phantoms ended with all of level 2
    and a third of level 1 at intensity 0 (``bench/zero_shot_levels.py``). In logit space a child keeps a
    gradient at any intensity, within a factor ``exp(sigma_intensity)`` of its parent's odds either way.

    Args:
        dim: feature width.
        ratio: children per parent.
        delta: the level's scale decrement ``Delta s_l``.
        scale_cap: the model's scale cap (normalised frame).
        sigma_scale, sigma_mu, sigma_intensity, sigma_rotation: residual ranges (``sigma_intensity`` in logits
            for ``intensity_residual="logit"``; default 3.0 there and 0.1 for ``"clamp"``).
        min_rel_scale: lower clamp of the relative scale (keeps scales positive).
        intensity_residual: ``"logit"`` or ``"clamp"`` (see above).
    """

    def __init__(
        self,
        dim: int,
        ratio: int,
        delta: float,
        scale_cap: float,
        sigma_scale: float = 0.1,
        sigma_mu: float = 0.05,
        sigma_intensity: float | None = None,
        sigma_rotation: float = 0.1,
        min_rel_scale: float = 1e-3,
        intensity_residual: str = "logit",
    ) -> None:
        super().__init__()
        if ratio < 1:
            raise ValueError(f"children per parent must be >= 1, got {ratio}")
        if intensity_residual not in INTENSITY_RESIDUALS:
            raise ValueError(f"intensity_residual must be one of {INTENSITY_RESIDUALS}, got {intensity_residual!r}")
        self.intensity_residual = intensity_residual
        if sigma_intensity is None:
            sigma_intensity = 3.0 if intensity_residual == "logit" else 0.1
        self.ratio, self.delta, self.scale_cap = int(ratio), float(delta), float(scale_cap)
        self.sigma_scale, self.sigma_mu = float(sigma_scale), float(sigma_mu)
        self.sigma_intensity, self.sigma_rotation = float(sigma_intensity), float(sigma_rotation)
        self.min_rel_scale = float(min_rel_scale)
        self.child_embed = nn.Parameter(torch.randn(1, 1, self.ratio, dim) * 0.02)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.heads = nn.Linear(dim, 3 + 3 + 4 + 1)  # mu, scale, rotation, intensity residuals
        nn.init.normal_(self.heads.weight, std=0.01)
        nn.init.zeros_(self.heads.bias)

    def refine(self, parent: Gaussians3D, root_rel_scale: Tensor, residuals: Tensor) -> tuple[Gaussians3D, Tensor]:
        """Children from ``parent`` (``(B, P)`` Gaussians) and raw residuals ``(B, P * ratio, 11)``.

        Args:
            parent: parent Gaussians, normalised frame.
            root_rel_scale: ``(B, P, 3)`` level-0 ancestors' relative scales (``scale / cap``).
            residuals: ``(B, P * ratio, 11)`` raw head outputs, children of parent ``p`` at ``p * ratio + c``.

        Returns:
            ``(children, children_root_rel_scale)``.
        """
        r = self.ratio
        rep = lambda t: t.repeat_interleave(r, dim=1)  # noqa: E731
        t = torch.tanh(residuals)
        root = rep(root_rel_scale)
        rel = (root + t[..., 3:6] * self.sigma_scale - self.delta).clamp_min(self.min_rel_scale)
        children = Gaussians3D(
            means=rep(parent.means) + t[..., 0:3] * self.sigma_mu,
            scales=rel * self.scale_cap,
            quats=F.normalize(rep(parent.quats) + t[..., 6:10] * self.sigma_rotation, dim=-1, eps=1e-8),
            intensities=self._child_intensities(rep(parent.intensities), t[..., 10]),
        )
        return children, root

    def _child_intensities(self, parent: Tensor, t: Tensor) -> Tensor:
        """Children's intensities from their parents' ``parent`` and the tanh'd residuals ``t`` (same shape)."""
        if self.intensity_residual == "clamp":
            return (parent + t * self.sigma_intensity).clamp(0.0, 1.0)
        eps = 1e-6  # keeps the logit finite for a parent at exactly 0 or 1 (e.g. a clamp-trained one)
        return torch.sigmoid(torch.logit(parent.clamp(eps, 1.0 - eps)) + t * self.sigma_intensity)

    def forward(
        self, features: Tensor, parent: Gaussians3D, root_rel_scale: Tensor
    ) -> tuple[Tensor, Gaussians3D, Tensor]:
        """``features`` ``(B, P, dim)`` of the parents -> ``(child features, children, child root scales)``."""
        b, p, c = features.shape
        h = (features.unsqueeze(2) + self.child_embed).reshape(b, p * self.ratio, c)
        h = h + self.mlp(h)
        children, root = self.refine(parent, root_rel_scale, self.heads(h))
        return h, children, root


def _level_multipliers(value) -> list[int]:
    """``value`` as a list of ints >= 1 (each a :func:`~medgmae.whole_numbers.whole_number`: ``2.0`` is 2, ``2.5``
    is refused, not truncated); ``ValueError`` naming ``level_multipliers`` otherwise."""
    what = "level_multipliers must be positive whole numbers, such as (1, 2, 4)"
    mults = list(whole_sizes(value, what))
    if min(mults, default=1) < 1:
        raise ValueError(f"{what}, got {value!r}")
    return mults


def _check_levels(mults: list[int], deltas: list[float]) -> None:
    """Raise ``ValueError`` unless the residual levels' multipliers start at 1, each dividing the next, with one
    scale decrement per further level."""
    if not mults or mults[0] != 1 or len(deltas) != len(mults) - 1:
        raise ValueError(
            f"level_multipliers must start with 1 and level_deltas have one entry per further level, "
            f"got {mults} and {deltas}"
        )
    if any(b % a != 0 or b < a for a, b in zip(mults, mults[1:])):
        raise ValueError(f"each level multiplier must divide the next, got {mults}")


class MedGMAE(MaskedAutoencoder):
    """MedGMAE (and MedGMAE* with ``multi_level=True``).

    Args:
        img_size, patch_size, in_channels, model_size, mask_ratio, loss_on_all_voxels: see
            :class:`~medgmae.networks.mae_base.MaskedAutoencoder`.
        num_gaussians: K, the number of Gaussian query tokens (level-0 Gaussians for MedGMAE*), independent of
            the mask.
        scale_cap: largest Gaussian standard deviation as a fraction of the volume's extent.
        min_scale: lower clamp of the scales (normalised frame), keeps the renderer's inputs positive.
        cutoff: renderer cutoff in Mahalanobis distance.
        render_backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        multi_level: MedGMAE*: add the coarse-to-fine residual levels.
        level_multipliers: ``m_l`` for the levels (level ``l`` has ``m_l * K`` Gaussians); each must divide the
            next. ``m_0`` must be 1.
        level_deltas: scale decrements ``Delta s_l`` of levels 1, 2, ...
        sigma_mu: MedGMAE* centre residual range (normalised frame).
        level_intensity: how a MedGMAE* child's intensity follows its parent's: ``"logit"`` (default) or the
            paper's literal ``"clamp"`` (see :class:`ResidualGaussianLevel`; checkpoints written before the option
            load as ``"clamp"``, the rule they were trained with).
    """

    kind = "medgmae"
    #: :meth:`from_checkpoint` rebuilds MedGMAE or MedGMAE* (kind ``medgmae[-star]``).
    checkpoint_kinds = ("medgmae", "medgmae-star")

    def __init__(
        self,
        img_size: Sequence[int] | int = 96,
        patch_size: Sequence[int] | int = 12,
        in_channels: int = 1,
        model_size: str = "base",
        mask_ratio: float = 0.75,
        loss_on_all_voxels: bool = False,
        num_gaussians: int = 512,
        scale_cap: float = 0.2,
        min_scale: float = 1e-3,
        cutoff: float = 3.0,
        render_backend: str = "auto",
        multi_level: bool = False,
        level_multipliers: Sequence[int] = LEVEL_MULTIPLIERS,
        level_deltas: Sequence[float] = (0.02, 0.05),
        sigma_mu: float = 0.05,
        level_intensity: str = DEFAULT_LEVEL_INTENSITY,
    ) -> None:
        super().__init__(img_size, patch_size, in_channels, model_size, mask_ratio, loss_on_all_voxels)
        if in_channels != 1:
            raise ValueError(f"MedGMAE renders one intensity channel; in_channels must be 1, got {in_channels}")
        num_gaussians = positive_count(num_gaussians, "num_gaussians")
        if not 0.0 < float(scale_cap) <= 1.0 or not 0.0 < float(min_scale) < float(scale_cap):
            raise ValueError(f"need 0 < min_scale < scale_cap <= 1, got min_scale={min_scale}, scale_cap={scale_cap}")
        multi_level = as_bool(multi_level, "multi_level")  # a bundle flag's 'false' is text, which bool() reads as True
        mults, deltas = _level_multipliers(level_multipliers), [float(d) for d in level_deltas]
        if multi_level:
            _check_levels(mults, deltas)
        if level_intensity not in INTENSITY_RESIDUALS:
            raise ValueError(f"level_intensity must be one of {INTENSITY_RESIDUALS}, got {level_intensity!r}")
        if render_backend not in BACKENDS:
            raise ValueError(f"render_backend must be one of {BACKENDS}, got {render_backend!r}")
        self.num_gaussians, self.scale_cap, self.min_scale = int(num_gaussians), float(scale_cap), float(min_scale)
        self.cutoff, self.render_backend = as_cutoff(cutoff), render_backend
        self.multi_level, self.level_multipliers, self.level_deltas = multi_level, mults, deltas
        self.sigma_mu, self.level_intensity = float(sigma_mu), level_intensity
        if self.multi_level:
            self.kind = "medgmae-star"
        dec = self.preset.decoder_hidden_size
        # unit-scale query tokens: with MAE's 0.02 the K tokens start nearly equal and so do their Gaussians
        self.query_tokens = nn.Parameter(torch.randn(1, self.num_gaussians, dec))
        self.head_mean = nn.Linear(dec, 3)
        self.head_scale = nn.Linear(dec, 3)
        self.head_rotation = nn.Linear(dec, 4)
        self.head_intensity = nn.Linear(dec, 1)
        self._init_heads()
        self.levels = nn.ModuleList(
            [
                ResidualGaussianLevel(dec, b // a, d, self.scale_cap, sigma_mu=self.sigma_mu,
                                      min_rel_scale=min_scale / scale_cap, intensity_residual=level_intensity)  # fmt: skip
                for a, b, d in zip(mults, mults[1:], deltas)
            ]
            if self.multi_level
            else []
        )

    def _init_heads(self) -> None:
        # centres spread over the volume (xavier); scale, rotation and intensity start from their biases (small
        # weights, where the paper uses xavier for every head), so that every Gaussian begins at 0.2 of the scale cap
        # and intensity sigmoid(-0.405) = 0.4 (the paper's bias; its text rounds the value to 0.5). The rotation bias
        # is the identity quaternion (the paper's is 0). See the bundle README's comparison with the paper.
        nn.init.xavier_uniform_(self.head_mean.weight)
        nn.init.zeros_(self.head_mean.bias)
        for head in (self.head_scale, self.head_rotation, self.head_intensity):
            nn.init.normal_(head.weight, std=0.02)
        nn.init.constant_(self.head_scale.bias, SCALE_BIAS_INIT)
        nn.init.constant_(self.head_intensity.bias, INTENSITY_BIAS_INIT)
        with torch.no_grad():
            self.head_rotation.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # start near the identity

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(
            num_gaussians=self.num_gaussians,
            scale_cap=self.scale_cap,
            min_scale=self.min_scale,
            cutoff=self.cutoff,
            render_backend=self.render_backend,
            multi_level=self.multi_level,
            level_multipliers=list(self.level_multipliers),
            level_deltas=list(self.level_deltas),
            sigma_mu=self.sigma_mu,
            level_intensity=self.level_intensity,
        )
        return cfg

    @classmethod
    def upgrade_config(cls, config: dict) -> dict:
        """A checkpoint's config from before ``level_intensity`` existed names the rule it was trained with: clamp
        for MedGMAE*, and for plain MedGMAE (which has no levels, so the rule changes nothing) today's default, so
        that such a run resumes as it is built today."""
        if "level_intensity" not in config:
            rule = "clamp" if config.get("multi_level") else DEFAULT_LEVEL_INTENSITY
            return {**config, "level_intensity": rule}
        return config

    @property
    def total_gaussians(self) -> int:
        """Gaussians per volume: ``K`` or ``sum(m_l) * K`` for MedGMAE*."""
        return self.num_gaussians * (sum(self.level_multipliers) if self.multi_level else 1)

    def decode_gaussians(self, latent: Tensor, ids_restore: Tensor) -> list[Gaussians3D]:
        """Decoder: ``[cls] + queries + visible`` tokens -> Gaussians of each level (normalised frame).

        Args:
            latent: ``(B, 1 + N_vis, C_enc)`` encoder output, class token first.
            ids_restore: ``(B, N)`` from the encoder.

        Returns:
            One :class:`Gaussians3D` per level (one for MedGMAE), level ``l`` with ``m_l * K`` Gaussians.
        """
        b, k = latent.shape[0], self.num_gaussians
        x = self.decoder_embed(latent)
        visible = x[:, 1:] + self.visible_positions(ids_restore, x.shape[1] - 1)
        tokens = torch.cat([x[:, :1], batch_tokens(self.query_tokens, b), visible], dim=1)
        feats = full_precision(self.run_decoder(tokens)[:, 1 : 1 + k])
        # the heads run in float32 even under autocast: bf16 centres would be ~0.4 voxel coarse at 96^3
        with torch.autocast(device_type=feats.device.type, enabled=False):
            g = activate_gaussian_heads(
                self.head_mean(feats), self.head_scale(feats), self.head_rotation(feats), self.head_intensity(feats), 1.0
            )
            rel_scale = g.scales  # sigmoid output: scale in units of the cap
            g.scales = (rel_scale * self.scale_cap).clamp_min(self.min_scale)
            levels = [g]
            for level in self.levels:
                feats, child, rel_scale = level(feats, levels[-1], rel_scale)
                levels.append(child)
        return levels

    def render(self, gaussians: Gaussians3D) -> Tensor:
        """Render normalised-frame Gaussians to ``(B, 1, D, H, W)`` at the model's input size, in the Gaussians'
        precision also under autocast (a non-cubic input's covariances are products that bf16 would round)."""
        with torch.autocast(device_type=gaussians.means.device.type, enabled=False):
            voxel = gaussians.to_voxel(self.img_size)
            return voxel.render(self.img_size, self.cutoff, self.render_backend).unsqueeze(1)

    def reconstruct(self, latent: Tensor, ids_restore: Tensor) -> tuple[Tensor, Gaussians3D]:
        """All levels are rendered together (their densities add up)."""
        gaussians = Gaussians3D.cat(self.decode_gaussians(latent, ids_restore), dim=1)
        return self.render(gaussians), gaussians

    @torch.no_grad()
    def predict_gaussians(self, x: Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None) -> Gaussians3D:
        """Zero-shot use: the Gaussians (normalised frame, all levels for MedGMAE*) describing ``x``.

        Args:
            x: ``(B, 1, D, H, W)`` volume scaled to ``[0, 1]``.
            mask_ratio: fraction of patches hidden (0: the encoder sees everything).
            generator: random generator for the mask when ``mask_ratio > 0``.

        Returns:
            :class:`Gaussians3D` with ``total_gaussians`` Gaussians per volume, float32 (float64 for a float64
            model).
        """
        self._check_input(x)
        latent, _, ids_restore = self.encoder(x, mask_ratio=self._mask_ratio(mask_ratio), generator=generator)
        return Gaussians3D.cat(self.decode_gaussians(latent, ids_restore), dim=1)

