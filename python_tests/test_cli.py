"""The command line: the demo runs end to end on the embedded default and rejects bad options."""

import pytest

from atspeed_ext.cli import main
from atspeed_ext.synthetic import synthetic_identifiers


def test_demo_runs_and_matches_hf(capsys):
    assert main(["demo", "--items", "300", "--codes", "8", "--requests", "6", "--batch-size", "3",
                 "--num-beams", "5", "--layers", "1", "--hidden", "64"]) == 0
    out = capsys.readouterr().out
    assert "identical beams in 2 of 2 batches" in out
    assert "atspeed_ext BeamSearchDecoder" in out


def test_demo_rejects_bad_options():
    with pytest.raises(SystemExit):
        main(["demo", "--num-beams", "0"])
    with pytest.raises(SystemExit):
        main(["unknown"])


def test_synthetic_identifiers_are_deterministic_and_valid():
    a = synthetic_identifiers(500, depth=4, codes_per_level=16, seed=3, num_shared=5)
    assert a.equal(synthetic_identifiers(500, depth=4, codes_per_level=16, seed=3, num_shared=5))
    assert not a.equal(synthetic_identifiers(500, depth=4, codes_per_level=16, seed=4, num_shared=5))
    for level in range(4):  # each level in its own token block
        assert a[:, level].min() >= 3 + 16 * level and a[:, level].max() < 3 + 16 * (level + 1)
    assert a[499].equal(a[0])
    with pytest.raises(ValueError, match="num_shared"):
        synthetic_identifiers(10, num_shared=10)
    with pytest.raises(ValueError, match=">= 1"):
        synthetic_identifiers(0)
