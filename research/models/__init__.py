"""Models. The registry is filled here, and only here (``_REGISTRY_ENTRIES``).

Usage: ``model = create('resnet20', num_classes=10)``; ``model.apply(variables, x, train=False)``.
"""

from research.models import resnet_cifar
from research.models.lenet import LeNet5, LeNet5Modern
from research.models.registry import accepted_kwargs, create, get_constructor, list_models, register
from research.models.resnet_cifar import BasicBlock, CifarResNet, shortcut_a
from research.models.utils import abstract_variables, count_params, param_counts_by_layer

_REGISTRY_ENTRIES = {
    # LeCun et al. 1998.
    'lenet5': LeNet5,
    'lenet5_modern': LeNet5Modern,
    # He et al. 2015, Sec. 4.2, Table 6.
    'resnet_cifar': CifarResNet,
    'resnet20': resnet_cifar.ResNet20,
    'resnet32': resnet_cifar.ResNet32,
    'resnet44': resnet_cifar.ResNet44,
    'resnet56': resnet_cifar.ResNet56,
    'resnet110': resnet_cifar.ResNet110,
    'resnet1202': resnet_cifar.ResNet1202,
    'plain_cifar': resnet_cifar.PlainCifar,
    'plain20': resnet_cifar.Plain20,
    'plain32': resnet_cifar.Plain32,
    'plain44': resnet_cifar.Plain44,
    'plain56': resnet_cifar.Plain56,
    'plain110': resnet_cifar.Plain110,
}

for _name, _constructor in _REGISTRY_ENTRIES.items():
    register(_name, _constructor)
del _name, _constructor

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
