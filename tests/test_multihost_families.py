"""Two local processes train the families whose data is not a plain array of examples like one process with
all the devices: a full-batch graph, text windows, and PGD attacks inside evaluation. (Apart from
test_multihost.py so that pytest-xdist can run the two files side by side.)"""

import json

import pytest
from conftest import DATA_DIR, needs_data, write_corpus
from test_multihost import TINY, _one_process, _two_processes

TEN_STEPS = ['--config.train.num_steps=10', '--config.train.eval_every=10', '--config.train.checkpoint_every=10']
GRAPH = ['--config=configs/cora/gcn.py', *TEN_STEPS]
TEXT = ['--config=configs/shakespeare_char/gpt.py', '--config.model.num_layers=1', '--config.model.num_heads=2',
        '--config.model.width=16', '--config.data.block_size=16', '--config.data.batch_size=8',
        '--config.data.eval_windows=40', '--config.data.eval_batch_size=20', '--config.sample.num_samples=0',
        *TEN_STEPS]
ADVERSARIAL_EVAL = [*[a for a in TINY if not a.startswith('--config.train.')], *TEN_STEPS,
                    '--config.eval.attack_eps=(0.2,)', '--config.eval.pgd_steps=3']


@pytest.mark.parametrize('family', [
    pytest.param('graph', marks=needs_data('cora')), 'text', 'adversarial_eval'])
def test_graph_text_and_attacked_evaluation_in_two_processes_match_one_process(family, tmp_path):
  """Full-batch graphs (every process holds the graph), text windows and PGD inside evaluation: 2 processes x 2
  devices report the metrics of 1 process x 4 devices."""
  config = {'graph': GRAPH, 'text': [*TEXT, f'--config.data.path={write_corpus(tmp_path / "corpus.txt")}'],
            'adversarial_eval': ADVERSARIAL_EVAL}[family]
  env = {'JAXLAB_DATA_DIR': DATA_DIR} if DATA_DIR else {}
  cache = str(tmp_path / 'cache')
  outputs = _two_processes(tmp_path / 'multi', cache, False, config, **env)
  assert 'on 4 cpu device(s)' in outputs[0] and 'Finished step 10/10' in outputs[0]
  _one_process(tmp_path / 'single', cache, config, **env)
  multi, single = (json.loads((tmp_path / run / 'summary.json').read_text()) for run in ('multi', 'single'))
  metrics = [k for k in single if k.startswith(('test_', 'validation_')) and isinstance(single[k], float)]
  assert len(metrics) >= 2 and (family != 'adversarial_eval' or 'test_pgd_eps0.2_accuracy' in metrics), metrics
  for key in metrics:
    assert multi[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), key
