"""What each level of a MedGMAE(*) model contributes to its zero-shot Gaussians.

For every ``model.pt`` given, the model decodes unmasked 96^3 crops of held-out phantoms (generator seeds
``--seeds``, made at the spacing and windowed with the HU window recorded in the checkpoint), and the table gives,
per level: the Gaussians per crop, how many are alive (intensity above ``--min-intensity``, the threshold at which
the reconstruction's zero-shot start drops Gaussians, ``recon.initialisation``), their median intensity and the
level's share of the rendered mass (intensity x product of the scales, summed over the level). A MedGMAE has one
level. Numbers are means over the crops.

    python bench/zero_shot_levels.py runs/models/star146.pt runs/models/k1024.pt --json levels.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))

from medgmae.data.phantom import generate_phantom  # noqa: E402
from medgmae.files import save_json_atomic  # noqa: E402
from medgmae.networks.medgmae import MedGMAE  # noqa: E402


@torch.no_grad()
def level_stats(model: MedGMAE, seeds: list[int], min_intensity: float) -> list[dict]:
    """Per level: ``gaussians``, ``alive``, ``median_intensity`` and ``mass_share``, means over the ``seeds``' crops."""
    spec, rows = model.preprocessing, []
    for seed in seeds:
        ph = generate_phantom(seed, shape=model.img_size, spacing=tuple(spec.spacing))
        x = spec.window(torch.as_tensor(np.asarray(ph.image), dtype=torch.float32))[None, None]
        latent, _, ids = model.encoder(x, mask_ratio=0.0)
        levels = model.decode_gaussians(latent, ids)
        mass = [float((g.intensities[0] * g.scales[0].prod(-1)).sum()) for g in levels]
        rows.append([{"gaussians": g.num_gaussians, "alive": int((g.intensities[0] > min_intensity).sum()),
                      "median_intensity": float(g.intensities[0].median()), "mass_share": m / sum(mass)}
                     for g, m in zip(levels, mass)])  # fmt: skip
    return [{k: float(np.mean([r[lvl][k] for r in rows])) for k in rows[0][lvl]} for lvl in range(len(rows[0]))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model.pt files of the pre-training bundle (medgmae or medgmae-star)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001, 1002, 1003, 1004], help="phantom seeds")
    p.add_argument("--min-intensity", type=float, default=1e-3, help="alive above this intensity (model units)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    out, lines = {}, ["| model | level | Gaussians per crop | alive | median intensity | mass share |", "|---|---|---|---|---|---|"]
    for path in args.models:
        model = MedGMAE.from_checkpoint(path, needed_for="bench/zero_shot_levels.py needs a medgmae model.pt").eval()
        stats = level_stats(model, args.seeds, args.min_intensity)
        rule = f" ({model.level_intensity})" if model.multi_level else ""
        out[path] = {"multi_level": model.multi_level, "level_intensity": model.level_intensity if model.multi_level else None,
                     "num_gaussians": model.num_gaussians, "seeds": args.seeds, "levels": stats}  # fmt: skip
        for lvl, s in enumerate(stats):
            lines.append(f"| {Path(path).stem}{rule} | {lvl} | {s['gaussians']:.0f} | {s['alive']:.1f} | "
                         f"{s['median_intensity']:.4f} | {100 * s['mass_share']:.1f} % |")  # fmt: skip
    print("\n".join(lines))
    if args.json:
        save_json_atomic(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
