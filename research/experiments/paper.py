"""Reference numbers from the papers, as data (from ``../shared/reference/paper_targets.md``).

Errors are test error in %, CIFAR-10 unless the key says otherwise. Tables key these into
their cells (see ``experiments/ablations/*.py``); :data:`TABLES` lists them with sources.
Our CIFAR-10 is a JPEG re-encoding (``../shared/data``): expect numbers a little above these.
"""

from __future__ import annotations

from typing import Any

# He et al. 2015, "Deep Residual Learning", Table 6: ResNet (option A) depth -> test error.
# Plain nets: Fig. 6 (left) only, no numbers (plain-56 has higher train and test error than plain-20).
RESNET_CIFAR10_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}

# He et al. 2016, "Identity Mappings in Deep Residual Networks", Table 2 (Fig. 4 orderings):
# ordering -> {depth: test error}, medians of 5 runs.
PREACT_ORDERINGS = {
    'a': {110: 6.61, 164: 5.93},
    'b': {110: 8.17, 164: 6.50},
    'c': {110: 7.84, 164: 6.14},
    'd': {110: 6.71, 164: 5.91},
    'e': {110: 6.37, 164: 5.46},
}
PREACT_ORDERING_NAMES = {
    'a': '(a) original',
    'b': '(b) BN after addition',
    'c': '(c) ReLU before addition',
    'd': '(d) ReLU-only pre-activation',
    'e': '(e) full pre-activation',
}

# Long et al. 2015, "Fully Convolutional Networks", Table 2: stride -> mean IU (%) on VOC 2011 val.
FCN_VOC11 = {32: 59.4, 16: 62.4, 8: 62.7}
# Zhao et al. 2017, "Pyramid Scene Parsing Network", Table 1: ADE20K val mIoU (%) of ResNet-50, the
# dilated baseline vs pyramid pooling with bins (1, 2, 3, 6), average pooling, dimension reduction.
PSPNET_BINS = {(): 37.23, (1, 2, 3, 6): 41.68}

# Zagoruyko & Komodakis 2016, "Wide Residual Networks", Table 4: (depth, k) -> error on
# {'cifar10', 'cifar100'}; (28, 10, 'dropout') is WRN-28-10 with dropout 0.3.
WRN_TABLE4 = {
    (40, 1): {'cifar10': 6.85, 'cifar100': 30.89},
    (40, 2): {'cifar10': 5.33, 'cifar100': 26.04},
    (40, 4): {'cifar10': 4.97, 'cifar100': 22.89},
    (16, 8): {'cifar10': 4.81, 'cifar100': 22.07},
    (28, 10): {'cifar10': 4.17, 'cifar100': 20.50},
    (28, 10, 'dropout'): {'cifar10': 3.89, 'cifar100': 18.85},
}
# WRN parameter counts (CIFAR-10 head), recomputed by hand: (depth, k) -> params.
WRN_PARAMS = {
    (16, 1): 175_066,
    (16, 2): 691_674,
    (16, 4): 2_748_890,
    (16, 8): 10_961_370,
    (16, 10): 17_116_634,
    (22, 8): 17_158_106,
    (22, 10): 26_797_914,
    (28, 10): 36_479_194,
    (28, 12): 52_517_850,
    (40, 1): 563_930,
    (40, 2): 2_243_546,
    (40, 4): 8_949_210,
    (40, 8): 35_748_314,
}
# CIFAR ResNets, option-A shortcuts, 10 classes: depth -> params (plain nets: the same).
RESNET_CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}

# Chen et al. 2017, "Rethinking Atrous Convolution" (DeepLabv3), Table 1: output stride -> VOC12 val mIoU (%)
# of ResNet-50 + block7 (cascaded atrous blocks).
DEEPLABV3_OUTPUT_STRIDE = {8: 75.18, 16: 73.88, 32: 70.06, 64: 59.99, 128: 42.34, 256: 20.29}
DEEPLABV3_ASPP_OS16 = 77.21  # ASPP rates (6, 12, 18) + image pooling at output stride 16

# Lin et al. 2017, "Focal Loss" (RetinaNet), Table 1b (ResNet-50, 600 px): (gamma, alpha) -> COCO AP.
RETINANET_GAMMA_ALPHA = {
    (0.0, 0.75): 31.1,
    (0.5, 0.5): 32.9,
    (1.0, 0.25): 33.7,
    (2.0, 0.25): 34.0,
    (5.0, 0.25): 32.2,
}

TABLES: dict[str, dict[str, Any]] = {
    'resnet_table6': dict(
        values=RESNET_CIFAR10_TABLE6, metric='test error %', source='He et al. 2015, Table 6'
    ),
    'preact_orderings': dict(
        values=PREACT_ORDERINGS, metric='test error % (median of 5)', source='He et al. 2016, Table 2'
    ),
    'wrn_table4': dict(
        values=WRN_TABLE4, metric='test error %', source='Zagoruyko & Komodakis 2016, Table 4'
    ),
    'wrn_params': dict(values=WRN_PARAMS, metric='parameters', source='recomputed [C]'),
    'deeplabv3_output_stride': dict(
        values=DEEPLABV3_OUTPUT_STRIDE, metric='VOC12 val mIoU %', source='Chen et al. 2017, Table 1'
    ),
    'fcn_voc11': dict(values=FCN_VOC11, metric='VOC11 val mean IU %', source='Long et al. 2015, Table 2'),
    'pspnet_bins': dict(values=PSPNET_BINS, metric='ADE20K val mIoU %', source='Zhao et al. 2017, Table 1'),
    'retinanet_gamma_alpha': dict(
        values=RETINANET_GAMMA_ALPHA, metric='COCO AP', source='Lin et al. 2017, Table 1b'
    ),
}
