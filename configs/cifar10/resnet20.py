"""ResNet-20 on CIFAR-10 (He et al. 2016, section 4.2): SGD momentum 0.9, lr 0.1 divided by 10 at 32k and
48k of 64k steps, weight decay 1e-4, batch 128, 4-pixel padded random crops and horizontal flips.

`config.py:56` gives ResNet-56 (configs/cifar10/resnet56.py). Needs TFDS cifar10 prepared as
array_record in TFDS_DATA_DIR; tested only on stand-in data.
"""

from jaxlab.data.vision_configs import image_config


def get_config(arg=None):
  depth = int(arg) if arg else 20
  config = image_config('cifar10', batch_size=128, eval_batch_size=1000, crop_padding=4, flip=True,
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
  config.model = dict(name='resnet', depth=depth, style='cifar')
  config.optimizer.update(dict(name='momentum', learning_rate=0.1, momentum=0.9, weight_decay=1e-4, schedule='step',
                               step_boundaries=(0.5, 0.75), step_factor=0.1))
  config.train.update(dict(num_steps=64000, log_every=500, eval_every=4000, checkpoint_every=4000))
  return config
