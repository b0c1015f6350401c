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

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from torch import Tensor

from medgmae.gaussians import INTENSITY_BIAS_INIT, SCALE_BIAS_INIT, Gaussians3D, activate_gaussian_heads
from medgmae.networks.vit import VIT_PRESETS, MaskedViTEncoder

__all__ = [
    "MAEOutput",
    "MaskedAutoencoder3D",
    "MedGMAE",
    "ResidualGaussianLevel",
    "masked_mse",
    "patch_mask_to_voxels",
    "sincos_embedding_3d",
    "load_model_checkpoint",
    "ENCODER_KIND",
]

#: ``kind`` of the encoder-only file (``encoder.pt``) read by fine-tuning.
ENCODER_KIND = "medgmae-encoder"


@dataclass
class MAEOutput:
    """What a masked autoencoder's ``forward`` returns.

    Attributes:
        loss: scalar MSE (masked voxels only unless the model was built with ``loss_on_all_voxels=True``).
        pred: ``(B, C, D, H, W)`` reconstruction of the whole volume (the rendered Gaussians for MedGMAE).
        mask: ``(B, 1, D, H, W)`` voxel mask, 1 where the voxel's patch was hidden from the encoder.
        patch_mask: ``(B, N)`` patch mask in the patch-embedding order, 1 = masked.
        gaussians: the predicted :class:`~medgmae.gaussians.Gaussians3D` in the normalised frame (``None`` for
            the voxel-MAE baseline).
    """

    loss: Tensor
    pred: Tensor
    mask: Tensor
    patch_mask: Tensor
    gaussians: Gaussians3D | None = None

    def __getitem__(self, key: str) -> Any:
        """Dict-style access (``out["loss"]``) for code written against dictionaries."""
        return getattr(self, key)


def sincos_embedding_3d(grid_size: Sequence[int], dim: int) -> Tensor:
    """Fixed 3D sin-cos positional embedding for any width.

    MONAI's :func:`build_sincos_position_embedding` needs ``dim`` divisible by 6; the largest such width is built
    with it and the remaining channels are zero.

    Args:
        grid_size: patch grid ``(gd, gh, gw)``.
        dim: embedding width.

    Returns:
        ``(1, gd * gh * gw, dim)`` float32 tensor in the patch-embedding (row-major) order.
    """
    if dim < 6:
        raise ValueError(f"sin-cos embedding width must be at least 6, got {dim}")
    usable = dim - dim % 6
    emb = build_sincos_position_embedding(list(grid_size), usable, spatial_dims=3).data
    return F.pad(emb, (0, dim - usable))


def patch_mask_to_voxels(patch_mask: Tensor, grid_size: Sequence[int], patch_size: Sequence[int]) -> Tensor:
    """Upsample a ``(B, N)`` patch mask (patch-embedding order) to a ``(B, 1, D, H, W)`` voxel mask."""
    b = patch_mask.shape[0]
    m = patch_mask.reshape(b, 1, *grid_size)
    for axis, p in enumerate(patch_size):
        m = m.repeat_interleave(int(p), dim=2 + axis)
    return m


def masked_mse(pred: Tensor, target: Tensor, voxel_mask: Tensor | None) -> Tensor:
    """Mean squared error over the voxels where ``voxel_mask`` is 1 (all voxels when it is ``None`` or empty).

    Args:
        pred: ``(B, C, D, H, W)``.
        target: same shape as ``pred``.
        voxel_mask: ``(B, 1, D, H, W)`` of 0/1, broadcast over channels, or ``None``.

    Returns:
        Scalar float32 loss.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    err = (pred.float() - target.float()).square()
    if voxel_mask is None:
        return err.mean()
    weight = voxel_mask.to(err.dtype).expand_as(err)
    denom = weight.sum()
    # nothing masked (mask_ratio 0): fall back to all voxels, without a host synchronisation
    return torch.where(denom > 0, (err * weight).sum() / denom.clamp_min(1.0), err.mean())


class MaskedAutoencoder3D(nn.Module):
    """What MedGMAE and the voxel-MAE baseline share: the encoder, masking, loss and (de)serialisation.

    Subclasses build a decoder and implement :meth:`reconstruct` (``latent, ids_restore -> (pred, gaussians)``).

    Args:
        img_size: input volume size ``(D, H, W)`` (or one int).
        patch_size: patch edge(s); must divide ``img_size``.
        in_channels: image channels.
        model_size: a key of :data:`~medgmae.networks.vit.VIT_PRESETS` (``tiny``, ``small``, ``base``, ``large``).
        mask_ratio: fraction of patches hidden from the encoder during training, in ``[0, 1)``.
        loss_on_all_voxels: compute the MSE over every voxel instead of the masked ones only.
    """

    #: the ``kind`` written to ``model.pt``; subclasses override.
    kind = "masked-autoencoder"

    def __init__(
        self,
        img_size: Sequence[int] | int = 96,
        patch_size: Sequence[int] | int = 12,
        in_channels: int = 1,
        model_size: str = "base",
        mask_ratio: float = 0.75,
        loss_on_all_voxels: bool = False,
    ) -> None:
        super().__init__()
        if model_size not in VIT_PRESETS:
            raise ValueError(f"model_size must be one of {sorted(VIT_PRESETS)}, got {model_size!r}")
        if not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        img = tuple(int(s) for s in ((img_size,) * 3 if isinstance(img_size, int) else img_size))
        patch = tuple(int(s) for s in ((patch_size,) * 3 if isinstance(patch_size, int) else patch_size))
        if len(img) != 3 or len(patch) != 3:
            raise ValueError(f"img_size and patch_size must be 3D, got {img_size!r} and {patch_size!r}")
        preset = VIT_PRESETS[model_size]
        self.preset, self.model_size = preset, model_size
        self.img_size, self.patch_size, self.in_channels = img, patch, int(in_channels)
        self.mask_ratio, self.loss_on_all_voxels = float(mask_ratio), bool(loss_on_all_voxels)
        self.encoder = MaskedViTEncoder(
            in_channels=in_channels,
            img_size=img,
            patch_size=patch,
            hidden_size=preset.hidden_size,
            num_layers=preset.num_layers,
            num_heads=preset.num_heads,
            mlp_ratio=preset.mlp_ratio,
            spatial_dims=3,
        )
        self.grid_size = self.encoder.grid_size
        dec = preset.decoder_hidden_size
        self.decoder_embed = nn.Linear(preset.hidden_size, dec)
        self.decoder_blocks = nn.ModuleList(
            [
                TransformerBlock(dec, int(dec * preset.mlp_ratio), preset.decoder_num_heads, qkv_bias=True, use_flash_attention=True)
                for _ in range(preset.decoder_num_layers)
            ]
        )
        self.decoder_norm = nn.LayerNorm(dec)
        self.register_buffer("decoder_pos_embed", sincos_embedding_3d(self.grid_size, dec), persistent=False)
        self._freeze_unused_norms()

    def _freeze_unused_norms(self) -> None:
        """MONAI's TransformerBlock builds ``norm_cross_attn`` even without cross-attention; it never receives a
        gradient, which DistributedDataParallel rejects. Such norms are frozen (their weights stay in the state
        dict)."""
        for module in self.modules():
            if isinstance(module, TransformerBlock) and not getattr(module, "with_cross_attention", False):
                norm = getattr(module, "norm_cross_attn", None)
                if isinstance(norm, nn.Module):
                    norm.requires_grad_(False)

    # ------------------------------------------------------------------ interface
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), saved beside the weights."""
        return dict(
            img_size=list(self.img_size),
            patch_size=list(self.patch_size),
            in_channels=self.in_channels,
            model_size=self.model_size,
            mask_ratio=self.mask_ratio,
            loss_on_all_voxels=self.loss_on_all_voxels,
        )

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The encoder's weights, as :class:`MaskedViTEncoder` names them (for ``encoder.pt``)."""
        return self.encoder.state_dict()

    def encoder_checkpoint(self) -> dict:
        """The ``encoder.pt`` payload agreed with fine-tuning."""
        return {
            "kind": ENCODER_KIND,
            "config": self.encoder.config(),
            "state_dict": self.encoder_state_dict(),
            "source": type(self).__name__,
        }

    def model_checkpoint(self) -> dict:
        """The ``model.pt`` payload: ``{"kind", "config", "state_dict"}``."""
        return {"kind": self.kind, "config": self.config(), "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "MaskedAutoencoder3D":
        """Rebuild a model from ``model.pt`` or from a full training checkpoint (``"model"`` + ``"config"``).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not a checkpoint of this model's kind (the message names the file).
        """
        config, state = load_model_checkpoint(path, cls.kind, map_location)
        model = cls(**config)
        model.load_state_dict(state)
        return model

    # ------------------------------------------------------------------ helpers
    def visible_positions(self, ids_restore: Tensor, num_visible: int) -> Tensor:
        """``(B, N_vis, C_dec)`` decoder positional embeddings of the visible patches, in the encoder's order."""
        ids_keep = torch.argsort(ids_restore, dim=1)[:, :num_visible]
        pos = self.decoder_pos_embed.expand(ids_keep.shape[0], -1, -1)
        return torch.gather(pos, 1, ids_keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))

    def run_decoder(self, tokens: Tensor) -> Tensor:
        """MONAI transformer blocks and the final norm."""
        for blk in self.decoder_blocks:
            tokens = blk(tokens)
        return self.decoder_norm(tokens)

    def reconstruct(self, latent: Tensor, ids_restore: Tensor) -> tuple[Tensor, Gaussians3D | None]:
        """Decode encoder tokens to ``(pred (B, C, D, H, W), gaussians or None)``."""
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {', '.join(map(str, self.img_size))}), got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None) -> MAEOutput:
        """Mask, encode, decode and score.

        Args:
            x: ``(B, C, D, H, W)`` volume scaled to ``[0, 1]``.
            mask_ratio: overrides the model's ratio (e.g. 0 at inference).
            generator: random generator for the masks (reproducible masking).

        Returns:
            :class:`MAEOutput` with ``loss``, ``pred``, ``mask`` (voxels), ``patch_mask`` and ``gaussians``.
        """
        self._check_input(x)
        ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
        latent, patch_mask, ids_restore = self.encoder(x, mask_ratio=ratio, generator=generator)
        pred, gaussians = self.reconstruct(latent, ids_restore)
        voxel_mask = patch_mask_to_voxels(patch_mask, self.grid_size, self.patch_size)
        loss = masked_mse(pred, x, None if self.loss_on_all_voxels else voxel_mask)
        return MAEOutput(loss=loss, pred=pred, mask=voxel_mask, patch_mask=patch_mask, gaussians=gaussians)


class ResidualGaussianLevel(nn.Module):
    """One MedGMAE* refinement level: every parent Gaussian spawns ``ratio`` children through residual heads.

    For a child of parent ``p`` (level ``l - 1``) whose level-0 ancestor has relative scale ``s_0``:

    * ``s_l = cap * clamp(s_0 + tanh(r_s) * sigma_scale - delta, min_rel_scale)`` (``s_0`` is the level-0 scale
      head's sigmoid output, i.e. scales are measured in units of the scale cap),
    * ``mu_l = mu_p + tanh(r_mu) * sigma_mu`` (normalised frame),
    * ``I_l = clamp(I_p + tanh(r_I) * sigma_intensity, 0, 1)``,
    * ``q_l = normalise(q_p + tanh(r_q) * sigma_rotation)``.

    The residuals ``r`` come from four linear heads on child features: the parent's feature plus a learnable
    child embedding, passed through a pre-norm residual MLP.

    Args:
        dim: feature width.
        ratio: children per parent.
        delta: the level's scale decrement ``Delta s_l``.
        scale_cap: the model's scale cap (normalised frame).
        sigma_scale, sigma_mu, sigma_intensity, sigma_rotation: residual ranges.
        min_rel_scale: lower clamp of the relative scale (keeps scales positive).
    """

    def __init__(
        self,
        dim: int,
        ratio: int,
        delta: float,
        scale_cap: float,
        sigma_scale: float = 0.1,
        sigma_mu: float = 0.05,
        sigma_intensity: float = 0.1,
        sigma_rotation: float = 0.1,
        min_rel_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        if ratio < 1:
            raise ValueError(f"children per parent must be >= 1, got {ratio}")
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
            intensities=(rep(parent.intensities) + t[..., 10] * self.sigma_intensity).clamp(0.0, 1.0),
        )
        return children, root

    def forward(
        self, features: Tensor, parent: Gaussians3D, root_rel_scale: Tensor
    ) -> tuple[Tensor, Gaussians3D, Tensor]:
        """``features`` ``(B, P, dim)`` of the parents -> ``(child features, children, child root scales)``."""
        b, p, c = features.shape
        h = (features.unsqueeze(2) + self.child_embed).reshape(b, p * self.ratio, c)
        h = h + self.mlp(h)
        children, root = self.refine(parent, root_rel_scale, self.heads(h))
        return h, children, root


class MedGMAE(MaskedAutoencoder3D):
    """MedGMAE (and MedGMAE* with ``multi_level=True``).

    Args:
        img_size, patch_size, in_channels, model_size, mask_ratio, loss_on_all_voxels: see
            :class:`MaskedAutoencoder3D`.
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
    """

    kind = "medgmae"

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
        level_multipliers: Sequence[int] = (1, 2, 4),
        level_deltas: Sequence[float] = (0.02, 0.05),
        sigma_mu: float = 0.05,
    ) -> None:
        super().__init__(img_size, patch_size, in_channels, model_size, mask_ratio, loss_on_all_voxels)
        if in_channels != 1:
            raise ValueError(f"MedGMAE renders one intensity channel; in_channels must be 1, got {in_channels}")
        if int(num_gaussians) < 1:
            raise ValueError(f"num_gaussians must be >= 1, got {num_gaussians}")
        if not 0.0 < float(scale_cap) <= 1.0 or not 0.0 < float(min_scale) < float(scale_cap):
            raise ValueError(f"need 0 < min_scale < scale_cap <= 1, got min_scale={min_scale}, scale_cap={scale_cap}")
        mults, deltas = [int(m) for m in level_multipliers], [float(d) for d in level_deltas]
        if multi_level:
            if not mults or mults[0] != 1 or len(deltas) != len(mults) - 1:
                raise ValueError(
                    f"level_multipliers must start with 1 and level_deltas have one entry per further level, "
                    f"got {mults} and {deltas}"
                )
            if any(b % a != 0 or b < a for a, b in zip(mults, mults[1:])):
                raise ValueError(f"each level multiplier must divide the next, got {mults}")
        self.num_gaussians, self.scale_cap, self.min_scale = int(num_gaussians), float(scale_cap), float(min_scale)
        self.cutoff, self.render_backend = float(cutoff), render_backend
        self.multi_level, self.level_multipliers, self.level_deltas = bool(multi_level), mults, deltas
        self.sigma_mu = float(sigma_mu)
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
                ResidualGaussianLevel(dec, b // a, d, self.scale_cap, sigma_mu=self.sigma_mu, min_rel_scale=min_scale / scale_cap)
                for a, b, d in zip(mults, mults[1:], deltas)
            ]
            if self.multi_level
            else []
        )

    def _init_heads(self) -> None:
        # centres spread over the volume (xavier); scale, rotation and intensity start from their biases (small
        # weights), so that every Gaussian begins at 0.2 of the scale cap and intensity 0.4, as the paper intends
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
        )
        return cfg

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "MedGMAE":
        """Rebuild MedGMAE or MedGMAE* from ``model.pt`` or a training checkpoint (kind ``medgmae[-star]``)."""
        config, state = load_model_checkpoint(path, ("medgmae", "medgmae-star"), map_location)
        model = cls(**config)
        model.load_state_dict(state)
        return model

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
        tokens = torch.cat([x[:, :1], self.query_tokens.expand(b, -1, -1), visible], dim=1)
        feats = self.run_decoder(tokens)[:, 1 : 1 + k].float()
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
        """Render normalised-frame Gaussians to ``(B, 1, D, H, W)`` at the model's input size."""
        return gaussians.to_voxel(self.img_size).render(self.img_size, self.cutoff, self.render_backend).unsqueeze(1)

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
            :class:`Gaussians3D` with ``total_gaussians`` Gaussians per volume, float32.
        """
        self._check_input(x)
        latent, _, ids_restore = self.encoder(x, mask_ratio=float(mask_ratio), generator=generator)
        return Gaussians3D.cat(self.decode_gaussians(latent, ids_restore), dim=1)


def load_model_checkpoint(
    path: str | Path, kinds: str | Sequence[str], map_location: str | torch.device = "cpu"
) -> tuple[dict, dict]:
    """Read ``(config, state_dict)`` from ``model.pt`` or from a training checkpoint.

    Training checkpoints are accepted as ``{"model": state_dict, "config": {...}}`` or in
    :class:`medgmae.engine.CheckpointHandler`'s layout (``{"objects": {"model": ..., "config": ...}}``), where the
    config carries the model's ``kind``.

    Args:
        path: the file.
        kinds: accepted ``kind`` value(s).
        map_location: passed to :func:`torch.load`.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable file, wrong kind or missing entries; the message names the file.
    """
    path = Path(path)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # corrupt / not a torch file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if isinstance(ckpt.get("objects"), dict) and "model" in ckpt["objects"]:  # medgmae.engine.CheckpointHandler
        ckpt = {"model": ckpt["objects"]["model"], "config": ckpt["objects"].get("config")}
    if "state_dict" in ckpt and "kind" in ckpt:
        kind, config, state = ckpt["kind"], ckpt.get("config"), ckpt["state_dict"]
    elif "model" in ckpt and "config" in ckpt:  # full training checkpoint
        config, state = ckpt["config"], ckpt["model"]
        kind = ckpt.get("kind") or (config.get("kind") if isinstance(config, dict) else None)
        if isinstance(config, dict) and "model" in config and isinstance(config["model"], dict):
            config = config["model"]
        if kind is None and isinstance(config, dict):
            kind = "medgmae-star" if config.get("multi_level") else ("medgmae" if "num_gaussians" in config else "voxel-mae")
    else:
        raise ValueError(f"{path}: not a model file (no 'kind'/'state_dict' nor 'model'/'config' entries)")
    if kind not in kinds:
        raise ValueError(f"{path}: checkpoint kind is {kind!r}, expected {' or '.join(map(repr, kinds))}")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: checkpoint has no model config")
    config = {k: v for k, v in config.items() if k != "kind"}
    return config, state
