"""The Nash equilibrium of the synthetic-data game for moment-matching players.

Best responses match moments, so the equilibrium mean parameters solve the
linear system ``mu_i = a_ii m_i + sum_{j != i} a_ij mu_j`` (REFERENCE.md s.1).
The same system with class histograms in place of moments predicts every
player's class mass.
"""

from __future__ import annotations

import numpy as np


def solve_equilibrium(weights: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """Rows of the result are the players' equilibrium mean parameters.

    ``weights`` is the n x n mixing matrix (rows sum to 1), ``moments`` an
    n x d array of the players' data moments (rows of data-less players are
    ignored).  Raises ValueError when the equilibrium is not unique.
    """
    a = np.asarray(weights, dtype=float)
    m = np.asarray(moments, dtype=float)
    if m.ndim == 1:
        m = m[:, None]
    n = a.shape[0]
    if a.shape != (n, n) or m.shape[0] != n:
        raise ValueError(f"weights {a.shape} and moments {m.shape} do not match")
    diag = np.diag(a).copy()
    off = a - np.diag(diag)
    system = np.eye(n) - off
    if np.linalg.matrix_rank(system) < n:
        raise ValueError("the equilibrium is not unique: some players never see data")
    return np.linalg.solve(system, diag[:, None] * m)


def contraction_rate(weights: np.ndarray) -> float:
    """Bound on the best-response contraction: max_i (1 - a_ii)."""
    return float(np.max(1.0 - np.diag(weights)))
