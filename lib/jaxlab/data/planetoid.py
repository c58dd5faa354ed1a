"""Citation graphs for node classification: the Planetoid split (Yang et al. 2016) of Cora.

`read_planetoid` reads the `ind.<name>.*` files the GCN and GAT papers used (Python 2 pickles,
opened by an unpickler that admits only the numpy arrays, CSR matrices and adjacency lists they
hold); `read_linqs` reads the LINQS text files (`<name>.content`, `<name>.cites`) of the same
graph. Both give a `Graph`: binary features, labels, undirected edges (both directions, no
self-loops, no duplicates) and, from the Planetoid files, the split masks (140 train, 500
validation, 1,000 test nodes on Cora).

The source serves the whole graph as every batch (full-batch training): features as the
coordinates and values of their nonzero entries, row-normalised as the papers did, so that
dropout touches only the ~49k nonzeros and not the 2708 x 1433 dense matrix.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
from typing import Any, Iterator

import ml_collections
import numpy as np

from jaxlab.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]
SPLITS = ('train', 'validation', 'test')


class _CSR:
  """The state of a pickled scipy.sparse.csr_matrix (data, indices, indptr, _shape), without scipy."""

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)

  def toarray(self) -> np.ndarray:
    dense = np.zeros(self._shape, np.float32)
    rows = np.repeat(np.arange(self._shape[0]), np.diff(self.indptr))
    dense[rows, self.indices] = self.data
    return dense


class _PlanetoidUnpickler(pickle.Unpickler):
  """Admits the few globals the Planetoid files name; any other is refused before it can run."""

  ALLOWED = {
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
      ('numpy.core.multiarray', '_reconstruct'): np.ndarray.__reduce__(np.zeros(0))[0],
      ('scipy.sparse.csr', 'csr_matrix'): _CSR,
      ('scipy.sparse._csr', 'csr_matrix'): _CSR,
      ('collections', 'defaultdict'): collections.defaultdict,
      ('__builtin__', 'list'): list,
      ('builtins', 'list'): list,
  }

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self.ALLOWED[(module, name)]
    except KeyError:
      raise DataError(f'{self.path}: refusing to unpickle {module}.{name}; a Planetoid file holds only numpy '
                      'arrays, CSR matrices and adjacency lists') from None

  def __init__(self, path: str):
    self.path = path
    with open(path, 'rb') as f:
      super().__init__(io.BytesIO(f.read()), encoding='latin1')


def _open(path: str) -> str:
  if not os.path.isfile(path):
    raise DataError(f'graph data file not found: {path}')
  return path


def unpickle(path: str) -> Any:
  """One Planetoid pickle, read with only its known globals admitted."""
  try:
    return _PlanetoidUnpickler(_open(path)).load()
  except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
    raise DataError(f'{path}: not a readable Planetoid pickle ({e})') from None


@dataclasses.dataclass(frozen=True)
class Graph:
  """An undirected graph with node features and labels; `masks` select each split's nodes."""

  features: np.ndarray  # (nodes, features) float32, binary as read
  labels: np.ndarray  # (nodes,) int32
  senders: np.ndarray  # (edges,) int32; every undirected edge in both directions
  receivers: np.ndarray
  masks: dict[str, np.ndarray]  # split -> (nodes,) bool

  @property
  def num_nodes(self) -> int:
    return len(self.labels)


def undirected_edges(pairs: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
  """(senders, receivers) with each edge of `pairs` in both directions, self-loops and repeats dropped."""
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  both = np.concatenate([pairs, pairs[:, ::-1]])
  both = both[both[:, 0] != both[:, 1]]
  codes = np.unique(both[:, 0] * num_nodes + both[:, 1])
  return (codes // num_nodes).astype(np.int32), (codes % num_nodes).astype(np.int32)


def read_planetoid(directory: str, name: str = 'cora') -> Graph:
  """The Planetoid files of `name`, ordered as the GCN code orders them (test nodes at their index)."""
  load = lambda part: unpickle(os.path.join(directory, f'ind.{name}.{part}'))
  x, y, allx, ally, tx, ty, adjacency = (load(p) for p in ('x', 'y', 'allx', 'ally', 'tx', 'ty', 'graph'))
  with open(_open(os.path.join(directory, f'ind.{name}.test.index'))) as f:
    test_index = np.array([int(line) for line in f if line.strip()])
  test_sorted = np.sort(test_index)
  features = np.concatenate([allx.toarray(), tx.toarray()])
  labels = np.concatenate([ally, ty]).argmax(-1).astype(np.int32)
  # Row len(allx) + k of the stack is tx[k], test node test_index[k]: move it there (test_sorted[k] is that row).
  features[test_index], labels[test_index] = features[test_sorted].copy(), labels[test_sorted].copy()
  num_nodes = len(labels)
  if adjacency and max(adjacency) >= num_nodes:
    raise DataError(f'{directory}/ind.{name}.graph names node {max(adjacency)} of a graph with {num_nodes} nodes')
  pairs = np.array([(node, other) for node, others in adjacency.items() for other in others])
  senders, receivers = undirected_edges(pairs, num_nodes)
  masks = {split: np.zeros(num_nodes, bool) for split in SPLITS}
  masks['train'][:len(y)] = True
  masks['validation'][len(y):len(y) + 500] = True
  masks['test'][test_sorted] = True
  return Graph(features, labels, senders, receivers, masks)


def read_linqs(directory: str, name: str = 'cora') -> tuple[Graph, list[str]]:
  """The LINQS text files: the graph (no split masks) and the class names, in sorted order."""
  content = np.loadtxt(_open(os.path.join(directory, f'{name}.content')), dtype=str)
  ids = {paper: i for i, paper in enumerate(content[:, 0])}
  classes = sorted(set(content[:, -1]))
  labels = np.searchsorted(classes, content[:, -1]).astype(np.int32)
  cites = np.loadtxt(_open(os.path.join(directory, f'{name}.cites')), dtype=str)
  unknown = sorted(set(cites.ravel()) - ids.keys())
  if unknown:
    raise DataError(f'{directory}/{name}.cites names {len(unknown)} paper(s) not in {name}.content, e.g. {unknown[0]}')
  pairs = np.vectorize(ids.__getitem__)(cites)
  senders, receivers = undirected_edges(pairs, len(ids))
  return Graph(content[:, 1:-1].astype(np.float32), labels, senders, receivers, {}), classes


def sparse_features(features: np.ndarray) -> Batch:
  """The nonzero entries of the row-normalised features (each node's sum 1, as in the GCN and GAT code)."""
  rows, cols = np.nonzero(features)
  sums = features.sum(1)
  values = features[rows, cols] / sums[rows]
  return {'feature_rows': rows.astype(np.int32), 'feature_cols': cols.astype(np.int32),
          'feature_values': values.astype(np.float32)}


@dataclasses.dataclass
class GraphSource:
  """One graph served whole: every training batch and each split's one evaluation batch.

  `full_batch`: the batch is the same for every step and seed, so the loop replicates it on every
  device and replicas share it instead of stacking copies.
  """

  graph: Graph
  full_batch = True

  def __post_init__(self):
    self._arrays = {**sparse_features(self.graph.features), 'senders': self.graph.senders,
                    'receivers': self.graph.receivers, 'y': self.graph.labels}

  @property
  def num_classes(self) -> int:
    return int(self.graph.labels.max()) + 1

  @property
  def num_features(self) -> int:
    return self.graph.features.shape[1]

  @property
  def eval_splits(self) -> list[str]:
    return ['validation', 'test']

  def batch(self, split: str) -> Batch:
    return {**self._arrays, 'mask': self.graph.masks[split].astype(np.float32)}

  def example_batch(self) -> Batch:
    return self.batch('train')

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    del start_step  # the whole graph every step
    batch = self.batch('train')
    while True:
      yield batch

  def eval_batches(self, split: str) -> Iterator[Batch]:
    yield self.batch(split)


def check(cfg: ml_collections.ConfigDict) -> None:
  if (cfg.batch_size, cfg.eval_batch_size) != (1, 1):
    raise ConfigError('data.batch_size and data.eval_batch_size count whole graphs and must be 1 (full-batch), '
                      f'got {cfg.batch_size} and {cfg.eval_batch_size}')


def load(cfg: ml_collections.ConfigDict) -> GraphSource:
  """data.name='planetoid': `data.dataset` (cora) from `data.path` (default $JAXLAB_DATA_DIR/<dataset>)."""
  check(cfg)
  directory = cfg.path or os.path.join(os.environ.get('JAXLAB_DATA_DIR', ''), cfg.dataset)
  if not cfg.path and not os.environ.get('JAXLAB_DATA_DIR'):
    raise ConfigError('data.path is empty and JAXLAB_DATA_DIR is not set; point either at the folder of the '
                      f'ind.{cfg.dataset}.* files')
  return GraphSource(read_planetoid(directory, cfg.dataset))
