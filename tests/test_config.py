"""Configuration: defaults < TOML file < flags, round trips, clear errors."""

import argparse
import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from qkdpost import config as C
from qkdpost.errors import ConfigError


def test_field_names_are_unique_across_sections():
    seen = {}
    for sec, cls in C._SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in seen, (f.name, seen.get(f.name), sec)
            seen[f.name] = sec


def test_configs_are_frozen_and_keyword_only():
    cfg = C.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pipeline.block_bits = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        C.PipelineConfig(4096)  # type: ignore[misc]


def test_toml_round_trip_default_and_changed(tmp_path):
    cfg = C.Config().replace(block_bits=4096, ec_method="ldpc", eps_sec=1e-9, timeout_s=3.5)
    p = tmp_path / "c.toml"
    p.write_text(C.to_toml(cfg))
    assert C.load_config(p) == cfg
    p.write_text(C.to_toml(C.Config()))
    assert C.load_config(p) == C.Config()


@settings(max_examples=40, deadline=None)
@given(
    block_bits=st.integers(1024, 10**8),
    eps=st.floats(1e-30, 0.5),
    method=st.sampled_from(["auto", "cascade", "ldpc"]),
    seed=st.integers(-1, 2**40),
)
def test_round_trip_property(tmp_path_factory, block_bits, eps, method, seed):
    cfg = C.Config().replace(block_bits=block_bits, eps_sec=eps, ec_method=method, seed=seed)
    p = tmp_path_factory.mktemp("cfg") / "c.toml"
    p.write_text(C.to_toml(cfg))
    assert C.load_config(p) == cfg
    assert C.Config.from_dict(cfg.to_dict()) == cfg


def test_flat_mapping_and_file_then_flags(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[pipeline]\nblock_bits = 8192\nworkers = 1\n[reconcile]\nec_method = "auto"\n')
    parser = argparse.ArgumentParser()
    C.add_config_arguments(parser)
    args = parser.parse_args(["--config", str(p), "--block-bits", "16384", "--eps_sec", "1e-8"])
    cfg = C.config_from_args(args)
    assert cfg.pipeline.block_bits == 16384  # flag beats file
    assert cfg.pipeline.workers == 1  # file beats default
    assert cfg.reconcile.ec_method == "auto"
    assert cfg.finitekey.eps_sec == 1e-8
    assert C.Config.from_dict({"block_bits": 2048}).pipeline.block_bits == 2048


@pytest.mark.parametrize(
    "text, match",
    [
        ("[pipeline]\nblock_bitz = 5\n", "did you mean 'block_bits'"),
        ("[pipeline]\nblock_bits = 12\n", r"block_bits=12: must be in \[1024, 10\^8\]"),
        ("[pipeline]\nblock_bits = 'big'\n", "expected an integer"),
        ("[nope]\nx = 1\n", "unknown configuration key 'nope'"),
        ("[reconcile]\nblock_bits = 4096\n", "unknown configuration key 'reconcile.block_bits'"),
        ("[reconcile]\nec_method = 'turbo'\n", "ec_method='turbo'"),
        ("pipeline = 3\n", "must be a table"),
        ("[pipeline\n", "not valid TOML"),
        ("[verify]\neps_cor = 0.0\n", r"eps_cor=0.0: must be in \(0, 1\)"),
    ],
)
def test_bad_files_name_key_value_and_fix(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        C.load_config(p)


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        C.load_config(tmp_path / "absent.toml")


def test_override_coercion():
    cfg = C.Config().replace(block_bits="0x1000", eps_sec="1e-9", chunk_events="1e6")
    assert cfg.pipeline.block_bits == 4096 and cfg.finitekey.eps_sec == 1e-9
    assert cfg.io.chunk_events == 1_000_000
    with pytest.raises(ConfigError, match="expected a number"):
        C.Config().replace(eps_sec="tiny")
    with pytest.raises(ConfigError, match="expected an integer"):
        C.Config().replace(block_bits=True)


def test_tag_bits_from_eps_cor():
    assert C.VerifyConfig(eps_cor=2.0**-64).tag_bits == 64
    assert C.VerifyConfig(eps_cor=1e-15).tag_bits == 50


def test_cascade_passes_default_reaches_the_kit():
    """The pipeline runs Cascade with reconcile.cascade_passes passes (20 by default: see the
    field's doc), 0 meaning the preset's own count; out-of-range values are refused."""
    import numpy as np

    from qkdpost.channel import LoopbackChannel, Responder
    from qkdpost.pipeline.kit import QkdpostKit

    assert C.Config().reconcile.cascade_passes == 20
    for bad in (-1, 65):
        with pytest.raises(ConfigError, match="cascade_passes"):
            C.Config().replace(cascade_passes=bad)
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2, 4096, dtype=np.uint8)
    b = a ^ (rng.random(4096) < 0.03).astype(np.uint8)
    for passes, want in ((20, 20), (0, 14)):
        cfg = C.Config().replace(cascade_passes=passes)
        kit = QkdpostKit()
        chan = LoopbackChannel(Responder(kit.reconcile_alice("cascade", {"r-0000000": a}, cfg, qber=0.02)))
        res = kit.reconcile_bob(chan, "cascade", ["r-0000000"], b[None, :], 0.03, cfg, seed=5)
        assert len(res.extra["block_sizes"]) == want and np.array_equal(res.bits[0], a)
