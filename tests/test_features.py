from __future__ import annotations

import pytest
import torch

from nas_asc.data.features import FrontEnd, load_features, logmel


def test_report_front_end_gives_128_by_44_for_one_second():
    fe = FrontEnd()
    assert fe.input_shape() == (1, 128, 44)
    out = logmel(torch.randn(2, 44100), 44100, fe)
    assert out.shape == (2, 128, 44)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_mels=0), "n_mels must be a positive integer"),
        (dict(win_length=4096), "win_length"),
        (dict(window="kaiser"), "window must be one of"),
        (dict(f_max=20000.0), "f_max"),
    ],
)
def test_bad_front_ends_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FrontEnd(**kwargs)


def test_features_are_cached_and_shared(tiny_dataset, _isolated_cache):
    fe = FrontEnd(n_mels=32)
    train, evaluate = load_features(tiny_dataset, fe, progress=False)
    assert train.x.shape[1:] == (1, 32, 44)
    assert len(train) == len(tiny_dataset.train) and len(evaluate) == len(tiny_dataset.evaluate)
    assert abs(float(train.x.mean())) < 1e-3 and abs(float(train.x.std()) - 1) < 1e-2
    cached = list((_isolated_cache / "features").glob("logmel-*.pt"))
    assert cached
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    train2, _ = load_features(tiny_dataset, fe, progress=False)  # served from the cache
    assert torch.equal(train.x, train2.x)
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes
    assert train.rows.tolist() == tiny_dataset.train.row.tolist()
    assert set(evaluate.devices) >= {"s4", "s5", "s6"}
