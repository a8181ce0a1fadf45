"""``launch.py --summary``: the model summary of a config (per-layer shapes, params, MACs, receptive
field) on the dataset's input shape, without building or downloading anything."""

from __future__ import annotations

from research import tasks
from research.data import datasets
from research.data.builders import image_folder
from research.layers.summary import summarize
from research.train.loop import build_model


def parse_input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.replace('x', ',').split(',') if d.strip())
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f'--summary_input must be H,W,C (e.g. 32,32,3), got {text!r}')
    return shape


def summary_input(config, override: str | None = None) -> tuple[tuple[int, ...], int, str]:
    """(H, W, C), number of classes and their source for ``--summary``; builds and downloads nothing.

    Reads the metadata of the *unprepared* dataset builder (``data.image_size`` applied): static
    for TFDS names (``cifar10`` works offline) and 'digits', a scan of the files for
    'image_folder' (seconds for the CIFAR-10 tgz; instant once prepared). If that fails:
    ``override`` or 32x32x1 for LeNets / 32x32x3 otherwise, with 10 classes.
    """
    name = str(config.data.name)
    shape, classes = None, None
    try:
        path = image_folder.resolve_source(config.data.path) if name == 'image_folder' else ''
        builder = datasets.make_builder(name, path, datasets.resolve_data_dir(config.data))
        shape = datasets.output_shape(config.data, builder)
        classes = int(builder.info.features['label'].num_classes)
        source = f"the metadata of dataset '{name}' (nothing built or downloaded)"
    except Exception as e:  # any failure: fall back below, and say why
        source = f'default (no dataset info: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})'
    if override:
        shape, source = parse_input_shape(override), '--summary_input'
    elif shape is None:
        shape = (32, 32, 1) if str(config.model.name).startswith('lenet') else (32, 32, 3)
        source += '; pass --summary_input=H,W,C'
    return tuple(int(d) for d in shape), classes or 10, source


def print_summary(config, override: str | None = None) -> None:
    """The summary table of the config's model on one example (nothing is trained)."""
    tasks.validate_config(config)
    shape, classes, source = summary_input(config, override)
    model = build_model(config, classes)
    print(f'{config.model.name}: input {"x".join(map(str, shape))} from {source}, {classes} classes')
    print(summarize(model, (1, *shape)))
