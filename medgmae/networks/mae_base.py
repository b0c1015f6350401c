"""What every masked autoencoder of the toolkit shares, in 2D and 3D.

:class:`MaskedAutoencoder` holds the :class:`~medgmae.networks.vit.MaskedViTEncoder`, the decoder trunk (embedding
to the decoder width, MONAI transformer blocks, final norm, fixed sin-cos positions of the patches), masking, the
masked MSE and the ``model.pt`` / ``encoder.pt`` (de)serialisation. MedGMAE, the voxel-MAE baseline and the 2D GMAE
subclass it and add their decoder heads and :meth:`MaskedAutoencoder.reconstruct`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from torch import Tensor

from medgmae.cli_types import as_bool
from medgmae.checkpoint import ENCODER_KIND, Checkpoint, load_checkpoint, make_checkpoint
from medgmae.checkpoint_checks import CheckpointRefused
from medgmae.input_scale import model_input_range
from medgmae.networks.vit import (
    VIT_PRESETS, MaskedViTEncoder, check_model_input, freeze_unused_cross_attn_norms, quiet_monai_meshgrid,
)
from medgmae.preprocessing import PreprocessingSpec
from medgmae.whole_numbers import positive_count, positive_sizes

__all__ = [
    "MAEOutput",
    "MaskedAutoencoder",
    "masked_mse",
    "patch_mask_to_voxels",
    "sincos_embedding",
    "sincos_embedding_2d",
    "sincos_embedding_3d",
]

@dataclass
class MAEOutput:
    """What a masked autoencoder's ``forward`` returns.

    Attributes:
        loss: scalar MSE (masked voxels only unless the model was built with ``loss_on_all_voxels=True``).
        pred: ``(B, C, *img_size)`` reconstruction of the whole input (the rendered Gaussians for MedGMAE / GMAE).
        mask: ``(B, 1, *img_size)`` voxel (pixel) mask, 1 where the voxel's patch was hidden from the encoder.
        patch_mask: ``(B, N)`` patch mask in the patch-embedding order, 1 = masked.
        gaussians: the predicted Gaussians (:class:`~medgmae.gaussians.Gaussians3D` in the normalised frame for
            MedGMAE, :class:`~medgmae.twod.gmae.SplatGaussians` for the 2D GMAE, ``None`` for the voxel-MAE).
    """

    loss: Tensor
    pred: Tensor
    mask: Tensor
    patch_mask: Tensor
    gaussians: Any = None

    def __getitem__(self, key: str) -> Any:
        """Dict-style access (``out["loss"]``) for code written against dictionaries."""
        return getattr(self, key)

    @property
    def shape(self) -> torch.Size:
        """``pred``'s shape, so that tools checking a network by its output's shape and dtype (MONAI's
        ``verify_net_in_out``) check the reconstruction."""
        return self.pred.shape

    @property
    def dtype(self) -> torch.dtype:
        """``pred``'s dtype (see :attr:`shape`)."""
        return self.pred.dtype


def sincos_embedding(grid_size: Sequence[int], dim: int, spatial_dims: int) -> Tensor:
    """Fixed 2D or 3D sin-cos positional embedding for any width.

    MONAI's :func:`build_sincos_position_embedding` needs ``dim`` divisible by ``2 * spatial_dims``; the largest
    such width is built with it and the remaining channels are zero.

    Args:
        grid_size: patch grid, ``spatial_dims`` sizes.
        dim: embedding width.
        spatial_dims: 2 or 3.

    Returns:
        ``(1, prod(grid_size), dim)`` float32 tensor in the patch-embedding (row-major) order.
    """
    unit = 2 * spatial_dims
    if dim < unit:
        raise ValueError(f"sin-cos embedding width must be at least {unit}, got {dim}")
    usable = dim - dim % unit
    with quiet_monai_meshgrid():
        emb = build_sincos_position_embedding(list(grid_size), usable, spatial_dims=spatial_dims).data
    return F.pad(emb, (0, dim - usable))


def sincos_embedding_3d(grid_size: Sequence[int], dim: int) -> Tensor:
    """:func:`sincos_embedding` for a ``(gd, gh, gw)`` grid: ``(1, gd * gh * gw, dim)``."""
    return sincos_embedding(grid_size, dim, spatial_dims=3)


def sincos_embedding_2d(grid_size: Sequence[int], dim: int) -> Tensor:
    """:func:`sincos_embedding` for a ``(gh, gw)`` grid: ``(1, gh * gw, dim)``."""
    return sincos_embedding(grid_size, dim, spatial_dims=2)


def patch_mask_to_voxels(patch_mask: Tensor, grid_size: Sequence[int], patch_size: Sequence[int]) -> Tensor:
    """Upsample a ``(B, N)`` patch mask (patch-embedding order) to a ``(B, 1, *img_size)`` voxel mask."""
    b = patch_mask.shape[0]
    m = patch_mask.reshape(b, 1, *grid_size)
    for axis, p in enumerate(patch_size):
        m = m.repeat_interleave(int(p), dim=2 + axis)
    return m


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is float16 / bfloat16 (an autocast decoder's output, before the heads that must
    not run in half precision), as it is otherwise: a float64 model stays float64."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def masked_mse(pred: Tensor, target: Tensor, voxel_mask: Tensor | None) -> Tensor:
    """Mean squared error over the voxels where ``voxel_mask`` is 1 (all voxels when it is ``None`` or empty).

    Args:
        pred: ``(B, C, *spatial)``.
        target: same shape as ``pred``.
        voxel_mask: ``(B, 1, *spatial)`` of 0/1, broadcast over channels, or ``None``.

    Returns:
        Scalar loss, float32 (float64 when ``pred`` or ``target`` is float64).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    mask = None if voxel_mask is None else tuple(voxel_mask.shape)
    if mask is not None and (len(mask) != pred.dim() or mask[0] != pred.shape[0] or mask[1] not in (1, pred.shape[1])
                             or mask[2:] != tuple(pred.shape[2:])):  # fmt: skip
        raise ValueError(f"voxel_mask must be a (B, 1, *spatial) voxel mask, {(pred.shape[0], 1, *pred.shape[2:])} for "
                         f"pred {tuple(pred.shape)} (a model output's mask, not its (B, N) patch_mask), got {mask}")  # fmt: skip
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    err = (pred.to(dtype) - target.to(dtype)).square()
    if voxel_mask is None:
        return err.mean()
    weight = voxel_mask.to(err.dtype).expand_as(err)
    denom = weight.sum()
    # nothing masked (mask_ratio 0): fall back to all voxels, without a host synchronisation
    return torch.where(denom > 0, (err * weight).sum() / denom.clamp_min(1.0), err.mean())


class MaskedAutoencoder(nn.Module):
    """A masked ViT autoencoder: the encoder, the decoder trunk, masking, loss and (de)serialisation.

    Subclasses add their decoder heads and implement :meth:`reconstruct`
    (``latent, ids_restore -> (pred, gaussians or None)``); :meth:`forward` is shared. Subclasses of one
    dimensionality leave ``spatial_dims`` out of their constructor and :meth:`config`.

    Args:
        img_size: input size, ``spatial_dims`` values ``(D, H, W)`` / ``(H, W)``, or one int.
        patch_size: patch edge(s); must divide ``img_size``.
        in_channels: image channels.
        model_size: a key of :data:`~medgmae.networks.vit.VIT_PRESETS` (``tiny``, ``small``, ``base``, ``large``).
        mask_ratio: fraction of patches hidden from the encoder during training, in ``[0, 1)``.
        loss_on_all_voxels: compute the MSE over every voxel (pixel) instead of the masked ones only.
        spatial_dims: 3 for volumes, 2 for images.
    """

    #: the ``kind`` written to ``model.pt``; subclasses override.
    kind = "masked-autoencoder"
    #: the ``kind`` values :meth:`from_checkpoint` accepts (empty: ``kind`` only).
    checkpoint_kinds: tuple[str, ...] = ()

    def __init__(
        self,
        img_size: Sequence[int] | int = 96,
        patch_size: Sequence[int] | int = 12,
        in_channels: int = 1,
        model_size: str = "base",
        mask_ratio: float = 0.75,
        loss_on_all_voxels: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if model_size not in VIT_PRESETS:
            raise ValueError(f"model_size must be one of {sorted(VIT_PRESETS)}, got {model_size!r}")
        if not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        in_channels = positive_count(in_channels, "in_channels")
        img = positive_sizes(img_size, spatial_dims, "img_size")
        patch = positive_sizes(patch_size, spatial_dims, "patch_size")
        preset = VIT_PRESETS[model_size]
        self.preset, self.model_size, self.spatial_dims = preset, model_size, spatial_dims
        self.img_size, self.patch_size, self.in_channels = img, patch, in_channels
        # a bundle's ``--network_def#loss_on_all_pixels false`` arrives as the text 'false', which bool() reads as True
        loss_name = "loss_on_all_pixels" if spatial_dims == 2 else "loss_on_all_voxels"
        self.mask_ratio, self.loss_on_all_voxels = float(mask_ratio), as_bool(loss_on_all_voxels, loss_name)
        #: the pre-processing the model is (to be) trained with; written into ``model.pt`` / ``encoder.pt``.
        self.preprocessing: PreprocessingSpec | None = None
        #: settings of the training data that neither the config nor ``preprocessing`` holds (2D GMAE: ``flip``,
        #: ``window``); written into ``model.pt`` / ``encoder.pt`` as ``extra["data"]`` when set, as GViT does.
        self.data_settings: dict | None = None
        #: the training run's ``{"seed", "num_workers"}`` (:func:`medgmae.checkpoint.run_record`); written into
        #: ``model.pt`` / ``encoder.pt`` as ``extra["run"]`` when set, so that a model file alone says how it was trained.
        self.run_settings: dict | None = None
        self.encoder = MaskedViTEncoder(
            in_channels=self.in_channels,
            img_size=img,
            patch_size=patch,
            hidden_size=preset.hidden_size,
            num_layers=preset.num_layers,
            num_heads=preset.num_heads,
            mlp_ratio=preset.mlp_ratio,
            spatial_dims=spatial_dims,
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
        pos = sincos_embedding(self.grid_size, dec, spatial_dims)
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        freeze_unused_cross_attn_norms(self)

    # ------------------------------------------------------------------ (de)serialisation
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

    @classmethod
    def upgrade_config(cls, config: dict) -> dict:
        """A saved :meth:`config` as this version's constructor takes it (subclasses fill in newer arguments)."""
        return config

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The encoder's weights, as :class:`MaskedViTEncoder` names them (for ``encoder.pt``)."""
        return self.encoder.state_dict()

    def encoder_checkpoint(self) -> dict:
        """The ``encoder.pt`` payload (:mod:`medgmae.checkpoint` format, kind ``medgmae-encoder``) read by
        fine-tuning, with the pre-processing record; ``extra["source"]`` is the kind of the model it came from
        (``medgmae``, ``medgmae-star``, ``voxel-mae``, as in its ``model.pt``; files written before named the model
        class there, e.g. ``MedGMAE``, and load alike: :func:`medgmae.checkpoint.encoder_source` reads either)."""
        return make_checkpoint(ENCODER_KIND, self.encoder.config(), self.encoder_state_dict(), self.preprocessing,
                               extra={"source": self.kind, **self._data_extra()}, run=self.run_settings)  # fmt: skip

    def model_checkpoint(self) -> dict:
        """The ``model.pt`` payload (:mod:`medgmae.checkpoint` format) with the pre-processing record and, when set,
        the :attr:`data_settings` (``extra["data"]``) and :attr:`run_settings` (``extra["run"]``)."""
        return make_checkpoint(self.kind, self.config(), self.state_dict(), self.preprocessing, extra=self._data_extra(),
                               run=self.run_settings)  # fmt: skip

    def _data_extra(self) -> dict:
        """``{"data": data_settings}`` as plain data (tuples as lists), or ``{}`` when none are set."""
        if self.data_settings is None:
            return {}
        return {"data": {k: list(v) if isinstance(v, tuple) else v for k, v in dict(self.data_settings).items()}}

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu", needed_for: str | None = None
    ) -> "MaskedAutoencoder":
        """Rebuild a model from ``model.pt`` or from a training checkpoint; sets :attr:`preprocessing`,
        :attr:`data_settings` and :attr:`run_settings` (``None`` when the file records none, e.g. one written before
        they were recorded).

        Args:
            path: the file.
            map_location: passed to :func:`torch.load`.
            needed_for: what the caller needs, for the wrong-kind message (e.g. ``"--init medgmae needs a medgmae
                model.pt"``).

        Called on :class:`MaskedAutoencoder` itself, the file's kind picks the model (MedGMAE, MedGMAE*, the
        voxel-MAE, or a 2D GMAE where :mod:`medgmae.twod` is loaded).

        Returns:
            The model on ``map_location``, in training mode as any new module (training resumes from it as it is;
            unlike :func:`~medgmae.twod.gvit.load_gvit`, which returns eval mode): call ``.eval()`` for inference.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not a checkpoint of this model's kind (a 2D GMAE's, where 2D GMAE is not loaded,
                named with the call that reads it), or its config and weights do not build this model (the
                message names the file).
        """
        import medgmae.networks  # noqa: F401  (defines MedGMAE and VoxelMAE, the subclasses below)

        by_kind = {k: sub for sub in _subclasses(cls) for k in _own_kinds(sub)} if cls is MaskedAutoencoder else {}
        kinds = tuple(by_kind) or cls.checkpoint_kinds or (cls.kind,)
        try:
            ckpt = load_checkpoint(path, kinds, needed_for, map_location)
        except CheckpointRefused as e:  # a 2D file (medgmae.twod.gmae.GMAE2D_KIND) where medgmae.twod is not loaded
            refused, kind = e, None
        else:
            return by_kind.get(ckpt.kind, cls).from_loaded(ckpt)
        with contextlib.suppress(CheckpointRefused):  # read again outside the except block: refused once, not twice
            kind = load_checkpoint(path, mmap=True).kind if needed_for is None and "gmae2d" not in kinds else None
        if kind == "gmae2d":
            raise CheckpointRefused(f"{refused}; a 2D GMAE model file is read with medgmae.twod's "
                                    "GMAE2D.from_checkpoint (from medgmae.twod import GMAE2D)") from None  # fmt: skip
        raise refused

    @classmethod
    def from_loaded(cls, ckpt: Checkpoint) -> "MaskedAutoencoder":
        """Rebuild a model from a model file already read (:meth:`from_checkpoint`; fine-tuning's ``--pretrained``
        reads one to tell its kind first), with its :attr:`preprocessing`, :attr:`data_settings` and
        :attr:`run_settings`.

        Raises:
            ValueError: its config and weights do not build this model (the message names the file).
        """
        try:
            model = cls(**cls.upgrade_config(dict(ckpt.config)))
            model.load_state_dict(ckpt.state_dict)
        except (TypeError, RuntimeError) as e:
            raise ValueError(f"{ckpt.path}: config/weights do not describe a {cls.__name__} model ({e})") from e
        model.preprocessing = ckpt.preprocessing
        data = ckpt.extra.get("data")
        model.data_settings = dict(data) if isinstance(data, dict) else None
        model.run_settings = ckpt.run  # None: a file written before the run was recorded
        return model

    # ------------------------------------------------------------------ model
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

    def reconstruct(self, latent: Tensor, ids_restore: Tensor) -> tuple[Tensor, Any]:
        """Decode encoder tokens to ``(pred (B, C, *img_size), gaussians or None)``."""
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        """:func:`check_model_input`, values off the scale of :attr:`preprocessing` warned of once."""
        check_model_input(x, self.in_channels, self.img_size, next(self.parameters()).dtype, self,
                          model_input_range(self.preprocessing))  # fmt: skip

    @staticmethod
    def _mask_ratio(value: float) -> float:
        """``value`` as a float in ``[0, 1)`` (``ValueError`` otherwise: a negative or NaN ratio masked nothing)."""
        ratio = float(value)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {value}")
        return ratio

    def forward(self, x: Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None) -> MAEOutput:
        """Mask, encode, decode and score.

        Args:
            x: ``(B, C, *img_size)`` input scaled to ``[0, 1]``.
            mask_ratio: overrides the model's ratio (e.g. 0 at inference).
            generator: random generator for the masks (reproducible masking).

        Returns:
            :class:`MAEOutput` with ``loss``, ``pred``, ``mask`` (voxels), ``patch_mask`` and ``gaussians``.
        """
        self._check_input(x)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__} {generator!r}")
        ratio = self._mask_ratio(self.mask_ratio if mask_ratio is None else mask_ratio)
        latent, patch_mask, ids_restore = self.encoder(x, mask_ratio=ratio, generator=generator)
        pred, gaussians = self.reconstruct(latent, ids_restore)
        voxel_mask = patch_mask_to_voxels(patch_mask, self.grid_size, self.patch_size)
        loss = masked_mse(pred, x, None if self.loss_on_all_voxels else voxel_mask)
        return MAEOutput(loss=loss, pred=pred, mask=voxel_mask, patch_mask=patch_mask, gaussians=gaussians)


def _subclasses(cls: type) -> list[type]:
    """Every subclass of ``cls`` defined so far, at any depth."""
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def _own_kinds(cls: type) -> tuple[str, ...]:
    """The checkpoint kinds ``cls`` itself declares (not those it inherits: a subclass of MedGMAE is not read for a
    ``medgmae`` file unless it says so)."""
    own = vars(cls)
    return tuple(own.get("checkpoint_kinds") or ((own["kind"],) if "kind" in own else ()))
