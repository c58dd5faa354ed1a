"""`bench --bench_against=reference`: each family's independent plain-JAX implementation computes jaxlab's loss
from the same parameters, trains, and the bench reports its ratio (a smoke run: no timing is asserted)."""

import ast
import math
import pathlib

import pytest
from conftest import ROOT, needs_data, tiny_lm_config, write_corpus

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError, JaxlabError
from jaxlab.evaluators import bench, references
from jaxlab.evaluators.references import gpt

REFERENCES = pathlib.Path(ROOT) / 'lib' / 'jaxlab' / 'evaluators' / 'references'


def _config(name, **overrides):
  config = config_lib.load(str(pathlib.Path(ROOT) / 'configs' / name))
  for key, value in {'train.steps_per_call': 1, **overrides}.items():
    config_lib.set_value(config, key, value)
  return config


FAMILIES = [  # tiny versions of each family's config; data-free where the family allows
    pytest.param('cnn', lambda tmp: _config('mnist/lenet5.py', **{'data.batch_size': 16}), marks=needs_data('mnist'),
                 id='cnn'),
    pytest.param('vae', lambda tmp: _config('mnist/vae.py', **{'data.batch_size': 16, 'model.hidden': (32,),
                                                                'vae.iwae_samples': 0}),
                 marks=needs_data('mnist'), id='vae'),
    pytest.param('gcn', lambda tmp: _config('cora/gcn.py'), marks=needs_data('cora'), id='gcn'),
    pytest.param('ppo', lambda tmp: _config('gymnax/ppo.py', **{'ppo.num_steps': 16}), id='ppo'),
    pytest.param('gpt', lambda tmp: tiny_lm_config(write_corpus(tmp / 'corpus.txt'), **{'train.steps_per_call': 1}),
                 id='gpt'),
]


@pytest.mark.parametrize('family,make_config', FAMILIES)
def test_reference_computes_jaxlabs_loss_and_is_timed_against_it(family, make_config, tmp_path, monkeypatch):
  config = make_config(tmp_path)
  assert references.family(config) == family
  case = references.case(config)
  assert abs(case.jaxlab_loss - case.reference_loss) <= 1e-5 * max(1.0, abs(case.jaxlab_loss))
  monkeypatch.setattr(bench, 'WARMUP_STEPS', 2)
  result = bench.run_reference(config, steps=2, repeats=1)
  assert result['family'] == family and math.isfinite(result['time_ratio']) and result['time_ratio'] > 0
  # XLA counts about the same work on both sides (the same model, loss and optimizer).
  assert result['reference_gflop_per_step'] == pytest.approx(result['jaxlab_gflop_per_step'], rel=0.35)


def test_a_reference_that_computes_another_function_is_refused(tmp_path, monkeypatch):
  config = tiny_lm_config(write_corpus(tmp_path / 'corpus.txt'))
  convert = gpt.from_jaxlab

  def negated_mlp(params):  # same shapes, another function
    converted = convert(params)
    for layer in converted['layers']:
      layer['fc'] = {**layer['fc'], 'w': -layer['fc']['w']}
    return converted

  monkeypatch.setattr(gpt, 'from_jaxlab', negated_mlp)
  with pytest.raises(JaxlabError, match='gpt reference computes loss .* where jaxlab computes'):
    bench.run_reference(config, steps=1, repeats=1)


def test_a_config_without_a_reference_is_named():
  config = _config('mnist1d/gru.py')
  with pytest.raises(ConfigError, match="no reference for task 'classification' with model 'rnn'"):
    references.family(config)


def test_the_references_import_nothing_of_jaxlabs_models_or_tasks():
  for path in REFERENCES.glob('*.py'):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
      for name in names:
        assert not name.startswith(('jaxlab.models', 'jaxlab.tasks')), f'{path.name} imports {name}'
        assert not (name == 'jaxlab' and isinstance(node, ast.ImportFrom)
                    and {a.name for a in node.names} & {'models', 'tasks'}), f'{path.name} imports jaxlab.models/tasks'


def test_the_matmul_rate_is_of_this_machine_and_positive():
  rate = bench.matmul_flops_per_sec(n=256, repeats=3)
  assert 1e8 < rate < 1e16  # between a slow CPU core and a large accelerator
