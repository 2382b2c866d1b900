"""The sticky cache: live workflow instances kept between activations.

A hit feeds an instance only the events that are new since its cursor, so a
long run costs O(new events) per activation instead of O(whole log); a miss
(eviction, another process, a restart) replays from the start.
"""

from __future__ import annotations

from collections import OrderedDict

from .replay import WorkflowInstance

DEFAULT_CACHE_SIZE = 2000


class InstanceCache:
    def __init__(self, capacity: int = DEFAULT_CACHE_SIZE) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, WorkflowInstance] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, run_id: str) -> WorkflowInstance | None:
        instance = self._items.get(run_id)
        if instance is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(run_id)
        return instance

    def put(self, instance: WorkflowInstance) -> None:
        self._items[instance.run_id] = instance
        self._items.move_to_end(instance.run_id)
        while len(self._items) > self.capacity:
            _, evicted = self._items.popitem(last=False)
            evicted.close()

    def evict(self, run_id: str) -> None:
        instance = self._items.pop(run_id, None)
        if instance is not None:
            instance.close()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._items
