"""rlgauge's harness: everything that is not an algorithm or a benchmark.

Modules (see DESIGN.md):

- ``registry``    -- the named things rlgauge can run (backends, algorithms) and why one is missing
- ``devices``     -- which devices exist here, their one canonical name (cpu, cuda:N), the
  hardware a result ran on (CPU model, GPU, CUDA), device synchronisation for honest timing
- ``results``     -- the tidy results schema, validation, atomic writes, provenance
- ``torchrl_ext`` -- detects and rebuilds torchrl's C++ extension (prioritized replay)
- ``backends`` / ``probes`` -- env backends behind one convention; closed-form probe envs
- ``estimators``  -- GAE / TD(λ): float64 oracles and the fast kernels (``gae_native``: the
  fused C++ kernel, built and cached on first use; ``gae_estimator``: torchrl-compatible module)
- ``training`` / ``learning`` -- what every reference algorithm shares; published thresholds
- ``matrix`` (+ ``matrix_ray``) -- grids of runs in isolated worker processes, resumable
- ``report``      -- tables, plots, intervals and comparisons of results
- ``timing`` / ``asv_results`` -- timers and calibration; asv's database as tables
- ``doctor``      -- the environment report behind ``python -m harness doctor``
- ``cli``         -- ``python -m harness ...`` / ``rlgauge ...``; the only module that prints

Importing ``harness`` is cheap: no torch or torchrl import happens until a function needs it.
"""

__version__ = "0.1.0"
