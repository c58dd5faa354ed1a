"""Classification metrics against values computed by hand on a small confusion matrix."""

import json

import numpy as np
import pytest

from jaxlab.observe import metrics

# confusion[true, predicted]; 3 classes, 20 examples.
CONFUSION = np.array([[5, 1, 0],
                      [2, 6, 2],
                      [0, 0, 4]])


def test_per_class_rates_by_hand():
  rates = metrics.per_class(CONFUSION)
  # class 0: tp 5, fp 2, fn 1, tn 12; class 1: tp 6, fp 1, fn 4, tn 9; class 2: tp 4, fp 2, fn 0, tn 14.
  np.testing.assert_allclose(rates['precision'], [5 / 7, 6 / 7, 4 / 6])
  np.testing.assert_allclose(rates['recall'], [5 / 6, 6 / 10, 4 / 4])
  np.testing.assert_allclose(rates['fpr'], [2 / 14, 1 / 10, 2 / 16])
  np.testing.assert_allclose(rates['fnr'], [1 / 6, 4 / 10, 0 / 4])
  p, r = np.array([5 / 7, 6 / 7, 4 / 6]), np.array([5 / 6, 6 / 10, 1.0])
  np.testing.assert_allclose(rates['f1'], 2 * p * r / (p + r))


def test_summarize_divides_sums_by_count_and_adds_macro_means():
  sums = {'loss': 10.0, 'accuracy': 15.0, 'top5_accuracy': 20.0, 'count': 20.0, 'confusion': CONFUSION}
  out = metrics.summarize(sums)
  assert out['loss'] == 0.5 and out['accuracy'] == 0.75 and out['top5_accuracy'] == 1.0
  assert out['macro_precision'] == pytest.approx((5 / 7 + 6 / 7 + 4 / 6) / 3)
  assert out['macro_recall'] == pytest.approx((5 / 6 + 0.6 + 1) / 3)
  assert out['macro_fnr'] == pytest.approx(1 - out['macro_recall'])


def test_undefined_ratios_are_zero():
  rates = metrics.per_class(np.array([[3, 0], [1, 0]]))  # class 1 is never predicted
  assert rates['precision'][1] == 0 and rates['recall'][1] == 0 and rates['f1'][1] == 0


def test_macro_rates_keep_a_leading_replica_axis():
  stacked = np.stack([CONFUSION, CONFUSION.T])
  out = metrics.macro_rates(stacked)
  assert out['macro_recall'].shape == (2,)
  # Hand counts: recall of CONFUSION is its row-wise diagonal share; CONFUSION.T's rows are CONFUSION's columns.
  assert out['macro_recall'] == pytest.approx([(5 / 6 + 6 / 10 + 4 / 4) / 3, (5 / 7 + 6 / 7 + 4 / 6) / 3])
  assert out['macro_precision'] == pytest.approx([(5 / 7 + 6 / 7 + 4 / 6) / 3, (5 / 6 + 6 / 10 + 4 / 4) / 3])


def test_eval_step_counts_confusion_as_true_by_predicted_in_integers():
  """A 'model' whose logits are its input, so every prediction is chosen by hand."""
  import flax.linen as nn
  import jax
  import optax

  from jaxlab.tasks.classification import Classification

  class Logits(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return x + 0 * self.param('unused', nn.initializers.zeros, ())

  truth = np.array([0, 0, 0, 1, 1, 2, 2, 2])
  predicted = np.array([0, 1, 1, 1, 2, 2, 0, 2])
  mask = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)  # the last example is padding
  batch = {'x': np.eye(3, dtype=np.float32)[predicted], 'y': truth, 'mask': mask}
  task = Classification(Logits(), optax.sgd(0.1), num_classes=3)
  sums = jax.jit(task.eval_step)(task.init(jax.random.PRNGKey(0), batch), batch)
  # Row = true class, column = predicted class, padding left out: counted by hand.
  np.testing.assert_array_equal(sums['confusion'], [[1, 2, 0], [0, 1, 1], [1, 0, 1]])
  assert int(sums['accuracy']) == 3 and int(sums['count']) == 7
  # Counts are integers: float32 sums stop being exact past 2**24 examples.
  assert np.issubdtype(sums['count'].dtype, np.integer) and np.issubdtype(sums['confusion'].dtype, np.integer)
  assert np.issubdtype(sums['accuracy'].dtype, np.integer)


def test_save_writes_the_report_and_a_confusion_png(tmp_path):
  sums = {'loss': 10.0, 'accuracy': 15.0, 'count': 20.0, 'confusion': CONFUSION}
  paths = metrics.save(str(tmp_path), 'test', sums, step=7)
  with open(paths[0]) as f:
    saved = json.load(f)
  assert saved['step'] == 7 and saved['confusion_matrix'] == CONFUSION.tolist()
  assert saved['per_class']['recall'] == pytest.approx([5 / 6, 0.6, 1.0])
  with open(paths[1], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
