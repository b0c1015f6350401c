"""Fine-tuning datalists: label fractions, class names, the classes read, label maps beyond the class count, and
what is said about data that are not a datalist."""

from __future__ import annotations

import json
import logging
import re
from types import SimpleNamespace

import pytest

from medgmae.finetune.data import check_cases, evaluation_cases, prepare_datalists, select_label_fraction
from medgmae.data.datalist import DatasetError
from medgmae.finetune.classes import label_names, resolve_num_classes

from finetune_helpers import make_case, two_case_datalist, BTCV_CLASSES


def test_label_fraction_subsets_deterministic_nested(tmp_path):
    cases = [{"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"} for i in range(30)]
    sub_1 = select_label_fraction(cases, 0.01, seed=3)
    sub_10 = select_label_fraction(cases, 0.1, seed=3, output_dir=tmp_path)
    sub_100 = select_label_fraction(cases, 1.0, seed=3)
    assert len(sub_1) == 1 and len(sub_10) == 3 and sub_100 == cases
    assert all(c in sub_10 for c in sub_1)  # nested for a fixed seed
    assert select_label_fraction(cases, 0.1, seed=3) == sub_10  # deterministic
    assert any(select_label_fraction(cases, 0.1, seed=s) != sub_10 for s in range(4, 9))  # the seed matters
    record = json.loads((tmp_path / "training_cases.json").read_text(encoding="utf-8"))
    assert record["cases"] == sub_10 and record["label_fraction"] == 0.1 and record["num_total"] == 30
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="label_fraction"):
            select_label_fraction(cases, bad)
    # halves round up, as the fraction reads (not Python's round half to even: 2 of 25, 4 of 35)
    for n, fraction, expected in ((25, 0.1, 3), (35, 0.1, 4), (45, 0.1, 5), (50, 0.29, 15), (25, 0.02, 1), (7, 0.5, 4)):
        assert len(select_label_fraction(cases[:n] + cases[: max(0, n - 30)], fraction)) == expected, (n, fraction)


def test_a_label_fraction_rounded_far_from_itself_is_warned_about_and_recorded(tmp_path, caplog):
    """1 % of 4 cases is one case, a quarter of the labels: the run warns with the share it trains on and records it
    in training_cases.json; 10 % of 30 cases (3 cases, exactly 10 %) and 1 % of 150 (2 cases, 1.3 %) are not warned
    about."""
    import logging

    cases = [{"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"} for i in range(150)]
    with caplog.at_level(logging.INFO, logger="medgmae"):
        select_label_fraction(cases[:30], 0.1)
        select_label_fraction(cases, 0.01)
        assert "rounded to" not in caplog.text
        select_label_fraction(cases[:4], 0.01, output_dir=tmp_path)
    assert "label_fraction 0.01 of 4 training cases is 0.04 cases, rounded to 1: this run trains on 25 % " in caplog.text
    record = json.loads((tmp_path / "training_cases.json").read_text(encoding="utf-8"))
    assert record["label_fraction"] == 0.01 and record["effective_fraction"] == 0.25 and len(record["cases"]) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medgmae"):  # 1 is every case; the papers' "1 %" is 0.01: said so
        select_label_fraction(cases[:30], 1)
        select_label_fraction(cases[:30], 0.5)
    assert caplog.messages[-2:] == ["label_fraction 1: 30 of 30 training cases (every one: 1 % of the labels is "
                                    "label_fraction 0.01)", "label_fraction 0.5: 15 of 30 training cases"]  # fmt: skip


@pytest.mark.parametrize("n_classes", [14, 16])  # BTCV, AMOS CT
def test_label_names_from_datalist(tmp_path, n_classes):
    labels = {str(i): ("background" if i == 0 else f"organ{i}") for i in range(n_classes)}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels, "training": [], "validation": []}))
    names = label_names(path)
    assert len(names) == n_classes and names[0] == "background" and names[-1] == f"organ{n_classes - 1}"
    assert resolve_num_classes(path, 0) == n_classes
    with pytest.raises(DatasetError, match=f"names {n_classes} labels"):
        label_names(path, num_classes=n_classes + 1)
    path.write_text(json.dumps({"training": []}))
    assert label_names(path, num_classes=5) == ["background", "class_1", "class_2", "class_3", "class_4"]
    with pytest.raises(DatasetError, match="set num_classes"):
        label_names(path)



def test_label_values_with_a_gap_are_refused_naming_the_missing_ones_and_the_template_has_none(tmp_path):
    """Classes are the label values 0..N-1: a map skipping values (0-3 and 6) is refused naming 4 and 5, and the
    datalist template users copy names a contiguous set (it skipped 4 and 5, so a copy of it could not fine-tune)."""
    from pathlib import Path

    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "1": "a", "2": "b", "3": "c", "6": "liver"}}))
    with pytest.raises(DatasetError, match=r"keys must be 0\.\.4 .*got \[0, 1, 2, 3, 6\]; name 4, 5 too"):
        label_names(path)
    template = Path(__file__).resolve().parents[1] / "configs" / "datalist_template.json"
    assert label_names(template) == ["background", "spleen", "right kidney", "left kidney", "liver"]

def test_empty_or_missing_lists(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "bg", "1": "x"}, "training": [], "validation": []}))
    with pytest.raises(DatasetError, match="'training' list is empty"):
        prepare_datalists(str(tmp_path), str(path), tmp_path / "out")
    with pytest.raises(DatasetError, match="datalist not found"):
        prepare_datalists(str(tmp_path), str(tmp_path / "nope.json"), tmp_path / "out")


def test_a_decathlon_download_without_a_validation_list_is_given_the_split_command(tmp_path):
    """An original Medical Segmentation Decathlon dataset.json ('training' and 'test', no 'validation'): the refusal
    gives the medgmae-datalist command that writes a seeded split, and the --datalist to give then."""
    folder = tmp_path / "Task03_Liver"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "liver", "2": "cancer"}, "modality": {"0": "CT"},
        "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}],
        "test": ["./imagesTs/liver_132.nii.gz"]}))  # fmt: skip
    with pytest.raises(DatasetError, match=rf"the 'validation' list is missing .*`medgmae-datalist {folder} --out "
                                           rf"{folder / 'dataset_split.json'}` writes a seeded split .*give that file "
                                           r"as --datalist"):  # fmt: skip
        prepare_datalists(str(folder), "", tmp_path / "out")


def test_a_datalist_alone_is_the_data(tmp_path):
    """``--datalist`` without ``--dataset_dir``: the datalist's cases (relative to its folder), not phantoms."""
    dl = two_case_datalist(tmp_path)
    out = prepare_datalists("", str(dl), tmp_path / "run")
    assert [c["image"] for c in out["training"]] == [str(tmp_path / "c0_img.nii.gz"), str(tmp_path / "c1_img.nii.gz")]
    assert not (tmp_path / "run" / "phantom").exists()


def test_the_classes_read_are_logged_at_the_start(tmp_path, caplog):
    """Fine-tuning says how many classes it read and their names before the data are checked: BTCV's 14 in full; of
    a long list the first 20, then how many more."""
    cases = [make_case(tmp_path, f"c{i}") for i in range(3)]
    dl = tmp_path / "btcv.json"
    for names, line in ((BTCV_CLASSES, "14 classes of {dl}: " + ", ".join(BTCV_CLASSES)),
                        (["background"] + [f"organ {i}" for i in range(1, 30)],
                         "30 classes of {dl}: background, organ 1, organ 2, " + ", ".join(f"organ {i}" for i in range(3, 20))
                         + " and 10 more")):  # fmt: skip
        dl.write_text(json.dumps({"labels": dict(enumerate(names)), "training": cases[:2], "validation": cases[2:]}))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="medgmae"):
            prepare_datalists("", str(dl), tmp_path / "run")
        assert line.format(dl=dl) in caplog.messages


def test_label_maps_beyond_the_class_count_are_one_line_with_the_count_they_need(tmp_path):
    """``--num_classes 5`` with label maps up to 8: one line naming the first files and how many more, and the count
    they need (9), not a line per file; a datalist without a 'labels' map and no num_classes gets the count too."""
    cases = [make_case(tmp_path, f"c{i}", max_label=8 if i < 8 else 2) for i in range(10)]
    labels = sorted(c["label"] for c in cases[:8])
    with pytest.raises(DatasetError) as e:
        check_cases(cases, num_classes=5)
    ranged = [line for line in str(e.value).splitlines() if "outside the class range [0, 4]" in line]
    assert len(ranged) == 1 and str(e.value).startswith("1 problem in"), str(e.value)
    assert ranged[0].startswith("  - 8 label maps hold class values outside the class range [0, 4] (5 classes): ")
    assert ", ".join(labels[:3]) + " and 5 more; labels 0-8 found: they need 9 classes (--num_classes 9" in ranged[0]
    check_cases(cases, num_classes=9)  # the count named is enough
    dl = tmp_path / "dataset.json"
    dl.write_text(json.dumps({"training": cases[:9], "validation": cases[9:]}))
    with pytest.raises(DatasetError, match=re.escape(
            f"set num_classes: datalist {dl} has no 'labels' map; its label maps hold labels 0-8: --num_classes 9")) as unnamed:
        prepare_datalists("", str(dl), tmp_path / "run")
    assert unnamed.value.__cause__ is None and unnamed.value.__suppress_context__  # the one-class probe is not shown above it
    assert prepare_datalists("", str(dl), tmp_path / "run", num_classes=9)["num_classes"] == 9


def test_cases_without_labels_are_named_with_their_list(tmp_path):
    """An AMOS-style image without a label among the training or validation cases: each is named with the list it
    is in (the 'test' list is where such images go), before any file is opened."""
    dl = two_case_datalist(tmp_path)
    cases = json.loads(dl.read_text(encoding="utf-8"))
    del cases["training"][1]["label"], cases["validation"][0]["label"]
    dl.write_text(json.dumps(cases))
    with pytest.raises(DatasetError) as e:
        prepare_datalists("", str(dl), tmp_path / "run")
    message = str(e.value)
    assert "2 cases list no 'label'" in message and "'test' list" in message, message
    assert f"{tmp_path / 'c1_img.nii.gz'} (in 'training')" in message and f"{tmp_path / 'c2_img.nii.gz'} (in 'validation')" in message


def test_cases_the_sampler_repeats_are_warned(tmp_path, monkeypatch, caplog):
    """Under torchrun the sampler pads each epoch to a multiple of the processes: 5 cases on 2 processes train one
    case twice, 2 cases on 5 processes one case three times and the other twice; rank 0 says so once, with torch's
    DistributedSampler's numbers; 5 cases on 5 processes, or any other rank, say nothing."""
    from torch.utils.data import DistributedSampler

    cases = [make_case(tmp_path, f"c{i}") for i in range(6)]
    for n, size, rank, warned in ((5, "2", "0", True), (2, "5", "0", True), (5, "5", "0", False), (5, "2", "1", False)):
        dl = tmp_path / f"dl{n}.json"
        dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": cases[:n], "validation": cases[5:]}))
        monkeypatch.setenv("WORLD_SIZE", size)
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level("WARNING", logger="medgmae.finetune.data"):
            prepare_datalists("", str(dl), tmp_path / "run")
        said = [r.getMessage() for r in caplog.records if "processes" in r.getMessage()]
        drawn = [i for r in range(int(size)) for i in DistributedSampler(range(n), num_replicas=int(size), rank=r, shuffle=False)]
        per, extra = len(drawn) // int(size), len(drawn) - n
        twice = sum(drawn.count(i) > 1 for i in range(n))  # counted from torch's sampler, not from the rule
        assert said == ([f"{n} training cases for {size} processes: the distributed sampler gives every process {per}, "
                         f"padding each epoch with {extra} repeated draw{'s' if extra > 1 else ''}, so {twice} "
                         f"case{'s are' if twice > 1 else ' is'} trained more than once in that epoch; a multiple of "
                         f"{size} cases avoids it"] if warned else []), (n, size, rank, said)  # fmt: skip


def test_data_preparation_warnings_come_from_rank_0_alone(tmp_path, monkeypatch, caplog):
    """Every torchrun process prepares the same data; the warnings about it (a label_fraction rounded up to one
    case, a datalist declaring a non-CT modality) come from rank 0 only."""
    for rank, warned in (("0", True), ("1", False)):
        root = tmp_path / f"rank{rank}"  # a datalist of its own: the modality is warned about once per file
        root.mkdir()
        dl = two_case_datalist(root)
        dl.write_text(json.dumps({**json.loads(dl.read_text(encoding="utf-8")), "modality": {"0": "MRI"}}))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level("WARNING", logger="medgmae"):
            prepare_datalists("", str(dl), root / "run", label_fraction=0.1)
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        rounded = [m for m in said if m.startswith("label_fraction 0.1 of 2 training cases is 0.2 cases, rounded to 1")]
        modality = [m for m in said if "declares the modality 'MRI'" in m]
        assert (len(rounded), len(modality)) == ((1, 1) if warned else (0, 0)), said


def test_evaluating_on_a_datalist_with_fewer_classes_names_the_model_first(tmp_path):
    """A model of 4 classes evaluated on a datalist naming 2 (labels holding 0-3): the cause, the class counts, is
    the error, not every label file 'outside the class range'."""
    from medgmae.finetune import evaluation_cases

    cases = [make_case(tmp_path, "c0", max_label=3)]
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}, "validation": cases}))
    with pytest.raises(ValueError, match=r"run/best_model.pt predicts 4 classes but the datalist has 2") as e:
        evaluation_cases("", str(dl), tmp_path / "run", network=SimpleNamespace(out_channels=4),
                         checkpoint=tmp_path / "run" / "best_model.pt")
    assert "outside the class range" not in str(e.value)
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}, "validation": [make_case(tmp_path, "c1", max_label=1)]}))
    assert evaluation_cases("", str(dl), tmp_path / "run", network=SimpleNamespace(out_channels=2))["num_classes"] == 2
    # a 'test' list of images only (a Decathlon layout's): evaluation has nothing to score against, and says so
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}, "test": [{"image": cases[0]["image"]}]}))
    with pytest.raises(ValueError, match=r"the 'test' list of .*dl.json has no labels to score against .*\(run inferring --data_key test"):
        evaluation_cases("", str(dl), tmp_path / "run", key="test")


def test_a_folder_without_a_datalist_says_fine_tuning_needs_one(tmp_path):
    """A plain folder of images and labels, or the datalist given as --dataset_dir: the error says what to give."""
    from medgmae.finetune.data import evaluation_cases, prepare_datalists

    (tmp_path / "plain" / "imagesTr").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"plain holds no dataset.json: fine-tuning pairs each image with its label "
                                           r"through a Decathlon datalist .* give it as --datalist"):  # fmt: skip
        prepare_datalists(str(tmp_path / "plain"), "", tmp_path / "out")
    with pytest.raises(DatasetError, match=r"plain holds no dataset.json"):  # evaluation and inference alike
        evaluation_cases(str(tmp_path / "plain"), "", tmp_path / "out")
    (tmp_path / "plain" / "dataset_0.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"--dataset_dir .*dataset_0.json is a file: give a datalist as --datalist"):
        prepare_datalists(str(tmp_path / "plain" / "dataset_0.json"), "", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_nnunet_raw_folder_is_named_with_the_command_writing_its_datalist(tmp_path):
    """nnU-Net v2's dataset.json (its 'labels' map names to values, no case lists): fine-tuning, evaluation and
    inference say what the file is and give the medgmae-datalist command and the --datalist to give then."""
    folder = tmp_path / "Dataset003_Liver"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                     "labels": {"background": 0, "liver": 1}, "numTraining": 2}))
    expected = (rf"{folder / 'dataset.json'} is nnU-Net's dataset.json .*`medgmae-datalist {folder} --out "
                rf"{folder / 'dataset_decathlon.json'}` writes a Decathlon datalist .*give that file as --datalist")
    with pytest.raises(DatasetError, match=expected):
        prepare_datalists(str(folder), "", tmp_path / "out")
    with pytest.raises(DatasetError, match=expected):
        evaluation_cases("", str(folder / "dataset.json"), tmp_path / "out")
    assert not (tmp_path / "out").exists()



def test_a_dataset_json_of_both_forms_with_case_lists_is_read_and_its_nnunet_labels_turned_round(tmp_path):
    """A dataset.json with nnU-Net's channel_names and file_ending and the Decathlon's case lists was refused as
    nnU-Net's own file 'which lists no training cases', and a 'labels' map of names to values (nnU-Net v2's order)
    as not 'integer strings to names': both are read now, the map turned round; regions, or one value named twice,
    are refused saying so."""
    root = tmp_path / "data"
    hybrid = root / "dataset.json"
    labels = {"background": 0, "liver": 1, "spleen": 2}
    cases = [make_case(root, "c0"), make_case(root, "c1")]
    hybrid.write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "labels": labels,
                                  "training": cases[:1], "validation": cases[1:]}))  # fmt: skip
    found = evaluation_cases("", str(hybrid), tmp_path / "out")
    assert found["label_names"] == ["background", "liver", "spleen"] and found["num_classes"] == 3
    assert [c["image"] for c in found["cases"]] == [cases[1]["image"]]
    assert label_names(hybrid) == ["background", "liver", "spleen"]
    plain = root / "reversed.json"
    plain.write_text(json.dumps({"labels": {"liver": 1, "background": 0}, "training": cases}))
    assert label_names(plain) == ["background", "liver"]
    for bad, said in (({"background": 0, "liver": 1, "tumour": [1, 2]}, "regions (a name for several values"),
                      ({"background": 0, "liver": 1, "hepar": 1}, "gives the value(s) [1] more than one name"),
                      ({"background": 0, "liver": "one"}, "or names to whole-number values as nnU-Net v2 does")):
        plain.write_text(json.dumps({"labels": bad, "training": cases}))
        with pytest.raises(DatasetError, match=re.escape(said)):
            label_names(plain)


def test_classes_no_chosen_training_case_holds_are_warned_about(tmp_path, caplog, monkeypatch):
    """With 1 % or 10 % of the cases, a class some cases lack can be in none of those chosen: the model never sees
    it. Each case here holds one class (its ``max_label``); a one-case subset lacks the other, which the warning
    names; a run on every case reads and warns nothing."""
    root = tmp_path / "data"
    held = [2, 1, 2, 2]
    cases = [make_case(root, f"c{i}", max_label=m) for i, m in enumerate(held)]
    dl = root / "dl.json"
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "liver", "2": "spleen"}, "training": cases,
                              "validation": [make_case(root, "v", max_label=2)]}))  # fmt: skip
    for seed in (0, 1, 12):  # choosing c2, c0 and c1
        caplog.clear()
        with caplog.at_level("WARNING", logger="medgmae"):
            data = prepare_datalists("", str(dl), tmp_path / f"run{seed}", label_fraction=0.25, subset_seed=seed)
        (chosen,) = data["training"]
        lacking = {1: "2 (spleen)", 2: "1 (liver)"}[held[cases.index(chosen)]]
        said = [r.getMessage() for r in caplog.records if "hold" in r.getMessage() and "no voxel" in r.getMessage()]
        assert said == [f"label_fraction 0.25: the 1 training case chosen holds no voxel of class {lacking}: the "
                        "model cannot learn it, and its Dice stays 0; choose other cases (--subset_seed) or a larger "
                        "label_fraction"], (seed, said)  # fmt: skip
    caplog.clear()
    with caplog.at_level("WARNING", logger="medgmae"):
        prepare_datalists("", str(dl), tmp_path / "all", label_fraction=1.0)
        monkeypatch.setattr("medgmae.finetune.classes.UNTRAINED_CHECK_MAX_CASES", 0)  # larger subsets: not read
        prepare_datalists("", str(dl), tmp_path / "run0", label_fraction=0.25, subset_seed=0)
    assert "no voxel" not in caplog.text


def test_a_labels_map_naming_two_classes_alike_is_refused(tmp_path):
    """metrics.json and per_case_dice.csv report Dice by class name: two classes of one name ('kidney' for both
    kidneys) kept one Dice of the two in metrics.json, silently; the map is refused naming the name and its classes."""
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "kidney", "2": "liver", "3": "kidney"}}))
    with pytest.raises(DatasetError) as refused:
        label_names(dl)
    assert f"datalist {dl}: 'labels' gives more than one class the same name: 'kidney' (classes 1, 3)" in str(refused.value)
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "kidney", "2": "Kidney"}}))  # other names
    assert label_names(dl) == ["background", "kidney", "Kidney"]
