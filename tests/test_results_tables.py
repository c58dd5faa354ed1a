"""experiments/*/results.json: present, well-formed, and rendered unchanged into the READMEs' tables."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

EXPERIMENTS = os.path.join(ROOT, 'experiments')
RENDER = os.path.join(EXPERIMENTS, 'render_results.py')
FOLDERS = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(EXPERIMENTS, '*', 'README.md')))
RESULTS = sorted(glob.glob(os.path.join(EXPERIMENTS, '*', 'results.json')))

NUMBER = (int, float)
ENTRY_KEYS = {'name': str, 'config': str, 'metric': str, 'higher_is_better': bool, 'paper_value': (*NUMBER, None),
              'paper_error': (*NUMBER, None), 'paper_note': str, 'ours': list, 'seeds': list, 'commit': str,
              'command': str, 'run_here': bool, 'note': str}


def _render_module():
  spec = importlib.util.spec_from_file_location('render_results', RENDER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _is(value, types) -> bool:
  # bool is an int to isinstance, and never a number here.
  types = types if isinstance(types, tuple) else (types,)
  if value is None:
    return None in types
  return isinstance(value, tuple(t for t in types if t is not None)) and (bool in types or not isinstance(value, bool))


@pytest.mark.parametrize('folder', FOLDERS)
def test_every_experiment_has_results_and_run_script(folder):
  path = os.path.join(EXPERIMENTS, folder)
  assert os.path.isfile(os.path.join(path, 'results.json')), f'experiments/{folder} has no results.json'
  run_sh = os.path.join(path, 'run.sh')
  assert os.path.isfile(run_sh) and os.access(run_sh, os.X_OK), f'experiments/{folder}/run.sh missing or not executable'
  with open(run_sh) as f:
    assert f.read().startswith('#!/usr/bin/env bash\nset -euo pipefail\n')


def test_rendered_tables_are_up_to_date():
  result = subprocess.run([sys.executable, RENDER, '--check'], capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('path', RESULTS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_results_json_follows_the_schema(path):
  with open(path) as f:
    results = json.load(f)
  assert results['folder'] == os.path.basename(os.path.dirname(path))
  assert isinstance(results['paper'], str) and results['paper']
  chosen_by = results.get('chosen_by')
  assert isinstance(chosen_by, str) and 'test set' in chosen_by, \
      f"{results['folder']}: 'chosen_by' must say what chose the settings, and what the test set chose"
  assert isinstance(results['results'], list) and results['results']
  for entry in results['results']:
    where = f"{results['folder']}: {entry.get('name')}"
    for key, types in ENTRY_KEYS.items():
      assert key in entry, f'{where}: no {key!r}'
      assert _is(entry[key], types), f'{where}: {key!r} is {entry[key]!r}'
    assert all(_is(v, NUMBER) for v in entry['ours']), where
    assert _is(entry.get('headline', False), bool), f'{where}: headline must be true or false'
    assert all(_is(s, int) for s in entry['seeds']), where
    if not entry['run_here']:
      assert entry['ours'] == [], f'{where}: not run here, yet has values'
    elif entry['ours']:
      assert len(entry['ours']) == len(entry['seeds']), f'{where}: {len(entry["ours"])} values for {entry["seeds"]}'
    else:
      assert _is(entry.get('reported_mean'), NUMBER) and _is(entry.get('reported_std'), NUMBER), where
      assert entry['note'] == 'per-seed values not in the README', where


def _entry(ours, paper_value=None, paper_error=None, **overrides):
  entry = dict(name='x', config='configs/x.py', metric='m', higher_is_better=True, paper_value=paper_value,
               paper_error=paper_error, paper_note='', ours=ours, seeds=list(range(len(ours))), commit='abc1234',
               command='python launch.py', run_here=True, note='')
  return {**entry, **overrides}


def test_renderer_mean_std_and_within_by_hand():
  render = _render_module()

  def rendered(entry: dict) -> list[str]:
    # Through JSON text, as the renderer reads results.json: the decimals are those written.
    text = json.dumps({'folder': 'f', 'paper': 'p', 'results': [entry]})
    return render.folder_table(render.parse_results(text)).splitlines()[2].split(' | ')

  # [1, 2, 3]: mean 2, sample std sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1 (the population std would be 0.8);
  # |2 - 2.5| = 0.5 <= 0.5, |2 - 3.6| = 1.6 > 0.5.
  ours, paper, seeds, within = 3, 2, 4, 5
  cells = rendered(_entry([1.0, 2.0, 3.0], paper_value=2.5, paper_error=0.5))
  assert (cells[ours], cells[paper], cells[seeds], cells[within]) == ('2.0 ± 1.0', '2.5 ± 0.5', '3: 0, 1, 2', 'yes')
  assert rendered(_entry([1.0, 2.0, 3.0], paper_value=3.6, paper_error=0.5))[within] == 'no'
  assert rendered(_entry([1.0, 2.0, 3.0], paper_value=2.5))[within] == '—'
  # Integers get one decimal: mean 94.33, std sqrt((1.67^2 + 0.67^2 + 2.33^2) / 2) = sqrt(4.33) = 2.08.
  assert rendered(_entry([96, 95, 92]))[ours] == '94.3 ± 2.1'
  # The values' own two decimals (0.95 0.99 0.83: mean 0.9233, std sqrt((.0267^2 + .0667^2 + .0933^2) / 2) =
  # 0.0833), trailing zeros included; one value alone has no std.
  assert rendered(_entry([0.95, 0.99, 0.83]))[ours] == '0.92 ± 0.08'
  text = '{"folder": "f", "paper": "p", "results": [%s]}' % json.dumps(_entry([0, 0, 0])).replace(
      '"ours": [0, 0, 0]', '"ours": [100.00, 100.00, 100.00]')
  assert render.folder_table(render.parse_results(text)).splitlines()[2].split(' | ')[ours] == '100.00 ± 0.00'
  assert rendered(_entry([23.8]))[ours] == '23.8'
  # No per-seed list: the README's mean ± std; within is judged on that mean (|81.49 - 81.5| <= 0.7).
  reported = _entry([], paper_value=81.5, paper_error=0.7, reported_mean=81.49, reported_std=0.58, seeds=[0, 1],
                    note='per-seed values not in the README')
  cells = rendered(reported)
  assert (cells[ours], cells[within]) == ('81.49 ± 0.58 (per-seed values not in the README)', 'yes')
  assert rendered(_entry([], run_here=False, config='configs/big.py'))[ours] == \
      'not run here (needs an accelerator): `configs/big.py`'
  assert rendered(_entry(list(range(12)), seeds=list(range(12))))[seeds] == '12: 0–11'


def test_the_readme_table_holds_only_headline_entries_without_notes():
  render = _render_module()
  text = json.dumps({'folder': 'f', 'paper': 'p', 'results': [
      _entry([1.0, 3.0], paper_value=2.5, paper_note='Table 1', note='a long caveat', headline=True, name='shown'),
      _entry([5.0], name='hidden')]})
  lines = render.headline_table({'f': render.parse_results(text)}).splitlines()
  assert len(lines) == 3  # header, rule, the one headline entry
  assert lines[2] == '| shown | m | 2.0 ± 1.4 | 2.5 | 2 | [f](experiments/f) |'  # std of 1, 3: sqrt(2) = 1.4


def test_write_replaces_the_block_or_inserts_it_after_the_first_paragraph():
  render = _render_module()
  block = f'{render.BEGIN}\nnew\n{render.END}'
  readme = '# Title\n\nIntro that introduces:\n\n- a list\n\nMore.\n'
  inserted = render.replace_block(readme, block)
  assert inserted == f'# Title\n\nIntro that introduces:\n\n- a list\n\n{block}\n\nMore.\n'
  assert render.replace_block(inserted, block) == inserted
  assert render.replace_block(inserted.replace('new', 'old'), block) == inserted


def test_each_folder_says_what_chose_its_settings_under_its_table_and_in_the_docs():
  render = _render_module()
  results = {'f': render.parse_results(json.dumps(
      {'folder': 'f', 'paper': 'p', 'chosen_by': 'a validation sweep; the test set chose nothing.',
       'results': [_entry([1.0])]}))}
  lines = render.folder_block(results['f']).splitlines()
  table_end = max(i for i, line in enumerate(lines) if line.startswith('|'))
  assert lines[table_end + 2] == '**What chose the settings:** a validation sweep; the test set chose nothing.'
  assert '- `experiments/f`: a validation sweep; the test set chose nothing.' in render.combined_block(results)
