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
import math
import os
import pickle
import reprlib
from typing import Any, Iterator, NamedTuple

import ml_collections
import numpy as np

from jaxlab.errors import ConfigError, DataError, first_line

Batch = dict[str, np.ndarray]
SPLITS = ('train', 'validation', 'test')


_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
_NUMBERS = 'biuf'  # the dtype kinds a Planetoid array may have: booleans, integers, floats


def _size(nbytes: int) -> str:
  """`nbytes` as a message shows it: '745.1 GiB'."""
  for unit, scale in (('TiB', 2**40), ('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if nbytes >= scale:
      return f'{nbytes / scale:.1f} {unit}'
  return f'{nbytes} bytes'


def _describe(obj: Any) -> str:
  return f'a {obj.shape} {obj.dtype} array' if isinstance(obj, np.ndarray) else f'a {type(obj).__name__}'


class _CSR:
  """The state of a pickled scipy.sparse.csr_matrix (data, indices, indptr, _shape), without scipy."""

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)


class _PlanetoidUnpickler(pickle.Unpickler):
  """Admits the few globals the Planetoid files name; any other is refused before it can run.

  numpy's constructors are admitted through checks that run before anything is allocated: an array
  only of a numeric dtype, and no larger than the file, since its bytes must follow in the file.
  """

  def __init__(self, path: str):
    self.path = path
    with open(path, 'rb') as f:
      raw = f.read()
    self.file_size = len(raw)
    super().__init__(io.BytesIO(raw), encoding='latin1')
    self.ndarray = self._ndarray  # one object, so that _reconstruct can tell it by identity
    self.allowed = {
        ('numpy', 'ndarray'): self.ndarray,
        ('numpy', 'dtype'): self._dtype,
        ('numpy.core.multiarray', '_reconstruct'): self._reconstruct,
        ('numpy._core.multiarray', '_reconstruct'): self._reconstruct,  # numpy 2's name for the same function
        ('scipy.sparse.csr', 'csr_matrix'): _CSR,
        ('scipy.sparse._csr', 'csr_matrix'): _CSR,
        ('collections', 'defaultdict'): collections.defaultdict,
        ('__builtin__', 'list'): list,
        ('builtins', 'list'): list,
    }

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self.allowed[(module, name)]
    except KeyError:
      raise DataError(f'{self.path}: refusing to unpickle {module}.{name}; a Planetoid file holds only numpy '
                      'arrays, CSR matrices and adjacency lists') from None

  def _ndarray(self, *args: Any) -> None:
    # numpy pickles an array as _reconstruct(ndarray, ...) and its state; calling ndarray itself would
    # allocate whatever shape the file names.
    raise DataError(f'{self.path}: refusing to call numpy.ndarray directly; numpy pickles arrays through '
                    '_reconstruct')

  def _dtype(self, *args: Any) -> np.dtype:
    try:
      dtype = np.dtype(*args)
    except Exception:  # noqa: BLE001 - numpy raises TypeError, ValueError and more for arguments it cannot read
      raise DataError(f'{self.path}: bad numpy.dtype arguments {reprlib.repr(args)}') from None
    if dtype.kind not in _NUMBERS:
      raise DataError(f'{self.path}: refusing numpy dtype {dtype}; a Planetoid array holds booleans, integers or '
                      'floats')
    return dtype

  def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's _reconstruct: an empty array for the state that follows to fill, once it is known to fit the file."""
    if subtype is not self.ndarray:
      raise DataError(f'{self.path}: refusing _reconstruct of anything but numpy.ndarray')
    dtype = self._dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else shape
    if not (isinstance(dims, tuple) and all(type(n) is int and n >= 0 for n in dims)):
      raise DataError(f'{self.path}: array shape {reprlib.repr(shape)} is not a tuple of sizes')
    nbytes = math.prod(dims) * dtype.itemsize
    if nbytes > self.file_size:
      raise DataError(f'{self.path}: declares a {"x".join(map(str, dims))} {dtype} array ({_size(nbytes)}), more '
                      f'than the whole file ({self.file_size} bytes)')
    return _NUMPY_RECONSTRUCT(np.ndarray, dims, dtype)


def _open(path: str) -> str:
  if not os.path.isfile(path):
    raise DataError(f'graph data file not found: {path}')
  return path


def unpickle(path: str) -> Any:
  """One Planetoid pickle, read with only its known globals admitted."""
  try:
    return _PlanetoidUnpickler(_open(path)).load()
  except DataError:
    raise
  except Exception as e:  # noqa: BLE001 - whatever a damaged stream makes pickle or numpy raise, the file's fault
    raise DataError(f'{path}: not a readable Planetoid pickle ({type(e).__name__}: {first_line(e)})') from None


class _Sparse(NamedTuple):
  """A CSR matrix checked to be one: row r's entries are data[indptr[r]:indptr[r + 1]], in columns indices[...]."""

  rows: int
  cols: int
  data: np.ndarray
  indices: np.ndarray  # int64
  indptr: np.ndarray  # int64


def _sparse(path: str) -> _Sparse:
  """The CSR matrix pickled at `path`, checked to describe a matrix of its shape."""
  matrix = unpickle(path)
  if not isinstance(matrix, _CSR):
    raise DataError(f'{path} holds {_describe(matrix)}, not a CSR feature matrix')
  state = vars(matrix)
  missing = [key for key in ('_shape', 'data', 'indices', 'indptr') if key not in state]
  if missing:
    raise DataError(f'{path}: the CSR matrix lacks {", ".join(missing)}')
  shape = state['_shape']
  if not (isinstance(shape, tuple) and len(shape) == 2 and all(type(n) is int and n >= 0 for n in shape)):
    raise DataError(f'{path}: CSR shape {reprlib.repr(shape)} is not two sizes')
  for key, kinds, what in (('data', _NUMBERS, 'numeric'), ('indices', 'iu', 'integer'), ('indptr', 'iu', 'integer')):
    if not (isinstance(state[key], np.ndarray) and state[key].ndim == 1 and state[key].dtype.kind in kinds):
      raise DataError(f'{path}: CSR {key} is {_describe(state[key])}, not a 1-D {what} array')
  (rows, cols), data = shape, state['data']
  indices, indptr = state['indices'].astype(np.int64), state['indptr'].astype(np.int64)
  if len(data) != len(indices):
    raise DataError(f'{path}: CSR data has {len(data)} entries but indices has {len(indices)}')
  if len(indptr) != rows + 1 or indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
    raise DataError(f'{path}: CSR indptr must rise from 0 to {len(indices)} (the stored entries) in {rows + 1} '
                    'non-decreasing offsets, one per row and the end')
  if len(indices) and (indices.min() < 0 or indices.max() >= cols):
    raise DataError(f'{path}: CSR column index {indices.min() if indices.min() < 0 else indices.max()} is outside '
                    f'0..{cols - 1}')
  return _Sparse(rows, cols, data, indices, indptr)


def _labels(path: str) -> np.ndarray:
  """The one-hot labels pickled at `path`: a 2-D numeric array."""
  labels = unpickle(path)
  if not (isinstance(labels, np.ndarray) and labels.ndim == 2 and labels.shape[1] and labels.dtype.kind in _NUMBERS):
    raise DataError(f'{path} holds {_describe(labels)}, not a 2-D array of one-hot labels')
  return labels


def _memory_bytes() -> int | None:
  """This machine's physical memory; None where the OS does not tell."""
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (AttributeError, ValueError, OSError):
    return None


def _dense(*matrices: _Sparse) -> np.ndarray:
  """The matrices stacked row-wise as one dense float32 matrix."""
  dense = np.zeros((sum(m.rows for m in matrices), matrices[0].cols), np.float32)
  start = 0
  for m in matrices:
    dense[start + np.repeat(np.arange(m.rows), np.diff(m.indptr)), m.indices] = m.data
    start += m.rows
  return dense


def _test_index(path: str, first: int, num_nodes: int, tx: str) -> np.ndarray:
  """The test nodes in file order: each of first..num_nodes-1 (the nodes of the rows of `tx`) once."""
  with open(_open(path), 'rb') as f:
    lines = f.read().splitlines()
  index = []
  for number, line in enumerate(lines, 1):
    if line.strip():
      try:
        index.append(int(line))
      except ValueError:
        raise DataError(f'{path} line {number}: {reprlib.repr(line.strip().decode("latin1"))} is not a node '
                        'index') from None
  if len(index) != num_nodes - first:
    raise DataError(f'{path} lists {len(index)} test nodes, but {tx} has {num_nodes - first} rows')
  outside = next((n for n in index if not first <= n < num_nodes), None)
  if outside is not None:
    raise DataError(f'{path} names node {outside}; the test nodes are {first}..{num_nodes - 1}, those of the '
                    f'rows of {tx}')
  counts = np.bincount(np.array(index) - first, minlength=num_nodes - first)
  if counts.max(initial=0) > 1:
    raise DataError(f'{path} lists node {first + counts.argmax()} more than once')
  return np.array(index)


def _edges(path: str, num_nodes: int) -> np.ndarray:
  """The (node, neighbour) pairs of the adjacency lists pickled at `path`."""
  adjacency = unpickle(path)
  if not isinstance(adjacency, dict):
    raise DataError(f'{path} holds {_describe(adjacency)}, not a dict of adjacency lists')
  is_node = lambda n: type(n) is int and 0 <= n < num_nodes
  pairs = []
  for node, others in adjacency.items():
    if not is_node(node):
      raise DataError(f'{path}: key {reprlib.repr(node)} is not a node index 0..{num_nodes - 1}')
    if not isinstance(others, list):
      raise DataError(f'{path}: node {node} maps to {reprlib.repr(others)}, not a list of neighbours')
    for other in others:
      if not is_node(other):
        raise DataError(f'{path}: node {node} lists neighbour {reprlib.repr(other)}, not a node index '
                        f'0..{num_nodes - 1}')
      pairs.append((node, other))
  return np.array(pairs, np.int64).reshape(-1, 2)


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
  path = lambda part: os.path.join(directory, f'ind.{name}.{part}')
  x, y, allx, ally, tx, ty = (_sparse(path(part)) if part.endswith('x') else _labels(path(part))
                              for part in ('x', 'y', 'allx', 'ally', 'tx', 'ty'))
  for features, labels, part in ((x, y, 'y'), (allx, ally, 'ally'), (tx, ty, 'ty')):
    if len(labels) != features.rows:
      raise DataError(f'{path(part)} has {len(labels)} rows, but ind.{name}.{part[:-1]}x has {features.rows}')
  for labels, part in ((ally, 'ally'), (ty, 'ty')):
    if labels.shape[1] != y.shape[1]:
      raise DataError(f'{path(part)} has {labels.shape[1]} classes, but ind.{name}.y has {y.shape[1]}')
  for features, part in ((allx, 'allx'), (tx, 'tx')):
    if features.cols != x.cols:
      raise DataError(f'{path(part)} has {features.cols} columns, but ind.{name}.x has {x.cols}')
  num_nodes, nbytes, memory = allx.rows + tx.rows, (allx.rows + tx.rows) * x.cols * 4, _memory_bytes()
  if memory and nbytes > memory:
    raise DataError(f'{path("allx")} and ind.{name}.tx: their dense features ({num_nodes}x{x.cols} float32, '
                    f'{_size(nbytes)}) would not fit in this machine\'s {_size(memory)} of memory')
  test_index = _test_index(path('test.index'), allx.rows, num_nodes, f'ind.{name}.tx')
  pairs = _edges(path('graph'), num_nodes)
  test_sorted = np.sort(test_index)
  features = _dense(allx, tx)
  labels = np.concatenate([ally, ty]).argmax(-1).astype(np.int32)
  # Row len(allx) + k of the stack is tx[k], test node test_index[k]: move it there (test_sorted[k] is that row).
  features[test_index], labels[test_index] = features[test_sorted].copy(), labels[test_sorted].copy()
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
