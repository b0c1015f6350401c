"""2D GMAE: an image masked autoencoder whose decoder predicts 3D Gaussians that are splatted back to the image.

The encoder is :class:`~medgmae.networks.vit.MaskedViTEncoder` over 2D patches (it sees the visible patches
only). The decoder is the query-token decoder of the 3D MedGMAE (:class:`~medgmae.networks.medgmae.MedGMAE`):
``[cls] + K learnable query tokens + visible tokens`` (projected to the decoder width, the visible ones with the
sin-cos embedding of their patch positions) through MONAI transformer blocks; one Gaussian of 14 numbers is read
off every query token, with the activations of the GMAE paper:

* centre ``(x, y, z) = tanh(.)``: ``x, y`` in the ``[-1, 1]`` image-plane frame of
  :func:`~medgmae.twod.render.render_gaussians_2d` (the image spans 2 units), ``z`` the depth;
* scale ``c * sigmoid(.)`` with the cap ``c`` in the same units (``c = 1``: a standard deviation of at most half
  the image width; the paper found ``c`` of 1-2 best, with x, y in the tanh range);
* rotation: L2-normalised quaternion ``(w, x, y, z)``;
* colour (``in_channels`` values) and opacity: sigmoid.

The Gaussians are rendered with a fixed orthographic camera (front-to-back alpha compositing) and the loss is the
MSE on the masked pixels only (no normalised-patch target: every Gaussian can reach every pixel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from torch import Tensor

from medgmae.gaussians import SCALE_BIAS_INIT
from medgmae.networks.medgmae import ENCODER_KIND, MAEOutput, MaskedAutoencoder3D, load_model_checkpoint, masked_mse, patch_mask_to_voxels
from medgmae.networks.vit import VIT_PRESETS, MaskedViTEncoder
from medgmae.twod.render import render_gaussians_2d

__all__ = ["SplatGaussians", "GMAE2D", "GMAE2D_KIND", "activate_splat_heads", "sincos_embedding_2d"]

GMAE2D_KIND = "gmae2d"
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


def sincos_embedding_2d(grid_size: Sequence[int], dim: int) -> Tensor:
    """Fixed 2D sin-cos embedding ``(1, gh * gw, dim)`` (MONAI's, zero-padded when ``dim`` is not a multiple of 4)."""
    if dim < 4:
        raise ValueError(f"sin-cos embedding width must be at least 4, got {dim}")
    usable = dim - dim % 4
    emb = build_sincos_position_embedding(list(grid_size), usable, spatial_dims=2).data
    return F.pad(emb, (0, dim - usable))


class GMAE2D(nn.Module):
    """Gaussian masked autoencoder for 1- or 3-channel images.

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
    """

    kind = GMAE2D_KIND

    # the decoder's token handling is MedGMAE's (same maths in 2D and 3D)
    visible_positions = MaskedAutoencoder3D.visible_positions
    run_decoder = MaskedAutoencoder3D.run_decoder
    _freeze_unused_norms = MaskedAutoencoder3D._freeze_unused_norms
    encoder_state_dict = MaskedAutoencoder3D.encoder_state_dict

    def __init__(
        self,
        img_size: Sequence[int] | int = 224,
        patch_size: Sequence[int] | int = 16,
        in_channels: int = 3,
        model_size: str = "base",
        mask_ratio: float = 0.75,
        num_gaussians: int = 256,
        scale_cap: float = 1.0,
        min_scale: float = 1e-4,
        render_backend: str = "auto",
        loss_on_all_pixels: bool = False,
    ) -> None:
        super().__init__()
        if model_size not in VIT_PRESETS:
            raise ValueError(f"model_size must be one of {sorted(VIT_PRESETS)}, got {model_size!r}")
        if not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if int(num_gaussians) < 1:
            raise ValueError(f"num_gaussians must be >= 1, got {num_gaussians}")
        if not (0.0 < float(min_scale) < float(scale_cap)):
            raise ValueError(f"need 0 < min_scale < scale_cap, got min_scale={min_scale}, scale_cap={scale_cap}")
        if render_backend not in ("auto", "torch", "gsplat"):
            raise ValueError(f"render_backend must be 'auto', 'torch' or 'gsplat', got {render_backend!r}")
        img = tuple(int(s) for s in ((img_size,) * 2 if isinstance(img_size, int) else img_size))
        patch = tuple(int(s) for s in ((patch_size,) * 2 if isinstance(patch_size, int) else patch_size))
        if len(img) != 2 or len(patch) != 2:
            raise ValueError(f"img_size and patch_size must be 2D, got {img_size!r} and {patch_size!r}")
        preset = VIT_PRESETS[model_size]
        self.preset, self.model_size = preset, model_size
        self.img_size, self.patch_size, self.in_channels = img, patch, int(in_channels)
        self.mask_ratio, self.num_gaussians = float(mask_ratio), int(num_gaussians)
        self.scale_cap, self.min_scale = float(scale_cap), float(min_scale)
        self.render_backend, self.loss_on_all_pixels = render_backend, bool(loss_on_all_pixels)
        self.encoder = MaskedViTEncoder(
            in_channels=self.in_channels,
            img_size=img,
            patch_size=patch,
            hidden_size=preset.hidden_size,
            num_layers=preset.num_layers,
            num_heads=preset.num_heads,
            mlp_ratio=preset.mlp_ratio,
            spatial_dims=2,
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
        self.register_buffer("decoder_pos_embed", sincos_embedding_2d(self.grid_size, dec), persistent=False)
        self.query_tokens = nn.Parameter(torch.randn(1, self.num_gaussians, dec) * QUERY_INIT_STD)
        self.head_mean = nn.Linear(dec, 3)
        self.head_scale = nn.Linear(dec, 3)
        self.head_rotation = nn.Linear(dec, 4)
        self.head_color = nn.Linear(dec, self.in_channels)
        self.head_opacity = nn.Linear(dec, 1)
        self._init_heads()
        self._freeze_unused_norms()

    def _init_heads(self) -> None:
        for head in (self.head_mean, self.head_scale, self.head_rotation, self.head_color, self.head_opacity):
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)
        nn.init.constant_(self.head_scale.bias, SCALE_BIAS_INIT)  # 0.2 of the cap at the start
        with torch.no_grad():
            self.head_rotation.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))

    # ------------------------------------------------------------------ (de)serialisation
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), saved beside the weights."""
        return dict(
            img_size=list(self.img_size),
            patch_size=list(self.patch_size),
            in_channels=self.in_channels,
            model_size=self.model_size,
            mask_ratio=self.mask_ratio,
            num_gaussians=self.num_gaussians,
            scale_cap=self.scale_cap,
            min_scale=self.min_scale,
            render_backend=self.render_backend,
            loss_on_all_pixels=self.loss_on_all_pixels,
        )

    def model_checkpoint(self) -> dict:
        """The ``model.pt`` payload ``{"kind": "gmae2d", "config", "state_dict"}``."""
        return {"kind": self.kind, "config": self.config(), "state_dict": self.state_dict()}

    def encoder_checkpoint(self) -> dict:
        """The ``encoder.pt`` payload shared with the 3D models."""
        return {"kind": ENCODER_KIND, "config": self.encoder.config(), "state_dict": self.encoder_state_dict(), "source": type(self).__name__}

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "GMAE2D":
        """Rebuild from ``model.pt`` or a full training checkpoint (``"model"`` + ``"config"``) of kind ``gmae2d``.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: unreadable file or a checkpoint of another kind (the message names the file).
        """
        config, state = load_model_checkpoint(path, GMAE2D_KIND, map_location)
        try:
            model = cls(**config)
            model.load_state_dict(state)
        except (TypeError, RuntimeError) as e:
            raise ValueError(f"{path}: config/weights do not describe a GMAE2D model ({e})") from e
        return model

    # ------------------------------------------------------------------ model
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {self.img_size[0]}, {self.img_size[1]}), "
                f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            )

    def decode_gaussians(self, latent: Tensor, ids_restore: Tensor) -> SplatGaussians:
        """``[cls] + queries + visible`` decoder tokens -> K Gaussians.

        Args:
            latent: ``(B, 1 + N_vis, C_enc)`` encoder output, class token first.
            ids_restore: ``(B, N)`` from the encoder.

        Returns:
            :class:`SplatGaussians` with ``num_gaussians`` Gaussians per image, float32.
        """
        b, k = latent.shape[0], self.num_gaussians
        x = self.decoder_embed(latent)
        visible = x[:, 1:] + self.visible_positions(ids_restore, x.shape[1] - 1)
        tokens = torch.cat([x[:, :1], self.query_tokens.expand(b, -1, -1), visible], dim=1)
        feats = self.run_decoder(tokens)[:, 1 : 1 + k].float()
        return activate_splat_heads(
            self.head_mean(feats), self.head_scale(feats), self.head_rotation(feats), self.head_color(feats),
            self.head_opacity(feats), self.scale_cap, self.min_scale,
        )  # fmt: skip

    def render(self, gaussians: SplatGaussians, image_size: Sequence[int] | None = None) -> Tensor:
        """``(B, C, H, W)`` rendering at ``image_size`` (default: the model's input size) on a black background."""
        return gaussians.render(self.img_size if image_size is None else image_size, self.render_backend)

    def forward(self, x: Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None) -> MAEOutput:
        """Mask, encode, decode, render and score.

        Args:
            x: ``(B, C, H, W)`` images scaled to ``[0, 1]``.
            mask_ratio: overrides the model's ratio (e.g. 0 at inference).
            generator: random generator for the masks.

        Returns:
            :class:`~medgmae.networks.medgmae.MAEOutput`: ``loss`` (MSE on the masked pixels), ``pred``
            ``(B, C, H, W)``, ``mask`` ``(B, 1, H, W)`` (1 = hidden from the encoder), ``patch_mask`` ``(B, N)``
            and ``gaussians`` (:class:`SplatGaussians`).
        """
        self._check_input(x)
        ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
        latent, patch_mask, ids_restore = self.encoder(x, mask_ratio=ratio, generator=generator)
        gaussians = self.decode_gaussians(latent, ids_restore)
        pred = self.render(gaussians)
        pixel_mask = patch_mask_to_voxels(patch_mask, self.grid_size, self.patch_size)
        loss = masked_mse(pred, x, None if self.loss_on_all_pixels else pixel_mask)
        return MAEOutput(loss=loss, pred=pred, mask=pixel_mask, patch_mask=patch_mask, gaussians=gaussians)

    @torch.no_grad()
    def predict_gaussians(self, x: Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None) -> SplatGaussians:
        """Zero-shot use: the Gaussians describing ``x`` (the encoder sees every patch by default).

        Args:
            x: ``(B, C, H, W)`` images scaled to ``[0, 1]``.
            mask_ratio: fraction of patches hidden.
            generator: random generator for the mask when ``mask_ratio > 0``.

        Returns:
            :class:`SplatGaussians`, float32.
        """
        self._check_input(x)
        latent, _, ids_restore = self.encoder(x, mask_ratio=float(mask_ratio), generator=generator)
        return self.decode_gaussians(latent, ids_restore)
