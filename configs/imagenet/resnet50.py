"""ResNet-50 on ImageNet (TFDS imagenet2012; its labelled 'validation' split is reported as test).

Goyal et al. 2017 protocol: SGD momentum 0.9, lr 0.1 x batch/256 with 5 warm-up epochs, steps at
epochs 30/60/80 of 90, weight decay 1e-4, batch 1024, label smoothing off. Images (TFDS decodes
them to arrays of varying size) become 224x224: Inception-style random resized crops and flips in
training, the central 87.5 % resized in evaluation. Tested only on stand-in data and on
variable-size test images, never on ImageNet itself.
"""

from jaxlab.data.vision_configs import image_config

BATCH = 1024
STEPS_PER_EPOCH = 1281167 // BATCH


def get_config(arg=None):
  del arg
  config = image_config('imagenet2012', test_split='validation', in_memory=False, batch_size=BATCH,
                        eval_batch_size=1000, flip=True, image_size=224, num_threads=16, prefetch=8,
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  config.model = dict(name='resnet', depth=50, style='imagenet')
  config.optimizer.update(dict(name='nesterov', learning_rate=0.1 * BATCH / 256, momentum=0.9, weight_decay=1e-4,
                               schedule='step', warmup_steps=5 * STEPS_PER_EPOCH,
                               step_boundaries=(30 / 90, 60 / 90, 80 / 90), step_factor=0.1))
  config.train.update(dict(num_steps=90 * STEPS_PER_EPOCH, log_every=100, eval_every=5 * STEPS_PER_EPOCH,
                           checkpoint_every=STEPS_PER_EPOCH))
  return config
