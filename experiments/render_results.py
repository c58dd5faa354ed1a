"""Renders every experiments/*/results.json into Markdown tables, so that no README number goes stale.

  python experiments/render_results.py                    # print the combined table
  python experiments/render_results.py --write [FOLDER ...]  # rewrite the blocks (named folders only, if given)
  python experiments/render_results.py --check            # exit 1 naming every file whose block is stale

Each folder's README holds its own table, docs/reproductions.md the combined one, and the repository's README the
entries marked `"headline": true`, each between the lines BEGIN and END below. Standalone (no jaxlab import): it
runs without the library's dependencies.
"""

import argparse
import json
import statistics
import sys
from decimal import Decimal
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parent
ROOT = EXPERIMENTS.parent
DOCS = ROOT / 'docs' / 'reproductions.md'
README = ROOT / 'README.md'
BEGIN, END = '<!-- results: begin -->', '<!-- results: end -->'
COLUMNS = ('result', 'metric', 'paper', 'ours', 'seeds', "within the paper's ±", 'commit')
NOTICE = '<!-- rendered from results.json by experiments/render_results.py --write: edit the JSON, not this table -->'


def parse_results(text: str) -> dict:
  """A results.json's content; its non-integers as Decimal, so that 100.00 keeps the two decimals it is given."""
  return json.loads(text, parse_float=Decimal)


def load_all(root: Path = EXPERIMENTS) -> dict[str, dict]:
  """{folder: its parsed results.json} for every folder of `root` that has one."""
  return {path.parent.name: parse_results(path.read_text()) for path in sorted(root.glob('*/results.json'))}


def _places(values: list) -> int:
  """The most decimals any of `values` is written with, at least one (the mean of counts is not a count)."""
  return max([1] + [-v.as_tuple().exponent for v in values if isinstance(v, Decimal)])


def _mean(entry: dict):
  """The mean of the per-seed values, else the README's reported mean, else None."""
  if entry['ours']:
    return statistics.mean(entry['ours'])
  return entry.get('reported_mean')


def ours_cell(entry: dict, with_note: bool = True) -> str:
  """Mean ± sample std at the per-seed values' precision (one value alone; the README's own mean ± std when it
  gives no per-seed list), or the accelerator config of a result not run here; then the entry's note."""
  values = entry['ours']
  if not entry['run_here']:
    text = f"not run here (needs an accelerator): `{entry['config']}`"
  elif len(values) == 1:
    text = f'{values[0]:.{_places(values)}f}'
  elif values:
    places = _places(values)
    text = f'{statistics.mean(values):.{places}f} ± {statistics.stdev(values):.{places}f}'
  else:
    # Both at the precision of the more precise, in case a JSON writer dropped a trailing zero (75.00 -> 75.0).
    mean, std = entry['reported_mean'], entry['reported_std']
    places = _places([mean, std])
    text = f'{mean:.{places}f} ± {std:.{places}f}'
  return f"{text} ({entry['note']})" if entry['note'] and with_note else text


def within_cell(entry: dict) -> str:
  """'yes' if |mean - paper| <= the paper's ±, 'no' if not, '—' without a ± or a mean to compare."""
  mean = _mean(entry)
  if entry['paper_error'] is None or entry['paper_value'] is None or mean is None:
    return '—'
  return 'yes' if abs(mean - entry['paper_value']) <= entry['paper_error'] else 'no'


def seeds_cell(seeds: list[int]) -> str:
  """'count: list', runs of four or more consecutive seeds as first–last."""
  if not seeds:
    return '—'
  runs: list[list[int]] = []
  for seed in seeds:
    if runs and seed == runs[-1][-1] + 1:
      runs[-1].append(seed)
    else:
      runs.append([seed])
  parts = [f'{run[0]}–{run[-1]}' if len(run) > 3 else ', '.join(map(str, run)) for run in runs]
  return f"{len(seeds)}: {', '.join(parts)}"


def paper_cell(entry: dict, with_note: bool = True) -> str:
  """The paper's value (± its error), then where it comes from."""
  value, error, note = entry['paper_value'], entry['paper_error'], entry['paper_note']
  text = '—' if value is None else str(value) if error is None else f'{value} ± {error}'
  return f'{text} ({note})' if note and with_note else text


def row(entry: dict) -> list[str]:
  """One table row of a results entry, in COLUMNS order."""
  return [entry['name'], entry['metric'], paper_cell(entry), ours_cell(entry), seeds_cell(entry['seeds']),
          within_cell(entry), entry['commit'] or '—']


def _table(header: list[str], rows: list[list[str]]) -> str:
  # A '|' inside a cell would end it.
  lines = [header, ['---'] * len(header), *rows]
  return '\n'.join('| ' + ' | '.join(cell.replace('|', '\\|') for cell in line) + ' |' for line in lines)


def folder_table(results: dict) -> str:
  """The Markdown table of one folder's results."""
  return _table(list(COLUMNS), [row(entry) for entry in results['results']])


def combined_table(all_results: dict[str, dict]) -> str:
  """One table of every folder's results, the folder and its paper named on its first row."""
  rows = []
  for folder, results in all_results.items():
    for i, entry in enumerate(results['results']):
      rows.append([f"`experiments/{folder}` ({results['paper']})" if i == 0 else '', *row(entry)])
  return _table(['folder', *COLUMNS], rows)


def headline_table(all_results: dict[str, dict]) -> str:
  """The entries marked `headline`, short: no notes (their folder's table has them), the folder linked."""
  rows = [[entry['name'], entry['metric'], ours_cell(entry, with_note=False), paper_cell(entry, with_note=False),
           seeds_cell(entry['seeds']).split(':')[0], f'[{folder}](experiments/{folder})']
          for folder, results in all_results.items() for entry in results['results'] if entry.get('headline')]
  return _table(['result', 'metric', 'ours', 'paper', 'seeds', 'folder'], rows)


def chosen_by_line(results: dict) -> str:
  """What chose the folder's settings (never the test set), as one line under its table."""
  return f"**What chose the settings:** {results['chosen_by']}"


def folder_block(results: dict) -> str:
  """The marked block of a folder README (whose heading names the paper)."""
  # Blank lines around each table, so that no line next to it is read as one of its rows.
  return '\n'.join([BEGIN, NOTICE, 'Ours: mean ± sample std over the seeds; commands in [run.sh](run.sh), numbers in '
                    '[results.json](results.json).', '', folder_table(results), '', chosen_by_line(results), '', END])


def combined_block(all_results: dict[str, dict]) -> str:
  """The marked block of docs/reproductions.md: the table, then what chose each folder's settings."""
  chosen = [f"- `experiments/{folder}`: {results['chosen_by']}" for folder, results in all_results.items()]
  return '\n'.join([BEGIN, NOTICE, '', combined_table(all_results), '', "What chose each folder's settings:", '',
                     *chosen, '', END])


def readme_block(all_results: dict[str, dict]) -> str:
  """The marked block of the repository's README."""
  return '\n'.join([BEGIN, NOTICE, '', headline_table(all_results), '', END])


def _after_first_paragraph(lines: list[str]) -> int:
  """The index of the line after the first paragraph under the first heading; a paragraph ending in ':' takes
  the block it introduces (a list, a table) with it, so that the table goes after both."""
  i = next(n for n, line in enumerate(lines) if line.startswith('#')) + 1
  while True:
    while i < len(lines) and not lines[i].strip():
      i += 1
    fenced = False
    while i < len(lines) and (fenced or lines[i].strip()):
      fenced ^= lines[i].lstrip().startswith('```')
      i += 1
    if i >= len(lines) or not lines[i - 1].rstrip().endswith(':'):
      return i


def replace_block(text: str, block: str) -> str:
  """`text` with its marked block replaced by `block`, or `block` inserted after the first paragraph."""
  if BEGIN in text:
    start = text.index(BEGIN)
    end = text.index(END, start) + len(END)
    return text[:start] + block + text[end:]
  lines = text.split('\n')
  i = _after_first_paragraph(lines)
  return '\n'.join(lines[:i] + ['', block] + lines[i:])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument('--write', nargs='*', metavar='FOLDER',
                    help='rewrite the blocks: of the FOLDERs given (experiments/ folders), else of every folder '
                         'with a results.json, of docs/reproductions.md and of README.md')
  mode.add_argument('--check', action='store_true', help='exit 1 if any block differs from what the JSON renders')
  args = parser.parse_args(argv)
  all_results = load_all()
  if args.write is None and not args.check:
    print(combined_table(all_results))
    return 0
  folders = [Path(name).name for name in args.write] if args.write else list(all_results)
  unknown = [name for name in folders if name not in all_results]
  if unknown:
    parser.error(f"no experiments/<folder>/results.json for: {', '.join(unknown)}")
  blocks = {EXPERIMENTS / name / 'README.md': folder_block(all_results[name]) for name in folders}
  if not args.write:
    blocks[DOCS] = combined_block(all_results)
    blocks[README] = readme_block(all_results)
  stale = [path for path, block in blocks.items() if replace_block(path.read_text(), block) != path.read_text()]
  for path in stale:
    if args.check:
      print(f'stale: {path.relative_to(ROOT)} (run python experiments/render_results.py --write)')
    else:
      path.write_text(replace_block(path.read_text(), blocks[path]))
      print(f'wrote {path.relative_to(ROOT)}')
  return 1 if args.check and stale else 0


if __name__ == '__main__':
  sys.exit(main())
