"""The shared part of text configs (no JAX import: sweep parents load configs without it)."""

import ml_collections

from jaxlab import config as config_lib


def text_config(task: str = 'language_model', block_size: int = 64, batch_size: int = 12) -> ml_collections.ConfigDict:
  """defaults() with a `data` block for data.name='text' (Tiny Shakespeare by default) and a `sample` block.

  The model block's `block_size` should be `config.data.get_ref('block_size')`, so one override sets both.
  """
  config = config_lib.defaults()
  config.task = task
  config.data = ml_collections.ConfigDict(dict(
      name='text', path='',  # '': $JAXLAB_DATA_DIR/tinyshakespeare/input.txt
      vocabulary='char',  # or 'byte': UTF-8 bytes, 256 ids, for any file
      train_fraction=0.9,  # nanoGPT's split: the first 90 % trains, the rest validates
      block_size=block_size, batch_size=batch_size, eval_batch_size=100,
      eval_windows=500))  # fixed validation windows, spread evenly: comparable between runs
  # What every evaluation of a language model generates (samples/ and TensorBoard's text tab); num_samples=0: none.
  config.sample = ml_collections.ConfigDict(dict(prompt='\n', num_tokens=200, num_samples=2, temperature=1.0, top_k=0))
  return config


def nanogpt_protocol(config: ml_collections.ConfigDict, num_steps: int, learning_rate: float = 1e-3) -> None:
  """nanoGPT's Shakespeare-char optimiser: AdamW (beta2 0.99, decay 0.1 on matrices), 100 warm-up steps,
  cosine to a tenth of the peak, gradient clipping at 1."""
  config.optimizer.update(dict(
      name='adamw', learning_rate=learning_rate, b1=0.9, b2=0.99, weight_decay=0.1, decay_matrices_only=True,
      grad_clip_norm=1.0, schedule='cosine', warmup_steps=100, final_lr_fraction=0.1))
  config.train.update(dict(num_steps=num_steps, log_every=50, eval_every=250, checkpoint_every=1000))
