"""How the project's environments get their pinned packages: constraints.txt's pins, the torch
each environment gets, and pip's wheelhouse handed to uv. One home for both users: the noxfile
(which loads this file by path, outside the project's venv) and ``harness.sides`` (the torchrl
builds that ``nox -s versions`` compares). Standard library only.

Environment variables:
    RLGAUGE_TORCH    torch requirement replacing constraints.txt's CPU pin
    PIP_FIND_LINKS   pip's wheelhouse (else ``pip config get global.find-links``)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"


def _pinned(line: str, prefixes: Sequence[str]) -> bool:
    return line.replace(" ", "").lower().startswith(tuple(prefixes))


def torch_requirement() -> str:
    """The torch every environment gets: ``$RLGAUGE_TORCH`` or constraints.txt's pin
    (``torch==2.13.0``). LookupError when constraints.txt pins none."""
    if own := os.environ.get("RLGAUGE_TORCH"):
        return own
    for line in CONSTRAINTS.read_text().splitlines():
        if _pinned(line, ("torch==",)):
            return line.strip()
    raise LookupError(f"{CONSTRAINTS} pins no torch")


def constraints_text(drop: Sequence[str] = ()) -> str:
    """constraints.txt without the pins of the packages in ``drop`` (``"torchrl"``), and without
    its torch pin when ``$RLGAUGE_TORCH`` names another torch."""
    prefixes = [f"{name.lower()}==" for name in drop]
    if os.environ.get("RLGAUGE_TORCH"):
        prefixes.append("torch==")
    return "\n".join(ln for ln in CONSTRAINTS.read_text().splitlines()
                     if not (prefixes and _pinned(ln, prefixes))) + "\n"


def pip_find_links() -> str:
    """pip's wheelhouse (where the pinned CPU torch lies): ``$PIP_FIND_LINKS`` or pip's config
    of this interpreter, else of the ``pip`` on PATH; "" when neither names one."""
    links = os.environ.get("PIP_FIND_LINKS", "")
    for cmd in ([sys.executable, "-m", "pip"], ["pip"]):
        if links:
            break
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            links = subprocess.run([*cmd, "config", "get", "global.find-links"],
                                   capture_output=True, text=True, timeout=30).stdout.strip()
    return links


def uv_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with what uv needs here. uv reads neither pip.conf nor
    PIP_*: it gets pip's wheelhouse, else ``torch==2.13.0`` resolves to the registry's CUDA
    build (~3 GB). And uv does not byte-compile on install; with PYTHONDONTWRITEBYTECODE=1 (as
    on this machine) every process would then recompile torch/torchrl (import torchrl 6.6 s
    instead of 2.6 s)."""
    out = dict(os.environ if env is None else env)
    if not out.get("UV_FIND_LINKS") and (links := pip_find_links()):
        out["UV_FIND_LINKS"] = links
    out.setdefault("UV_COMPILE_BYTECODE", "1")
    return out
