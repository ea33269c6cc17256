"""A key/value cache that writes each decoding step into room reserved ahead.

transformers' ``DynamicLayer`` concatenates every new token onto the whole cache, so each decode
step copies all keys and values so far: for a batch of long prompts (Idefics3's image tiles) that
copy costs as much as the attention itself. ``GrowingLayer`` keeps the same interface and
contents but reserves room for the tokens still to come, so a step writes only its own token.

Imported only where a model runs: it subclasses transformers' cache layer.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

#: Room added when a layer outgrows its reservation (tokens).
MIN_GROWTH = 64


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views into preallocated room.

    Operations that replace the tensors (row selection, beam reordering, offloading) leave the
    room behind; the next ``update`` notices and allocates a fresh one.
    """

    def __init__(self, reserve: int = 0) -> None:
        super().__init__()
        #: Tokens of room to add beyond what an allocation needs now.
        self.reserve = reserve
        self._key_room: torch.Tensor | None = None
        self._value_room: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        if not self._has_room(needed, key_states):
            self._allocate(needed, key_states, value_states)
        assert self._key_room is not None and self._value_room is not None
        self._key_room[..., length:needed, :].copy_(key_states)
        self._value_room[..., length:needed, :].copy_(value_states)
        self.keys = self._key_room[..., :needed, :]
        self.values = self._value_room[..., :needed, :]
        return self.keys, self.values

    def _has_room(self, needed: int, key_states: torch.Tensor) -> bool:
        room = self._key_room
        return (
            room is not None
            and room.shape[-2] >= needed
            and self.keys.numel() > 0
            and self.keys.data_ptr() == room.data_ptr()
            and self.keys.shape[:2] == key_states.shape[:2] == room.shape[:2]
        )

    def _allocate(self, needed: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        length = self.get_seq_length()
        capacity = needed + max(self.reserve, MIN_GROWTH)
        rooms = []
        for kept, new in ((self.keys, key_states), (self.values, value_states)):
            batch, heads, _, dim = new.shape
            room = torch.empty((batch, heads, capacity, dim), dtype=new.dtype, device=new.device)
            if length:
                room[..., :length, :].copy_(kept)
            rooms.append(room)
        self._key_room, self._value_room = rooms
        # The reservation is spent; later growth comes in smaller steps.
        self.reserve = 0

    def reset(self) -> None:
        super().reset()
        self._key_room = self._value_room = None


def growing_cache(model: Any, reserve: int = 0) -> Any:
    """A ``DynamicCache`` laid out for ``model`` whose plain layers grow in place.

    ``reserve``: tokens of room to keep beyond the first thing each layer stores (the prompt),
    typically the number of tokens to generate. Sliding-window and other special layers are
    kept as transformers builds them.
    """
    cache = DynamicCache(config=model.config)
    if cache.layers:
        cache.layers = [
            GrowingLayer(reserve) if type(layer) is DynamicLayer else layer
            for layer in cache.layers
        ]
    else:
        cache.layer_class_to_replicate = lambda: GrowingLayer(reserve)
    return cache


def reserve_room(cache: Any, reserve: int) -> None:
    """Set how much room each growing layer of ``cache`` adds at its next allocation."""
    for layer in cache.layers:
        if isinstance(layer, GrowingLayer):
            layer.reserve = reserve


def new_cache(model: Any, *, reserved: bool, reserve: int = 0) -> Any:
    """An empty key/value cache for ``model``: growing in place (the ``reserved_cache`` fast
    path) or transformers' own."""
    return growing_cache(model, reserve) if reserved else DynamicCache(config=model.config)
