"""What a jitted step becomes on GPU and TPU, proven on a CPU-only machine (``jax.export``).

``jax.export.export(jitted, platforms=('cuda', 'tpu'))`` lowers a function for platforms this
machine does not have, from abstract inputs (``jax.ShapeDtypeStruct`` with shardings: nothing is
allocated, so a ResNet-50 step over 8 devices exports in seconds). :func:`check` exports a function
and reads the StableHLO it produced:

- **custom calls**: every ``stablehlo.custom_call`` target; the *CPU-only* ones (a target that
  this process has registered for the host platform and not for any exported platform, e.g. the
  oneDNN convolutions ``research_onednn_*`` or LAPACK's ``lapack_*_ffi``, or any ``*cpu_callback``);
  and the *unstable* ones (targets outside JAX's list of custom calls with a compatibility
  guarantee: XLA on another machine may not know them);
- **host callbacks** (``jax.pure_callback``, ``io_callback``, ``jax.debug.print``/``callback``):
  JAX cannot export them for several platforms, so the primitives are listed from the jaxpr, with
  the source line that made each;
- **element types** of every op, with its location (JAX's name stack and the Python call stack,
  e.g. ``jvp(ResNet)/layer1_0/bn1/reduce_sum`` in ``_compute_stats`` of
  ``flax/linen/normalization.py``), so a test can ask for the types of the convolutions, the dot
  products, the BatchNorm statistic reductions (``where='_compute_stats'``) or the loss
  (``where='cross_entropy'``);
- **collectives** written in the program (``jax.shard_map``'s ``psum`` -> ``all_reduce``) and, with
  ``partition_on=`` a list of devices, the collectives XLA's SPMD partitioner inserts: the exported
  module (for the exported platforms, as it is) is compiled by this machine's backend for those
  devices and the partitioned HLO is read. The partitioner is the same code on every backend, so
  a data-parallel train step that shows a gradient ``all-reduce`` here has it on GPU and TPU too
  (each backend's later passes may combine or rewrite collectives, e.g. all-reduce + slice into
  reduce-scatter, but cannot remove a reduction the program needs).

Usage (any function, any abstract arguments, any mesh)::

    from research.train import export
    step = jax.jit(train_step, out_shardings=...)
    report = export.check(step, state_abstract, batch_abstract, platforms=('cuda', 'tpu'),
                          partition_on=list(mesh.devices.flat))
    assert not report.problems(), report.problems()
    assert report.element_types('stablehlo.convolution') == {'bf16'}
    assert report.element_types('stablehlo.reduce', where='_compute_stats') == {'f32'}
    assert report.partitioned['all-reduce'] > 0

:func:`abstract` turns a pytree of arrays / shapes plus a pytree of shardings into the
``ShapeDtypeStruct`` arguments. Nothing here depends on the rest of the project.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

#: Collective ops, as StableHLO writes them (in the exported program) and as HLO does (partitioned).
STABLEHLO_COLLECTIVES = (
    'stablehlo.all_reduce',
    'stablehlo.reduce_scatter',
    'stablehlo.all_gather',
    'stablehlo.all_to_all',
    'stablehlo.collective_permute',
    'stablehlo.collective_broadcast',
)
HLO_COLLECTIVES = ('all-reduce', 'reduce-scatter', 'all-gather', 'all-to-all', 'collective-permute')
#: custom-call targets that run Python on the host (JAX's callback lowerings and the old host_callback).
HOST_CALLBACK_TARGET = re.compile(r'python_(cpu|gpu|tpu)_callback|host_callback|^xla_python_|callback', re.I)
#: jaxpr primitives that call back into Python besides ``*callback*`` (jax.debug.print's).
HOST_PRIMITIVES = frozenset({'debug_print'})
#: targets registered for the host only by JAX itself or by this project, known without a registry.
KNOWN_CPU_ONLY = re.compile(r'^research_onednn_|^lapack_|^ducc_|cpu_callback$|^xla_python_cpu')
_TYPE_RE = re.compile(r'(?:tensor<(?:[0-9?]+x)*([a-z][a-z0-9]*)>|^([a-z][a-z0-9]*)$)')
_HLO_COLLECTIVE_RE = re.compile(r'=\s*(\([^=]*?\)|\S+)\s+(' + '|'.join(HLO_COLLECTIVES) + r')(?:-start)?\(')
_HLO_ELEMENT_RE = re.compile(r'\b(pred|[subf]\d+|bf16|f8e\w+|c64|c128)\[')


@dataclasses.dataclass(frozen=True)
class Op:
    """One StableHLO op of the exported module."""

    name: str  # e.g. 'stablehlo.convolution'
    operand_types: tuple[str, ...]  # element types, e.g. ('bf16', 'bf16')
    result_types: tuple[str, ...]
    location: str  # name stack + Python call stack (file:line and function names)
    target: str | None = None  # custom_call target

    @property
    def element_types(self) -> set[str]:
        return set(self.operand_types) | set(self.result_types)


@dataclasses.dataclass
class Report:
    """What :func:`check` found in one exported function (see the module docstring)."""

    platforms: tuple[str, ...]
    ops: list[Op]
    custom_calls: dict[str, int]
    cpu_only_custom_calls: list[str]
    unstable_custom_calls: list[str]
    host_callbacks: list[str]
    collectives: dict[str, int]  # written in the program (shard_map), StableHLO names
    partitioned: dict[str, int] | None = None  # after SPMD partitioning, HLO names (partition_on)
    partitioned_types: dict[str, set[str]] | None = None  # element types of each partitioned collective
    in_shardings: tuple[str, ...] = ()  # of the flat arguments, as the module writes them ('' = none)
    out_shardings: tuple[str, ...] = ()  # of the flat results
    nr_devices: int = 1
    text: str | None = None  # the StableHLO module (None if the function could not be exported)
    partitioned_text: str | None = None
    error: str | None = None  # why it could not be exported (host callbacks), if it could not

    def select(self, name: str | None = None, where: str | None = None) -> list[Op]:
        """Ops named ``name`` (e.g. 'stablehlo.reduce'; None: all) whose location matches the regex
        ``where`` (a module path of the name stack, a function or file name; None: anywhere)."""
        pat = re.compile(where) if where else None
        return [
            op
            for op in self.ops
            if (name is None or op.name == name) and (pat is None or pat.search(op.location))
        ]

    def element_types(self, name: str | None = None, where: str | None = None) -> set[str]:
        """The element types of the operands and results of :meth:`select`'s ops (empty: none)."""
        out: set[str] = set()
        for op in self.select(name, where):
            out |= op.element_types
        return out

    def problems(self) -> list[str]:
        """What would make the program wrong or unportable on the exported platforms: CPU-only or
        unstable custom calls and host callbacks (one line each; empty when clean)."""
        out = [f'CPU-only custom call {t!r} (x{self.custom_calls[t]})' for t in self.cpu_only_custom_calls]
        out += [
            f'custom call {t!r} has no compatibility guarantee (x{self.custom_calls[t]})'
            for t in self.unstable_custom_calls
            if t not in self.cpu_only_custom_calls
        ]
        out += [f'host callback: {c}' for c in self.host_callbacks]
        return out

    def summary(self) -> str:
        conv = ','.join(sorted(self.element_types('stablehlo.convolution'))) or '-'
        dot = ','.join(sorted(self.element_types('stablehlo.dot_general'))) or '-'
        part = (
            ' partitioned ' + ' '.join(f'{k} {v}' for k, v in self.partitioned.items() if v)
            if self.partitioned is not None
            else ''
        )
        return (
            f'{"/".join(self.platforms)}: {len(self.ops)} ops, conv {conv}, dot {dot}, '
            f'custom calls {dict(self.custom_calls) or "none"}, {len(self.problems())} problem(s){part}'
        )


def abstract(tree: Any, shardings: Any = None) -> Any:
    """``jax.ShapeDtypeStruct`` leaves for a pytree of arrays or shape/dtype structs (e.g. the output
    of ``jax.eval_shape``), each with the matching leaf of ``shardings`` (a pytree of the same
    structure, or one sharding for all leaves, or None)."""
    if shardings is None or isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _stable_targets() -> set[str]:
    try:
        from jax._src.export import _export  # the list jax.export checks serialised modules against

        return set(_export._CUSTOM_CALL_TARGETS_GUARANTEED_STABLE)
    except (ImportError, AttributeError):  # pragma: no cover - moved in a newer JAX
        return set()


def registered_targets(platform: str) -> set[str]:
    """Custom-call targets this process has registered for ``platform`` ('cpu', 'cuda', 'rocm', 'tpu');
    empty where the platform's plugin is not installed."""
    from jax._src.lib import xla_client

    names = {'cpu': 'Host', 'cuda': 'CUDA', 'rocm': 'ROCM', 'tpu': 'TPU'}
    try:
        return set(xla_client.custom_call_targets(names.get(platform, platform)))
    except Exception:  # pragma: no cover - an unknown platform name
        return set()


def classify_targets(targets: Iterable[str], platforms: Sequence[str]) -> tuple[list[str], list[str]]:
    """(CPU-only, unstable) among ``targets`` for a module exported for ``platforms``."""
    targets = sorted(set(targets))
    non_cpu = [p for p in platforms if p != 'cpu']
    host = registered_targets('cpu')
    elsewhere = set().union(*(registered_targets(p) for p in non_cpu)) if non_cpu else set()
    cpu_only = []
    if non_cpu:
        cpu_only = [t for t in targets if (t in host or KNOWN_CPU_ONLY.search(t)) and t not in elsewhere]
    stable = _stable_targets()
    unstable = [t for t in targets if t not in stable and t not in elsewhere]
    return cpu_only, unstable


def _element_type(t) -> str:
    s = str(t)
    m = _TYPE_RE.search(s)
    return (m.group(1) or m.group(2)) if m else s


def parse_module(text: str) -> tuple[list[Op], tuple[str, ...], tuple[str, ...]]:
    """Every op of a StableHLO module (all functions, all nested regions, in textual order), and the
    shardings of the public ``main``'s arguments and results (``sdy.sharding`` or ``mhlo.sharding``
    attributes, '' where none; JAX's platform-index argument left out)."""
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib.mlir import ir

    ops: list[Op] = []
    main_shardings: dict[str, tuple[str, ...]] = {}

    def shardings(attrs) -> list[tuple[str, bool]]:
        out = []
        for a in ir.ArrayAttr(attrs) if attrs is not None else ():
            d = ir.DictAttr(a)
            s = next((str(d[k]) for k in ('sdy.sharding', 'mhlo.sharding') if k in d), '')
            out.append((s.strip('"'), 'jax.global_constant' in d))
        return out

    with jax_mlir.make_ir_context():
        module = ir.Module.parse(text)

        def walk(op):
            for region in op.regions:
                for block in region:
                    for child in block:
                        o = child.operation
                        target = None
                        if o.name == 'stablehlo.custom_call':
                            target = ir.StringAttr(o.attributes['call_target_name']).value
                        elif (
                            o.name == 'func.func' and ir.StringAttr(o.attributes['sym_name']).value == 'main'
                        ):
                            args, results = (
                                o.attributes[k] if k in o.attributes else None
                                for k in ('arg_attrs', 'res_attrs')
                            )
                            main_shardings['in'] = tuple(s for s, const in shardings(args) if not const)
                            main_shardings['out'] = tuple(s for s, _ in shardings(results))
                        ops.append(
                            Op(
                                name=o.name,
                                operand_types=tuple(_element_type(v.type) for v in o.operands),
                                result_types=tuple(_element_type(r.type) for r in o.results),
                                location=str(o.location),
                                target=target,
                            )
                        )
                        walk(o)

        walk(module.operation)
    return ops, main_shardings.get('in', ()), main_shardings.get('out', ())


def _callback_primitives(fn: Callable, args, kwargs) -> list[str]:
    """Host-callback primitives anywhere in ``fn``'s jaxpr, with the source line that made each."""
    from jax._src import source_info_util

    traced = fn.trace(*args, **kwargs) if hasattr(fn, 'trace') else jax.jit(fn).trace(*args, **kwargs)
    found: list[str] = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if 'callback' in eqn.primitive.name or eqn.primitive.name in HOST_PRIMITIVES:
                src = source_info_util.summarize(eqn.source_info)
                found.append(f'{eqn.primitive.name} at {src}')
            for v in eqn.params.values():
                for sub in v if isinstance(v, (tuple, list)) else (v,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(traced.jaxpr.jaxpr)
    return found


def export(fn: Callable, *args, platforms: Sequence[str] = ('cuda', 'tpu'), **kwargs) -> jax.export.Exported:
    """``jax.export.export(fn, platforms=platforms)(*args, **kwargs)`` with JAX's custom-call check
    off (so that :func:`check` can name every unstable or CPU-only target instead of stopping at
    the first); ``fn`` is jitted if it is not already."""
    jitted = fn if hasattr(fn, 'lower') else jax.jit(fn)
    checks = [jax.export.DisabledSafetyCheck.custom_call('ALL')]
    return jax.export.export(jitted, platforms=tuple(platforms), disabled_checks=checks)(*args, **kwargs)


def partition(exported: jax.export.Exported, devices: Sequence[jax.Device]) -> str:
    """The HLO after XLA's SPMD partitioning (and the local backend's passes) of ``exported``'s module
    over ``devices`` (as many as the module's ``nr_devices``, in the mesh's flat order): the module is
    compiled, never run. Uses private JAX compiler entry points (JAX 0.10)."""
    from jax._src import compiler
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib import xla_client
    from jax._src.lib.mlir import ir

    devices = list(devices)
    if len(devices) != exported.nr_devices:
        raise ValueError(
            f'the module is for {exported.nr_devices} devices, got {len(devices)} to partition on'
        )
    backend = devices[0].client
    options = compiler.get_compile_options(
        num_replicas=1,
        num_partitions=len(devices),
        # only the partitioned HLO is read: skip LLVM's expensive optimisations
        env_options_overrides=dict(
            xla_backend_optimization_level='0', xla_llvm_disable_expensive_passes=True
        ),
    )
    options.device_assignment = xla_client.DeviceAssignment.create(np.asarray([[d.id for d in devices]]))
    with jax_mlir.make_ir_context():
        module = ir.Module.parse(exported.mlir_module())
        executable = backend.compile_and_load(
            module, executable_devices=xla_client.DeviceList(tuple(devices)), compile_options=options
        )
    return '\n'.join(m.to_string() for m in executable.hlo_modules())


def count_collectives(hlo_text: str) -> tuple[dict[str, int], dict[str, set[str]]]:
    """(count, element types) of each kind of collective in an HLO module's text."""
    counts = dict.fromkeys(HLO_COLLECTIVES, 0)
    types: dict[str, set[str]] = {k: set() for k in HLO_COLLECTIVES}
    for shape, kind in _HLO_COLLECTIVE_RE.findall(hlo_text):
        counts[kind] += 1
        types[kind] |= set(_HLO_ELEMENT_RE.findall(shape))
    return counts, types


def check(
    fn: Callable,
    *args,
    platforms: Sequence[str] = ('cuda', 'tpu'),
    partition_on: Sequence[jax.Device] | None = None,
    **kwargs,
) -> Report:
    """Exports ``fn(*args, **kwargs)`` for ``platforms`` and analyses it (see the module docstring).

    ``args``/``kwargs``: abstract inputs (``jax.ShapeDtypeStruct``, with shardings for a sharded
    function; :func:`abstract`). ``partition_on``: devices to compile the exported module for, to read
    the collectives XLA's partitioner inserts (``Report.partitioned``); compiling costs seconds to a
    minute on CPU, so it is optional. A function with host callbacks cannot be exported for several
    platforms: the report then lists them, with ``text`` None and the export ``error``.
    """
    platforms = tuple(platforms)
    try:
        exported = export(fn, *args, platforms=platforms, **kwargs)
    except Exception as e:  # JAX cannot lower host callbacks for several platforms (various errors)
        callbacks = _callback_primitives(fn, args, kwargs)
        if not callbacks:
            raise
        return Report(platforms, [], {}, [], [], callbacks, {}, error=f'{type(e).__name__}: {e}'[:2000])
    text = exported.mlir_module()
    ops, in_shardings, out_shardings = parse_module(text)
    calls = collections.Counter(op.target for op in ops if op.target is not None)
    cpu_only, unstable = classify_targets(calls, platforms)
    callbacks = [f'custom call {t!r}' for t in sorted(calls) if HOST_CALLBACK_TARGET.search(t)]
    collectives = collections.Counter(op.name for op in ops if op.name in STABLEHLO_COLLECTIVES)
    report = Report(
        platforms=platforms,
        ops=ops,
        custom_calls=dict(calls),
        cpu_only_custom_calls=cpu_only,
        unstable_custom_calls=unstable,
        host_callbacks=callbacks,
        collectives={k: collectives.get(k, 0) for k in STABLEHLO_COLLECTIVES},
        in_shardings=in_shardings,
        out_shardings=out_shardings,
        nr_devices=exported.nr_devices,
        text=text,
    )
    if partition_on is not None:
        report.partitioned_text = partition(exported, partition_on)
        report.partitioned, report.partitioned_types = count_collectives(report.partitioned_text)
    return report
