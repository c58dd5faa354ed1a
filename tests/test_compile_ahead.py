import contextlib
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import sigterm_at, tiny_config, tiny_lm_config
from test_rl import tiny_config as rl_config

from jaxlab.data import text
from jaxlab.errors import ConfigError
from jaxlab.run import compile_ahead, train
from jaxlab.run import program as program_lib

AHEAD_THREAD = 'jaxlab-compile-ahead'


@contextlib.contextmanager
def compiles():
  """Yields a list that collects (what, program name, thread name) for each trace, lowering and XLA compile
  (or cache read) in the block; `what` is 'trace', 'lower' or 'compile'."""
  found = []

  class Collect(logging.Handler):
    def emit(self, record):
      message = record.getMessage()
      for what, pattern in (('trace', r'Finished tracing (\S+) for jit'),
                            ('lower', r'Finished jaxpr to MLIR module conversion jit\(([^)]+)\)'),
                            ('compile', r'Finished XLA compilation of jit\(([^)]+)\)')):
        match = re.match(pattern, message)
        if match:
          found.append((what, match.group(1), record.threadName))

  handler, logger = Collect(), logging.getLogger('jax')
  previous_level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.WARNING)
  jax.config.update('jax_log_compiles', True)  # for every thread (jax.log_compiles() sets this one's)
  try:
    yield found
  finally:
    jax.config.update('jax_log_compiles', False)
    logger.removeHandler(handler)
    logger.setLevel(previous_level)


def cnn(steps_per_call):
  # 7 channels: shapes no other test compiles, so the module-level jitted programs compile here too.
  return tiny_config(**{'train.num_steps': 8, 'train.log_every': 4, 'train.eval_every': 4,
                        'train.checkpoint_every': 4, 'model.channels': 7, 'train.steps_per_call': steps_per_call})


def ppo(steps_per_call):
  # Its environment states hold weak-typed arrays: a fresh state's are, a restored one's are not.
  return rl_config('ppo', **{'train.num_steps': 8, 'train.log_every': 4, 'train.eval_every': 4,
                             'train.checkpoint_every': 4, 'train.steps_per_call': steps_per_call})


@pytest.mark.parametrize('make_config,steps_per_call,resumed', [(cnn, 1, False), (cnn, 2, True), (ppo, 2, False),
                                                                (ppo, 1, True)])
def test_a_run_traces_and_compiles_its_step_evaluation_and_checkpoint_programs_ahead_once(
    tmp_path, make_config, steps_per_call, resumed):
  config, workdir, start = make_config(steps_per_call), str(tmp_path / 'run'), 0
  if resumed:
    first = train.train(config, workdir, hooks=[sigterm_at(4)])
    assert first['preempted']
    start = first['step']
  with compiles() as found:
    summary = train.train(config, workdir)
  assert summary['step'] == 8 and summary['steps_trained'] == 8 - start

  def threads(what, name):
    return [thread for kind, program, thread in found if (kind, program) == (what, name)]

  # Traced and compiled once, on the thread ahead: the arguments given there are the calls'. The checksum
  # and finiteness programs are jitted once per process: only the fresh CNN run has shapes no test had.
  checked = ('one' if steps_per_call == 1 else 'steps', 'eval_step')
  if make_config is cnn and not resumed:
    checked += ('_checksums', 'all_finite')
  for name in checked:
    for what in ('trace', 'compile'):
      assert len(threads(what, name)) == 1 and threads(what, name)[0].startswith(AHEAD_THREAD), (what, name, found)
  assert threads('compile', 'init') == ([] if resumed else ['MainThread'])


def test_calls_with_python_ints_use_the_program_compiled_for_python_int():
  def scaled(x, n):
    return x * n

  jitted, x = jax.jit(scaled), jnp.ones(3)
  with compiles() as found:
    compile_ahead.compile_for(jitted, compile_ahead.abstract(x), compile_ahead.PYTHON_INT)
    assert jitted(x, 5).tolist() == [5.0, 5.0, 5.0]
    assert jitted(x, 7).tolist() == [7.0, 7.0, 7.0]
  assert [(what, name) for what, name, _ in found] == [('trace', 'scaled'), ('lower', 'scaled'), ('compile', 'scaled')]


def test_a_failing_job_is_left_for_the_call_to_raise():
  ahead = compile_ahead.CompileAhead()
  ahead.submit('broken', lambda: jax.jit(lambda x: x @ x).lower(jax.ShapeDtypeStruct((2, 3), jnp.float32)))
  ahead.wait('broken')  # no error here: the program's own call raises it
  ahead.wait('broken')  # waited for already: returns at once
  ahead.close()


def _final_state(config, workdir):
  return jax.device_get(program_lib.restore_checkpoint(config, str(workdir))[2])


@pytest.mark.parametrize('make_config', [cnn, ppo])
def test_a_program_run_again_compiles_nothing_and_trains_resumes_and_ends_as_a_new_program(tmp_path, make_config):
  config = make_config(2)
  program = program_lib.build(config)
  train.train(config, str(tmp_path / 'first'), program=program)
  with compiles() as found:
    preempted = train.train(config, str(tmp_path / 'again'), program=program, hooks=[sigterm_at(4)])
  assert preempted['preempted'] and found == []
  again = train.train(config, str(tmp_path / 'again'), program=program)  # resumed
  new = train.train(config, str(tmp_path / 'new'))
  run_facts = ('workdir', 'train_seconds', 'steps_trained')
  assert {k: v for k, v in again.items() if k not in run_facts} == {k: v for k, v in new.items() if k not in run_facts}
  ours, theirs = _final_state(config, tmp_path / 'again'), _final_state(config, tmp_path / 'new')
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True))


def test_a_program_run_in_a_workdir_takes_a_data_source_of_that_workdir(tmp_path, corpus):
  config = tiny_lm_config(corpus)
  program = program_lib.build(config)  # no workdir: its text source saved no vocabulary
  (tmp_path / 'run').mkdir()
  run = program.for_run(config, str(tmp_path / 'run'))
  assert text.read_vocabulary(str(tmp_path / 'run')) == run.source.vocab == program.source.vocab
  # A workdir whose saved vocabulary is not the one the program's model was built for is refused.
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / text.VOCABULARY_FILE).write_text(
      text.Vocabulary('char', ''.join(sorted(program.source.vocab.symbols + '~'))).to_json())
  with pytest.raises(ConfigError, match='differs from the data the program was built with'):
    program.for_run(config, str(tmp_path / 'other'))


def test_a_program_built_from_another_config_is_refused(tmp_path):
  program = program_lib.build(cnn(1))
  with pytest.raises(ConfigError, match='built from a different config'):
    train.train(cnn(2), str(tmp_path), program=program)
