"""Language models: text data, causal and cached decoding, sampling, masking, metrics, resume."""

import json
import math
import os
import re
import shutil
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA_DIR, launch, needs_data, tiny_config, tiny_lm_config, write_corpus

from jaxlab import config as config_lib
from jaxlab.data import text
from jaxlab.errors import ConfigError
from jaxlab.evaluators import sample
from jaxlab.models import decoding
from jaxlab.models.rnn import RNNLM
from jaxlab.models.transformer import GPT
from jaxlab.run import train
from jaxlab.tasks.language_model import LanguageModel
from jaxlab.tasks.masked_lm import mask_tokens

SHAKESPEARE = os.path.join(DATA_DIR, 'tinyshakespeare', 'input.txt')
V = 11
MODELS = {'gpt': GPT(vocab_size=V, block_size=12, num_layers=2, num_heads=2, width=16),
          'lstm': RNNLM(vocab_size=V, cell='lstm', hidden=16),
          'gru': RNNLM(vocab_size=V, cell='gru', hidden=16, num_layers=1)}


def _params(model, length=12):
  return model.init(jax.random.PRNGKey(1), jnp.zeros((1, length), jnp.int32))['params']


def _tokens(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, shape), jnp.int32)


def _source(corpus, seed=0, workdir=None, **overrides):
  return text.load(tiny_lm_config(corpus, **overrides).data, seed, workdir)


# --- text data ---------------------------------------------------------------------------------

def test_char_and_byte_vocabularies_round_trip():
  chars = text.Vocabulary.from_text('char', 'hello world')
  assert chars.symbols == ' dehlorw' and chars.size == 8
  np.testing.assert_array_equal(chars.encode('hello'), [3, 2, 4, 4, 5])
  assert chars.decode(chars.encode('world hello')) == 'world hello'
  utf8 = text.Vocabulary('byte')
  assert utf8.size == 256
  np.testing.assert_array_equal(utf8.encode('hé'), [104, 0xC3, 0xA9])
  assert utf8.decode(utf8.encode('naïve ☃')) == 'naïve ☃'
  with pytest.raises(ConfigError, match="'xz' are not in the vocabulary"):
    chars.encode('hex z')


@needs_data('tinyshakespeare/input.txt')
def test_tiny_shakespeare_split_is_nanogpts():
  config = config_lib.load(os.path.join(os.path.dirname(__file__), '..', 'configs', 'shakespeare_char', 'gpt.py'))
  source = text.load(config.data, 0)
  assert len(source.tokens['train']) == 1_003_854 and len(source.tokens['validation']) == 111_540
  assert source.vocab.size == 65 and source.vocab.symbols[:2] == '\n '
  assert source.vocab.decode(source.tokens['train'][:14]) == 'First Citizen:'


def test_training_windows_are_a_function_of_seed_and_step(corpus):
  source = _source(corpus)
  raw = open(corpus).read()
  from_zero, from_seven = source.train_batches(0), source.train_batches(7)
  batches = [next(from_zero) for _ in range(8)]
  resumed = next(from_seven)
  for key in ('x', 'y', 'offset'):
    np.testing.assert_array_equal(batches[7][key], resumed[key])
  assert not np.array_equal(batches[0]['offset'], batches[1]['offset'])
  other_seed = next(_source(corpus, seed=1).train_batches(7))
  assert not np.array_equal(other_seed['offset'], resumed['offset'])
  for x, y, offset in zip(resumed['x'], resumed['y'], resumed['offset']):  # the corpus text, shifted by one
    assert source.vocab.decode(x) == raw[offset:offset + 16] and source.vocab.decode(y) == raw[offset + 1:offset + 17]


def test_evaluation_reads_the_same_padded_windows_for_every_seed(corpus):
  a, b = _source(corpus, seed=0), _source(corpus, seed=5)
  batches = list(a.eval_batches('validation'))
  assert len(batches) == 2 and [int(m.sum()) for m in (x['mask'] for x in batches)] == [20, 20]
  for x, y in zip(batches, b.eval_batches('validation')):
    np.testing.assert_array_equal(x['x'], y['x'])
  offsets = np.concatenate([x['offset'] for x in batches])
  assert offsets[0] == 0 and offsets[-1] == len(a.tokens['validation']) - 17  # spread over the whole split
  assert np.all(np.diff(offsets) > 0)


@pytest.mark.parametrize('content, vocabulary, message', [
    (None, 'char', 'text corpus not found: {path}'),
    (b'', 'char', 'the text corpus {path} is empty'),
    (b'short text', 'char', 'has 9 tokens, fewer than one window of data.block_size \\+ 1 = 17'),
    (b'caf\xe9 ' * 50, 'char', 'is not UTF-8 text \\(byte 3'),
])
def test_bad_corpora_are_one_line_errors(tmp_path, content, vocabulary, message):
  path = tmp_path / 'corpus.txt'
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(ConfigError, match=message.format(path=path)):
    _source(str(path), **{'data.vocabulary': vocabulary})


def test_byte_vocabulary_reads_any_file(tmp_path):
  path = tmp_path / 'latin1.txt'
  path.write_bytes(b'caf\xe9 ' * 50)
  source = _source(str(path), **{'data.vocabulary': 'byte'})
  assert source.num_classes == 256 and source.tokens['train'][3] == 0xE9


def test_a_missing_corpus_through_launch_is_one_line_and_exit_2(tmp_path):
  proc = launch('--config', 'configs/shakespeare_char/gpt.py', f'--workdir={tmp_path / "run"}',
                f'--config.data.path={tmp_path / "nothing.txt"}')
  assert proc.returncode == 2
  assert proc.stderr.strip() == f'error: text corpus not found: {tmp_path / "nothing.txt"}'


def test_the_saved_vocabulary_is_reused_and_checked(tmp_path, corpus):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  first = _source(corpus, workdir=str(workdir))
  saved = json.loads((workdir / text.VOCABULARY_FILE).read_text())
  assert saved == {'kind': 'char', 'symbols': ''.join(sorted(set(open(corpus).read())))}
  fewer = tmp_path / 'fewer.txt'
  fewer.write_text(open(corpus).read().replace('z', 'y'))  # a vocabulary built from it would shift every id after 'y'
  again = _source(str(fewer), workdir=str(workdir))
  assert again.vocab == first.vocab and again.num_classes == first.num_classes
  more = tmp_path / 'more.txt'
  more.write_text(open(corpus).read() + 'Q')
  with pytest.raises(ConfigError, match="holds characters 'Q' that are not in the vocabulary saved"):
    _source(str(more), workdir=str(workdir))


# --- models and decoding -----------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(MODELS))
def test_changing_a_later_token_leaves_earlier_logits_unchanged(name):
  model = MODELS[name]
  params = _params(model)
  tokens = _tokens((2, 12))
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % V)
  forward = jax.jit(model.apply)
  a, b = forward({'params': params}, tokens), forward({'params': params}, changed)
  np.testing.assert_array_equal(a[:, :7], b[:, :7])
  assert np.abs(a[:, 7:] - b[:, 7:]).max() > 1e-4  # the change is seen from its own position on


@pytest.mark.parametrize('name', sorted(MODELS))
def test_the_cached_decoder_gives_the_full_forward_logits_at_every_position(name):
  model = MODELS[name]
  params = _params(model)
  tokens = _tokens((3, 12), seed=1)
  cache = decoding.empty_cache(model, params, 3, 12)
  decode_one = jax.jit(decoding.decode_one, static_argnums=0)
  stepwise = []
  for t in range(12):
    logits, cache = decode_one(model, params, cache, tokens[:, t])
    stepwise.append(logits)
  np.testing.assert_allclose(np.stack(stepwise, 1), model.apply({'params': params}, tokens), atol=1e-5, rtol=1e-5)


def test_generation_beyond_the_context_matches_a_full_forward_over_the_last_block():
  model = MODELS['gpt']  # block_size 12: the cache serves the 12-token prompt and the 13th token, a window the rest
  params = _params(model)
  prompt = _tokens((2, 12), seed=2)
  out = np.asarray(decoding.generate(model, params, prompt, jax.random.PRNGKey(0), 20, temperature=0.0))
  expected = np.asarray(prompt)
  forward = jax.jit(model.apply)
  for _ in range(20):  # greedy decoding the slow way: the whole (cropped) context every token
    logits = forward({'params': params}, jnp.asarray(expected[:, -12:]))[:, -1]
    expected = np.concatenate([expected, np.argmax(logits, -1)[:, None]], 1)
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize('prompt_length', [1, 3, 4])
def test_greedy_generation_of_every_length_matches_a_full_forward_over_the_last_block(prompt_length):
  """Shorter than the context, up to it and beyond it, from prompts of 1 token to a whole block (a context of 4
  keeps the compiles, one per length, few)."""
  model = GPT(vocab_size=V, block_size=4, num_layers=1, num_heads=2, width=16)
  params = _params(model, 4)
  prompt = _tokens((2, prompt_length), seed=4)
  forward = jax.jit(model.apply)
  expected = np.asarray(prompt)
  for num_tokens in range(1, 7 - prompt_length):
    logits = forward({'params': params}, jnp.asarray(expected[:, -4:]))[:, -1]  # the slow way, one more token
    expected = np.concatenate([expected, np.argmax(logits, -1)[:, None]], 1)
    out = decoding.generate(model, params, prompt, jax.random.PRNGKey(0), num_tokens, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(out), expected, err_msg=f'{num_tokens} tokens')


def test_sampling_depends_only_on_the_seed_and_top_k_1_is_greedy():
  model = MODELS['lstm']
  params = _params(model)
  prompt = _tokens((4, 3), seed=3)
  draw = lambda seed, **kw: np.asarray(decoding.generate(model, params, prompt, jax.random.PRNGKey(seed), 30, **kw))
  first, again, other = draw(0), draw(0), draw(1)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  np.testing.assert_array_equal(first[:, :3], prompt)
  assert len({tuple(row[3:]) for row in first}) == 4  # each sequence draws its own tokens
  np.testing.assert_array_equal(draw(0, top_k=1), draw(5, temperature=0.0))


@pytest.mark.parametrize('name', ['gpt', 'lstm'])
def test_generation_in_chunks_is_the_generation_in_one_call(name):
  """Chunks of 5 positions (across the context's end, for the GPT) give the tokens of one call, and the
  callback sees every chunk's end."""
  model, prompt = MODELS[name], _tokens((2, 3), seed=5)
  params = _params(model)
  whole = decoding.generate(model, params, prompt, jax.random.PRNGKey(7), 17, chunk=1000)
  ends = []
  chunked = decoding.generate(model, params, prompt, jax.random.PRNGKey(7), 17, chunk=5, between_chunks=ends.append)
  np.testing.assert_array_equal(np.asarray(chunked), np.asarray(whole))
  assert ends == [5, 10, 15, 19]  # positions 1 .. 19 of 20 filled


def test_sample_stops_between_chunks_on_a_signal_and_refuses_what_cannot_fit(lstm_run, monkeypatch):
  from jaxlab.run import stop
  workdir = lstm_run
  assert stop.install()
  try:
    seen = []
    def stop_at_the_third_chunk(done):
      seen.append(done)
      if len(seen) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      stop.check()
    task_generate = LanguageModel.generate
    monkeypatch.setattr(LanguageModel, 'generate', lambda self, *a, between_chunks=None: task_generate(
        self, *a, between_chunks=stop_at_the_third_chunk))
    with pytest.raises(stop.Stopped, match='SIGTERM'):
      sample.from_workdir(workdir, '\n', 10_000, 1.0, 0, 0, 1)
    assert seen == [64, 128, 192]  # 3 of 157 chunks
  finally:
    stop.uninstall()
  monkeypatch.setattr(sample, 'available_memory', lambda: 2**30)  # 1 GiB: half of it holds 26.8M tokens
  for num_tokens in (30_000_000, 10**20):
    with pytest.raises(ConfigError, match=f'1 sample\\(s\\) of {num_tokens + 1:,} tokens need .* more than half the '
                                          '1.0 GiB of memory available.*at most ~26,843,545 tokens per sample'):
      sample.from_workdir(workdir, '\n', num_tokens, 1.0, 0, 0, 1)
  assert sample.from_workdir(workdir, '\n', 5, 1.0, 0, 0, 1)[0] == 10


def test_bert_masking_statistics():
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (400, 250)), jnp.int32)  # 100,000 tokens
  inputs, chosen = mask_tokens(jax.random.PRNGKey(0), tokens, vocab_size=50, mask_id=50)
  inputs, chosen, tokens = np.asarray(inputs), np.asarray(chosen), np.asarray(tokens)
  n = tokens.size
  assert abs(chosen.mean() - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
  assert np.all(inputs[~chosen] == tokens[~chosen])  # only chosen tokens change
  k = chosen.sum()
  masked, kept = (inputs[chosen] == 50).mean(), (inputs[chosen] == tokens[chosen]).mean()
  random_other = ((inputs[chosen] != 50) & (inputs[chosen] != tokens[chosen])).mean()
  # 80 % mask; 10 % random (1/50 of which happen to be the token itself); 10 % unchanged
  for value, p in ((masked, 0.8), (kept, 0.1 + 0.1 / 50), (random_other, 0.1 * 49 / 50)):
    assert abs(value - p) < 4 * math.sqrt(p * (1 - p) / k), (value, p)
  second, _ = mask_tokens(jax.random.PRNGKey(1), jnp.asarray(tokens), vocab_size=50, mask_id=50)
  assert not np.array_equal(inputs, np.asarray(second))


class _Uniform(nn.Module):
  vocab_size: int

  @nn.compact
  def __call__(self, tokens, train=False):
    return jnp.zeros((*tokens.shape, self.vocab_size)) * self.param('unused', nn.initializers.ones, ())


def test_a_uniform_model_has_perplexity_vocab_size_and_log2_v_bits_per_char():
  import optax
  vocab = text.Vocabulary.from_text('char', 'abcdefghijklmnopq')  # 17 symbols
  task = LanguageModel(_Uniform(17), optax.sgd(0.1), vocab, tokens_per_step=1, block_size=1)
  state = task.init(jax.random.PRNGKey(0), {'x': np.zeros((1, 4), np.int32)})
  batch = {'x': _tokens((3, 4)), 'y': _tokens((3, 4), 1), 'mask': np.array([1, 1, 0], np.float32)}
  sums = jax.device_get(task.eval_step(state, batch))
  assert sums['count'] == 8  # two real windows of four tokens
  means = task.summarize(sums)
  np.testing.assert_allclose([means['loss'], means['perplexity'], means['bits_per_char']],
                             [math.log(17), 17, math.log2(17)], rtol=1e-6)


# --- training, resuming, sampling from a workdir ------------------------------------------------

def test_an_lm_run_resumes_exactly_and_reports_tokens_per_second(tmp_path, corpus):
  config = tiny_lm_config(corpus, **{'model.dropout': 0.1, 'train.checkpoint_every': 100})
  final = {}
  keep = lambda name: lambda step, state: step == 20 and final.update({name: jax.device_get(state.params)})
  train.train(config, str(tmp_path / 'full'), hooks=[keep('full')])
  resumed = str(tmp_path / 'resumed')
  first = train.train(config, resumed, hooks=[lambda step, state: step == 9 and os.kill(os.getpid(), signal.SIGTERM)])
  assert first['step'] == 10
  vocabulary = (tmp_path / 'resumed' / text.VOCABULARY_FILE).read_text()
  assert train.train(config, resumed, hooks=[keep('resumed')])['steps_trained'] == 10
  for a, b in zip(jax.tree.leaves(final['full']), jax.tree.leaves(final['resumed']), strict=True):
    np.testing.assert_array_equal(a, b)
  assert (tmp_path / 'resumed' / text.VOCABULARY_FILE).read_text() == vocabulary
  records = [json.loads(line) for line in open(tmp_path / 'full' / 'metrics.jsonl')]
  logged = [r for r in records if r['split'] == 'train']
  assert all(abs(r['tokens_per_sec'] - r['steps_per_sec'] * 8 * 16) < 1e-6 * r['tokens_per_sec'] for r in logged)
  evaluated = [r for r in records if r['split'] == 'validation']
  assert [r['step'] for r in evaluated] == [10, 20]
  assert all(abs(r['perplexity'] - math.exp(r['loss'])) < 1e-6 * r['perplexity'] for r in evaluated)
  samples = sorted(os.listdir(tmp_path / 'full' / 'samples'))
  assert samples == [f'step_{s:08d}_sample_{i}.txt' for s in (10, 20) for i in (0, 1)]
  assert len((tmp_path / 'full' / 'samples' / samples[0]).read_text()) == 1 + 24  # the prompt and 24 characters


@pytest.fixture(scope='module')
def lstm_run(tmp_path_factory):
  """A finished 10-step LSTM language-model run, for tests that read it (copy it to change it)."""
  root = tmp_path_factory.mktemp('lstm_run')
  workdir = str(root / 'lm')
  train.train(tiny_lm_config(write_corpus(root / 'corpus.txt'), name='lstm', **{'train.num_steps': 10}), workdir)
  return workdir


def test_sample_command_is_deterministic_and_refuses_bad_input(tmp_path, lstm_run):
  workdir = str(tmp_path / 'lm')
  shutil.copytree(lstm_run, workdir)
  first = launch('sample', f'--workdir={workdir}', '--prompt=the ', '--num_tokens=40', '--num_samples=2', '--seed=3')
  assert first.returncode == 0, first.stderr
  texts = [t.split('\n', 1)[1].rstrip('\n') for t in first.stdout.split('--- sample ')[1:]]
  assert len(texts) == 2 and all(t.startswith('the ') and len(t) == 44 for t in texts)
  assert '--- sample 1/2 | newest checkpoint, step 10 | seed 3 ---' in first.stdout
  assert sample.from_workdir(workdir, 'the ', 40, 1.0, 0, 3, 2) == (10, texts)  # the same text in another process
  assert sample.from_workdir(workdir, 'the ', 40, 1.0, 0, 4, 2)[1] != texts
  bad = launch('sample', f'--workdir={workdir}', '--prompt=Z!')
  assert bad.returncode == 2 and bad.stderr.count('\n') == 1 and "--prompt: character(s) '!Z' are not" in bad.stderr
  # A reader never writes run files: without its vocabulary the run's tokens cannot be decoded as trained.
  os.remove(os.path.join(workdir, text.VOCABULARY_FILE))
  before = sorted(os.listdir(workdir))
  lost = launch('sample', f'--workdir={workdir}', '--num_tokens=5')
  assert lost.returncode == 1 and lost.stderr.count('\n') == 1, lost.stderr
  assert f'{text.VOCABULARY_FILE} is missing' in lost.stderr and sorted(os.listdir(workdir)) == before


@pytest.mark.parametrize('saved, message', [
    ({'kind': 'char', 'symbols': 5}, 'is damaged: symbols is int 5, not a string'),
    ({'kind': 'word', 'symbols': 'ab'}, "is damaged: kind 'word' is not one of char, byte"),
    ({'kind': 'char', 'symbols': 'ba'}, 'is damaged: the symbols of a char vocabulary are its distinct characters'),
    ({'kind': 'byte', 'symbols': ''}, r'does not fit the model: params/head/bias has shape \(SIZE,\) saved, \(256,\) '
                                      r'now: .*vocabulary.json \(byte, 256 tokens\) is not the vocabulary the run'),
])
def test_a_damaged_vocabulary_is_one_line_naming_it(tmp_path, lstm_run, saved, message):
  workdir = str(tmp_path / 'lm')
  shutil.copytree(lstm_run, workdir)
  size = len(text.read_vocabulary(workdir).symbols)  # the corpus's characters, which size the model's output
  message = message.replace('SIZE', str(size))
  with open(os.path.join(workdir, text.VOCABULARY_FILE), 'w') as f:
    json.dump(saved, f)
  before = {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)}
  proc = launch('sample', f'--workdir={workdir}', '--num_tokens=5')
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr[-3000:]
  assert re.match(f'error: .*{message}', proc.stderr), proc.stderr
  assert {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)} == before


def test_sample_imports_no_code_a_run_folder_names_unless_its_checkpoint_was_saved_by_it(tmp_path, lstm_run):
  workdir = str(tmp_path / 'lm')
  shutil.copytree(lstm_run, workdir)
  saved = json.loads(open(os.path.join(workdir, 'config.json')).read())
  saved['model']['name'] = 'planted_module:Model'
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(saved, f)
  (tmp_path / 'planted_module.py').write_text(f'open({str(tmp_path / "imported")!r}, "w").close()\nModel = None\n')
  proc = launch('sample', f'--workdir={workdir}', '--num_tokens=5', env={**os.environ, 'PYTHONPATH': str(tmp_path)})
  assert proc.returncode == 2 and 'was saved by a different config' in proc.stderr, proc.stderr[-3000:]
  assert not (tmp_path / 'imported').exists()


def test_sampling_needs_a_language_model_run_with_a_checkpoint(tmp_path, corpus):
  classifier = str(tmp_path / 'classifier')
  os.makedirs(classifier)
  config_lib.save(classifier, tiny_config())
  with pytest.raises(ConfigError, match="is not a language-model run \\(task 'classification'"):
    sample.from_workdir(classifier, '\n', 5, 1.0, 0, 0, 1)
  with pytest.raises(ConfigError, match='holds no run'):
    sample.from_workdir(str(tmp_path), '\n', 5, 1.0, 0, 0, 1)
  untrained = str(tmp_path / 'untrained')
  os.makedirs(untrained)
  config_lib.save(untrained, tiny_lm_config(corpus))
  text.load(tiny_lm_config(corpus).data, 0, untrained)  # writes the vocabulary, as a run's start does
  with pytest.raises(ConfigError, match='no checkpoint in .*untrained/checkpoints'):
    sample.from_workdir(untrained, '\n', 5, 1.0, 0, 0, 1)
  masked = str(tmp_path / 'masked')
  os.makedirs(masked)
  config_lib.save(masked, tiny_lm_config(corpus, name='bert'))
  text.load(tiny_lm_config(corpus, name='bert').data, 0, masked)
  with pytest.raises(ConfigError, match="holds a 'masked_lm' run, which cannot generate"):
    sample.from_workdir(masked, '\n', 5, 1.0, 0, 0, 1)


def test_masked_lm_trains_through_the_loop(tmp_path, corpus):
  config = tiny_lm_config(corpus, name='bert', **{'optimizer.learning_rate': 3e-3, 'train.num_steps': 100,
                                                  'data.batch_size': 64, 'train.eval_every': 50,
                                                  'train.checkpoint_every': 50})
  summary = train.train(config, str(tmp_path / 'bert'))
  # a uniform guess scores ln 30 = 3.40 nats; 100 steps learn part of the character frequencies (whose
  # entropy, 3.18 nats, takes longer to reach)
  assert summary['validation_loss'] < math.log(len(set(open(corpus).read()))) - 0.1
  assert summary['validation_perplexity'] == pytest.approx(math.exp(summary['validation_loss']))
  records = [json.loads(line) for line in open(tmp_path / 'bert' / 'metrics.jsonl')]
  assert all(abs(r['masked_fraction'] - 0.15) < 0.05 for r in records if r['split'] == 'train')
  assert not (tmp_path / 'bert' / 'samples').exists()  # a masked LM shows no samples
