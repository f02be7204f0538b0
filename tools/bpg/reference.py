"""The genuine BPG tools (``bpgenc``), for users who have them and want the reference's bytes.

Never needed: our in-process encoder is the default.  ``bpgenc`` reads and writes files, so
each process gets one private temporary folder (mode 0700, on /dev/shm when there is one,
removed at exit) and the encoder runs there with a fixed argument list, no shell.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import BpgError

#: seconds one bpgenc run may take (a 224² picture takes well under one)
TIMEOUT_S = 600


class ToolMissingError(BpgError):
    """The reference tool named (or looked up on PATH) is not there or does not run."""


def find_tool(name: str = "bpgenc", path: str | None = None) -> str:
    """Absolute path of ``path`` (when given) or of ``name`` on PATH; ToolMissingError if absent."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file() or not os.access(p, os.X_OK):
            raise ToolMissingError(f"{name} not found or not executable: {path}")
        return str(p.resolve())
    found = shutil.which(name)
    if not found:
        raise ToolMissingError(f"{name} is not on PATH; install the BPG 0.9.8 tools or give "
                               f"the path with -o {name}=/path/to/{name}")
    return str(Path(found).resolve())


@lru_cache(maxsize=8)
def tool_version(path: str) -> dict[str, str]:
    """Version line of a reference tool (``-h`` prints it) and the first 16 hex digits of
    the binary's SHA-256 (two builds of one version may still differ)."""
    try:
        proc = subprocess.run([path, "-h"], capture_output=True, timeout=30, check=False)
    except OSError as exc:
        raise ToolMissingError(f"{path} does not run: {exc}") from exc
    except subprocess.TimeoutExpired:
        raise ToolMissingError(f"{path} -h did not finish in 30 s") from None
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    m = re.search(r"version (\S+)", text)
    if not m:
        raise ToolMissingError(f"{path} does not look like a BPG tool (no version in its -h output)")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return {"version": m.group(1), "sha256": digest}


_local = threading.local()


def _workdir() -> str:
    """This process's (and thread's) private folder for the tool's files."""
    folder = getattr(_local, "folder", None)
    if folder is None or getattr(_local, "pid", None) != os.getpid():
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        folder = tempfile.mkdtemp(prefix="m2m-bpgenc-", dir=base)   # mode 0700
        atexit.register(shutil.rmtree, folder, True)
        _local.folder, _local.pid = folder, os.getpid()
    return folder


def bpgenc_encode(rgb: np.ndarray, q: int, effort: int, chroma: str, path: str) -> bytes:
    """Encode with the genuine bpgenc: ``-q q -m effort -f chroma -b 8 -c ycbcr``.

    ``chroma="gray"`` writes a grayscale PNG, which bpgenc codes as a gray picture."""
    from PIL import Image

    folder = _workdir()
    src, out = os.path.join(folder, "in.png"), os.path.join(folder, "out.bpg")
    for p in (src, out):
        if os.path.exists(p):
            os.remove(p)
    if chroma == "gray":
        from .color import rgb_to_gray
        img = Image.fromarray(rgb if rgb.ndim == 2 else rgb_to_gray(rgb), "L")
        fmt = "420"
    else:
        img, fmt = Image.fromarray(rgb, "RGB"), chroma
    img.save(src, "PNG", compress_level=0)
    cmd = [path, "-q", str(int(q)), "-m", str(int(effort)), "-f", fmt, "-b", "8", "-c", "ycbcr",
           "-o", out, src]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, check=False, cwd=folder)
    except OSError as exc:
        raise ToolMissingError(f"{path} does not run: {exc}") from exc
    except subprocess.TimeoutExpired:
        raise BpgError(f"bpgenc took more than {TIMEOUT_S} s on a {img.width}x{img.height} picture") from None
    if proc.returncode != 0 or not os.path.exists(out):
        why = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
        raise BpgError(f"bpgenc failed (exit {proc.returncode}): {why[-1] if why else 'no message'}")
    with open(out, "rb") as f:
        return f.read()
