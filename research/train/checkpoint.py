"""Orbax checkpoints of the train state and the data-iterator state, with keep-last-k and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into this run (corrupt, or of another model/optimizer)."""


class Checkpointer:
    """Saves ``{'state': arrays, 'data': iterator state, 'meta': json}`` under ``workdir/checkpoints``."""

    def __init__(self, workdir: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(workdir).resolve() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state_arrays: Any, data_state: Any, meta: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state_arrays),
                data=ocp.args.JsonSave(_jsonable(data_state)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict[str, Any]]:
        """Restores onto the shardings of ``abstract_state``; a mismatch raises :class:`CheckpointError`."""
        path = self.directory / str(step)
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # orbax raises many types for corrupt or mismatched trees
            raise CheckpointError(
                f"cannot restore checkpoint {path}: {type(e).__name__}: {e}\n"
                "The checkpoint is corrupt or was written by a different model/optimizer config. "
                "Use another --workdir, or delete that step directory to fall back to an older one."
            ) from e
        _check_tree(restored["state"], abstract_state, path)
        return restored["state"], restored["data"], dict(restored["meta"] or {})

    def restore_raw(self, step: int | None = None) -> dict[str, Any]:
        """The arrays of a checkpoint as saved (host numpy arrays), without a target: for inspection."""
        step = self.latest_step() if step is None else step
        try:
            return self.manager.restore(step)["state"]
        except ValueError:  # saved on another topology (other devices/processes): restore onto one device
            one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            meta = self.manager.item_metadata(step)["state"]
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
            return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding skeleton of a pytree of arrays (the restore target)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )


def _check_tree(restored: Any, target: Any, path: Path) -> None:
    r_paths = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(restored)}
    t_paths = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(target)}
    if r_paths.keys() != t_paths.keys():
        missing = sorted(t_paths.keys() - r_paths.keys())[:5]
        extra = sorted(r_paths.keys() - t_paths.keys())[:5]
        raise CheckpointError(
            f"checkpoint {path} does not match this model: missing {missing}, unexpected {extra}"
        )
    for k, t in t_paths.items():
        if tuple(r_paths[k].shape) != tuple(t.shape):
            raise CheckpointError(
                f"checkpoint {path} does not match this model: {k} has shape "
                f"{tuple(r_paths[k].shape)} in the checkpoint, {tuple(t.shape)} here"
            )


def _jsonable(x: Any) -> Any:
    """grain iterator states are JSON-friendly dicts (bytes are decoded)."""
    if isinstance(x, bytes):
        return {"__bytes__": x.decode("latin1")}
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def from_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__bytes__"}:
            return x["__bytes__"].encode("latin1")
        return {k: from_jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [from_jsonable(v) for v in x]
    return x
