"""Visual tools: first-layer filters, feature maps, class activation maps, receptive fields.

``launch.py --config=... --workdir=... --viz=filters|feature_maps|cam|receptive_field`` draws them
for a trained classification run (``research/experiments/visualize.py``); the functions work on any Flax model.
"""

from research.viz.cam import class_activation_maps, overlay, upsample_cam
from research.viz.feature_maps import (
    feature_map_grid,
    layer_outputs,
    list_layers,
    trace_calls,
    used_variables,
)
from research.viz.filters import filter_grid, filter_images, first_conv_kernel
from research.viz.images import load_image, make_grid, save_png
from research.viz.receptive_field import (
    DilatedStack,
    dilated_receptive_fields,
    dilated_supports,
    layer_receptive_fields,
    plot_dilation,
    plot_model_rf,
)

__all__ = [
    'DilatedStack',
    'class_activation_maps',
    'dilated_receptive_fields',
    'dilated_supports',
    'feature_map_grid',
    'filter_grid',
    'filter_images',
    'first_conv_kernel',
    'layer_outputs',
    'layer_receptive_fields',
    'list_layers',
    'load_image',
    'make_grid',
    'overlay',
    'plot_dilation',
    'plot_model_rf',
    'save_png',
    'trace_calls',
    'upsample_cam',
    'used_variables',
]
