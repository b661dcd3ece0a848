"""How busy the machine's CPUs and a GPU were over an end-to-end bench row (``cpu_busy``,
``gpu_busy``): ``/proc/stat`` and ``nvidia-smi`` read in a thread while the row runs, so the share
can be taken over the run's own span.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import torch

__all__ = ["CpuSampler", "GpuSampler", "cpu_jiffies", "nvidia_smi_command"]


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, all) CPU time of the whole machine since boot, from ``/proc/stat`` (Linux; None
    elsewhere). Time stolen by a hypervisor counts as not busy: those CPUs were not ours."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = (
                int(v) for v in f.readline().split()[1:9]
            )  # fmt: skip
    except (OSError, ValueError):
        return None
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait + steal


class CpuSampler:
    """The machine's busy share over a run (a row's ``cpu_busy``: whether its CPUs were what
    bounded it): ``/proc/stat`` read every quarter second in a thread, so that the share can
    be taken over the run's own span (worker processes' start and warm-up left out)."""

    def __init__(self, every: float = 0.25) -> None:
        self.samples: list[tuple[float, tuple[int, int]]] = []
        self.done = threading.Event()
        self.every = every
        self.thread = threading.Thread(target=self._run, name="fpncli-cpu-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            jiffies = cpu_jiffies()
            if jiffies is None:
                return
            self.samples.append((time.monotonic(), jiffies))
            if self.done.wait(self.every):
                return

    def stop(self, span: tuple[float, float] | None = None) -> float | None:
        """The busy share between the samples nearest ``span``'s (monotonic) start and end, or
        over all of them; None without ``/proc/stat`` or two samples."""
        self.done.set()
        self.thread.join()
        jiffies = cpu_jiffies()
        if jiffies is not None:
            self.samples.append((time.monotonic(), jiffies))
        if len(self.samples) < 2:
            return None
        first, last = self.samples[0], self.samples[-1]
        if span is not None:  # the last sample before the span, the first after it
            first = max((s for s in self.samples if s[0] <= span[0]), key=lambda s: s[0],
                        default=first)  # fmt: skip
            last = min((s for s in self.samples if s[0] >= span[1]), key=lambda s: s[0],
                       default=last)  # fmt: skip
        (_, (b0, t0)), (_, (b1, t1)) = first, last
        if t1 <= t0:
            return None
        return (b1 - b0) / (t1 - t0)


def nvidia_smi_command(device: torch.device) -> list[str] | None:
    """``nvidia-smi`` printing ``device``'s utilization (the share of time a kernel ran) every
    0.2 s, the GPU named by its UUID (``CUDA_VISIBLE_DEVICES`` renumbers the devices; the UUID
    is the card's own); None off CUDA, without ``nvidia-smi`` or a UUID."""
    if device.type != "cuda" or shutil.which("nvidia-smi") is None:
        return None
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
    except (AttributeError, RuntimeError, AssertionError):
        return None
    return ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
            "-lms", "200", "-i", uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"]  # fmt: skip


class GpuSampler:
    """The GPU's busy share over a run (a row's ``gpu_busy``, beside ``cpu_busy``: whether the
    card was what bounded it, e.g. processes that time-share it): ``command``'s lines (one
    utilization percentage each, ``nvidia_smi_command``), each stamped as it is read, averaged
    over the run's span. Nothing where there is no command or it cannot start.

    The command writes to a pseudo-terminal, not a pipe: a C program's output into a pipe is
    held in 4 KB blocks, which at a few bytes a line would reach us minutes after the run. It
    runs in a session of its own, so that stopping it ends whatever it started too (a wrapper
    script's child would keep the terminal open)."""

    def __init__(self, command: list[str] | None) -> None:
        import pty
        import subprocess

        self.samples: list[tuple[float, float]] = []
        self.process = None
        if command is None:
            return
        try:
            master, slave = pty.openpty()
        except OSError:
            return
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        except OSError:
            os.close(master)
            return
        finally:
            os.close(slave)
        self.stream = os.fdopen(master, "r", encoding="ascii", errors="replace")
        self.thread = threading.Thread(target=self._read, name="fpncli-gpu-sampler", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.stream:
                try:
                    self.samples.append((time.monotonic(), float(line.strip()) / 100.0))
                except ValueError:  # "[N/A]", "[Not Supported]"
                    continue
        except (OSError, ValueError):  # the terminal closed (EIO once the command ended)
            return

    def stop(self, span: tuple[float, float] | None = None) -> float | None:
        """The mean utilization of the samples within ``span`` (monotonic; all of them without
        one), or None without any."""
        import signal

        if self.process is None:
            return None
        # the first stop only: until it is waited for, the command's pid (its group's id) is
        # ours, even if it has ended, and cannot name another process's group
        for sig in (signal.SIGTERM, signal.SIGKILL) if self.process.returncode is None else ():
            try:
                os.killpg(self.process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.process.wait(timeout=5)
                break
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: kill it
                continue
        self.thread.join(timeout=5)
        if not self.thread.is_alive() and not self.stream.closed:
            self.stream.close()
        values = [v for t, v in self.samples if span is None or span[0] <= t <= span[1]]
        return sum(values) / len(values) if values else None
