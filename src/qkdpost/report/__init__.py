"""Run reports: ``report.json`` (per block and totals) and ``report.png``.

A :class:`Report` collects one :class:`BlockRecord` per key block (kept or
dropped, with the reason), per-stage timings and traffic, and the inputs'
detection counts; :meth:`Report.to_dict` adds totals, the configuration and
the versions that made the run. It never holds key material.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..bits import binary_entropy

__all__ = ["BlockRecord", "Report", "versions", "write_json_atomic", "plot_report"]

#: Stage names in pipeline order (what timings and traffic are keyed by).
STAGES = ("read", "sift", "estimate", "reconcile", "verify", "finitekey", "amplify", "store")


@dataclass
class BlockRecord:
    """What happened to one key block (figures only, no key bits).

    ``status`` is ``"ok"`` (key stored on both sides) or ``"dropped"`` with
    ``reason`` one of ``qber_abort``, ``ec_failed``, ``verify_failed``,
    ``no_secure_length``, ``peer_disconnected``, ``protocol_error``,
    ``corrupt_input``, ``already_stored``, ``interrupted_earlier``.
    """

    block_id: str
    index: int
    n_sifted: int
    status: str = "dropped"
    reason: str = ""
    qber_estimate: float = float("nan")
    qber_observed: float = float("nan")
    ec_method: str = ""
    leak_ec: int = 0
    leak_verify: int = 0
    errors_corrected: int = -1
    secure_length: int = 0
    final_length: int = 0
    bound: str = ""
    stream_time_s: float = float("nan")
    times_s: dict[str, float] = field(default_factory=dict)
    round_trips: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def efficiency(self) -> float:
        """f = leak_ec / (n·h(Q)) with Q the error fraction Bob corrected."""
        if self.errors_corrected < 0 or self.n_sifted <= 0:
            return float("nan")
        q = self.errors_corrected / self.n_sifted
        h = float(binary_entropy(q))
        return self.leak_ec / (self.n_sifted * h) if h > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["efficiency"] = self.efficiency
        return d


def versions() -> dict[str, str]:
    """Versions of qkdpost and the libraries that decide its numbers."""
    import numba

    from .. import __version__

    return {
        "qkdpost": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
    }


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf → None, NumPy scalars → Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    return x


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON via a temporary sibling, fsync and rename."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(_clean(data), fh, indent=1, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written temporary behind
        raise


class Report:
    """Collects block records and run-level figures for one party's run.

    Parameters
    ----------
    role : str
        ``"bob"``, ``"alice"`` or ``"both"`` (one-process run).
    config : mapping
        :meth:`qkdpost.config.Config.to_dict` of the run.
    """

    def __init__(self, role: str, config: Mapping[str, Any], **info: Any):
        self.role = role
        self.config = dict(config)
        self.info: dict[str, Any] = dict(info)
        self.blocks: list[BlockRecord] = []
        self.stage_time_s: dict[str, float] = {s: 0.0 for s in STAGES}
        self.stage_round_trips: dict[str, int] = {s: 0 for s in STAGES}
        self.stage_bytes: dict[str, int] = {s: 0 for s in STAGES}
        self.counts: dict[str, int] = {}
        self.started = time.time()
        self._t0 = time.perf_counter()
        self.wall_s = 0.0
        self._lock = threading.RLock()  # back-half lanes and the store thread add records concurrently

    def add_time(self, stage: str, seconds: float, round_trips: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self._add_time(stage, seconds, round_trips, nbytes)

    def _add_time(self, stage: str, seconds: float, round_trips: int, nbytes: int) -> None:
        self.stage_time_s[stage] = self.stage_time_s.get(stage, 0.0) + seconds
        self.stage_round_trips[stage] = self.stage_round_trips.get(stage, 0) + round_trips
        self.stage_bytes[stage] = self.stage_bytes.get(stage, 0) + nbytes

    def add_count(self, name: str, value: int) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + int(value)

    def add_block(self, rec: BlockRecord) -> None:
        with self._lock:
            self.blocks.append(rec)
            for stage, s in rec.times_s.items():
                self._add_time(stage, s, rec.round_trips.get(stage, 0), rec.bytes.get(stage, 0))

    def finish(self) -> None:
        self.wall_s = time.perf_counter() - self._t0

    def totals(self) -> dict[str, Any]:
        ok = [b for b in self.blocks if b.status == "ok"]
        reasons: dict[str, int] = {}
        for b in self.blocks:
            if b.status != "ok":
                reasons[b.reason] = reasons.get(b.reason, 0) + 1
        processed = [b for b in self.blocks if b.errors_corrected >= 0]
        sifted_in_blocks = sum(b.n_sifted for b in self.blocks)
        final = sum(b.final_length for b in ok)
        effs = [b.efficiency for b in processed if np.isfinite(b.efficiency)]
        qobs = [b.qber_observed for b in processed if np.isfinite(b.qber_observed)]
        wall = self.wall_s or (time.perf_counter() - self._t0)
        back_half = sum(self.stage_time_s.get(s, 0.0) for s in ("reconcile", "verify", "finitekey", "amplify", "store"))
        per_stage_bps = {}
        for s, t in self.stage_time_s.items():
            if t > 0:
                per_stage_bps[s] = (
                    self.counts.get("detections_bob", 0) / t if s in ("read", "sift") else sifted_in_blocks / t
                )
        span = self.info.get("stream_duration_s")
        return {
            "blocks": len(self.blocks),
            "blocks_ok": len(ok),
            "blocks_dropped": len(self.blocks) - len(ok),
            "drop_reasons": reasons,
            "sifted_bits_in_blocks": sifted_in_blocks,
            "final_bits": final,
            "leak_ec_bits": sum(b.leak_ec for b in processed),
            "leak_verify_bits": sum(b.leak_verify for b in processed),
            "mean_qber_observed": float(np.mean(qobs)) if qobs else None,
            "mean_efficiency": float(np.mean(effs)) if effs else None,
            "round_trips": sum(self.stage_round_trips.values()),
            "bytes": sum(self.stage_bytes.values()),
            "time_per_stage_s": dict(self.stage_time_s),
            "round_trips_per_stage": dict(self.stage_round_trips),
            "bytes_per_stage": dict(self.stage_bytes),
            "throughput_per_stage_bps": per_stage_bps,
            "sifted_to_final_bps": sifted_in_blocks / back_half if back_half > 0 else None,
            "wall_s": wall,
            "secret_key_rate_bps": final / span if span else None,
            **self.counts,
        }

    def to_dict(self) -> dict[str, Any]:
        return _clean(
            {
                "format": "qkdpost.report/1",
                "role": self.role,
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "versions": versions(),
                "config": self.config,
                **self.info,
                "totals": self.totals(),
                "blocks": [b.to_dict() for b in self.blocks],
            }
        )

    def write(self, out_dir: str | os.PathLike[str], *, plot: bool = True) -> Path:
        """Write ``report.json`` (and ``report.png``) into ``out_dir``."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        write_json_atomic(d / "report.json", data)
        if plot:
            plot_report(data, d / "report.png")
        return d / "report.json"

    def summary(self) -> str:
        """A few human lines (no key material)."""
        t = self.totals()
        lines = [
            f"blocks: {t['blocks_ok']} kept, {t['blocks_dropped']} dropped"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(t['drop_reasons'].items()))})" if t["drop_reasons"] else ""),
            f"sifted bits in blocks: {t['sifted_bits_in_blocks']}, final key bits: {t['final_bits']}",
        ]
        if t["mean_qber_observed"] is not None:
            lines.append(f"QBER (corrected errors): {100 * t['mean_qber_observed']:.2f} %")
        if t["mean_efficiency"] is not None:
            lines.append(f"reconciliation efficiency f: {t['mean_efficiency']:.3f}")
        if t["sifted_to_final_bps"]:
            lines.append(f"sifted -> final throughput: {t['sifted_to_final_bps'] / 1e6:.1f} Mbit/s")
        lines.append(f"round trips: {t['round_trips']}, bytes: {t['bytes']}, wall: {t['wall_s']:.2f} s")
        return "\n".join(lines)


def plot_report(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Four panels: QBER and key per block over time, f vs QBER, time per stage."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    blocks = data.get("blocks", [])
    x = [b["stream_time_s"] if b.get("stream_time_s") is not None else b["index"] for b in blocks]
    xlabel = "stream time (s)" if blocks and all(b.get("stream_time_s") is not None for b in blocks) else "block"
    fig, ax = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    q = [100 * b["qber_observed"] if b.get("qber_observed") is not None else np.nan for b in blocks]
    qe = [100 * b["qber_estimate"] if b.get("qber_estimate") is not None else np.nan for b in blocks]
    ax[0, 0].plot(x, q, "o-", ms=3, label="corrected errors")
    ax[0, 0].plot(x, qe, "x", ms=4, label="estimate (test bits)")
    ax[0, 0].set(xlabel=xlabel, ylabel="QBER (%)", title="QBER per block")
    ax[0, 0].legend(fontsize=8)
    fin = [b["final_length"] for b in blocks]
    times = [b.get("stream_time_s") for b in blocks]
    if blocks and all(t is not None for t in times):
        # secret key rate over capture time: final bits of a block over the capture span it covers
        order = np.argsort(times)
        ts = np.asarray(times, dtype=float)[order]
        fb = np.asarray(fin, dtype=float)[order]
        # blocks completed at the same capture time share the span since the previous time
        rate = np.full(ts.size, np.nan)
        prev = 0.0
        for t_val in np.unique(ts):
            sel = ts == t_val
            if t_val > prev:
                rate[sel] = fb[sel].sum() / (t_val - prev)
            prev = t_val
        ok = [blocks[i]["status"] == "ok" for i in order]
        ax[0, 1].plot(ts, rate, "o-", ms=3, color="tab:green")
        ax[0, 1].plot(ts[[not o for o in ok]], np.zeros(len(ok) - sum(ok)), "x", color="tab:red", label="dropped")
        ax[0, 1].set(xlabel="stream time (s)", ylabel="final key (bit/s)", title="secret key rate")
        if not all(ok):
            ax[0, 1].legend(fontsize=8)
    else:
        colors = ["tab:green" if b["status"] == "ok" else "tab:red" for b in blocks]
        ax[0, 1].bar(range(len(blocks)), fin, color=colors)
        ax[0, 1].set(xlabel="block", ylabel="final key bits", title="key per block (red: dropped)")
    eff = [b.get("efficiency") for b in blocks]
    pts = [(qq, e) for qq, e in zip(q, eff) if e is not None and np.isfinite(qq)]
    if pts:
        ax[1, 0].plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=4)
    ax[1, 0].axhline(1.0, color="k", lw=0.5)
    ax[1, 0].set(xlabel="QBER (%)", ylabel="f = leak / (n h(Q))", title="reconciliation efficiency")
    times = data.get("totals", {}).get("time_per_stage_s", {})
    names = [s for s in STAGES if times.get(s)]
    ax[1, 1].barh(names, [times[s] for s in names])
    ax[1, 1].invert_yaxis()
    ax[1, 1].set(xlabel="seconds", title="time per stage")
    fig.suptitle(f"qkdpost run ({data.get('role', '')}): {data.get('totals', {}).get('final_bits', 0)} final key bits")
    tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
