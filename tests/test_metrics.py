"""NC1-NC4 and the CDNV against a direct float64 computation, closed forms and invariances."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ncpaper.metrics import (
    NC_KEYS,
    ClassStatistics,
    SpanScatter,
    UndefinedCollapseError,
    centred_classifier_collapse,
    classifier_alignment,
    classifier_fit,
    neural_collapse,
    neural_collapse_streaming,
)


def direct_neural_collapse(h, y, w):
    """The textbook definitions, written out with NumPy loops and a p x p pseudo-inverse."""
    n, p = h.shape
    c = w.shape[0]
    mu = np.stack([h[y == k].mean(0) for k in range(c)])
    mu_g = h.mean(0)
    sigma_w = np.zeros((p, p))
    for i in range(n):
        d = h[i] - mu[y[i]]
        sigma_w += np.outer(d, d)
    sigma_w /= n
    m = mu - mu_g
    sigma_b = m.T @ m / c

    def norm_cos(v):
        norms = np.linalg.norm(v, axis=1)
        cos = [v[a] @ v[b] / (norms[a] * norms[b]) for a in range(c) for b in range(a + 1, c)]
        cos = np.array(cos)
        return norms.std() / norms.mean(), cos.std(), np.abs(cos + 1 / (c - 1)).mean()

    eq_m, ang_m, max_m = norm_cos(m)
    eq_w, ang_w, max_w = norm_cos(w)
    var = np.array([np.mean(np.sum((h[y == k] - mu[k]) ** 2, axis=1)) for k in range(c)])
    cdnv = np.mean([(var[a] + var[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2)) for a in range(c) for b in range(a + 1, c)])
    net = (h @ w.T).argmax(1)
    ncc = np.array([np.argmin([np.linalg.norm(x - mu[k]) for k in range(c)]) for x in h])
    return {
        "nc1": np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / c,
        "nc2_equinorm_means": eq_m, "nc2_equinorm_weights": eq_w,
        "nc2_equiangular_means": ang_m, "nc2_equiangular_weights": ang_w,
        "nc2_maxangle_means": max_m, "nc2_maxangle_weights": max_w,
        "nc3": np.sum((w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2),
        "nc4": np.mean(net != ncc),
        "cdnv": cdnv,
    }


def random_problem(seed, n_per_class=20, p=8, c=4, spread=1.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(c, p)) * 3
    y = np.repeat(np.arange(c), n_per_class)
    h = means[y] + spread * rng.normal(size=(len(y), p))
    w = rng.normal(size=(c, p))
    return h, y, w


def simplex_etf(c, p, scale=2.0, seed=0):
    """C vectors in R^p with equal norms and pairwise cosines -1/(C-1), in a random orientation."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(p, c)))
    etf = np.sqrt(c / (c - 1)) * (np.eye(c) - np.ones((c, c)) / c)
    return scale * etf @ q.T


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(2, 6), p=st.integers(2, 12), n=st.integers(2, 15))
def test_matches_direct_float64_computation(seed, c, p, n):
    h, y, w = random_problem(seed, n_per_class=n, p=p, c=c)
    ours = neural_collapse(h, y, w)
    expected = direct_neural_collapse(h, y, w)
    assert set(ours) == set(NC_KEYS)
    for key in NC_KEYS:
        assert ours[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
        assert isinstance(ours[key], float)


def test_exact_simplex_etf_collapse_gives_zeros():
    c, p, n = 5, 12, 7
    means = simplex_etf(c, p)
    y = np.repeat(np.arange(c), n)
    offset = np.linalg.svd(means)[2][-1]  # a direction orthogonal to every class mean
    h = means[y] + 4.0 * offset  # mu_G != 0, centred means still the ETF
    w = 0.3 * means  # self-dual classifier
    result = neural_collapse(h, y, w)
    for key in NC_KEYS:
        assert result[key] == pytest.approx(0, abs=1e-12), key


def test_invariant_under_permutation_and_common_rotation():
    h, y, w = random_problem(1, p=10, c=5)
    base = neural_collapse(h, y, w)
    rng = np.random.default_rng(2)
    perm = rng.permutation(len(y))
    rotation, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    moved = neural_collapse(h[perm] @ rotation, y[perm], w @ rotation)
    for key in NC_KEYS:
        assert moved[key] == pytest.approx(base[key], rel=1e-9, abs=1e-12), key


def test_streaming_agrees_with_one_shot_and_is_stable_when_collapsed():
    h, y, w = random_problem(3, n_per_class=50, p=16, c=10, spread=1e-6)
    h = h + 1e3  # far from the origin, tiny spread: the naive E[hh^T] - mu mu^T would cancel
    perm = np.random.default_rng(0).permutation(len(y))
    h, y = h[perm], y[perm]
    one_shot = neural_collapse(h, y, w)
    chunks = [(torch.tensor(h[i:i + 33]), torch.tensor(y[i:i + 33]))
              for i in range(0, len(y), 33)]
    streamed = neural_collapse_streaming(lambda: iter(chunks), torch.tensor(w), num_classes=10, dim=16)
    expected = direct_neural_collapse(h, y, w)
    for key in NC_KEYS:
        assert streamed[key] == pytest.approx(one_shot[key], rel=1e-9, abs=1e-15), key
        assert one_shot[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-15), key


def test_more_dimensions_than_samples_and_rank_deficient_between_class():
    h, y, w = random_problem(4, n_per_class=3, p=50, c=4)  # p > N
    assert neural_collapse(h, y, w)["nc1"] == pytest.approx(direct_neural_collapse(h, y, w)["nc1"], rel=1e-8)
    # class means on a line: Sigma_B has rank 1 < C-1, the pseudo-inverse lives on that line
    rng = np.random.default_rng(5)
    direction = rng.normal(size=6)
    y = np.repeat(np.arange(3), 10)
    h = np.outer(np.array([-1.0, 0.5, 2.0])[y], direction) + 0.1 * rng.normal(size=(30, 6))
    w = rng.normal(size=(3, 6))
    assert neural_collapse(h, y, w)["nc1"] == pytest.approx(direct_neural_collapse(h, y, w)["nc1"], rel=1e-8)


def test_float32_input_is_accumulated_in_float64():
    h, y, w = random_problem(6)
    ours = neural_collapse(torch.tensor(h, dtype=torch.float32), torch.tensor(y), torch.tensor(w))
    exact = direct_neural_collapse(h.astype(np.float32).astype(np.float64), y, w)
    assert ours["nc1"] == pytest.approx(exact["nc1"], rel=1e-9)


def test_classifier_alignment_recovers_scale():
    means = simplex_etf(4, 6)
    align = classifier_alignment(0.25 * means, means)
    assert align.scale == pytest.approx(0.25)
    assert align.relative_residual == pytest.approx(0, abs=1e-12)
    assert align.mean_cosine == pytest.approx(-1 / 3)
    assert align.mean_row_norm_sq == pytest.approx(0.25**2 * 4)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h, y, w: (h, y + 1, w), "labels out of range"),
        (lambda h, y, w: (h, y[:-1], w), "labels must be a 1-D array of length"),
        (lambda h, y, w: (h, y, w[:, :-1]), "classifier weights must be C x p"),
        (lambda h, y, w: (h[:, :, None], y, w), "features must be a 2-D"),
        (lambda h, y, w: (np.where(np.arange(h.size).reshape(h.shape) == 3, np.nan, h), y, w), "NaN or infinite"),
        (lambda h, y, w: (h, np.where(y == 2, 1, y), w), "class(es) [2] have no samples"),
        (lambda h, y, w: (h, np.zeros_like(y), w[:1]), "at least 2 classes"),
        (lambda h, y, w: (h, y + 0.5, w), "integer class indices"),
    ],
)
def test_bad_input_gets_a_clear_error(mutate, message):
    h, y, w = random_problem(7)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        neural_collapse(*mutate(h, y, w))


def test_streaming_rejects_wrong_width():
    stats = ClassStatistics(3, 4)
    with pytest.raises(ValueError, match="expected 4"):
        stats.update(np.zeros((2, 5)), np.array([0, 1]))


def test_span_scatter_is_the_full_within_class_scatter_seen_through_the_means():
    """u_j^T Sigma_W u_j from pass 2 equals the same quadratic form of the full p x p Sigma_W."""
    h, y, w = random_problem(8, n_per_class=30, p=40, c=6)
    stats = ClassStatistics(6, 40).update(h, y)
    span = SpanScatter(stats).update(h[:70], y[:70]).update(h[70:], y[70:])
    mu = np.stack([h[y == k].mean(0) for k in range(6)])
    z = h - mu[y]
    u = span.basis.numpy()
    assert u.shape == (40, 5)  # rank C-1
    np.testing.assert_allclose(span.projected_squares.numpy(), np.diag(u.T @ (z.T @ z) @ u), rtol=1e-10)
    assert span.nc1() == pytest.approx(direct_neural_collapse(h, y, w)["nc1"], rel=1e-9)


def test_cdnv_closed_form_on_two_classes():
    """Two classes at +-a e_1 with isotropic spread s in p dimensions: CDNV = 2 p s^2 / (2 (2a)^2)."""
    a, p = 1.5, 3
    offsets = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
    h = np.concatenate([a * np.eye(p)[0] + 0.2 * offsets, -a * np.eye(p)[0] + 0.2 * offsets])
    y = np.repeat([0, 1], 6)
    var = 0.2**2 * 2 / 6 * p  # trace of each class's covariance
    assert neural_collapse(h, y, np.eye(2, p))["cdnv"] == pytest.approx(2 * var / (2 * (2 * a) ** 2), rel=1e-12)


def test_cdnv_and_nc1_are_scale_invariant_and_undefined_when_means_coincide():
    h, y, w = random_problem(9)
    base = neural_collapse(h, y, w)
    scaled = neural_collapse(7.0 * h, y, w)
    for key in ("nc1", "cdnv"):
        assert scaled[key] == pytest.approx(base[key], rel=1e-10), key
    with pytest.raises(UndefinedCollapseError, match="all class means coincide"):
        neural_collapse(np.zeros_like(h), y, w)


def test_centred_classifier_reaches_the_simplex_with_a_common_row():
    """W = k M + beta 1 mu_G^T: the raw rows miss -1/(C-1), the centred ones reach it; the fit recovers k, beta."""
    c, p = 5, 9
    m = simplex_etf(c, p)
    mu_g = np.linalg.svd(m)[2][-1] * 3.0  # orthogonal to every centred mean, as on balanced data
    w = 0.4 * m + 0.7 * np.outer(np.ones(c), mu_g)
    raw = neural_collapse(m + mu_g, np.arange(c), w)
    assert raw["nc2_maxangle_weights"] > 0.1 and raw["nc3"] > 0.1
    centred = centred_classifier_collapse(w, m)
    for value in centred.values():
        assert value == pytest.approx(0, abs=1e-12)
    fit = classifier_fit(w, m, mu_g)
    assert fit == pytest.approx({"w_fit_k": 0.4, "w_fit_beta": 0.7, "w_fit_residual": 0.0}, abs=1e-12)
    noisy = w + 0.01 * np.random.default_rng(0).normal(size=w.shape)
    assert 0 < classifier_fit(noisy, m, mu_g)["w_fit_residual"] < 0.05


def test_classifier_fit_of_a_zero_global_mean_is_undefined():
    m = simplex_etf(3, 4)
    with pytest.raises(UndefinedCollapseError, match="global mean"):
        classifier_fit(m, m, np.zeros(4))
