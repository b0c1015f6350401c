"""What ``medgmae-recon``'s parser and error handling need from the command modules, without torch: the choices it
offers (filters, initialisations, projector backends), the resumable state's file name and the two exceptions its
commands raise. Their homes re-export them (:mod:`recon.ramp_filter`, :mod:`recon.initialisation`,
:mod:`recon.projectors`, :mod:`recon.state`, :mod:`recon.commands`), so that ``medgmae-recon --help`` and a refused
flag are answered before torch is imported (:func:`recon.cli.main` imports the commands once the arguments parse).
"""

from __future__ import annotations

__all__ = ["FILTERS", "INIT_METHODS", "PROJECTOR_BACKENDS", "RECON_STATE", "CLIError", "Interrupted"]

#: The FBP/FDK ramp filter windows (:mod:`recon.ramp_filter`).
FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann")
#: The initialisations of :mod:`recon.initialisation` (the command line adds ``3dgr-ct``, :mod:`recon.init_3dgr`).
INIT_METHODS = ("random", "fbp", "medgmae")
#: The projector backends of :func:`recon.projectors.make_projector`.
PROJECTOR_BACKENDS = ("auto", "torch", "astra", "matrix")
#: The resumable state's file name in a reconstruction's output folder (:mod:`recon.state`).
RECON_STATE = "recon_state.pt"


class CLIError(ValueError):
    """A user-facing error: printed and turned into exit code 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a command, with what it left (the message): printed on one line, exit code 130
    (143)."""
