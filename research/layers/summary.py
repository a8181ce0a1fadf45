"""Model summary: per-layer output shape, parameters, MACs and receptive field, without FLOPs.

``summarize(model, (1, 32, 32, 3))`` traces ``model.apply`` once to a jaxpr on
``jax.eval_shape``'d variables (shapes only: ResNet-1202 costs what ResNet-20 does), with every
module call intercepted (``flax.linen.intercept_methods``). Rows, in execution order:

- each Conv / ConvTranspose / ConvLocal / Dense / norm module call (``LAYER_KINDS``, plus every
  module class with a ``summary_kind`` class attribute: ``research.layers.conv``'s convs, LeNet-5's
  PartialConv, Subsampling, RBFOutput; or extend with ``register_layer``) and each window pooling on data (``lax.reduce_window`` max/sum/min,
  whichever function issued it: row ``<module>/max_pool_<i>``). Params = the module's own
  'params' (a module called twice counts once, on its first row).
- MACs per example (batch total / N), torchvision's / fvcore's convention: multiply-adds of
  convs and linear layers only (norms, pools, activations, adds: 0). Conv: out_H out_W out_C kH
  kW in_C / groups (LeNet's C3: its 60 connected kernels only); dense: in * out per position;
  transposed conv as fvcore counts it, on the input side: in_H in_W in_C kH kW out_C / groups.
  LeNet-5's S2/S4 (2x2 sum times one coefficient per map: a pool plus a per-map affine, like a
  norm) and its RBF output (distances, not a linear layer) count 0.
- receptive field r (input pixels, per spatial dim) and jump j (Araujo et al. 2019, Distill,
  "Computing Receptive Fields of CNNs"), propagated through *every* jaxpr equation: conv / pool
  r_out = r_in + (k - 1) d j_in, j_out = s j_in (transposed: j_in / s, ceil(dilated taps / s));
  strided slices multiply j; a reduction over a spatial axis of n positions (global pool,
  flatten + dense, SE's squeeze) gives r + (n - 1) j, shown as "(all)"; adds, concats and other
  elementwise joins (residual, inception, dense) take the **max over their inputs**: the
  theoretical RF along the longest path of the DAG, with the smallest jump. Gathers on a spatial
  axis (adaptive pools, interpolation) keep r and rescale j; they and unknown shape-changing
  primitives (which collapse their input) are listed in ``approximations``. The final RF is the
  output's while it is still a map, else the largest among the spatial rows (the last feature
  map before global pooling / flatten). It can exceed the input (ResNet-20: 81 on 32x32). With
  ``train=True``, BN batch statistics make every position see the whole image.

``launch.py --config=... --summary`` prints this for an experiment's model (research/cli.py).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from fractions import Fraction
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.extend import core as jcore

from research.layers.common import native_convolutions

__all__ = ['LAYER_KINDS', 'Layer', 'Summary', 'format_count', 'register_layer', 'summarize']

_TAG = '__summary_layer_'

#: Row kinds with MACs: the conv and linear kinds; every other kind counts 0.
MAC_KINDS = ('conv', 'conv_transpose', 'conv_local', 'dense')

_SPATIAL_KINDS = ('conv', 'conv_transpose', 'conv_local', 'pool')

#: (module class, kind) pairs recognised as rows; see ``register_layer``. Resolved per call so
#: that later registrations and the lazily imported project classes are included.
LAYER_KINDS: list[tuple[type, str]] = [
    (nn.Conv, 'conv'),
    (nn.ConvTranspose, 'conv_transpose'),
    (nn.ConvLocal, 'conv_local'),
    (nn.Dense, 'dense'),
    (nn.DenseGeneral, 'dense'),
    (nn.BatchNorm, 'norm'),
    (nn.GroupNorm, 'norm'),
    (nn.LayerNorm, 'norm'),
    (nn.RMSNorm, 'norm'),
    (nn.InstanceNorm, 'norm'),
]


def register_layer(cls: type, kind: str) -> None:
    """Adds a module class as a row kind: 'conv' (MACs from its 'kernel' param on the output side),
    'conv_transpose', 'conv_local', 'dense' (MACs), or any other label (0 MACs, e.g. 'pool')."""
    LAYER_KINDS.insert(0, (cls, kind))


# --------------------------------------------------------------------------- result types


@dataclasses.dataclass(frozen=True)
class Layer:
    """One row: ``rf``/``jump`` per input spatial dim (None where not input-derived); ``spatial``:
    the output still has spatial positions (False once pooled/flattened: ``rf`` is collapsed)."""

    index: int
    path: str
    kind: str
    op: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    rf: tuple[Fraction, ...] | None
    jump: tuple[Fraction, ...] | None
    spatial: bool
    shared: bool = False


@dataclasses.dataclass(frozen=True)
class Summary:
    """``summarize``'s result. Counts per example; ``collections``: scalars per variable
    collection ('params' = trainable, 'batch_stats', LeNet's 'constants', ...)."""

    model: str
    input_shape: tuple[int, ...]
    output_shape: Any
    layers: tuple[Layer, ...]
    params: int
    collections: dict[str, int]
    macs: int
    receptive_field: tuple[Fraction, ...] | None
    receptive_field_layer: str | None
    jump: tuple[Fraction, ...] | None
    output_receptive_field: tuple[Fraction, ...] | None
    approximations: tuple[str, ...] = ()

    @property
    def unlisted_params(self) -> int:
        """'params' scalars in modules that are not rows (e.g. custom modules' own params)."""
        return self.params - sum(row.params for row in self.layers)

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        head = ['#', 'layer', 'op', 'output', 'params', 'MACs', 'RF', 'jump']
        rows = []
        for row in self.layers:
            rf = _fmt_dims(row.rf) + ('' if row.spatial or row.rf is None else ' (all)')
            rows.append(
                [
                    str(row.index),
                    row.path,
                    row.op,
                    'x'.join(map(str, row.output_shape[1:])),
                    f'{row.params:,}' + (' (shared)' if row.shared else ''),
                    f'{row.macs:,}',
                    rf,
                    _fmt_dims(row.jump) if row.spatial else '-',
                ]
            )
        return head, rows

    def footer(self) -> list[str]:
        others = ', '.join(f'{k} {v:,}' for k, v in self.collections.items() if k != 'params')
        lines = [
            f"Total params: {self.params:,} (trainable 'params')"
            + (f'; other collections: {others}' if others else ''),
            f'MACs per example: {self.macs:,} ({format_count(self.macs)}; conv + linear multiply-adds)',
        ]
        if self.unlisted_params:
            lines.append(f'Params outside the listed layers: {self.unlisted_params:,}')
        if self.receptive_field is not None:
            lines.append(
                f'Receptive field: {_fmt_dims(self.receptive_field)} px at {self.receptive_field_layer} '
                f'(jump {_fmt_dims(self.jump)}; theoretical, max over paths)'
            )
        if self.output_receptive_field is not None and self.receptive_field_layer != 'output':
            h_w = 'x'.join(map(str, self.input_shape[1:-1]))
            lines.append(f'Output receptive field: {_fmt_dims(self.output_receptive_field)} px (input {h_w})')
        if self.approximations:
            lines.append(f'RF approximated at: {", ".join(self.approximations)}')
        return lines

    def to_markdown(self) -> str:
        head, rows = self._rows()
        right = {0, 4, 5, 6, 7}
        out = [
            f'**{self.model}**, input {tuple(self.input_shape)}',
            '',
            '| ' + ' | '.join(head) + ' |',
            '|' + '|'.join('---:' if i in right else '---' for i in range(len(head))) + '|',
        ]
        out += ['| ' + ' | '.join(c.replace('|', '\\|') for c in r) + ' |' for r in rows]
        return '\n'.join(out + [''] + [f'- {line}' for line in self.footer()])

    def __str__(self) -> str:
        head, rows = self._rows()
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        right = {0, 4, 5, 6, 7}

        def fmt(r):
            return '  '.join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
            )

        rule = '-' * len(fmt(head).rstrip())
        lines = [f'{self.model}, input {tuple(self.input_shape)}', fmt(head).rstrip(), rule]
        lines += [fmt(r).rstrip() for r in rows]
        return '\n'.join(lines + [rule] + self.footer())


def format_count(n: int | float) -> str:
    """1,234,567 -> '1.2M'; 40,551,040 -> '40.6M'; 325,680 -> '325.7K' (one decimal)."""
    for div, unit in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(n) >= div:
            return f'{n / div:.1f}{unit}'
    return str(int(n))


def _num(v: Fraction) -> str:
    return str(int(v)) if v.denominator == 1 else f'{float(v):.3g}'


def _fmt_dims(dims) -> str:
    if dims is None or any(d is None for d in dims):
        return '-'
    return _num(dims[0]) if len(set(dims)) == 1 else 'x'.join(_num(d) for d in dims)


# --------------------------------------------------------------------------- receptive fields


@dataclasses.dataclass(frozen=True)
class _Dim:
    """Where one input spatial dim lives in a tensor: ``axis`` (None = reduced away), RF ``r``,
    jump ``j``; ``sub``: inner axes split off by a reshape (window offsets), ``extra`` the RF
    they add once summed over (LeNet's reshape-and-sum subsampling)."""

    axis: int | None
    r: Fraction
    j: Fraction | None
    sub: tuple[int, ...] = ()
    extra: Fraction = Fraction(0)


def _collapse(d: _Dim, n: int) -> _Dim:
    if d.axis is None:
        return d
    return _Dim(None, d.r + (n - 1) * (d.j or 0) + d.extra, None)


def _collapse_all(info, shape) -> tuple[_Dim, ...] | None:
    if info is None:
        return None
    return tuple(_collapse(d, shape[d.axis]) if d.axis is not None else d for d in info)


def _combine(infos) -> tuple[_Dim, ...] | None:
    infos = [i for i in infos if i is not None]
    if len(infos) <= 1:
        return infos[0] if infos else None
    out = []
    for dims in zip(*infos):
        r = max(d.r for d in dims)
        loc = [d for d in dims if d.axis is not None]
        if not loc:
            out.append(_Dim(None, r, None))
            continue
        js = [d.j for d in loc if d.j is not None]
        first = loc[0]
        out.append(_Dim(first.axis, r, min(js) if js else None, first.sub, first.extra))
    return tuple(out)


def _move(info, mapping: Callable[[int], int | None], shape) -> tuple[_Dim, ...] | None:
    """Renumbers located axes with ``mapping`` (None: the axis is reduced away -> collapse)."""
    if info is None:
        return None
    out = []
    for d in info:
        a = None if d.axis is None else mapping(d.axis)
        if a is None:
            out.append(_collapse(d, shape[d.axis]) if d.axis is not None else d)
            continue
        subs = [mapping(s) for s in d.sub]
        if any(s is None for s in subs):  # the window offsets were summed over
            out.append(_Dim(a, d.r + d.extra, d.j))
        else:
            out.append(_Dim(a, d.r, d.j, tuple(subs), d.extra))
    return tuple(out)


def _shape(v) -> tuple[int, ...]:
    return tuple(getattr(v.aval, 'shape', ()))


def _window(d: _Dim, k: int, s: int, dil: int, lhs_dil: int, axis: int) -> _Dim:
    if d.j is None:
        return _Dim(axis, d.r, None)
    span = (k - 1) * dil + 1
    taps = -(-span // lhs_dil)  # input positions a window covers (transposed conv: lhs dilation)
    return _Dim(axis, d.r + (taps - 1) * d.j, d.j / lhs_dil * s)


def _reshape_groups(a: Sequence[int], b: Sequence[int]):
    """Splits two shapes of equal size into aligned groups of axes with equal products."""
    groups, i, k = [], 0, 0
    while i < len(a) or k < len(b):
        gi, gk, pi, pk = [], [], 1, 1
        while True:
            if i < len(a) and (not gi or pi < pk):
                gi.append(i)
                pi *= a[i]
                i += 1
            elif k < len(b) and (not gk or pk < pi):
                gk.append(k)
                pk *= b[k]
                k += 1
            else:
                break
        groups.append((gi, gk))
    return groups


#: Call-like primitives whose sub-jaxpr maps inputs to outputs one to one.
_CALLS = frozenset(
    ('jit', 'pjit', 'closed_call', 'core_call', 'custom_jvp_call', 'custom_vjp_call', 'custom_vjp_call_jaxpr')
    + ('checkpoint', 'remat', 'remat2', 'named_call')
)


_REDUCTIONS = frozenset(
    ('reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod', 'reduce_and', 'reduce_or', 'argmax', 'argmin')
)


class _Tracer:
    """Walks a jaxpr propagating ``_Dim`` tuples (one per input spatial dim) per variable."""

    def __init__(self, root_name: str, layer_paths: Sequence[str]):
        self.events: list[tuple] = []
        self.approx: set[str] = set()
        self.root = root_name
        self.layer_paths = tuple(layer_paths)

    def walk(self, jaxpr, ins, prefix: str = ''):
        env = dict(zip(jaxpr.invars, ins))

        def read(v):
            return None if isinstance(v, jcore.Literal) else env.get(v)

        for eqn in jaxpr.eqns:
            xs = [read(v) for v in eqn.invars]
            outs = self.apply(eqn, xs, prefix)
            env.update(zip(eqn.outvars, outs))
        return [read(v) for v in jaxpr.outvars]

    # -- equation rules ---------------------------------------------------------------------------
    def apply(self, eqn, xs, prefix):
        name, p = eqn.primitive.name, eqn.params
        n_out = len(eqn.outvars)
        in_shapes = [_shape(v) for v in eqn.invars]
        out_shapes = [_shape(v) for v in eqn.outvars]
        if name == 'name':
            tag = str(p.get('name', ''))
            if tag.startswith(_TAG):
                self.events.append(('layer', int(tag[len(_TAG) :]), xs[0]))
            return xs[:1]
        sub = self._subjaxpr(eqn)
        if sub is not None:
            stack = str(eqn.source_info.name_stack)
            inner = f'{prefix}/{stack}' if prefix and stack else prefix or stack
            return self.walk(sub, xs, inner) if len(sub.invars) == len(xs) else self._default(eqn, xs)
        if name == 'cond':
            branches = [b.jaxpr for b in p['branches']]
            outs = [self.walk(b, xs[1:], prefix) for b in branches]
            return [_combine(o) for o in zip(*outs)]
        if all(x is None for x in xs):
            return [None] * n_out
        if name == 'conv_general_dilated':
            return [self._conv(p, xs, in_shapes)]
        if name.startswith('reduce_window'):
            return self._reduce_window(eqn, p, xs, in_shapes, out_shapes, prefix)
        if name in _REDUCTIONS:
            axes = tuple(p['axes'])
            return [_move(xs[0], lambda a: None if a in axes else a - sum(x < a for x in axes), in_shapes[0])]
        if name in ('cumsum', 'cumprod', 'cummax', 'cummin', 'cumlogsumexp', 'sort'):
            ax = p.get('axis', p.get('dimension'))
            res = []
            for x, s in zip(xs, in_shapes):
                if x is not None:
                    x = tuple(_Dim(d.axis, _collapse(d, s[d.axis]).r, d.j) if d.axis == ax else d for d in x)
                res.append(x)
            return [_combine(res)] * n_out
        if name == 'reshape':
            return [self._reshape(xs[0], in_shapes[0], out_shapes[0], p.get('dimensions'))]
        if name == 'squeeze':
            dims = tuple(a % len(in_shapes[0]) for a in p['dimensions'])
            return [_move(xs[0], lambda a: None if a in dims else a - sum(x < a for x in dims), in_shapes[0])]
        if name == 'transpose':
            perm = tuple(p['permutation'])
            return [_move(xs[0], perm.index, in_shapes[0])]
        if name == 'broadcast_in_dim':
            bd = tuple(p['broadcast_dimensions'])
            return [_move(xs[0], lambda a: bd[a], in_shapes[0])]
        if name == 'slice':
            strides = p.get('strides') or (1,) * len(in_shapes[0])
            return [
                self._map_dims(
                    xs[0], lambda d: dataclasses.replace(d, j=d.j * strides[d.axis] if d.j else d.j)
                )
            ]
        if name == 'pad':
            cfg = p['padding_config']
            return [
                self._map_dims(
                    xs[0], lambda d: dataclasses.replace(d, j=d.j / (cfg[d.axis][2] + 1) if d.j else d.j)
                )
            ]
        if name in ('rev', 'dynamic_slice', 'copy', 'copy_p', 'convert_element_type', 'reduce_precision'):
            return [xs[0]] + [None] * (n_out - 1)
        if name in ('concatenate', 'dynamic_update_slice', 'select_n', 'clamp'):
            return [_combine(xs)]
        if name == 'split':
            return [xs[0]] * n_out
        if name == 'dot_general':
            return [self._dot_general(p, xs, in_shapes)]
        if name == 'gather':
            return [self._gather(p, xs, in_shapes, out_shapes[0])]
        return self._default(eqn, xs)

    @staticmethod
    def _subjaxpr(eqn):
        if eqn.primitive.name not in _CALLS:
            return None
        for key in ('jaxpr', 'call_jaxpr', 'fun_jaxpr'):
            j = eqn.params.get(key)
            if isinstance(j, jcore.ClosedJaxpr):
                return j.jaxpr
            if isinstance(j, jcore.Jaxpr):
                return j
        return None

    @staticmethod
    def _map_dims(info, fn):
        if info is None:
            return None
        return tuple(fn(d) if d.axis is not None else d for d in info)

    def _default(self, eqn, xs):
        outs = []
        for v in eqn.outvars:
            shape = _shape(v)
            parts = []
            for x, iv in zip(xs, eqn.invars):
                if x is None:
                    continue
                s = _shape(iv)
                if len(s) == len(shape) and all(
                    a in (b, 1) for a, b in zip(s, shape)
                ):  # (broadcast) elementwise
                    parts.append(x)
                else:
                    self.approx.add(eqn.primitive.name)
                    parts.append(_collapse_all(x, _shape(iv)))
            outs.append(_combine(parts))
        return outs

    def _conv(self, p, xs, in_shapes):
        lhs_spec, rhs_spec, out_spec = p['dimension_numbers']
        lhs_sp, rhs_sp, out_sp = lhs_spec[2:], rhs_spec[2:], out_spec[2:]
        kshape = in_shapes[1]
        res = None
        if xs[0] is not None:
            dims = []
            for d in xs[0]:
                if d.axis is None:
                    dims.append(d)
                elif d.axis in lhs_sp:
                    i = lhs_sp.index(d.axis)
                    k = kshape[rhs_sp[i]]
                    dims.append(
                        _window(
                            d,
                            k,
                            p['window_strides'][i],
                            p['rhs_dilation'][i],
                            p['lhs_dilation'][i],
                            out_sp[i],
                        )
                    )
                elif d.axis == lhs_spec[0]:
                    dims.append(_Dim(out_spec[0], d.r, d.j))
                else:
                    dims.append(_collapse(d, in_shapes[0][d.axis]))
            res = tuple(dims)
        if xs[1] is not None:  # a kernel computed from the input (dynamic filters)
            self.approx.add('conv_general_dilated (input-dependent kernel)')
            res = _combine([res, _collapse_all(xs[1], kshape)])
        return res

    def _reduce_window(self, eqn, p, xs, in_shapes, out_shapes, prefix):
        n = len(eqn.outvars)
        wd, ws = p['window_dimensions'], p['window_strides']
        bd = p.get('base_dilation') or (1,) * len(wd)
        wdil = p.get('window_dilation') or (1,) * len(wd)
        outs = []
        for x in xs[:n]:
            if x is None:
                outs.append(None)
                continue
            outs.append(
                tuple(
                    _window(d, wd[d.axis], ws[d.axis], wdil[d.axis], bd[d.axis], d.axis)
                    if d.axis is not None
                    else d
                    for d in x
                )
            )
        if xs[0] is not None and any(d.axis is not None for d in xs[0]):
            sp = [d.axis for d in xs[0] if d.axis is not None]
            body = p.get('jaxpr')
            body = getattr(body, 'jaxpr', body)
            if body is not None:  # generic reduce_window (e.g. a non-standard init value)
                op = body.eqns[0].primitive.name if len(body.eqns) == 1 else 'custom'
            else:
                op = {'reduce_window_sum': 'add', 'reduce_window_max': 'max', 'reduce_window_min': 'min'}.get(
                    eqn.primitive.name, 'custom'
                )
            self.events.append(
                (
                    'pool',
                    op,
                    sp,
                    wd,
                    ws,
                    in_shapes[0],
                    out_shapes[0],
                    outs[0],
                    self._path(eqn, prefix),
                )
            )
        return outs

    def _path(self, eqn, prefix):
        stack = str(eqn.source_info.name_stack)
        full = f'{prefix}/{stack}' if prefix and stack else prefix or stack
        parts = [c for c in full.split('/') if c and '(' not in c]
        if parts and parts[0] == self.root:
            parts = parts[1:]
        return '/'.join(parts)

    def _reshape(self, x, a, b, dimensions):
        if x is None:
            return None
        if dimensions is not None:
            self.approx.add('reshape(dimensions)')
            return _collapse_all(x, a)
        groups = _reshape_groups(a, b)
        where = {ax: g for g in groups for ax in g[0]}
        out = []
        for d in x:
            if d.axis is None:
                out.append(d)
                continue
            gi, gk = where[d.axis]
            big_in = [i for i in gi if a[i] != 1]
            big_out = [k for k in gk if b[k] != 1]
            if big_in in ([d.axis], []) and (len(big_out) <= 1 or a[d.axis] == 1):
                target = big_out[0] if big_out else (gk[0] if gk else None)
                out.append(_collapse(d, a[d.axis]) if target is None else _Dim(target, d.r, d.j))
            elif big_in == [d.axis]:  # split: outer axis keeps the position, inner axes are offsets
                m = math.prod(b[k] for k in big_out[1:])
                extra = (m - 1) * d.j if d.j is not None else Fraction(0)
                out.append(_Dim(big_out[0], d.r, d.j * m if d.j else d.j, tuple(big_out[1:]), extra))
            else:  # merged with other axes (flatten): every element sees the whole axis
                out.append(_collapse(d, a[d.axis]))
        return tuple(out)

    def _dot_general(self, p, xs, in_shapes):
        (lc, rc), (lb, rb) = p['dimension_numbers']
        lhs_free = [a for a in range(len(in_shapes[0])) if a not in lc and a not in lb]
        rhs_free = [a for a in range(len(in_shapes[1])) if a not in rc and a not in rb]

        def lmap(a):
            return None if a in lc else (lb.index(a) if a in lb else len(lb) + lhs_free.index(a))

        def rmap(a):
            return (
                None if a in rc else (rb.index(a) if a in rb else len(lb) + len(lhs_free) + rhs_free.index(a))
            )

        return _combine([_move(xs[0], lmap, in_shapes[0]), _move(xs[1], rmap, in_shapes[1])])

    def _gather(self, p, xs, in_shapes, out_shape):
        x = xs[0]
        if x is None:
            return None
        dn = p['dimension_numbers']
        removed = set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
        kept = [a for a in range(len(in_shapes[0])) if a not in removed]
        batch_pos = [a for a in range(len(out_shape)) if a not in dn.offset_dims]
        out = []
        for d in x:
            if d.axis is None:
                out.append(d)
            elif d.axis in kept:
                out.append(_Dim(dn.offset_dims[kept.index(d.axis)], d.r, d.j, (), Fraction(0)))
            elif d.axis in dn.start_index_map and len(batch_pos) == 1:  # take along a spatial axis
                self.approx.add('gather (resampling)')
                j = d.j * Fraction(in_shapes[0][d.axis], out_shape[batch_pos[0]]) if d.j else d.j
                out.append(_Dim(batch_pos[0], d.r, j))
            else:
                self.approx.add('gather')
                out.append(_collapse(d, in_shapes[0][d.axis]))
        return tuple(out)


# --------------------------------------------------------------------------- summarize


def _kind_of(module, kinds) -> str | None:
    own = getattr(type(module), 'summary_kind', None)  # a module class's own row kind
    if own is not None:
        return own
    for cls, kind in kinds:
        if isinstance(module, cls):
            return kind
    return None


def _size(tree) -> int:
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def _ints(v, n: int) -> tuple[int, ...] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    return v if all(isinstance(a, int) for a in v) else None


def _op_text(module, kind: str, kernel_shape) -> str:
    name = type(module).__name__
    if kind not in ('conv', 'conv_transpose', 'conv_local'):
        return name
    ks = getattr(module, 'kernel_size', None)
    n = len(ks) if isinstance(ks, (tuple, list)) else (len(kernel_shape) - 2 if kernel_shape else 2)
    ks = _ints(ks, n)
    text = name + (' ' + 'x'.join(map(str, ks)) if ks else '')
    s = _ints(getattr(module, 'strides', None), n)
    if s and any(v != 1 for v in s):
        text += '/' + ('x'.join(map(str, s)) if len(set(s)) > 1 else str(s[0]))
    d = _ints(getattr(module, 'kernel_dilation', getattr(module, 'dilation', None)), n)
    if d and any(v != 1 for v in d):
        text += ' d' + ('x'.join(map(str, d)) if len(set(d)) > 1 else str(d[0]))
    g = getattr(module, 'feature_group_count', getattr(module, 'groups', 1))
    if isinstance(g, int) and g != 1:
        text += f' g{g}'
    return text


def _macs(module, kind: str, x, y, kernel) -> int:
    """Total multiply-adds over the batch (see the module docstring)."""
    if kind not in MAC_KINDS or kernel is None:
        return 0
    ksize = int(np.prod(kernel.shape))
    if kind == 'conv':
        return int(np.prod(y.shape)) * ksize // y.shape[-1]
    if kind == 'conv_transpose':
        return int(np.prod(x.shape)) * ksize // x.shape[-1]
    if kind == 'conv_local':
        return ksize * x.shape[0]
    feats = getattr(module, 'features', y.shape[-1])
    feats = int(np.prod(feats)) if isinstance(feats, (tuple, list)) else int(feats)
    return int(np.prod(y.shape)) * ksize // feats


_POOL_NAMES = {'max': ('max_pool', 'MaxPool'), 'min': ('min_pool', 'MinPool'), 'add': ('avg_pool', 'AvgPool')}


def _pool_record(event, counts: dict) -> dict:
    """A row for a window pooling found in the jaxpr: ``<module>/<op>_<i>``, e.g. max_pool_0."""
    _, reduce_op, axes, window, strides, in_shape, out_shape, info, module = event
    name, text = _POOL_NAMES.get(reduce_op, ('pool', 'Pool'))
    k = counts[(module, name)] = counts.get((module, name), -1) + 1
    text += ' ' + 'x'.join(str(window[a]) for a in axes)
    s = [strides[a] for a in axes]
    if any(v != 1 for v in s):
        text += '/' + ('x'.join(map(str, s)) if len(set(s)) > 1 else str(s[0]))
    return dict(
        path=f'{module}/{name}_{k}' if module else f'{name}_{k}',
        kind='pool',
        op=text,
        input_shape=tuple(in_shape),
        output_shape=tuple(out_shape),
        params=0,
        macs=0,
        info=info,
        module=module,
    )


def _accepts(model, name: str) -> bool:
    try:
        params = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def summarize(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    train: bool = False,
    dtype: Any = jnp.float32,
    **call_kwargs,
) -> Summary:
    """Summary of ``model`` on an input of ``input_shape`` (N, *spatial, C); counts per example.

    ``train`` is passed to ``__call__`` when it takes one (train mode: 'dropout' rng given,
    non-'params' collections mutable); ``call_kwargs`` go to ``__call__`` too. Nothing is
    computed: variables come from ``jax.eval_shape(model.init)``, the forward is only traced.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) < 3:
        raise ValueError(f'input_shape must be (N, *spatial, C), got {input_shape}')
    batch = input_shape[0]
    kw = dict(call_kwargs)
    if _accepts(model, 'train'):
        kw['train'] = train
    x_spec = jax.ShapeDtypeStruct(input_shape, dtype)

    def init(key, x):
        return model.init({'params': key, 'dropout': jax.random.fold_in(key, 1)}, x, **kw)

    variables = jax.eval_shape(init, jax.random.key(0), x_spec)
    collections = {name: _size(tree) for name, tree in variables.items()}
    mutable = [c for c in variables if c != 'params'] if train else False

    kinds = LAYER_KINDS
    records: list[dict] = []
    seen: set[str] = set()

    def interceptor(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if context.method_name != '__call__':
            return y
        module = context.module
        kind = _kind_of(module, kinds)
        if kind is None or not isinstance(y, jax.Array) or not args:
            return y
        x = args[0]
        path = '/'.join(module.path) or type(module).__name__
        params = module.variables.get('params', {})
        kernel = params.get('kernel') if hasattr(params, 'get') else None
        shared = path in seen
        seen.add(path)
        records.append(
            dict(
                path=path,
                kind=kind,
                op=_op_text(module, kind, getattr(kernel, 'shape', None)),
                input_shape=tuple(np.shape(x)),
                output_shape=tuple(y.shape),
                params=0 if shared else _size(params),
                macs=_macs(module, kind, x, y, kernel) // batch,
                shared=shared,
            )
        )
        return checkpoint_name(y, f'{_TAG}{len(records) - 1}')

    def forward(v, x):
        rng = {'dropout': jax.random.key(1)} if train else None
        out = model.apply(v, x, rngs=rng, mutable=mutable, **kw)
        return out[0] if mutable else out

    with nn.intercept_methods(interceptor), native_convolutions():  # convolutions as lax ops, to be read
        closed, out_struct = jax.make_jaxpr(forward, return_shape=True)(variables, x_spec)
    out_shape = jax.tree.map(lambda a: tuple(a.shape), out_struct)

    nsp = len(input_shape) - 2
    x_info = tuple(_Dim(1 + i, Fraction(1), Fraction(1)) for i in range(nsp))
    jaxpr = closed.jaxpr
    tracer = _Tracer(getattr(model, 'name', None) or type(model).__name__, [r['path'] for r in records])
    ins = [None] * (len(jaxpr.invars) - 1) + [x_info]
    outs = tracer.walk(jaxpr, ins)
    out_info = _combine(outs)

    layers: list[Layer] = []
    placed = set()
    pool_counts: dict[tuple[str, str], int] = {}

    def add(rec, info):
        rf = tuple(d.r for d in info) if info else None
        located = info is not None and any(d.axis is not None for d in info)
        jump = tuple(d.j for d in info) if located else None
        layers.append(Layer(index=len(layers), rf=rf, jump=jump, spatial=located, **rec))

    for ev in tracer.events:
        if ev[0] == 'layer':
            _, i, info = ev
            if i not in placed:
                placed.add(i)
                add(records[i], info)
            continue
        rec = _pool_record(ev, pool_counts)
        if any(rec['module'] == p or rec['module'].startswith(p + '/') for p in tracer.layer_paths):
            continue  # pooling inside a listed layer (e.g. a registered pool module)
        info = rec.pop('info')
        del rec['module']
        add(rec, info)
    for i, rec in enumerate(records):
        if i not in placed:
            add(rec, None)

    # Final RF: the output's while it is still a map; else (pooled / flattened: classifiers) the
    # largest RF among the spatial conv/pool rows, i.e. the last feature map before the collapse.
    out_rf = tuple(d.r for d in out_info) if out_info else None
    if out_info and any(d.axis is not None for d in out_info):
        final = (out_rf, 'output', tuple(d.j for d in out_info))
    else:
        spatial = [row for row in layers if row.spatial and row.kind in _SPATIAL_KINDS and row.rf]
        best = max(reversed(spatial), key=lambda row: max(row.rf), default=None)
        final = (best.rf, best.path, best.jump) if best else (None, None, None)
    return Summary(
        model=type(model).__name__,
        input_shape=input_shape,
        output_shape=out_shape,
        layers=tuple(layers),
        params=collections.get('params', 0),
        collections=collections,
        macs=sum(row.macs for row in layers),
        receptive_field=final[0],
        receptive_field_layer=final[1],
        jump=final[2],
        output_receptive_field=out_rf,
        approximations=tuple(sorted(tracer.approx)),
    )
