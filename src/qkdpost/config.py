"""One frozen configuration for a whole run: a keyword-only dataclass per stage.

Every field name is unique across the stages, so the same name serves as the
key in a TOML file (inside the stage's table), as a CLI flag (``--block-bits``
or ``--block_bits``) and as the name recorded in every output. The effective
configuration is built in three layers, later wins::

    defaults  <  TOML file  <  CLI flags

and :meth:`Config.to_dict` records it next to every key block and report.

Example TOML::

    [pipeline]
    block_bits = 1048576

    [reconcile]
    ec_method = "cascade"
    cascade_preset = "option7"

    [finitekey]
    eps_sec = 1e-10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

__all__ = [
    "IoConfig",
    "AlignConfig",
    "SiftConfig",
    "EstimateConfig",
    "ReconcileConfig",
    "VerifyConfig",
    "FiniteKeyConfig",
    "AmplifyConfig",
    "PipelineConfig",
    "TransportConfig",
    "Config",
    "load_config",
    "add_config_arguments",
    "config_from_args",
    "to_toml",
]


# Most back-half lanes Bob may run (Alice keeps state per lane; the bound caps what a peer can make her hold).
MAX_LANES = 16


def _check(cond: bool, name: str, value: Any, constraint: str, fix: str = "") -> None:
    if not cond:
        msg = f"{name}={value!r}: {constraint}"
        if fix:
            msg += f"; {fix}"
        raise ConfigError(msg)


@dataclass(frozen=True, kw_only=True)
class IoConfig:
    """Reading timestamp streams.

    Attributes
    ----------
    chunk_events : int
        Events per chunk read from a file (memory per chunk ~ 9 bytes/event).
    input_format : str
        ``"auto"`` (by magic/extension) or a format name understood by
        :func:`qkdpost.io.open_stream`.
    """

    chunk_events: int = 1 << 20
    input_format: str = "auto"

    def __post_init__(self) -> None:
        _check(1024 <= self.chunk_events <= 1 << 28, "chunk_events", self.chunk_events,
               "must be in [1024, 2^28]", "use e.g. 1048576")
        _check(bool(self.input_format), "input_format", self.input_format, "must not be empty",
               "use 'auto'")


@dataclass(frozen=True, kw_only=True)
class SiftConfig:
    """Sifting (see :class:`qkdpost.sift.SiftConfig`, which this builds).

    Attributes
    ----------
    topology : {"auto", "bbm92", "decoy"}
        Entanglement (both parties timestamp) or prepare-and-measure decoy
        BB84 (Alice's input is a slot log). ``"auto"`` decides from Alice's
        stream kind (``"slots"`` means decoy).
    coincidence_window_ps : float
        Half-width of the coincidence window (BBM92) in picoseconds; 0 lets
        the sifting stage choose from the measured peak width.
    multi_click_window_ps : float
        Clicks of one party this close after a detection join it (0: automatic).
    dead_time_ps : float
        Software dead time after each detection (0: off).
    key_basis : {"Z", "X"}
        Basis whose bits become key; the other one is disclosed for estimation.
    bob_flip : str
        Comma-separated bases in which Bob inverts his bits (e.g. ``"Z,X"``
        for a singlet source); empty for none.
    window_s : float
        Span of Alice's time per sifting round trip.
    """

    topology: str = "auto"
    coincidence_window_ps: float = 0.0
    multi_click_window_ps: float = 0.0
    dead_time_ps: float = 0.0
    key_basis: str = "Z"
    bob_flip: str = ""
    window_s: float = 0.05

    def __post_init__(self) -> None:
        _check(self.topology in ("auto", "bbm92", "decoy"), "topology", self.topology,
               "must be 'auto', 'bbm92' or 'decoy'")
        for name in ("coincidence_window_ps", "multi_click_window_ps", "dead_time_ps"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v >= 0, name, v, "must be >= 0 (0 = automatic/off)")
        _check(self.key_basis in ("Z", "X"), "key_basis", self.key_basis, "must be 'Z' or 'X'")
        _check(all(b.strip() in ("Z", "X") for b in self.bob_flip.split(",") if b.strip()), "bob_flip",
               self.bob_flip, "must be a comma-separated list of 'Z' and 'X' (or empty)")
        _check(1e-4 <= self.window_s <= 60, "window_s", self.window_s, "must be in [1e-4, 60] seconds")


@dataclass(frozen=True, kw_only=True)
class AlignConfig:
    """Clock acquisition (see :class:`qkdpost.align.AlignConfig`, which this builds).

    Attributes
    ----------
    max_offset_s, offset_prior_s : float
        Offset search range around the prior (seconds).
    max_freq_ppm : float
        Largest frequency offset searched.
    acquisition_s : float
        Data used to acquire, from each party's first event (seconds).
    coarse_bin_s, fine_bin_s : float
        First and last cross-correlation bin widths.
    min_significance : float
        Smallest accepted peak significance.
    """

    max_offset_s: float = 0.6
    offset_prior_s: float = 0.0
    max_freq_ppm: float = 120.0
    acquisition_s: float = 1.5
    coarse_bin_s: float = 32e-6
    fine_bin_s: float = 1e-9
    min_significance: float = 6.0

    def __post_init__(self) -> None:
        for name in ("max_offset_s", "acquisition_s", "coarse_bin_s", "fine_bin_s", "min_significance"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v > 0, name, v, "must be a positive finite number")
        _check(math.isfinite(self.offset_prior_s), "offset_prior_s", self.offset_prior_s, "must be finite")
        _check(0 <= self.max_freq_ppm <= 1000, "max_freq_ppm", self.max_freq_ppm, "must be in [0, 1000] ppm")


@dataclass(frozen=True, kw_only=True)
class EstimateConfig:
    """Parameter estimation.

    Attributes
    ----------
    qber_abort : float
        Blocks whose estimated QBER exceeds this are dropped before
        reconciliation (reason ``"qber_abort"``). 0.11 is the asymptotic
        BB84 limit (Shor and Preskill, PRL 85, 441 (2000)).
    """

    qber_abort: float = 0.11

    def __post_init__(self) -> None:
        _check(0 < self.qber_abort < 0.5, "qber_abort", self.qber_abort, "must be in (0, 0.5)")


@dataclass(frozen=True, kw_only=True)
class ReconcileConfig:
    """Error correction.

    Attributes
    ----------
    ec_method : {"auto", "cascade", "ldpc"}
        ``"auto"`` uses LDPC when the estimated QBER is at least
        ``ldpc_min_qber`` and Cascade below it. LDPC needs 1 + blind rounds
        round trips per batch (Cascade hundreds), which suits long-latency
        links; on a LAN Cascade is both more efficient (f 1.03 vs 1.09 at
        5 %) and faster per core here (docs/cascade.md, docs/ldpc.md).
    cascade_preset : str
        Cascade variant (see :mod:`qkdpost.reconcile.cascade`).
    cascade_passes : int
        Cascade passes (0: the preset's own count, 14 for option7). 20 by
        default: a session keeps one permutation seed, and with 14 passes
        some seeds (up to ~0.5 such pairs per seed expected at Q = 5 %)
        leave a pair of positions that share a block in every pass, so
        frames with errors on both fail
        verification at a steady rate of ~Q^2 (n = 10^6, Q = 5 %: 4 of 2608
        frames, all on one pair). Each further n/2 pass halves the number
        of such pairs for about one parity per block (docs/cascade.md).
    ldpc_min_qber : float
        Threshold for ``ec_method="auto"``.
    ldpc_code_bits : int
        Longest LDPC code the pipeline cuts a block for (0: the longest
        shipped, 2^18). 65536 by default: 4 blocks of 10^6 bits at Q = 5 %
        (``python benchmarks/bench_pipeline.py --qber 0.05 --blocks 4
        --ec-method ldpc --ldpc-code-bits N``) ran at 0.68 Mbit/s with f 1.102,
        against 0.04 Mbit/s with f 1.070 and 2.4 % more final key for 2^18,
        whose frames decode near the code's threshold in ~300 iterations
        (docs/pipeline.md).
    ec_qber_floor : float
        Lower clip of the QBER handed to reconciliation (an estimate of 0
        from a small test sample would otherwise give degenerate block sizes).
    """

    ec_method: str = "cascade"
    cascade_preset: str = "option7"
    cascade_passes: int = 20
    ldpc_min_qber: float = 0.04
    ldpc_code_bits: int = 65536
    ec_qber_floor: float = 0.005

    def __post_init__(self) -> None:
        _check(self.ec_method in ("auto", "cascade", "ldpc"), "ec_method", self.ec_method,
               "must be 'auto', 'cascade' or 'ldpc'")
        _check(bool(self.cascade_preset), "cascade_preset", self.cascade_preset, "must not be empty")
        _check(isinstance(self.cascade_passes, int) and 0 <= self.cascade_passes <= 64, "cascade_passes",
               self.cascade_passes, "must be an integer in 0..64 (0 = the preset's own count)")
        _check(0 < self.ldpc_min_qber < 0.5, "ldpc_min_qber", self.ldpc_min_qber, "must be in (0, 0.5)")
        _check(self.ldpc_code_bits >= 0, "ldpc_code_bits", self.ldpc_code_bits,
               "must be 0 (longest shipped code) or a code length such as 65536")
        _check(0 < self.ec_qber_floor < 0.5, "ec_qber_floor", self.ec_qber_floor, "must be in (0, 0.5)")


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    """Error verification.

    Attributes
    ----------
    eps_cor : float
        Correctness parameter; the tag has ``ceil(log2(1/eps_cor))`` bits
        (counted as leakage).
    """

    eps_cor: float = 2.0 ** -64

    def __post_init__(self) -> None:
        _check(0 < self.eps_cor < 1, "eps_cor", self.eps_cor, "must be in (0, 1)", "use e.g. 5.4e-20")

    @property
    def tag_bits(self) -> int:
        return int(math.ceil(-math.log2(self.eps_cor)))


@dataclass(frozen=True, kw_only=True)
class FiniteKeyConfig:
    """Finite-key secure length.

    Attributes
    ----------
    bound : {"auto", "tomamichel2012", "lim2014", "rusca2018"}
        Published bound; ``"auto"`` picks Tomamichel et al. 2012 for BBM92 and
        Lim et al. 2014 (two decoys) or Rusca et al. 2018 (one decoy) for
        decoy BB84.
    eps_sec : float
        Secrecy parameter.
    decoy_mu, decoy_p_mu : str
        Decoy BB84: the intensities (mean photon numbers, signal first) and
        their probabilities, comma-separated, e.g. ``"0.5,0.1,0.0002"`` and
        ``"0.7,0.2,0.1"``; public protocol parameters the bound needs.
    qber_tol : float
        BBM92 (Tomamichel et al. 2012): the protocol's tolerated test-basis
        error rate ``Q_tol``, fixed in advance as the paper's protocol has
        it; a block whose observed rate exceeds it yields no key. 0 (the
        default) uses each block's observed rate (variable length; see
        docs/finitekey.md).
    """

    bound: str = "auto"
    eps_sec: float = 1e-10
    decoy_mu: str = ""
    decoy_p_mu: str = ""
    qber_tol: float = 0.0

    def __post_init__(self) -> None:
        _check(self.bound in ("auto", "tomamichel2012", "lim2014", "rusca2018"), "bound", self.bound,
               "must be 'auto', 'tomamichel2012', 'lim2014' or 'rusca2018'")
        _check(0 < self.eps_sec < 1, "eps_sec", self.eps_sec, "must be in (0, 1)")
        _check(0 <= self.qber_tol < 0.5, "qber_tol", self.qber_tol,
               "must be in [0, 0.5): 0 for the observed rate, else the tolerated error rate", "e.g. 0.05")
        for name in ("decoy_mu", "decoy_p_mu"):
            try:
                vals = self.floats(name)
            except ValueError:
                vals = [-1.0]
            _check(all(math.isfinite(v) and v >= 0 for v in vals), name, getattr(self, name),
                   "must be empty or a comma-separated list of non-negative numbers", "e.g. '0.5,0.1,0.0002'")
        _check(len(self.floats("decoy_mu")) == len(self.floats("decoy_p_mu")), "decoy_p_mu", self.decoy_p_mu,
               f"needs one probability per intensity in decoy_mu={self.decoy_mu!r}")

    def floats(self, name: str) -> list[float]:
        """A comma-separated field as floats ([] when empty)."""
        return [float(x) for x in str(getattr(self, name)).split(",") if x.strip()]


@dataclass(frozen=True, kw_only=True)
class AmplifyConfig:
    """Privacy amplification.

    Attributes
    ----------
    pa_method : {"toeplitz", "modified"}
        Toeplitz hashing, or the modified form [I | T'] of Hayashi and
        Tsurumaru (IEEE TIT 62, 2213 (2016)) with an (n-1)-bit seed.
    pa_threads : int
        Threads per hash (1 or 2); 2 helps large blocks when a core is idle.
    """

    pa_method: str = "toeplitz"
    pa_threads: int = 1

    def __post_init__(self) -> None:
        _check(self.pa_method in ("toeplitz", "modified"), "pa_method", self.pa_method,
               "must be 'toeplitz' or 'modified'")
        _check(self.pa_threads in (1, 2), "pa_threads", self.pa_threads, "must be 1 or 2")


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """Blocking and parallelism.

    Attributes
    ----------
    block_bits : int
        Sifted key bits per block (DESIGN.md: default 2^20, up to 10^8).
    batch_blocks : int
        Blocks reconciled together (one round trip covers all of them).
        Default 4: with two lanes, 10^6-bit blocks at Q = 2 % go through the
        back half 1.3–1.7x faster than one block at a time on one lane
        (docs/pipeline.md); 1 (with ``lanes = 1``) gives the lowest latency
        per key.
    batch_wait_s : float
        Longest time a cut block waits for its batch to fill: then the
        blocks queued so far go as a smaller batch (checked whenever sifted
        bits arrive), so a slow link does not hold keys back for
        ``batch_blocks`` blocks. 0 sends every block as soon as it is cut.
    workers : int
        Threads for the per-block stages (Numba kernels release the GIL).
    lanes : int
        Batches in the back half at once when ``workers`` > 1, each in its
        own thread (its messages carry a lane number), so error correction
        of one batch runs on the second core while another batch waits for
        the channel. Bob's own setting; Alice follows whatever lanes he uses.
        Helps from two blocks per batch on; with one block per batch the
        lanes' Python work (which holds the GIL) costs more than it saves.
    seed : int
        Seed of the public randomness for simulation and tests; -1 (the
        default) means the OS CSPRNG, which production runs must use.
    """

    block_bits: int = 1 << 20
    batch_blocks: int = 4
    batch_wait_s: float = 30.0
    workers: int = 2
    lanes: int = 2
    seed: int = -1

    def __post_init__(self) -> None:
        _check(1024 <= self.block_bits <= 10 ** 8, "block_bits", self.block_bits,
               "must be in [1024, 10^8]", "use e.g. 1048576")
        _check(1 <= self.batch_blocks <= 256, "batch_blocks", self.batch_blocks, "must be in [1, 256]")
        _check(0 <= self.batch_wait_s < math.inf, "batch_wait_s", self.batch_wait_s, "must be a finite number >= 0")
        _check(1 <= self.workers <= 64, "workers", self.workers, "must be in [1, 64]")
        _check(1 <= self.lanes <= MAX_LANES, "lanes", self.lanes, f"must be in [1, {MAX_LANES}]")
        _check(self.seed >= -1, "seed", self.seed, "must be -1 (OS CSPRNG) or a non-negative int")


@dataclass(frozen=True, kw_only=True)
class TransportConfig:
    """The TCP channel between the parties.

    Attributes
    ----------
    timeout_s : float
        Longest wait for one reply (or one request on Alice's side) before
        the peer counts as gone.
    connect_timeout_s : float
        Longest wait for the TCP connection and handshake.
    auth_key_file : str
        Pre-shared key file (>= 32 random bytes, mode 0600) that
        authenticates every message between the parties
        (:func:`qkdpost.transport.load_auth_key`); both sides must name the
        same key. Empty: unauthenticated (only for a link authenticated
        below qkdpost, or tests).
    """

    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    auth_key_file: str = ""

    def __post_init__(self) -> None:
        _check(0 < self.timeout_s <= 86400, "timeout_s", self.timeout_s, "must be in (0, 86400] seconds")
        _check(0 < self.connect_timeout_s <= 3600, "connect_timeout_s", self.connect_timeout_s,
               "must be in (0, 3600] seconds")


_SECTIONS: dict[str, type] = {
    "io": IoConfig,
    "align": AlignConfig,
    "sift": SiftConfig,
    "estimate": EstimateConfig,
    "reconcile": ReconcileConfig,
    "verify": VerifyConfig,
    "finitekey": FiniteKeyConfig,
    "amplify": AmplifyConfig,
    "pipeline": PipelineConfig,
    "transport": TransportConfig,
}


@dataclass(frozen=True, kw_only=True)
class Config:
    """The effective configuration of a run: one frozen object per stage."""

    io: IoConfig = field(default_factory=IoConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    sift: SiftConfig = field(default_factory=SiftConfig)
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    finitekey: FiniteKeyConfig = field(default_factory=FiniteKeyConfig)
    amplify: AmplifyConfig = field(default_factory=AmplifyConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            _check(isinstance(getattr(self, name), cls), name, type(getattr(self, name)).__name__,
                   f"must be a {cls.__name__}")

    # -- conversions -----------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict {section: {field: value}} (JSON/TOML-ready)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "Config":
        """Build from a nested mapping; unknown sections or keys are errors.

        A flat mapping ``{field: value}`` is accepted too (field names are
        unique across sections).
        """
        nested: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        owners = field_owners()
        for key, value in data.items():
            if key in _SECTIONS:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{source}: [{key}] must be a table of fields, got {value!r}")
                for fname, fval in value.items():
                    if owners.get(fname) != key:
                        raise ConfigError(_unknown(source, f"{key}.{fname}", key))
                    nested[key][fname] = fval
            elif key in owners:
                nested[owners[key]][key] = value
            else:
                raise ConfigError(_unknown(source, key, None))
        base = cls()
        return base.replace(**{f: v for sec in nested.values() for f, v in sec.items()}, _source=source)

    def replace(self, _source: str = "override", **overrides: Any) -> "Config":
        """A copy with the named fields (from any section) changed, type-checked."""
        owners = field_owners()
        per_section: dict[str, dict[str, Any]] = {}
        for fname, value in overrides.items():
            sec = owners.get(fname)
            if sec is None:
                raise ConfigError(_unknown(_source, fname, None))
            per_section.setdefault(sec, {})[fname] = _coerce(sec, fname, value, _source)
        kwargs = {}
        for sec, vals in per_section.items():
            kwargs[sec] = dataclasses.replace(getattr(self, sec), **vals)
        return dataclasses.replace(self, **kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def field_owners() -> dict[str, str]:
    """Map every field name to its section (names are unique by design)."""
    owners: dict[str, str] = {}
    for sec, cls in _SECTIONS.items():
        for f in fields(cls):
            if f.name in owners:  # pragma: no cover - guarded by a test
                raise RuntimeError(f"config field {f.name!r} defined in {owners[f.name]} and {sec}")
            owners[f.name] = sec
    return owners


def _field_type(sec: str, fname: str) -> type:
    hints = typing.get_type_hints(_SECTIONS[sec])
    tp = hints[fname]
    if isinstance(tp, types.UnionType):  # pragma: no cover - no optional fields today
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _coerce(sec: str, fname: str, value: Any, source: str) -> Any:
    tp = _field_type(sec, fname)
    where = f"{source}: {sec}.{fname}"
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r}: expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value, 0)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = math.nan
                if math.isfinite(f) and f.is_integer():
                    return int(f)
        raise ConfigError(f"{where}={value!r}: expected an integer (e.g. 1048576, 0x100000, 1e6)")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r}: expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}={value!r}: expected a number (e.g. 1e-10)")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}={value!r}: expected a string")
    raise ConfigError(f"{where}: unsupported field type {tp!r}")  # pragma: no cover


def _unknown(source: str, key: str, section: str | None) -> str:
    import difflib

    names = list(field_owners()) if section is None else [f.name for f in fields(_SECTIONS[section])]
    close = difflib.get_close_matches(key.split(".")[-1], names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(names))}"
    return f"{source}: unknown configuration key {key!r}{hint}"


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides``."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"config file {str(p)!r}: cannot read ({exc.strerror}); check the path") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(p)!r}: not valid TOML ({exc}); fix the syntax") from None
        cfg = Config.from_dict(data, source=str(p))
    if overrides:
        cfg = cfg.replace(_source="override", **overrides)
    return cfg


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")
    return json.dumps(str(v))  # TOML basic strings accept JSON escapes


def to_toml(cfg: Config) -> str:
    """Render a config as TOML that :func:`load_config` reads back unchanged."""
    lines = []
    for sec, values in cfg.to_dict().items():
        lines.append(f"[{sec}]")
        for k, v in values.items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and one ``--<field>`` flag per config field.

    Flags default to ``None`` (= not given) so the layering defaults < file <
    flags is kept. Both ``--block-bits`` and ``--block_bits`` are accepted.
    """
    parser.add_argument("--config", metavar="FILE", default=None, help="TOML configuration file")
    for sec, cls in _SECTIONS.items():
        group = parser.add_argument_group(f"[{sec}] configuration (overrides the file)")
        for f in fields(cls):
            tp = _field_type(sec, f.name)
            dash = "--" + f.name.replace("_", "-")
            flags = [dash] if dash == "--" + f.name else [dash, "--" + f.name]
            group.add_argument(
                *flags,
                dest=f"cfg_{f.name}",
                default=None,
                metavar=tp.__name__.upper(),
                help=f"(default {f.default!r})",
            )


def config_from_args(args: argparse.Namespace) -> Config:
    """The effective config from parsed args made with :func:`add_config_arguments`."""
    overrides = {
        name[4:]: value
        for name, value in vars(args).items()
        if name.startswith("cfg_") and value is not None
    }
    cfg = load_config(getattr(args, "config", None))
    if overrides:
        cfg = cfg.replace(_source="command line", **overrides)
    return cfg
