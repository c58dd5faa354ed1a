"""jaxlab's command line.

  python launch.py [train] --config=configs/mnist1d/cnn.py[:arg] [--config.a.b=value ...] [--workdir=DIR]
  python launch.py bench   --config=... [--bench_steps=N --bench_repeats=R] [--bench_replicas=8]
                           [--bench_against=model.propagation=dense,...]
  python launch.py sweep   --config=... [--config.a.b=value ...] [--workdir=DIR] [--parallel=N]
  python launch.py search  --config=... [--trials=20] [--parallel=N] [--metric=validation_accuracy] [--direction=maximize]
  python launch.py results SWEEP_WORKDIR [--metric=test_accuracy]
  python launch.py sample  --workdir=DIR [--prompt=TEXT --num_tokens=N --temperature=T --top_k=K --seed=S
                           --num_samples=M --checkpoint=newest|best]   (a language-model run)
  python launch.py sample  --workdir=DIR [--num=64 --seed=S --checkpoint=newest|best]   (a GAN or VAE run: a
                           grid of generated images in DIR/samples/)
  python launch.py attack  --workdir=DIR [--eps=0.1,0.2,0.3 --attacks=fgsm,pgd --pgd_steps=N --pgd_restarts=R]
                           [--num_examples=N]   (a classification run: accuracy under attack vs epsilon,
                           attack.json, attack.png)
  python launch.py explain --workdir=DIR [--split=test --num=16 --target=predicted|label --ig_steps=256
                           --methods=saliency,grad_x_input,integrated_gradients,smoothgrad --smoothgrad_samples=50]
                           (a classification run: attribution maps and their sanity check, explain.json, explain_*.png)
  python launch.py cv      --config=... [--folds=5] [--workdir=DIR]   (stratified k-fold cross-validation,
                           the folds as replicas of one program; cv.json, a mean ± std table)
  python launch.py tpu     --tpu=NAME --zone=ZONE [...] -- <launch.py arguments>   (see jaxlab/tpu.py)
  python launch.py slurm   [--nodes=N --gpus-per-node=G --time=T ...] -- <launch.py arguments>   (see jaxlab/slurm.py)

Multi-process runs: --coordinator_address/--num_processes/--process_id (or JAXLAB_* env vars);
on a Cloud TPU VM and inside a SLURM job step of several tasks the job is joined automatically.
"""

import os
import re
import sys
import traceback

from jaxlab.run import stop

PARENT_COMMANDS = ('sweep', 'search', 'results', 'tpu', 'slurm')  # they start runs and handle signals themselves
if __name__ == '__main__' and sys.argv[1:2] not in [[c] for c in PARENT_COMMANDS]:
  # First thing: from here on SIGTERM or a Ctrl-C during start-up exits 0 instead of a traceback.
  stop.install()

from absl import app, flags, logging  # noqa: E402 - after the handler, which must cover these imports too
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, 'configs', 'mnist1d', 'cnn.py')
COMMANDS = ('train', 'bench', 'sweep', 'search', 'results', 'sample', 'attack', 'explain', 'cv')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, `path.py` or `path.py:arg`.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config dir>-<config name>).')
_RESTART = flags.DEFINE_bool('restart', False, 'Move an existing run in --workdir aside and start over.')
_BENCH_STEPS = flags.DEFINE_integer('bench_steps', 2000, 'bench: timed steps per repeat.')
_BENCH_REPEATS = flags.DEFINE_integer('bench_repeats', 5, 'bench: repeats (the median is reported).')
_BENCH_REPLICAS = flags.DEFINE_integer(
    'bench_replicas', 0, 'bench: >0 times that many seeds as one vmapped run against as many separate runs.')
_BENCH_AGAINST = flags.DEFINE_list(
    'bench_against', [], 'bench: key=value overrides; times the config with them against the config without.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'sweep/search: runs at a time, each on its share of the CPU cores.')
_METRIC = flags.DEFINE_string('metric', None, 'sweep/results: the summary metric to show and plot (default '
                              'test_accuracy, else the runs\' first test metric); search: the one to tune (default '
                              'validation_accuracy).')
_TRIALS = flags.DEFINE_integer('trials', 20, 'search: trials the study should hold in the end.')
_DIRECTION = flags.DEFINE_enum('direction', None, ['maximize', 'minimize'],
                               'search: default minimize for a *loss metric, else maximize.')
_SEARCH_SEED = flags.DEFINE_integer('search_seed', 0, "search: the TPE sampler's seed.")
_PROMPT = flags.DEFINE_string('prompt', '\n', 'sample: the text to continue (default: a newline).')
_NUM_TOKENS = flags.DEFINE_integer('num_tokens', 500, 'sample: tokens to generate per sample.')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'sample: softmax temperature; 0 is greedy.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'sample: draw only from the k likeliest tokens (0: all).')
_SAMPLE_SEED = flags.DEFINE_integer('seed', 0, 'sample: the random seed; the same seed gives the same text.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'sample: how many texts.')
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'newest', ['newest', 'best'],
                                'sample: the newest checkpoint, or the best one kept by early stopping.')
_EPS = flags.DEFINE_list('eps', ['0.1', '0.2', '0.3'], 'attack: L-infinity radii (pixel units for images).')
_ATTACKS = flags.DEFINE_list('attacks', ['fgsm', 'pgd'], 'attack: methods (fgsm, pgd).')
_PGD_STEPS = flags.DEFINE_integer('pgd_steps', 100, 'attack: PGD steps.')
_PGD_RESTARTS = flags.DEFINE_integer('pgd_restarts', 1, 'attack: PGD random restarts.')
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 0, 'attack: the first N examples of each split, in whole '
                                     'evaluation batches (0: all).')
_SPLIT = flags.DEFINE_string('split', 'test', 'explain: the split whose first examples are explained.')
_NUM = flags.DEFINE_integer('num', 16, 'explain: how many examples; sample: how many images (a GAN or VAE run).')
_METHODS = flags.DEFINE_list('methods', ['saliency', 'grad_x_input', 'integrated_gradients', 'smoothgrad'],
                             'explain: attribution methods.')
_TARGET = flags.DEFINE_string('target', 'predicted', 'explain: the logit explained, the predicted class or the label.')
_IG_STEPS = flags.DEFINE_integer('ig_steps', 256, 'explain: integrated-gradients quadrature steps.')
_SMOOTHGRAD_SAMPLES = flags.DEFINE_integer('smoothgrad_samples', 50, 'explain: SmoothGrad noisy samples.')
_FOLDS = flags.DEFINE_integer('folds', 5, 'cv: number of folds k.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process: index of this process.')


def _fail(message: str, code: int = 2) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def _parse(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors (exit 2) instead of tracebacks."""
  if not any(a == '--config' or a.startswith('--config=') for a in argv[1:]):
    argv = [argv[0], f'--config={DEFAULT_CONFIG}', *argv[1:]]
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except Exception as e:  # noqa: BLE001 - an error inside the config file, or an override of a missing key
    inside = _config_file_frame(e, argv)
    if isinstance(e, AttributeError) and "has no attribute 'get_config'" in str(e):
      _fail('the config file defines no get_config(arg=None)')
    if inside is None and isinstance(e, (AttributeError, KeyError)):
      _fail(_unknown_key_message(str(e), argv))
    where = f' ({inside.filename}:{inside.lineno})' if inside else ''
    _fail(f'could not load the config{where}: {type(e).__name__}: {e}')
  path = config_flags.get_config_filename(flags.FLAGS['config']).partition(':')[0]
  if not os.path.isfile(path):
    _fail(f'config file not found: {path}')
  if not hasattr(_CONFIG.value, 'lock'):
    _fail(f'could not load config {path}')
  if len(rest) > 1 and rest[1] == 'results':
    if len(rest) != 3:
      _fail('usage: launch.py results SWEEP_WORKDIR [--metric=NAME]')
  elif len(rest) > 2 or (len(rest) == 2 and rest[1] not in COMMANDS):
    _fail(f'unknown command {" ".join(rest[1:])!r}; commands: {", ".join(COMMANDS + ("tpu", "slurm"))}')
  return rest


def _config_file_frame(error: BaseException, argv: list[str]) -> traceback.FrameSummary | None:
  """The innermost frame of the error's traceback that lies in the config file named in argv."""
  spec = next((b for a, b in zip(argv, argv[1:] + ['']) if a == '--config'), None) or next(
      (a[len('--config='):] for a in argv if a.startswith('--config=')), '')
  path = os.path.abspath(spec.partition(':')[0])
  frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == path]
  return frames[-1] if frames else None


def _unknown_key_message(error: str, argv: list[str]) -> str:
  names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", error)
  key = names[0] if names else error
  overrides = [a.split('=')[0][len('--config.'):] for a in argv if a.startswith('--config.')]
  full = next((o for o in overrides if key in o.split('.')), key)
  hint = re.search(r'Did you mean "([^"]+)"', error)
  return f'unknown config key {full!r}' + (f' (did you mean {hint.group(1)!r}?)' if hint else '')


def _workdir(prefix: str = '') -> str:
  """--workdir as given (an empty one is refused), else runs/<prefix><config dir>-<config name>."""
  from jaxlab.errors import ConfigError
  from jaxlab.launch.remote import default_workdir
  if _WORKDIR.value is None:
    return default_workdir(config_flags.get_config_filename(flags.FLAGS['config']), prefix)
  if not _WORKDIR.value.strip():
    raise ConfigError('--workdir is empty; give a directory, or leave the flag out for the default under runs/')
  return _WORKDIR.value


def main(argv: list[str]) -> None:
  from jaxlab.errors import JaxlabError
  command = argv[1] if len(argv) > 1 else 'train'
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 shows it
  try:
    if command in ('sweep', 'search', 'results'):  # parents of runs: they never start a JAX backend
      _sweep_or_results(command, argv)
      return
    if command == 'sample':
      _sample()
      return
    if command == 'attack':
      _attack()
      return
    if command == 'explain':
      _explain()
      return
    _run(command)
  except JaxlabError as e:
    _fail(str(e), e.exit_code)
  except KeyboardInterrupt:
    _fail('aborted by a second Ctrl-C; the newest checkpoint on disk is where the next run resumes', 130)


def _run(command: str) -> None:
  """train or bench in this process (one process of a multi-process job, if flags or the TPU VM say so)."""
  from jaxlab.parallel import distributed
  settings = distributed.resolve(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if settings is not None:
    stop.uninstall()  # jax.distributed relays SIGTERM to every process of the job itself
  distributed.initialize(settings)
  from jaxlab import parallel
  config = _CONFIG.value
  parallel.enable_compilation_cache()
  workdir = _workdir('cv-' if command == 'cv' else '') if command in ('train', 'cv') else None
  if command == 'bench':
    from jaxlab.evaluators import bench
    if _BENCH_AGAINST.value:
      bench.run_against(config, _BENCH_AGAINST.value, steps=_BENCH_STEPS.value, repeats=_BENCH_REPEATS.value)
    elif _BENCH_REPLICAS.value:
      bench.run_replicas(config, _BENCH_REPLICAS.value, repeats=_BENCH_REPEATS.value)
    else:
      bench.run(config, steps=_BENCH_STEPS.value, repeats=_BENCH_REPEATS.value)
    return
  import jax

  from jaxlab.run import train
  lead = jax.process_index() == 0  # every process of a multi-process job would print the same
  if lead:
    print(config, flush=True)
  if command == 'cv':
    from jaxlab.evaluators import cv
    report = cv.run(config, _FOLDS.value, workdir, restart=_RESTART.value)
    if lead:
      print(f'{report["folds"]}-fold cross-validation, step {report["step"]}:')
      print(cv.format_table(report))
      print(f'Saved {os.path.join(workdir, cv.RESULTS_FILE)}', flush=True)
    return
  summary = train.train(config, workdir, restart=_RESTART.value)
  if lead:
    print(train.format_summary(summary), flush=True)


def _sample() -> None:
  from jaxlab import parallel
  from jaxlab.errors import ConfigError
  from jaxlab.evaluators import sample
  if not _WORKDIR.value:
    raise ConfigError('sample needs --workdir, the run to sample from')
  parallel.enable_compilation_cache()
  if not sample.is_text_run(_WORKDIR.value):
    step, path = sample.images_from_workdir(_WORKDIR.value, _NUM.value, _SAMPLE_SEED.value, _CHECKPOINT.value)
    print(f'{_NUM.value} images | {_CHECKPOINT.value} checkpoint, step {step} | seed {_SAMPLE_SEED.value} | {path}')
    return
  step, texts = sample.from_workdir(_WORKDIR.value, _PROMPT.value, _NUM_TOKENS.value, _TEMPERATURE.value, _TOP_K.value,
                                    _SAMPLE_SEED.value, _NUM_SAMPLES.value, _CHECKPOINT.value)
  for i, text in enumerate(texts):
    print(f'--- sample {i + 1}/{len(texts)} | {_CHECKPOINT.value} checkpoint, step {step} | seed {_SAMPLE_SEED.value} ---')
    print(text, flush=True)


def _attack() -> None:
  from jaxlab import parallel
  from jaxlab.errors import ConfigError
  from jaxlab.evaluators import robustness
  if not _WORKDIR.value:
    raise ConfigError('attack needs --workdir, the classification run to attack')
  parallel.enable_compilation_cache()
  report = robustness.attack(_WORKDIR.value, robustness.parse_eps(_EPS.value), _ATTACKS.value, _PGD_STEPS.value,
                             _PGD_RESTARTS.value, num_examples=_NUM_EXAMPLES.value)
  print(f'Accuracy under attack, checkpoint of step {report["step"]}, '
        f'{"all" if not _NUM_EXAMPLES.value else f"the first {_NUM_EXAMPLES.value}"} examples per split '
        f'(PGD: {_PGD_STEPS.value} steps, {_PGD_RESTARTS.value} restart(s)):')
  print(robustness.format_table(report))
  print(f'Saved {os.path.join(_WORKDIR.value, robustness.RESULTS_FILE)} and {robustness.PLOT_FILE}', flush=True)


def _explain() -> None:
  from jaxlab import parallel
  from jaxlab.errors import ConfigError
  from jaxlab.evaluators import explain
  if not _WORKDIR.value:
    raise ConfigError('explain needs --workdir, the classification run to explain')
  parallel.enable_compilation_cache()
  report = explain.explain(_WORKDIR.value, _SPLIT.value, _NUM.value, _METHODS.value, _TARGET.value, _IG_STEPS.value,
                           _SMOOTHGRAD_SAMPLES.value)
  print(f'Attribution maps of {len(report["labels"])} {report["split"]} examples, checkpoint of step {report["step"]}, '
        f'target: the {report["target"]} class')
  print(explain.format_table(report))
  print(f'Saved {os.path.join(_WORKDIR.value, explain.RESULTS_FILE)} and '
        f'{", ".join(explain.plot_file(m) for m in report["methods"])}', flush=True)


def _sweep_or_results(command: str, argv: list[str]) -> None:
  from jaxlab.launch import results, search, sweep
  stop.uninstall()  # installed when the command came after the flags; the sweep handles signals itself
  spec = config_flags.get_config_filename(flags.FLAGS['config'])
  common = config_flags.get_override_values(flags.FLAGS['config'])
  launcher = (sys.executable, os.path.abspath(__file__))
  metric = _METRIC.value
  if command == 'sweep':
    workdir = _workdir('sweep-')
    failed = sweep.run(spec, workdir, common=common, parallel=_PARALLEL.value, launcher=launcher, metric=metric)
  elif command == 'search':
    workdir = _workdir('search-')
    metric = metric or 'validation_accuracy'
    direction = _DIRECTION.value or ('minimize' if metric.endswith('loss') else 'maximize')
    failed = search.run(spec, workdir, trials=_TRIALS.value, common=common, parallel=_PARALLEL.value,
                        launcher=launcher, metric=metric, direction=direction, seed=_SEARCH_SEED.value)
  else:
    workdir, failed = argv[2], 0
  # A search's sampled values are all different: a line plot per value would show nothing.
  is_search = os.path.exists(os.path.join(workdir, search.STUDY_FILE))
  print(results.write(workdir, metric, with_plot=not is_search), end='', flush=True)
  if failed:
    runs = 'sweep point(s)' if command == 'sweep' else 'trial(s)'
    _fail(f'{failed} {runs} failed (their logs are above); the others are in the table', 1)


if __name__ == '__main__':
  if sys.argv[1:2] in (['tpu'], ['slurm']):  # their own flags; what follows `--` is passed on untouched
    from jaxlab.launch import slurm, tpu
    sys.exit({'tpu': tpu, 'slurm': slurm}[sys.argv[1]].main(sys.argv[2:], root=HERE))
  app.run(main, flags_parser=_parse)
