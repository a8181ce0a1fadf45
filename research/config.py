"""Experiment configuration: the base schema every experiment starts from.

An experiment file (``experiments/**.py``) defines ``get_config(arg=None)`` that
starts from :func:`base_config` and changes values. ``launch.py`` loads it through
``ml_collections.config_flags`` with ``lock_config=True``, so a command-line
override of a key that does not exist fails at once. Keys added inside an
experiment file that the schema does not know are caught by
:func:`validate_config` (``config.model`` is free-form: its keys other than
``name`` are the model constructor's arguments and are checked against them).

Durations (``train.duration``, ``train.eval_every``, ``schedule.boundaries``...)
are strings resolved at run time against the dataset size: ``'30 epochs'``,
``'64000 steps'`` (short forms ``'30ep'``, ``'64000st'``; a bare number means steps).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable

import ml_collections
from ml_collections import ConfigDict

# Sections whose keys are free-form (checked elsewhere, e.g. model kwargs by the registry).
FREE_FORM_SECTIONS = ("model",)


class ConfigError(ValueError):
    """A config value that cannot run, named with its key (``launch.py`` exits with code 2).

    The message is one line: ``train.batch_size=0: must be an integer >= 1``.
    """


def base_config() -> ConfigDict:
    """Every known configuration key with its default value."""
    from research.data import data_config_defaults

    c = ConfigDict()
    c.seed = 0
    # Model: `name` picks a registered model; every other key is a constructor argument.
    c.model = ConfigDict({"name": "lenet5_modern"})
    c.data = data_config_defaults()
    c.optimizer = ConfigDict(
        dict(
            name="sgd",  # sgd | nesterov | momentum | adam | adamw
            lr=0.1,  # peak learning rate (per global batch)
            momentum=0.9,
            nesterov=False,
            weight_decay=0.0,  # coupled L2 for sgd/adam (as torch), decoupled for adamw
            decay_all=True,  # False: no weight decay on biases and norm scales (ndim < 2)
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            grad_clip_norm=0.0,  # 0 = off
            # Transfer learning (research/train/transfer.py). Paths are 'module/.../leaf' of params.
            freeze="",  # regex of params kept fixed ('pretrained' = all leaves loaded by `init`)
            freeze_batch_stats=True,  # frozen params' BatchNorm running statistics stay fixed too
            lr_multipliers=(),  # ('regex=factor', ...): per-part learning rates, first match wins
        )
    )
    c.schedule = ConfigDict(
        dict(
            name="cosine",  # constant | step | cosine | linear
            warmup="0 steps",  # linear warm-up from warmup_init_factor*lr to lr
            warmup_init_factor=0.0,
            boundaries=(),  # for 'step': durations where lr is multiplied by decay_factor
            decay_factor=0.1,
            end_factor=0.0,  # cosine/linear end lr = end_factor * lr
        )
    )
    # Initialisation from pretrained weights (transfer learning; research/train/transfer.py).
    c.init = ConfigDict(
        dict(
            checkpoint="",  # '' = random; a workdir of this codebase, a .msgpack, or a torchvision .pth
            torchvision="",  # architecture of a .pth (research.interop.torchvision); '' = model.name
            exclude="",  # regex of param/batch-stat paths kept at random init (e.g. the new head)
        )
    )
    c.train = ConfigDict(
        dict(
            duration="10 epochs",
            batch_size=128,  # global batch over all devices and hosts
            eval_batch_size=0,  # 0 = same as batch_size
            label_smoothing=0.0,
            log_every_steps=50,
            eval_every="1 epochs",  # '' or '0 steps' = only at the end
            checkpoint_every="1 epochs",
            keep_checkpoints=3,
            async_checkpoints=True,
            # Multi-device knobs (research/train/README section "Multi-device"):
            bn_group_size=0,  # 0 = BatchNorm over the global batch; G > 0 = "ghost" BN over groups of G
            # examples of each device's batch (shard_map); -1 = per-device batch (no cross-device sync)
            precision="float32",  # float32 | bfloat16 (bf16 compute via the model's `dtype`; params,
            # BN statistics, logits and the loss stay float32)
            cpu_conv="auto",  # auto | onednn | xla: convolutions on CPU (research/kernels/onednn.py);
            # auto = oneDNN where the `onednn` extra is installed and the run has one device, else XLA
            model_parallel=1,  # M > 1: a ('data', 'model') mesh of (devices/M, M); big params sharded
            # FSDP-style over 'model' (research/train/mesh.py::param_sharding)
        )
    )
    # What launch.py runs (research/cli.py): 'classification' (the trainer), 'gan' (DCGAN,
    # research/generative/dcgan.py), 'style_transfer' (Gatys et al. image optimisation) or
    # 'fast_style' (Johnson et al. feed-forward network), both in research/generative/style_transfer.py;
    # 'speedrun' (airbench-style CIFAR-10 speed run, research/train/speedrun.py; settings in c.speedrun).
    c.task = "classification"
    c.gan = ConfigDict(
        dict(
            latent_dim=100,
            base_size=7,  # first generator map (image size = base_size * 2^n): 7 for 28x28, 4 for 32/64
            g_width=64,  # channels of the generator's last hidden layer (doubling towards z)
            d_width=64,  # channels of the discriminator's first layer (doubling with depth)
            batch_norm=True,
            leak=0.2,
            g_lr=2e-4,
            d_lr=2e-4,
            b1=0.5,
            b2=0.999,
            grid_samples=64,  # fixed z, one PNG grid per epoch
            score_samples=1000,  # samples scored per epoch by the classifier (0 = no score)
            classifier_workdir="runs/dcgan_score_lenet5",  # trained first if it holds no finished run
            classifier_model="lenet5_modern",
            classifier_epochs=5,
        )
    )
    c.style = ConfigDict(
        dict(
            model="vgg19",  # any registered model; layers are picked by module path
            weights="",  # '' = random init (seed); a torchvision .pth, a Flax .msgpack, or a workdir
            content="sklearn:china.jpg",  # image file, or sklearn:china.jpg / sklearn:flower.jpg
            style="sklearn:flower.jpg",
            image_size=128,  # longer side of the content (and style) image
            content_layers=("conv4_2",),
            style_layers=("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"),
            relu=True,  # use ReLU(layer output): Gatys' relu4_2 etc. from the conv modules
            content_weight=1.0,
            style_weight=1e5,
            tv_weight=0.0,
            init="content",  # content | noise
            steps=200,  # Adam steps on the image
            lr=0.02,  # image learning rate (pixels in [0, 1])
            log_every=20,
            mean=(0.485, 0.456, 0.406),  # input normalisation of the loss network (ImageNet's)
            std=(0.229, 0.224, 0.225),
            # fast_style (Johnson et al. 2016): the transformer network, trained with
            # optimizer.lr / train.duration / train.batch_size on the data.* folder
            transformer_width=32,
            transformer_blocks=5,
            eval_image="",  # content image stylised after training ('' = style.content)
        )
    )
    # Segmentation (config.task = 'segmentation'; research/segmentation/): the synthetic datasets'
    # generation (data.name = 'mnist_seg' | 'shapes_seg'), the loss mix and the eval pictures.
    c.seg = ConfigDict(
        dict(
            canvas_size=64,  # canvases are canvas_size x canvas_size
            min_objects=1,  # digits / shapes per canvas
            max_objects=4,
            min_scale=0.6,  # object size factor (digits: x 28 px; shapes: x canvas/6 radius)
            max_scale=1.4,
            num_train=8000,  # generated train / test canvases
            num_test=2000,
            data_seed=0,  # generation seed (part of the dataset's identity)
            ce_weight=1.0,  # loss = ce_weight * CE (ignore label 255) + dice_weight * soft Dice
            dice_weight=0.0,
            # CE class weights: 'none' | 'median_frequency' (SegNet Sec. 3.1; from the train split's labels)
            class_balance="none",
            aux_weight=0.4,  # weight of an auxiliary head's loss (models with return_aux)
            crf_eval=False,  # final evaluation also reports crf_miou etc. after dense-CRF post-processing
            crf_iterations=5,  # mean-field iterations (research.segmentation.crf.dense_crf)
            crf_method="approx",  # 'exact' | 'approx' (bilateral grid) | 'auto'
            viz_examples=8,  # rows of the input | truth | prediction PNG written at each eval
        )
    )
    # Detection (config.task = 'detection'; research/detection/): mnist_det generation, proposals for the
    # R-CNN lineage (models with needs_proposals), evaluation and pictures.
    c.det = ConfigDict(
        dict(
            canvas_size=128,  # canvases are canvas_size x canvas_size, 1 channel
            min_objects=2,  # digits per canvas
            max_objects=6,  # also the padded ground-truth count M
            min_scale=0.8,  # digit size factor (x 28 px)
            max_scale=2.0,
            max_iou=0.3,  # paste windows overlap earlier ones by at most this IoU
            num_train=8000,  # generated train / test canvases
            num_test=2000,
            data_seed=0,  # generation seed (part of the dataset's identity)
            proposals="selective_search",  # R-CNN / SPPNet / Fast R-CNN: 'selective_search' | 'sliding_window'
            max_proposals=300,  # proposals kept per image
            coco_eval=True,  # evaluations also report COCO AP@[.5:.95] (pycocotools)
            latency_images=20,  # final eval: batch-1 latency measured on this many test images (0 = off)
            viz_examples=6,  # rows of the truth | prediction PNG written at each eval
            viz_score_threshold=0.3,  # predictions drawn at or above this score
        )
    )
    # CIFAR-10 speed run (config.task = 'speedrun'; research/train/speedrun.py, airbench94's recipe): the
    # train split on the device, K steps per jitted call (lax.scan), augmentation inside the step.
    c.speedrun = ConfigDict(
        dict(
            steps_per_call=8,  # K: train steps per jitted call
            unroll=0,  # lax.scan unroll; 0 = auto: full on CPU (XLA:CPU is slow in loop bodies), 1 on GPU
            translate=2,  # random crop: reflect-pad by this many pixels, crop back (0 = off)
            flip="alternating",  # alternating (airbench: per-image bit XOR odd epoch) | random | none
            bias_lr_scale=64.0,  # BatchNorm params: lr x this, weight decay / this (airbench's bias_scaler)
            whiten_bias_epochs=3.0,  # the whitening conv's bias trains for this many epochs, then freezes
            whiten_samples=5000,  # train images whose 2x2-patch covariance sets the whitening kernel (0 = off)
            whiten_eps=5e-4,  # kernel = eigenvectors / sqrt(eigenvalue + eps)
            ema_start_epochs=3.0,  # lookahead: from this epoch on, every ema_every steps
            ema_every=5,  # 0 = no lookahead
            ema_decay_base=0.95,  # rho = ema_decay_base^ema_every * (step / total_steps)^ema_decay_pow
            ema_decay_pow=3.0,
            tta_level=2,  # final evaluation: 0 plain, 1 + mirror, 2 + mirror of 1-px translations (airbench)
        )
    )
    return c


def with_model(config: ConfigDict, name: str, **kwargs: Any) -> ConfigDict:
    """Sets ``config.model`` to ``name`` plus constructor arguments."""
    config.model = ConfigDict({"name": name, **kwargs})
    return config


def _walk(d: ConfigDict, prefix: str = ""):
    for k, v in d.items():
        path = f"{prefix}{k}"
        yield path, v
        if isinstance(v, ConfigDict):
            yield from _walk(v, path + ".")


def validate_config(config: ConfigDict) -> None:
    """Raises ``KeyError`` naming any key the schema does not know (with a suggestion)."""
    schema = dict(_walk(base_config()))
    for path, _ in _walk(config):
        if path.split(".")[0] in FREE_FORM_SECTIONS and "." in path:
            continue
        if path not in schema:
            close = difflib.get_close_matches(path, list(schema), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise KeyError(f"unknown config key '{path}'{hint}")


# -- value checks ---------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(config: ConfigDict, key: str, low: int, what: str = "") -> None:
    v = _get(config, key)
    if not _is_int(v) or v < low:
        raise ConfigError(f"{key}={v!r}: must be an integer >= {low}{what}")


def _number_at_least(config: ConfigDict, key: str, low: float, what: str = "") -> None:
    v = _get(config, key)
    if not _is_number(v) or not v >= low:  # `not >=` also refuses NaN
        raise ConfigError(f"{key}={v!r}: must be a number >= {low:g}{what}")


def _get(config: ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def _has(config: ConfigDict, key: str) -> bool:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, (ConfigDict, dict)) or part not in node:
            return False
        node = node[part]
    return True


def _check_duration(config: ConfigDict, key: str, *, empty_ok: bool) -> None:
    v = _get(config, key)
    if empty_ok and v in ("", None, 0):
        return
    try:
        steps = parse_duration(v, 1, name=key)
    except ValueError:
        raise ConfigError(
            f"{key}={v!r}: not a duration; use e.g. '30 epochs', '1000 steps' or a number of steps"
        ) from None
    if steps < 0:
        raise ConfigError(f"{key}={v!r}: must not be negative")


def check_split(key: str, split: Any) -> None:
    """A TFDS split expression (``train``, ``train[:90%]``, ``train[10:20]+test``), by its syntax only.

    Whether the dataset has that split is checked when the dataset is opened."""
    if not isinstance(split, str) or not split.strip():
        raise ConfigError(f"{key}={split!r}: must be a split name such as 'train' or 'train[:90%]'")
    from tensorflow_datasets.core import ReadInstruction  # heavy: only when a config is checked

    try:
        ReadInstruction.from_spec(split)
    except (ValueError, AssertionError) as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        why = lines[1] if len(lines) > 1 else "not a split expression"
        why = why.split(". See format")[0].split(". Got:")[0].rstrip(".")
        raise ConfigError(
            f"{key}={split!r}: {why} (TFDS split syntax: 'train', 'train[:90%]', 'train[10:20]', 'train+test')"
        ) from None


def model_kwarg_error(model_name: str, key: str, value: Any = None) -> ConfigError | None:
    """The error for ``model.<key>`` when the registered model ``model_name`` takes no such argument."""
    from research import models

    try:
        accepted = models.accepted_kwargs(model_name)
    except (KeyError, ValueError):  # an unknown model name: reported by its own check
        return None
    if key in accepted:
        return None
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f"; did you mean model.{close[0]}?" if close else ""
    shown = f"={value!r}" if value is not None else ""
    return ConfigError(
        f"model.{key}{shown}: model '{model_name}' takes no argument '{key}'; "
        f"accepted: {', '.join(accepted)}{hint}"
    )


def check_values(config: ConfigDict) -> None:
    """Raises :class:`ConfigError` (one line, naming the key and its value) for a value that cannot run.

    Run after :func:`validate_config` (unknown keys) and before anything is built or written.
    ``train.duration='0 steps'`` passes: the run evaluates only (the loop says so).
    """
    _int_at_least(config, "seed", -(2**63))
    _int_at_least(config, "train.batch_size", 1)
    _int_at_least(config, "train.eval_batch_size", 0, " (0 = train.batch_size)")
    _int_at_least(config, "train.log_every_steps", 1)
    _int_at_least(
        config, "train.keep_checkpoints", 1, " (the newest k checkpoints are kept; the final one always)"
    )
    _check_duration(config, "train.duration", empty_ok=False)
    _check_duration(config, "train.eval_every", empty_ok=True)
    _check_duration(config, "train.checkpoint_every", empty_ok=True)
    ls = _get(config, "train.label_smoothing")
    if not _is_number(ls) or not 0 <= ls < 1:
        raise ConfigError(f"train.label_smoothing={ls!r}: must be a number in [0, 1)")
    _int_at_least(config, "data.image_size", 0, " (0 = the native size)")
    _int_at_least(config, "data.num_threads", 0)
    for key in ("data.train_split", "data.eval_split"):
        check_split(key, _get(config, key))
    _number_at_least(config, "optimizer.lr", 0.0)
    _number_at_least(config, "optimizer.weight_decay", 0.0)
    _number_at_least(config, "optimizer.grad_clip_norm", 0.0, " (0 = off)")
    if _has(config, "schedule.warmup"):
        _check_duration(config, "schedule.warmup", empty_ok=True)
    name = config.model.get("name") if "model" in config else None
    if isinstance(name, str):
        for key, value in config.model.items():
            if key != "name":
                err = model_kwarg_error(name, key, value)
                if err is not None:
                    raise err


def load_config_file(spec: str) -> ConfigDict:
    """``get_config(arg)`` of ``path/to/file.py[:arg]`` (what ``--config`` loads), without overrides."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_research_config_file", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"--config={spec!r}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def explain_override_error(argv: list[str], config: ConfigDict | None = None) -> ConfigError | None:
    """The one-line error for a ``--config.<key>=<value>`` override the config has no key for.

    ``launch.py``'s config is locked, so ``--config.model.depth=20`` on LeNet fails inside flag
    parsing with a bare ``AttributeError: depth``. Given the command line (and the loaded config file,
    else it is loaded from ``--config=``), this names the key, its value and, for ``model.*``, the
    model's accepted arguments. None when every override names an existing key.
    """
    overrides = []
    spec = None
    for a in argv:
        if a.startswith("--config="):
            spec = a.partition("=")[2]
        elif a.startswith("--config."):
            key, _, value = a[len("--config.") :].partition("=")
            overrides.append((key, value))
    if config is None:
        if spec is None:
            return None
        try:
            config = load_config_file(spec)
        except Exception:  # the config file's own error is reported by the caller
            return None
    flat = flatten(config)
    model_name = dict(overrides).get("model.name", config.model.get("name") if "model" in config else None)
    for key, value in overrides:
        if key in flat or any(k.startswith(key + ".") for k in flat):
            continue
        section, _, rest = key.partition(".")
        if section == "model" and rest and "." not in rest and isinstance(model_name, str):
            err = model_kwarg_error(model_name, rest, value)
            if err is not None:
                return err
            return ConfigError(
                f"--config.{key}={value}: the experiment's config sets no model.{rest}; "
                f"set it in the experiment file (model '{model_name}' accepts it)"
            )
        close = difflib.get_close_matches(key, list(flat), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return ConfigError(f"--config.{key}={value}: unknown config key '{key}'{hint}")
    return None


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(epochs?|ep|steps?|st)?\s*$", re.IGNORECASE)


def parse_duration(value: Any, steps_per_epoch: int, *, name: str = "duration") -> int:
    """Resolves ``'30 epochs'`` / ``'1000 steps'`` / ``1000`` to a number of steps."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"cannot parse {name}={value!r}: use e.g. '30 epochs' or '1000 steps'")
    amount, unit = float(m.group(1)), (m.group(2) or "steps").lower()
    if unit.startswith("ep"):
        return int(round(amount * steps_per_epoch))
    return int(amount)


def parse_arg(arg: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """Parses a config-file argument like ``'depth=56,shortcut=B,quick'``.

    ``defaults`` lists the accepted keys with default values; a bare word sets a
    boolean key to True. Unknown keys raise ``ValueError`` naming them.
    """
    out = dict(defaults)
    if not arg:
        return out
    for token in filter(None, (t.strip() for t in arg.split(","))):
        key, sep, value = token.partition("=")
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown config argument '{key}' (accepted: {', '.join(defaults)}){hint}")
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config argument '{key}' needs a value, e.g. {key}={default}")
            out[key] = True
        elif isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def to_dict(config: ConfigDict) -> dict[str, Any]:
    """A JSON-friendly plain dict of a config."""

    def conv(v):
        if isinstance(v, ConfigDict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(config)


def flatten(config: ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
    """``{'train.batch_size': 128, ...}``."""
    out = {}
    items: Iterable = config.items()
    for k, v in items:
        if isinstance(v, (ConfigDict, dict)):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


__all__ = [
    "ConfigDict",
    "ConfigError",
    "check_values",
    "check_split",
    "explain_override_error",
    "load_config_file",
    "model_kwarg_error",
    "base_config",
    "with_model",
    "validate_config",
    "parse_duration",
    "parse_arg",
    "to_dict",
    "flatten",
    "ml_collections",
]
