"""``medgmae-info``: what the toolkit will run on in this environment, to read before a long job (as MONAI's
``print_config`` does for MONAI, but about the toolkit's own backends).

It prints the toolkit's version and git commit, Python's, torch's (and the CUDA and cuDNN it was built with), MONAI's
and the other packages' (:func:`medgmae.software.software_versions`, the versions the runs record), the optional
packages missing and what takes their place, the CPUs and torch's threads, the host's memory and this process's
limit (:mod:`medgmae.host_memory`), each GPU torch sees (name, memory, compute capability) or ``none``, what
``--device auto`` resolves to, and per pipeline the backend its ``auto`` chooses here and why: the 3D and 2D
renderers and ``medgmae-recon``'s projectors for an example scan (:mod:`medgmae.environment`, which asks each
pipeline's own selection function). ``--json`` prints the same facts as one JSON object; ``--path DIR`` adds the
free room of ``DIR``'s file system (the nearest existing folder above it where it does not exist yet);
``--geometry FILE`` chooses the projectors for that scan's ``geometry.json`` rather than the example scans;
``--volume FILE`` adds how the toolkit reads that volume (:mod:`medgmae.volume_facts`: grid, axis codes, affine,
values and what they look like); ``--model FILE`` adds what a model file is (:mod:`medgmae.model_facts`: kind, network
sizes, parameters, the recorded pre-processing or what consumers fall back to, the run record, the commands taking
it). Nothing is built and no other data read; flags are parsed before torch is
imported. Exit status 0, or 2 on a bad flag or a geometry file, volume or model file that cannot be read (one line naming it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from medgmae.words import plural

__all__ = ["PROG", "build_parser", "report_text", "main"]

PROG = "medgmae-info"


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    from medgmae.cli_types import ToolParser

    parser = ToolParser(prog=PROG, description="What the toolkit runs on here: software, CPUs, memory, GPUs, and "
                                               "the backend each pipeline's auto setting chooses, and why.")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the same facts as one JSON object")
    parser.add_argument("--geometry", default=None, metavar="FILE",
                        help="choose the projectors for this scan's geometry.json (default: example scans)")
    parser.add_argument("--volume", default=None, metavar="FILE",
                        help="also report how the toolkit reads this volume (NIfTI, NRRD, MetaImage, DICOM folder): "
                             "grid, axis codes, affine, values")  # fmt: skip
    parser.add_argument("--model", default=None, metavar="FILE",
                        help="also report what this model file is: kind, network sizes, the pre-processing it records, "
                             "the commands that take it")  # fmt: skip
    parser.add_argument("--path", default=None, metavar="DIR",
                        help="also report the free room of DIR's file system (e.g. a run's output folder)")  # fmt: skip
    return parser


def _size(count: int | None, binary: bool = False) -> str:
    """``count`` bytes in words, or ``unknown``."""
    from medgmae.words import byte_size

    return "unknown" if count is None else byte_size(count, binary=binary)


def _software_lines(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The labelled lines of the toolkit, Python, torch, the packages and the missing optional ones."""
    commit = r["toolkit"]["commit"]
    torch = r["torch"]
    lines = [("toolkit", f"medgmae {r['toolkit']['version'] or 'not installed'}" + (f" (commit {commit})" if commit else "")),
             ("python", f"{r['python']} ({r['platform']})"),
             ("torch", f"{torch['version']}, CUDA build {torch['cuda'] or 'none'}, cuDNN {torch['cudnn'] or 'none'}, "
                       f"{torch['threads']} threads"),
             ("packages", ", ".join(f"{name} {v or 'not installed'}" for name, v in r["packages"].items()))]  # fmt: skip
    lines += [(f"{name} missing", why) for name, why in r["missing"].items()]
    return lines


def _host_lines(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The labelled lines of the CPUs, the memory, the GPUs and ``--device auto``."""
    cpus, memory = r["cpus"], r["memory"]
    usable = f" ({cpus['usable']} usable by this process)"
    lines = [("CPUs", f"{cpus['count']}{usable}"),
             ("host memory", f"{_size(memory['physical'], True)}, this process's limit {_size(memory['limit'], True)}")]  # fmt: skip
    if not r["gpus"]:
        lines.append(("GPUs", "none"))
    for gpu in r["gpus"]:
        lines.append((f"GPU {gpu['index']}", f"{gpu['name']}, {_size(gpu['memory'], True)}, compute capability "
                                             f"{gpu['capability']}"))  # fmt: skip
    lines.append(("--device auto", f"{r['device']['chosen']}: {r['device']['why']}"))
    return lines


def _backend_lines(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The labelled lines of each pipeline's backend (``auto``) and why."""
    lines = [(f"{dims.upper()} renderer", f"{c['chosen']}: {c['why']}") for dims, c in r["renderers"].items()]
    if "scan" in r:
        scan = r["scan"]
        voxels = " x ".join(f"{v:g}" for v in scan["voxel_mm"])
        lines.append(("scan", f"{scan['file']}: {scan['kind']} beam, {'x'.join(map(str, scan['shape']))} voxels "
                              f"(z, y, x) of {voxels} mm, {plural(scan['views'], 'view')}"))  # fmt: skip
    else:
        scan = r["example_scan"]
        shape = "x".join(map(str, scan["shape"]))
        views = ", ".join(f"{kind} {n}" for kind, n in scan["views"].items())
        voxels = " x ".join(f"{v:g}" for v in scan["voxel_mm"])
        lines.append(("example scan", f"{shape} voxels of {voxels} mm, views: {views} (the projectors "
                                      "below depend on the scan: --geometry gives yours)"))  # fmt: skip
    lines += [(f"{name} projector", f"{c['chosen']} ({c['how']}): {c['why']}") for name, c in r["projectors"].items()]
    return lines


def report_text(report: dict[str, Any]) -> str:
    """``report`` (:func:`medgmae.environment.environment_report`) as the lines ``medgmae-info`` prints: one
    ``label: value`` line a fact, in the order of the JSON object.

    Args:
        report: the facts.

    Returns:
        The text, ending in a newline.
    """
    lines = [*_software_lines(report), *_host_lines(report), *_backend_lines(report)]
    if "disk" in report:
        disk = report["disk"]
        room = "unknown" if disk["free"] is None else f"{_size(disk['free'])} free (measured at {disk['measured']})"
        lines.append(("free room", f"{disk['path']}: {room}"))
    if "volume" in report:
        from medgmae.volume_facts import volume_lines

        lines += volume_lines(report["volume"])
    if "model" in report:
        from medgmae.model_facts import model_lines

        lines += model_lines(report["model"])
    width = max(len(label) for label, _ in lines) + 1
    return "".join(f"{label + ':':<{width}} {value}\n" for label, value in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medgmae-info``.

    Args:
        argv: the command-line arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status (argparse exits with 2 on a bad flag).
    """
    args = build_parser().parse_args(argv)
    from medgmae.environment import environment_report

    try:
        report = environment_report(args.path, args.geometry)
    except (ValueError, OSError) as e:  # a geometry file that cannot be read or is none: the message names it
        return _refused(e, "geometry file", args.geometry)
    if args.volume is not None:
        from medgmae.volume_facts import volume_facts

        try:
            report["volume"] = volume_facts(args.volume)
        except (ValueError, OSError) as e:  # the reader's message names the file
            return _refused(e, "volume", args.volume)
    if args.model is not None:
        from medgmae.model_facts import model_facts

        try:
            report["model"] = model_facts(args.model)
        except (ValueError, OSError) as e:  # the loader's message names the file
            return _refused(e, "model file", args.model)
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else report_text(report))
    return 0


def _refused(e: Exception, what: str, path: str) -> int:
    """Print the one error line of the input ``what`` at ``path`` that cannot be read (named where the message does
    not name ``path``); returns the exit status 2."""
    from medgmae.files import os_error_message

    said = os_error_message(e) if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) else None
    said = said or (str(e) if str(path) in str(e) else f"{what} {path}: {e}")
    print(f"{PROG}: error: {said}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
