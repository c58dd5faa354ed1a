"""Graph networks: the Planetoid reader (safe unpickling, same graph as LINQS), GCN/GAT maths, node classification runs."""

import json
import os
import pickle

import jax
import numpy as np
import pytest
from conftest import DATA_DIR, needs_data

from jaxlab import config as config_lib
from jaxlab.data import planetoid
from jaxlab.errors import ConfigError, DataError
from jaxlab.models import graph as graph_models
from jaxlab.run import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORA = os.path.join(DATA_DIR, 'cora')
needs_cora = needs_data('cora/ind.cora.x')


def small_graph(seed=0, num_nodes=7, num_features=5):
  """A random undirected graph with sparse binary features, as the source serves it (features dense too)."""
  rng = np.random.default_rng(seed)
  features = (rng.random((num_nodes, num_features)) < 0.4).astype(np.float32)
  features[np.arange(num_nodes), rng.integers(0, num_features, num_nodes)] = 1.0  # no empty row
  pairs = rng.integers(0, num_nodes, (12, 2))
  senders, receivers = planetoid.undirected_edges(pairs, num_nodes)
  batch = {**planetoid.sparse_features(features), 'senders': senders, 'receivers': receivers,
           'y': rng.integers(0, 3, num_nodes).astype(np.int32)}
  return batch, features / features.sum(1, keepdims=True)


def dense_adjacency(batch, num_nodes):
  a = np.zeros((num_nodes, num_nodes))
  a[batch['receivers'], batch['senders']] = 1.0
  return a


# --- reading ---------------------------------------------------------------------------------------


class _RunsACommand:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_the_unpickler_refuses_a_file_that_would_run_a_command(tmp_path):
  marker = tmp_path / 'ran'
  hostile = tmp_path / 'ind.cora.x'
  hostile.write_bytes(pickle.dumps(_RunsACommand(marker), protocol=2))
  pickle.loads(hostile.read_bytes())  # the file is live: plain pickle runs it
  assert marker.exists()
  marker.unlink()
  with pytest.raises(DataError, match=r'refusing to unpickle (posix|nt)\.system') as error:
    planetoid.unpickle(str(hostile))
  assert '\n' not in str(error.value) and str(hostile) in str(error.value)
  assert not marker.exists()


def test_a_missing_file_is_one_line_naming_it(tmp_path):
  with pytest.raises(DataError, match=f'not found: {tmp_path}/ind.cora.x$'):
    planetoid.read_planetoid(str(tmp_path))


@needs_cora
def test_planetoid_and_linqs_readers_give_the_same_graph():
  ours, linqs = planetoid.read_planetoid(CORA), planetoid.read_linqs(CORA)[0]
  assert ours.features.shape == linqs.features.shape == (2708, 1433)
  assert {k: int(v.sum()) for k, v in ours.masks.items()} == {'train': 140, 'validation': 500, 'test': 1000}
  assert len(ours.senders) == len(linqs.senders) == 2 * 5278  # the README's count of undirected edges
  # Match nodes by their feature rows; 27 nodes share their row with another and are matched as groups.
  key = lambda g: [row.tobytes() for row in g.features.astype(np.uint8)]
  ours_keys, linqs_keys = key(ours), key(linqs)
  where = {k: i for i, k in enumerate(linqs_keys)}
  counts = {}
  for k in ours_keys:
    counts[k] = counts.get(k, 0) + 1
  unique = {i: where[k] for i, k in enumerate(ours_keys) if counts[k] == 1}
  assert len(unique) == 2708 - 27
  # The two files number the classes differently: one fixed relabelling maps every node.
  relabel = {}
  for i, j in unique.items():
    assert relabel.setdefault(ours.labels[i], linqs.labels[j]) == linqs.labels[j]
  assert len(relabel) == 7
  ours_edges = {(unique[s], unique[r]) for s, r in zip(ours.senders, ours.receivers) if s in unique and r in unique}
  mapped = set(unique.values())
  linqs_edges = {(s, r) for s, r in zip(linqs.senders, linqs.receivers) if s in mapped and r in mapped}
  assert ours_edges == linqs_edges and len(ours_edges) > 10000
  # The nodes with shared rows: the same (features, label, degree) multiset in both.
  degree = lambda g: np.bincount(g.receivers, minlength=2708)
  shared = lambda keys, g, label: sorted((k, label(g.labels[i]), degree(g)[i]) for i, k in enumerate(keys)
                                         if counts[k] > 1)
  assert shared(ours_keys, ours, lambda y: relabel[y]) == shared(linqs_keys, linqs, lambda y: y)


# --- models ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('propagation', ['edges', 'dense'])
def test_gcn_propagation_equals_the_dense_normalised_adjacency_formula(propagation):
  batch, features = small_graph()
  n = len(batch['y'])
  model = graph_models.GCN(num_classes=3, num_features=5, hidden=4, propagation=propagation)
  params = model.init(jax.random.PRNGKey(0), batch)['params']
  a_hat = dense_adjacency(batch, n) + np.eye(n)
  d = np.diag(a_hat.sum(1) ** -0.5)
  a_norm = d @ a_hat @ d
  w0, w1 = np.asarray(params['layer_0']['kernel']), np.asarray(params['layer_1']['kernel'])
  expected = a_norm @ np.maximum(a_norm @ features @ w0, 0) @ w1
  np.testing.assert_allclose(model.apply({'params': params}, batch), expected, rtol=1e-5, atol=1e-6)


def test_gat_attention_is_a_softmax_over_each_neighbourhood_and_matches_the_dense_formula():
  batch, _ = small_graph(seed=1)
  n, heads, width = len(batch['y']), 2, 3
  senders, receivers = graph_models.with_self_loops(batch['senders'], batch['receivers'], n)
  h = jax.random.normal(jax.random.PRNGKey(1), (n, heads, width))
  layer = graph_models.GraphAttention(dropout=0.0)
  params = layer.init(jax.random.PRNGKey(2), h, senders, receivers, False)['params']
  out = np.asarray(layer.apply({'params': params}, h, senders, receivers, False))
  a_src, a_dst = (np.asarray(params[name]['kernel'])[..., 0] for name in ('attend_sender', 'attend_receiver'))
  hn, neighbours = np.asarray(h), dense_adjacency(batch, n) + np.eye(n) > 0
  for head in range(heads):
    scores = (hn[:, head] @ a_dst[head])[:, None] + (hn[:, head] @ a_src[head])[None, :]  # [receiver, sender]
    scores = np.where(scores > 0, scores, 0.2 * scores)
    weights = np.where(neighbours, np.exp(scores - scores.max()), 0.0)
    weights /= weights.sum(1, keepdims=True)
    np.testing.assert_allclose(out[:, head], weights @ hn[:, head], rtol=1e-5, atol=1e-6)
  alpha = graph_models.segment_softmax(jax.random.normal(jax.random.PRNGKey(3), (len(senders), heads)), receivers, n)
  np.testing.assert_allclose(jax.ops.segment_sum(alpha, receivers, n), np.ones((n, heads)), rtol=1e-6)


@pytest.mark.parametrize('name', ['gcn', 'gat'])
def test_permuting_the_nodes_permutes_the_outputs(name):
  batch, features = small_graph(seed=2, num_nodes=9)
  model = {'gcn': graph_models.GCN(3, 5), 'gat': graph_models.GAT(3, 5, heads=2, hidden=4)}[name]
  params = model.init(jax.random.PRNGKey(0), batch)['params']
  perm = np.random.default_rng(0).permutation(9)
  inverse = np.argsort(perm).astype(np.int32)  # node i becomes node inverse[i]
  permuted = {**planetoid.sparse_features(features[perm] > 0), 'senders': inverse[batch['senders']],
              'receivers': inverse[batch['receivers']], 'y': batch['y'][perm]}
  out, out_permuted = model.apply({'params': params}, batch), model.apply({'params': params}, permuted)
  np.testing.assert_allclose(out_permuted, np.asarray(out)[perm], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out_permuted, out, atol=1e-3)  # the outputs do depend on the node


def test_sparse_dropout_touches_only_the_nonzero_entries_and_keeps_the_mean():
  values = np.ones(20000, np.float32)
  dropped = np.asarray(graph_models.sparse_dropout(jax.random.PRNGKey(0), values, 0.5))
  assert set(np.unique(dropped)) == {0.0, 2.0} and abs(dropped.mean() - 1.0) < 0.03


# --- training --------------------------------------------------------------------------------------


def cora_config(name='gcn', **overrides):
  config = config_lib.load(os.path.join(ROOT, 'configs', 'cora', f'{name}.py'))
  for key, value in {'train.num_steps': 12, 'train.checkpoint_every': 6, **overrides}.items():
    config_lib.set_value(config, key, value)
  return config


@needs_cora
def test_a_resumed_gat_run_of_two_seeds_ends_bitwise_like_an_uninterrupted_one(tmp_path):
  config = cora_config('gat', **{'model.heads': 2, 'model.hidden': 4, 'num_replicas': 2})
  final = {}
  keep = lambda name: lambda step, state: final.update({name: jax.device_get(state.params)})
  whole = train.train(config, str(tmp_path / 'whole'), hooks=[keep('whole')])
  stopped = str(tmp_path / 'stopped')
  preempted = train.train(config, stopped, hooks=[lambda step, state: step == 6 and os.kill(os.getpid(), 15)])
  assert preempted['preempted'] and preempted['step'] < 12
  resumed = train.train(config, stopped, hooks=[keep('resumed')])
  assert resumed['steps_trained'] == 12 - preempted['step']
  for a, b in zip(jax.tree.leaves(final['whole']), jax.tree.leaves(final['resumed']), strict=True):
    np.testing.assert_array_equal(a, b)
  for key in ('validation_loss_replicas', 'test_loss_replicas', 'test_accuracy_replicas',
              'best_validation_loss_replicas', 'best_step_replicas'):
    assert resumed[key] == whole[key], key
  assert whole['test_loss_replicas'][0] != whole['test_loss_replicas'][1]


def test_node_classification_needs_a_graph_source(tmp_path):
  from conftest import tiny_config
  config = tiny_config()
  config_lib.set_value(config, 'task', 'node_classification')
  with pytest.raises(ConfigError, match="needs a graph data source .*not 'mnist1d'"):
    train.train(config, str(tmp_path / 'run'))
