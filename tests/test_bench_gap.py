"""benchmarks.smollm2_gap splits the ε = 8 gap into clipping and noise as differences of per-variant means."""

from __future__ import annotations

import pytest

from benchmarks.smollm2_gap import VARIANTS, summarise


def test_the_gap_splits_into_clipping_and_noise():
    final = {"non-private": 80.0, "clip only": 85.0, "noise only": 90.0, "clip + noise": 98.0,
             "non-private, its own lr": 75.0}
    runs = [{"variant": v, "seed": s, "final_perplexity": final[v] + d} for v in VARIANTS
            for s, d in ((0, -1.0), (1, 1.0))]
    out = summarise(runs)
    assert out["by_variant"]["clip only"] == {"mean": 85.0, "min": 84.0, "max": 86.0, "seeds": 2}
    parts = out["parts"]
    assert parts == pytest.approx({"gap_eps8_vs_own_lr_nonprivate": 23.0, "clipping_at_dp_lr": 10.0,
                                   "noise_after_clipping": 13.0, "nonprivate_at_dp_lr": 5.0,
                                   "noise_without_clipping": 15.0})
    assert parts["clipping_at_dp_lr"] + parts["noise_after_clipping"] == parts["gap_eps8_vs_own_lr_nonprivate"]


def test_a_missing_variant_gives_no_split():
    runs = [{"variant": "non-private", "seed": 0, "final_perplexity": 80.0}]
    assert summarise(runs)["parts"] == {}
