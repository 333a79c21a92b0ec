"""Domain-mixture sampling for R&B (arXiv 2505.00358): draw a domain from ``p``, then an example uniformly within it.

No Lightning import. :class:`DomainMixtureSampler` is a ``torch.utils.data.DistributedSampler`` subclass only so that a
trainer that injects distributed samplers (Lightning's ``use_distributed_sampler``) leaves it alone: each rank draws its
own stream from the same mixture, so no index sharding is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from lightning_ws.errors import ConfigError
from lightning_ws.rnb.mixture import validate_mixture

__all__ = ["DomainMixtureSampler"]

_STATE_VERSION = 1


def _chunk_seed(seed: int, rank: int, chunk: int) -> int:
    """A 63-bit seed that depends on every argument (counter-based streams; no global RNG)."""
    state = np.random.SeedSequence([int(seed), int(rank), int(chunk)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class DomainMixtureSampler(DistributedSampler):
    """Seeded sampler over a fixed pool of examples with domain ids, following a mutable mixture ``p``.

    Each slot draws a domain ``i ~ p`` and then an example uniformly from domain ``i`` (with replacement), as in R&B's
    Balance loop (arXiv 2505.00358, Algorithm 1). Slots are drawn in chunks of ``batch_size``; global chunk ``c`` on rank
    ``r`` uses a generator seeded from ``(seed, r, c)`` and the value of ``p`` at the moment it is drawn, so a stream
    is reproducible and resumable.

    * ``p`` lives in shared memory (``share_memory_()``) and is changed in place by :meth:`set_mixture`; a running
      ``DataLoader`` (also with worker processes, also a ``Dataset`` that holds this sampler inside a worker) sees the
      new value at the next chunk it draws. Chunks already drawn for prefetching keep the old value.
    * Under DDP every rank must receive the same ``p`` (the callback broadcasts it); streams differ per rank.
    * An "epoch" (one ``iter()``) is ``num_samples`` slots (default ``ceil(n / world_size)``, rounded up to a multiple
      of ``batch_size``) of an unbounded stream. Without tracking, epoch ``e`` (:meth:`set_epoch`) is the stream's
      chunks ``[e * C, (e + 1) * C)``.
    * Resume: with ``track_consumption=True`` the owner calls :meth:`advance` once per consumed batch and every
      ``iter()`` continues the stream at the first unconsumed chunk, whatever the trainer's epoch counter says; the
      state records the consumed slots and the mixture of each drawn-but-unconsumed chunk, and a restored sampler
      replays those chunks exactly.
    * Domains with no examples get probability 0 (the rest is renormalised); a mixture whose whole mass is on empty
      domains raises.

    Args:
        domain_ids: ``(n,)`` domain id per example, in ``0..num_domains-1``.
        p: initial mixture, ``None`` = uniform over the non-empty domains (the paper's "stratified" start).
        num_domains: number of domains (default ``max(domain_ids) + 1``).
        batch_size: slots per drawn chunk (use the DataLoader batch size).
        num_samples: slots per epoch on this rank (rounded up to a multiple of ``batch_size``).
        seed: base seed.
        rank: this process's rank (default 0).
        world_size: number of ranks (default 1).
        track_consumption: enable exact resume bookkeeping (see above).
        group_by_domain: order each chunk's indices by domain (stable; default ``True``). A chunk is one batch, so the
            batch arrives grouped by domain: the same examples, only their order within the batch differs, which a
            batch-mean or token-mean loss does not see (up to floating-point summation order).
            :class:`~lightning_ws.callbacks.rnb.RnBCallback` then takes each domain's rows as views instead of
            gathering them (its grouped accumulation, used for large tracked layers). ``False`` keeps the order of the
            draws.
    """

    def __init__(
        self,
        domain_ids: Sequence[int] | np.ndarray | torch.Tensor,
        p: Sequence[float] | torch.Tensor | None = None,
        *,
        num_domains: int | None = None,
        batch_size: int = 1,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        track_consumption: bool = False,
        group_by_domain: bool = True,
    ) -> None:
        dom = torch.as_tensor(np.asarray(domain_ids), dtype=torch.long).reshape(-1)
        if dom.numel() == 0:
            raise ConfigError("DomainMixtureSampler needs at least one example; domain_ids is empty.")
        if int(dom.min()) < 0:
            raise ConfigError(f"domain ids must be >= 0; found {int(dom.min())}.")
        m = int(dom.max()) + 1 if num_domains is None else int(num_domains)
        if m < 1 or int(dom.max()) >= m:
            raise ConfigError(f"num_domains={num_domains} but domain ids go up to {int(dom.max())}; "
                              f"pass num_domains > max(domain_ids).")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ConfigError(f"need 0 <= rank < world_size; got rank={rank}, world_size={world_size}.")
        super().__init__(dom, num_replicas=int(world_size), rank=int(rank), shuffle=True, seed=int(seed))
        self.num_domains = m
        self.batch_size = int(batch_size)
        order = torch.argsort(dom, stable=True)
        sizes = torch.bincount(dom, minlength=m)
        self._order = order
        self._sizes = sizes
        self._offsets = torch.cumsum(sizes, 0) - sizes
        if num_samples is None:
            num_samples = -(-dom.numel() // int(world_size))
        if int(num_samples) < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}.")
        self.num_samples = -(-int(num_samples) // self.batch_size) * self.batch_size
        self.total_size = self.num_samples * self.num_replicas
        self.track_consumption = bool(track_consumption)
        self.group_by_domain = bool(group_by_domain)
        self._p = torch.zeros(m, dtype=torch.float64).share_memory_()
        self.set_mixture(p if p is not None else (sizes > 0).double())
        self._consumed = 0
        self._pending: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ mixture
    @property
    def domain_sizes(self) -> torch.Tensor:
        """``(m,)`` number of examples per domain."""
        return self._sizes.clone()

    @property
    def mixture(self) -> torch.Tensor:
        """A copy of the current mixture ``p`` (float64)."""
        return self._p.clone()

    def set_mixture(self, p: Sequence[float] | torch.Tensor) -> None:
        """Replace the mixture in place (visible to worker processes). Empty domains are given probability 0.

        Raises:
            ConfigError: wrong length, negative/non-finite entries, or all mass on domains without examples.
        """
        t = validate_mixture(p, self.num_domains, name="mixture p")
        t = torch.where(self._sizes > 0, t, torch.zeros((), dtype=torch.float64))
        if float(t.sum()) <= 0:
            raise ConfigError(f"mixture {validate_mixture(p).tolist()} puts all its mass on domains without "
                              f"examples (sizes {self._sizes.tolist()}); give a non-empty domain positive weight.")
        self._p.copy_(t / t.sum())

    # ------------------------------------------------------------------ drawing
    def draw_chunk(self, chunk: int, p: torch.Tensor | None = None) -> torch.Tensor:
        """Draw the ``batch_size`` indices of global chunk ``chunk`` on this rank (pure given ``p``)."""
        p = self._p.clone() if p is None else p
        gen = torch.Generator().manual_seed(_chunk_seed(self.seed, self.rank, chunk))
        doms = torch.multinomial(p, self.batch_size, replacement=True, generator=gen)
        u = torch.rand(self.batch_size, generator=gen, dtype=torch.float64)
        within = torch.minimum((u * self._sizes[doms]).long(), self._sizes[doms] - 1)
        idx = self._order[self._offsets[doms] + within]
        return idx[torch.argsort(doms, stable=True)] if self.group_by_domain else idx

    def __iter__(self):
        n_chunks = self.num_samples // self.batch_size
        if self.track_consumption:
            start = self._consumed // self.batch_size  # continue the global stream where training stopped
        else:
            start = self.epoch * n_chunks  # a fixed stretch of the stream per epoch
        for c in range(start, start + n_chunks):
            if self.track_consumption and c in self._pending:
                idx = self.draw_chunk(c, self._pending[c])
            else:
                p = self._p.clone()
                idx = self.draw_chunk(c, p)
                if self.track_consumption:
                    self._pending[c] = p
            yield from idx.tolist()

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (without consumption tracking it selects the stretch of the stream ``iter()`` yields)."""
        self.epoch = int(epoch)

    def advance(self, num_slots: int | None = None) -> None:
        """Record that ``num_slots`` (default one ``batch_size``) drawn slots were consumed by training."""
        self._consumed += self.batch_size if num_slots is None else int(num_slots)
        done = self._consumed // self.batch_size
        for c in [c for c in self._pending if c < done]:
            del self._pending[c]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain-typed state: epoch, consumed slots (global), mixture, and the mixture of each drawn-unconsumed chunk.

        Identical on every rank when ``p`` and consumption are (the draws themselves are re-derived per rank).
        """
        return {
            "version": _STATE_VERSION,
            "epoch": int(self.epoch),
            "consumed": int(self._consumed),
            "p": self._p.tolist(),
            "pending_chunks": sorted(self._pending),
            "pending_p": [self._pending[c].tolist() for c in sorted(self._pending)],
            "seed": int(self.seed),
            "batch_size": int(self.batch_size),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ConfigError: version, seed or batch size differ from this sampler's (the stream would not be the same).
        """
        if int(state.get("version", 0)) > _STATE_VERSION:
            raise ConfigError(f"sampler state version {state.get('version')} is newer than this code "
                              f"({_STATE_VERSION}); upgrade lightning_ws.")
        for key in ("seed", "batch_size"):
            if key in state and int(state[key]) != int(getattr(self, key)):
                raise ConfigError(f"cannot resume: checkpoint sampler {key}={state[key]}, this sampler has "
                                  f"{getattr(self, key)}; use the same {key} as the interrupted run.")
        self.epoch = int(state["epoch"])
        self._consumed = int(state["consumed"])
        self._p.copy_(torch.as_tensor(state["p"], dtype=torch.float64))
        self._pending = {int(c): torch.as_tensor(p, dtype=torch.float64)
                         for c, p in zip(state.get("pending_chunks", []), state.get("pending_p", []))}
