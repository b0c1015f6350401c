"""Validation during pre-training: masked-voxel PSNR and SSIM on fixed held-out crops with fixed masks.

:class:`MaskedValidationHandler` cuts a few crops from the validation volumes once (a seeded random crop per
volume and sample, the same in every run and after a resume), masks each with its own seeded generator, and every
``interval`` epochs scores the model's reconstruction on the masked voxels: the loss (masked MSE), PSNR and SSIM.
The values go to the log, TensorBoard (``val/loss``, ``val/psnr``, ``val/ssim``) and a
:class:`~medgmae.engine.MetricHistory`; the model with the best PSNR is written as ``best_model.pt`` in
``model.pt``'s format. MedGMAE, MedGMAE* and the voxel-MAE baseline are scored the same way. Under torchrun the
crops are shared out among the processes (rank ``r`` scores crops ``r, r + W, ...``) and their values gathered back
in crop order, so the means are the ones one process computes from the same per-crop values.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from torch import Tensor

from medgmae.checkpoint import lost_best_warning
from medgmae.distributed import gather_in_order, rank_world
from medgmae.engine import MetricHistory, is_main_process, unwrap_model
from medgmae.networks.mae_base import MAEOutput
from medgmae.torch_files import save_torch_atomic
from medgmae.whole_numbers import nonnegative_count, positive_count

__all__ = [
    "BEST_MODEL_FILE",
    "VALIDATION_METRICS",
    "MaskedValidationHandler",
    "masked_psnr",
    "masked_psnr_per_sample",
    "masked_ssim",
    "save_best_model",
]

logger = logging.getLogger("medgmae.mae_training")

#: the best validation model, in ``model.pt``'s format
BEST_MODEL_FILE = "best_model.pt"

#: what :meth:`MaskedValidationHandler.evaluate` scores, in the order of a crop's values
VALIDATION_METRICS = ("loss", "psnr", "ssim")


def masked_psnr_per_sample(pred: Tensor, target: Tensor, mask: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR (dB) of each batch item over its masked voxels: ``10 log10(range^2 / masked MSE)``.

    Args:
        pred: ``(B, C, *spatial)``.
        target: same shape.
        mask: ``(B, 1, *spatial)`` of 0/1; an item with no masked voxel is scored over all voxels.
        data_range: value range of the images.

    Returns:
        ``(B,)`` float32.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    w = mask.float().expand_as(pred).flatten(1)
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
    err = (pred.float() - target.float()).square().flatten(1)
    mse = (err * w).sum(1) / w.sum(1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def masked_psnr(out: MAEOutput, target: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR (dB) over the masked voxels of a whole batch pooled (the trainer's ``psnr_masked``): one MSE over every
    masked voxel of every item, i.e. :func:`masked_psnr_per_sample` with the batch taken as one item.

    Args:
        out: the model output; its ``pred`` is ``(B, C, *spatial)`` and its ``mask`` ``(B, 1, *spatial)`` of 0/1.
        target: the images, same shape as ``out.pred``.
        data_range: value range of the images.

    Returns:
        A float32 scalar tensor.
    """
    as_one_item = (out.pred, target, out.mask.expand_as(target))
    return masked_psnr_per_sample(*(t.flatten(0, 1).unsqueeze(0) for t in as_one_item), data_range=data_range)[0]


def _gaussian_1d(kernel_size: int, sigma: float, like: Tensor) -> Tensor:
    """The normalised 1D Gaussian window of MONAI's SSIM (its 2D/3D window is the outer product of these)."""
    dist = torch.arange((1 - kernel_size) / 2, (1 + kernel_size) / 2, 1.0, dtype=like.dtype, device=like.device)
    gauss = torch.exp(-((dist / sigma) ** 2) / 2)
    return gauss / gauss.sum()


def _band_matrix(n: int, window: Tensor) -> Tensor:
    """``(n, n - k + 1)`` matrix whose column ``j`` holds the ``k``-tap ``window`` in rows ``j .. j + k - 1``: a
    vector of length ``n`` times it is its 'valid' correlation with the window (the outputs where it fits whole)."""
    k = window.numel()
    cols = torch.arange(n - k + 1, device=window.device)
    band = torch.zeros(n, n - k + 1, dtype=window.dtype, device=window.device)
    band[cols + torch.arange(k, device=window.device)[:, None], cols.expand(k, -1)] = window[:, None]
    return band


def _valid_gaussian_filter(maps: Tensor, window: Tensor, dims: int) -> Tensor:
    """``maps`` filtered by the separable window along each of its last ``dims`` axes, 'valid' output only.

    Each axis is one matrix product with :func:`_band_matrix` on contiguous data: the last axis from the right; an
    earlier axis from the left (the band matrix transposed), with the axes after it flattened into one.

    Args:
        maps: ``(..., *spatial)`` with ``dims`` spatial axes, each at least the window's length ``k``.
        window: ``(k,)`` 1D window.
        dims: number of spatial axes.

    Returns:
        ``(..., *(s - k + 1 for s in spatial))``.
    """
    out = maps @ _band_matrix(maps.shape[-1], window)
    for axis in range(out.dim() - 2, out.dim() - dims - 1, -1):
        lead, n, rest = out.shape[:axis], out.shape[axis], out.shape[axis + 1 :]
        band_t = _band_matrix(n, window).T
        out = (band_t @ out.reshape(*lead, n, -1)).reshape(*lead, band_t.shape[0], *rest)
    return out


def masked_ssim(
    pred: Tensor, target: Tensor, mask: Tensor, data_range: float = 1.0, kernel_size: int = 11, kernel_sigma: float = 1.5
) -> Tensor:
    """Mean SSIM of each batch item over its masked voxels (the Gaussian-window SSIM map of MONAI's ``SSIMMetric``).

    The SSIM map is that of MONAI's :func:`~monai.metrics.regression.compute_ssim_and_cs` (Gaussian window
    ``kernel_size``, ``sigma``, ``k1 = 0.01``, ``k2 = 0.03``), defined where the whole window fits (``kernel_size //
    2`` voxels in from each border). The window is separable: the five local means (of x, y, x^2, y^2, xy) are
    filtered together, one axis at a time, each axis as one matrix product with a banded
    ``(n, n - kernel_size + 1)`` matrix that yields only the map's region (:func:`_valid_gaussian_filter`; the same
    on CUDA). Not MONAI's ``separable_filtering``: its sums are the same (then cropped to that region), but its
    1-voxel-wide 3D convolutions are slow on the CPU, several times slower for the whole SSIM of a 96^3 crop
    (``bench/ssim.py``, ``bench/RESULTS.md``). Computed in float32, autocast off. The map is averaged over the
    masked voxels (over all of it for an item with no masked voxel where the map is defined).

    Args:
        pred: ``(B, C, *spatial)``, 2 or 3 spatial dimensions, each at least ``kernel_size``.
        target: same shape.
        mask: ``(B, 1, *spatial)`` of 0/1.
        data_range: value range of the images.
        kernel_size: window edge (odd).
        kernel_sigma: window standard deviation.

    Returns:
        ``(B,)`` float32.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    dims = pred.dim() - 2
    if dims not in (2, 3) or min(pred.shape[2:]) < kernel_size or kernel_size % 2 == 0:
        raise ValueError(f"masked_ssim needs 2D/3D images of at least an odd kernel_size={kernel_size}, got {tuple(pred.shape)}")
    x, y = pred.float(), target.float()
    with torch.autocast(device_type=x.device.type, enabled=False):
        window = _gaussian_1d(kernel_size, kernel_sigma, x)
        means = _valid_gaussian_filter(torch.stack([x, y, x * x, y * y, x * y]), window, dims)
    mu_x, mu_y, mu_xx, mu_yy, mu_xy = means.unbind(0)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    sigma_x, sigma_y, sigma_xy = mu_xx - mu_x * mu_x, mu_yy - mu_y * mu_y, mu_xy - mu_x * mu_y
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    r = kernel_size // 2
    inner = (slice(None), slice(None)) + (slice(r, -r),) * dims
    weight = mask.float()[inner].expand_as(ssim_map).flatten(1)
    weight = torch.where(weight.sum(1, keepdim=True) > 0, weight, torch.ones_like(weight))
    return (ssim_map.flatten(1) * weight).sum(1) / weight.sum(1)


def save_best_model(
    network: nn.Module, output_dir: str | Path, filename: str = BEST_MODEL_FILE, epoch: int | None = None,
    psnr: float | None = None,
) -> Path:
    """Write ``network`` as ``output_dir/filename`` in ``model.pt``'s format
    (:meth:`~medgmae.networks.mae_base.MaskedAutoencoder.model_checkpoint`), atomically; ``extra["best"]`` records
    the validation ``epoch`` and masked ``psnr`` (dB) it was chosen by, when given."""
    payload = unwrap_model(network).model_checkpoint()
    if epoch is not None:
        best = {"epoch": int(epoch), **({} if psnr is None else {"val_psnr": float(psnr)})}
        payload["extra"] = {**dict(payload.get("extra") or {}), "best": best}
    return save_torch_atomic(payload, Path(output_dir) / filename)


def _best_epoch(extra: dict) -> int | None:
    """The validation epoch a ``best_model.pt``'s ``extra`` records (:func:`save_best_model`), ``None`` if none."""
    best = extra.get("best")
    return best.get("epoch") if isinstance(best, dict) else None


class MaskedValidationHandler:
    """Score the model on fixed validation crops with fixed masks every ``interval`` epochs and keep the best.

    Runs after the epoch (and at the last epoch in any case). Under a process group every rank runs it: each scores
    its share of the crops (:meth:`evaluate`) and rank 0 alone logs, records, writes TensorBoard and
    ``best_model.pt``. Attach it before the checkpoint handler so that each epoch's checkpoint holds its validation
    result (``history``).

    Args:
        network: the model being trained (DDP wrappers are removed).
        dataset: validation dataset; each item is a dict, or a list of dicts (several crops), with an ``image`` of
            shape ``(1, D, H, W)`` at the model's input size. Random crops in its transform are drawn once, with
            ``seed``.
        history: where ``val_loss``, ``val_psnr`` and ``val_ssim`` and the best PSNR are recorded.
        output_dir: where ``best_model.pt`` is written.
        interval: epochs between validations.
        seed: seed of the crops and masks.
        summary_writer: TensorBoard ``SummaryWriter`` (optional).
        max_crops: at most this many crops are used.
        image_key: key of the image in the dataset items.
    """

    #: what the log line calls the validation inputs (a 2D subclass's are whole images)
    item_name = "crops"

    def __init__(
        self,
        network: nn.Module,
        dataset: Sequence,
        history: MetricHistory,
        output_dir: str | Path,
        interval: int = 1,
        seed: int = 0,
        summary_writer: Any = None,
        max_crops: int = 8,
        image_key: str = "image",
    ) -> None:
        interval, max_crops = positive_count(interval, "val_interval"), positive_count(max_crops, "max_crops")
        if len(dataset) == 0:
            raise ValueError("the validation dataset is empty")
        self.network, self.dataset, self.history = network, dataset, history
        self.output_dir, self.interval, self.seed = Path(output_dir), interval, nonnegative_count(seed, "seed")
        self.writer, self.max_crops, self.image_key = summary_writer, max_crops, image_key
        self._crops: list[Tensor] | None = None
        self._best_checked = False  # whether check_best_file has looked at best_model.pt

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.check_best_file)  # after the checkpoint handler's restore
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)

    def check_best_file(self, engine: Engine | None = None) -> None:
        """Once, when a resumed run starts (or at its first validation, which a resume from an epoch saved while it
        was validated runs first): a restored best epoch whose ``best_model.pt`` is missing, unreadable or of
        another epoch (:func:`~medgmae.checkpoint.lost_best_warning`) is warned about and forgotten
        (:meth:`~medgmae.engine.MetricHistory.forget_best`), so that the next validation writes ``best_model.pt``
        and the run's best is that of a model it has (main process).

        Args:
            engine: the trainer (unused: an ignite handler).
        """
        if self._best_checked or not is_main_process():
            return
        self._best_checked = True
        epoch, path = self.history.best_epoch, self.output_dir / BEST_MODEL_FILE
        if epoch < 1:  # no best restored
            return
        if lost := lost_best_warning(path, epoch, f"best validation PSNR {self.history.best_value:.2f} dB", _best_epoch):
            logger.warning("%s", lost)
            self.history.forget_best()

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs

    @property
    def model(self) -> nn.Module:
        return unwrap_model(self.network)

    def crops(self) -> list[Tensor]:
        """The fixed validation crops, ``(1, D, H, W)`` float32 on the CPU (cut on first use)."""
        if self._crops is None:
            transform = getattr(self.dataset, "transform", None)
            if hasattr(transform, "set_random_state"):
                transform.set_random_state(seed=self.seed)
            crops: list[Tensor] = []
            for i in range(len(self.dataset)):
                if len(crops) >= self.max_crops:  # read no more validation volumes than the crops need
                    break
                item = self.dataset[i]
                for d in item if isinstance(item, list) else [item]:
                    x = d[self.image_key]
                    crops.append(torch.as_tensor(x.as_tensor() if hasattr(x, "as_tensor") else x, dtype=torch.float32))
            self._crops = crops[: self.max_crops]
        return self._crops

    @torch.no_grad()
    def masked_output(self, index: int) -> tuple[Tensor, MAEOutput]:
        """``(crop (1, 1, D, H, W), model output)`` for crop ``index`` under its fixed mask (eval mode)."""
        model = self.model
        device = next(model.parameters()).device
        x = self.crops()[index].unsqueeze(0).to(device)
        gen = torch.Generator(device=device).manual_seed(self.seed + 1000 * index)
        was_training = model.training
        model.eval()
        try:
            out = model(x, generator=gen)
        finally:
            model.train(was_training)
        return x, out

    def crop_metrics(self, index: int) -> tuple[float, float, float]:
        """Masked-voxel ``loss`` (MSE), ``psnr`` (dB) and ``ssim`` of crop ``index`` under its fixed mask
        (:data:`VALIDATION_METRICS`' order)."""
        x, out = self.masked_output(index)
        psnr, ssim = masked_psnr_per_sample(out.pred, x, out.mask)[0], masked_ssim(out.pred, x, out.mask)[0]
        return float(out.loss), float(psnr), float(ssim)

    def evaluate(self) -> dict[str, float]:
        """Mean masked-voxel ``loss`` (MSE), ``psnr`` (dB) and ``ssim`` over the fixed crops.

        Under a process group of ``W`` ranks, rank ``r`` scores crops ``r, r + W, ...`` (none when there are fewer
        crops than ranks) through the unwrapped model, which runs no collective of DDP's; the per-crop values are
        all-gathered back into crop order and summed in that order, as one process sums them. Every rank must
        call it, at the same point (the gather is a collective), and every rank gets the same means.

        Returns:
            ``{"loss": ..., "psnr": ..., "ssim": ...}``.
        """
        n = len(self.crops())
        rank, world = rank_world()
        values = gather_in_order([self.crop_metrics(i) for i in range(rank, n, world)])
        sums = dict.fromkeys(VALIDATION_METRICS, 0.0)
        for crop in values:  # crop order, whatever the number of processes
            for name, value in zip(VALIDATION_METRICS, crop):
                sums[name] += value
        return {k: v / n for k, v in sums.items()}

    def __call__(self, engine: Engine) -> None:
        self.check_best_file()  # rank 0; the others pass
        epoch = engine.state.epoch
        metrics = self.evaluate()  # every rank: its share of the crops
        if not is_main_process():
            return
        for name, value in metrics.items():
            self.history.record(f"val_{name}", epoch, value)
            if self.writer is not None:  # at the iteration, as train_loss: a resume's purge step then covers it
                self.writer.add_scalar(f"val/{name}", value, engine.state.iteration)
        if self.writer is not None:
            self.writer.flush()
        improved = self.history.update_best(epoch, metrics["psnr"])
        if improved:
            save_best_model(self.network, self.output_dir, epoch=epoch, psnr=metrics["psnr"])
        processes = rank_world()[1]
        logger.info(
            "epoch %d validation (%d %s, fixed masks%s): masked PSNR %.2f dB, SSIM %.4f, loss %.5f; best PSNR %.2f dB "
            "at epoch %d%s", epoch, len(self.crops()), self.item_name, f"; shared out over {processes} processes"
            if processes > 1 else "", metrics["psnr"], metrics["ssim"], metrics["loss"],
            self.history.best_value, self.history.best_epoch, f" (wrote {BEST_MODEL_FILE})" if improved else "",
        )  # fmt: skip
