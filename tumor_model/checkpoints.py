"""Per-epoch training checkpoints in a folder-like store (S3 in the pipeline, a local folder in tests).

After every epoch the model (with its optimizer state) and, when it improved, the best weights are uploaded under
epoch-stamped names; `state.json`, written last, names them. A reader therefore never sees a state that points at
a half-uploaded file, and a process killed at any instant resumes from the last complete epoch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Protocol

STATE_FILE = "state.json"


class CheckpointStore(Protocol):
    """Where checkpoints live; names are relative to one training run's folder."""

    def put_file(self, name: str, path: Path) -> None: ...

    def get_file(self, name: str, path: Path) -> None: ...

    def read_json(self, name: str) -> Any | None: ...

    def write_json(self, name: str, value: Any) -> None: ...

    def delete(self, name: str) -> None: ...

    def describe(self) -> str: ...


class LocalCheckpointStore:
    """Checkpoints in a local folder (each file written aside, then renamed into place)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def put_file(self, name: str, path: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{name}.partial"
        shutil.copyfile(path, partial)
        partial.replace(self.folder / name)

    def get_file(self, name: str, path: Path) -> None:
        source = self.folder / name
        if not source.is_file():
            raise FileNotFoundError(f"checkpoint file {source} is missing")
        shutil.copyfile(source, path)

    def read_json(self, name: str) -> Any | None:
        path = self.folder / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_json(self, name: str, value: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{name}.partial"
        partial.write_text(json.dumps(value, indent=2))
        partial.replace(self.folder / name)

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def describe(self) -> str:
        return str(self.folder)


def model_file_name(epoch: int) -> str:
    """Name of the full model checkpoint after `epoch` (1-based)."""
    return f"epoch-{epoch:03d}.keras"


def best_weights_name(epoch: int) -> str:
    """Name of the best weights so far, taken after `epoch` (1-based)."""
    return f"best-epoch-{epoch:03d}.weights.h5"
