"""QuantConfig: defaults, per-point widths, and refusals that name the field."""

import pytest

from mmfree.quant.config import ALL_POINTS, QuantConfig


def test_defaults_and_per_point_widths():
  q = QuantConfig(bits=("h=24", "c=12"), disabled=("rms_inv",))
  assert q.bits_of("h") == 24 and q.bits_of("c") == 12
  assert q.bits_of("attn_out") == 8 and q.bits_of("bitlinear_acc") == 24
  assert QuantConfig().bits_of("h") == 16
  assert not q.enabled("rms_inv") and all(q.enabled(p) for p in ALL_POINTS if p != "rms_inv")


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
  ],
)
def test_invalid_settings_are_refused(kw, match):
  with pytest.raises(ValueError, match=match):
    QuantConfig(**kw)
