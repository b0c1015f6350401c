"""Pre-trained encoder weights into UNETR: strict loading, network construction, layer-wise LR decay, freezing.

The fine-tuned network's own file, ``best_model.pt``, is written and read by :mod:`medgmae.finetune.best_model`.

``encoder.pt`` (written by pre-training) holds ``{"kind": "medgmae-encoder", "config": MaskedViTEncoder.config(),
"state_dict": ..., "extra": {"source": <model kind>}}``. Its tensors go into ``network.vit`` of either
:class:`~medgmae.networks.unetr.MedGMAEUNETR` (any patch size; every tensor, class token included) or MONAI's
:class:`~monai.networks.nets.UNETR` (16^3 patches, 12 blocks; its ViT has no class token, so ``cls_token`` is the
one tensor left out, and said so in the log). Any other missing, unexpected or mis-shaped tensor is an error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch.nn as nn
from monai.networks.nets import UNETR

from medgmae.checkpoint import CHECKPOINT_KINDS, ENCODER_KIND, Checkpoint, encoder_source, load_checkpoint
from medgmae.checkpoint_checks import TrainingStateError
from medgmae.engine.decay_rule import no_weight_decay
from medgmae.engine.resume import latest_checkpoint
from medgmae.mae_training.models import MODEL_KINDS
from medgmae.networks.unetr import MedGMAEUNETR
from medgmae.networks.vit import MaskedViTEncoder, freeze_unused_cross_attn_norms

__all__ = [
    "ENCODER_KIND", "default_roi_size", "read_encoder_file", "check_roi_fits_encoder", "read_encoder_for",
    "pretrained_check", "load_pretrained_encoder", "build_unetr", "stock_unetr_from_encoder", "layer_id", "param_groups",
    "set_encoder_trainable",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: the encoder of the model file last given as ``--pretrained``, by (path, size, modification time) (:func:`_model_encoder`)
_MODEL_ENCODERS: dict[tuple, Checkpoint] = {}
#: encoder tensors that MONAI's ViT (``classification=False``) has no place for
STOCK_UNETR_DROPPED = ("cls_token",)


def read_encoder_file(path: str | Path, mmap: bool = False) -> Checkpoint:
    """Read and check an ``encoder.pt`` file (:mod:`medgmae.checkpoint` format, kind ``medgmae-encoder``), or take
    the encoder of a 3D pre-training ``model.pt`` / ``best_model.pt`` (:func:`_model_encoder`).

    Args:
        path: the file.
        mmap: memory-map it (the settings check and the run's pre-processing need the config, not the weights; the
            network copies the weights from the mapping; a model file's model is built once, with its weights).
            A file read memory-mapped is not read again while it is unchanged
            (:func:`~medgmae.checkpoint.load_checkpoint`).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file cannot be read or is not a MedGMAE encoder file (the message names what it is:
            :func:`not_an_encoder_message`).
    """
    if Path(path).is_dir():  # a pre-training run folder: its encoder.pt, not the model.pt a generic hint names
        hint = f"; did you mean {Path(path) / 'encoder.pt'}?" if (Path(path) / "encoder.pt").is_file() else ""
        raise ValueError(f"{path} is a folder; fine-tuning needs the encoder.pt of a pre-training run{hint}")
    try:
        ckpt = load_checkpoint(path, None, mmap=mmap)
    except TrainingStateError as e:  # its generic advice (model.pt, best_model.pt) names no file fine-tuning takes
        raise ValueError(
            f"{Path(path).name} is a training checkpoint (the state --resume continues, holding {sorted(e.objects)}), "
            f"not a model file; fine-tuning needs the encoder.pt written by pre-training (file: {path})"
        ) from None
    if ckpt.kind in MODEL_KINDS and not ckpt.extra.get("training_state"):
        return _model_encoder(ckpt)
    if ckpt.kind != ENCODER_KIND:
        raise ValueError(not_an_encoder_message(ckpt))
    dims = ckpt.config.get("spatial_dims", 3)
    if dims != 3:  # the 2D GMAE writes encoder.pt files of the same kind
        source = encoder_source(ckpt.extra.get("source"), ckpt.config)
        raise ValueError(
            f"{ckpt.path.name} is a {dims}D encoder (spatial_dims {dims}{f', from {source}' if source else ''}); "
            f"fine-tuning needs the 3D encoder.pt written by medgmae_pretrain (file: {ckpt.path})"
        )
    return ckpt


def _model_encoder(ckpt: Checkpoint) -> Checkpoint:
    """The encoder of a pre-training ``model.pt`` / ``best_model.pt`` as its ``encoder.pt`` would hold it (the
    best validated epoch has no ``encoder.pt`` of its own: pre-training writes the last epoch's), said once; kept
    for the file as it is (the settings check, the sizes and the loading each read it: the model is built once)."""
    from medgmae.networks import MedGMAE, VoxelMAE

    stat = ckpt.path.stat()
    key = (str(ckpt.path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _MODEL_ENCODERS:
        return _MODEL_ENCODERS[key]
    model = (VoxelMAE if ckpt.kind == "voxel-mae" else MedGMAE).from_loaded(ckpt)
    best = ckpt.extra.get("best")  # best_model.pt's validation record
    epoch = best.get("epoch") if isinstance(best, dict) else None
    logger.info("%s is a %s model%s: fine-tuning takes its encoder, as the encoder.pt of that epoch would hold it",
                ckpt.path, ckpt.kind, f" (epoch {epoch})" if isinstance(epoch, int) else "")  # fmt: skip
    _MODEL_ENCODERS.clear()  # one file at a time: a run reads one --pretrained
    _MODEL_ENCODERS[key] = Checkpoint(kind=ENCODER_KIND, config=model.encoder.config(), state_dict=model.encoder_state_dict(),
                                      preprocessing=ckpt.preprocessing, extra={"source": ckpt.kind, **ckpt.extra}, path=ckpt.path)  # fmt: skip
    return _MODEL_ENCODERS[key]


def not_an_encoder_message(ckpt: Checkpoint) -> str:
    """Why fine-tuning cannot start from ``ckpt`` (not an ``encoder.pt``) and which file to give instead; a
    training checkpoint (the state ``--resume`` continues) is named as one, not as the model it holds."""
    if ckpt.extra.get("training_state"):
        run = "pre-training" if ckpt.kind in MODEL_KINDS else "a training run"
        what = f"a training checkpoint of {run} (the state --resume continues, holding a {ckpt.kind} model)"
    else:
        what = f"a {ckpt.kind} checkpoint ({CHECKPOINT_KINDS.get(ckpt.kind, 'a kind this toolkit does not know')})"
    encoder = ckpt.path.parent / "encoder.pt"
    beside = f": {encoder}" if ckpt.kind in MODEL_KINDS and encoder.is_file() else ""
    return f"{ckpt.path.name} is {what}; fine-tuning needs the encoder.pt written by pre-training{beside} (file: {ckpt.path})"


def load_pretrained_encoder(
    network: nn.Module, encoder: str | Path | Checkpoint | dict, source_name: str | None = None
) -> int:
    """Copy every pre-trained encoder tensor into ``network.vit``; fail on any missing or mis-shaped tensor.

    Args:
        network: :class:`MedGMAEUNETR` or MONAI :class:`UNETR`.
        encoder: path of an ``encoder.pt`` file, its :class:`~medgmae.checkpoint.Checkpoint`, or a bare encoder
            state dict.
        source_name: name used in messages (defaults to the path).

    Returns:
        the number of tensors loaded.

    Raises:
        ValueError: a tensor is missing on either side or has another shape (all of them are listed).
    """
    if not hasattr(network, "vit"):
        raise ValueError(f"{type(network).__name__} has no 'vit' encoder to load weights into")
    if isinstance(encoder, (str, Path)):
        source_name = source_name or str(encoder)
        encoder = read_encoder_file(encoder)
    if isinstance(encoder, Checkpoint) and encoder.path is not None:
        source_name = source_name or str(encoder.path)
    source_name = source_name or "encoder state dict"
    state = encoder.state_dict if isinstance(encoder, Checkpoint) else encoder
    target = network.vit.state_dict()
    dropped = [k for k in STOCK_UNETR_DROPPED if isinstance(network, UNETR) and k in state and k not in target]
    source = {k: v for k, v in state.items() if k not in dropped}
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    mis_shaped = [
        f"{k}: checkpoint {tuple(source[k].shape)} vs network {tuple(target[k].shape)}"
        for k in sorted(set(source) & set(target))
        if source[k].shape != target[k].shape
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"cannot load pre-trained encoder {source_name} into {type(network).__name__}.vit:"]
        if missing:
            lines.append(f"  {len(missing)} network tensors missing from the checkpoint: {missing[:8]}")
        if unexpected:
            lines.append(f"  {len(unexpected)} checkpoint tensors with no place in the network: {unexpected[:8]}")
        if mis_shaped:
            lines.append(f"  {len(mis_shaped)} tensors of another shape: {mis_shaped[:8]}")
        lines.append("  (patch size, width, depth, MLP ratio and img_size must match the pre-trained encoder)")
        if any(k.endswith("qkv.bias") for k in unexpected):  # MONAI's UNETR / ViT default to qkv_bias=False
            lines.append("  (the encoder's attention has biases: build the network with qkv_bias=True)")
        raise ValueError("\n".join(lines))
    network.vit.load_state_dict(source, strict=True)
    note = f"; left out {dropped} (MONAI UNETR's ViT has no class token)" if dropped else ""
    logger.info("loaded %d/%d pre-trained encoder tensors from %s%s", len(source), len(state), source_name, note)
    return len(source)


def check_roi_fits_encoder(roi_size: Sequence[int] | int, config: dict, pretrained: str | Path) -> None:
    """Refuse a ``roi_size`` other than the ``img_size`` a pre-trained encoder was built with.

    Args:
        roi_size: the fine-tuning's crop size (an integer for a cube, or one per axis).
        config: the encoder's configuration (its ``img_size``).
        pretrained: the encoder file, as the message names it.

    Raises:
        ValueError: naming ``--roi_size``, both sizes and the file.
    """
    img_size = tuple(int(r) for r in config["img_size"])
    roi = tuple(int(r) for r in ([roi_size] * len(img_size) if isinstance(roi_size, int) else roi_size))
    if roi != img_size:
        raise ValueError(
            f"--roi_size {roi} differs from the img_size {img_size} the encoder in {pretrained} was pre-trained "
            f"with; set --roi_size to {list(img_size)}"
        )


def read_encoder_for(pretrained: str | Path, roi_size: Sequence[int] | int, mmap: bool = False) -> Checkpoint:
    """Read a pre-trained ``encoder.pt`` (:func:`read_encoder_file`; ``mmap``: memory-mapped, for a caller that
    needs no weights) and check that ``roi_size`` is the ``img_size`` it was pre-trained with
    (:func:`check_roi_fits_encoder`, when the file records one).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not an encoder file, or ``roi_size`` differs from its ``img_size``.
    """
    ckpt = read_encoder_file(pretrained, mmap=mmap)
    if "img_size" in ckpt.config:
        check_roi_fits_encoder(roi_size, ckpt.config, pretrained)
    return ckpt


def default_roi_size(pretrained: str | Path, default: Sequence[int] = (96, 96, 96)) -> list[int]:
    """The fine-tuning's default ``roi_size``: the ``img_size`` a pre-trained ``encoder.pt`` records (the only size it
    can take), else ``default``; an unreadable ``pretrained`` gives ``default`` too (its own check names it).

    Args:
        pretrained: path of ``encoder.pt`` or ``""``.
        default: the size without an encoder.

    Returns:
        ``[X, Y, Z]``.
    """
    if str(pretrained or "").strip():
        try:
            return [int(v) for v in read_encoder_file(pretrained, mmap=True).config["img_size"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return [int(v) for v in default]


def pretrained_check(roi_size: Any) -> Callable[[Any], None]:
    """A ``pretrained`` kind for :func:`medgmae.bundle_checks.check_settings`: the file is an ``encoder.pt`` of
    pre-training and, when ``roi_size`` is itself valid (its own check names it otherwise), ``roi_size`` is the
    encoder's ``img_size`` (:func:`read_encoder_for`); ``""`` (training from scratch) passes. Run up front, a wrong
    file is named before the data pre-check reads every image or anything is written.

    Args:
        roi_size: the ``roi_size`` setting as given.

    Returns:
        a callable that raises ``ValueError`` naming the problem of a bad ``pretrained``.
    """
    from medgmae.setting_kinds import roi_size_problem

    def check(value: Any) -> None:
        if not str(value or "").strip():
            return
        try:
            if roi_size_problem(roi_size) is None:
                read_encoder_for(str(value), roi_size, mmap=True)
            else:
                read_encoder_file(value, mmap=True)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e

    return check


def build_unetr(
    num_classes: int,
    roi_size: Sequence[int] | int,
    pretrained: str | Path = "",
    encoder: dict | None = None,
    feature_size: int = 16,
    in_channels: int = 1,
    resume_dir: str | Path | None = None,
) -> MedGMAEUNETR:
    """UNETR for fine-tuning: the encoder's architecture comes from ``pretrained`` when given, else from ``encoder``.
    A resume from an epoch checkpoint in ``resume_dir`` continues the checkpoint's weights: ``pretrained`` then
    gives the architecture alone, and its weights are neither loaded nor said to be.

    Args:
        num_classes: output classes, background included.
        roi_size: training crop / sliding-window size; must equal the pre-trained encoder's ``img_size``.
        pretrained: path of ``encoder.pt`` (or a pre-training ``model.pt`` / ``best_model.pt``: its encoder), or ``""``
            to train from scratch.
        encoder: :class:`MaskedViTEncoder` arguments for training from scratch (``img_size`` is ``roi_size``).
        feature_size: decoder width.
        in_channels: image channels.
        resume_dir: the run folder when the run resumes (``--resume true``), else ``None``.

    Returns:
        the network, with pre-trained encoder weights loaded when ``pretrained`` is set and the run does not resume
        from a checkpoint.
    """
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2 (background and at least one structure), got {num_classes}")
    if pretrained:
        ckpt = read_encoder_for(pretrained, roi_size, mmap=True)  # as the settings check read it: read once
        cfg = dict(ckpt.config)
        if cfg.get("in_channels", 1) != in_channels:
            raise ValueError(f"{pretrained} was pre-trained with {cfg.get('in_channels')} channels, not {in_channels}")
        net = MedGMAEUNETR(int(num_classes), encoder=MaskedViTEncoder(**cfg), feature_size=feature_size)
        resumed = latest_checkpoint(resume_dir) if resume_dir is not None else None
        if resumed is None:
            load_pretrained_encoder(net, ckpt, source_name=str(pretrained))
        else:  # the checkpoint's weights replace any loaded here
            logger.info("resuming from %s: the encoder's weights are the checkpoint's; %s gives its architecture alone",
                        resumed, pretrained)  # fmt: skip
        return net
    cfg = dict(encoder or {})
    cfg.update(img_size=roi_size, in_channels=in_channels)
    logger.info("training from scratch: no pre-trained encoder")
    return MedGMAEUNETR(int(num_classes), encoder=MaskedViTEncoder(**cfg), feature_size=feature_size)


def stock_unetr_from_encoder(
    pretrained: str | Path, num_classes: int, feature_size: int = 16, norm_name: str = "instance"
) -> UNETR:
    """MONAI's own :class:`UNETR` with the pre-trained encoder loaded; needs 16^3 patches and 12 blocks.

    It stays MONAI's network, which differs from :class:`~medgmae.networks.unetr.MedGMAEUNETR` in two ways: its
    ViT has no class token (``cls_token`` is not loaded), and its position embedding is MONAI's learnable one, so
    the encoder's sin-cos values are where it starts and it trains with the encoder (:func:`param_groups` gives it
    no weight decay), where MedGMAEUNETR keeps them fixed, as pre-training had them.

    Args:
        pretrained: path of ``encoder.pt``.
        num_classes: output classes.
        feature_size: decoder width.
        norm_name: decoder normalisation.

    Returns:
        the MONAI network with every encoder tensor but ``cls_token`` loaded into ``UNETR.vit``.
    """
    ckpt = read_encoder_file(pretrained)
    cfg = ckpt.config
    if set(cfg["patch_size"]) != {16} or cfg["num_layers"] != 12:
        raise ValueError(
            f"MONAI UNETR needs 16^3 patches and 12 blocks; {pretrained} has patch {tuple(cfg['patch_size'])} and "
            f"{cfg['num_layers']} blocks: use medgmae.networks.unetr.MedGMAEUNETR"
        )
    net = UNETR(
        in_channels=cfg["in_channels"],
        out_channels=num_classes,
        img_size=tuple(cfg["img_size"]),
        feature_size=feature_size,
        hidden_size=cfg["hidden_size"],
        mlp_dim=int(cfg["hidden_size"] * cfg["mlp_ratio"]),
        num_heads=cfg["num_heads"],
        norm_name=norm_name,
        spatial_dims=cfg["spatial_dims"],
        qkv_bias=bool(cfg.get("qkv_bias", True)),
    )
    load_pretrained_encoder(net, ckpt, source_name=str(pretrained))
    return net


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise LR decay: 0 embedding, ``i + 1`` block ``i``, ``num_layers + 1`` the rest."""
    if name.startswith(("vit.cls_token", "vit.patch_embedding")):
        return 0
    if name.startswith("vit.blocks."):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


def param_groups(
    network: nn.Module, lr: float, weight_decay: float = 1e-5, layer_decay: float = 1.0, freeze_encoder: bool = False
) -> list[dict]:
    """Optimizer parameter groups with layer-wise learning-rate decay (BEiT / MAE fine-tuning recipe).

    A parameter at depth ``d`` (see :func:`layer_id`) gets ``lr * layer_decay ** (num_layers + 1 - d)``: the decoder
    and the final norm train at ``lr``, earlier blocks slower. Biases, norms, the class token and the position
    embedding get no weight decay (:func:`~medgmae.engine.decay_rule.no_weight_decay`, MAE's rule).

    Args:
        network: :class:`MedGMAEUNETR` or MONAI :class:`UNETR`.
        lr: base learning rate.
        weight_decay: decay of weight matrices.
        layer_decay: per-block factor in ``(0, 1]``; 1 disables the decay.
        freeze_encoder: leave the encoder (``vit``) out and set ``requires_grad=False`` on it.

    Returns:
        groups for any ``torch.optim`` optimizer, each with its ``lr`` and ``weight_decay``.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    set_encoder_trainable(network, not freeze_encoder)
    num_layers = len(network.vit.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in network.named_parameters():
        if not p.requires_grad:
            continue
        depth = layer_id(name, num_layers)
        no_decay = no_weight_decay(name, p)
        g = groups.setdefault(
            (depth, no_decay),
            {"params": [], "lr": lr * layer_decay ** (num_layers + 1 - depth), "weight_decay": 0.0 if no_decay else weight_decay},
        )
        g["params"].append(p)
    return list(groups.values())


def set_encoder_trainable(network: nn.Module, trainable: bool) -> None:
    """Freeze (``False``) or unfreeze the encoder.

    The fixed sin-cos position embedding of :class:`MaskedViTEncoder` and the unused ``norm_cross_attn`` of MONAI's
    transformer blocks always stay frozen.
    """
    fixed_pos = isinstance(network.vit, MaskedViTEncoder)
    for name, p in network.vit.named_parameters():
        p.requires_grad_(trainable and not (fixed_pos and name.endswith("position_embeddings")))
    freeze_unused_cross_attn_norms(network.vit)
