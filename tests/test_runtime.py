"""dlka_monai.runtime: the precision setting (resolution, autocast around the network, float32 where it
matters) and the thread policy's decisions."""

import logging
import subprocess
import sys
import threading
import time

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from dlka_monai.inference import window_inferer
from dlka_monai.networks.layers import ChannelsLastInstanceNorm3d, DeformConv3d, DeformConv3dPack
from dlka_monai.runtime import (
    SMALL_WORK_VOXELS,
    PrecisionInferer,
    autocast,
    available_cpus,
    choose_threads,
    cpu_has_native_bf16,
    cpu_seconds,
    describe_precision,
    other_processes_cpus,
    resolve_precision,
    set_threads,
)


def test_precision_resolves_auto_from_the_hardware_and_keeps_explicit_choices():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, "cpu") == p
    assert resolve_precision("auto", "meta") == "fp32"
    with pytest.raises(ValueError, match="expected one of auto, fp32, bf16, fp16"):
        resolve_precision("half", "cpu")
    assert describe_precision("fp32", "cpu") == "fp32 on cpu"
    assert describe_precision("bf16", "cpu") == "bf16 autocast on cpu"
    assert describe_precision("auto", "cpu").endswith("(auto: CPU with AMX-BF16 / AVX512-BF16)" if cpu_has_native_bf16() else "(auto: no native bf16)")


def test_cpu_bf16_detection_agrees_with_pytorchs_capability_flags():
    caps = torch.cpu.get_capabilities()
    assert cpu_has_native_bf16() == bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def test_precision_inferer_runs_the_network_in_bf16_and_returns_float32(caplog):
    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 3, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            seen.append(y.dtype)
            return y

    net = Net().eval()
    x = torch.randn(1, 1, 12, 12, 12)
    inner = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2, overlap=0.25)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="dlka_monai.runtime"):
        ref = inner(x, net)
        out = PrecisionInferer(inner, "bf16")(x, net)
    assert seen[0] == torch.float32 and set(seen[-2:]) == {torch.bfloat16}
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert not torch.equal(out, ref) and torch.allclose(out, ref, atol=0.05, rtol=0.05)
    assert "inference precision: bf16 autocast on cpu" in caplog.text
    # the config's factory: fp32 is the bare inferer, anything else wraps it
    assert isinstance(window_inferer(3, (8, 8, 8)), SlidingWindowInferer)
    assert isinstance(window_inferer(3, (8, 8, 8), precision="auto"), PrecisionInferer)
    with pytest.raises(ValueError):
        window_inferer(3, (8, 8, 8), precision="int8")


def test_channels_last_instance_norm_keeps_float32_statistics_under_bf16_autocast():
    norm = ChannelsLastInstanceNorm3d(8, affine=True)
    # a large common offset: bfloat16 statistics (3 significant digits) would lose the variance
    x = (torch.randn(2, 8, 10, 12, 14) + 100.0).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        ref = torch.nn.functional.instance_norm(x, weight=norm.weight, bias=norm.bias)
        with autocast("bf16", "cpu"):
            out = norm(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last_3d)
    # against the norm of the bf16-rounded input, only the output's rounding remains (<= 2^-7 below 4);
    # statistics from bfloat16 GEMMs were off by up to 0.025
    x16 = x.to(torch.bfloat16).float()
    ref16 = torch.nn.functional.instance_norm(x16, weight=norm.weight, bias=norm.bias)
    assert (out.float() - ref16).abs().max() < 0.015
    assert out.float().std() > 0.5 and (out.float() - ref).abs().mean() < 0.5


def test_deformable_conv_computes_in_float32_under_bf16_autocast():
    conv = DeformConv3dPack(4, 4, 3, padding=1)
    torch.nn.init.normal_(conv.conv_offset.weight, std=0.1)
    x = torch.randn(1, 4, 6, 6, 6)
    offset = conv.conv_offset(x).detach()
    x16, offset16 = x.to(torch.bfloat16), offset.to(torch.bfloat16)
    with torch.no_grad():
        ref = DeformConv3d.forward(conv, x, offset)
        with autocast("bf16", "cpu"):
            out = DeformConv3d.forward(conv, x16, offset16)
        exact = DeformConv3d.forward(conv, x16.float(), offset16.float())
    assert out.dtype == torch.bfloat16
    # float32 arithmetic on the bf16 inputs: only the output's rounding differs
    assert torch.allclose(out.float(), exact, rtol=1e-2, atol=1e-2)
    assert torch.allclose(out.float(), ref, rtol=0.1, atol=0.1)


def test_custom_convs_train_under_cpu_bf16_autocast():
    """Backward of the phase-decomposed dilated depthwise conv and of the deformable conv under CPU bf16
    autocast (a training step's): float32 gradients, finite and close to the float32 step's. (Plain
    ``nn.Conv3d`` weight gradients are left out: on CPUs without native bf16, PyTorch's fallback for
    them gives non-finite values now and then, see benchmarks/RESULTS.md.)"""
    from dlka_monai.networks.layers import FastDilatedDepthwiseConv3d

    torch.manual_seed(0)
    block = torch.nn.ModuleDict(
        dict(spatial=FastDilatedDepthwiseConv3d(8, 8, 7, padding=9, dilation=3, groups=8), deform=DeformConv3d(8, 8, 3, padding=1))
    )
    x = torch.randn(2, 8, 8, 12, 12)
    offset = torch.randn(2, 81, 8, 12, 12)
    grads = {}
    for precision in ("fp32", "bf16"):
        block.zero_grad()
        inputs = [t.clone().requires_grad_() for t in (x, offset)]
        with autocast(precision, "cpu"):
            y = block["deform"](block["spatial"](inputs[0]), inputs[1])
        y.float().square().mean().backward()
        grads[precision] = [p.grad for p in block.parameters()] + [t.grad for t in inputs]
    for g in grads["bf16"]:
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
    flat = {p: torch.cat([g.flatten() for g in grads[p]]) for p in grads}
    assert torch.nn.functional.cosine_similarity(flat["bf16"], flat["fp32"], dim=0) > 0.99


@pytest.mark.parametrize(
    "work, cpus, busy, expected",
    [
        (SMALL_WORK_VOXELS, 8, 0.0, 1),  # small work: one thread even on an idle machine
        (None, 2, 0.0, 2),  # idle: every CPU
        (4 * 64 * 128 * 128, 2, 0.1, 2),
        (4 * 64 * 128 * 128, 2, 1.0, 1),  # one busy competitor on two CPUs: one thread
        (4 * 64 * 128 * 128, 16, 3.4, 13),
        (4 * 64 * 128 * 128, 4, 9.0, 1),  # overloaded: never below one
        (4 * 64 * 128 * 128, 2, 0.6, 1),  # rounding: 1.4 free CPUs -> 1
    ],
)
def test_thread_policy_decisions(work, cpus, busy, expected):
    assert choose_threads(work, cpus=cpus, busy=busy) == expected


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.skipif(cpu_seconds() is None, reason="the kernel does not report CPU times (/proc/stat)")
def test_other_processes_cpus_counts_a_busy_child_and_not_this_process():
    """This process's own work never reads as competition; a busy child process does."""
    spinner = threading.Thread(target=_spin, args=(0.6,))
    spinner.start()
    own = other_processes_cpus(interval=0.5)
    spinner.join()
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)  # the interpreter has started
        other = other_processes_cpus(interval=1.0)
    finally:
        child.kill()
        child.wait()
    assert own < 0.5, own
    assert other > 0.6, other


def test_set_threads_applies_counts_and_keeps_an_explicit_omp_num_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads("auto", work=[4, 64, 128, 128]) == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert set_threads("auto", work=[16, 16, 16]) == 1  # small work
        assert 1 <= set_threads("auto") <= available_cpus()
        with pytest.raises(ValueError):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "max_threads, busy, expected",
    [
        (2, 0.05, 2),  # alone on two CPUs: keep both
        (2, 0.7, 1),  # a busy competitor sharing the CPUs with two threads of ours: one thread
        (2, 1.0, 1),  # the competitor has its CPU: stay at one
        (2, 0.3, 2),  # the competitor left
        (4, 1.2, 3),
        (2, 5.0, 1),  # never below one
    ],
)
def test_thread_governor_decisions(max_threads, busy, expected):
    from dlka_monai.runtime import ThreadGovernor

    assert ThreadGovernor(max_threads=max_threads).decide(busy) == expected


def test_thread_governor_ticks_before_forward_passes_and_sets_the_count():
    from dlka_monai.runtime import govern_threads, ThreadGovernor

    # (busy CPU-seconds of the machine, CPU-seconds of this process)
    clock, reading = [0.0], [(100.0, 10.0)]
    governor = ThreadGovernor(max_threads=2, interval=5.0, clock=lambda: clock[0], sample=lambda: reading[0])
    net = torch.nn.Linear(2, 2)
    net.register_forward_pre_hook(governor.tick)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        clock[0], reading[0] = 4.0, (110.0, 10.0)
        net(torch.zeros(1, 2))  # before the interval: nothing decided
        assert torch.get_num_threads() == 2
        clock[0], reading[0] = 6.0, (112.0, 17.0)  # 12 busy CPU-s in 6 s, 7 of them ours: 0.8 CPUs for others
        net(torch.zeros(1, 2))
        assert torch.get_num_threads() == 1
        clock[0], reading[0] = 12.0, (118.0, 22.5)  # others used 0.5 CPU-s in 6 s: a CPU is free again
        net(torch.zeros(1, 2))
        assert torch.get_num_threads() == 2
        ensemble = govern_threads(torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]))
        govern_threads(ensemble)  # a second initialisation of the same network adds nothing
        assert all(len(m._forward_pre_hooks) == 1 for m in ensemble)
    finally:
        torch.set_num_threads(before)


def test_pass_voxels_reads_2d_sizes_as_squares():
    from dlka_monai.runtime import pass_voxels

    assert pass_voxels(16, 224, 2) == 16 * 224 * 224
    assert pass_voxels(4, [64, 128, 128], 3) == 4 * 64 * 128 * 128
