"""The FBP/FDK ramp filter: chunks of rows with a real FFT against the whole stack in one complex FFT.

``recon.ramp_filter.filter_projections`` filters the detector rows of every view in chunks of at most
``recon.ramp_filter.FILTER_CHUNK_BYTES`` of float64 zero-padded rows with ``rfft`` / ``irfft``; ``whole`` is the
formula it replaced (the whole stack converted to float64, zero-padded, ``fft``, multiplied, ``ifft``), kept here as the
baseline. Each round of each runs in a fresh process on the same random float32 stack, so that its peak resident
memory (``ru_maxrss``) is its own; the script prints the median seconds, the largest peak less the resident memory
before filtering, the largest relative difference between the two outputs, and that of the chunked filter with
float32 instead of float64 FFTs (not what the toolkit does; the precision that float64 buys).

Usage::

    python bench/fbp_filter.py --views 90 --rows 128 --cols 725 --repeats 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rss import add_round_arguments, peak_rss_mib, rss_mib  # noqa: E402
from medgmae.cli_types import positive_int  # noqa: E402
from recon.ramp_filter import FILTER_CHUNK_BYTES, filter_projections, ramp_filter  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", type=positive_int, default=90, help="views (default: 90)")
    p.add_argument("--rows", type=positive_int, default=128, help="detector rows (default: 128)")
    p.add_argument("--cols", type=positive_int, default=725, help="detector columns (default: 725)")
    add_round_arguments(p, repeats=2)
    return p


def whole_stack(proj: torch.Tensor, spacing: float) -> torch.Tensor:
    """The filter before chunking: one float64 complex FFT of the whole zero-padded stack."""
    cols = proj.shape[-1]
    size = max(64, 1 << int(math.ceil(math.log2(2 * cols))))
    spec = torch.fft.fft(torch.nn.functional.pad(proj.to(torch.float64), (0, size - cols)), dim=-1)
    out = torch.fft.ifft(spec * ramp_filter(size, "ram-lak", torch.float64), dim=-1).real[..., :cols] / spacing
    return out.to(proj.dtype)


def float32_chunks(proj: torch.Tensor, spacing: float) -> torch.Tensor:
    """The chunked real-FFT filter with float32 FFTs (for the precision comparison only)."""
    cols = proj.shape[-1]
    size = max(64, 1 << int(math.ceil(math.log2(2 * cols))))
    half = (ramp_filter(size, "ram-lak", torch.float64)[: size // 2 + 1] / spacing).to(torch.float32)
    rows = proj.reshape(-1, cols)
    step = max(1, FILTER_CHUNK_BYTES // (8 * size))
    parts = [torch.fft.irfft(torch.fft.rfft(rows[r : r + step], n=size) * half, n=size)[:, :cols]
             for r in range(0, rows.shape[0], step)]  # fmt: skip
    return torch.cat(parts).reshape(proj.shape)


def one_run(args) -> int:
    """One filtering in this process; prints seconds, memory and the output (as a file) as JSON."""
    gen = torch.Generator().manual_seed(0)
    proj = torch.rand((args.views, args.rows, args.cols), generator=gen) * 5.0
    name, folder = args.one_run
    way = {"chunks": lambda p: filter_projections(p, 0.8), "whole": lambda p: whole_stack(p, 0.8),
           "float32": lambda p: float32_chunks(p, 0.8)}[name]  # fmt: skip
    before = rss_mib()
    t = time.perf_counter()
    out = way(proj)
    seconds = time.perf_counter() - t
    peak = peak_rss_mib()
    torch.save(out, Path(folder) / f"{name}.pt")
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak, "rss_before_mib": before}))
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.one_run:
        return one_run(args)
    base = [sys.executable, str(Path(__file__).resolve()), "--views", str(args.views), "--rows", str(args.rows),
            "--cols", str(args.cols)]  # fmt: skip
    runs = {"chunks": [], "whole": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for way in runs:
                done = subprocess.run([*base, "--one-run", way, folder], capture_output=True, text=True, check=True)
                runs[way].append(json.loads(done.stdout.strip().splitlines()[-1]))
        subprocess.run([*base, "--one-run", "float32", folder], capture_output=True, text=True, check=True)
        out = {way: torch.load(Path(folder) / f"{way}.pt") for way in ("chunks", "whole", "float32")}
    scale = float(out["whole"].abs().max())
    result = {
        "stack": [args.views, args.rows, args.cols], "stack_mib": 4 * args.views * args.rows * args.cols / 2**20,
        "chunk_bytes": FILTER_CHUNK_BYTES, "repeats": args.repeats,
        "median_seconds": {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()},
        "filter_peak_mib": {k: max(r["peak_rss_mib"] - r["rss_before_mib"] for r in v) for k, v in runs.items()},
        "peak_rss_mib": {k: max(r["peak_rss_mib"] for r in v) for k, v in runs.items()},
        "max_relative_difference": float((out["chunks"] - out["whole"]).abs().max()) / scale,
        "float32_fft_max_relative_difference": float((out["float32"] - out["whole"]).abs().max()) / scale,
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }  # fmt: skip
    print(f"ramp filter of {args.views}x{args.rows}x{args.cols} float32 ({result['stack_mib']:.0f} MiB), "
          f"{args.repeats} rounds, each in a fresh process:")
    for way, label in (("chunks", f"chunks of {FILTER_CHUNK_BYTES / 2**20:.0f} MiB, rfft"), ("whole", "whole stack, fft")):
        print(f"  {label}: {result['median_seconds'][way]:.2f} s, filter's peak {result['filter_peak_mib'][way]:.0f} MiB "
              f"(process peak RSS {result['peak_rss_mib'][way]:.0f} MiB)")
    print(f"  largest difference, relative to the largest value: {result['max_relative_difference']:.1e} "
          f"(float32 FFTs instead: {result['float32_fft_max_relative_difference']:.1e})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
