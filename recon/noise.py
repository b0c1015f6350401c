"""Poisson noise of a simulated scan (``simulate --photons``, ``bench/recon_simulation.py``), and what it leaves of
the line integrals: too few photons for the toolkit's own projection check is refused, data dominated by clamped
readings or by noise is warned about (and noiseless projections of a volume that attenuates nothing refused)."""

from __future__ import annotations

import math

import torch

__all__ = ["MAX_PHOTONS", "ROSE_SNR", "ZERO_COUNT_SHARE", "noise_warnings", "photons_problem", "poisson_line_integrals",
           "simulated_scan_problem"]

#: The share of detector readings that counted no photon above which ``simulate`` warns: such a reading is set to
#: one photon (its line integral would be infinite), a line integral of ``log(I0)`` whatever the ray crossed, so
#: above 1 % the clamped readings bias the data visibly.
ZERO_COUNT_SHARE = 0.01
#: The Rose criterion: a signal is told from noise when its amplitude is at least five times the noise's. Below an
#: SNR of 5 (RMS of the noiseless line integrals over RMS of the noise) detail is lost in the noise.
ROSE_SNR = 5.0


#: The most incident photons per detector pixel a simulation takes. Above it the Poisson noise of a line integral,
#: ``1 / sqrt(I0 exp(-p))``, is under 3.2e-8 in air, below the resolution of the float32 projections written (6e-8
#: near a line integral of 1), so the scan is noiseless in all but name; and from about 9.2e18 (2^63) PyTorch's
#: Poisson sampler wraps round to negative counts, which would read as readings that counted no photon.
MAX_PHOTONS = 1e15


def photons_problem(photons: float) -> str | None:
    """Why ``photons`` incident photons per pixel cannot be simulated (over :data:`MAX_PHOTONS`), or ``None``."""
    if photons <= MAX_PHOTONS:
        return None
    return (f"--photons {photons:g} is over {MAX_PHOTONS:g}: at that many photons the Poisson noise (1 / sqrt(I0) "
            f"= {photons ** -0.5:.2g} in air) is below the float32 resolution of the written line integrals, and "
            "PyTorch's Poisson sampler overflows from about 9.2e18; leave out --photons for noiseless projections")


def poisson_line_integrals(proj: torch.Tensor, photons: float, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Line integrals measured with Poisson noise: counts ``~ Poisson(I0 exp(-p))`` turned back into ``-log(counts /
    I0)``, a reading without photon counted as one (its line integral would be infinite).

    Args:
        proj: noiseless line integrals, any shape, on the generator's device.
        photons: ``I0``, the incident photons per detector pixel.
        generator: the random generator (seeded by the caller).

    Returns:
        ``(noisy line integrals (float32, proj's shape), share of the readings that counted no photon)``.

    Raises:
        ValueError: ``photons`` over :data:`MAX_PHOTONS` (:func:`photons_problem`).
    """
    if problem := photons_problem(photons):
        raise ValueError(problem)
    counts = torch.poisson(photons * torch.exp(-proj.double()), generator=generator)
    noisy = (-torch.log(counts.clamp_min(1.0) / photons)).float()
    return noisy, float((counts == 0).double().mean())


def simulated_scan_problem(proj: torch.Tensor, volume: str, photons: float | None, zero_share: float = 0.0) -> str | None:
    """Why simulated projections fail the toolkit's one projection check (:func:`recon.scan_files.line_integral_problem`,
    which ``fbp`` and ``reconstruct`` apply to a file), or ``None``: too few photons, or a volume that attenuates
    nothing.

    Args:
        proj: the simulated line integrals (noisy when ``photons`` is given).
        volume: the ``--volume`` file, as the message names it.
        photons: ``I0`` (``None``: noiseless).
        zero_share: the share of readings that counted no photon.
    """
    from recon.scan_files import line_integral_problem

    problem = line_integral_problem(proj.cpu().numpy())
    if problem is None:
        return None
    if photons is None:
        return (f"the projections of --volume {volume} {problem[0]}, so fbp and reconstruct would refuse them: the "
                "volume attenuates nothing (all air?); nothing was written")  # fmt: skip
    return (f"--photons {photons:g} is too few for --volume {volume}: {zero_share:.0%} of the detector readings "
            f"counted no photon (each set to one, a line integral of -log(1 / {photons:g}) = {math.log(photons):.4g}), "
            f"and the projections {problem[0]}, so fbp and reconstruct would refuse them; raise --photons (nothing "
            "was written)")  # fmt: skip


def noise_warnings(clean: torch.Tensor, noisy: torch.Tensor, photons: float, zero_share: float) -> list[str]:
    """The warnings about noisy projections that pass the projection check but are poor data: more than
    :data:`ZERO_COUNT_SHARE` of the readings counted no photon, or an SNR below :data:`ROSE_SNR`.

    Args:
        clean: the noiseless line integrals.
        noisy: the same with Poisson noise.
        photons: ``I0``.
        zero_share: the share of readings that counted no photon.
    """
    notes = []
    if zero_share > ZERO_COUNT_SHARE:
        notes.append(f"{zero_share:.1%} of the detector readings counted no photon at --photons {photons:g} (over "
                     f"{ZERO_COUNT_SHARE:.0%}); each was set to one photon, a line integral of {math.log(photons):.4g} "
                     "whatever the ray crossed, which biases the data; raise --photons")  # fmt: skip
    signal = float(clean.double().square().mean().sqrt())
    noise = float((noisy.double() - clean.double()).square().mean().sqrt())
    snr = signal / noise if noise > 0 else math.inf
    if snr < ROSE_SNR and signal > 0:  # no signal (a volume of air) is refused before the noise is drawn
        notes.append(f"the projections at --photons {photons:g} are too noisy to tell detail from noise: the noise's RMS "
                     f"is {noise:.3g}, {noise / signal:.0%} of the noiseless line integrals' "
                     f"RMS {signal:.3g} (SNR {snr:.2g}, below the Rose criterion's {ROSE_SNR:g}), and FBP and the "
                     "reconstruction will be as noisy; raise --photons")  # fmt: skip
    return notes
