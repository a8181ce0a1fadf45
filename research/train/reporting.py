"""Metric files (JSONL + TensorBoard) and a terminal progress bar with throughput and ETA."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class MetricWriter:
    """Appends one JSON object per line to ``workdir/metrics.jsonl`` and mirrors scalars to TensorBoard.

    Rows: ``{"split": "train"|"test"|..., "step": int, "epoch": float, <metric>: float}``.
    On resume, rows past the restored step are dropped so the file reads as one run.
    """

    def __init__(self, workdir: str | Path, *, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        if self.path.exists():
            keep = [
                l
                for l in self.path.read_text().splitlines()
                if l.strip() and json.loads(l)["step"] <= resume_step
            ]
            self.path.write_text("".join(l + "\n" for l in keep))
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(
                str(Path(workdir) / "tb"), purge_step=resume_step + 1 if resume_step else None
            )
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self._tb = None

    def write(self, split: str, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"split": split, "step": int(step)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("split", "step") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    path = Path(workdir) / "metrics.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
    return [r for r in rows if split is None or r["split"] == split]


def _plain(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if isinstance(v, (int, bool)):
        return v
    return f if math.isfinite(f) else str(f)


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "--:--"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """``[#####.....] 1200/5000 24% | 15.2 it/s 1946 img/s | loss 0.41 top1 87.1% | ETA 04:10``.

    Redraws in place on a terminal; elsewhere (logs, CI) prints one line per update.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        batch_size: int,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
    ):
        self.total, self.batch = total_steps, batch_size
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and getattr(self.stream, "isatty", lambda: False)()
        self._t0, self._s0 = time.perf_counter(), start_step
        self._last_len = 0

    def reset_clock(self, step: int) -> None:
        """Restarts the rate estimate (after compilation or an evaluation pause)."""
        self._t0, self._s0 = time.perf_counter(), step

    def rate(self, step: int) -> float:
        dt = time.perf_counter() - self._t0
        return (step - self._s0) / dt if dt > 0 and step > self._s0 else float("nan")

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        rate = self.rate(step)
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
        frac = step / max(self.total, 1)
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        parts = [f"[{bar}] {step}/{self.total} {100 * frac:3.0f}%"]
        if rate == rate:
            parts.append(f"{rate:.2f} it/s {rate * self.batch:.0f} img/s")
        shown = " ".join(f"{k} {_fmt(k, v)}" for k, v in metrics.items())
        if shown:
            parts.append(shown)
        parts.append(f"ETA {format_seconds(eta)}")
        line = " | ".join(parts)
        if self.tty:
            pad = max(self._last_len - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
            self._last_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Prints a line without breaking the bar."""
        if not self.enabled:
            return
        if self.tty and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._last_len:
            self.stream.write("\n")
            self.stream.flush()
            self._last_len = 0


def _fmt(key: str, v: float) -> str:
    if key.startswith("top"):
        return f"{100 * v:.2f}%"
    if key == "lr":
        return f"{v:.3g}"
    return f"{v:.4f}"
