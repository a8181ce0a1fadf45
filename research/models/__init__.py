"""Models. The registry is filled here, and only here: each family module in ``_FAMILIES`` lists its named variants in ``REGISTRY_ENTRIES``.

Usage: ``model = create('resnet20', num_classes=10)``; ``model.apply(variables, x, train=False)``.
"""

from research.models import (
    airbench,
    alexnet,
    context,
    deeplab,
    densenet,
    dpn,
    efficientnet,
    faster_rcnn,
    fcn,
    googlenet,
    inception,
    lenet,
    mnasnet,
    mobilenet,
    preact_resnet,
    pspnet,
    rcnn,
    resnet,
    resnet_cifar,
    resnext,
    retinanet,
    segnet,
    shufflenet,
    squeezenet,
    ssd,
    unet,
    vgg,
    wide_resnet,
    yolo,
)
from research.models.lenet import LeNet5, LeNet5Modern
from research.models.registry import accepted_kwargs, create, get_constructor, list_models, register
from research.models.resnet_cifar import BasicBlock, CifarResNet, shortcut_a
from research.models.utils import abstract_variables, count_params, param_counts_by_layer

# One module per family; each defines REGISTRY_ENTRIES (name -> class or functools.partial).
_FAMILIES = (
    lenet,
    resnet_cifar,
    resnet,
    preact_resnet,
    wide_resnet,
    resnext,
    alexnet,
    vgg,
    googlenet,
    inception,
    squeezenet,
    densenet,
    dpn,
    shufflenet,
    mobilenet,
    efficientnet,
    mnasnet,
    airbench,  # CIFAR-10 speed run (issue 8)
    # segmentation (issue 5)
    fcn,
    segnet,
    unet,
    pspnet,
    deeplab,
    context,
    # detection (issue 6)
    yolo,
    ssd,
    retinanet,
    faster_rcnn,
    rcnn,
)

for _family in _FAMILIES:
    for _name, _constructor in _family.REGISTRY_ENTRIES.items():
        register(_name, _constructor)
del _family, _name, _constructor

__all__ = [
    'BasicBlock',
    'CifarResNet',
    'LeNet5',
    'LeNet5Modern',
    'abstract_variables',
    'accepted_kwargs',
    'count_params',
    'create',
    'get_constructor',
    'list_models',
    'param_counts_by_layer',
    'register',
    'shortcut_a',
]
