"""Canonical tumour classes and the folder-name aliases seen in public MRI datasets."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "no_tumor", "pituitary")

_ALIASES: dict[str, str] = {
    "glioma": "glioma",
    "glioma_tumor": "glioma",
    "gliomas": "glioma",
    "meningioma": "meningioma",
    "meningioma_tumor": "meningioma",
    "meningiomas": "meningioma",
    "no_tumor": "no_tumor",
    "notumor": "no_tumor",
    "no_tumour": "no_tumor",
    "notumour": "no_tumor",
    "no": "no_tumor",
    "healthy": "no_tumor",
    "normal": "no_tumor",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
    "pituitary_tumour": "pituitary",
}


class UnknownLabelError(ValueError):
    """A folder name that maps to no canonical class."""


def canonical_label(name: str) -> str | None:
    """Map a folder name onto a canonical class, or None when it is unknown.

    Args:
        name: folder name as found in a dataset (case, spaces and hyphens are ignored).
    """
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(key)


def require_label(name: str) -> str:
    """Like `canonical_label`, but raise `UnknownLabelError` for an unknown name."""
    label = canonical_label(name)
    if label is None:
        raise UnknownLabelError(
            f"unknown label {name!r}: expected one of {', '.join(CLASS_NAMES)} "
            f"or an alias ({', '.join(sorted(_ALIASES))})"
        )
    return label


def class_index(label: str) -> int:
    """Index of a canonical label in `CLASS_NAMES`."""
    return CLASS_NAMES.index(label)
