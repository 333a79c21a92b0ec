"""DataLoaders that resume mid-epoch exactly.

Lightning saves a training dataloader's position only if the loader implements ``state_dict``/``load_state_dict``;
otherwise a run resumed from a mid-epoch checkpoint replays the epoch from its first batch, so it no longer equals
an uninterrupted run. :class:`ResumableDataLoader` records how many batches of the current epoch the training loop
has processed (read from the trainer's progress counters, so Lightning's one-batch prefetch does not skew it) and, on
restore, skips that many *index* batches (no data is loaded for them). Combined with an epoch-seeded sampler
(:class:`~lightning_ws.datamodules.text.EpochSeededRandomSampler`, or Lightning's ``DistributedSampler`` under DDP)
the resumed run sees exactly the batches the uninterrupted run would have seen.

Starting an epoch never touches the global random generator: a plain ``DataLoader`` draws its workers' base seed from
``torch``'s global generator every time an epoch starts, so the point where a resumed run starts its loader would
shift the dropout stream. :class:`ResumableDataLoader` draws it from its own generator, set from ``(seed, epoch)``.
Lightning recognises the loader as resumable (it has ``state_dict``/``load_state_dict``), so a mid-epoch resume does not
warn that the loader is "not resumable".

Lightning 2.5/2.6 drop a loader's saved state when the training loader was built before the checkpoint was restored,
which happens whenever ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` with ``max_epochs`` set
(the fit loop keeps the state in ``_combined_loader_states_to_load`` and never applies it): the resumed epoch then
restarts from its first batch. :class:`ResumableDataLoader` applies such a pending state itself when its epoch starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, Sampler

__all__ = ["SkippableBatchSampler", "ResumableDataLoader"]


class SkippableBatchSampler(BatchSampler):
    """A ``BatchSampler`` that can drop the first ``n`` batches of its next epoch (used on resume)."""

    def __init__(self, sampler: Sampler | Any, batch_size: int, drop_last: bool) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self._skip = 0
        self._skip_epoch: int | None = None

    def skip_next(self, n: int, epoch: int | None = None) -> None:
        """Skip the first ``n`` batches of the next iteration only (only if it is epoch ``epoch``, when given)."""
        self._skip = max(0, int(n))
        self._skip_epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        """Forward ``set_epoch`` to the index sampler (Lightning calls it on the batch sampler's sampler too)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        current = getattr(self.sampler, "epoch", None)
        if self._skip_epoch is not None and current is not None and int(current) != self._skip_epoch:
            skip = 0  # the interrupted epoch had finished: the resumed run starts a new one from its first batch
        if skip >= len(self):
            skip = 0
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose mid-epoch position is stored in Lightning checkpoints and restored on resume.

    Build it like a ``DataLoader`` with ``batch_size``/``sampler``/``drop_last`` (not a custom ``batch_sampler``);
    pass ``datamodule=`` (a LightningDataModule attached to the trainer) so the position is read from the trainer's
    progress counters. Without a ``generator=``, the workers' base seed comes from a private generator seeded with
    ``(seed, epoch)`` (``seed`` defaults to the sampler's ``seed`` attribute, else 0), never from the global one.
    """

    def __init__(self, dataset: Any, batch_size: int = 1, sampler: Sampler | None = None, drop_last: bool = False,
                 datamodule: Any = None, seed: int | None = None, **kwargs: Any) -> None:
        import torch

        self._own_generator = kwargs.get("generator") is None
        if self._own_generator:
            kwargs["generator"] = torch.Generator()
        self._seed = int(seed if seed is not None else getattr(sampler, "seed", 0) or 0)
        if "batch_sampler" in kwargs and kwargs["batch_sampler"] is not None:
            batch_sampler = kwargs.pop("batch_sampler")
            if not isinstance(batch_sampler, SkippableBatchSampler):
                batch_sampler = SkippableBatchSampler(batch_sampler.sampler, batch_sampler.batch_size,
                                                      batch_sampler.drop_last)
        else:
            kwargs.pop("batch_sampler", None)
            kwargs.pop("shuffle", None)
            if sampler is None:
                from torch.utils.data import SequentialSampler

                sampler = SequentialSampler(dataset)
            batch_sampler = SkippableBatchSampler(sampler, batch_size, drop_last)
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._datamodule = datamodule
        self._yielded = 0

    def _apply_pending_state(self) -> None:
        """Load the state Lightning restored for this loader but did not hand over (see the module docstring)."""
        trainer = self._trainer()
        fit_loop = getattr(trainer, "fit_loop", None)
        pending = getattr(fit_loop, "_combined_loader_states_to_load", None)
        combined = getattr(fit_loop, "_combined_loader", None)
        if not pending or combined is None:
            return
        for i, loader in enumerate(combined.flattened):
            if loader is self and i < len(pending) and pending[i]:
                self.load_state_dict(pending[i])
                pending[i] = {}

    def __iter__(self):  # noqa: D105
        self._apply_pending_state()
        self._yielded = 0
        if self._own_generator:
            epoch = getattr(self.batch_sampler.sampler, "epoch", None)
            self.generator.manual_seed(self._seed * 1_000_003 + (int(epoch) if epoch is not None else 0) + 7919)
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def _trainer(self) -> Any:
        dm = self._datamodule
        return None if dm is None else (getattr(dm, "trainer", None) or getattr(dm, "_trainer", None))

    def _position(self) -> tuple[int, int | None]:
        trainer = self._trainer()
        if trainer is not None:
            return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed), int(trainer.current_epoch)
        return self._yielded, getattr(self.batch_sampler.sampler, "epoch", None)

    def state_dict(self) -> dict[str, int]:
        """``{"batches_done": n, "epoch": e}``: batches of epoch ``e`` that the training loop has processed."""
        done, epoch = self._position()
        state = {"batches_done": done}
        if epoch is not None:
            state["epoch"] = epoch
        return state

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches the interrupted run already processed in its epoch (if the resumed run is in it)."""
        epoch = state.get("epoch")
        self.batch_sampler.skip_next(int(state.get("batches_done", 0)), None if epoch is None else int(epoch))
