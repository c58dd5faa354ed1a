"""The package's wings import one way: no cycle, nothing from a higher layer, the run names no task.

Every import counts, also those inside functions (they run too, only later).
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'lib' / 'jaxlab'

# Lowest first. A module may import its own wing and the wings of lower layers only.
LAYERS = (
    ('errors',),
    ('config',),
    ('parallel',),
    ('observe',),
    ('optim',),
    ('models',),
    ('data',),
    ('tasks',),
    ('run',),
    ('evaluators', 'launch'),
    ('cli',),
)
# What the run may take from tasks: the registry and the interface, never a task by name.
RUN_SEES_OF_TASKS = {'jaxlab.tasks', 'jaxlab.tasks.base', 'jaxlab.tasks.state'}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _is_module(name: str) -> bool:
  relative = PACKAGE.parent.joinpath(*name.split('.'))
  return relative.with_suffix('.py').is_file() or (relative / '__init__.py').is_file()


def _type_checking_lines(tree: ast.AST) -> set[int]:
  lines = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and 'TYPE_CHECKING' in ast.unparse(node.test):
      lines.update(n.lineno for n in ast.walk(node) if hasattr(n, 'lineno'))
  return lines


def imports_of(source: str) -> set[str]:
  """The jaxlab modules a module's source imports (a name that is a submodule counts as that module)."""
  tree = ast.parse(source)
  skipped = _type_checking_lines(tree)
  found = set()
  for node in ast.walk(tree):
    if getattr(node, 'lineno', None) in skipped:
      continue
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.split('.')[0] == 'jaxlab')
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'jaxlab':
      for alias in node.names:
        full = f'{node.module}.{alias.name}'
        found.add(full if _is_module(full) else node.module)
  return found


def import_graph() -> dict[str, set[str]]:
  return {module_name(p): imports_of(p.read_text()) for p in sorted(PACKAGE.rglob('*.py'))}


def wing(module: str) -> str:
  return module.split('.')[1] if module.count('.') else ''


def layer(module: str) -> int:
  return next(i for i, wings in enumerate(LAYERS) if wing(module) in wings)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every import cycle, each once, as the modules along it (Tarjan's strongly connected components)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node: str) -> None:
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1 or node in graph.get(node, ()):
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def violations(graph: dict[str, set[str]]) -> list[str]:
  """'a -> b' for each import of a higher layer, of a sibling wing, or of a task by name from the run."""
  found = []
  for module, imported in graph.items():
    for target in sorted(imported):
      if target == 'jaxlab' or wing(target) == wing(module):
        continue
      upward = layer(target) > layer(module)
      sibling = layer(target) == layer(module)
      named_task = wing(module) == 'run' and wing(target) == 'tasks' and target not in RUN_SEES_OF_TASKS
      if upward or sibling or named_task:
        found.append(f'{module} -> {target}')
  return found


def test_every_wing_has_a_layer():
  assert {wing(m) for m in import_graph()} - {w for wings in LAYERS for w in wings} == {''}


def test_the_package_has_no_import_cycle():
  assert cycles(import_graph()) == []


def test_imports_point_down_the_layers():
  assert violations(import_graph()) == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
  # A made-up graph: the walkers must see what they are for, not only pass on today's tree.
  graph = {'jaxlab.optim': {'jaxlab.optim.pruning'}, 'jaxlab.optim.pruning': {'jaxlab.optim'},
           'jaxlab.tasks.gan': {'jaxlab.run.train'}, 'jaxlab.run.train': {'jaxlab.tasks.gan', 'jaxlab.tasks'},
           'jaxlab.tasks': set(), 'jaxlab.data.vision': {'jaxlab.models'}, 'jaxlab.models': set()}
  assert cycles(graph) == [['jaxlab.optim', 'jaxlab.optim.pruning'], ['jaxlab.run.train', 'jaxlab.tasks.gan']]
  assert violations(graph) == ['jaxlab.tasks.gan -> jaxlab.run.train', 'jaxlab.run.train -> jaxlab.tasks.gan']


@pytest.mark.parametrize('source, expected', [
    ('from jaxlab.run import train', {'jaxlab.run.train'}),
    ('from jaxlab.run.train import train', {'jaxlab.run.train'}),
    ('from jaxlab import config as config_lib', {'jaxlab.config'}),
    ('def f():\n  from jaxlab import parallel', {'jaxlab.parallel'}),
    ('import jaxlab.observe.metrics', {'jaxlab.observe.metrics'}),
    ('from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n  from jaxlab.run import train', set()),
])
def test_imports_are_read_where_they_are(source, expected):
  assert imports_of(source) == expected
