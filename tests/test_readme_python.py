"""The README's "From Python" block runs as written, on a small phantom scan and a tiny model file at the paths it
names (a copy of the block would pass whatever the README said)."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from medgmae.data.phantom import generate_phantom

from model_helpers import tiny_model_file

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_block_of_the_readme_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text(encoding="utf-8").split("### From Python", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ph = generate_phantom(1, shape=(32, 28, 20), spacing=(6.0, 6.0, 8.0), noise=False)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(tmp_path / "ct.nii.gz"))
    (tmp_path / "runs" / "medgmae_pretrain").mkdir(parents=True)
    tiny_model_file(tmp_path / "runs" / "medgmae_pretrain" / "model.pt", spacing=6.0)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md (From Python)", "exec"), {})
    said = capsys.readouterr().out
    assert re.search(r"^\d+ Gaussians; centres in RAS mm:", said, re.M), said
    psnr = float(re.search(r"^PSNR (-?[\d.]+) dB after 20 iterations$", said, re.M).group(1))
    assert psnr > 15.0, said  # the start and 20 iterations of it fit the phantom (FBP of 60 noiseless views)
