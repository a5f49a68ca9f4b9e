"""Device / dtype selection and every fallback, on simulated machines (the selection code is the real one)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from arrowengine.errors import ConfigError, DeviceUnavailableError
from arrowengine.runtime.devices import DeviceChoice, DeviceFallbackWarning, DeviceProbe, select_device, select_dtype
from arrowengine.runtime.placement import VramMonitor, model_bytes, move_to_device, run_with_cpu_retry

CPU_ONLY = DeviceProbe(machine="x86_64", cpu_isa=("AVX2", "AVX-512F"))
CPU_BF16 = DeviceProbe(machine="x86_64", cpu_isa=("AVX2", "AVX512-BF16"))
NVIDIA_AMPERE = DeviceProbe(cuda=True, cuda_bf16=True)
NVIDIA_TURING = DeviceProbe(cuda=True, cuda_bf16=False)
AMD_ROCM = DeviceProbe(hip=True, cuda_bf16=True)
APPLE = DeviceProbe(mps=True, machine="arm64")
GRAVITON = DeviceProbe(machine="aarch64", cpu_isa=("NEON",))


@pytest.mark.parametrize("probe, name, torch_device", [
    (NVIDIA_AMPERE, "cuda", "cuda"),
    (AMD_ROCM, "rocm", "cuda"),
    (APPLE, "mps", "mps"),
    (DeviceProbe(xpu=True), "xpu", "xpu"),
    (DeviceProbe(vulkan=True), "vulkan", "vulkan"),
    (GRAVITON, "arm", "cpu"),
    (CPU_ONLY, "cpu", "cpu"),
])
def test_auto_detection_order(probe, name, torch_device):
    choice = select_device("auto", probe=probe)
    assert (choice.name, choice.torch_device, choice.fell_back) == (name, torch_device, False)


def test_cuda_preferred_over_everything_else():
    probe = DeviceProbe(cuda=True, mps=True, xpu=True, vulkan=True, machine="aarch64")
    assert select_device("auto", probe=probe).name == "cuda"


@pytest.mark.parametrize("requested, reason", [
    ("cuda", "needs torch with cuda support and a matching device"),
    ("rocm", "needs a ROCm build of torch and a matching device"),
    ("mps", "needs torch with mps support and a matching device"),
    ("xpu", "needs torch with xpu support and a matching device"),
    ("vulkan", "needs torch with vulkan support and a matching device"),
    ("arm", "this CPU is x86_64, not ARM"),
])
def test_unavailable_device_falls_back_to_cpu_with_a_warning(requested, reason):
    message = f"device {requested!r} is not available here ({reason}); running on CPU instead"
    with pytest.warns(DeviceFallbackWarning, match="^" + re.escape(message) + "$"):
        choice = select_device(requested, probe=CPU_ONLY)
    assert (choice.name, choice.torch_device, choice.fell_back, choice.reason) == ("cpu", "cpu", True, reason)


def test_fallback_can_be_refused():
    with pytest.raises(DeviceUnavailableError, match=re.escape(
            "device 'cuda' is not available here (needs torch with cuda support and a matching device); choose "
            "device='cpu' or 'auto', or allow fallback")):
        select_device("cuda", probe=CPU_ONLY, allow_fallback=False)


def test_unknown_device_and_indexed_device():
    with pytest.raises(DeviceUnavailableError, match=r"^unknown device 'tpu'; choose one of auto, cuda, rocm"):
        select_device("tpu", probe=CPU_ONLY)
    assert select_device("cuda:1", probe=NVIDIA_AMPERE).torch_device == "cuda:1"


def test_dtype_fallbacks():
    cpu = select_device("cpu", probe=CPU_ONLY)
    assert select_dtype("bfloat16", cpu, probe=CPU_BF16) == torch.bfloat16
    with pytest.warns(DeviceFallbackWarning, match="float16 is slow and lossy on this CPU; using bfloat16"):
        assert select_dtype("float16", cpu, probe=CPU_BF16) == torch.bfloat16
    with pytest.warns(DeviceFallbackWarning, match="float16 is slow and lossy on this CPU; using float32"):
        assert select_dtype("float16", cpu, probe=CPU_ONLY) == torch.float32
    gpu = select_device("cuda", probe=NVIDIA_TURING)
    with pytest.warns(DeviceFallbackWarning, match=r"no bfloat16 support \(compute capability < 8.0\); using float16"):
        assert select_dtype("bfloat16", gpu, probe=NVIDIA_TURING) == torch.float16
    assert select_dtype("bfloat16", select_device("cuda", probe=NVIDIA_AMPERE), probe=NVIDIA_AMPERE) == torch.bfloat16
    with pytest.raises(ConfigError, match=r"^dtype must be one of float32, float16, bfloat16, got 'int3'$"):
        select_dtype("int3", cpu, probe=CPU_ONLY)


def test_vram_threshold_keeps_the_model_on_cpu():
    model = nn.Linear(256, 256)
    gpu = DeviceChoice("cuda", "cuda", "cuda")
    full = VramMonitor(threshold=0.9, mem_get_info=lambda device: (100_000, 1_000_000))  # 90% already used
    with pytest.warns(DeviceFallbackWarning, match=r"MiB of weights would push cuda over 90% of its memory"):
        moved, choice = move_to_device(model, gpu, monitor=full)
    assert choice.name == "cpu" and choice.reason == "VRAM threshold"
    assert moved.weight.device.type == "cpu"
    roomy = VramMonitor(threshold=0.9, mem_get_info=lambda device: (10**9, 10**9))
    assert roomy.fits("cuda", model_bytes(model)) and roomy.usage("cuda") == 0.0
    assert model_bytes(model) == (256 * 256 + 256) * 4
    with pytest.raises(ConfigError, match=r"^threshold must be in \(0, 1\], got 1.5$"):
        VramMonitor(threshold=1.5)


def test_failed_gpu_forward_is_retried_on_cpu():
    model = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    calls = []

    def forward(module, inputs):
        calls.append(inputs.device.type)
        if len(calls) == 1:  # what a GPU out-of-memory looks like to the caller
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return module(inputs)

    gpu = DeviceChoice("cuda", "cuda", "cuda")
    with pytest.warns(DeviceFallbackWarning, match="forward pass failed on cuda .* retrying on CPU"):
        out, choice = run_with_cpu_retry(forward, model, gpu, x)
    assert choice.name == "cpu" and choice.fell_back
    torch.testing.assert_close(out, model(x))
    cpu = DeviceChoice("cpu", "cpu", "cpu")
    with pytest.raises(RuntimeError, match="boom"):
        run_with_cpu_retry(lambda m, i: (_ for _ in ()).throw(RuntimeError("boom")), model, cpu, x)


def test_detect_probe_on_this_machine():
    probe = DeviceProbe.detect()
    assert probe.cuda == (torch.cuda.is_available() and not torch.version.hip)
    assert select_device("auto", probe=probe).torch_device in ("cuda", "mps", "xpu", "vulkan", "cpu")
