"""Generative models: DCGAN (``dcgan``) and neural style transfer (``style_transfer``); ``run_task``
dispatches every task other than classification (also segmentation, detection and the speed run)."""

from __future__ import annotations

from pathlib import Path

TASKS = ("gan", "style_transfer", "fast_style", "segmentation", "detection", "speedrun")


def run_task(config, workdir: str | Path, *, show_progress: bool = True, stop_after_steps: int | None = None):
    """Runs ``config.task`` ('gan', 'style_transfer', 'fast_style', 'segmentation', 'detection' or 'speedrun') in
    ``workdir``; returns the run's summary dict. ``stop_after_steps`` (trained tasks): stop early (resumable;
    a speed run keeps no checkpoint and starts over)."""
    task = config.task
    for key in ("synthetic", "on_device"):
        if "data" in config and config.data.get(key, False):
            raise ValueError(
                f"data.{key}=True is a classification-trainer option; task {task!r} does not take it "
                f"(set data.{key}=False)"
            )
    stop = {} if stop_after_steps is None else {"stop_after_steps": stop_after_steps}
    if task == "gan":
        from research.generative.dcgan import train_gan

        return train_gan(config, workdir, show_progress=show_progress, **stop)
    if task == "style_transfer":
        from research.generative.style_transfer import run_style_transfer

        return run_style_transfer(config, workdir)
    if task == "fast_style":
        from research.generative.style_transfer import train_fast_style

        return train_fast_style(config, workdir, show_progress=show_progress)
    if task == "segmentation":
        from research.segmentation.train import train_segmentation

        return train_segmentation(config, workdir, show_progress=show_progress, **stop)
    if task == "detection":
        from research.detection.train import train_detection

        return train_detection(config, workdir, show_progress=show_progress, **stop)
    if task == "speedrun":
        from research.train.speedrun import train_speedrun

        return train_speedrun(config, workdir, show_progress=show_progress, **stop)
    raise ValueError(f"unknown task {task!r} (known: classification, {', '.join(TASKS)})")
