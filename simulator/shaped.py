"""A ratings file shaped like MovieLens-100K's ``u.data``, for measuring where the real one
cannot be fetched (its licence forbids redistributing it, and these machines reach only the
package registries).

Same shape, not the same data: 943 users with at least 20 ratings each, 1,682 items with
long-tailed popularity, 100,000 ratings 1-5 (mean ~3.5, ~55% are 4 or 5) over 215 days, as
tab-separated ``user item rating epoch-seconds`` lines without a header. Ratings come from
latent tastes (user and item vectors), so models have something real to learn; timestamps
cluster per user (most users rate within a few weeks), as in MovieLens. Figures measured on it
say how recstack's code scales on that shape; quality figures on it are not MovieLens figures.

    python -m simulator.shaped u.data [--ratings 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

N_USERS, N_ITEMS, N_RATINGS = 943, 1682, 100_000
START_EPOCH_S = 874_724_710  # 1997-09-20, MovieLens-100K's first rating
SPAN_S = 215 * 86_400
MIN_PER_USER = 20
MAX_PER_USER = 737  # MovieLens-100K's most active user
DIM = 8


def ratings_per_user(rng: np.random.Generator, n_users: int, n_ratings: int) -> np.ndarray:
    """Long-tailed counts, each in [MIN_PER_USER, MAX_PER_USER], summing to ``n_ratings``."""
    activity = rng.pareto(1.5, n_users) + 1.0
    per_user = np.full(n_users, MIN_PER_USER, dtype=np.int64)
    while (left := n_ratings - int(per_user.sum())) > 0:
        open_ = per_user < MAX_PER_USER
        if not open_.any():
            raise ValueError(f"{n_ratings} ratings do not fit {n_users} users")
        share = np.where(open_, activity, 0.0)
        add = np.floor(left * share / share.sum()).astype(np.int64)
        add[np.flatnonzero(open_)[: max(0, left - int(add.sum()))]] += 1  # the rounding rest
        per_user = np.minimum(per_user + add, MAX_PER_USER)
    return per_user


def shaped_ratings(n_ratings: int = N_RATINGS, seed: int = 0) -> np.ndarray:
    """``[n, 4]`` int64 rows (user 1.., item 1.., rating 1..5, epoch seconds), sorted by time."""
    rng = np.random.default_rng(seed)
    n_users, n_items = N_USERS, N_ITEMS
    per_user = ratings_per_user(rng, n_users, n_ratings)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity = rng.permutation(popularity / popularity.sum())
    users_v = rng.normal(0, 0.6, (n_users, DIM))
    items_v = rng.normal(0, 0.6, (n_items, DIM))
    item_bias = rng.normal(0, 0.5, n_items)
    rows = []
    for u in range(n_users):
        k = int(per_user[u])
        items = rng.choice(n_items, size=k, replace=False, p=popularity)
        raw = 3.6 + item_bias[items] + items_v[items] @ users_v[u] + rng.normal(0, 0.7, k)
        rating = np.clip(np.rint(raw), 1, 5).astype(np.int64)
        first = rng.integers(0, SPAN_S - 86_400)
        span = min(SPAN_S - first, int(rng.exponential(20 * 86_400)) + 3600)
        ts = START_EPOCH_S + first + np.sort(rng.integers(0, span, k))
        rows.append(np.column_stack([np.full(k, u + 1), items + 1, rating, ts]))
    out = np.concatenate(rows)
    return out[np.argsort(out[:, 3], kind="stable")]


def write_u_data(path: Path, n_ratings: int = N_RATINGS, seed: int = 0) -> Path:
    """Write :func:`shaped_ratings` to ``path`` as ``u.data`` lines; returns ``path``."""
    np.savetxt(path, shaped_ratings(n_ratings, seed), fmt="%d", delimiter="\t")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--ratings", type=int, default=N_RATINGS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_u_data(args.out, args.ratings, args.seed))


if __name__ == "__main__":
    main()
