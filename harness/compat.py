"""The one place where torchrl/tensordict API differences between versions are absorbed.

rlgauge is written against torchrl 0.14.1 (tensordict 0.14.3). ``nox -s versions`` also runs its
benchmarks and learning checks on other builds (releases, nightly, checkouts: ``harness.sides``),
torchrl 0.13.3 (tensordict 0.13.0) among them; what differs between 0.13.3 and 0.14.1, as found
by importing every torchrl name the project uses and comparing constructor signatures
(``inspect.signature``) in both environments, and by the learning check:

- **Names**: identical for everything rlgauge imports. The collectors already carry their new
  names in 0.13.3 (``Collector``, ``MultiSyncCollector``, ``MultiAsyncCollector``); the old
  ``SyncDataCollector`` / ``MultiSyncDataCollector`` / ``MultiaSyncDataCollector`` exist in
  neither. ``collector_class`` resolves a role to whichever name the installed torchrl has
  (so torchrl <= 0.12 works too).
- **Keyword arguments added in 0.14** (absent from 0.13.3's ``__init__``):
  ``SliceSampler(init_key=, end_keys=, step_key=, fragmented=)``,
  ``SliceSamplerWithoutReplacement(init_key=, end_keys=)``,
  ``ClipPPOLoss(advantage_norm=, delay_actor=, max_importance_ratio=)``,
  ``Collector(backend=, backend_options=, num_collectors=, sync=, traj_format=)`` and
  ``GAE(group_key=)``. Each has a value that means "what 0.13 did" (``delay_actor=False``;
  ``backend=None``...): ``NEW_KWARGS`` lists them. rlgauge passes one of them today:
  ``reference_impls/recurrent_dqn.py`` builds ``SliceSampler(..., init_key=None)``, which made
  the loss benchmarks' ``setup_cache`` fail on 0.13.3 with ``TypeError: SliceSampler.__init__()
  got an unexpected keyword argument 'init_key'``.
- **Behaviour without a keyword** (``EMULATED``): ``init_key=None`` is *not* what 0.13.3 does.
  0.13.3 always marks every slice start ``is_init`` when the storage has that entry (0.14's
  default, ``init_key="is_init"``), and with variable-length slices (``span=True``,
  ``strict_length=False``: recurrent DQN's sampler) its marker indexes past the sample:
  ``IndexError: index 55 is out of bounds for dimension 0 with size 55`` in
  ``_maybe_emit_init_marker`` (found by ``nox -s versions``' learning check: recurrent DQN's
  probe test and its short run both crashed). The keyword is dropped and its 0.14 meaning
  reproduced on the instance: its ``_maybe_emit_init_marker`` becomes a no-op.

``construct(cls, **kwargs)`` builds any of these classes on either version: a 0.14-only keyword
whose value means the 0.13 behaviour is dropped where the installed class lacks it; any other
value raises ``TypeError`` naming the keyword and the installed version (the old torchrl cannot
do it). ``apply()`` installs that adapter into the old classes themselves, so code written
against 0.14 runs unchanged on 0.13.3; the regression gate's version runs
(``python -m harness.gate versions``) call it before importing the benchmarks, and it does
nothing on a torchrl that has every keyword.

**What fired is recorded** (``nox -s versions`` lists it as the report's "API differences"
section): every adaptation -- a class patched by ``apply``, a keyword dropped by
``strip_kwargs`` (class, keyword, value), a collector role resolved to an older name -- is kept
in ``adaptations()`` for this process and, when ``$RLGAUGE_COMPAT_LOG`` names a file, appended
to it as one JSON line the first time it fires in a process (the gate's rounds run in forked
children: a file is what outlives them). ``read_log(path)`` gives the distinct ones back.

torchrl's nightly builds are the distribution ``torchrl-nightly`` (and ``tensordict-nightly``):
``versions()`` reads those when the release names are not installed.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
from pathlib import Path

#: (module, class) -> {keyword added in torchrl 0.14: values that mean the 0.13 behaviour}
NEW_KWARGS: dict[tuple[str, str], dict[str, tuple]] = {
    ("torchrl.data.replay_buffers.samplers", "SliceSampler"): {
        "init_key": (None,), "end_keys": (None,), "step_key": (None, "step_count"),
        "fragmented": (False,),
    },
    ("torchrl.data.replay_buffers.samplers", "SliceSamplerWithoutReplacement"): {
        "init_key": (None,), "end_keys": (None,),
    },
    ("torchrl.objectives", "ClipPPOLoss"): {
        "advantage_norm": (None,), "delay_actor": (False,), "max_importance_ratio": (None,),
    },
    ("torchrl.collectors", "Collector"): {
        "backend": (None, "direct"), "backend_options": (None,), "num_collectors": (None,),
        "sync": (None,), "traj_format": (None,),
    },
    ("torchrl.objectives.value", "GAE"): {"group_key": (None,)},
}

#: collector role -> its names, newest first (torchrl 0.13 renamed them)
COLLECTOR_NAMES = {
    "sync": ("Collector", "SyncDataCollector"),
    "multi_sync": ("MultiSyncCollector", "MultiSyncDataCollector"),
    "multi_async": ("MultiAsyncCollector", "MultiaSyncDataCollector"),
}


#: the file ``record`` appends each adaptation to (one JSON line), when set
LOG_ENV = "RLGAUGE_COMPAT_LOG"
_FIRED: dict[tuple, dict] = {}  # this process's adaptations, first occurrence each


def versions() -> dict[str, str]:
    """Installed torchrl and tensordict versions ("" when absent); a nightly build's version
    (``torchrl-nightly``, ``tensordict-nightly``) when the release is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torchrl", "tensordict"):
        out[dist] = ""
        for name in (dist, f"{dist}-nightly"):
            try:
                out[dist] = version(name)
                break
            except PackageNotFoundError:
                continue
    return out


def record(kind: str, target: str, detail: str = "") -> None:
    """Note one adaptation (``kind``: ``patched``, ``dropped``, ``renamed``) of ``target``
    (``torchrl.objectives.ClipPPOLoss``...) with its ``detail`` (``delay_actor=False``): kept
    in ``adaptations()`` and, the first time in this process, appended to ``$RLGAUGE_COMPAT_LOG``
    (a write failure is ignored: recording never breaks a run)."""
    key = (kind, target, detail)
    if key in _FIRED:
        return
    entry = {"kind": kind, "target": target, "detail": detail,
             "torchrl": versions()["torchrl"]}
    _FIRED[key] = entry
    path = os.environ.get(LOG_ENV)
    if path:
        try:
            with open(path, "a") as f:  # one short line per write: appends do not interleave
                f.write(json.dumps(entry) + "\n")
        except OSError:
            pass


def adaptations() -> list[dict]:
    """What fired in this process, in order: ``{"kind", "target", "detail", "torchrl"}``."""
    return list(_FIRED.values())


def read_log(path: str | Path) -> list[dict]:
    """The distinct adaptations a ``$RLGAUGE_COMPAT_LOG`` file holds (its processes'), in order
    of first appearance; [] for a missing file. A torn line is skipped."""
    seen: dict[tuple, dict] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
            key = (entry["kind"], entry["target"], entry.get("detail", ""))
        except (ValueError, KeyError, TypeError):
            continue
        seen.setdefault(key, entry)
    return list(seen.values())


def collector_class(role: str = "sync") -> type:
    """The installed torchrl's collector class for ``role`` (sync, multi_sync, multi_async)."""
    if role not in COLLECTOR_NAMES:
        raise ValueError(f"unknown collector role {role!r}; valid: {', '.join(COLLECTOR_NAMES)}")
    module = importlib.import_module("torchrl.collectors")
    for name in COLLECTOR_NAMES[role]:
        if hasattr(module, name):
            if name != COLLECTOR_NAMES[role][0]:
                record("renamed", f"torchrl.collectors.{COLLECTOR_NAMES[role][0]}",
                       f"used the older name {name}")
            return getattr(module, name)
    raise ImportError(f"torchrl {versions()['torchrl']} has none of "
                      f"{', '.join(COLLECTOR_NAMES[role])}")


def missing_kwargs(cls: type) -> dict[str, tuple]:
    """The 0.14 keywords (with their 0.13-equivalent values) that ``cls`` does not name in its
    ``__init__`` (a ``**kwargs`` catch-all does not count: torchrl forwards it elsewhere)."""
    known = _table_entry(cls)
    if not known:
        return {}
    init = getattr(cls.__init__, "__wrapped__", cls.__init__)
    names = set(inspect.signature(init).parameters)
    return {k: v for k, v in known.items() if k not in names}


def _table_entry(cls: type) -> dict[str, tuple]:
    for klass in cls.__mro__:
        for (module, name), table in NEW_KWARGS.items():
            if klass.__name__ == name and klass.__module__.startswith(module.split(".")[0]):
                return table
    return {}


def _no_init_marker(obj) -> bool:
    """``init_key=None`` on a SliceSampler without the keyword: no slice-start markers."""
    if not hasattr(obj, "_maybe_emit_init_marker"):
        return False  # a torchrl that never marks slice starts: nothing to turn off
    obj._maybe_emit_init_marker = lambda *args, **kwargs: None
    return True


#: (class name, 0.14 keyword) -> {value: (what is reproduced, how)}: a dropped keyword whose
#: 0.14 meaning the older class has no keyword for, reproduced on the built instance (the
#: function returns whether it had to do anything)
EMULATED: dict[tuple[str, str], dict] = {
    ("SliceSampler", "init_key"): {
        None: ("no is_init slice-start markers (the instance's _maybe_emit_init_marker made a "
               "no-op)", _no_init_marker)},
}


def _strip(cls: type, kwargs: dict) -> tuple[dict, dict]:
    missing = missing_kwargs(cls)
    out, dropped = dict(kwargs), {}
    for key, equivalent in missing.items():
        if key not in out:
            continue
        if out[key] not in equivalent:
            raise TypeError(f"{cls.__name__}({key}={out[key]!r}) needs torchrl >= 0.14; "
                            f"installed torchrl {versions()['torchrl']} only supports "
                            f"{key} in {equivalent!r} (the keyword dropped)")
        record("dropped", f"{cls.__module__}.{cls.__name__}", f"{key}={out[key]!r}")
        dropped[key] = out.pop(key)
    return out, dropped


def strip_kwargs(cls: type, kwargs: dict) -> dict:
    """``kwargs`` without the 0.14-only keywords that ``cls`` lacks, when their values mean
    the 0.13 behaviour (or one ``EMULATED`` reproduces); TypeError when such a keyword asks for
    something else."""
    return _strip(cls, kwargs)[0]


def _emulate(obj, dropped: dict) -> None:
    """Reproduce on ``obj`` the 0.14 meaning of the ``dropped`` keywords (``EMULATED``)."""
    names = [k.__name__ for k in type(obj).__mro__]
    for key, value in dropped.items():
        for name in names:
            entry = EMULATED.get((name, key), {})
            if value in entry:
                what, how = entry[value]
                if how(obj):
                    cls = type(obj)
                    record("emulated", f"{cls.__module__}.{cls.__name__}",
                           f"{key}={value!r}: {what}")
                break


def construct(cls: type, *args, **kwargs):
    """``cls(*args, **kwargs)`` on any supported torchrl (see ``strip_kwargs``; what
    ``EMULATED`` reproduces is applied to the instance)."""
    kwargs, dropped = _strip(cls, kwargs)
    obj = cls(*args, **kwargs)
    _emulate(obj, dropped)
    return obj


def _adapt(cls: type) -> bool:
    """Make ``cls.__init__`` accept (and drop) its missing 0.14 keywords. True if patched."""
    if not missing_kwargs(cls) or getattr(cls.__init__, "_rlgauge_compat", False):
        return False
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        kwargs, dropped = _strip(type(self), kwargs)
        original(self, *args, **kwargs)
        _emulate(self, dropped)

    __init__._rlgauge_compat = True
    cls.__init__ = __init__
    return True


def apply() -> list[str]:
    """Adapt the installed torchrl to the 0.14 API that rlgauge uses; returns what was patched
    (empty on torchrl 0.14). Idempotent."""
    patched = []
    for module, name in NEW_KWARGS:
        cls = getattr(importlib.import_module(module), name, None)
        if cls is not None and _adapt(cls):
            patched.append(f"{module}.{name}")
            record("patched", f"{module}.{name}",
                   "accepts " + ", ".join(f"{k}=" for k in missing_kwargs(cls)))
    return patched
