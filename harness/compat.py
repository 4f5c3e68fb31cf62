"""The one place where torchrl/tensordict API differences between versions are absorbed.

rlgauge is written against torchrl 0.14.1 (tensordict 0.14.3). ``nox -s versions`` also runs the
component benchmarks on torchrl 0.13.3 (tensordict 0.13.0); what differs between the two, as
found by importing every torchrl name the project uses and comparing constructor signatures
(``inspect.signature``) in both environments:

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
  ``GAE(group_key=)``. Each has a value that means "what 0.13 did" (``init_key=None``: no
  episode-start markers; ``delay_actor=False``; ``backend=None``...): ``NEW_KWARGS`` lists
  them. rlgauge passes one of them today: ``reference_impls/recurrent_dqn.py`` builds
  ``SliceSampler(..., init_key=None)``, which made the loss benchmarks' ``setup_cache`` fail on
  0.13.3 with ``TypeError: SliceSampler.__init__() got an unexpected keyword argument
  'init_key'``.

``construct(cls, **kwargs)`` builds any of these classes on either version: a 0.14-only keyword
whose value means the 0.13 behaviour is dropped where the installed class lacks it; any other
value raises ``TypeError`` naming the keyword and the installed version (the old torchrl cannot
do it). ``apply()`` installs that adapter into the old classes themselves, so code written
against 0.14 runs unchanged on 0.13.3; the regression gate's version runs
(``python -m harness.gate versions``) call it before importing the benchmarks, and it does
nothing on a torchrl that has every keyword.
"""

from __future__ import annotations

import functools
import importlib
import inspect

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


def versions() -> dict[str, str]:
    """Installed torchrl and tensordict versions ("" when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torchrl", "tensordict"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = ""
    return out


def collector_class(role: str = "sync") -> type:
    """The installed torchrl's collector class for ``role`` (sync, multi_sync, multi_async)."""
    if role not in COLLECTOR_NAMES:
        raise ValueError(f"unknown collector role {role!r}; valid: {', '.join(COLLECTOR_NAMES)}")
    module = importlib.import_module("torchrl.collectors")
    for name in COLLECTOR_NAMES[role]:
        if hasattr(module, name):
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


def strip_kwargs(cls: type, kwargs: dict) -> dict:
    """``kwargs`` without the 0.14-only keywords that ``cls`` lacks, when their values mean
    the 0.13 behaviour; TypeError when such a keyword asks for something else."""
    missing = missing_kwargs(cls)
    out = dict(kwargs)
    for key, equivalent in missing.items():
        if key not in out:
            continue
        if out[key] not in equivalent:
            raise TypeError(f"{cls.__name__}({key}={out[key]!r}) needs torchrl >= 0.14; "
                            f"installed torchrl {versions()['torchrl']} only supports "
                            f"{key} in {equivalent!r} (the keyword dropped)")
        del out[key]
    return out


def construct(cls: type, *args, **kwargs):
    """``cls(*args, **kwargs)`` on any supported torchrl (see ``strip_kwargs``)."""
    return cls(*args, **strip_kwargs(cls, kwargs))


def _adapt(cls: type) -> bool:
    """Make ``cls.__init__`` accept (and drop) its missing 0.14 keywords. True if patched."""
    if not missing_kwargs(cls) or getattr(cls.__init__, "_rlgauge_compat", False):
        return False
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **strip_kwargs(type(self), kwargs))

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
    return patched
