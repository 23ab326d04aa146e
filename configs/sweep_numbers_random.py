"""configs/sweep_numbers_asha.py's budget as plain random search: the same model, space and
8 trials, drawn at random, none stopped early (what TPE + ASHA is measured against).

  seq2seq-jax sweep --config configs/sweep_numbers_random.py --workdir runs/sweep_numbers_random
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_sweep_numbers_asha", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "sweep_numbers_asha.py"))
_asha = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_asha)

get_config = _asha.get_config


def get_sweep() -> dict:
  return dict(_asha.get_sweep(),
              # Random draws from the same space, and no pruner.
              sampler="random", sampler_settings={}, pruner="none")
