"""Datasets with stable sample and subject ids, forget-set selection and the on-disk format."""

from ltu_core.data.dataset import SPLITS, SampleSet, UnlearningDataset, to_float
from ltu_core.data.format import pack_dataset, read_dataset, unpack_dataset, write_dataset
from ltu_core.data.loaders import (
    BUILTIN_DATASETS,
    load_digits,
    load_mnist5k,
    make_synthetic,
)
from ltu_core.data.selection import (
    ForgetSpec,
    UnlearningSplit,
    audit_rows,
    draw_control,
    make_split,
    select_forget,
    select_partial_retain,
)

__all__ = [
    "BUILTIN_DATASETS",
    "SPLITS",
    "ForgetSpec",
    "SampleSet",
    "UnlearningDataset",
    "UnlearningSplit",
    "audit_rows",
    "draw_control",
    "load_digits",
    "load_mnist5k",
    "make_split",
    "make_synthetic",
    "pack_dataset",
    "read_dataset",
    "select_forget",
    "select_partial_retain",
    "to_float",
    "unpack_dataset",
    "write_dataset",
]
