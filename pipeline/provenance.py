"""What a results file records about where its numbers came from, and nothing of the machine's
own folders: the environment (package versions, CPU or GPU model, core count, OS) and paths
stored relative to the results file, so that a committed file reads the same on any machine.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

#: the packages whose versions change the numbers (the codecs' own versions are in each manifest)
PACKAGES = ("torch", "torchvision", "pillow", "numpy")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(gpu: bool = False) -> dict:
    """Package versions, CPU model and core count, OS and architecture; with ``gpu`` the CUDA
    device's name (torch imported only then)."""
    env = {"os": f"{platform.system()} {platform.release()}", "machine": platform.machine(),
           "python": platform.python_version(), "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
           "packages": {p: _version(p) for p in PACKAGES}}
    if gpu:
        import torch

        env["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return env


def hardware(env: dict) -> str:
    """The hardware in words, as the docs name it: "NVIDIA H200, 16 CPU cores" or
    "2-core x86-64 CPU"."""
    if env.get("gpu"):
        return f"{env['gpu']}, {env.get('cpu_cores')} CPU cores"
    return f"{env.get('cpu_cores')}-core {str(env.get('machine') or '').replace('_', '-')} CPU"


def portable_path(path, base: str | os.PathLike) -> str | None:
    """``path`` as stored in a results file that lives in folder ``base``: relative to ``base``
    when the two share a folder below the filesystem root, else the bare name (a path that only
    meets ``base`` at the root, such as another volume's, says nothing on another machine).
    Values that are not local paths (None, a weights name such as ``DEFAULT``) pass unchanged."""
    if path is None:
        return None
    text = str(path)
    if os.sep not in text and "/" not in text and not os.path.exists(text):
        return text
    full, home = os.path.abspath(text), os.path.abspath(base)
    try:
        shared = os.path.commonpath([full, home])
    except ValueError:        # another drive (Windows)
        return os.path.basename(full)
    if shared == os.path.dirname(shared):    # only the root in common
        return os.path.basename(full)
    return Path(os.path.relpath(full, home)).as_posix()


def inside_path(path, root: str | os.PathLike) -> str:
    """``path`` as a recorded command line names it: relative to ``root`` (a checkout) when it
    lies inside it, else its bare name.  A path outside the checkout is another machine's
    folder, even when the two share one: a checkout and pytest's temporary folders both under
    /tmp (a CI runner's clone) gave ``../pytest-of-root/.../r.json``."""
    full, home = os.path.abspath(str(path)), os.path.abspath(root)
    try:
        inside = os.path.commonpath([full, home]) == home
    except ValueError:        # another drive (Windows)
        inside = False
    return Path(os.path.relpath(full, home)).as_posix() if inside else os.path.basename(full)


def resolve_path(stored: str | None, base: str | os.PathLike) -> str | None:
    """The inverse of ``portable_path`` for a reader of a path column: a relative path read from
    a results file in folder ``base`` names ``base / stored``; absolute ones (older files) pass
    unchanged."""
    if stored is None or os.path.isabs(stored):
        return stored
    return os.path.normpath(os.path.join(base, stored))
