"""SPANet: event files, decoder, ONNX wrapper (tiny torch export)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from crema.models.spanet import (
    ConfigError,
    builtin_event_file,
    decode,
    event_file_names,
    parse_event_file,
)

TTH = {
    "INPUTS": {
        "SEQUENTIAL": {"Momenta": {"mass": "log_normalize", "pt": "log_normalize", "eta": "normalize", "btag": "none"}},
        "GLOBAL": {"Met": {"met": "log_normalize", "sin_phi": "normalize"}},
    },
    "EVENT": {"lt": ["b"], "ht": ["b", "q1", "q2"], "h": ["b1", "b2"]},
    "PERMUTATIONS": {"ht": [["q1", "q2"]], "h": [["b1", "b2"]]},
    "REGRESSIONS": {"EVENT": ["neutrino_px"]},
    "CLASSIFICATIONS": {"EVENT": ["signal"]},
}


# -- event files -------------------------------------------------------------
def test_shipped_event_files():
    assert event_file_names() == ["hh_sl", "tth_sl"]
    tth = builtin_event_file("tth_sl")
    assert [p.name for p in tth.particles] == ["lt", "ht", "h"]
    assert tth.particle("ht").groups == ((1, 2),)
    assert tth.sequential[0].feature_names[:2] == ("mass", "pt")
    assert tth.regression_names[-1] == "EVENT/log_invariant_mass"
    hh = builtin_event_file("hh_sl")
    assert [p.products for p in hh.particles] == [("b1", "b2"), ("q1", "q2")]


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d["INPUTS"]["SEQUENTIAL"]["Momenta"].update(pt="log"), "INPUTS.SEQUENTIAL.Momenta.pt"),
        (lambda d: d["PERMUTATIONS"].update(ht=[["q1", "b1"]]), "PERMUTATIONS.ht[0][1]"),
        (lambda d: d["PERMUTATIONS"].update(x=[["a", "b"]]), "PERMUTATIONS.x"),
        (lambda d: d.update(EXTRA=1), "EXTRA"),
        (lambda d: d["INPUTS"].update(OTHER={}), "INPUTS.OTHER"),
        (lambda d: d["EVENT"].update(h=["b1", "b1"]), "EVENT.h[1]"),
        (lambda d: d["REGRESSIONS"].update(zz=["a"]), "REGRESSIONS.zz"),
        (lambda d: d.pop("EVENT"), "EVENT"),
    ],
)
def test_event_file_errors_name_key(edit, key):
    data = copy.deepcopy(TTH)
    edit(data)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_event_file(data)


# -- decoder -------------------------------------------------------------------
def _sym2(m):
    m = np.asarray(m, dtype=np.float32)
    return (m + np.swapaxes(m, -1, -2)) / 2


def _pair_event():
    return parse_event_file({"INPUTS": TTH["INPUTS"], "EVENT": {"h": ["b1", "b2"], "w": ["q1", "q2"]},
                             "PERMUTATIONS": {"h": [["b1", "b2"]], "w": [["q1", "q2"]]}})


def test_decoder_greedy_global_and_canonical():
    ev = _pair_event()
    N = 4
    h = np.zeros((2, N, N), np.float32)
    w = np.zeros((2, N, N), np.float32)
    # event 0: h prefers (2,0) (reported as 0,2); w's best (0,1) conflicts -> w takes (1,3)
    h[0, 2, 0] = h[0, 0, 2] = 0.4
    h[0, 1, 3] = h[0, 3, 1] = 0.1
    w[0, 0, 1] = w[0, 1, 0] = 0.3
    w[0, 1, 3] = w[0, 3, 1] = 0.2
    # event 1: w is the global best
    w[1, 3, 2] = w[1, 2, 3] = 0.45
    h[1, 2, 3] = h[1, 3, 2] = 0.3
    h[1, 0, 1] = h[1, 1, 0] = 0.05
    dec = decode({"h": h, "w": w}, ev, detection={"h": np.array([0.9, 0.8]), "w": np.array([0.7, 0.6])})
    assert dec.assignments["h"].tolist() == [[0, 2], [0, 1]]
    assert dec.assignments["w"].tolist() == [[1, 3], [2, 3]]
    np.testing.assert_allclose(dec.probabilities["h"], [0.4, 0.05])
    np.testing.assert_allclose(dec.detection["w"], [0.7, 0.6])


def test_decoder_exhausted_event_never_reuses_jets():
    """SPANet's decoder never stops early: with 3 jets for 2 pair particles it reuses a jet."""
    ev = _pair_event()
    N = 3
    h = _sym2(np.ones((1, N, N)) - np.eye(N))[None][0] / 6
    w = h.copy()
    dec = decode({"h": h, "w": w}, ev)
    assigned = [p for p in ("h", "w") if (dec.assignments[p] >= 0).all()]
    assert len(assigned) == 1
    other = "w" if assigned == ["h"] else "h"
    assert dec.assignments[other].tolist() == [[-1, -1]] and dec.probabilities[other][0] == 0


def test_decoder_padding_and_four_products():
    """A 4-product particle: used jets are masked for it too (SPANet masks only up to 3 products)."""
    ev = parse_event_file({"INPUTS": TTH["INPUTS"], "EVENT": {"h": ["b1", "b2"], "x": ["a", "b", "c", "d"]},
                           "PERMUTATIONS": {"h": [["b1", "b2"]]}})
    N = 6
    rng = np.random.default_rng(3)
    x = rng.uniform(0.01, 1.0, (5, N, N, N, N)).astype(np.float32)
    idx = np.indices((N,) * 4)
    distinct = np.ones((N,) * 4, bool)
    for a in range(4):
        for b in range(a + 1, 4):
            distinct &= idx[a] != idx[b]
    x = x * distinct
    h = _sym2(rng.uniform(0.01, 1.0, (5, N, N))) * (1 - np.eye(N))
    h[:, 0, 1] = h[:, 1, 0] = 2.0  # h first takes (0, 1)
    n_jets = np.array([6, 6, 5, 4, 3])
    dec = decode({"h": h, "x": x}, ev, n_jets=n_jets)
    assert dec.assignments["h"].tolist() == [[0, 1]] * 5
    for i in range(5):
        xa = dec.assignments["x"][i]
        if n_jets[i] >= 6:
            assert len(set(xa.tolist()) | {0, 1}) == 6 and (xa < n_jets[i]).all()
            # the best 4-tuple among the remaining jets
            sub = x[i][2:, 2:, 2:, 2:]
            assert np.isclose(dec.probabilities["x"][i], sub.max())
        else:
            assert xa.tolist() == [-1] * 4  # not enough unpadded jets left
