"""QuantConfig: defaults, per-point widths, and refusals that name the field."""

import pytest

from mmfree.core.quant import ALL_POINTS, QuantConfig


def test_defaults_and_per_point_widths():
  q = QuantConfig(bits=("h=24", "c=12"), disabled=("rms_inv",))
  assert q.bits_of("h") == 24 and q.bits_of("c") == 12
  assert q.bits_of("attn_out") == 8 and q.bits_of("bitlinear_acc") == 24
  assert QuantConfig().bits_of("h") == 16
  assert not q.enabled("rms_inv") and all(q.enabled(p) for p in ALL_POINTS if p != "rms_inv")
  # the RMSNorm: 24-bit 1/rms (the kernel's r), a gain of gain_bits, activation-wide in and out
  g10 = QuantConfig(gain_bits=10)
  assert (g10.bits_of("rms_inv"), g10.bits_of("rms_gain"), g10.bits_of("rms_in")) == (24, 10, 8)


@pytest.mark.parametrize(
  "kw, match",
  [
    ({"scale": "log"}, r"quant.scale='log'"),
    ({"act_bits": 1}, r"quant.act_bits=1"),
    ({"state_bits": 32}, r"quant.state_bits=32.*24"),
    ({"disabled": ("hh",)}, r"unknown points \['hh'\]"),
    ({"bits": ("h:24",)}, r"'h:24'"),
    ({"bits": ("h=40",)}, r"quant.bits\[h\]=40"),
    ({"observer": "max"}, r"quant.observer"),
    ({"percentile": 10.0}, r"quant.percentile"),
    ({"rmsnorm": "fixed"}, r"quant.rmsnorm='fixed'"),
    ({"gain_bits": 30}, r"quant.gain_bits=30"),
    ({"scale": "free"}, r"quant.rmsnorm='int' needs quant.scale='pow2'.*quant.rmsnorm='float'"),
    ({"act_bits": 20}, r"at most 16 bits.*rms_in has 20.*'rms_in=16' to quant.bits"),
    ({"bits": ("rms_in=18",)}, r"rms_in has 18"),
  ],
)
def test_invalid_settings_are_refused(kw, match):
  with pytest.raises(ValueError, match=match):
    QuantConfig(**kw)


def test_integer_norm_settings_that_are_accepted():
  assert QuantConfig(scale="free", rmsnorm="float").rmsnorm == "float"
  assert QuantConfig(act_bits=20, bits=("rms_in=16",)).bits_of("rms_in") == 16
  assert QuantConfig(act_bits=20, rmsnorm="float").bits_of("rms_in") == 20
  assert QuantConfig(act_bits=20, disabled=("rms_in",)).rmsnorm == "int"  # a float norm input
