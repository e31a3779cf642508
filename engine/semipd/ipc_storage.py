"""Unified storage for the two semi-PD workers through torch's IPC: the GPU design, also run on CPU.

The owner (decode) allocates its tensors where it runs, on CUDA or, on CPU, in shared memory, and
lists them with its weights in a manifest (engine/semipd/cuda_ipc_storage.py). The manifest is
written once to the owner's storage directory, before the first prefill worker starts. A worker
opens each tensor in place: on CUDA through a cudaIpcMemHandle, on CPU through a shared-memory
file name. It opens them in the order it builds them, checked by name, shape and dtype.

The manifest also carries the owner's memory-pool configuration. A worker builds pools of the same
sizes from it instead of profiling device memory the owner already holds. Its weights are not read
from disk: it loads SGLang's `dummy` format and rebinds every parameter to the owner's.

The interface is SharedStorage's (engine/semipd/shared_storage.py, files on CPU): `tensor`,
`share_parameters`, `shared_allocations`, `publish`, `check_complete`, `remove`, `directory`.
`semipd serve --storage ipc` runs the CPU engine on this one.
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.multiprocessing

from engine.semipd.cuda_ipc_storage import (ManifestEntry, check_count, check_entry, dumps, export_manifest,
                                            open_entry)
from engine.semipd.shared_storage import SharedStorage, large_allocations, nbytes_of, new_directory

MANIFEST_FILE = "manifest.pkl"


def allocate(shape, dtype: torch.dtype, device: str) -> torch.Tensor:
    """A zero tensor the owner can share. On CPU it is made in shared memory at once: its pages
    stay unallocated until written (like a sparse file) and sharing it later copies nothing."""
    nbytes = nbytes_of(shape, dtype)
    if device != "cpu" or nbytes == 0:
        return torch.empty(shape, dtype=dtype, device=device).zero_()  # not torch.zeros: it may be routed here
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(int(d) for d in shape))


@dataclass
class IpcStorage:
    directory: Path
    create: bool
    device: str  # "cpu" or "cuda"
    pool_config: object | None = None  # the owner's sglang MemoryPoolConfig
    names: list[str] = field(default_factory=list)  # in the order made (owner) or opened (worker)
    owned: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    manifest: list[ManifestEntry] = field(default_factory=list)

    @classmethod
    def new(cls, tag: str, device: str) -> "IpcStorage":
        use_file_names(device)
        storage = cls(new_directory(tag), create=True, device=device)
        atexit.register(storage.remove)
        return storage

    @classmethod
    def attach(cls, directory: str | Path) -> "IpcStorage":
        published = pickle.loads((Path(directory) / MANIFEST_FILE).read_bytes())
        use_file_names(published["device"])
        return cls(Path(directory), create=False, device=published["device"], pool_config=published["pool_config"],
                   manifest=published["tensors"])

    def tensor(self, name: str, shape, dtype: torch.dtype) -> torch.Tensor:
        """The owner: a new zero tensor, listed. A worker: the owner's tensor at this position, which
        must have this name, shape and dtype."""
        if self.create:
            tensor = allocate(shape, dtype, self.device)
            self.owned.append((name, tensor))
        else:
            position = len(self.names)
            if position >= len(self.manifest):
                check_count(len(self.manifest), position + 1)
            check_entry(position, self.manifest[position], name, shape, dtype)
            tensor = open_entry(self.manifest[position])
        self.names.append(name)
        return tensor

    def share_parameters(self, module: torch.nn.Module) -> int:
        """The owner lists its parameters; a worker rebinds its own to them (its values are dummies)."""
        count = 0
        for name, param in module.named_parameters():
            if self.create:
                self.owned.append((f"param.{name}", param.data))
                self.names.append(f"param.{name}")
            else:
                param.data = self.tensor(f"param.{name}", param.shape, param.dtype)
            count += 1
        return count

    def shared_allocations(self, prefix: str):
        """Within this block, SGLang's large pool allocations on this device are shared tensors."""
        counter = iter(range(1 << 30))
        return large_allocations(lambda shape, dtype: self.tensor(f"{prefix}.{next(counter)}", shape, dtype),
                                 self.device)

    def publish(self, pool_config=None) -> None:
        """The owner writes the manifest, once, after everything it shares exists and before the
        first worker starts (workers started later, standbys and restarts, read the same one)."""
        if not self.create or (self.directory / MANIFEST_FILE).exists():
            return
        data = dumps({"device": self.device, "pool_config": pool_config, "tensors": export_manifest(self.owned)})
        partial = self.directory / f"{MANIFEST_FILE}.partial"
        partial.write_bytes(data)
        os.replace(partial, self.directory / MANIFEST_FILE)  # a worker never reads half of it

    def check_complete(self) -> None:
        """A worker, once built: it opened every tensor the owner shares."""
        check_count(len(self.manifest), len(self.names))

    def remove(self) -> None:
        if self.create:
            shutil.rmtree(self.directory, ignore_errors=True)


def use_file_names(device: str) -> None:
    """CPU tensors are shared by shared-memory file name: torch's default passes file descriptors,
    which only a live multiprocessing connection can carry, not a manifest file."""
    if device == "cpu":
        torch.multiprocessing.set_sharing_strategy("file_system")


def new_storage(kind: str, device: str):
    """The owner's storage: "files" (CPU only) or "ipc"."""
    if kind == "ipc":
        return IpcStorage.new("storage", device)
    if kind == "files" and device == "cpu":
        return SharedStorage.new("storage")
    raise ValueError(f"storage {kind!r} on {device}: valid are ipc, and files on CPU")


def attach_storage(directory: str | Path):
    """The worker's view of the owner's storage, whichever kind the owner made."""
    if (Path(directory) / MANIFEST_FILE).exists():
        return IpcStorage.attach(directory)
    return SharedStorage.attach(directory)

