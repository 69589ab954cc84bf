from collections import Counter

import pytest

from tumor_model.labels import CLASS_NAMES, UnknownLabelError, canonical_label, require_label
from tumor_model.splits import assign_split


@pytest.mark.parametrize(
    ("folder", "label"),
    [
        ("glioma_tumor", "glioma"),
        ("Meningioma_Tumor", "meningioma"),
        ("notumor", "no_tumor"),
        ("no_tumor", "no_tumor"),
        ("pituitary-tumor", "pituitary"),
        ("pituitary", "pituitary"),
    ],
)
def test_public_dataset_folders_map_onto_canonical_classes(folder: str, label: str) -> None:
    assert canonical_label(folder) == label


def test_unknown_label_is_an_error_not_a_new_class() -> None:
    assert canonical_label("astrocytoma") is None
    with pytest.raises(UnknownLabelError, match="astrocytoma"):
        require_label("astrocytoma")


def test_class_order_is_the_documented_one() -> None:
    assert CLASS_NAMES == ("glioma", "meningioma", "no_tumor", "pituitary")


def test_split_is_a_pure_function_of_the_group_key() -> None:
    keys = [f"group-{i}" for i in range(5000)]
    first = [assign_split(k) for k in keys]
    assert first == [assign_split(k) for k in reversed(keys)][::-1]
    shares = Counter(first)
    assert 0.65 < shares["train"] / len(keys) < 0.75
    assert 0.12 < shares["val"] / len(keys) < 0.18
    assert 0.12 < shares["test"] / len(keys) < 0.18


def test_split_fractions_are_checked() -> None:
    with pytest.raises(ValueError):
        assign_split("x", val_fraction=0.5, test_fraction=0.5)
