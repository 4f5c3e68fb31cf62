"""rlgauge's harness: everything that is not an algorithm or a benchmark.

Modules (see DESIGN.md), by what they are for:

Running things
- ``registry``    -- the named things rlgauge can run (backends, algorithms) and why one is missing
- ``runs``        -- one run: ``RunSpec``, ``resolve`` (checked inputs -> module, Config) and the
  one finisher of its records; used by ``cli``, ``matrix``, ``learning`` and the benchmarks
- ``training``    -- what every reference algorithm's loop shares (``BaseConfig``, ``Run``, the
  collection generator, evaluation)
- ``recipes``     -- torchrl's tutorial pipelines as named configurations, with their criteria
- ``peers``       -- the same runs by Stable-Baselines3 / sb3-contrib (the ``impl`` axis)
- ``costs``       -- ``python -m harness.costs``: an algorithm's cost ladder against SB3's
- ``learning``    -- published-threshold checks (``nox -s learning``), through the matrix
- ``matrix`` (+ ``matrix_ray``) -- grids of runs in isolated worker processes, resumable

Envs and devices
- ``backends``    -- env backends behind one convention (``envpool_env``: the envpool env;
  ``pixels``: rendered-frame envs); ``probes`` -- closed-form probe envs
- ``devices``     -- which devices exist here, their one canonical name (cpu, cuda:N), the
  hardware a result ran on (CPU model, GPU, CUDA), device synchronisation for honest timing

Value estimators
- ``estimators``  -- GAE / TD(λ): float64 oracles and the fast kernels (``gae_native``: the
  fused C++ kernel of ``csrc/``, built, self-tested and cached on first use;
  ``gae_estimator``: the torchrl-compatible module)
- ``torchrl_ext`` -- makes torchrl's C++ extension load (rebuilt, self-tested; prioritized replay)

Results and comparisons
- ``results``     -- the tidy results schema, validation, loading; ``provenance`` -- where and
  with what a value was measured (machine, versions, hardware); ``atomic`` -- the one way files
  are written
- ``report``      -- tables, plots, intervals and ``compare`` of result sets
- ``comparison``  -- the one vocabulary of comparisons: direction, verdicts, formatting
- ``timing`` / ``asv_results`` -- timers and calibration; asv's database as tables
- ``gate/``       -- the regression gate (worker, runner, cases, stats, compare, baseline,
  validity, noise, history, versions, cli); ``compat`` -- torchrl API differences across
  versions (and a record of each one adapted); ``sides`` -- the torchrl builds that ``nox -s
  versions`` compares, each in its own cached environment, and their learning check;
  ``installs`` -- constraints.txt's pins and pip's wheelhouse for uv (the noxfile's too)

The command line
- ``cli``         -- ``python -m harness ...`` / ``rlgauge ...`` (``progress``: its bars and log
  lines); ``doctor`` -- the environment report; ``errors`` -- the one-line errors

Importing ``harness`` is cheap: no torch or torchrl import happens until a function needs it.
"""

__version__ = "0.1.0"
