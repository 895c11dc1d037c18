"""Sizes from a configuration or a message are bounded before anything is allocated (issue 25.4).

Each huge size is refused with a named error while ``tracemalloc`` sees less than 1 MiB allocated: before the
bound, a masking server made ``dim + 1`` values up front and ended in ``MemoryError``.
"""

from __future__ import annotations

import tracemalloc

import pytest

from secagg.encoding import MAX_DIM
from secagg.errors import ConfigurationError
from training.errors import ConfigError


def _refused_small(error: type[Exception], make) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(error):
            make()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated before the refusal"


@pytest.mark.parametrize("dim", [MAX_DIM + 1, 1 << 40, 1 << 62])
def test_a_masking_round_of_a_huge_dim_is_refused_before_allocating(dim: int) -> None:
    from secagg.masking import MaskingServer
    from secagg.masking.config import MaskingConfig

    _refused_small(ConfigurationError, lambda: MaskingServer(MaskingConfig(participants=(0, 1, 2), dim=dim)))


def test_the_largest_allowed_dim_is_accepted_without_allocating_it_at_config_time() -> None:
    from secagg.masking.config import MaskingConfig

    assert MaskingConfig(participants=(0, 1, 2), dim=MAX_DIM).dim == MAX_DIM


@pytest.mark.parametrize("scheme", ["ckks", "packed"])
def test_an_he_aggregator_of_a_huge_dim_is_refused(scheme: str) -> None:
    from training.engine.roles import make_keyholder, make_scheme

    opts = {"max_cohort": 4} if scheme == "packed" else {}
    kh = make_keyholder(scheme, opts)
    s = make_scheme(scheme, opts)
    _refused_small(ConfigurationError, lambda: s.plan(1, [0, 1], {0: 1.0, 1: 1.0}, 1 << 40, kh.public_context()))


@pytest.mark.parametrize("field,value", [("clients", 10**9), ("rounds", 10**12), ("dim", 1 << 40)])
def test_transport_settings_with_huge_sizes_are_refused(field: str, value: int) -> None:
    from training.deployment import load_transport_config

    _refused_small(ConfigError, lambda: load_transport_config(None, **{field: value, "trainer": "synthetic"}))


def test_a_run_file_with_a_huge_federation_is_refused(tmp_path) -> None:
    from training.config import load_config

    run = tmp_path / "huge.toml"
    run.write_text("[federation]\nclients = 1000000000\n")
    with pytest.raises(ConfigError, match="at most"):
        load_config(run).validate()
