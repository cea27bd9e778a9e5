"""Structure, METHOD §4: alignment, groupings, modularity, triplets, gradient geometry, propagation."""
from __future__ import annotations

import warnings
from typing import Iterable, NamedTuple

import networkx as nx
import numpy as np
from scipy.stats import rankdata
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from .ranks import percentile_ranks
from .stats import RHO_MAX, Moments
from .target import RIDGE, pair_info_all, task_info, triple_info


# ---------------------------------------------------------------- alignment
class SpearmanMatrix(NamedTuple):
    names: list
    rho: np.ndarray  # (k, k)
    constant: np.ndarray  # (k,) bool: column had no spread, its correlations are set to 0


def spearman_matrix(table: dict) -> SpearmanMatrix:
    """Spearman ρ between all columns (scipy.stats.spearmanr's definition: Pearson of average ranks).

    Each pair uses the rows where both of its columns are finite (pairwise-complete): a column that is undefined
    (NaN) everywhere — the target metrics on a one-class dataset — makes its own row and column NaN and leaves the
    others exact. A column with no spread gets ρ = 0 off the diagonal and is flagged, where spearmanr would return
    NaN and warn.
    """
    names = list(table)
    X = np.column_stack([np.asarray(table[k], np.float64).reshape(-1) for k in names]) if names else np.zeros((0, 0))
    ok = np.isfinite(X)
    if ok.all():
        return _spearman_complete(names, X)
    rho = np.full((len(names), len(names)), np.nan)
    constant = np.zeros(len(names), bool)
    for i in range(len(names)):
        for j in range(i, len(names)):
            rows = ok[:, i] & ok[:, j]
            if rows.sum() < 2:
                continue
            sub = _spearman_complete([names[i], names[j]], X[rows][:, [i, j]])
            rho[i, j] = rho[j, i] = sub.rho[0, 1] if i != j else 1.0
            constant[[i, j]] |= sub.constant
    return SpearmanMatrix(names, rho, constant)


def _spearman_complete(names, X) -> SpearmanMatrix:
    R = np.column_stack([rankdata(col) for col in X.T]) if X.size else X
    sd = R.std(0) if len(R) > 1 else np.zeros(len(names))
    constant = sd <= 1e-12 * max(1, len(R))
    Z = np.zeros_like(R)
    Z[:, ~constant] = (R[:, ~constant] - R[:, ~constant].mean(0)) / sd[~constant]
    rho = np.clip(Z.T @ Z / max(len(R), 1), -1.0, 1.0)
    np.fill_diagonal(rho, 1.0)
    return SpearmanMatrix(names, rho, constant)


def pooled_rank_spearman(per_layer_tables: Iterable[dict]) -> SpearmanMatrix:
    """Spearman of within-layer percentile ranks pooled over layers (removes between-layer scale shifts)."""
    tables = list(per_layer_tables)
    names = list(tables[0]) if tables else []
    pooled = {k: np.concatenate([percentile_ranks(t[k]) for t in tables]) for k in names}
    return spearman_matrix(pooled)


def layer_mean_sd(matrices: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean ± s.d. over layers of per-layer Spearman matrices."""
    S = np.stack(list(matrices))
    return S.mean(0), (S.std(0, ddof=1) if len(S) > 1 else np.zeros(S.shape[1:]))


# ---------------------------------------------------------------- groupings
def _log_floor(x):
    return np.log(np.maximum(np.asarray(x, np.float64), 1e-12))  # dead channels have I_X = 0


def local_features(input_capture, peer_overlap) -> np.ndarray:
    return np.column_stack([_log_floor(input_capture), peer_overlap])


def target_features(task_info_, synergy) -> np.ndarray:
    return np.column_stack([task_info_, synergy])


def zscore(X) -> np.ndarray:
    X = np.asarray(X, np.float64)
    X = X.reshape(len(X), -1)
    mu = np.nanmean(X, 0) if len(X) else np.zeros(X.shape[1])
    sd = np.nanstd(X, 0) if len(X) else np.ones(X.shape[1])
    Z = np.where(sd > 1e-12, (X - mu) / np.where(sd > 1e-12, sd, 1.0), 0.0)
    return np.nan_to_num(Z)  # a missing value sits at the mean


def kmeans_groups(features, k: int = 4, n_init: int = 10, seed: int = 0) -> np.ndarray:
    """k-means labels on z-scored features (n_channels, n_features); k capped at the number of channels."""
    Z = zscore(features)
    k = min(k, len(Z))
    if k <= 1:
        return np.zeros(len(Z), np.intp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than k is legitimate for tiny layers
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(Z)
    return km.labels_.astype(np.intp)


class AriResult(NamedTuple):
    ari: float
    null_mean: float
    null_sd: float
    p_value: float  # one-sided, (1 + #null ≥ ari) / (1 + n_perm)


def ari_with_null(a, b, n_perm: int = 200, seed: int = 0) -> AriResult:
    a, b = np.asarray(a), np.asarray(b)
    ari = float(adjusted_rand_score(a, b))
    rng = np.random.default_rng(seed)
    null = np.array([adjusted_rand_score(a, rng.permutation(b)) for _ in range(n_perm)])
    if n_perm == 0:
        return AriResult(ari, np.nan, np.nan, np.nan)
    return AriResult(ari, float(null.mean()), float(null.std(ddof=1) if n_perm > 1 else 0.0),
                     float((1 + np.count_nonzero(null >= ari - 1e-12)) / (1 + n_perm)))


# ---------------------------------------------------------------- modularity
class ModularityResult(NamedTuple):
    q: float
    q_null_mean: float
    q_null_sd: float
    n_communities: int
    n_edges: int


BACKENDS = ("igraph", "networkx")


def top_weight_edges(W, keep_frac: float = 0.10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, weight) of the top keep_frac of off-diagonal pair weights (positive ones only), u < v."""
    W = np.nan_to_num(np.asarray(W, np.float64))
    n = W.shape[0]
    iu, ju = np.triu_indices(n, 1)
    w = 0.5 * (W[iu, ju] + W[ju, iu])
    k = int(round(keep_frac * len(w)))
    idx = np.argsort(-w, kind="stable")[:k]
    idx = idx[w[idx] > 0]
    return iu[idx], ju[idx], w[idx]


def top_weight_graph(W, keep_frac: float = 0.10) -> nx.Graph:
    """Graph over channels keeping the top keep_frac of off-diagonal pair weights (positive ones only)."""
    u, v, w = top_weight_edges(W, keep_frac)
    G = nx.Graph()
    G.add_nodes_from(range(np.shape(W)[0]))
    G.add_weighted_edges_from(zip(u.tolist(), v.tolist(), w.tolist()))
    return G


def _q(G) -> tuple[float, int]:
    """networkx: greedy (Clauset–Newman–Moore) modularity communities and their Newman Q."""
    if G.number_of_edges() == 0:
        return 0.0, G.number_of_nodes()
    comms = nx.community.greedy_modularity_communities(G, weight="weight")
    return float(nx.community.modularity(G, comms, weight="weight")), len(comms)


def rewire(G, rng, swaps_per_edge: float) -> nx.Graph:
    """Degree-preserving rewiring; weights of removed edges move onto the created ones."""
    H = G.copy()
    nswap = int(swaps_per_edge * G.number_of_edges())
    nx.double_edge_swap(H, nswap=nswap, max_tries=100 * nswap + 100, seed=int(rng.integers(2**31)))
    # an edge removed and later re-created by a swap comes back without data, so find losses by data, not by key
    born = sorted((min(e), max(e)) for e in H.edges if "weight" not in H.edges[e])
    lost = [d["weight"] for u, v, d in G.edges(data=True) if "weight" not in H.get_edge_data(u, v, {})]
    for e, x in zip(born, rng.permutation(np.array(lost, np.float64))):
        H.edges[e]["weight"] = float(x)
    return H


def _q_igraph(g) -> tuple[float, int]:
    """igraph: the same greedy (Clauset–Newman–Moore) agglomeration, in C; the dendrogram is cut at its best Q."""
    if g.ecount() == 0:
        return 0.0, g.vcount()
    cl = g.community_fastgreedy(weights="weight").as_clustering()
    return float(g.modularity(cl.membership, weights="weight")), len(cl)


def rewire_igraph(g, rng, swaps_per_edge: float):
    """Degree-preserving rewiring in C (igraph's edge swaps, no loops or multi-edges). As in `rewire`, an edge that
    survives keeps its weight and the weights of the removed edges go, permuted, to the created ones. igraph draws
    from Python's `random`, seeded here from `rng` and restored after."""
    import random

    import igraph
    h = g.copy()
    state = random.getstate()
    try:
        random.seed(int(rng.integers(2**31)))
        igraph.set_random_number_generator(random)
        h.rewire(n=max(1, int(swaps_per_edge * g.ecount())), allowed_edge_types="simple")
    finally:
        random.setstate(state)
    n = g.vcount()

    def keys(graph):
        e = np.asarray(graph.get_edgelist(), np.int64).reshape(-1, 2)
        return np.minimum(e[:, 0], e[:, 1]) * n + np.maximum(e[:, 0], e[:, 1])
    kg, kh = keys(g), keys(h)
    wg = np.asarray(g.es["weight"], np.float64)
    order = np.argsort(kg)
    pos = np.clip(np.searchsorted(kg[order], kh), 0, len(kg) - 1)
    kept = kg[order][pos] == kh
    w = np.empty(len(kh))
    w[kept] = wg[order][pos[kept]]
    lost = np.ones(len(kg), bool)
    lost[order[pos[kept]]] = False
    w[~kept] = rng.permutation(wg[lost])
    h.es["weight"] = w.tolist()
    return h


def modularity(W, keep_frac: float = 0.10, seed: int = 0, n_null: int = 5,
               swaps_per_edge: float = 2.0, backend: str = "igraph") -> ModularityResult:
    """Newman Q of greedy modularity communities on the top-weight graph, against degree-preserving rewired nulls.

    `backend` "igraph" (default, C) or "networkx" (METHOD's reference library, pure Python and ~100× slower on a
    512-channel layer); both run Clauset–Newman–Moore and differ only in how they break ties.
    """
    if backend not in BACKENDS:
        raise ValueError(f"modularity backend must be one of {BACKENDS}, not {backend!r}")
    rng = np.random.default_rng(seed)
    if backend == "networkx":
        G = top_weight_graph(W, keep_frac)
        q, n_comm = _q(G)
        n_edges = G.number_of_edges()
        null = lambda: _q(rewire(G, rng, swaps_per_edge))[0]  # noqa: E731
    else:
        import igraph
        u, v, w = top_weight_edges(W, keep_frac)
        g = igraph.Graph(n=np.shape(W)[0], edges=np.stack([u, v], 1).tolist())
        g.es["weight"] = w.tolist()
        q, n_comm = _q_igraph(g)
        n_edges = g.ecount()
        null = lambda: _q_igraph(rewire_igraph(g, rng, swaps_per_edge))[0]  # noqa: E731
    nulls = []
    for _ in range(n_null):
        try:
            nulls.append(null())
        except (nx.NetworkXError, nx.NetworkXAlgorithmError):  # too few edges or nodes to swap
            break
    nulls = np.array(nulls)
    mean = float(nulls.mean()) if len(nulls) else np.nan
    sd = float(nulls.std(ddof=1)) if len(nulls) > 1 else np.nan
    return ModularityResult(q, mean, sd, n_comm, n_edges)


# ---------------------------------------------------------------- triplets
class TripletResult(NamedTuple):
    s3_s2: float  # mean S3 / mean S2; NaN when the pairs carry no synergy
    mean_s3: float
    mean_s2: float
    n_triplets: int


def triplet_s3_s2(m: Moments, syn_partners, n_triplets: int = 2000, seed: int = 0,
                  ridge: float = RIDGE, rho_max: float = RHO_MAX) -> TripletResult:
    """Triplets {i, j, k} with j, k drawn from i's top synergy partners (i uniform over channels that have two).

    S3 = I(T;Y_ijk) − max over its three pairs of I(T;pair); S2 = the mean Syn of the same three pairs.
    """
    P = np.asarray(syn_partners, np.intp)
    n = P.shape[0]
    P = np.where(P == np.arange(n)[:, None], -1, P)
    P = np.take_along_axis(P, np.argsort(P < 0, axis=1, kind="stable"), 1)  # valid partners first
    count = (P >= 0).sum(1)
    eligible = np.flatnonzero(count >= 2)
    if len(eligible) == 0 or n_triplets <= 0:
        return TripletResult(np.nan, np.nan, np.nan, 0)
    rng = np.random.default_rng(seed)
    i = rng.choice(eligible, n_triplets)
    v = count[i]
    a = (rng.random(n_triplets) * v).astype(np.intp)
    b = (rng.random(n_triplets) * (v - 1)).astype(np.intp)
    b += b >= a
    tri = np.column_stack([i, P[i, a], P[i, b]])
    ryy, ryt = m.rho_yy(rho_max), m.rho_yt(rho_max)
    kw = dict(ridge=ridge, rho_max=rho_max, rho_yy=ryy, rho_yt=ryt)
    pairs = [tri[:, [0, 1]], tri[:, [0, 2]], tri[:, [1, 2]]]
    ip = np.column_stack([pair_info_all(m, p, **kw) for p in pairs])
    ti = task_info(ryt, rho_max)
    single_max = np.column_stack([np.maximum(ti[p[:, 0]], ti[p[:, 1]]) for p in pairs])
    s3 = triple_info(m, tri, **kw) - ip.max(1)
    s2 = (ip - single_max).mean(1)
    m3, m2 = float(s3.mean()), float(s2.mean())
    return TripletResult(m3 / m2 if m2 > 1e-12 else np.nan, m3, m2, n_triplets)


# ---------------------------------------------------------------- gradient geometry
def grad_cos(w, sigma_x, c) -> np.ndarray:
    """|cos(Σ_X w, g_T)| per output channel, g_T = c − (b/D) Σ_X w, D = wᵀΣ_X w, b = wᵀc.

    w: (C_out, d) flattened filters; sigma_x: (d, d) input-patch covariance; c: (d,) Cov(x, T).
    NaN where a direction vanishes (zero filter, or T-gradient exactly 0): the angle is undefined there,
    so the layer mean should be taken with np.nanmean.
    """
    w = np.asarray(w, np.float64).reshape(len(w), -1)
    a = w @ np.asarray(sigma_x, np.float64)  # Σ_X symmetric, so rows are Σ_X w_i
    c = np.asarray(c, np.float64).reshape(-1)
    return grad_cos_vectors(a, np.broadcast_to(c, a.shape), np.einsum("id,id->i", w, a), w @ c)


def grad_cos_vectors(a, c, D, b) -> np.ndarray:
    """The same angle from per-channel vectors: a_i = Σ_X w_i = Cov(x, Y_i), c_i = Cov(x, T) over channel i's
    own input patch (grouped convs see different inputs), D_i = Var(Y_i), b_i = Cov(Y_i, T)."""
    a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
    D, b = np.asarray(D, np.float64), np.asarray(b, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = c - (b / D)[:, None] * a
        na, ng = np.linalg.norm(a, axis=1), np.linalg.norm(g, axis=1)
        cos = np.abs(np.einsum("id,id->i", a, g)) / (na * ng)
    scale = np.linalg.norm(c, axis=1) + 1e-300
    return np.where((D > 0) & (na > 0) & (ng > 1e-12 * scale), np.minimum(cos, 1.0), np.nan)


# ---------------------------------------------------------------- propagation
def influence(W, sigma_up, groups: int = 1) -> np.ndarray:
    """A_ji = ‖W_{j,i}‖₁ · σ_i for a consumer with weights (C_out, C_in/groups, ...); zero across groups."""
    W = np.abs(np.asarray(W, np.float64))
    c_out, c_in_g = W.shape[:2]
    l1 = W.reshape(c_out, c_in_g, -1).sum(2)
    A = np.zeros((c_out, c_in_g * groups))
    per_out = c_out // groups
    for g in range(groups):
        A[g * per_out:(g + 1) * per_out, g * c_in_g:(g + 1) * c_in_g] = l1[g * per_out:(g + 1) * per_out]
    return A * np.asarray(sigma_up, np.float64)[None, :]


def _spearman(x, y) -> float:
    r = spearman_matrix({"x": x, "y": y})
    return float(r.rho[0, 1])


class Propagation(NamedTuple):
    names_up: list
    names_down: list
    rho: np.ndarray  # (n_up, n_down): Spearman(influence-weighted upstream metric, downstream metric)


def propagation(upstream_metrics: dict, downstream_metrics: dict, A) -> Propagation:
    """Predict each downstream channel's metric as the A-weighted mean of upstream metrics (A: C_down × C_up)."""
    A = np.asarray(A, np.float64)
    tot = A.sum(1)
    names_up, names_down = list(upstream_metrics), list(downstream_metrics)
    rho = np.zeros((len(names_up), len(names_down)))
    for a, u in enumerate(names_up):
        with np.errstate(invalid="ignore", divide="ignore"):
            pred = np.where(tot > 0, A @ np.asarray(upstream_metrics[u], np.float64) / tot, np.nan)
        for b, d in enumerate(names_down):
            rho[a, b] = _spearman(pred, downstream_metrics[d])
    return Propagation(names_up, names_down, rho)
