"""PSNR curves of ``bench/recon.py`` results as PNG files (PIL only): one result's runs in one panel
(:func:`plot_curves`), several results tiled in a grid (:func:`tile_curves`).

A result is the dict ``bench/recon.py`` writes: ``runs`` by name, each with ``curve`` (``(iteration, PSNR)``
pairs) and ``curve_seconds``; ``best_fbp_psnr``, ``geometry``, ``views`` and ``photons`` label the panel.
"""

from __future__ import annotations

import math

#: Colours of runs not named after a start (e.g. ``bench/recon_budget_summary.py``'s budgets, or a start named by
#: its model), in order, skipping those the panel's named starts use.
OTHER_COLOURS = [(30, 90, 200), (200, 40, 40), (30, 150, 60), (150, 0, 150), (230, 140, 20), (0, 170, 170),
                 (220, 0, 120), (120, 60, 0), (120, 120, 120), (110, 110, 0)]


def on_own_grid(result: dict) -> bool:
    """Whether ``result`` was simulated on the reconstruction grid (``bench/recon.py --simulate-grid same``, a
    diagnostic) rather than on the 2x finer one; results written before the option are the finer kind."""
    return result.get("simulated_on", "2x finer").startswith("the reconstruction grid")


def panel_title(result: dict) -> str:
    """The scan of ``result`` in words: geometry, views, phantom seed, the photon count (or no noise) and, for a
    scan simulated on the reconstruction grid itself (``bench/recon.py --simulate-grid same``), that inverse crime."""
    photons = result.get("photons")
    noise = "no noise" if photons == 0 else f"{photons:g} photons" if photons is not None else "photons not recorded"
    title = f"{result['geometry']}, {result['views']} views, seed {result.get('phantom_seed', '?')}, {noise}"
    if on_own_grid(result):
        title += ", simulated on the reconstruction grid"
    return title


def start_of(name: str) -> str:
    """The start a run's name is built on: ``3dgr-ct-grow [ini_sigma=0.6]`` and ``medgmae-grow (e150)`` -> the
    name before the first bracket (``bench/recon_summary.py``'s ``--name-by-settings`` / ``--name-by-model``)."""
    return name.split(" [")[0].split(" (")[0]


def plot_curves(result: dict, path: str, x_axis: str = "iteration") -> None:
    """PSNR against iteration for every initialisation, with the FBP level, as a PNG (PIL only); with
    ``x_axis="seconds"`` against the measured seconds (``curve_seconds``: start plus optimisation, evaluations
    excluded; runs without them are left out). A run takes its start's colour (:func:`start_of`) unless another run
    of the panel shares that start; the others take :data:`OTHER_COLOURS` in order."""
    from PIL import Image, ImageDraw

    from medgmae.files import atomic_write

    colours = {"random": (120, 120, 120), "toolkit": (30, 90, 200), "medgmae": (200, 40, 40), "3dgr-ct": (30, 150, 60),
               "medgmae-dense": (230, 140, 20), "medgmae-grow": (150, 0, 150),
               "medgmae-3dgr": (120, 60, 0), "3dgr-ct-grow": (240, 80, 160)}  # fmt: skip
    if x_axis not in ("iteration", "seconds"):
        raise ValueError(f"x_axis must be 'iteration' or 'seconds', got {x_axis!r}")

    def series(r: dict) -> list[tuple[float, float]]:
        xs = r.get("curve_seconds", []) if x_axis == "seconds" else [it for it, _ in r["curve"]]
        return [(x, p) for x, (_, p) in zip(xs, r["curve"]) if math.isfinite(p)]

    runs = result["runs"]
    pts = [pt for r in runs.values() for pt in series(r)]
    fbp_psnr = result["best_fbp_psnr"]
    w, h, m = 720, 480, 50
    x1 = max(it for it, _ in pts)
    y0, y1 = min([p for _, p in pts] + [fbp_psnr]) - 1, max([p for _, p in pts] + [fbp_psnr]) + 1
    sx = lambda it: m + it / x1 * (w - 2 * m)  # noqa: E731
    sy = lambda p: h - m - (p - y0) / (y1 - y0) * (h - 2 * m)  # noqa: E731
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rectangle((m, m, w - m, h - m), outline=(0, 0, 0))
    d.line([(m, sy(fbp_psnr)), (w - m, sy(fbp_psnr))], fill=(0, 0, 0), width=1)
    d.text((w - m - 120, sy(fbp_psnr) - 14), f"best FBP {fbp_psnr:.1f} dB", fill=(0, 0, 0))
    bases = [start_of(n) for n in runs]
    named = {n: colours[b] for n, b in zip(runs, bases) if b in colours and bases.count(b) == 1}
    free = [c for c in OTHER_COLOURS if c not in named.values()]
    unnamed = [n for n in runs if n not in named]
    for k, (name, r) in enumerate(runs.items()):
        c = named.get(name) or free[unnamed.index(name) % len(free)]
        line = [(sx(x), sy(p)) for x, p in series(r)]
        if len(line) > 1:
            d.line(line, fill=c, width=2)
        d.text((m + 8, m + 6 + 14 * k), name, fill=c)
    d.text((m, h - m + 8), "0", fill=(0, 0, 0))
    d.text((w - m - 40, h - m + 8), f"it {x1}" if x_axis == "iteration" else f"{x1:.0f} s", fill=(0, 0, 0))
    d.text((4, m), f"{y1:.1f} dB", fill=(0, 0, 0))
    d.text((4, h - m - 10), f"{y0:.1f} dB", fill=(0, 0, 0))
    d.text((m, 14), f"{panel_title(result)}: PSNR vs {x_axis}", fill=(0, 0, 0))
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")


def tile_curves(cases: list[dict], out: str, columns: int = 2, x_axis: str | list[str] = "iteration") -> None:
    """Every case's PSNR curves (:func:`plot_curves`, against ``x_axis``, or ``x_axis[k]`` for
    case ``k``) in a grid of ``columns``."""
    import tempfile

    from PIL import Image

    from medgmae.files import atomic_write

    imgs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, case in enumerate(cases):
            plot_curves(case, f"{tmp}/{k}.png", x_axis if isinstance(x_axis, str) else x_axis[k])
            imgs.append(Image.open(f"{tmp}/{k}.png").convert("RGB"))
    w, h = max(i.width for i in imgs), max(i.height for i in imgs)
    rows = (len(imgs) + columns - 1) // columns
    canvas = Image.new("RGB", (w * min(columns, len(imgs)), h * rows), (255, 255, 255))
    for k, img in enumerate(imgs):
        canvas.paste(img, ((k % columns) * w, (k // columns) * h))
    with atomic_write(out) as tmp:
        canvas.save(tmp, format="PNG")
