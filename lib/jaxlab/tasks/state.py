"""The one pytree that holds everything a run mutates."""

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """Params, optimizer state, non-trained model state (e.g. BatchNorm statistics), step, RNG.

  A task with several networks (a GAN's generator and discriminator) keeps a dict of them in
  `params` and the matching dict of optimizer states in `opt_state`.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  rng: jax.Array
