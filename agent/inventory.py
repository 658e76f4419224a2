"""What a node has (static inventory) and how loaded it is (live load), via psutil and NVML."""

from __future__ import annotations

import os
import platform
from typing import Any

import psutil

from gridcore.settings import AgentSettings


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Nvml:
    """NVML through nvidia-ml-py; every failing field becomes None, a missing library no GPUs."""

    def __init__(self) -> None:
        self.ok = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.ok = True
        except Exception:  # noqa: BLE001 - no driver, no library, no GPU: all mean "no GPUs"
            self.nv = None

    def _call(self, fn, *args):
        try:
            v = fn(*args)
            return v.decode() if isinstance(v, bytes) else v
        except Exception:  # noqa: BLE001 - NVML raises per-field errors on some boards
            return None

    def versions(self) -> tuple[str | None, str | None]:
        if not self.ok:
            return None, None
        driver = self._call(self.nv.nvmlSystemGetDriverVersion)
        cuda = self._call(self.nv.nvmlSystemGetCudaDriverVersion_v2) or self._call(
            self.nv.nvmlSystemGetCudaDriverVersion
        )
        if isinstance(cuda, int):
            cuda = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        return driver, cuda

    def gpus(self, live: bool = False) -> list[dict[str, Any]]:
        if not self.ok:
            return []
        count = self._call(self.nv.nvmlDeviceGetCount) or 0
        out = []
        for i in range(count):
            h = self._call(self.nv.nvmlDeviceGetHandleByIndex, i)
            if h is None:
                continue
            mem = self._call(self.nv.nvmlDeviceGetMemoryInfo, h)
            if live:
                util = self._call(self.nv.nvmlDeviceGetUtilizationRates, h)
                out.append(
                    {
                        "index": i,
                        "memory_used": getattr(mem, "used", None),
                        "utilization": getattr(util, "gpu", None),
                    }
                )
            else:
                out.append(
                    {
                        "index": i,
                        "name": self._call(self.nv.nvmlDeviceGetName, h) or f"GPU {i}",
                        "uuid": self._call(self.nv.nvmlDeviceGetUUID, h),
                        "memory_total": getattr(mem, "total", None),
                    }
                )
        return out


def static_inventory(cfg: AgentSettings, nvml: Nvml, disk_path: str = "/") -> dict[str, Any]:
    """CPU, memory, disk, GPUs and labels; config declarations override what is detected."""
    vm = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    if cfg.gpus is not None:
        gpus = [g.model_dump() for g in cfg.gpus]
    else:
        gpus = nvml.gpus()
    known = {g["index"] for g in gpus}
    gpus += [g.model_dump() for g in cfg.extra_gpus if g.index not in known]
    driver, cuda = nvml.versions()
    return {
        "cpus": cfg.cpus or psutil.cpu_count(logical=True) or 1,
        "cpus_physical": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model(),
        "memory_total": cfg.memory or vm.total,
        "disk_total": disk.total,
        "gpus": sorted(gpus, key=lambda g: g["index"]),
        "driver_version": driver,
        "cuda_version": cuda,
        "labels": sorted(set(cfg.labels)),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def live_load(nvml: Nvml, disk_path: str = "/") -> dict[str, Any]:
    """Load average, CPU %, memory and disk used, per-GPU memory/utilization."""
    vm = psutil.virtual_memory()
    return {
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_used": vm.total - vm.available,
        "memory_available": vm.available,
        "disk_used": psutil.disk_usage(disk_path).used,
        "gpus": nvml.gpus(live=True),
    }
