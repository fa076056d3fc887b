"""Datasets: ids, deterministic splits and subjects, forget selection, the on-disk format."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from ltu_core.data import (
    ForgetSpec,
    UnlearningDataset,
    audit_rows,
    load_digits,
    make_split,
    make_synthetic,
    pack_dataset,
    read_dataset,
    select_forget,
    select_partial_retain,
    unpack_dataset,
    write_dataset,
)
from ltu_core.data.loaders import assign_subjects
from ltu_core.errors import DatasetFormatError, ForgetSetError


def test_public_dataset_ids_and_splits_are_deterministic_and_documented():
    a, b = load_digits(), load_digits()
    assert len(a) == 1797
    assert np.array_equal(a.sample_ids, b.sample_ids)
    assert np.array_equal(a.subject_ids, b.subject_ids)
    assert np.array_equal(a.splits, b.splits)
    assert a.sample_ids[0] == "digits-0000"
    counts = {s: int((a.splits == s).sum()) for s in ("train", "test", "holdout")}
    assert counts == {"train": 1080, "test": 360, "holdout": 357}
    # Subjects group exactly 4 samples each (the last group may be smaller).
    _, sizes = np.unique(a.subject_ids, return_counts=True)
    assert sizes.max() == 4 and (sizes == 4).sum() >= len(sizes) - 1


def test_subject_assignment_follows_the_hash_rule():
    ids = np.asarray([f"x-{i}" for i in range(10)])
    subjects = assign_subjects(ids, prefix="x", samples_per_subject=3)
    assert len(set(subjects)) == 4
    # Independent of input order: the grouping is a function of the ids alone.
    perm = np.random.default_rng(0).permutation(10)
    shuffled = assign_subjects(ids[perm], prefix="x", samples_per_subject=3)
    assert dict(zip(ids[perm], shuffled)) == dict(zip(ids, subjects))


def test_forget_selection_by_each_kind(synthetic):
    train = set(synthetic.split_indices("train").tolist())
    subject = synthetic.subject_ids[synthetic.split_indices("train")[0]]
    by_subject = select_forget(synthetic, ForgetSpec(kind="subjects", ids=(subject,)))
    assert set(synthetic.subject_ids[by_subject]) == {subject}
    assert set(by_subject.tolist()) <= train  # only samples that trained the model

    sample_ids = tuple(synthetic.sample_ids[sorted(train)[:5]])
    by_sample = select_forget(synthetic, ForgetSpec(kind="samples", ids=sample_ids))
    assert tuple(synthetic.sample_ids[by_sample]) == sample_ids

    r1 = select_forget(synthetic, ForgetSpec(kind="random", count=10, seed=3))
    r2 = select_forget(synthetic, ForgetSpec(kind="random", count=10, seed=3))
    r3 = select_forget(synthetic, ForgetSpec(kind="random", count=10, seed=4))
    assert np.array_equal(r1, r2) and not np.array_equal(r1, r3) and len(r1) == 10
    frac = select_forget(synthetic, ForgetSpec(kind="random", fraction=0.25, seed=0))
    assert len(frac) == round(0.25 * len(train))

    by_class = select_forget(synthetic, ForgetSpec(kind="class", label=2))
    assert set(synthetic.labels[by_class]) == {2}
    assert len(by_class) == int((synthetic.labels[sorted(train)] == 2).sum())


@pytest.mark.parametrize(
    "spec, message",
    [
        (ForgetSpec(kind="subjects", ids=()), "names no subjects"),
        (ForgetSpec(kind="subjects", ids=("nobody",)), "has a training sample"),
        (ForgetSpec(kind="samples", ids=("synthetic-999",)), "not training samples"),
        (ForgetSpec(kind="random", count=0), "positive count"),
        (ForgetSpec(kind="random", fraction=1.0), "whole training set"),
        (ForgetSpec(kind="class", label=9), "does not exist"),
    ],
)
def test_bad_forget_specs_are_clear_errors(synthetic, spec, message):
    with pytest.raises(ForgetSetError, match=message):
        select_forget(synthetic, spec)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("subjects:a,b", ForgetSpec(kind="subjects", ids=("a", "b"))),
        ("samples:x", ForgetSpec(kind="samples", ids=("x",))),
        ("random:100", ForgetSpec(kind="random", count=100)),
        ("random:0.1", ForgetSpec(kind="random", fraction=0.1)),
        ("class:3", ForgetSpec(kind="class", label=3)),
    ],
)
def test_forget_spec_parsing(text, expected):
    assert ForgetSpec.parse(text) == expected


@pytest.mark.parametrize("text", ["", "subjects", "subjects:", "random:abc", "colour:red"])
def test_forget_spec_parse_errors(text):
    with pytest.raises(ForgetSetError):
        ForgetSpec.parse(text)


def test_partial_retain_is_seeded_and_sized():
    retain = np.arange(1000)
    a = select_partial_retain(retain, 0.1, seed=1)
    assert len(a) == 100 and np.array_equal(a, select_partial_retain(retain, 0.1, seed=1))
    assert not np.array_equal(a, select_partial_retain(retain, 0.1, seed=2))
    with pytest.raises(ForgetSetError):
        select_partial_retain(retain, 0.0, seed=1)


def test_split_sets_are_disjoint_and_cover_train(synthetic):
    split = make_split(synthetic, ForgetSpec(kind="random", count=10, seed=0), retain_fraction=0.5, seed=0)
    f, r, rs = set(split.forget), set(split.retain), set(split.retain_subset)
    ref, test = set(split.reference), set(split.test)
    assert not f & r and f | r == set(synthetic.split_indices("train").tolist())
    assert rs <= r and len(rs) == round(0.5 * len(r))
    # D_ref comes from the holdout, at most half of it; the rest is D_audit; D_test is the test split.
    holdout = set(synthetic.split_indices("holdout").tolist())
    assert ref <= holdout and len(ref) <= len(holdout) // 2 and test == set(synthetic.split_indices("test").tolist())
    assert set(audit_rows(split).tolist()) == holdout - ref
    # Without a holdout split, D_ref and D_test are disjoint halves of the test split, and D_audit
    # is what D_ref leaves of its half.
    bare = make_synthetic(num_samples=160, num_classes=4, seed=0)
    halved = make_split(bare, ForgetSpec(kind="random", count=10, seed=0), seed=0)
    ref, test, audit = set(halved.reference), set(halved.test), set(audit_rows(halved).tolist())
    assert not ref & test and not audit & (ref | test)
    assert ref | test | audit == set(bare.split_indices("test").tolist()) and len(audit) >= len(ref)
    sets = split.sets()
    assert len(sets["retain_unseen"]) == len(r) - len(rs)


def test_format_round_trip_streams_images_from_disk(tmp_path, synthetic):
    folder = write_dataset(synthetic, tmp_path / "ds")
    loaded = read_dataset(folder)
    assert isinstance(loaded.images, np.memmap)  # not read into memory
    for field in ("labels", "sample_ids", "subject_ids", "splits"):
        assert np.array_equal(getattr(loaded, field), getattr(synthetic, field))
    assert np.array_equal(np.asarray(loaded.images), synthetic.images)
    x, y = loaded.view(np.array([5, 1, 3])).tensors()
    x0, y0 = synthetic.view(np.array([5, 1, 3])).tensors()
    assert (x == x0).all() and (y == y0).all()

    archive = pack_dataset(folder, tmp_path / "ds.tar")
    again = read_dataset(unpack_dataset(archive, tmp_path / "unpacked"))
    assert np.array_equal(np.asarray(again.images), synthetic.images)


def _corrupt(folder, name, text):
    (folder / name).write_text(text)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: (f / "manifest.json").unlink(), "missing manifest.json"),
        (lambda f: _corrupt(f, "manifest.json", "{not json"), "not valid JSON"),
        (lambda f: _corrupt(f, "manifest.json", json.dumps({"format": "other"})), "'format' must be"),
        (lambda f: (f / "images.u8").write_bytes(b"\0" * 10), "bytes, but"),
        (lambda f: _corrupt(f, "samples.csv", "id,label\n"), "header must be"),
        (lambda f: _corrupt(f, "samples.csv", "sample_id,subject_id,label,split\na,b,1,train\n"), "rows but"),
    ],
)
def test_format_errors_name_the_problem(tmp_path, synthetic, mutate, message):
    folder = write_dataset(synthetic, tmp_path / "ds")
    mutate(folder)
    with pytest.raises(DatasetFormatError, match=message):
        read_dataset(folder)


def test_bad_rows_are_reported_with_their_line(tmp_path):
    small = make_synthetic(num_samples=8, num_classes=2, seed=1)
    folder = write_dataset(small, tmp_path / "ds")
    lines = (folder / "samples.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",validation"
    (folder / "samples.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"samples.csv:4: split 'validation'"):
        read_dataset(folder)


def test_unpack_rejects_archives_that_are_not_the_format(tmp_path, synthetic):
    folder = write_dataset(synthetic, tmp_path / "ds")
    not_tar = tmp_path / "x.tar"
    not_tar.write_bytes(b"definitely not a tar archive" * 100)
    with pytest.raises(DatasetFormatError, match="not an uncompressed tar"):
        unpack_dataset(not_tar, tmp_path / "out1")

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        for name in ("manifest.json", "samples.csv", "images.u8"):
            tar.add(folder / name, arcname=name)
        tar.add(folder / "manifest.json", arcname="../escape.json")
    with pytest.raises(DatasetFormatError, match="unexpected entries"):
        unpack_dataset(evil, tmp_path / "out2")
    assert not (tmp_path / "escape.json").exists()

    linked = tmp_path / "linked.tar"
    with tarfile.open(linked, "w") as tar:
        tar.add(folder / "manifest.json", arcname="manifest.json")
        tar.add(folder / "samples.csv", arcname="samples.csv")
        info = tarfile.TarInfo("images.u8")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DatasetFormatError, match="regular file"):
        unpack_dataset(linked, tmp_path / "out3")


def test_dataset_validation_rejects_inconsistent_arrays(synthetic):
    from dataclasses import replace

    with pytest.raises(DatasetFormatError, match="unique"):
        replace(synthetic, sample_ids=np.full(len(synthetic), "same"))
    with pytest.raises(DatasetFormatError, match="labels must lie"):
        replace(synthetic, labels=synthetic.labels + 10)


def test_excluded_rows_belong_to_no_set(synthetic):
    train = synthetic.split_indices("train")
    test = synthetic.split_indices("test")
    erased = np.concatenate([train[:30], test[:5]])
    split = make_split(
        synthetic, ForgetSpec(kind="random", count=10, seed=0), retain_fraction=1.0, seed=0, exclude=erased
    )
    used = np.concatenate([split.forget, split.retain, split.reference, split.test])
    assert not set(erased.tolist()) & set(used.tolist())
    assert len(split.forget) + len(split.retain) == len(train) - 30
    with pytest.raises(ForgetSetError, match="not training samples"):
        select_forget(synthetic, ForgetSpec(kind="samples", ids=(synthetic.sample_ids[train[0]],)), exclude=erased)


def test_with_train_size_keeps_the_first_rows_in_split_hash_order(tmp_path):
    full = load_digits(train_size=None)  # 1,437 train, 360 test, no holdout
    cut = full.with_train_size(500)
    assert len(cut.split_indices("train")) == 500 and len(cut.split_indices("holdout")) == 937
    assert np.array_equal(cut.split_indices("test"), full.split_indices("test"))
    assert set(cut.split_indices("holdout")) == set(full.split_indices("train")) - set(cut.split_indices("train"))
    assert np.array_equal(cut.splits, full.with_train_size(500).splits)  # deterministic
    # the loaders' convention: the same train rows as loading with train_size directly
    assert np.array_equal(cut.splits, load_digits(train_size=500).splits)
    assert cut.images is full.images and cut.sample_ids is full.sample_ids and full.splits is not cut.splits
    assert len(full.split_indices("holdout")) == 0  # the source is left as it was
    # a dataset read from disk with no holdout row (splits typed too narrow for "holdout")
    small = read_dataset(write_dataset(make_synthetic(num_samples=40, num_classes=2), tmp_path / "ds"))
    assert small.splits.dtype.itemsize < np.dtype("<U7").itemsize
    shrunk = small.with_train_size(10)
    assert sorted(set(shrunk.splits.tolist())) == ["holdout", "test", "train"]
    assert len(shrunk.split_indices("train")) == 10 and len(shrunk.split_indices("holdout")) == 20
    assert len(small.with_train_size(30).split_indices("holdout")) == 0  # the whole train split: nothing moves
    for bad, message in ((31, "exceeds the 30 train samples"), (1, "at least 2"), (2.5, "must be an integer")):
        with pytest.raises(ValueError, match=message):
            small.with_train_size(bad)


def test_unpack_refuses_sparse_members_before_writing_them(tmp_path, synthetic):
    folder = write_dataset(synthetic, tmp_path / "ds")
    sparse = tmp_path / "sparse.tar"
    with tarfile.open(sparse, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder / "manifest.json", arcname="manifest.json")
        tar.add(folder / "samples.csv", arcname="samples.csv")
        # GNU tar's PAX sparse format 0.1: 512 stored bytes stand for a 1.5 GB file of holes.
        info = tarfile.TarInfo("images.u8")
        info.size, info.pax_headers = 512, {"GNU.sparse.map": "0,512", "GNU.sparse.size": "1500000000"}
        tar.addfile(info, io.BytesIO(b"\1" * 512))
    with pytest.raises(DatasetFormatError, match="not sparse"):
        unpack_dataset(sparse, tmp_path / "out")
    assert not (tmp_path / "out" / "images.u8").exists()


def test_manifests_nested_too_deep_are_format_errors(tmp_path, synthetic):
    folder = write_dataset(synthetic, tmp_path / "ds")
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        read_dataset(folder)


# --- version 2: tombstoned rows --------------------------------------------------------------------


def _tombstoned(tmp_path, synthetic, rows):
    """`synthetic` stored, then `rows` tombstoned the way the service's purge does (the two files replaced)."""
    from ltu_core.data.format import tombstone_rows

    folder = write_dataset(synthetic, tmp_path / "ds")
    staged = tmp_path / "staged"
    staged.mkdir()
    tombstone_rows(folder, rows, staged)
    assert sorted(p.name for p in staged.iterdir()) == ["images.u8", "manifest.json"]  # samples.csv is unchanged
    for path in staged.iterdir():
        path.replace(folder / path.name)
    return folder


def test_tombstoned_rows_are_zeros_listed_in_a_version_2_manifest_and_unreadable(tmp_path, synthetic):
    folder = _tombstoned(tmp_path, synthetic, [7, 3])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["purged_rows"] == [3, 7]
    loaded = read_dataset(folder)
    assert loaded.purged_rows.tolist() == [3, 7] and len(loaded) == len(synthetic)  # every row keeps its index
    assert not np.asarray(loaded.images[[3, 7]]).any()
    others = loaded.readable_rows()
    assert 3 not in others and 7 not in others and len(others) == len(synthetic) - 2
    assert np.array_equal(np.asarray(loaded.images[others]), synthetic.images[others])
    assert np.array_equal(loaded.sample_ids, synthetic.sample_ids)
    with pytest.raises(DatasetFormatError, match=r"rows \[3\] are tombstoned"):
        loaded.view(np.array([1, 3])).tensors()
    with pytest.raises(DatasetFormatError, match="tombstoned"):
        next(loaded.view(np.arange(len(loaded))).batches(4))
    loaded.view(others).tensors()  # the rest reads as before

    # A second purge keeps the first one's tombstones; rewriting the dataset keeps them all.
    folder = _tombstoned(tmp_path / "again", read_dataset(folder), [9])
    assert read_dataset(folder).purged_rows.tolist() == [3, 7, 9]
    copy = read_dataset(write_dataset(read_dataset(folder), tmp_path / "copy"))
    assert copy.purged_rows.tolist() == [3, 7, 9]


def test_version_1_is_still_read_and_a_tombstone_list_needs_version_2(tmp_path, synthetic):
    folder = write_dataset(synthetic, tmp_path / "ds")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == 1 and "purged_rows" not in manifest  # nothing tombstoned: still version 1
    assert read_dataset(folder).purged_rows.tolist() == []
    for bad, message in [
        ({**manifest, "purged_rows": [1]}, "needs version 2"),
        ({**manifest, "version": 2}, "'purged_rows' must list"),
        ({**manifest, "version": 2, "purged_rows": [1, 1]}, "'purged_rows' must list"),
        ({**manifest, "version": 2, "purged_rows": [len(synthetic)]}, "'purged_rows' must list"),
        ({**manifest, "version": 3, "purged_rows": []}, "knows versions 1 and 2"),
    ]:
        (folder / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(DatasetFormatError, match=message):
            read_dataset(folder)


def test_check_tombstones_and_d_audit_leave_purged_rows_out(tmp_path, synthetic):
    from ltu_core.data.format import check_tombstones

    never_trained = synthetic.split_indices("holdout")[:2].tolist()  # D_audit's pool
    loaded = read_dataset(_tombstoned(tmp_path, synthetic, never_trained))
    check_tombstones(loaded, never_trained)
    with pytest.raises(DatasetFormatError, match="do not list them"):
        check_tombstones(loaded, [*never_trained, 0])
    listed_not_zeroed = UnlearningDataset(**{**_fields(synthetic), "purged_rows": np.array(never_trained)})
    with pytest.raises(DatasetFormatError, match="still hold pixels"):
        check_tombstones(listed_not_zeroed, never_trained)
    split = make_split(loaded, ForgetSpec(kind="random", count=2), exclude=np.asarray(never_trained))
    assert len(audit_rows(split)) and not set(audit_rows(split).tolist()) & set(never_trained)


def _fields(dataset):
    names = ("name", "images", "labels", "sample_ids", "subject_ids", "splits", "num_classes")
    return {name: getattr(dataset, name) for name in names}
