"""Machine and software facts recorded beside every benchmark, so a number can be traced to where it
was measured. Stdlib only, and it never imports torch: versions come from package metadata. The device
agent ships this file beside itself, so a device reports the same facts as the host.

>>> environment()["cpu_flags"]
['avx2', 'avx512f', 'avx512_vnni']
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

# CPU features that decide which kernels (and which default precision) a runtime picks:
# AVX-512 BF16 makes OpenVINO run bf16 by default, VNNI/AMX speed up INT8, ASIMD-dot/SVE on ARM.
RELEVANT_CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
    "bf16",
    "i8mm",
)

# Distribution names under which each module may be installed; the first one found wins.
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "openvino": ("openvino",),
    "torch": ("torch",),
}

# OpenVINO compiled-model properties that change latency or numerics.
_OPENVINO_PROPERTIES = (
    "PERFORMANCE_HINT",
    "INFERENCE_NUM_THREADS",
    "NUM_STREAMS",
    "INFERENCE_PRECISION_HINT",
    "EXECUTION_MODE_HINT",
    "ENABLE_HYPER_THREADING",
    "ENABLE_CPU_PINNING",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE",
    "EXECUTION_DEVICES",
)


def environment() -> dict[str, Any]:
    """CPU model, cores, relevant CPU flags, memory, OS, Python and runtime versions of this machine."""
    cpuinfo = _read("/proc/cpuinfo")
    return {
        "cpu": _cpu_model(cpuinfo),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "cgroup_cpu_limit": _cgroup_cpu_limit(),
        "cpu_flags": _cpu_flags(cpuinfo),
        "memory_total_mb": _memory_total_mb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": package_versions(),
    }


def cpu_flags() -> list[str]:
    """This CPU's flags among RELEVANT_CPU_FLAGS (empty where /proc/cpuinfo is missing)."""
    return _cpu_flags(_read("/proc/cpuinfo"))


def package_versions() -> dict[str, str | None]:
    """Versions of edgetl, numpy, onnxruntime, openvino and torch (None: not installed), without importing
    any of them: an already imported module reports its ``__version__``, the rest their package metadata."""
    try:
        from .. import __version__ as edgetl_version
    except ImportError:  # loaded outside the package, beside the device agent: no edgetl there
        edgetl_version = None

    versions: dict[str, str | None] = {"edgetl": edgetl_version}
    for module, distributions in _DISTRIBUTIONS.items():
        loaded = sys.modules.get(module)
        version = getattr(loaded, "__version__", None) if loaded is not None else None
        for distribution in distributions if version is None else ():
            try:
                version = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        versions[module] = version
    return versions


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far, in MiB; None where ``resource`` is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def runtime_settings(runner: Any) -> dict[str, Any]:
    """The settings a runtime actually chose for ``runner`` (threads, streams, precision), best effort.

    Reads OpenVINO compiled-model properties or onnxruntime session options when the runner exposes
    them (``compiled`` / ``session``); other runners give only their name. What was asked for is not
    always what runs: OpenVINO on a CPU with AVX-512 BF16 infers in bf16 unless told otherwise.
    """
    settings: dict[str, Any] = {"runtime": getattr(runner, "name", type(runner).__name__)}
    compiled = getattr(runner, "compiled", None)
    if compiled is not None and hasattr(compiled, "get_property"):
        for key in _OPENVINO_PROPERTIES:
            try:
                settings[key.lower()] = _plain(compiled.get_property(key))
            except Exception:  # noqa: BLE001 - not every device plugin exposes every property
                continue
    session = getattr(runner, "session", None)
    if session is not None and hasattr(session, "get_session_options"):
        options = session.get_session_options()
        # 0 means "onnxruntime's default": one thread per physical core.
        settings["intra_op_num_threads"] = options.intra_op_num_threads
        settings["inter_op_num_threads"] = options.inter_op_num_threads
        settings["execution_mode"] = str(options.execution_mode).rpartition(".")[2]
        settings["graph_optimization_level"] = str(options.graph_optimization_level).rpartition(".")[2]
        settings["providers"] = list(session.get_providers())
    return settings


def _plain(value: Any) -> Any:
    """A JSON-friendly form of an OpenVINO property value (Type, enums, lists)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "get_type_name"):  # openvino.Type, e.g. "bf16"
        return value.get_type_name()
    return getattr(value, "name", None) or str(value)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo_field(cpuinfo: str, *names: str) -> str | None:
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in names and value.strip():
            return value.strip()
    return None


def _cpu_model(cpuinfo: str) -> str:
    # x86 says "model name"; ARM boards say "Hardware" or "Model" (e.g. "Raspberry Pi 4 Model B").
    return (
        _cpuinfo_field(cpuinfo, "model name")
        or _cpuinfo_field(cpuinfo, "Model", "Hardware")
        or platform.processor()
        or platform.machine()
        or "unknown"
    )


def _cpu_flags(cpuinfo: str) -> list[str]:
    present = set((_cpuinfo_field(cpuinfo, "flags", "Features") or "").split())
    return [flag for flag in RELEVANT_CPU_FLAGS if flag in present]


def _usable_cores() -> int | None:
    # The affinity mask is what this process may run on (taskset, container cpusets), not the machine.
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _cgroup_cpu_limit() -> float | None:
    """A cgroup v2 CPU quota in cores (a container limited to 1.5 CPUs on a 64-core host), or None."""
    quota, _, period = _read("/sys/fs/cgroup/cpu.max").strip().partition(" ")
    if not quota or quota == "max" or not period:
        return None
    try:
        return int(quota) / int(period)
    except ValueError:
        return None


def _memory_total_mb() -> float | None:
    meminfo = _cpuinfo_field(_read("/proc/meminfo"), "MemTotal")
    if meminfo and meminfo.split()[0].isdigit():
        return int(meminfo.split()[0]) / 1024  # reported in kB
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1024 * 1024)
    except (AttributeError, ValueError, OSError):
        return None
