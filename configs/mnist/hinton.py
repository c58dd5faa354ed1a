"""Hinton, Vinyals & Dean (2015) section 3, MNIST: `hinton.py:teacher`, `:student` or `:distilled`.

teacher: 784-1200-1200-10 ReLU regularised as Hinton et al. (2012), the paper's reference [5]: dropout 0.2 on
the inputs and 0.5 on the hidden units, each unit's incoming weights kept to L2 norm <= sqrt(15) (their bound
of 15 on the squared length), and inputs jittered by up to 2 pixels; 100 epochs (paper: 67 test
errors; theirs trained for 3,000).
student: 784-800-800-10, no regularisation (paper: 146 errors). distilled: the same student
trained only on the teacher's soft targets at T = 20 (paper: 74 errors); `distill.teacher` is the
teacher's workdir, default runs/hinton-teacher. The paper gives no optimiser settings: Adam 1e-3 with
cosine decay, batch 128, on all 60,000 training images (students 50 epochs), chosen here and not tuned.
"""

import math

from jaxlab.data.vision_configs import image_config

STEPS_PER_EPOCH = 60000 // 128
EPOCHS = {'teacher': 100, 'student': 50, 'distilled': 50}


def get_config(arg='teacher'):
  if arg not in ('teacher', 'student', 'distilled'):
    raise ValueError(f"hinton.py takes 'teacher', 'student' or 'distilled', got {arg!r}")
  teacher = arg == 'teacher'
  config = image_config('mnist', batch_size=128, eval_batch_size=1000, mean=(0.1307,), std=(0.3081,),
                        crop_padding=2 if teacher else 0)
  config.model = dict(name='mlp', hidden=(1200, 1200) if teacher else (800, 800), dropout=0.5 if teacher else 0.0,
                      input_dropout=0.2 if teacher else 0.0)
  config.optimizer.update(dict(name='adam', learning_rate=1e-3, schedule='cosine',
                               max_norm=math.sqrt(15) if teacher else 0.0))
  config.train.update(dict(num_steps=EPOCHS[arg] * STEPS_PER_EPOCH, log_every=STEPS_PER_EPOCH,
                           eval_every=10 * STEPS_PER_EPOCH, checkpoint_every=5 * STEPS_PER_EPOCH))
  if arg == 'distilled':
    config.task = 'distillation'
    config.distill = dict(teacher='runs/hinton-teacher', temperature=20.0, hard_weight=0.0)
  return config
