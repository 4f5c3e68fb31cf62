"""torchrl's C++ extension works in the test environment: prioritized replay really samples;
a rebuilt extension is installed only after its self-test in a child process has passed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from harness import torchrl_ext


def test_torchrl_extension_loads():
    st = torchrl_ext.status()
    assert st.ok, f"torchrl extension broken here: {st.detail} (run python -m harness build-ext)"


def test_prioritized_replay_samples_by_priority_and_updates():
    from torchrl.data import LazyTensorStorage, PrioritizedReplayBuffer

    torch.manual_seed(0)
    rb = PrioritizedReplayBuffer(alpha=1.0, beta=1.0, storage=LazyTensorStorage(4))
    rb.extend(torch.arange(4))
    # priorities 1, 1, 1, 97 with alpha=1: item 3 is drawn with probability 97/100
    rb.update_priority(torch.arange(4), torch.tensor([1.0, 1.0, 1.0, 97.0]))
    sample, info = rb.sample(2000, return_info=True)
    share = (sample == 3).float().mean().item()
    assert abs(share - 0.97) < 0.02, share
    # importance weights (N p_i)^-beta, normalised by their max: 1 for the rarest items and
    # (4 * 0.01) / (4 * 0.97) = 1/97 for item 3
    w = info["priority_weight"]
    assert torch.allclose(w[sample == 3], torch.tensor(1 / 97), rtol=1e-3)
    assert torch.allclose(w[sample != 3], torch.tensor(1.0), rtol=1e-3)
    # after lowering item 3's priority to that of the others, draws become uniform
    rb.update_priority(torch.tensor([3]), torch.tensor([1.0]))
    sample = rb.sample(4000)
    counts = torch.bincount(sample, minlength=4).float() / 4000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03), counts


def test_cache_key_names_torch_and_torchrl():
    key = torchrl_ext.cache_key()
    assert torch.__version__ in key and "torchrl-0.14" in key


# --- the self-test of a rebuilt extension -------------------------------------------------

# A stand-in for a built ``_torchrl``, loaded by the self-test's child from a .py file: segment
# trees in plain Python (right answers), and on the bad-input call (a sparse index) what MODE
# says: "raise" as a working build does, "segfault" as a build whose C++ exceptions do not
# cross the extension boundary, "abort" as a failed assert(), "silent" returns garbage.
FAKE_TORCHRL = """
import os, signal
import torch

MODE = {mode!r}


class _Tree:
    def __init__(self, size, identity, op):
        self.values, self.identity, self.op = [identity] * size, identity, op

    def __len__(self):
        return len(self.values)

    def _items(self, index, value):
        if isinstance(index, torch.Tensor):
            index = index.tolist()
            value = value.tolist() if isinstance(value, torch.Tensor) else [value] * len(index)
            return zip(index, value)
        return [(index, value)]

    def __setitem__(self, index, value):
        for i, x in self._items(index, value):
            self.values[i] = float(x)

    def __getitem__(self, i):
        return self.values[i]

    def at(self, index):
        if index.layout != torch.strided:
            if MODE == "segfault":
                os.kill(os.getpid(), signal.SIGSEGV)
            if MODE == "abort":
                os.abort()
            if MODE == "raise":
                raise RuntimeError("unsupported memory format option Contiguous")
            return torch.zeros(2)
        return torch.tensor([self.values[i] for i in index.tolist()])

    def query(self, l, r):
        if isinstance(l, torch.Tensor):
            return torch.tensor([self.query(a, b) for a, b in zip(l.tolist(), r.tolist())])
        out = self.identity
        for x in self.values[l:r]:
            out = self.op(out, x)
        return out


class SumSegmentTreeFp32(_Tree):
    def __init__(self, size):
        super().__init__(size, 0.0, lambda a, b: a + b)

    def scan_lower_bound(self, x):
        if isinstance(x, torch.Tensor):
            return torch.tensor([self.scan_lower_bound(v) for v in x.tolist()])
        total = 0.0
        for i, v in enumerate(self.values):
            total += v
            if total >= x:
                return i
        return len(self.values)


class MinSegmentTreeFp32(_Tree):
    def __init__(self, size):
        super().__init__(size, float("inf"), min)


SumSegmentTreeFp64, MinSegmentTreeFp64 = SumSegmentTreeFp32, MinSegmentTreeFp32
"""


def fake_extension(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"fake_torchrl_{mode}.py"
    path.write_text(FAKE_TORCHRL.format(mode=mode))
    return path


BAD_INPUT_STAGE = "the bad-input call (a sparse index into SumSegmentTreeFp32.at)"


@pytest.mark.parametrize(("mode", "reason"), [
    ("segfault", f"child died with SIGSEGV during {BAD_INPUT_STAGE}"),
    ("abort", f"child died with SIGABRT during {BAD_INPUT_STAGE}"),
    ("silent", "the bad-input call did not raise"),
])
def test_selftest_rejects_a_broken_extension(mode, reason, tmp_path):
    """The self-test's verdict on extensions that die on bad input or let it pass. Fails if
    the self-test stops making the bad-input call, stops checking that it raises, or stops
    naming the stage a child died in (today's code has no self-test at all)."""
    verdict = torchrl_ext.selftest(fake_extension(tmp_path, mode))
    assert not verdict.ok
    assert verdict.detail == reason


def test_selftest_passes_a_working_extension(tmp_path):
    """The controls: the plain-Python stand-in that raises on bad input passes, and so does the
    extension installed here (the rebuilt one). Fails if the self-test's segment-tree checks
    are wrong (then no rebuild would ever be installed)."""
    verdict = torchrl_ext.selftest(fake_extension(tmp_path, "raise"))
    assert verdict.ok, verdict.detail
    installed = torchrl_ext.extension_path()
    assert installed is not None and installed.exists()
    verdict = torchrl_ext.selftest(installed)
    assert verdict.ok, verdict.detail


def test_selftest_child_outcomes_are_named():
    """How a child's end becomes a one-line reason: timeout, exit status, no "@ok". Fails if
    ``run_selftest_child`` stops killing a hung child or stops naming its stage."""
    run = torchrl_ext.run_selftest_child
    ok, why = run([sys.executable, "-c", "print('@stage sleeping', flush=True); "
                   "import time; time.sleep(60)"], timeout=2)
    assert not ok and why == "child timed out after 2 s during sleeping"
    ok, why = run([sys.executable, "-c", "print('@stage importing', flush=True); "
                   "import no_such_module"], timeout=60)
    assert not ok and why.startswith("child exited with status 1 during importing: "
                                     "ModuleNotFoundError"), why
    ok, why = run([sys.executable, "-c", "pass"], timeout=60)
    assert not ok and why == "child exited without finishing"
    assert run([sys.executable, "-c", "print('@ok')"], timeout=60) == (True, "passed")


def test_ensure_refuses_an_extension_that_fails_its_selftest(monkeypatch, tmp_path):
    """``ensure()`` (``python -m harness build-ext``) with a broken installed extension and a
    rebuild whose self-test child dies: nothing is installed, RuntimeError names the reason in
    one line, the verdict is recorded with the cached build, a second ``ensure()`` raises the
    same without building or testing again, and ``status()`` (doctor) says why.

    Fails on today's code, which installs the rebuild untested (then only probes an import),
    and if ``ensure()`` installs before the self-test, ignores its verdict, or does not record
    it."""
    monkeypatch.setenv("RLGAUGE_CACHE_DIR", str(tmp_path / "cache"))
    target = tmp_path / "site-packages" / "torchrl" / "_torchrl.so"  # never the real one
    target.parent.mkdir(parents=True)
    broken = torchrl_ext.Status(False, "undefined symbol: _ZN3c10...", target)
    monkeypatch.setattr(torchrl_ext, "extension_path", lambda: target)
    # today's code has no _status_in_process: patch status() there too, so it cannot import
    monkeypatch.setattr(torchrl_ext, "_status_in_process", lambda: broken, raising=False)
    if not hasattr(torchrl_ext, "_recorded_failure"):
        monkeypatch.setattr(torchrl_ext, "status", lambda: broken)
    builds, tests = [], []

    def fake_build(dest, *, verbose=False):
        builds.append(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"\x7fELF stand-in for a rebuilt _torchrl")
        return 1.0

    real_selftest = getattr(torchrl_ext, "selftest", None)  # None in today's code

    def selftest_of_a_crashing_build(so, **kw):
        tests.append(so)
        return real_selftest(fake_extension(tmp_path, "segfault"), **kw)

    def probe(python=sys.executable):
        raise AssertionError("the rebuilt extension was installed and probed")

    monkeypatch.setattr(torchrl_ext, "build", fake_build)
    monkeypatch.setattr(torchrl_ext, "selftest", selftest_of_a_crashing_build, raising=False)
    monkeypatch.setattr(torchrl_ext, "probe_subprocess", probe)
    reason = f"child died with SIGSEGV during {BAD_INPUT_STAGE}"
    with pytest.raises(RuntimeError) as err:
        torchrl_ext.ensure()
    message = str(err.value)
    assert message.startswith(f"rebuilt torchrl extension failed its self-test ({reason}); "
                              "not installed"), message
    assert "\n" not in message
    assert not target.exists()
    cached = torchrl_ext.cached_build()
    assert builds == [cached] and tests == [cached]
    verdict = torchrl_ext.recorded_verdict(cached)
    assert verdict is not None and not verdict.ok and verdict.detail == reason

    # doctor's view: the installed one is broken, and why the rebuild was not installed
    st = torchrl_ext.status()
    assert not st.ok and st.detail.startswith(broken.detail)
    assert st.detail.endswith(f"its self-test failed ({reason})")
    assert st.selftest == verdict

    # again: the recorded verdict answers, no build, no child, still nothing installed
    with pytest.raises(RuntimeError, match=r"failed its self-test \(child died with SIGSEGV"):
        torchrl_ext.ensure()
    assert builds == [cached] and tests == [cached] and not target.exists()


def test_ensure_self_tests_an_installed_rebuild_once(monkeypatch, tmp_path):
    """An extension that imports fine but is rlgauge's rebuild installed before rebuilds were
    self-tested (same size and mtime as the cached build, no verdict) is self-tested once by
    ``ensure()``: a failure raises with the reason, the verdict answers the next call without a
    child. The wheel's own binary (another file) is not tested.

    Fails on today's code (``ensure()`` says OK once the import works) and if the installed
    rebuild's verdict is not recorded (a child per ``build-ext``)."""
    import shutil

    monkeypatch.setenv("RLGAUGE_CACHE_DIR", str(tmp_path / "cache"))
    cached = torchrl_ext.cached_build()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x7fELF stand-in for a rebuilt _torchrl")
    target = tmp_path / "site-packages" / "torchrl" / "_torchrl.so"
    target.parent.mkdir(parents=True)
    shutil.copy2(cached, target)  # what an earlier build-ext installed
    loads = torchrl_ext.Status(True, "loads", target)
    monkeypatch.setattr(torchrl_ext, "_status_in_process", lambda: loads, raising=False)
    monkeypatch.setattr(torchrl_ext, "status", lambda: loads)
    real_selftest = getattr(torchrl_ext, "selftest", None)  # None in today's code
    tests = []

    def selftest_of_a_crashing_build(so, **kw):
        tests.append(so)
        return real_selftest(fake_extension(tmp_path, "segfault"), **kw)

    monkeypatch.setattr(torchrl_ext, "selftest", selftest_of_a_crashing_build, raising=False)
    for _ in range(2):
        with pytest.raises(RuntimeError, match=r"fails its self-test \(child died with SIGSEGV "
                                               r"during the bad-input call"):
            torchrl_ext.ensure()
    assert tests == [cached]
    target.write_bytes(b"the wheel's own binary, which loads here")
    assert torchrl_ext.ensure() == f"torchrl extension OK (loads): {target}"
    assert tests == [cached]
