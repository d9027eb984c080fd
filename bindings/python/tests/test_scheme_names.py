"""Scheme names: presets, fixed points and the parametrised library pattern used by tuning runs."""

import pytest

from nexusquant.eval.schemes import LibraryAdapter, get_scheme


def test_parametrised_library_scheme():
    s = get_scheme("e8-k3v2-w8-e0.6-shared-p15-L17:19k4v3-L-2:30k3v3").lib_scheme
    assert (s.codec, s.k_bits, s.v_bits, s.evict, s.evict_mode) == ("e8", 3, 2, 0.6, "shared")
    assert (s.fp16_window, s.fp16_sinks, s.pool_kernel, s.use_queries) == (8, None, 15, True)
    assert s.overrides == [{"layers": (17, 19), "k_bits": 4, "v_bits": 3},
                           {"layers": (-2, 30), "k_bits": 3, "v_bits": 3}]
    n = get_scheme("scalar-k2v2-norm-r16-t0").lib_scheme
    assert (n.codec, n.use_queries, n.recent_window, n.sink_tokens, n.evict) == ("scalar", False, 16, 0, 0.0)


def test_presets_and_fixed_points_resolve_exactly():
    assert isinstance(get_scheme("balanced"), LibraryAdapter)
    assert get_scheme("e8-k3v2").lib_scheme.evict == 0.0


@pytest.mark.parametrize("bad", ["e8-k3v2-x1", "e8-k3", "e8-k3v2-e", "lattice-k3v2"])
def test_malformed_names_are_rejected(bad):
    with pytest.raises(KeyError):
        get_scheme(bad)


def test_library_key_centring_option():
    s = get_scheme("e8-k3v2-kc").lib_scheme
    assert (s.k_bits, s.v_bits, s.key_centering, s.center_k, s.center_v) == (3, 2, True, False, False)
    assert get_scheme("e8-k3v2").lib_scheme.key_centering is True  # the library's default
    assert get_scheme("e8-k3v2-nokc").lib_scheme.key_centering is False
    assert get_scheme("e8-k3v2-ck").lib_scheme.key_centering is False  # the emulation codes uncentred
    assert get_scheme("lossless-nokc").lib_scheme.key_centering is False
    p = get_scheme("lossless-kc").lib_scheme
    assert (p.preset, p.profile, p.key_centering) == ("lossless", "auto", True)
