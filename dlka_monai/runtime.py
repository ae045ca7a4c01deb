# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""How a process runs its networks: the numeric precision and the number of CPU threads.

Precision (``"auto" | "fp32" | "bf16" | "fp16"``, the ``precision`` id of ``configs/inference.json`` and
``dlka-segment --precision``): ``"auto"`` is bfloat16 autocast where the hardware computes it natively (a
CPU with AMX-BF16 or AVX512-BF16, as PyTorch reports them; a CUDA device with bf16 support), float32
elsewhere. Autocast runs the convolutions and GEMMs in the low precision; the deformable convolution
casts its inputs to float32 (:func:`~dlka_monai.networks.layers.deform_conv_fast.deform_conv3d_fast`)
and the channels-last instance norm computes its statistics in float32, so sampling positions and
normalisation keep float32 accuracy.

Threads (``threads``: ``"auto"`` or a count): ``"auto"`` gives one intra-op thread to small work, where
fanning out does not pay, and otherwise one thread per CPU this process may use that other processes do
not keep busy, because every OpenMP parallel region waits for its slowest thread: with one busy
competitor, two threads on two cores run 5-15x slower than one. What other processes use is measured,
not guessed from the load average (which lags by a minute and counts this process's own past work):
the CPU time the kernel reports for this process's CPUs (``/proc/stat``) less this process's own
(:func:`other_processes_cpus`); where that is not available, the one-minute load average stands in. An
``OMP_NUM_THREADS`` set in the environment is the user's choice and is kept. Competition that starts or
ends later is met by :class:`ThreadGovernor` (:func:`govern_threads` on a network), which re-reads the
same measure every few seconds while the network runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer

__all__ = [
    "PRECISIONS",
    "PrecisionInferer",
    "autocast",
    "choose_threads",
    "cpu_seconds",
    "cpu_has_native_bf16",
    "describe_precision",
    "govern_threads",
    "other_processes_cpus",
    "pass_voxels",
    "resolve_precision",
    "set_threads",
    "ThreadGovernor",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

SMALL_WORK_VOXELS = 32**3
"""Voxels per forward pass (batch x window) at or below which ``threads="auto"`` uses one thread."""

_logger = logging.getLogger(__name__)
_logged: set = set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16), as PyTorch detects it."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        found = caps()
        return bool(found.get("amx_bf16") or found.get("avx512_bf16"))
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``precision`` (one of :data:`PRECISIONS`) for ``device`` -> ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: an unknown precision, or bf16 asked of a CUDA device without bf16 support (one line).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}.")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        native = cuda_bf16 if device.type == "cuda" else device.type == "cpu" and cpu_has_native_bf16()
        return "bf16" if native else "fp32"
    if precision == "bf16" and device.type == "cuda" and not cuda_bf16:
        raise ValueError("precision bf16: this CUDA device does not support bfloat16; use fp16 or fp32.")
    return precision


def describe_precision(precision: str, device: str | torch.device) -> str:
    """One line for logs, e.g. ``"bf16 autocast on cpu (auto: CPU with AMX-BF16 / AVX512-BF16)"``."""
    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    text = "fp32" if resolved == "fp32" else f"{resolved} autocast"
    if precision == "auto":
        why = {"cpu": "CPU with AMX-BF16 / AVX512-BF16", "cuda": "CUDA device with bf16"}.get(device.type, device.type)
        text += f" on {device.type} (auto: {why})" if resolved == "bf16" else f" on {device.type} (auto: no native bf16)"
    else:
        text += f" on {device.type}"
    return text


def autocast(precision: str, device: str | torch.device):
    """The context that runs a network in ``precision`` on ``device``: ``torch.autocast`` for bf16/fp16,
    nothing for fp32."""
    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[resolved])


def _log_once(key, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        _logger.info(message)


class PrecisionInferer(Inferer):
    """An inferer whose network runs in a precision: each network call (e.g. each batch of sliding windows)
    runs under :func:`autocast` and its output is returned as float32, so that what the inner inferer does
    with the outputs (blending windows, averaging flips) stays float32.

    Args:
        inferer: the inner inferer (e.g. a ``SlidingWindowInferer``).
        precision: one of :data:`PRECISIONS`; ``"auto"`` is resolved per call for the inputs' device.

    ``__call__(inputs, network, *args, **kwargs)``: as the inner inferer's. The precision that ran is logged
    at the first call on each device (logger ``dlka_monai.runtime``).
    """

    def __init__(self, inferer: Inferer, precision: str = "auto") -> None:
        super().__init__()
        resolve_precision(precision, "cpu")  # an unknown name fails here, not at the first case
        self.inferer = inferer
        self.precision = precision
        self._logged: set[str] = set()

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        device = inputs.device
        if str(device) not in self._logged:
            self._logged.add(str(device))
            _logger.info(f"inference precision: {describe_precision(self.precision, device)}")
        if resolve_precision(self.precision, device) == "fp32":
            return self.inferer(inputs, network, *args, **kwargs)

        def run(x, *a, **k):
            with autocast(self.precision, device):
                y = network(x, *a, **k)
            return y.float() if isinstance(y, torch.Tensor) else y

        return self.inferer(inputs, run, *args, **kwargs)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def cpu_seconds() -> tuple[float, float] | None:
    """``(busy, own)``: CPU-seconds the CPUs this process may run on have been busy since boot (``/proc/stat``;
    time stolen by a hypervisor counts as busy) and CPU-seconds this process has used; None where the
    kernel does not report them."""
    cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None
    busy = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu" or (cpus is not None and name not in cpus):
                    continue
                # user nice system idle iowait irq softirq steal (guest time is already in user and nice)
                ticks = [int(v) for v in fields[:8]]
                busy += sum(ticks) - ticks[3] - ticks[4]
    except (OSError, ValueError, IndexError):
        return None
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def _others_busy(first: tuple[float, float], second: tuple[float, float], seconds: float) -> float:
    """CPUs other processes kept busy between two :func:`cpu_seconds` readings ``seconds`` apart."""
    return max(0.0, ((second[0] - first[0]) - (second[1] - first[1])) / seconds)


def other_processes_cpus(interval: float = 0.25, sample: Callable[[], tuple[float, float] | None] = cpu_seconds) -> float:
    """CPUs that other processes keep busy, measured over ``interval`` seconds (:func:`cpu_seconds`, this
    process's own time subtracted); where that is not reported, the one-minute load average."""
    import time

    first, t0 = sample(), time.perf_counter()
    if first is None:
        return _load_average()
    time.sleep(interval)
    second, t1 = sample(), time.perf_counter()
    if second is None:
        return _load_average()
    return _others_busy(first, second, t1 - t0)


def choose_threads(work_voxels: int | None = None, cpus: int | None = None, busy: float | None = None) -> int:
    """Intra-op threads for work of ``work_voxels`` voxels per forward pass on ``cpus`` CPUs of which other
    processes keep ``busy`` busy.

    One thread when the work is small (``<= SMALL_WORK_VOXELS``); otherwise the CPUs left free, rounded to
    the nearest count, at least one and at most ``cpus``.

    Args:
        work_voxels: voxels of one forward pass (batch x window); None: unknown (not small).
        cpus: usable CPUs; default :func:`available_cpus`.
        busy: CPUs busy with other processes' work; default :func:`other_processes_cpus` (a quarter-second
            measurement, taken only when the work is not small).
    """
    cpus = available_cpus() if cpus is None else cpus
    if work_voxels is not None and work_voxels <= SMALL_WORK_VOXELS:
        return 1
    busy = other_processes_cpus() if busy is None else busy
    return max(1, min(cpus, math.floor(cpus - busy + 0.5)))


def pass_voxels(batch: int, img_size: int | Sequence[int], spatial_dims: int) -> int:
    """Voxels (pixels) of one forward pass: ``batch`` inputs of ``img_size`` (an int: that size along each
    of the ``spatial_dims`` axes, as the 2D presets give it)."""
    size = [int(img_size)] * spatial_dims if isinstance(img_size, int) else [int(v) for v in img_size]
    return int(batch) * math.prod(size)


def set_threads(
    threads: int | str | None = "auto", work: int | Sequence[int] | None = None, network: torch.nn.Module | None = None
) -> int:
    """The thread policy: set PyTorch's intra-op thread count (the numba kernels follow it) and return it.

    Args:
        threads: a count, or ``"auto"`` / None for :func:`choose_threads`; with ``OMP_NUM_THREADS`` set in
            the environment, ``"auto"`` keeps the count that gave.
        work: voxels of one forward pass, or a window size and optionally batch factors whose product that
            is (e.g. ``[16, 32, 32]`` or ``[4, 16, 32, 32]``).
        network: with ``"auto"``, work that is not small and more than one CPU, a :class:`ThreadGovernor`
            is attached to it (:func:`govern_threads`), which adapts the count while it runs.
    """
    if threads in (None, "auto"):
        voxels = None if work is None else (work if isinstance(work, int) else math.prod(int(v) for v in work))
        if os.environ.get("OMP_NUM_THREADS"):
            n, why = torch.get_num_threads(), "OMP_NUM_THREADS"
        else:
            small = voxels is not None and voxels <= SMALL_WORK_VOXELS
            busy = 0.0 if small else other_processes_cpus()
            n = choose_threads(voxels, busy=busy)
            why = f"auto: {available_cpus()} CPUs, {busy:.1f} busy with other processes" + (f", {voxels} voxels a pass" if voxels else "")
            on_cpu = network is not None and all(p.device.type == "cpu" for p in network.parameters())
            if on_cpu and not small and available_cpus() > 1:
                govern_threads(network)
                why += ", adapted while running"
    else:
        n, why = int(threads), "set"
        if n < 1:
            raise ValueError(f"threads {threads}: expected 'auto' or a count >= 1.")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _log_once(("threads", n, why), f"intra-op threads: {n} ({why})")
    return n


class ThreadGovernor:
    """Adjusts PyTorch's intra-op threads while work runs, to the CPUs other processes leave free.

    Call :meth:`tick` often (e.g. before each forward pass: :func:`govern_threads`). Every ``interval``
    seconds it reads how many CPUs other processes kept busy since the last decision (:func:`cpu_seconds`:
    the CPUs' busy time less this process's own, so its own threads, PyTorch's and numba's pools alike,
    never count as competition) and sets the thread count to the CPUs left free (:meth:`decide`).

    Args:
        max_threads: the most threads to use (default: the count when the governor starts).
        interval: seconds between decisions.
        clock, sample: the wall clock and the CPU-time reading (:func:`cpu_seconds`), for tests.
    """

    def __init__(
        self,
        max_threads: int | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] | None = None,
        sample: Callable[[], tuple[float, float] | None] | None = None,
    ) -> None:
        import time

        self.max_threads = max_threads or torch.get_num_threads()
        self.interval = interval
        self.clock = clock or time.perf_counter
        self.sample = sample or cpu_seconds
        self._mark = (self.clock(), self.sample())

    def decide(self, busy: float) -> int:
        """The thread count when other processes kept ``busy`` CPUs busy: the CPUs left free, rounded to the
        nearest count, at least one and at most ``max_threads``."""
        return max(1, min(self.max_threads, math.floor(self.max_threads - busy + 0.5)))

    def tick(self, *_) -> None:
        """Decide if ``interval`` seconds have passed since the last decision (arguments are ignored, so that
        this can be a forward pre-hook)."""
        now = self.clock()
        if self._mark[1] is None or now - self._mark[0] < self.interval:
            return
        reading = self.sample()
        if reading is None:
            return
        wall = now - self._mark[0]
        busy = _others_busy(self._mark[1], reading, wall)
        threads, n = torch.get_num_threads(), self.decide(busy)
        if n != threads:
            torch.set_num_threads(n)
            _logger.info(f"intra-op threads: {threads} -> {n} (other processes used {busy:.1f} CPUs in {wall:.1f} s)")
        self._mark = (now, reading)


def govern_threads(network: torch.nn.Module, max_threads: int | None = None, interval: float = 5.0) -> torch.nn.Module:
    """Attach a :class:`ThreadGovernor` to ``network`` (ticked before each forward pass; for a
    ``ModuleList``, such as an ensemble, before each member's), unless it has one; returns ``network``."""
    governor = ThreadGovernor(max_threads=max_threads or available_cpus(), interval=interval)
    for module in network if isinstance(network, torch.nn.ModuleList) else [network]:
        if not getattr(module, "_thread_governor", None):  # once per module, however often a config initialises
            module._thread_governor = governor
            module.register_forward_pre_hook(governor.tick)
    return network
