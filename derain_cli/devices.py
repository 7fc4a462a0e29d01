"""Choosing where inference runs (``--device``, ``--half``, ``--threads``) and how much memory it has.

``auto`` prefers CUDA and says so, in one line, when it has to fall back to the
CPU with a CUDA build of torch: a user who expected the GPU must not find out from
the run time. A CPU-only torch says nothing (``-v`` tells).
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable

import torch

from .errors import DerainError

Notify = Callable[[str], None]

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
NO_GPU = "no CUDA GPU found"


def say(message: str) -> None:
    """Default notifier: one line on stderr, never mixed into stdout results."""
    print(f"derain: {message}", file=sys.stderr, flush=True)


def cuda_built() -> bool:
    """True if this torch was built with CUDA (a ``+cpu`` wheel was not: it never had a GPU to miss)."""
    try:
        return bool(torch.backends.cuda.is_built())
    except Exception:  # very old or unusual builds
        return getattr(torch.version, "cuda", None) is not None


def _cuda_ready(device: torch.device) -> str | None:
    """None if CUDA works on ``device``, else why not (one short phrase)."""
    try:
        if not torch.cuda.is_available():
            return NO_GPU
        torch.zeros(1, device=device)
        return None
    except Exception as exc:  # driver mismatch, busy device, broken install
        return f"CUDA failed to initialise ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


def resolve_device(name: str = "auto", notify: Notify = say) -> torch.device:
    """``auto|cpu|cuda|cuda:N|mps`` -> a working ``torch.device``, or a one-line DerainError."""
    name = (name or "auto").strip().lower()
    if not _DEVICE_RE.match(name):
        raise DerainError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        problem = _cuda_ready(torch.device("cuda"))
        if problem is None:
            return torch.device("cuda")
        # a CUDA build without a working GPU is a surprise worth a line; a CPU-only build finding none is not
        if cuda_built() or problem != NO_GPU:
            notify(f"{problem}; running on the CPU")
        return torch.device("cpu")
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DerainError("--device mps requested but Apple MPS is not available on this machine")
        return torch.device("mps")
    device = torch.device(name)
    problem = _cuda_ready(device)
    if problem is None and device.index is not None and device.index >= torch.cuda.device_count():
        problem = f"there is no GPU {device.index} (found {torch.cuda.device_count()})"
    if problem is not None:
        raise DerainError(f"--device {name}: {problem}; use --device cpu")
    return device


def half_dtype(device: torch.device, half: bool,
               has_native_bf16: Callable[[], bool] | None = None) -> torch.dtype | None:
    """The autocast dtype for ``--half`` (None = full fp32). bf16 where supported: it cannot overflow.

    On a CPU, ``--half`` means bfloat16, and only where the CPU computes it natively
    (AMX or AVX512-BF16: convolutions run 2-3 times faster); elsewhere torch emulates
    bf16 and it would be slower than float32, so that is refused.
    """
    if not half:
        return None
    if device.type == "cpu":
        if not (has_native_bf16 or cpu_has_native_bf16)():
            raise DerainError("--half on the CPU needs AMX or AVX512-BF16 (this CPU would emulate bfloat16 "
                              "and run slower); drop --half or use a GPU")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16


def set_threads(threads: int | None) -> None:
    """Limit intra-op CPU threads (``--threads``); None keeps torch's default."""
    if threads is None:
        return
    if threads < 1:
        raise DerainError(f"--threads must be at least 1, not {threads}")
    torch.set_num_threads(threads)


def available_ram() -> int:
    """Bytes of RAM the OS can give us now (``MemAvailable``; sysconf as a fallback)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 << 30  # unknown platform: assume a modest 2 GiB


def free_memory(device: torch.device) -> int:
    """Bytes a new allocation on ``device`` can use."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_ram()


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocation failures (all surface as RuntimeError subclasses)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "MPS backend out of memory" in text
    )


def release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bfloat16 in hardware (AMX or AVX512-BF16).

    Elsewhere (e.g. AVX2-only CPUs) torch emulates bf16, and autocast makes training about
    ten times slower instead of faster (measured: semimsn 0.43 vs 4.3 steps/s on an AVX2 EPYC).
    """
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # a probe missing from this torch build counts as "no"
            continue
    return False


def bf16_warning(device: torch.device, has_native_bf16: Callable[[], bool] = cpu_has_native_bf16) -> str | None:
    """The one-line warning ``derain train --half`` deserves on a CPU that only emulates bfloat16, else None."""
    if device.type != "cpu" or has_native_bf16():
        return None
    return ("--half on a CPU without AMX or AVX512-BF16: bfloat16 is emulated there and training "
            "runs several times slower; drop --half (--channels-last still helps)")
