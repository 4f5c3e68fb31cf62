"""Reference RL algorithms built from torchrl parts: one readable module per algorithm.

Each module has a frozen ``Config`` (its ``PRESETS`` per task), ``config_for(backend, task,
**overrides)`` (``Config.for_task``), ``make_env``, ``make_modules``, ``make_loss``,
``train(config, progress=None) -> TrainResult`` and ``LEARNING_TARGETS`` (published returns
checked by ``nox -s learning``). ``train`` reads top to bottom: the parts built, then the loop's
phases under ``# --- collect``, ``# --- advantage`` (PPO), ``# --- update`` and
``# --- evaluate``; the bookkeeping (seeding, timing, return logging, progress, end-of-run
records) is ``harness.training.Run``'s. The registrations below (module path + the action kinds
it can act in) are what ``python -m harness list``, ``train`` and the matrix read; importing this
package does not import torchrl.
"""

from harness.registry import ALGORITHMS


def _register(name: str, kinds: tuple[str, ...], description: str) -> None:
    module = f"reference_impls.{name}"
    ALGORITHMS.register(name, module, action_kinds=kinds, description=description,
                        requires=(module,))


_register("ppo", ("discrete", "continuous"),
          "PPO: clipped objective, GAE, minibatch epochs (Categorical / TanhNormal policy)")
_register("dqn", ("discrete",),
          "Double DQN: target network, epsilon-greedy annealing, uniform or prioritized replay")
_register("ddpg", ("continuous",),
          "DDPG: deterministic actor + Q critic, soft target updates, OU or Gaussian noise")
_register("recurrent_dqn", ("discrete",),
          "DQN with an LSTM Q-network over sequences (InitTracker, primer, SliceSampler)")
_register("recurrent_ppo", ("discrete", "continuous"),
          "PPO with an LSTM actor-critic over sequences")
