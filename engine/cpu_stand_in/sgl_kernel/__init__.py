"""semipd's import stand-in for `sgl_kernel` on machines without a GPU.

The published `sglang-kernel` wheel carries CUDA binaries only and fails to import on a CPU-only
machine, and the CPU build of that library is not published. SGLang's CPU engine imports names
from it at module level but, for the dense models semipd serves, never calls them. This package
is put first on the import path only on CPU (see engine/device_env.py): every name and submodule
imports, and calling one raises an error that names the op, so a missing kernel is never silent.
"""

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+semipd.cpu.stand.in"
STAND_IN = True


class MissingKernelError(NotImplementedError):
    pass


class _MissingKernel:
    """A placeholder for an op: importable, attribute-walkable, fails loudly when called."""

    def __init__(self, qualname: str):
        self._qualname = qualname

    def __call__(self, *args, **kwargs):
        raise MissingKernelError(
            f"SGLang called the GPU kernel '{self._qualname}', which semipd's CPU stand-in for "
            "sgl_kernel does not provide. This model or option needs a kernel that has no CPU "
            "build here; use a GPU machine, or choose options that keep to torch-native code."
        )

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _MissingKernel(f"{self._qualname}.{name}")

    def __repr__(self) -> str:
        return f"<missing sgl_kernel op {self._qualname}>"


def _module_getattr(module_name: str):
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _MissingKernel(f"{module_name}.{name}")

    return __getattr__


class _SubmoduleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `sgl_kernel.<any>.<path>` importable as stand-in modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _module_getattr(spec.name)
        return module

    def exec_module(self, module):
        pass


__getattr__ = _module_getattr(__name__)
if not any(isinstance(f, _SubmoduleFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _SubmoduleFinder())
