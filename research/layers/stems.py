"""Network stems (Flax Linen, NHWC): the first layers that take an image to a quarter of its size.

``imagenet_stem``: the stem of the ImageNet nets since AlexNet/GoogLeNet: a k x k stride-2 conv ->
norm -> act, then a 3x3 stride-2 max pool. Called inside the model's compact method, so its
submodules sit in the model's scope under the model's own names and parameter trees stay those
of torchvision / timm. What differs between the families is a parameter:

========================  ===============  ======  ==========================  ==================
model                     conv / norm      kernel  conv padding                max pool
========================  ===============  ======  ==========================  ==================
ResNet, ResNeXt, SE-Net   conv1 / bn1      7       3                           padding 1
pre-activation ResNet     conv1 / bn1      7       3                           padding 1
DenseNet                  conv0 / norm0    7       3                           padding 1
DPN (DPN-68: 3x3)         conv1 / conv1_bn 7 (3)   k // 2                      padding 1
ShuffleNet v1 / v2        conv1 / conv1_bn 3       1                           padding 1
SqueezeNet 1.0 (1.1: 3x3) conv1 / conv1_bn 7 (3)   'VALID'                     ceil mode
GoogLeNet                 conv1.{conv,bn}  7       3 (``block=BasicConv2d``)   ceil mode
========================  ===============  ======  ==========================  ==================

Inception v3/v4 are not among them: their stem is three 3x3 convs (the first stride 2) before
the pool, and v4's continues with parallel conv/pool splits.
"""

from __future__ import annotations

from research.layers.blocks import conv_norm_act
from research.layers.pooling import max_pool

__all__ = ['imagenet_stem']


def imagenet_stem(
    x,
    conv,
    norm,
    act,
    features,
    *,
    kernel=7,
    padding=None,
    pool_padding=1,
    ceil_mode=False,
    name='conv1',
    norm_name='bn1',
    block=None,
):
    """k x k/2 conv -> norm -> act -> 3x3/2 max pool; returns (stem, pooled): the stride-2 map
    (the models' 'stage1' feature) and the stride-4 one.

    ``conv``, ``norm`` (bound to train/eval mode, None = none: the conv gets a bias), ``act``,
    ``kernel``, ``padding`` (None = k // 2), ``name``, ``norm_name``: as ``conv_norm_act``.
    ``pool_padding`` / ``ceil_mode``: torch's MaxPool2d ``padding`` / ``ceil_mode``. ``block``:
    a conv-norm-act module constructor, ``block(features, kernel, strides, padding, name=name)``
    (GoogLeNet's BasicConv2d, whose conv and norm nest under ``name``), used instead of
    conv/norm/act.
    """
    if block is not None:
        y = block(features, kernel, 2, kernel // 2 if padding is None else padding, name=name)(x)
    else:
        y = conv_norm_act(
            x, conv, norm, act, features, kernel, strides=2, padding=padding, name=name, norm_name=norm_name
        )
    return y, max_pool(y, 3, 2, padding=pool_padding, ceil_mode=ceil_mode)
