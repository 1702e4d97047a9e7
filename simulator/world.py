"""The simulated world: a catalogue, a population of users, and the ground-truth click model.

Ids are dense: item ``i`` and user ``u`` are row ``i`` / ``u`` of the arrays below, so the ids
in the lake index the world directly. Serving and training never see this module's latent
state; only the simulator and the load tests (which play simulated users) do.

:class:`World` stores the state, draws it (and grows it), and saves it; the click model it
inherits lives in :mod:`simulator.groundtruth`, which the policies use without importing this
module (this one imports the logging policy, to calibrate against it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from recstack.clock import day_start
from recstack.settings import SimSettings
from simulator.groundtruth import DAY_US, GroundTruth, epoch_us, sigmoid
from simulator.policy import LoggingPolicy

# The whole registry stays importable from here, where it was before simulator.streams.
from simulator.streams import STREAM_CALIBRATION, STREAM_WORLD

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 16
AFFINITY_SCALE = 4.0  # logits per unit of cosine(taste, item): the signal a model can learn
POSITION_EXPONENT = 0.7  # examination probability (1 + position) ** -0.7
TARGET_CTR = 0.05  # overall CTR of the logging policy that World.generate calibrates to
NEW_ITEM_FRACTION = 0.1  # items released during the simulated days (cold start, freshness)
FRESHNESS_BOOST = 1.0  # extra logit of a just-released item ...
FRESHNESS_DAYS = 3.0  # ... decaying as exp(-age / FRESHNESS_DAYS): interest fades with age
FATIGUE = 0.5  # logit lost per recent impression of the same item to the same user
COUNTRIES = ("us", "in", "br", "de", "gb", "fr")
COUNTRY_SHARE = (0.35, 0.2, 0.15, 0.1, 0.1, 0.1)
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_SHARE = (0.6, 0.3, 0.1)

_FORMAT_VERSION = 2  # 2: user_created_us, category_boost, lifecycle and fatigue knobs
_ARRAYS_FILE = "world.npz"
_META_FILE = "world.json"


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class World(GroundTruth):
    """Latent state of the simulated world (arrays indexed by id) plus the click model's knobs.

    The click model itself (``logits``, ``click_probability``, ...) is inherited from
    :class:`~simulator.groundtruth.GroundTruth`.
    """

    seed: int
    start_date: dt.date
    n_days: int
    category_centroids: np.ndarray  # float32 [n_categories, dim], unit norm
    category_share: np.ndarray  # float64 [n_categories], share of the catalogue, sums to 1
    category_boost: np.ndarray  # float32 [n_categories], additive logit (seasonality drifts)
    item_category: np.ndarray  # int32 [n_items]
    item_quality: np.ndarray  # float32 [n_items], additive logit
    item_embedding: np.ndarray  # float32 [n_items, dim], unit norm
    item_created_us: np.ndarray  # int64 [n_items], UTC microseconds since the epoch
    user_taste: np.ndarray  # float32 [n_users, dim], unit norm
    user_favourites: np.ndarray  # int32 [n_users, 3], favourite categories, -1 = none
    user_activity: np.ndarray  # float32 [n_users], expected sessions per day
    user_country: np.ndarray  # int8 [n_users], index into COUNTRIES
    user_device: np.ndarray  # int8 [n_users], index into DEVICES
    user_bias: np.ndarray  # float32 [n_users], additive logit (some users click more)
    user_created_us: np.ndarray  # int64 [n_users], when the user joined (no sessions before)
    bias: float = 0.0  # global logit offset, calibrated to TARGET_CTR
    affinity_scale: float = AFFINITY_SCALE
    position_exponent: float = POSITION_EXPONENT
    freshness_boost: float = FRESHNESS_BOOST
    freshness_days: float = FRESHNESS_DAYS
    fatigue: float = FATIGUE

    @property
    def n_categories(self) -> int:
        return int(self.category_centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_embedding.shape[1])

    @property
    def item_created_at(self) -> np.ndarray:
        """Release times as ``datetime64[us]`` (UTC)."""
        return self.item_created_us.astype("datetime64[us]")

    @property
    def end(self) -> dt.datetime:
        """Midnight after the last simulated day: "now" for a world loaded after a run."""
        return day_start(self.start_date + dt.timedelta(days=self.n_days))

    # --- generation -----------------------------------------------------------------------

    @classmethod
    def generate(cls, sim: SimSettings, target_ctr: float = TARGET_CTR) -> World:
        """A new world drawn from ``sim.seed`` (same seed -> same world).

        Items get a category, a latent quality and embedding, and a release time (most before
        ``sim.start_date``, ``NEW_ITEM_FRACTION`` spread over the simulated days, so new items
        arrive every day). Users get a taste near 1-3 favourite categories, a lognormal activity
        around ``sim.sessions_per_user_per_day`` and a segment (country, device). The global
        bias is then calibrated so the logging policy's CTR is about ``target_ctr``.
        """
        if not 0.0 < target_ctr < 0.5:
            raise ValueError(f"target_ctr must be in (0, 0.5), got {target_ctr}")
        world = cls(**_draw_world(sim))
        world.bias = _calibrated_bias(world, sim, target_ctr)
        logger.info(
            "world seed=%d: %d users, %d items, %d categories, bias=%.3f",
            sim.seed, world.n_users, world.n_items, world.n_categories, world.bias,
        )
        return world

    def with_new_items(
        self,
        rng: np.random.Generator,
        n: int,
        released_us: np.ndarray,
        categories: list[int] | None = None,
    ) -> World:
        """A copy with ``n`` more items (ids ``n_items..``), released at ``released_us``.

        ``categories`` restricts the new items to those categories (shares kept proportional).
        """
        share = self.category_share
        if categories:
            self._check_categories(categories)
            share = np.zeros_like(share)
            share[categories] = self.category_share[categories]
            share /= share.sum()
        new = _draw_items(rng, n, self.category_centroids.astype(np.float64), share)
        return replace(
            self,
            item_category=np.concatenate([self.item_category, new["item_category"]]),
            item_quality=np.concatenate([self.item_quality, new["item_quality"]]),
            item_embedding=np.concatenate([self.item_embedding, new["item_embedding"]]),
            item_created_us=np.concatenate(
                [self.item_created_us, np.asarray(released_us, np.int64)]
            ),
        )

    def with_new_users(
        self,
        rng: np.random.Generator,
        n: int,
        joined_us: int,
        country: str | None = None,
        device: str | None = None,
    ) -> World:
        """A copy with ``n`` more users (ids ``n_users..``) who join at ``joined_us``."""
        mean_activity = float(self.user_activity.mean()) if self.n_users else 1.0
        new = _draw_users(
            rng, n, self.category_centroids.astype(np.float64), self.category_share, mean_activity
        )
        if country is not None:
            new["user_country"][:] = COUNTRIES.index(country)
        if device is not None:
            new["user_device"][:] = DEVICES.index(device)
        joined = np.full(n, joined_us, np.int64)
        return replace(
            self,
            **{k: np.concatenate([getattr(self, k), v]) for k, v in new.items()},
            user_created_us=np.concatenate([self.user_created_us, joined]),
        )

    # --- segments and lifecycle -----------------------------------------------------------

    def segment_mask(self, country: str | None = None, device: str | None = None) -> np.ndarray:
        """Boolean mask [n_users] of a segment (country and/or device; None = any)."""
        mask = np.ones(self.n_users, dtype=bool)
        if country is not None:
            if country not in COUNTRIES:
                raise ValueError(f"unknown country {country!r}; known: {', '.join(COUNTRIES)}")
            mask &= self.user_country == COUNTRIES.index(country)
        if device is not None:
            if device not in DEVICES:
                raise ValueError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
            mask &= self.user_device == DEVICES.index(device)
        return mask

    def available_items(self, at: dt.datetime) -> np.ndarray:
        """Boolean mask [n_items]: items released strictly before ``at``."""
        return self.item_created_us < epoch_us(at)

    def active_users(self, at: dt.datetime) -> np.ndarray:
        """Boolean mask [n_users]: users who joined at or before ``at``."""
        return self.user_created_us <= epoch_us(at)

    def _check_categories(self, categories: list[int]) -> None:
        bad = [c for c in categories if not 0 <= int(c) < self.n_categories]
        if bad:
            raise ValueError(
                f"categories {bad} do not exist (the world has categories 0..{self.n_categories - 1})"
            )

    # --- persistence ----------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        """Write the world into directory ``path`` (``world.npz`` + ``world.json``); returns it."""
        return _write_world(self, Path(path))

    @classmethod
    def load(cls, path: Path) -> World:
        """Read a world written by :meth:`save` from directory ``path``."""
        return cls(**_read_world_fields(Path(path), {f.name for f in fields(cls)}))


def _draw_world(sim: SimSettings) -> dict[str, Any]:
    """The fields of a new world drawn from ``sim.seed``, before its bias is calibrated."""
    rng = np.random.default_rng([sim.seed, STREAM_WORLD])
    dim, n_cat = EMBEDDING_DIM, sim.n_categories

    centroids = _normalize(rng.standard_normal((n_cat, dim)))
    # Some categories are bigger and more liked than others (Zipf-like shares).
    cat_share = 1.0 / np.arange(1, n_cat + 1) ** 0.6
    cat_share = rng.permutation(cat_share / cat_share.sum())

    items = _draw_items(rng, sim.n_items, centroids, cat_share)
    item_created_us = _release_times(rng, sim)
    users = _draw_users(rng, sim.n_users, centroids, cat_share, sim.sessions_per_user_per_day)
    country_offset = rng.normal(0.0, 0.15, size=len(COUNTRIES))
    users["user_bias"] = (users["user_bias"] + country_offset[users["user_country"]]).astype(
        np.float32
    )
    # Every initial user joined before the first simulated day.
    joined = np.full(sim.n_users, epoch_us(day_start(sim.start_date)) - DAY_US, np.int64)
    return dict(
        seed=sim.seed,
        start_date=sim.start_date,
        n_days=sim.days,
        category_centroids=centroids.astype(np.float32),
        category_share=cat_share.astype(np.float64),
        category_boost=np.zeros(n_cat, np.float32),
        item_created_us=item_created_us,
        user_created_us=joined,
        **items,
        **users,
    )


def _calibrated_bias(world: World, sim: SimSettings, target_ctr: float) -> float:
    """The global bias at which the logging policy's expected CTR is ``target_ctr``.

    Calibrating against the logging policy's lists (rather than random pairs) is what makes
    the lake's CTR land on target.
    """
    rng = np.random.default_rng([sim.seed, STREAM_CALIBRATION])
    policy = LoggingPolicy.from_world(world, sim.list_size, sim.seed)
    n_sessions = 4000
    weight = world.user_activity / world.user_activity.sum()
    users = rng.choice(world.n_users, size=n_sessions, p=weight)
    lists = policy.recommend(rng, users, world.available_items(day_start(world.start_date)))
    positions = np.broadcast_to(np.arange(lists.shape[1]), lists.shape)
    # Without the current bias, so calibrating a world twice gives the same answer. Without
    # freshness and fatigue too: the target is the steady-state CTR of the back catalogue.
    logits = world.logits(np.repeat(users, lists.shape[1]), lists.ravel()) - world.bias
    examine = (1.0 + positions.ravel()) ** -world.position_exponent

    lo, hi = -20.0, 20.0  # expected CTR is increasing in the bias: bisect
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(np.mean(sigmoid(logits + mid) * examine)) < target_ctr:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _write_world(world: World, path: Path) -> Path:
    """``world.npz`` (the arrays) and ``world.json`` (the rest) in directory ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    values = {f.name: getattr(world, f.name) for f in fields(world)}
    arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
    meta = {k: v for k, v in values.items() if k not in arrays}
    meta["start_date"] = world.start_date.isoformat()
    meta["format_version"] = _FORMAT_VERSION
    meta["countries"], meta["devices"] = list(COUNTRIES), list(DEVICES)
    meta["n_users"], meta["n_items"] = world.n_users, world.n_items
    # Write to temporaries then rename, so a reader never loads half a world.
    tmp_npz = path / f".{_ARRAYS_FILE}.tmp.npz"
    np.savez_compressed(tmp_npz, **arrays)
    tmp_npz.replace(path / _ARRAYS_FILE)
    tmp_json = path / f".{_META_FILE}.tmp"
    tmp_json.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp_json.replace(path / _META_FILE)
    return path


def _read_world_fields(path: Path, names: set[str]) -> dict[str, Any]:
    """The values of the fields ``names`` saved by :func:`_write_world` in directory ``path``."""
    meta_file, arrays_file = path / _META_FILE, path / _ARRAYS_FILE
    if not meta_file.exists() or not arrays_file.exists():
        raise FileNotFoundError(
            f"no simulated world in {path} (expected {_META_FILE} and {_ARRAYS_FILE}; "
            "run `recstack simulate` first)"
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"{meta_file}: world format {meta.get('format_version')}, this code reads "
            f"{_FORMAT_VERSION}; re-run `recstack simulate`"
        )
    kwargs = {k: v for k, v in meta.items() if k in names}
    kwargs["start_date"] = dt.date.fromisoformat(meta["start_date"])
    with np.load(arrays_file) as npz:
        kwargs.update({k: npz[k] for k in npz.files if k in names})
    return kwargs


def _release_times(rng: np.random.Generator, sim: SimSettings) -> np.ndarray:
    """Item release times (int64 epoch µs): a back catalogue plus items released during the run."""
    start_us = epoch_us(day_start(sim.start_date))
    offsets = -rng.uniform(1.0, 365.0, size=sim.n_items) * DAY_US
    n_new = int(round(NEW_ITEM_FRACTION * sim.n_items))
    if n_new and sim.n_items > sim.list_size + n_new:  # keep enough items for a full first list
        new = rng.choice(sim.n_items, size=n_new, replace=False)
        offsets[new] = rng.uniform(0.0, sim.days, size=n_new) * DAY_US
    return (start_us + offsets).astype(np.int64)


def _favourite_categories(
    rng: np.random.Generator, n_users: int, cat_share: np.ndarray
) -> np.ndarray:
    """[n_users, 3] distinct favourite categories (1-3 per user, -1 pads), biased to big ones."""
    n_cat = cat_share.shape[0]
    # Gumbel top-k samples distinct categories with probabilities proportional to cat_share.
    keys = np.log(cat_share)[None, :] + rng.gumbel(size=(n_users, n_cat))
    top = np.argsort(-keys, axis=1)[:, :3]
    if n_cat < 3:
        top = np.pad(top, ((0, 0), (0, 3 - n_cat)), constant_values=-1)
    n_fav = np.minimum(rng.integers(1, 4, size=n_users), n_cat)
    top[np.arange(3)[None, :] >= n_fav[:, None]] = -1
    return top


def _draw_items(
    rng: np.random.Generator, n: int, centroids: np.ndarray, cat_share: np.ndarray
) -> dict[str, np.ndarray]:
    """``n`` items' category, embedding (near its category's centroid) and quality."""
    dim = centroids.shape[1]
    category = rng.choice(centroids.shape[0], size=n, p=cat_share)
    noise = rng.standard_normal((n, dim)) * (0.7 / np.sqrt(dim))
    return {
        "item_category": category.astype(np.int32),
        "item_embedding": _normalize(centroids[category] + noise).astype(np.float32),
        "item_quality": rng.normal(0.0, 0.6, size=n).astype(np.float32),
    }


def _draw_users(
    rng: np.random.Generator,
    n: int,
    centroids: np.ndarray,
    cat_share: np.ndarray,
    sessions_per_day: float,
) -> dict[str, np.ndarray]:
    """``n`` users' favourites, taste, activity, segment and click propensity."""
    dim = centroids.shape[1]
    favourites = _favourite_categories(rng, n, cat_share)
    weights = rng.gamma(1.0, size=favourites.shape) * (favourites >= 0)
    weights /= weights.sum(axis=1, keepdims=True)
    fav_centroids = centroids[np.maximum(favourites, 0)]  # [n, 3, dim]
    taste = np.einsum("uf,ufd->ud", weights, fav_centroids)
    taste += rng.standard_normal((n, dim)) * (0.5 / np.sqrt(dim))
    sigma = 0.75  # lognormal spread; the mean stays at sessions_per_day
    activity = sessions_per_day * np.exp(sigma * rng.standard_normal(n) - sigma**2 / 2)
    return {
        "user_taste": _normalize(taste).astype(np.float32),
        "user_favourites": favourites.astype(np.int32),
        "user_activity": activity.astype(np.float32),
        "user_country": rng.choice(len(COUNTRIES), size=n, p=COUNTRY_SHARE).astype(np.int8),
        "user_device": rng.choice(len(DEVICES), size=n, p=DEVICE_SHARE).astype(np.int8),
        "user_bias": rng.normal(0.0, 0.3, size=n).astype(np.float32),
    }
