"""`tokenpose::attention`: the fused CPU attention kernel (tokenpose/csrc/attention_cpu.cpp).

The kernel is C++ (AVX-512) registered with PyTorch's dispatcher as the operator
`torch.ops.tokenpose.attention(q, k, v, scale)`; it computes what `scaled_dot_product_attention`
does for float32 CPU tensors of TokenPose's narrow heads (sizes 8, 12, 16, 24), and falls back to it
inside the operator for anything else (other sizes, dtypes, devices, a CPU without AVX-512).

* `build_library()` compiles the source once per source / torch version into a cache folder (a
  plain shared library, no Python module: AOTInductor packages and the C++ example load the same
  file). It needs a C++ compiler (`$CXX`, else `c++`); ~20 s the first time.
* `load_library(path)` loads such a file (a copy beside an AOTInductor package, say) and registers
  the operator's shape function for `torch.export` / `torch.compile`; `ensure_loaded()` builds and
  loads. A process holds one implementation: a second library is not loaded over the first.
* `unavailable_reason()` says why the kernel cannot be used here (None when it can);
  `TokenPose.use_fused_attention()` switches a model's attention layers to the operator.

Only inference uses it: it has no backward, and the layers call it only when autograd is off or
the inputs need no gradient.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

from tokenpose.errors import TokenPoseError
from tokenpose.files import user_cache_dir

__all__ = ["OP_NAME", "SOURCE", "FusedAttentionError", "build_library", "cache_dir", "ensure_loaded", "load_library",
           "loaded_library", "unavailable_reason"]

OP_NAME = "tokenpose::attention"
SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "attention_cpu.cpp"
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w")
_lock = threading.Lock()
_state: dict[str, object] = {"library": None, "fake": False, "error": None}


class FusedAttentionError(TokenPoseError):
    """The fused attention library could not be built or loaded."""


def _not_x86() -> str | None:
    """Why this machine cannot run the kernel at all (not x86-64), or None."""
    machine = platform.machine()
    return None if machine.lower() in ("x86_64", "amd64") else f"x86-64 only (this machine: {machine})"


def cache_dir() -> Path:
    """Where built libraries go: `$XDG_CACHE_HOME/tokenpose/ops` (default `~/.cache/tokenpose/ops`)."""
    return user_cache_dir() / "ops"


def _compile_command(compiler: str, out: Path) -> list[str]:
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).parent / "lib"
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    return [compiler, *_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *includes, str(SOURCE), "-o", str(out),
            f"-L{torch_lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]


def _library_name() -> str:
    """File name keyed by the source, the flags and the torch build it links against."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join((*_FLAGS, torch.__version__, platform.machine())).encode())
    return f"tokenpose_attention_{digest.hexdigest()[:16]}.so"


def build_library(folder: str | os.PathLike | None = None, *, log=None) -> Path:
    """The compiled library in `folder` (default `cache_dir()`), compiling it first if missing.

    The compiler writes into a temporary file that is renamed into place, so concurrent builds and
    interrupted ones never leave a half-written library under the final name.
    FusedAttentionError names the problem (no x86-64 CPU, no compiler, the compiler's error).
    """
    if (reason := _not_x86()) is not None:
        raise FusedAttentionError(f"the fused attention kernel is {reason}")
    folder = Path(folder) if folder is not None else cache_dir()
    target = folder / _library_name()
    if target.is_file():
        return target
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        raise FusedAttentionError(f"building the fused attention kernel needs a C++ compiler: {compiler!r} is not "
                                  "on PATH (install g++ or set CXX)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FusedAttentionError(f"cannot create the kernel cache folder {folder}: {exc.strerror}") from exc
    message = f"compiling the fused attention kernel into {target} (once per torch version, ~20 s)"
    if log is not None:
        log(message)
    else:  # a one-off wait of ~20 s: say why
        print(f"tokenpose: {message}", file=sys.stderr, flush=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        done = subprocess.run(_compile_command(compiler, Path(tmp)), capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
            raise FusedAttentionError(
                f"compiling {SOURCE.name} with {compiler} failed (exit {done.returncode}):\n{tail}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _op_registered() -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, "CPU")
    except RuntimeError:  # "operator ... does not exist"
        return False


def _register_fake() -> None:
    if _state["fake"]:
        return

    @torch.library.register_fake(OP_NAME)
    def _(q, k, v, scale):  # (B, H, L, D) laid out as (B, L, H, D), as the kernel returns it
        b, h, n, d = q.shape
        return q.new_empty((b, n, h, d)).transpose(1, 2)

    _state["fake"] = True


def load_library(path: str | os.PathLike) -> Path:
    """Load the library at `path` (unless this process already has the operator) and register its
    shape function. Returns the library the process runs: `path`, or the one loaded before."""
    path = Path(path)
    if not path.is_file():  # even when the operator is loaded: a package without its library is incomplete
        raise FusedAttentionError(f"fused attention library {path} does not exist")
    with _lock:
        if _state["library"] is None and not _op_registered():
            try:
                torch.ops.load_library(str(path))
            except OSError as exc:
                raise FusedAttentionError(f"cannot load the fused attention library {path}: {exc}") from exc
            _state["library"] = path
        elif _state["library"] is None:
            _state["library"] = path  # registered by an earlier load of the same operator
        _register_fake()
        return Path(_state["library"])


def loaded_library() -> Path | None:
    """The library this process loaded the operator from, or None."""
    return None if _state["library"] is None else Path(_state["library"])


def ensure_loaded(*, log=None) -> Path:
    """Build (when needed) and load the kernel; returns the library file. FusedAttentionError if it
    cannot (remembered: the process does not try again)."""
    if (library := loaded_library()) is not None:
        return library
    if _state["error"] is not None:  # a failed build is not retried (and waited for) in every engine
        raise FusedAttentionError(str(_state["error"]))
    try:
        return load_library(build_library(log=log))
    except FusedAttentionError as exc:
        _state["error"] = exc
        raise


def unavailable_reason() -> str | None:
    """Why the fused kernel would not speed anything up here, or None when it would (an x86-64 CPU
    with AVX-512F, torch built for it)."""
    if (reason := _not_x86()) is not None:
        return reason
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.startswith("AVX512"):
        return f"the CPU lacks AVX-512 (torch reports {capability}); scaled_dot_product_attention is used"
    if sys.platform != "linux":
        return f"built on Linux only (this platform: {sys.platform})"
    return None
