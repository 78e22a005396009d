"""Checkpoint I/O: atomic writes and safe (``weights_only=True``) loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medlite.errors import DataError
from medlite.runs import load_torch_file, save_torch_atomic

SAVED_MARKER = ".saved"
LAST_CHECKPOINT = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that never leaves a half-written checkpoint.

    Lightning's default writes the target file in place, so a crash (or a full disk) during
    a save destroys the previous ``last.ckpt``. Here the bytes go to a temporary file in the
    same folder, are fsynced, and replace the target with ``os.replace`` (atomic on POSIX and
    Windows). Loads always use ``weights_only=True``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        save_torch_atomic(checkpoint, path)
        if path.name == LAST_CHECKPOINT:
            # Remembers that this fit has had a checkpoint to resume from: one that
            # disappears later is an error on resume, not a reason to start again silently.
            # (best.ckpt is written first in an epoch, so a kill between the two is a fit
            # without a resumable epoch, which starts again: the same seeded result.)
            (path.parent / SAVED_MARKER).touch()

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return load_torch_file(path, map_location=map_location or "cpu")


def model_state_from_checkpoint(checkpoint_path: Path) -> dict[str, torch.Tensor]:
    """The wrapped network's ``state_dict`` from a Lightning checkpoint of a TaskModule."""
    checkpoint = load_torch_file(checkpoint_path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise DataError(f"{checkpoint_path}: not a Lightning checkpoint (no state_dict)")
    prefix = "model."
    return {
        key[len(prefix):]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
