"""nanoGPT's own CPU run of Shakespeare-char against jaxlab's configs/shakespeare_char/gpt.py, one after the other.

  python experiments/nanogpt_shakespeare_char/bench_vs_nanogpt.py --nanogpt=PATH --torch_python=PYTHON [--repeats=1]
      [--jaxlab_xla_flags=FLAGS]   # also times jaxlab with XLA_FLAGS=FLAGS, a third side

PATH is a checkout of github.com/karpathy/nanoGPT (unmodified); PYTHON an interpreter with torch and
numpy (nanoGPT's requirements). nanoGPT's data/shakespeare_char/prepare.py downloads the text, which
this machine cannot: the same files (train.bin, val.bin as uint16 ids of the sorted characters, the
first 90 % for training; meta.pkl) are written here from $JAXLAB_DATA_DIR/tinyshakespeare/input.txt
into a temporary copy of the checkout. nanoGPT runs the command of its README's "I only have a macbook"
section (4 layers, 4 heads, width 128, context 64, batch 12, 2000 iterations, dropout 0, CPU, no
torch.compile); jaxlab runs `launch.py --config configs/shakespeare_char/gpt.py`, the same shapes and
protocol. Each side is a fresh process timed whole (start-up, compilation, evaluations, checkpoints);
repeats alternate which goes first. Prints each side's wall time and final validation loss, the
medians and jaxlab time / nanoGPT time.
"""

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NANOGPT_CPU_COMMAND = ['train.py', 'config/train_shakespeare_char.py', '--device=cpu', '--compile=False',
                       '--eval_iters=20', '--log_interval=1', '--block_size=64', '--batch_size=12', '--n_layer=4',
                       '--n_head=4', '--n_embd=128', '--max_iters=2000', '--lr_decay_iters=2000', '--dropout=0.0']


def write_nanogpt_data(text_path: str, folder: str) -> None:
  """train.bin, val.bin and meta.pkl as nanoGPT's prepare.py would write them from the same text."""
  with open(text_path) as f:
    text = f.read()
  symbols = sorted(set(text))
  index = {s: i for i, s in enumerate(symbols)}
  ids = np.array([index[s] for s in text], np.uint16)
  split = int(len(text) * 0.9)
  os.makedirs(folder, exist_ok=True)
  ids[:split].tofile(os.path.join(folder, 'train.bin'))
  ids[split:].tofile(os.path.join(folder, 'val.bin'))
  with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:
    pickle.dump({'vocab_size': len(symbols), 'itos': dict(enumerate(symbols)), 'stoi': index}, f)


def timed(command: list[str], cwd: str, env: dict[str, str] | None = None) -> tuple[float, str]:
  began = time.perf_counter()
  done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
  seconds = time.perf_counter() - began
  if done.returncode:
    sys.exit(f'{" ".join(command[:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}')
  return seconds, done.stdout


def run_nanogpt(checkout: str, torch_python: str) -> tuple[float, float]:
  seconds, out = timed([torch_python, *NANOGPT_CPU_COMMAND], checkout)
  losses = re.findall(r'step (\d+): train loss [\d.]+, val loss ([\d.]+)', out)
  return seconds, float(losses[-1][1])


def run_jaxlab(workdir: str, xla_flags: str = '') -> tuple[float, float]:
  shutil.rmtree(workdir, ignore_errors=True)
  env = {**os.environ, 'XLA_FLAGS': xla_flags} if xla_flags else None
  seconds, _ = timed([sys.executable, os.path.join(ROOT, 'launch.py'), '--config',
                      os.path.join(ROOT, 'configs', 'shakespeare_char', 'gpt.py'), '--workdir', workdir], ROOT, env)
  with open(os.path.join(workdir, 'summary.json')) as f:
    return seconds, json.load(f)['validation_loss']


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--nanogpt', required=True, help='a checkout of github.com/karpathy/nanoGPT')
  parser.add_argument('--torch_python', required=True, help='a Python with torch and numpy')
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--jaxlab_xla_flags', default='', help='also time jaxlab with these XLA_FLAGS')
  args = parser.parse_args()
  text = os.path.join(os.environ.get('JAXLAB_DATA_DIR', ''), 'tinyshakespeare', 'input.txt')
  if not os.path.exists(text):
    sys.exit(f'needs {text}: set JAXLAB_DATA_DIR to the folder holding tinyshakespeare/input.txt')
  flagged = f'jaxlab with XLA_FLAGS={args.jaxlab_xla_flags}'
  results = {'nanoGPT': [], 'jaxlab': [], **({flagged: []} if args.jaxlab_xla_flags else {})}
  with tempfile.TemporaryDirectory() as root:
    checkout = os.path.join(root, 'nanoGPT')
    shutil.copytree(args.nanogpt, checkout, ignore=shutil.ignore_patterns('.git'))
    write_nanogpt_data(text, os.path.join(checkout, 'data', 'shakespeare_char'))
    sides = {'nanoGPT': lambda: run_nanogpt(checkout, args.torch_python),
             'jaxlab': lambda: run_jaxlab(os.path.join(root, 'jaxlab-run'))}
    if args.jaxlab_xla_flags:
      sides[flagged] = lambda: run_jaxlab(os.path.join(root, 'jaxlab-run'), args.jaxlab_xla_flags)
    for r in range(args.repeats):
      for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
        results[name].append(sides[name]())
        print(f'repeat {r + 1}: {name} {results[name][-1][0]:.1f} s, validation loss {results[name][-1][1]:.4f}',
              flush=True)
  median = {name: statistics.median(s for s, _ in runs) for name, runs in results.items()}
  for name in list(results)[1:]:
    print(f'median wall time: nanoGPT {median["nanoGPT"]:.1f} s, {name} {median[name]:.1f} s; '
          f'{name} time / nanoGPT time = {median[name] / median["nanoGPT"]:.2f}')


if __name__ == '__main__':
  main()
