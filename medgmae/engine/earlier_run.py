"""What a fresh (non-resumed) training run replaces of an earlier run in its output folder.

A run that does not resume, started in a folder where another run wrote, would otherwise mix the two: the earlier
run's epoch checkpoints (whose higher epoch numbers outranked the new run's own, so a later ``--resume`` continued
the earlier run), its progress pictures ``pictures/epoch_*.png``, its TensorBoard event files, which TensorBoard
draws as one run with the new one, and whatever else it wrote (each bundle lists its outputs: models, summaries,
validation tables), which a new run stopped early would have left beside its own checkpoints as if they were its
own. :class:`EarlierRun` finds them when the run starts, so the start can name them, and removes them when the run saves its first epoch checkpoint: a run stopped or refused before then has removed
nothing. A file the new run has rewritten since the start (a picture of the same epoch) and the event files of this
process (TensorBoard names the host and process id in each file's name) are the new run's and stay. A stop before
the first save is advised in words that say so (:func:`before_first_save`, :meth:`EarlierRun.kept_advice`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from medgmae.data.fingerprint import file_fingerprint
from medgmae.engine.resume import epoch_checkpoints

__all__ = ["EarlierRun", "EARLIER_OUTPUTS", "before_first_save", "file_list"]

#: The outputs besides checkpoints, as globs under the output folder, that a fresh run replaces by default (a bundle
#: names all of its own outputs in its ``CheckpointHandler``'s ``earlier_outputs``; a TensorBoard folder elsewhere is
#: not touched: it may be shared on purpose).
EARLIER_OUTPUTS = ("pictures/epoch_*.png", "tensorboard/events.out.tfevents.*")
_END_CHECKPOINTS = ("checkpoint_final.pt", "checkpoint_interrupted.pt")


def file_list(paths: list[Path], folder: Path, shown: int = 8) -> str:
    """``paths`` by their names under ``folder``, the first ``shown`` of them then how many more (for a log line)."""
    names = sorted(str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p) for p in paths)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def before_first_save(first: int, done: bool) -> str:
    """When a fresh run was stopped before its first epoch checkpoint, as the words after "interrupted".

    Args:
        first: the epoch of its first checkpoint.
        done: whether that epoch's training had finished.
    """
    if done:
        return f"after epoch {first} finished, before its checkpoint was written"
    return "before the first epoch finished" if first == 1 else f"before its first checkpoint, at the end of epoch {first}"


def _this_process(path: Path) -> bool:
    """Whether ``path`` is a TensorBoard event file this process opened (its writers start before the engine)."""
    return path.name.startswith("events.out.tfevents.") and f".{socket.gethostname()}.{os.getpid()}." in path.name


class EarlierRun:
    """The checkpoints and outputs another run left in ``output_dir``.

    Args:
        output_dir: the run's folder.
        patterns: the outputs besides checkpoints to replace, as globs under ``output_dir``.
    """

    def __init__(self, output_dir: str | Path, patterns: tuple[str, ...] = EARLIER_OUTPUTS) -> None:
        self.output_dir, self.patterns = Path(output_dir), tuple(patterns)
        self.checkpoints: list[Path] = []
        self.outputs: dict[str, dict[Path, tuple[int, int] | None]] = {}

    def find(self) -> str | None:
        """Remember what the folder holds now.

        Returns:
            What to name at the start (``"checkpoints (...), 2 pictures/epoch_*.png files, summary.json"``: a pattern
            without wildcards by its name), ``None`` for nothing.
        """
        out = self.output_dir
        self.checkpoints = [p for _, p in epoch_checkpoints(out)] + [out / n for n in _END_CHECKPOINTS if (out / n).is_file()]
        self.outputs = {pat: {p: file_fingerprint(p) for p in sorted(out.glob(pat)) if p.is_file() and not _this_process(p)}
                        for pat in self.patterns}  # fmt: skip
        parts = [f"checkpoints ({', '.join(sorted(p.name for p in self.checkpoints))})"] if self.checkpoints else []
        for pat, files in self.outputs.items():
            if files:
                plain = not any(c in pat for c in "*?[")
                parts.append(pat if plain else f"{len(files)} {pat} file{'s' if len(files) > 1 else ''}")
        return ", ".join(parts) or None

    def warning(self, first_save: int = 1) -> str | None:
        """:meth:`find`, and the warning naming what it found and how to keep it (``None`` for nothing).

        Args:
            first_save: the epoch of the new run's first checkpoint, when they are removed.
        """
        if not (found := self.find()):
            return None
        finished = any(p.name == "checkpoint_final.pt" for p in self.checkpoints)
        advice = ("stop now and give another --output_dir to keep it, or add --resume true with a larger --max_epochs "
                  "to train it further" if finished else "stop now and add --resume true to continue that run instead")
        when = "its first epoch" if first_save == 1 else f"its first epoch checkpoint (epoch {first_save})"
        return (f"{self.output_dir} holds {'a finished' if finished else 'an'} earlier run's {found}: this new run "
                f"removes them when it saves {when} ({advice})")

    def remove(self, keep: Path) -> list[Path]:
        """Remove what :meth:`find` found, except ``keep`` and the outputs changed since; nothing a second time.

        Args:
            keep: the checkpoint just saved (it may have replaced one of the earlier run's names).

        Returns:
            The files removed, checkpoints first.
        """
        removed = [p for p in self.checkpoints if p != keep and p.is_file()]
        removed += [p for files in self.outputs.values() for p, sig in files.items() if sig is not None and file_fingerprint(p) == sig]
        for p in removed:
            p.unlink(missing_ok=True)
        self.checkpoints, self.outputs = [], {}
        return removed

    def written(self) -> list[Path]:
        """The outputs (``patterns``) this run has written so far: not in the folder when :meth:`find` looked, or
        changed since (e.g. its ``best_model.pt``, pictures and TensorBoard events before its first save)."""
        found = {p: sig for files in self.outputs.values() for p, sig in files.items()}
        now = {p for pat in self.patterns for p in self.output_dir.glob(pat) if p.is_file()}
        return sorted(p for p in now if p not in found or found[p] is None or file_fingerprint(p) != found[p])

    def kept_advice(self, when: str) -> str:
        """The advice after a stop before this run's first save (``when``: :func:`before_first_save`), which has
        removed nothing of the earlier run: what this run wrote beside (or over) it, and how to go on."""
        mine = self.written()
        wrote = f"; this run has written {file_list(mine, self.output_dir)} there" if mine else ""
        return (f"interrupted {when}: it saved no checkpoint_epoch=N.pt and removed nothing of the earlier run in "
                f"{self.output_dir}{wrote}; run the same command again to start over (with --resume true it would "
                "continue the earlier run instead)")
