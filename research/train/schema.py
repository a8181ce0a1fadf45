"""The generic config sections every task shares: what the one loop (``research/train/loop.py``) reads.

A task adds its own section (``config.seg``, ``config.det``, ``config.gan``, ``config.style``,
``config.speedrun``) through ``Task.defaults()``; :func:`research.config.base_config` is this plus
every task's section. Durations (``train.duration``, ``train.eval_every``, ``schedule.boundaries``...)
are strings resolved at run time against the dataset size: ``'30 epochs'``, ``'64000 steps'`` (short
forms ``'30ep'``, ``'64000st'``; a bare number means steps).
"""

from __future__ import annotations

from ml_collections import ConfigDict

from research.data import data_config_defaults


def generic_config() -> ConfigDict:
    """The shared sections with their defaults (no task section)."""
    c = ConfigDict()
    c.seed = 0
    # The task (research/tasks/): classification | segmentation | detection | gan | style_transfer |
    # fast_style | speedrun. Each task supports a documented set of the optional knobs below and
    # refuses the others by name (research/tasks/base.py: KNOBS).
    c.task = 'classification'
    # Model: `name` picks a registered model; every other key is a constructor argument.
    c.model = ConfigDict({'name': 'lenet5_modern'})
    c.data = data_config_defaults()
    c.optimizer = ConfigDict(
        dict(
            name='sgd',  # sgd | nesterov | momentum | adam | adamw | rmsprop
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
            freeze='',  # regex of params kept fixed ('pretrained' = all leaves loaded by `init`)
            freeze_batch_stats=True,  # frozen params' BatchNorm running statistics stay fixed too
            lr_multipliers=(),  # ('regex=factor', ...): per-part learning rates, first match wins
        )
    )
    c.schedule = ConfigDict(
        dict(
            name='cosine',  # constant | step | cosine | linear
            warmup='0 steps',  # linear warm-up from warmup_init_factor*lr to lr
            warmup_init_factor=0.0,
            boundaries=(),  # for 'step': durations where lr is multiplied by decay_factor
            decay_factor=0.1,
            end_factor=0.0,  # cosine/linear end lr = end_factor * lr
        )
    )
    # Initialisation from pretrained weights (transfer learning; research/train/transfer.py).
    c.init = ConfigDict(
        dict(
            checkpoint='',  # '' = random; a workdir of this codebase, a .msgpack, or a torchvision .pth
            torchvision='',  # architecture of a .pth (research.interop.torchvision); '' = model.name
            exclude='',  # regex of param/batch-stat paths kept at random init (e.g. the new head)
            into='',  # module path the checkpoint's tree is loaded into ('' = the whole model), e.g.
            # 'backbone': an ImageNet classifier's weights as a detector's or segmenter's backbone
        )
    )
    c.train = ConfigDict(
        dict(
            duration='10 epochs',  # '0 steps' evaluates only
            batch_size=128,  # global batch over all devices and hosts
            eval_batch_size=0,  # 0 = same as batch_size
            label_smoothing=0.0,
            log_every_steps=50,
            eval_every='1 epochs',  # '' or '0 steps' = only at the end
            checkpoint_every='1 epochs',
            keep_checkpoints=3,
            async_checkpoints=True,
            # Multi-device knobs (docs: multi-device):
            bn_group_size=0,  # 0 = BatchNorm over the global batch; G > 0 = "ghost" BN over groups of G
            # examples of each device's batch (shard_map); -1 = per-device batch (no cross-device sync)
            precision='float32',  # float32 | bfloat16 (bf16 compute via the model's `dtype`; params,
            # BN statistics, logits and the loss stay float32)
            cpu_conv='auto',  # auto | onednn | xla: convolutions on CPU (research/kernels/onednn.py);
            # auto = oneDNN where the `onednn` extra is installed and the run has one device, else XLA
            model_parallel=1,  # M > 1: a ('data', 'model') mesh of (devices/M, M); big params sharded
            # FSDP-style over 'model' (research/train/mesh.py::state_sharding)
            accumulate_steps=1,  # K > 1: each batch is K micro-batches whose gradients are summed
            # before one update (the update of the whole batch, in 1/K of the activation memory)
            ema_decay=0.0,  # > 0: an exponential moving average of the weights (and BatchNorm
            # statistics), ema = d * ema + (1 - d) * w after every step; evaluation uses it
            deterministic=False,  # True: run-to-run identical GPU results (--xla_gpu_deterministic_ops;
            # slower; research/train/distributed.py::set_deterministic, docs/accelerators.md)
        )
    )
    # Where metrics go (research/train/reporting.py): metrics.jsonl always; TensorBoard and Weights & Biases
    # as set here. None of these keys changes a run's results (not part of a sweep run's id).
    c.logging = ConfigDict(
        dict(
            tensorboard=True,  # <workdir>/tb event files (to view them: the `tensorboard` extra)
            wandb=False,  # Weights & Biases: scalars, config, pictures (pip install -e '.[wandb]')
            wandb_project='research',
            wandb_entity='',  # '' = your default entity
            wandb_mode='',  # '' = wandb's default (online, or $WANDB_MODE) | online | offline | disabled
            wandb_name='',  # '' = the workdir's name
            wandb_group='',
            wandb_tags=(),
            profile_steps='',  # 'START:STOP': a jax.profiler trace of those steps into <workdir>/profile
        )
    )
    return c
