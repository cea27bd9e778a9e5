"""Known-answer tests for the estimators of METHOD §2–§4."""
import networkx as nx
import numpy as np
import pytest
from scipy.stats import spearmanr

from chanaxis.estimators import local, peers, structure, target
from chanaxis.estimators.stats import Moments


def gaussian_moments(cov):
    """Exact population moments of (T, Y_1..Y_C) from their joint covariance (index 0 = T)."""
    cov = np.asarray(cov, float)
    C = cov.shape[0] - 1
    return Moments(n=1e9, mean_y=np.zeros(C), cov_yy=cov[1:, 1:], mean_t=0.0, var_t=cov[0, 0], cov_yt=cov[0, 1:])


def naive_hull(C, i, eps=0.05, max_size=10, lam=1e-3):
    others = [j for j in range(len(C)) if j != i]
    e_full = peers.peer_explanation(C, i, others, lam)
    H, e = [], 0.0
    if e_full <= 0:
        return H, e
    while e < (1 - eps) * e_full and len(H) < max_size:
        scores = {j: peers.peer_explanation(C, i, H + [j], lam) for j in others if j not in H}
        j = max(scores, key=scores.get)
        H.append(j)
        e = scores[j]
    return H, e


# ---------------------------------------------------------------- stats
def test_from_sums_matches_from_samples_and_numpy():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((500, 4)) @ rng.standard_normal((4, 4)) + 3.0
    T = Y[:, 0] - Y[:, 2] + rng.standard_normal(500)
    m = Moments.from_samples(Y, T)
    s = Moments.from_sums(500, Y.sum(0), Y.T @ Y, T.sum(), T @ T, Y.T @ T)
    np.testing.assert_allclose(m.cov_yy, np.cov(Y.T, bias=True), atol=1e-10)
    np.testing.assert_allclose(s.cov_yt, m.cov_yt)
    full = np.corrcoef(np.column_stack([T, Y]).T)
    np.testing.assert_allclose(m.corr(), full, atol=1e-10)


def test_gaussian_mi_matches_closed_form():
    rho, n = 0.6, 200_000
    rng = np.random.default_rng(1)
    z = rng.standard_normal((n, 2))
    T = z[:, 0]
    Y = rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1]
    m = Moments.from_samples(Y[:, None], T)
    truth = -0.5 * np.log(1 - rho**2)
    # delta method: sd(ρ̂) ≈ (1−ρ²)/√n, dI/dρ = ρ/(1−ρ²)
    tol = 5 * rho / np.sqrt(n)
    assert abs(target.task_info(m.rho_yt())[0] - truth) < tol
    assert abs(target.pairwise_mi(np.array([[1.0, rho], [rho, 1.0]]))[0, 1] - truth) < 1e-12


# ---------------------------------------------------------------- local
def test_input_capture_and_norms():
    J = np.array([1.0, 4.0, 9.0])
    ix, s0 = local.input_capture(J)
    assert s0 == 4.0
    np.testing.assert_allclose(ix, 0.5 * np.log([1.25, 2.0, 3.25]))
    W = np.arange(24.0).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(local.magnitude(W), [np.linalg.norm(W[0]), np.linalg.norm(W[1])])


def test_independent_channels_have_no_peer_overlap():
    n, C = 50_000, 6
    m = Moments.from_samples(np.random.default_rng(2).standard_normal((n, C)), np.zeros(n))
    ov = local.peer_overlap(m.rho_yy())
    # each spurious ρ² ~ 1/n gives ≈ 1/(2n) per peer
    assert np.all(ov < 5.0 / n)
    rho = np.full((3, 3), 0.5) + 0.5 * np.eye(3)
    np.testing.assert_allclose(local.peer_overlap(rho), 2 / 3 * -0.5 * np.log(0.75))


# ---------------------------------------------------------------- peers
def test_block_inverse_identity_against_direct_solves():
    rng = np.random.default_rng(3)
    Y = rng.standard_normal((400, 30)) @ rng.standard_normal((30, 30)) + rng.standard_normal((400, 30))
    C = np.corrcoef(Y.T)
    for lam in (1e-3, 0.1):
        full = peers.peer_r2_full(C, lam)
        direct = [peers.peer_explanation(C, i, np.delete(np.arange(30), i), lam) for i in range(30)]
        np.testing.assert_allclose(full, direct, atol=1e-9)
    top = peers.peer_r2_topk(C, 8)
    for i in range(30):
        S = np.argsort(-np.abs(np.where(np.arange(30) == i, 0, C[i])))[:8]
        assert top[i] == pytest.approx(peers.peer_explanation(C, i, S), abs=1e-9)


def test_hull_matches_naive_greedy():
    rng = np.random.default_rng(4)
    Y = rng.standard_normal((300, 25)) @ rng.standard_normal((25, 25)) * 0.3 + rng.standard_normal((300, 25))
    C = np.corrcoef(Y.T)
    h = peers.hull_all(C, eps=0.3, block=7)
    for i in range(25):
        H, e = naive_hull(C, i, eps=0.3)
        assert list(h.members[i, : h.size[i]]) == H
        assert h.e_hull[i] == pytest.approx(e, abs=1e-9)
        assert h.score[i] == pytest.approx(h.e_full[i] / max(1, len(H)))
    members, e = peers.hull(C, 5, eps=0.3)
    assert list(members) == naive_hull(C, 5, eps=0.3)[0]


def test_duplicated_and_sum_channels():
    rng = np.random.default_rng(5)
    n = 20_000
    Y = rng.standard_normal((n, 8))
    Y[:, 6] = Y[:, 2] + 0.01 * rng.standard_normal(n)  # duplicate of 2
    Y[:, 7] = Y[:, 0] + Y[:, 1] + Y[:, 3] + 0.05 * rng.standard_normal(n)  # sum of three independent peers
    C = Moments.from_samples(Y, rng.standard_normal(n)).rho_yy()
    full = peers.peer_r2_full(C)
    assert full[6] > 0.99
    h = peers.hull_all(C)
    assert h.size[6] == 1 and h.members[6, 0] == 2
    assert h.size[7] == 3 and set(h.members[7, :3]) == {0, 1, 3}
    assert np.all(h.members[7, 3:] == -1)
    assert full[4] < 0.01  # an independent channel has nothing for its peers to explain


# ---------------------------------------------------------------- target
def linear_target(a, b, s2):
    """T = a·Y_1 + b·Y_2 + noise(s2), Y_1 ⟂ Y_2 unit variance; returns exact moments and closed forms."""
    V = a * a + b * b + s2
    cov = np.array([[V, a, b], [a, 1, 0], [b, 0, 1]])
    i1 = 0.5 * np.log(V / (b * b + s2))
    i2 = 0.5 * np.log(V / (a * a + s2))
    i12 = 0.5 * np.log(V / s2)
    return gaussian_moments(cov), i1, i2, i12


def test_pair_information_synergy_redundancy_closed_form():
    a, b, s2 = 1.0, 0.5, 0.3
    m, i1, i2, i12 = linear_target(a, b, s2)
    np.testing.assert_allclose(target.task_info(m.rho_yt()), [i1, i2], rtol=1e-9)
    assert target.pair_info_all(m, [[0, 1]])[0] == pytest.approx(i12, rel=1e-6)
    cov3 = np.array([[a * a + b * b + s2, a, b], [a, 1, 0], [b, 0, 1]]) * 7.0  # scale-free
    assert target.pair_info(cov3)[()] == pytest.approx(i12, rel=1e-6)
    tp = target.target_pairs(m)
    syn, red = i12 - max(i1, i2), min(i1, i2)
    np.testing.assert_allclose(tp.synergy, [syn, syn], rtol=1e-6)
    np.testing.assert_allclose(tp.redundancy_t, [red, red], rtol=1e-9)
    np.testing.assert_allclose(tp.unique_t, [i1 - red, 0.0], atol=1e-9)


def test_pair_information_from_samples():
    rng = np.random.default_rng(6)
    n, a, b, s2 = 100_000, 0.8, -0.6, 0.5
    Y = rng.standard_normal((n, 2))
    T = a * Y[:, 0] + b * Y[:, 1] + np.sqrt(s2) * rng.standard_normal(n)
    _, i1, i2, i12 = linear_target(a, b, s2)
    m = Moments.from_samples(Y, T)
    assert target.pair_info_all(m, [[0, 1]])[0] == pytest.approx(i12, abs=0.02)
    assert target.target_pairs(m).synergy[0] == pytest.approx(i12 - max(i1, i2), abs=0.02)


def test_target_pairs_candidates_and_top_synergy():
    rng = np.random.default_rng(7)
    Y = rng.standard_normal((3000, 12)) @ rng.standard_normal((12, 12))
    T = Y[:, 0] - Y[:, 5] + rng.standard_normal(3000)
    m = Moments.from_samples(Y, T)
    tp = target.target_pairs(m, n_candidates=4, n_top_syn=2)
    R = m.rho_yy()
    for i in (0, 5, 9):
        peers_i = np.argsort(-np.abs(np.where(np.arange(12) == i, 0, R[i])))[:4]
        assert set(tp.candidates[i]) == set(peers_i)
        syn = target.pair_info_all(m, [[i, j] for j in peers_i]) - np.maximum(tp.task_info[i], tp.task_info[peers_i])
        assert tp.synergy[i] == pytest.approx(np.sort(syn)[-2:].mean(), abs=1e-12)
        assert tp.redundancy_t[i] == pytest.approx(np.minimum(tp.task_info[i], tp.task_info[peers_i]).mean())


def test_dead_channel_and_constant_target_are_defined():
    rng = np.random.default_rng(8)
    Y = rng.standard_normal((2000, 5))
    Y[:, 3] = 2.5  # dead
    m = Moments.from_samples(Y, Y[:, 0] + rng.standard_normal(2000))
    assert m.dead.tolist() == [False, False, False, True, False]
    R = m.rho_yy()
    assert np.all(R[3, [0, 1, 2, 4]] == 0) and m.rho_yt()[3] == 0
    tp = target.target_pairs(m)
    h = peers.hull_all(R)
    vals = [local.input_capture(local.signal_power(m))[0], local.peer_overlap(R), peers.peer_r2_full(R),
            peers.peer_r2_topk(R), h.score, tp.synergy, tp.redundancy_t, tp.unique_t]
    assert all(np.all(np.isfinite(v)) for v in vals)
    assert h.size[3] == 0 and tp.task_info[3] == 0
    mc = Moments.from_samples(Y, np.full(2000, 4.0))
    assert mc.t_constant
    tc = target.target_pairs(mc)
    assert np.all(tc.task_info == 0) and np.all(np.isfinite(tc.syn)) and np.allclose(tc.syn, 0, atol=1e-9)


# ---------------------------------------------------------------- structure
def test_spearman_matrix_and_pooled_ranks():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal(50), rng.standard_normal(50)
    r = structure.spearman_matrix({"x": x, "y": x + y, "c": np.ones(50)})
    assert r.rho[0, 1] == pytest.approx(spearmanr(x, x + y)[0])
    assert r.constant.tolist() == [False, False, True] and r.rho[0, 2] == 0 and np.isfinite(r.rho).all()
    # ranks agree inside each layer, but the layers' scales are crossed: only pooled ranks see the agreement
    layers = [{"a": np.arange(20.0) - 100 * k, "b": np.arange(20.0) + 100 * k} for k in (0, 1)]
    assert structure.pooled_rank_spearman(layers).rho[0, 1] == pytest.approx(1.0)
    assert structure.spearman_matrix({k: np.concatenate([t[k] for t in layers]) for k in "ab"}).rho[0, 1] < 0.9


def test_kmeans_and_ari():
    rng = np.random.default_rng(10)
    truth = np.repeat(np.arange(4), 30)
    X = np.column_stack([truth % 2, truth // 2]) * 10.0 + rng.standard_normal((120, 2))
    lab = structure.kmeans_groups(X, seed=3)
    assert np.array_equal(lab, structure.kmeans_groups(X, seed=3))
    res = structure.ari_with_null(lab, truth, seed=1)
    assert res.ari == pytest.approx(1.0) and res.p_value < 0.01 and abs(res.null_mean) < 0.05
    assert res == structure.ari_with_null(lab, truth, seed=1)
    assert structure.ari_with_null(truth, (truth + 1) % 4, n_perm=10).ari == pytest.approx(1.0)
    a, b = rng.integers(0, 4, 3000), rng.integers(0, 4, 3000)
    assert abs(structure.ari_with_null(a, b, n_perm=20).ari) < 0.01
    assert len(set(structure.kmeans_groups(rng.standard_normal((3, 2)), k=4))) == 3


@pytest.mark.parametrize("backend", ["igraph", "networkx"])
def test_modularity_recovers_planted_partition(backend):
    l, k = 4, 30
    G = nx.planted_partition_graph(l, k, 0.3, 0.01, seed=11)
    A = nx.to_numpy_array(G, nodelist=range(l * k))
    W = A * (1 + 0.01 * np.random.default_rng(0).random(A.shape))
    W = np.maximum(W, W.T)
    block = np.arange(l * k) // k
    # Newman Q of the planted partition, by hand: Σ_c [w_in,c / w − (s_c / 2w)²]
    same = block[:, None] == block[None, :]
    w2 = W.sum()
    s = np.array([W[block == c].sum() for c in range(l)])
    q_planted = (W * same).sum() / w2 - np.sum((s / w2) ** 2)
    dens = A.sum() / (l * k * (l * k - 1))
    res = structure.modularity(W, keep_frac=dens + 0.01, seed=0, n_null=3, backend=backend)
    assert res.n_edges == G.number_of_edges()
    assert res.q == pytest.approx(q_planted, abs=0.03)
    assert res.q_null_mean < res.q - 0.2
    assert res == structure.modularity(W, keep_frac=dens + 0.01, seed=0, n_null=3, backend=backend)


def test_modularity_backends_agree_on_a_random_graph():
    # both run Clauset–Newman–Moore; they may break ties differently, so Q agrees closely, not bit for bit
    rng = np.random.default_rng(5)
    W = rng.random((200, 200))
    a = structure.modularity(W + W.T, n_null=2, backend="igraph")
    b = structure.modularity(W + W.T, n_null=2, backend="networkx")
    assert a.n_edges == b.n_edges
    assert a.q == pytest.approx(b.q, abs=0.01) and a.q_null_mean == pytest.approx(b.q_null_mean, abs=0.01)


def test_triplet_s3_s2_closed_form():
    # T = Y_1 + Y_2 + Y_3 + noise(s2): every pair misses one unit of variance, the triplet none
    s2 = 0.4
    V = 3 + s2
    cov = np.eye(4)
    cov[0, 0], cov[0, 1:], cov[1:, 0] = V, 1, 1
    m = gaussian_moments(cov)
    s3 = 0.5 * np.log(V / s2) - 0.5 * np.log(V / (1 + s2))
    syn2 = 0.5 * np.log(V / (1 + s2)) - 0.5 * np.log(V / (2 + s2))
    tp = target.target_pairs(m)
    res = structure.triplet_s3_s2(m, tp.syn_partners, n_triplets=50, seed=0)
    assert res.mean_s3 == pytest.approx(s3, rel=1e-6)
    assert res.mean_s2 == pytest.approx(syn2, rel=1e-6)
    assert res.s3_s2 == pytest.approx(s3 / syn2, rel=1e-6)


def test_triplet_s3_uses_best_pair():
    # T = Σ a_k Y_k + noise: the best pair drops the weakest a_k, I(T;pair jk) = ½ log(V / (a_i² + s2))
    a, s2 = np.array([1.0, 0.7, 0.4]), 0.3
    V = a @ a + s2
    cov = np.eye(4)
    cov[0, 0], cov[0, 1:], cov[1:, 0] = V, a, a
    m = gaussian_moments(cov)
    single = 0.5 * np.log(V / (V - a**2))
    pair = {(0, 1): 2, (0, 2): 1, (1, 2): 0}  # pair -> the channel it misses
    ip = {p: 0.5 * np.log(V / (a[k] ** 2 + s2)) for p, k in pair.items()}
    s3 = 0.5 * np.log(V / s2) - max(ip.values())
    s2_mean = np.mean([ip[p] - max(single[p[0]], single[p[1]]) for p in pair])
    res = structure.triplet_s3_s2(m, target.target_pairs(m).syn_partners, n_triplets=20, seed=1)
    assert res.mean_s3 == pytest.approx(s3, rel=1e-6)
    assert res.mean_s2 == pytest.approx(s2_mean, rel=1e-6)


def test_rewired_null_keeps_degrees_and_weights():
    import igraph
    rng = np.random.default_rng(13)
    W = rng.random((40, 40))
    G = structure.top_weight_graph(W + W.T, keep_frac=0.2)
    H = structure.rewire(G, np.random.default_rng(0), swaps_per_edge=2)
    assert dict(G.degree()) == dict(H.degree())
    wG = sorted(d["weight"] for *_, d in G.edges(data=True))
    wH = sorted(d["weight"] for *_, d in H.edges(data=True))
    assert wG == wH and set(G.edges) != set(H.edges)
    # the igraph twin: same degrees, same weights, surviving edges keep their own weight
    g = igraph.Graph(n=40, edges=list(G.edges))
    g.es["weight"] = [G.edges[e]["weight"] for e in G.edges]
    h = structure.rewire_igraph(g, np.random.default_rng(0), swaps_per_edge=2)
    assert g.degree() == h.degree()
    assert sorted(h.es["weight"]) == wG
    survivors = set(map(frozenset, g.get_edgelist())) & set(map(frozenset, h.get_edgelist()))
    assert survivors != set(map(frozenset, g.get_edgelist()))
    for e in h.es:
        if frozenset(e.tuple) in survivors:
            assert e["weight"] == G.edges[e.tuple]["weight"]


def test_grad_cos_hand_examples():
    # Σ = I, w = (1,0), c = (1,1): g_T = (0,1) ⟂ Σw = (1,0)
    # Σ = diag(2,1), w = (1,1), c = (1,0): Σw = (2,1), D = 3, b = 1, g_T = (1/3, −1/3), cos = (1/3)/(√5·√2/3)
    out = structure.grad_cos(np.array([[1.0, 0.0]]), np.eye(2), np.array([1.0, 1.0]))
    assert out[0] == pytest.approx(0.0, abs=1e-12)
    out = structure.grad_cos(np.array([[1.0, 1.0], [0.0, 0.0]]), np.diag([2.0, 1.0]), np.array([1.0, 0.0]))
    assert out[0] == pytest.approx(1 / np.sqrt(10))
    assert np.isnan(out[1])


def test_propagation_within_and_across():
    rng = np.random.default_rng(12)
    W = rng.standard_normal((40, 30, 3, 3))
    sigma = rng.random(30) + 0.5
    A = structure.influence(W, sigma)
    assert A[3, 4] == pytest.approx(np.abs(W[3, 4]).sum() * sigma[4])
    up = {"u": rng.standard_normal(30), "v": rng.standard_normal(30)}
    down = {"u": A @ up["u"] / A.sum(1), "w": rng.standard_normal(40)}
    res = structure.propagation(up, down, A)
    assert res.rho[0, 0] == pytest.approx(1.0)
    assert abs(res.rho[1, 1]) < 0.5
    G = structure.influence(rng.standard_normal((8, 2, 1, 1)), np.ones(8), groups=4)
    assert G[0, 2] == 0 and G[7, 7] != 0
