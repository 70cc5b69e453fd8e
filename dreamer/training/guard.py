"""Non-finite guard: watch every update on the device, look on the host only every K updates.

Reading a flag on the host (``bool(tensor)``) waits for the device to finish; doing that every
update would serialise a CUDA learner. :meth:`NonFiniteGuard.observe` only queues device ops that
remember the first update at which a watched value was NaN/inf, which values were bad then, and
what they were; :meth:`NonFiniteGuard.check` reads that record (one sync) and raises
:class:`~dreamer.training.update.NonFiniteLossError` naming the first bad term and its update.
The loop checks every ``log.every_updates`` updates (where logging syncs anyway) and before every
checkpoint, so a checkpoint is only written when every update up to it was finite.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from dreamer.training.update import guarded_values, non_finite_error


class NonFiniteGuard:
    """Device-side record of the first update whose losses or gradient norm were not finite.

    Each update costs about ten small device ops: the watched values are concatenated into one
    vector, and the first non-finite element of the first bad update is remembered together with
    the term it belongs to.
    """

    def __init__(self) -> None:
        self.names: list[str] | None = None
        self.sizes: list[int] | None = None
        self.owner: torch.Tensor | None = None  # which term each element of the vector is from
        self.first_update: torch.Tensor | None = None
        self.first_term: torch.Tensor | None = None
        self.first_value: torch.Tensor | None = None

    def observe(self, metrics: TensorDictBase, update: int) -> None:
        """Record ``metrics`` of ``update`` without waiting for the device."""
        values = guarded_values(metrics)
        names, sizes = list(values), [v.numel() for v in values.values()]
        flat = torch.cat([v.detach().reshape(-1).float() for v in values.values()])
        if self.names is None:
            self.names, self.sizes = names, sizes
            self.owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            self.owner = self.owner.to(flat.device)
            self.first_update = torch.full((), -1, dtype=torch.int64, device=flat.device)
            self.first_term = torch.zeros((), dtype=torch.int64, device=flat.device)
            self.first_value = torch.zeros((), device=flat.device)
        elif (names, sizes) != (self.names, self.sizes):
            raise ValueError(
                f"The update's metrics changed from {dict(zip(self.names, self.sizes, strict=True))} "
                f"to {dict(zip(names, sizes, strict=True))}."
            )
        bad = ~torch.isfinite(flat)
        first = bad.to(torch.uint8).argmax().reshape(1)
        new = (self.first_update < 0) & bad.any()
        self.first_update = torch.where(new, update, self.first_update)
        self.first_term = torch.where(new, self.owner.index_select(0, first)[0], self.first_term)
        self.first_value = torch.where(new, flat.index_select(0, first)[0], self.first_value)

    def check(self) -> None:
        """Raise :class:`NonFiniteLossError` if any observed update was not finite (one sync)."""
        if self.first_update is None:
            return
        update = int(self.first_update)
        if update >= 0:
            term = self.names[int(self.first_term)]
            raise non_finite_error(term, self.first_value.item(), update)
