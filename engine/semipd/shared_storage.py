"""Unified storage for the two semi-PD workers on CPU: tensors backed by shared files.

The decode worker (the owner) creates the files; the prefill worker maps the same files, so the
weights, the KV pool and the request-to-token table exist once in memory and a KV entry written
by one worker is read in place by the other (no copy at hand-off).

The KV pool and req_to_token are allocated inside SGLang's own pool constructors; rather than
re-implementing those, `shared_allocations()` routes their large `torch.zeros` calls to shared
files. Both workers run the same constructors with the same arguments, so the n-th large
allocation names the same file in both; a shape or dtype that does not match the file is an error.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.sglang_seams import routed_zeros

# Smaller allocations (free lists, small index tensors) stay private to each worker.
SHARE_THRESHOLD_BYTES = 64 * 1024


class StorageMismatch(RuntimeError):
    pass


def remove_stale(tag: str) -> None:
    """Remove storage left by owners that were killed (their memory is otherwise never freed)."""
    for directory in default_root().glob(f"semipd-{tag}-*"):
        pid = directory.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(directory, ignore_errors=True)


def default_root() -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")


def new_directory(tag: str) -> Path:
    """A fresh directory for one owner's storage (and its sockets), named by its pid."""
    remove_stale(tag)
    directory = default_root() / f"semipd-{tag}-{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def nbytes_of(shape, dtype: torch.dtype) -> int:
    numel = 1
    for dim in shape:
        numel *= int(dim)
    return numel * torch.empty((), dtype=dtype).element_size()


def large_allocations(make, device_type: str):
    """Within this block, `torch.zeros` of at least SHARE_THRESHOLD_BYTES on `device_type` returns
    `make(shape, dtype)`: SGLang's pool constructors allocate their buffers this way."""

    def route(shape, dtype, device):
        here = torch.device(device if device is not None else "cpu").type == device_type
        if not here or nbytes_of(shape, dtype) < SHARE_THRESHOLD_BYTES:
            return None
        return make(shape, dtype)

    return routed_zeros(route)


@dataclass
class SharedStorage:
    directory: Path
    create: bool
    files: list[str] = field(default_factory=list)
    device = "cpu"  # files are host memory

    @classmethod
    def new(cls, tag: str) -> "SharedStorage":
        storage = cls(new_directory(tag), create=True)
        atexit.register(storage.remove)
        return storage

    @classmethod
    def attach(cls, directory: str | Path) -> "SharedStorage":
        return cls(Path(directory), create=False)

    def tensor(self, name: str, shape, dtype: torch.dtype) -> torch.Tensor:
        """A tensor whose memory is the shared file `name` (zero-filled when created)."""
        numel = 1
        for dim in shape:
            numel *= int(dim)
        nbytes = nbytes_of(shape, dtype)
        path = self.directory / name
        meta_path = self.directory / f"{name}.json"
        meta = {"shape": [int(d) for d in shape], "dtype": str(dtype)}
        if self.create:
            with open(path, "wb") as f:
                f.truncate(nbytes)  # sparse: pages are zero until written
            meta_path.write_text(json.dumps(meta))
        else:
            if not path.is_file():
                raise StorageMismatch(f"shared tensor {path} does not exist: the owner made fewer")
            found = json.loads(meta_path.read_text())
            if found != meta:
                raise StorageMismatch(f"shared tensor {name}: owner made {found}, this worker wants {meta}")
        self.files.append(name)
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(*shape)

    def share_parameters(self, module: torch.nn.Module) -> int:
        """Rebind every parameter to a shared file (the owner copies its values in first)."""
        count = 0
        for name, param in module.named_parameters():
            shared = self.tensor(f"param.{name}", param.shape, param.dtype)
            if self.create:
                shared.copy_(param.data)
            param.data = shared
            count += 1
        return count

    def shared_allocations(self, prefix: str):
        """Within this block, large CPU `torch.zeros` calls return shared-file tensors."""
        counter = iter(range(1 << 30))
        return large_allocations(lambda shape, dtype: self.tensor(f"{prefix}.{next(counter)}", shape, dtype), "cpu")

    def publish(self, pool_config=None) -> None:
        """Nothing to publish: a worker maps the files by name (the IPC storage writes its manifest)."""

    def check_complete(self) -> None:
        """The files are checked one by one as the worker maps them."""

    def remove(self) -> None:
        if self.create:
            shutil.rmtree(self.directory, ignore_errors=True)
