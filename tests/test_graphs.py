"""Graph networks: the Planetoid reader (safe unpickling, same graph as LINQS), GCN/GAT maths, node classification runs."""

import os
import pickle
import shutil

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


# Damaged Planetoid files, written as the originals are: protocol-2 pickles of numpy 1 arrays and scipy CSR matrices.


def _global(module, name):
  return f'c{module}\n{name}\n'.encode()


def _value(obj):
  """The opcodes that push `obj` (ints, strings, bytes, tuples of them), without PROTO and STOP."""
  return pickle.dumps(obj, protocol=3)[2:-1]


def _array(a, dtype_args=None):
  """The opcodes of numpy 1's pickle of array `a`: _reconstruct(ndarray, (0,), 'b'), then its state."""
  dtype = (_global('numpy', 'dtype') + _value((a.dtype.str[1:], 0, 1) if dtype_args is None else dtype_args) + b'R'
           + _value((3, a.dtype.str[0], None, None, None, -1, -1, 0)) + b'b')
  empty = _global('numpy.core.multiarray', '_reconstruct') + _global('numpy', 'ndarray') + _value((0,)) + _value('b')
  return empty + b'\x87R(' + _value(1) + _value(a.shape) + dtype + _value(False) + _value(a.tobytes()) + b'tb'


def _pickle(opcodes):
  return b'\x80\x02' + opcodes + b'.'


def _csr(state):
  """A pickled scipy CSR matrix with `state` (arrays and plain values), laid out as ind.cora.x is."""
  items = b''.join(_value(key) + (_array(v) if isinstance(v, np.ndarray) else _value(v))
                   for key, v in state.items())
  return _pickle(_global('scipy.sparse.csr', 'csr_matrix') + b')\x81}(' + items + b'ub')


def _state(folder, part):
  return dict(vars(planetoid.unpickle(str(folder / f'ind.cora.{part}'))))


@pytest.fixture
def cora_copy(tmp_path):
  """A writable copy of the Planetoid files of Cora, for a test to damage."""
  folder = tmp_path / 'cora'
  folder.mkdir()
  for name in os.listdir(CORA):
    if name.startswith('ind.cora.'):
      shutil.copyfile(os.path.join(CORA, name), folder / name)
  return folder


def _read_error(folder):
  with pytest.raises(DataError) as error:
    planetoid.read_planetoid(str(folder))
  return str(error.value)


def _edit_lines(edit):
  def damage(folder):
    lines = (folder / 'ind.cora.test.index').read_text().split('\n')[:-1]
    (folder / 'ind.cora.test.index').write_text('\n'.join(edit(lines)) + '\n')
  return damage


@needs_cora
@pytest.mark.parametrize('damage, message', [
    (_edit_lines(lambda lines: [lines[0], 'abc'] + lines[2:]), " line 2: 'abc' is not a node index"),
    (_edit_lines(lambda lines: ['99999'] + lines[1:]),
     ' names node 99999; the test nodes are 1708..2707, those of the rows of ind.cora.tx'),
    (_edit_lines(lambda lines: [lines[0], lines[0]] + lines[2:]), ' lists node 2692 more than once'),
    (_edit_lines(lambda lines: lines[:-1]), ' lists 999 test nodes, but ind.cora.tx has 1000 rows'),
], ids=['not-an-integer', 'out-of-range', 'repeated', 'one-short'])
def test_a_damaged_test_index_is_one_line_naming_it(cora_copy, damage, message):
  damage(cora_copy)
  assert _read_error(cora_copy) == f'{cora_copy}/ind.cora.test.index{message}'


def _edit_graph(edit):
  def damage(folder):
    graph = planetoid.unpickle(str(folder / 'ind.cora.graph'))
    (folder / 'ind.cora.graph').write_bytes(pickle.dumps(edit(graph), protocol=2))
  return damage


@needs_cora
@pytest.mark.parametrize('damage, message', [
    (_edit_graph(lambda g: {**g, '7': [1]}), ": key '7' is not a node index 0..2707"),
    (_edit_graph(lambda g: {**g, 2708: [1]}), ': key 2708 is not a node index 0..2707'),
    (_edit_graph(lambda g: {**g, 0: [1, -3]}), ': node 0 lists neighbour -3, not a node index 0..2707'),
    (_edit_graph(lambda g: {**g, 0: 5}), ': node 0 maps to 5, not a list of neighbours'),
    (_edit_graph(lambda g: list(g.items())), ' holds a list, not a dict of adjacency lists'),
], ids=['string-key', 'key-out-of-range', 'neighbour-out-of-range', 'not-a-list', 'not-a-dict'])
def test_a_damaged_adjacency_dict_is_one_line_naming_it(cora_copy, damage, message):
  damage(cora_copy)
  assert _read_error(cora_copy) == f'{cora_copy}/ind.cora.graph{message}'


def _edit_labels(part, edit):
  def damage(folder):
    labels = planetoid.unpickle(str(folder / f'ind.cora.{part}'))
    (folder / f'ind.cora.{part}').write_bytes(_pickle(_array(edit(labels))))
  return damage


def _widen_tx(folder):
  (folder / 'ind.cora.tx').write_bytes(_csr({**_state(folder, 'tx'), '_shape': (1000, 1500)}))


@needs_cora
@pytest.mark.parametrize('damage, message', [
    (_edit_labels('ally', lambda a: a[:-8]), 'ind.cora.ally has 1700 rows, but ind.cora.allx has 1708'),
    (_edit_labels('ty', lambda a: a[:, :6]), 'ind.cora.ty has 6 classes, but ind.cora.y has 7'),
    (_edit_labels('y', lambda a: a.argmax(1)),
     'ind.cora.y holds a (140,) int64 array, not a 2-D array of one-hot labels'),
    (_widen_tx, 'ind.cora.tx has 1500 columns, but ind.cora.x has 1433'),
], ids=['short-ally', 'fewer-classes', 'one-dimensional-labels', 'more-columns'])
def test_arrays_whose_shapes_disagree_are_one_line_naming_them(cora_copy, damage, message):
  damage(cora_copy)
  assert _read_error(cora_copy) == f'{cora_copy}/{message}'


def _edit_allx(edit):
  def damage(folder):
    state = _state(folder, 'allx')
    edit(state)
    (folder / 'ind.cora.allx').write_bytes(_csr(state))
  return damage


@needs_cora
@pytest.mark.parametrize('damage, message', [
    (_edit_allx(lambda s: s['indices'].__setitem__(5, 5000)), 'CSR column index 5000 is outside 0..1432'),
    (_edit_allx(lambda s: s['indices'].__setitem__(5, -1)), 'CSR column index -1 is outside 0..1432'),
    (_edit_allx(lambda s: s['indptr'].__setitem__(7, 10**6)),
     ('CSR indptr must rise from 0 to 31261 (the stored entries) in 1709 non-decreasing offsets, one per row and '
      'the end')),
    (_edit_allx(lambda s: s.update(data=s['data'][:-1])), 'CSR data has 31260 entries but indices has 31261'),
    (_edit_allx(lambda s: s.pop('indptr')), 'the CSR matrix lacks indptr'),
    (_edit_allx(lambda s: s.update(_shape=(1708, '1433'))), "CSR shape (1708, '1433') is not two sizes"),
], ids=['index-too-large', 'negative-index', 'indptr-decreasing', 'short-data', 'no-indptr', 'bad-shape'])
def test_a_damaged_csr_matrix_is_one_line_naming_it(cora_copy, damage, message):
  damage(cora_copy)
  assert _read_error(cora_copy) == f'{cora_copy}/ind.cora.allx: {message}'


_HUGE = (10**11,)  # float64: 745 GiB


@needs_cora
@pytest.mark.parametrize('opcodes, message', [
    (_global('numpy.core.multiarray', '_reconstruct') + _global('numpy', 'ndarray') + _value(_HUGE) + _value('f8')
     + b'\x87R', 'declares a 100000000000 float64 array (745.1 GiB), more than the whole file ({size} bytes)'),
    (_global('numpy._core.multiarray', '_reconstruct') + _global('numpy', 'ndarray') + _value((10**6, 7))
     + _value('i4') + b'\x87R', 'declares a 1000000x7 int32 array (26.7 MiB), more than the whole file ({size} bytes)'),
    (_global('numpy', 'ndarray') + _value((_HUGE, 'f8')) + b'R',
     'refusing to call numpy.ndarray directly; numpy pickles arrays through _reconstruct'),
], ids=['reconstruct-745GiB', 'reconstruct-numpy-2', 'ndarray-called'])
def test_an_array_larger_than_its_file_is_refused_before_it_is_allocated(cora_copy, opcodes, message):
  (cora_copy / 'ind.cora.y').write_bytes(_pickle(opcodes))
  message = message.format(size=len(_pickle(opcodes)))
  assert _read_error(cora_copy) == f'{cora_copy}/ind.cora.y: {message}'


@needs_cora
def test_features_too_large_for_memory_are_refused_before_they_are_made_dense(cora_copy, monkeypatch):
  for part in ('x', 'allx', 'tx'):
    state = _state(cora_copy, part)
    (cora_copy / f'ind.cora.{part}').write_bytes(_csr({**state, '_shape': (state['_shape'][0], 10**9)}))
  monkeypatch.setattr(planetoid, '_memory_bytes', lambda: 64 * 2**30, raising=False)
  assert _read_error(cora_copy) == (f'{cora_copy}/ind.cora.allx and ind.cora.tx: their dense features '
                                    "(2708x1000000000 float32, 9.9 TiB) would not fit in this machine's 64.0 GiB "
                                    'of memory')


@needs_cora
@pytest.mark.parametrize('dtype_args, message', [
    (('zz', 0, 1), "bad numpy.dtype arguments ('zz', 0, 1)"),
    ((), 'bad numpy.dtype arguments ()'),
    (('i4', 0, 1, 'x', 'y'), "bad numpy.dtype arguments ('i4', 0, 1, 'x', 'y')"),
    (('O8', 0, 1), 'refusing numpy dtype object; a Planetoid array holds booleans, integers or floats'),
], ids=['unknown-type', 'no-arguments', 'too-many-arguments', 'object'])
def test_bad_numpy_dtype_arguments_are_one_line_naming_the_file(cora_copy, dtype_args, message):
  y = planetoid.unpickle(str(cora_copy / 'ind.cora.y'))
  (cora_copy / 'ind.cora.y').write_bytes(_pickle(_array(y, dtype_args=dtype_args)))
  assert _read_error(cora_copy) == f'{cora_copy}/ind.cora.y: {message}'


def _renamed_in_the_stream(folder):
  for part in ('x', 'y', 'allx', 'ally', 'tx', 'ty'):
    raw = (folder / f'ind.cora.{part}').read_bytes()
    assert raw.count(b'cnumpy.core.multiarray\n') >= 1
    (folder / f'ind.cora.{part}').write_bytes(raw.replace(b'cnumpy.core.multiarray\n', b'cnumpy._core.multiarray\n'))


def _pickled_by_this_numpy(folder):
  import scipy.sparse
  for part in ('x', 'y', 'allx', 'ally', 'tx', 'ty'):
    value = planetoid.unpickle(str(folder / f'ind.cora.{part}'))
    if part.endswith('x'):
      value = scipy.sparse.csr_matrix((value.data, value.indices, value.indptr), shape=value._shape)
    raw = pickle.dumps(value)
    assert int(np.__version__.split('.')[0]) < 2 or b'numpy._core.multiarray' in raw
    (folder / f'ind.cora.{part}').write_bytes(raw)


@needs_cora
@pytest.mark.parametrize('repickle', [_renamed_in_the_stream, _pickled_by_this_numpy])
def test_arrays_pickled_with_numpy_2_names_load_equal_to_the_originals(cora_copy, repickle):
  repickle(cora_copy)
  ours, original = planetoid.read_planetoid(str(cora_copy)), planetoid.read_planetoid(CORA)
  for field in ('features', 'labels', 'senders', 'receivers'):
    np.testing.assert_array_equal(getattr(ours, field), getattr(original, field))
  assert ours.masks.keys() == original.masks.keys()
  for split in original.masks:
    np.testing.assert_array_equal(ours.masks[split], original.masks[split])


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
