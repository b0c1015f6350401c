"""The images a fine-tuned UNETR segments: listed, checked up front and given unique output names.

Every input is read once by the pre-check (:func:`medgmae.data.precheck.check_datalist`) before the model runs, so
a truncated, NaN-filled or missing second file is reported (with every other problem) before the first
segmentation is written. Each case carries the ``name`` of its output (``<name>_seg.nii.gz``): the image's file name
without extension, or, for inputs whose file names clash (``patA/ct.nii.gz``, ``patB/ct.nii.gz``), the name
prefixed with as many parent folders as make it unique (``patA_ct``, ``patB_ct``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from medgmae.data.datalist import DatasetError, read_datalist
from medgmae.data.precheck import check_datalist
from medgmae.data.reader import volume_stem
from medgmae.file_patterns import expand_input_patterns
from medgmae.files import absolute_path, given_more_than_once
from medgmae.finetune.run_record import run_datalist
from medgmae.preprocessing import PreprocessingSpec

__all__ = ["expand_input_patterns", "inference_cases", "unique_case_names"]

logger = logging.getLogger(__name__)


def unique_case_names(paths: Sequence[str | Path]) -> list[str]:
    """One output name per input: its :func:`volume_stem`, with parent folders prefixed (``patA_ct``) where stems
    clash, one folder more at a time until every name is unique; files of one stem in one folder then get their
    ending (``patA_ct_nrrd``, ``patA_ct_mha``), and names that still clash a number in input order (``p_a_ct_2``).

    Raises:
        DatasetError: the same path is given more than once (named; links are names of their own, as given).
    """
    resolved = [absolute_path(p) for p in paths]  # links keep the names given
    twice = given_more_than_once(paths)
    if twice:
        raise DatasetError(f"these inputs are given more than once: {', '.join(twice)}")
    stems, parents = [volume_stem(p) for p in resolved], [p.parent.parts[1:] for p in resolved]
    depth = [0] * len(paths)
    while True:
        names = ["_".join([*parents[i][len(parents[i]) - depth[i]:], stems[i]]) for i in range(len(paths))]
        counts = Counter(n for _, n in {(p.parent, n) for p, n in zip(resolved, names)})  # files of other folders
        clashing = [i for i, n in enumerate(names) if counts[n] > 1 and depth[i] < len(parents[i])]
        if not clashing:
            break
        for i in clashing:
            depth[i] += 1
    same_folder = Counter((p.parent, s) for p, s in zip(resolved, stems))
    for i, p in enumerate(resolved):  # ct.nrrd beside ct.mha: no folder tells them apart, their endings do
        ending = p.name[len(stems[i]):].lstrip(".").replace(".", "_")
        if same_folder[(p.parent, stems[i])] > 1 and ending:
            names[i] = f"{names[i]}_{ending}"
    used: set = set()  # still clashing with every folder used (a_ct.nii.gz beside a/ct.nii.gz): numbered
    for i, n in enumerate(names):
        k, name = 1, n
        while name in used:
            k += 1
            name = f"{n}_{k}"
        used.add(name)
        names[i] = name
    return names


def inference_cases(
    input_files: Sequence[str] | str | None, dataset_dir: str | Path = "", datalist: str | Path = "", output_dir: str | Path = "",
    key: str = "validation", spec: PreprocessingSpec | None = None,
    keep: Callable[[list[dict]], list[dict]] | None = None,
) -> list[dict]:
    """Images to segment, each checked: ``input_files`` when given (a path, a file pattern or a list of them, see
    :func:`expand_input_patterns`), else (``None``) the images of
    list ``key`` of the datalist (``dataset_dir/dataset.json`` when ``datalist`` is empty; when both are empty, the
    data the run in ``output_dir`` was trained on, see :func:`~medgmae.finetune.run_record.run_datalist`), logged.
    With the model's pre-processing ``spec``, an input that is no CT in HU for a model of HU (a label map listed as
    an image, attenuation in 1/mm...) is warned about here, once, before the model runs.

    Args:
        input_files: paths or file patterns (``None``: the datalist's images).
        dataset_dir: the datalist's data folder.
        datalist: the datalist file.
        output_dir: the fine-tuning run (its recorded data when neither of the two above is given).
        key: the datalist's list to segment.
        spec: the model's pre-processing (``None``: no warnings about the inputs' values).
        keep: picks the cases still to segment before any file is checked (a resumed run's
            :func:`~medgmae.finetune.segment_resume.cases_to_segment`): the others are neither read nor refused.

    Returns:
        ``[{"image": path, "name": output name}]`` (see the module docstring for the names).

    Raises:
        DatasetError: ``input_files`` given but empty (an unquoted shell pattern that matched nothing: segmenting
            the datalist instead would write what nobody asked for), a pattern that matches no file, no datalist, or
            unusable inputs: one error lists every missing or unreadable file.
    """
    if isinstance(input_files, (str, Path)):
        input_files = [input_files] if str(input_files) else []
    elif input_files is not None and not isinstance(input_files, (list, tuple)):  # MONAI reads --input_files 5 as 5
        raise DatasetError(f"input_files must be a path or a list of paths (\"['a.nii.gz', 'b.nii.gz']\"), got {input_files!r}")
    if input_files is not None and not list(input_files):
        raise DatasetError("input_files is empty (a shell pattern that matched no file?): list the images to segment, "
                           "or leave input_files out to segment the run's validation cases")  # fmt: skip
    if input_files is not None:
        images, source = [os.path.abspath(f) for f in expand_input_patterns(input_files)], "input_files"
    else:
        dataset_dir, datalist = run_datalist(dataset_dir, datalist, output_dir)
        if not datalist.is_file():
            raise DatasetError(f"nothing to segment: set input_files or datalist (no datalist at {datalist})")
        images, source = [c["image"] for c in read_datalist(datalist, key, dataset_dir or None)], str(datalist)
        logger.info("no input_files: segmenting the '%s' list of %s (%d images)", key, datalist, len(images))
    cases = [{"image": image, "name": name} for image, name in zip(images, unique_case_names(images))]
    if keep is not None:  # names are given over all inputs first: a resumed run's outputs keep theirs
        cases = keep(cases)
        if not cases:
            return []
    return check_datalist(cases, source=source, spec=spec)
