"""Safe, atomic files: tensors in safetensors, everything else as JSON in its header.

Nothing here ever unpickles. A file is written to a temporary name in the same
folder and renamed over the target, so a reader (or a process killed mid-write)
sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mario_rl.errors import UserError

META_KEY = "mario_rl"
DIGEST_KEY = "sha256"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.detach().cpu().contiguous()


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path over path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are ordinary outputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: Path) -> Path:
    """Fail early, with one line, if a file cannot be created at `path` (before any work is done)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    if path.is_dir():
        raise UserError(f"output path {path} is a folder")
    return path


def save_tensors(path: Path, tensors: dict, meta: dict) -> None:
    """Write tensors (numpy or torch) and a JSON-able dict to a safetensors file, atomically."""
    tensors = {k: _as_tensor(v) for k, v in tensors.items()}
    header = {META_KEY: json.dumps(meta), DIGEST_KEY: _digest(tensors)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def _refuse_pickle(path: Path, head: bytes) -> None:
    # PyTorch .pt files are zip archives holding a pickle; raw pickles start with 0x80. A safetensors
    # file starts with its header's length (8 bytes, little-endian), then the header's "{": a length
    # such as 0x1F80 starts with 0x80 too (a real checkpoint was refused), so that "{" rules it out first.
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise UserError(
            f"{path} looks like a pickle / PyTorch .pt file; mario_rl only loads safetensors "
            "files and never unpickles (its code would run)"
        )


def load_tensors(path: Path, what: str = "file") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by save_tensors; any problem is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    _refuse_pickle(path, head)
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is not a valid safetensors {what} ({str(e).splitlines()[0]})") from None
    if META_KEY not in header:
        raise UserError(f"{path} is a safetensors file but not a mario_rl {what} (no metadata)")
    if header.get(DIGEST_KEY) != _digest(tensors):
        raise UserError(f"{path} is corrupt or was modified: its checksum does not match")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError:
        raise UserError(f"{path} has unreadable metadata") from None
    return tensors, meta


# --- nested state dicts (optimizers) <-> flat tensor dicts + JSON ---


def flatten_state(prefix: str, obj, tensors: dict, path: str = ""):
    """Split a nested structure into tensors (stored under prefix.path) and a JSON skeleton."""
    key = f"{prefix}.{path}" if path else prefix
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [k, flatten_state(prefix, v, tensors, f"{path}.{k}" if path else str(k))] for k, v in obj.items()
            ]
        }
    if isinstance(obj, (list, tuple)):
        return {
            "__list__": [
                flatten_state(prefix, v, tensors, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj)
            ]
        }
    return obj


def unflatten_state(skeleton, tensors: dict):
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten_state(v, tensors) for v in skeleton["__list__"]]
    return skeleton
