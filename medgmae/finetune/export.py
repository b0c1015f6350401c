"""The fine-tuned UNETR as a TorchScript file that carries its pre-processing (MONAI model zoo's ``model.ts``).

The network is traced (``torch.jit.trace``) at its input size rather than scripted: scripting fails on the
encoder's input-shape check, and sliding-window inference only ever feeds it patches of exactly that size. MONAI's
own ``python -m monai.bundle ckpt_export ... --use_trace True`` also traces it, but its file holds no pre-processing;
this one is written with :func:`monai.data.save_net_with_metadata`, and its ``metadata.json`` extra file holds the
bundle's metadata plus:

* ``preprocessing``: the :class:`~medgmae.preprocessing.PreprocessingSpec` recorded in ``best_model.pt`` (as
  :meth:`~medgmae.preprocessing.PreprocessingSpec.to_dict`), the same contract every other consumer reads;
* ``roi_size``, ``in_channels``, ``out_channels``: the patch the network takes, ``(B, in_channels, *roi_size)`` in
  the frame of the spec's orientation (RAS by default), and the number of output classes (logits, ``(B, out_channels, *roi_size)``);
* ``source``: the checkpoint it was exported from;
* ``network_data_format``, ``description``, ``label_classes`` and ``pred_classes`` (MONAI's standard keys, from
  the bundle's template) rewritten for this network: input ``(in_channels, *roi_size)`` in the spec's intensity
  range, output ``out_channels`` logits (MONAI's ``labels`` format, ``value_range`` ``[]``: unbounded) with the
  run's class names (as ``best_model.pt`` records them; for a file that records none, from the datalist its
  ``training_cases.json`` beside the checkpoint names, ``class_<i>`` where unknown), and the run's patch, spacing and HU window in the description;
* ``eval_metrics``: the run's best validation score and its epoch as ``best_model.pt`` records them
  (``{"mean_dice": ..., "best_epoch": ...}``; absent when the file records none);
* ``run``: the training run's seed and data loader workers as ``best_model.pt`` records them (``extra["run"]``,
  ``{"seed", "num_workers"}``; absent when the file records none), so that the exported file handed on alone says
  how it was trained;
* ``inference``: the rest of the bundle's segmentation recipe (``inference.json``), which the spec alone does not
  give: after the spec's transforms the image is cropped to the box of its voxels above 0
  (``CropForegroundd(source_key="image", allow_smaller=True)``: outside it the prediction is background), then
  sliding windows of ``roi_size`` (MONAI's ``SlidingWindowInferer``, the bundle's overlap), softmax, inversion to
  the input's space (``Invertd``, linear) and argmax. Following it with plain MONAI reproduces the bundle's labels
  (tested; the bundle inverts a few classes at a time, :class:`~medgmae.finetune.invert.InvertedArgmaxd`, which
  changes no label).

:func:`load_exported` reads it back as the network and its spec.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch

from medgmae.files import atomic_write, read_json
from medgmae.finetune.transforms import FOREGROUND_CROP
from medgmae.finetune.best_model import load_finetuned
from medgmae.preprocessing import PreprocessingSpec, model_preprocessing
from medgmae.torch_files import torch_file_kind

#: largest |traced - eager| accepted on a random patch (float32 logits of order 1-10)
EXPORT_ATOL = 1e-4

#: what bundles/unetr_finetune/configs/inference.json does besides the spec (see the module docstring)
INFERENCE_RECIPE = {
    # how medgmae.preprocessing.PreprocessingSpec.transforms applies the "preprocessing" spec, so that a consumer
    # outside MONAI need not rely on MONAI's defaults
    "preprocessing_steps": [
        {"transform": "Orientationd", "axcodes": "preprocessing.orientation"},
        {"transform": "Spacingd", "pixdim": "preprocessing.spacing", "mode": "bilinear", "dtype": "float32"},
        {"transform": "ScaleIntensityRanged", "a_min, a_max": "preprocessing.hu_window",
         "b_min, b_max": "preprocessing.intensity_range", "clip": "preprocessing.clip"},
    ],
    "after_preprocessing": [
        {"transform": "CropForegroundd", "keys": ["image"], "select": "image > 0", **FOREGROUND_CROP},
    ],  # fmt: skip
    "inferer": {"name": "SlidingWindowInferer", "overlap": 0.5, "mode": "constant"},
    "postprocessing": ["softmax over channels", "Invertd to the input's space (linear)", "argmax over channels"],
}


def _trace(network: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` without its warning about the (constant at this size) input-shape check."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.jit.trace(network, example, check_trace=False)


def describe_network(
    template: dict, spec: PreprocessingSpec, roi: list[int], in_channels: int, names: list[str]
) -> dict:
    """MONAI's ``network_data_format`` and ``description`` for the exported network, from the bundle's ``template``
    metadata (its other tensor keys, such as ``modality``, are kept).

    Args:
        template: the bundle's metadata (may be empty).
        spec: the run's pre-processing.
        roi: the network's input patch, along the three axes of the spec's orientation (RAS by default).
        in_channels: image channels.
        names: the output classes in channel order, background first.

    Returns:
        ``{"network_data_format", "description", "label_classes", "pred_classes"}`` to merge into the metadata.
    """
    fmt = template.get("network_data_format", {})
    # "hounsfield" with the windowed value_range, as MONAI's model-zoo CT bundles describe their inputs: the format
    # names the data the pre-processing starts from, value_range what the network then receives
    image = {"type": "image", "format": "hounsfield", "modality": "CT", "dtype": "float32", "is_patch_data": True,
             **fmt.get("inputs", {}).get("image", {})}  # fmt: skip
    channels = {str(c): "image" if in_channels == 1 else f"image channel {c}" for c in range(in_channels)}
    image.update(num_channels=in_channels, spatial_shape=list(roi), value_range=list(spec.intensity_range),
                 channel_def=channels)
    pred = {"type": "image", "dtype": "float32", "is_patch_data": True, **fmt.get("outputs", {}).get("pred", {})}
    # logits: MONAI's "labels" format (one channel per class, the label is the largest channel), unbounded ("[]")
    pred.update(format="labels", value_range=[], num_channels=len(names), spatial_shape=list(roi),
                channel_def={str(c): n for c, n in enumerate(names)})  # fmt: skip
    size = "x".join(str(r) for r in roi)
    description = (
        f"UNETR fine-tuned for {len(names)}-class segmentation (background and {len(names) - 1} structures) on "
        f"{size} crops at {' x '.join(f'{s:g}' for s in spec.spacing)} mm ({spec.orientation}) with HU window "
        f"[{spec.hu_window[0]:g}, {spec.hu_window[1]:g}] scaled to [{spec.intensity_range[0]:g}, "
        f"{spec.intensity_range[1]:g}]. The network takes patches of exactly {size} voxels ({in_channels} channel"
        f"{'' if in_channels == 1 else 's'}) "
        f"and returns {len(names)} channels of logits: segment a whole scan with sliding windows of that size "
        f"(MONAI's sliding_window_inference; see 'inference')."
    )
    classes = ", ".join(f"{c} {n}" for c, n in enumerate(names))
    return {
        "network_data_format": {"inputs": {"image": image}, "outputs": {"pred": pred}},
        "description": description,
        "label_classes": f"integer label map of {len(names)} classes: {classes}",
        "pred_classes": f"{len(names)} channels of logits (unbounded), one per class in label_classes order: softmax "
        "over channels gives the class probabilities, the label is the channel of the largest value",
    }


def run_eval_metrics(checkpoint: str | os.PathLike) -> dict:
    """MONAI's ``eval_metrics`` of the run that wrote ``checkpoint``: its best validation score as ``best_model.pt``
    records it (``extra["metric_name"]``, ``extra["metric"]``), named without the ``val_`` prefix (``mean_dice``),
    with ``best_epoch``; ``{}`` when the file records no score."""
    from medgmae.checkpoint import load_checkpoint
    from medgmae.finetune.best_model import FINETUNED_KIND

    extra = load_checkpoint(checkpoint, FINETUNED_KIND, mmap=True).extra
    if "metric" not in extra:
        return {}
    name = str(extra.get("metric_name") or "val_mean_dice").removeprefix("val_")
    out = {name: float(extra["metric"])}
    if "epoch" in extra:
        out["best_epoch"] = int(extra["epoch"])
    return out


#: what export needs, as a refusal of another file says
EXPORT_NEEDS = "export needs the best_model.pt of a fine-tuning run"


def check_export_settings(
    export_path: str | os.PathLike, metadata_file: str | os.PathLike | None, checkpoint: str | os.PathLike | None = None
) -> bool:
    """Refuse, before anything is traced or written, an ``--export_path`` that is a folder or cannot be written,
    a ``--metadata_file`` that is missing or not JSON, and a ``--checkpoint`` that is missing or no fine-tuned UNETR
    (:func:`~medgmae.finetune.best_model.finetuned_model_check`): one
    :class:`~medgmae.bundle_checks.BundleSettingError` naming each (a bundle's ``initialize`` step;
    :func:`export_torchscript` checks them again). Run from a bundle's command line, the folder of
    ``export_path`` is then held for the export (``hold`` of :func:`~medgmae.bundle_checks.check_settings`): a
    second export into it, or a training run writing there (the run folder by default, whose new run removes an
    earlier ``model.ts``), is refused naming the process that holds it.

    Args:
        export_path: the TorchScript file to write.
        metadata_file: the bundle's ``metadata.json`` (``None``: none).
        checkpoint: the fine-tuning run's ``best_model.pt`` (``None``: not checked here).

    Returns:
        ``True`` (so that the call can sit in a bundle's ``initialize`` list).
    """
    from medgmae.bundle_checks import check_settings
    from medgmae.finetune.best_model import finetuned_model_check

    def export_file(path) -> None:
        if not str(path or "").strip():  # Path("") is the current folder: "is a folder" said nothing
            raise ValueError("expected the file to write (e.g. model.ts), got an empty value")
        if Path(path).is_dir():
            raise ValueError(_folder_given(path))

    def metadata(path) -> None:
        if path and Path(path).is_dir():
            raise ValueError(f"{path} is a folder: give the bundle's metadata.json (e.g. {Path(path) / 'metadata.json'})")
        if path:
            try:
                read_json(path, "bundle's metadata.json")
            except FileNotFoundError as e:
                raise ValueError(str(e)) from e

    settings = {"export_path": (export_path, export_file), "metadata_file": (metadata_file, metadata)}
    if checkpoint is not None:
        settings["checkpoint"] = (checkpoint, lambda v: finetuned_model_check(v, EXPORT_NEEDS))
    folder = os.path.dirname(os.fspath(export_path)) or "."
    return check_settings(settings, output_dirs={"export_path": folder}, hold="export_path")


def _folder_given(path: str | os.PathLike) -> str:
    return f"{path} is a folder; give the file to write, e.g. {Path(path) / 'model.ts'}"


def export_torchscript(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    metadata_file: str | os.PathLike | None = None,
) -> Path:
    """Trace the fine-tuned UNETR of ``checkpoint`` and write it with its pre-processing to ``path``.

    Args:
        checkpoint: a fine-tuning run's ``best_model.pt``.
        path: the TorchScript file to write (atomically; conventionally ``model.ts``).
        metadata_file: the bundle's ``metadata.json``, copied into the file's metadata (``None``: none).

    Returns:
        ``path``.

    Raises:
        FileNotFoundError: ``checkpoint`` or a given ``metadata_file`` is missing.
        ValueError: ``checkpoint`` is not a fine-tuned UNETR (the message names both kinds), or ``path`` is a
            folder.
        RuntimeError: the traced network disagrees with the network on a random patch (nothing is written).
    """
    if Path(path).is_dir():
        raise ValueError(f"--export_path {_folder_given(path)}")
    meta: dict = {}
    if metadata_file is not None:
        meta = read_json(metadata_file, "bundle's metadata.json")
    network = load_finetuned(checkpoint, purpose=EXPORT_NEEDS).eval()
    # a file recording none: the default at the encoder's own window, with a warning (the file is not read again)
    spec = network.preprocessing or model_preprocessing(network.vit, str(checkpoint))
    roi, channels = list(network.vit.img_size), network.vit.in_channels
    make = torch.Generator().manual_seed(0)
    traced = _trace(network, torch.rand(1, channels, *roi, generator=make))
    probe = torch.rand(1, channels, *roi, generator=make)  # not the tracing input
    with torch.no_grad():
        expected, got = network(probe), traced(probe)
    diff = (got - expected).abs().max().item()
    if not diff <= EXPORT_ATOL:
        raise RuntimeError(f"{checkpoint}: the traced network differs from it by {diff:.2e} (> {EXPORT_ATOL:g})")
    out_channels = int(expected.shape[1])
    names = network.class_names  # as best_model.pt records them (older files: the run's datalist)
    meta.update(describe_network(meta, spec, roi, channels, names))
    meta.pop("eval_metrics", None)  # only this run's own score is stated
    metrics = run_eval_metrics(checkpoint)
    if metrics:
        meta["eval_metrics"] = metrics
    meta.pop("run", None)  # likewise: only this run's own record
    if network.run_settings is not None:
        meta["run"] = network.run_settings
    meta.update(
        preprocessing=spec.to_dict(), roi_size=roi, in_channels=channels,
        out_channels=out_channels, source=str(checkpoint), inference=INFERENCE_RECIPE,
    )  # fmt: skip
    from monai.data import save_net_with_metadata

    stream = io.BytesIO()
    save_net_with_metadata(traced, stream, include_config_vals=False, meta_values=meta)
    with atomic_write(path) as tmp:
        tmp.write_bytes(stream.getvalue())
    return Path(path)


def load_exported(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, PreprocessingSpec, dict]:
    """Read a file written by :func:`export_torchscript`.

    Args:
        path: the TorchScript file.
        map_location: device for its weights.

    Returns:
        The traced network (in eval mode), its pre-processing spec, and the whole metadata dictionary.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not TorchScript, or holds no recorded pre-processing.
    """
    from monai.data import load_net_with_metadata

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such TorchScript file")
    try:
        network, meta, _ = load_net_with_metadata(str(path), map_location=torch.device(map_location))
    except RuntimeError as err:
        raise ValueError(_not_torchscript(path, err)) from err
    if "preprocessing" not in meta:
        raise ValueError(f"{path}: holds no recorded pre-processing; export it with export_torchscript")
    return network.eval(), PreprocessingSpec.from_dict(meta["preprocessing"], source=str(path)), meta


def _not_torchscript(path: str | os.PathLike, err: RuntimeError) -> str:
    """Why ``path`` is not read as TorchScript: a toolkit model file named by its kind (a fine-tuned one with the
    ways to use it), another ``torch.save`` file as one, else torch's own first line."""
    from medgmae.checkpoint import model_file_kind
    from medgmae.finetune.best_model import FINETUNED_KIND

    kind = model_file_kind(path)
    if kind == FINETUNED_KIND:
        return (f"{path}: is a {kind} checkpoint (torch.save), not a TorchScript export: use load_finetuned, or export "
                "it with export.json")  # fmt: skip
    if kind is not None:
        return f"{path}: is a {kind} model file (torch.save), not a TorchScript export of a fine-tuned network"
    if torch_file_kind(Path(path)) in ("zip", "pickle"):  # torch's words would call it corrupted
        return f"{path}: a file written by torch.save, not a TorchScript export (torch.jit.save; export.json writes one)"
    return f"{path}: not a TorchScript file ({str(err).splitlines()[0]})"
