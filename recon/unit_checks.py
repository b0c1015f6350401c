"""``medgmae-recon``'s check of a volume's units: attenuation in 1/mm where a reconstruction or reference is read, a
CT in HU where ``simulate`` reads its volume. The judgements are :mod:`medgmae.volume_units`' (the ones zero-shot
inference and segmentation make); here they become a refusal (the other unit) or a warning (a CT stored shifted by
1024 HU, a label map), with ``--no-unit-check`` to skip them."""

from __future__ import annotations

import numpy as np

from medgmae.volume_units import ATTENUATION_BOUNDS, ATTENUATION_LIKE_HU  # noqa: F401  (named by check_units)
from medgmae.volume_units import looks_like_hu, range_is_attenuation, value_kind
from recon.cli_names import CLIError

__all__ = ["UNITS_FLAG", "check_units"]

UNITS_FLAG = "--no-unit-check"

#: What ``simulate`` warns of a volume :func:`medgmae.volume_units.value_kind` finds is no CT in HU (refused
#: attenuation aside): each is simulated as it is.
_HU_WARNINGS = {
    "shifted_up": "has no air ({span}; a CT in HU has air at -1000): stored as HU + 1024 without its rescale "
                  "intercept? It is simulated as it is, air as tissue; subtract 1024 first if so",
    "shifted_down": "looks like a CT shifted down by 1024 HU ({span}, median {median:g}; a CT has soft tissue at "
                    "0 .. 80 HU and air at -1000): its rescale intercept applied twice? It is simulated as it is, "
                    "tissue as air; add 1024 first if so",
    "label_map": "looks like a label map ({values} distinct integer values, {span}), not a CT in HU: a segmentation "
                 "given as the volume? It is simulated as it is, class indices as HU",
}  # fmt: skip


def check_units(volume: np.ndarray, path, flag: str, expected: str) -> None:
    """Refuse a volume whose value range belongs to the other unit: HU where attenuation (1/mm) is expected, or
    attenuation where a CT in HU is expected (the bounds are :data:`ATTENUATION_BOUNDS` and
    :data:`ATTENUATION_LIKE_HU`); where a CT in HU is expected, warn (on stdout, as the commands' other warnings)
    of one stored as HU + 1024, one shifted down by 1024 HU, or a label map. ``--no-unit-check`` skips this check.

    Args:
        volume: the volume, any shape.
        path: its file, as the message names it.
        flag: the option that gave it, as the message names it.
        expected: ``"attenuation"`` (1/mm) or ``"hu"``.

    Raises:
        CLIError: the range belongs to the other unit.
    """
    if expected not in ("attenuation", "hu"):
        raise ValueError(f"expected must be 'attenuation' or 'hu', got {expected!r}")
    skip = f"; {UNITS_FLAG} skips this check"
    if expected == "attenuation":
        if looks_like_hu(volume):  # the range read again for the message only when refusing
            raise CLIError(f"{flag} {path} looks like a CT in HU (values {float(np.min(volume)):.4g} .. "
                           f"{float(np.max(volume)):.4g}), not linear attenuation in 1/mm (water 0.0192): pass the "
                           "attenuation volume simulate wrote (e.g. scan/reference.nii.gz), or convert with "
                           f"mu = 0.0192 (1 + HU / 1000), clipped at 0{skip}")  # fmt: skip
        return
    kind, facts = value_kind(volume)  # one pass for the range, which the attenuation test and messages reuse
    span = f"values {facts['lo']:.4g} .. {facts['hi']:.4g}"
    if range_is_attenuation(facts["lo"], facts["hi"]):  # before the label map: a 0/1 mask is refused as before
        raise CLIError(f"{flag} {path} looks like linear attenuation in 1/mm ({span}), not a CT in HU (air -1000, "
                       f"water 0): simulate reads HU; convert with HU = 1000 (mu / 0.0192 - 1){skip}")  # fmt: skip
    if kind in _HU_WARNINGS:  # warnings: other modalities' and crops' ranges reach here too
        print(f"warning: {flag} {path} " + _HU_WARNINGS[kind].format(span=span, **facts), flush=True)
