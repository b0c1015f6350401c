"""The work of ``medgmae-2d``'s subcommands (``layers``, ``segment``, ``edges``; :mod:`medgmae.twod.cli` parses
their flags, then imports this module: torch and the model load only once the arguments parse): read the model and
the image, render the layers, write the outputs.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from medgmae.checkpoint_checks import TrainingStateError
from medgmae.engine import resolve_device
from medgmae.software import software_versions
from medgmae.words import plural
from medgmae.files import output_dir_problem, os_error_message, save_json_atomic, staged_outputs
from medgmae.folder_lock import FolderInUse, folder_held
from medgmae.temp_names import remove_dead_writes_of
from medgmae.twod import layering as L
from medgmae.twod.cli import FIRST_COUNT, MAX_EXPLICIT_RENDER_EDGE, MAX_RENDER_EDGE
from medgmae.twod.gmae import GMAE2D
from medgmae.twod.gsplat_backend import check_backend_setting
from medgmae.twod.image_checks import blank_image_problem, upscale_note
from medgmae.twod.images import is_windowed, read_image_source, read_reference, slice_text, to_model_input
from medgmae.twod.picture_notes import displayed_orientation_note
from medgmae.twod.pngs import save_png, save_png_grid
from medgmae.twod.windows import recorded_window, window_setting

__all__ = ["main", "default_render_size"]


def _load(args) -> tuple[GMAE2D, torch.Tensor, tuple[int, int], np.ndarray | None, dict]:
    """The model, the image as its input, the render size, the ``--reference`` mask read at the image's slice
    and checked against the image's pixels (``None`` without one), and the image record (:func:`_image_record`),
    before anything is computed."""
    device = resolve_device(args.device)
    try:
        model = GMAE2D.from_checkpoint(args.checkpoint, map_location="cpu").to(device).eval()
    except TrainingStateError as e:
        from medgmae.twod.gvit.model import is_gvit_training_state

        if is_gvit_training_state(e.objects):
            raise ValueError(f"{args.checkpoint.name} is a gvit training checkpoint (GViT classifier); expected "
                             f"gmae2d (file: {args.checkpoint})") from None  # fmt: skip
        raise
    if args.image.is_file() and not is_windowed(args.image):
        kind = args.image.suffix.lstrip(".").upper() or "picture file"
        if args.window is not None:
            raise ValueError(f"--window applies to NIfTI and DICOM images in HU; {args.image} is a {kind}")
        if args.slice is not None:
            raise ValueError(f"--slice applies to NIfTI volumes and multi-frame DICOM; {args.image} is a {kind} (one image)")
    image, source = read_image_source(args.image, slice_index=args.slice, window=_window(args, model))
    if blank := blank_image_problem(args.image, image, source):
        raise ValueError(blank)
    _note_if_16bit_range_narrow(args, source.get("stored_range"))
    if note := upscale_note(args.image.name, image.shape[-2:], model.img_size):
        print(f"medgmae-2d {args.command}: note: {note}", file=sys.stderr)
    x = to_model_input(image, model.in_channels, model.img_size).to(device)
    size = tuple(args.render_size) if args.render_size else default_render_size(image.shape[-2:])
    _check_render_size(size, model.img_size, device)
    reference = None
    if getattr(args, "reference", None) is not None:
        reference = read_reference(args.reference, args.image, image.shape[-2:], slice_index=args.slice)
        picture_of_scan = (not is_windowed(args.reference), is_windowed(args.image))  # read: a picture, or a scan
        if note := displayed_orientation_note(args.reference, args.image, *picture_of_scan):
            print(f"medgmae-2d {args.command}: note: {note}", file=sys.stderr)
    return model, x, size, reference, _image_record(args, source)


def _note_if_16bit_range_narrow(args, stored_range: tuple[int, int] | None) -> None:
    """A note on stderr when ``--image`` is a 16-bit PNG/TIFF whose values lie within a narrow part of the 16-bit
    range it is divided by (12-bit data, CT as HU + 1024): the model sees it almost without contrast, as the
    training bundles warn of such a dataset (:mod:`medgmae.twod.picture_range`). ``stored_range``: the picture's
    lowest and highest stored value as its reader found them (``None`` for other images): the file is not opened
    again."""
    from medgmae.twod.picture_range import NARROW_SHARE

    if stored_range is not None and stored_range[1] - stored_range[0] < NARROW_SHARE * 65535:
        low, high = stored_range
        print(f"medgmae-2d {args.command}: note: {args.image.name} is a 16-bit picture with values within {low}..{high} "
              f"of 0..65535, read as {low / 65535:.3f}..{high / 65535:.3f}: almost without contrast (12-bit data, or "
              "CT stored as HU + 1024?); stretch it to the 16-bit range, or save it as NIfTI/DICOM and give --window",
              file=sys.stderr)  # fmt: skip


def _image_record(args, source: dict) -> dict:
    """What ``layers.json`` / ``segment.json`` / ``edges.json`` record of the image: its path, the slice
    ``{"axis", "index", "count"}`` and the window ``[low, high]`` used (both None for picture files), and where the
    window came from: ``--window``, ``checkpoint`` (recorded at training), ``dicom file``, ``percentiles 0.5/99.5``
    or ``min-max``."""
    how = source["window_source"]
    if how == "given":
        how = "--window" if args.window is not None else "checkpoint"
    return {"path": str(args.image), "slice": source["slice"], "window": source["window"], "window_source": how}


def _describe(image: dict) -> str:
    """One line for stdout: the slice and the window of a NIfTI/DICOM image (the file name for other images)."""
    text = f"image {Path(image['path']).name}"
    if image["slice"] is not None:
        text += f", {slice_text(image['slice'])}"
    if image["window"] is not None:
        text += f", window {image['window'][0]:g} {image['window'][1]:g} ({image['window_source']})"
    elif image["window_source"]:  # a colour DICOM frame: a --window or the checkpoint's does not apply
        text += f", {image['window_source']}"
    return text


def _check_render_size(size: Sequence[int], img_size: Sequence[int], device: torch.device) -> None:
    """Refuse a render larger than :data:`MAX_EXPLICIT_RENDER_EDGE` on an edge; note on stderr that one over
    1024 pixels on an edge takes minutes on the CPU (5000 x 5000 took 5 minutes on 2 cores, silently)."""
    if max(size) > MAX_EXPLICIT_RENDER_EDGE:
        raise ValueError(f"--render-size {size[0]} {size[1]}: at most {MAX_EXPLICIT_RENDER_EDGE} pixels on an edge (the "
                         f"model sees a {' x '.join(str(n) for n in img_size)} input; a larger render adds no detail)")  # fmt: skip
    if device.type == "cpu" and max(size) > 1024:
        print(f"note: rendering {size[0]} x {size[1]} pixels on the CPU takes minutes; the image's own size, or a "
              f"smaller --render-size, is quicker", file=sys.stderr)  # fmt: skip


def default_render_size(image_size: Sequence[int]) -> tuple[int, int]:
    """The render size without ``--render-size``: the image's own ``(H, W)``, so that the outputs overlay it (the
    model sees the image resized to its square input; rendering back restores the aspect ratio), scaled down to
    :data:`MAX_RENDER_EDGE` on the longer edge for larger images."""
    h, w = (int(n) for n in image_size)
    scale = min(1.0, MAX_RENDER_EDGE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _window(args, model: GMAE2D) -> tuple[float, float] | None:
    """The intensity window for a NIfTI/DICOM ``--image``: ``--window`` if given, else the one recorded in the
    checkpoint at training (``data_settings["window"]``), else ``None``. A ``--window`` that differs from the recorded
    one is used, with a one-line note on stderr naming both.

    Raises:
        ValueError: ``--window`` or the window the checkpoint records is not ``[low, high]`` with ``high > low``
            (naming the flag or the file).
    """
    recorded = recorded_window(model.data_settings, args.checkpoint)
    if args.window is None:
        return recorded if recorded is not None and is_windowed(args.image) else None
    try:
        given = window_setting(args.window)
    except ValueError as e:
        raise ValueError(f"--window: {e}") from None
    if recorded is not None and given != recorded:
        print(f"medgmae-2d {args.command}: note: using --window {given[0]:g} {given[1]:g}, not the window "
              f"{recorded[0]:g} {recorded[1]:g} the model was trained with", file=sys.stderr)  # fmt: skip
    return given


def _check_layers(num_layers: int, model: GMAE2D, flag: str = "--num-layers") -> None:
    if num_layers > model.num_gaussians:
        raise ValueError(f"{flag} {num_layers} exceeds the model's {plural(model.num_gaussians, 'Gaussian')}")


def _apply_layer_defaults(args, model: GMAE2D) -> None:
    """Fill ``--num-layers`` / ``--granularities`` / ``--first-count`` left at their defaults, kept within the
    model's Gaussians (a given value beyond them is refused by :func:`_check_layers`)."""
    k = model.num_gaussians
    if getattr(args, "num_layers", "absent") is None:
        args.num_layers = L.default_num_layers(k)
    if getattr(args, "first_count", "absent") is None:
        args.first_count = min(FIRST_COUNT, k)
    if getattr(args, "granularities", "absent") is None:
        args.granularities = L.default_granularities(k)


def _check_backend(args) -> None:
    """Refuse ``--backend gsplat`` where ``--device`` runs on a CPU (gsplat renders on CUDA only), in this tool's
    flags, before the model is read."""
    try:
        check_backend_setting(args.backend, args.device, flag="--backend")
    except ValueError as e:
        raise ValueError(f"--backend {args.backend}: {e}") from None


def _check_out(command: str, out: Path) -> None:
    """Refuse an ``--out`` that cannot become a folder (before any computation); remove what killed runs left of it
    (:func:`medgmae.temp_names.remove_dead_writes_of`), saying so."""
    problem = output_dir_problem(out)
    if problem:
        raise ValueError(f"--out {out}: {problem}")
    if note := remove_dead_writes_of(out, folder=True):
        print(f"medgmae-2d {command}: note: {note}", flush=True)


def _run_layers(args, model, x, size) -> tuple[dict[str, Callable[[Path], object]], dict]:
    _apply_layer_defaults(args, model)
    _check_layers(args.num_layers, model)
    _check_layers(args.first_count, model, "--first-count")
    g = model.predict_gaussians(x)
    colors, _ = L.render_layers(g, args.num_layers, size, args.backend)
    per_layer = [int(idx.shape[1]) for idx in L.depth_layers(g, args.num_layers)]
    counts = L.partial_render_counts(model.num_gaussians, args.first_count)
    partial = L.partial_renders(g, counts, size, args.backend)
    recon = partial[0, -1]
    inp = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)[0] if tuple(size) != model.img_size else x[0]
    summary = {"num_layers": args.num_layers, "gaussians_per_layer": per_layer, "partial_render_counts": counts,
               "num_gaussians": model.num_gaussians, "render_size": list(size),
               "mse_full_render": float((recon - inp).square().mean())}  # fmt: skip
    layer_labels = [f"layer {i + 1}: {plural(n, 'Gaussian')}" for i, n in enumerate(per_layer)]  # nearest first
    partial_labels = ["input"] + [f"{k} nearest" if k < model.num_gaussians else f"all {k}" for k in counts]
    return {
        "input.png": lambda p: save_png(inp, p),
        "reconstruction.png": lambda p: save_png(recon, p),
        "layer_stack.png": lambda p: save_png_grid(colors[0], layer_labels, p, ncols=min(8, args.num_layers)),
        "partial_renders.png": lambda p: save_png_grid(torch.cat([inp[None], partial[0]]), partial_labels, p),
    }, summary


def _run_segment(
    args, model, x, size, reference: np.ndarray | None = None
) -> tuple[dict[str, Callable[[Path], object]], dict]:
    _apply_layer_defaults(args, model)
    _check_layers(args.num_layers, model)
    split = args.num_layers // 2 if args.split is None else args.split
    if not 0 <= split < args.num_layers:
        raise ValueError(f"--split must be in 0..{args.num_layers - 1}, got {split}")
    if reference is not None:  # the mask read by _load at the image's slice, resized to the render
        ref = torch.as_tensor(reference).float()
        reference = torch.nn.functional.interpolate(ref[None, None], size=size, mode="nearest-exact")[0, 0] > 0
    g = model.predict_gaussians(x)
    assignment = L.layer_assignment(L.cumulative_renders(g, args.num_layers, size, args.backend), args.threshold)[0].cpu()
    fg = L.figure_ground(assignment, split, args.num_layers)
    summary = {"num_layers": args.num_layers, "threshold": args.threshold, "split": split,
               "foreground_fraction": float(fg.float().mean()), "render_size": list(size)}  # fmt: skip
    if reference is not None:
        summary["iou"] = float(L.mask_iou(fg, reference))
    return {
        "assignment.png": lambda p: save_png((assignment + 1).float() / args.num_layers, p),
        "foreground.png": lambda p: save_png(fg.float(), p),
    }, summary


def _run_edges(args, model, x, size) -> tuple[dict[str, Callable[[Path], object]], dict]:
    _apply_layer_defaults(args, model)
    for n in args.granularities:
        _check_layers(n, model, "--granularities")
    g = model.predict_gaussians(x)
    edges = L.zero_shot_edges(g, size, args.granularities, args.threshold, args.backend)
    outputs: dict[str, Callable[[Path], object]] = {
        f"edges_l{n}.png": (lambda e: lambda p: save_png(e[0].float(), p))(e) for n, e in edges.items()
    }
    summary = {"granularities": list(edges), "threshold": args.threshold, "render_size": list(size),
               "edge_fraction": {f"l@{n}": float(e.float().mean()) for n, e in edges.items()}}  # fmt: skip
    return outputs, summary


_COMMANDS = {"layers": _run_layers, "segment": _run_segment, "edges": _run_edges}
#: files of a command whose names vary between runs; stale ones are removed when the command writes its outputs
_OWNED_PATTERNS = {"edges": ("edges_l*.png",)}


def _write_outputs(command: str, writers: dict[str, Callable[[Path], object]], out: Path) -> None:
    """Write the outputs into a staging folder and move them into ``out`` only when every one was written
    (:func:`medgmae.files.staged_outputs`), then remove this command's files of an earlier run that were not
    rewritten."""
    with staged_outputs(out) as staging:
        for name, write in writers.items():
            write(staging / name)
    for pattern in _OWNED_PATTERNS.get(command, ()):
        for old in out.glob(pattern):
            if old.name not in writers:
                old.unlink()


def _error(command: str, message: str, status: int) -> int:
    """Print ``medgmae-2d <command>: error: <message>`` on stderr and return ``status``."""
    print(f"medgmae-2d {command}: error: {message}", file=sys.stderr)
    return status


def _os_error(command: str, e: OSError, status: int) -> int:
    """:func:`_error` for an ``OSError`` :func:`~medgmae.files.os_error_message` can name; others are raised."""
    if (message := os_error_message(e)) is None:
        raise e
    return _error(command, message, status)


def main(args: argparse.Namespace) -> int:
    """Run the subcommand ``args.command`` with its parsed flags (:func:`medgmae.twod.cli.main` parses them).

    Args:
        args: the flags parsed by :func:`medgmae.twod.cli.build_parser`, ``~`` expanded.

    Returns:
        The exit status (2: an input refused, ``--out`` held by another run included; 1: a failure while running or
        writing).
    """
    try:  # one command at a time in --out: two mixed their files, and one's removal of stale ones took the other's
        with folder_held(args.out):
            return _run(args)
    except FolderInUse as e:
        return _error(args.command, str(e), 2)


def _run(args: argparse.Namespace) -> int:
    """:func:`main` once its ``--out`` is held: compute every output, then write them; the exit status."""
    try:
        _check_out(args.command, args.out)
        _check_backend(args)
        model, x, size, reference, image = _load(args)
        run = _COMMANDS[args.command]
        if reference is not None:  # only segment has --reference
            run = functools.partial(run, reference=reference)
        with torch.no_grad():
            writers, summary = run(args, model, x, size)
        summary["image"], summary["software"] = image, software_versions(x.device)
        writers[f"{args.command}.json"] = lambda p: save_json_atomic(summary, p)
    except (FileNotFoundError, ValueError) as e:
        return _error(args.command, str(e), 2)
    except OSError as e:  # an input path too long to look up (the output folder is checked first)
        return _os_error(args.command, e, 2)
    except RuntimeError as e:
        return _error(args.command, str(e), 1)
    try:
        _write_outputs(args.command, writers, args.out)  # everything is computed: write each file atomically
    except OSError as e:  # no room left for them
        return _os_error(args.command, e, 1)
    print(f"medgmae-2d {args.command}: {_describe(image)}")
    print(f"medgmae-2d {args.command}: wrote {', '.join(writers)} to {args.out}")
    return 0
