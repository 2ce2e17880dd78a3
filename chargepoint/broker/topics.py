"""MQTT topic rules and a subscription tree: pure code, no I/O."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def valid_topic_name(topic: str) -> bool:
    """True if `topic` may be published to (non-empty, no wildcards, no NUL)."""
    return bool(topic) and "+" not in topic and "#" not in topic and "\x00" not in topic


def valid_topic_filter(filter_: str) -> bool:
    """True if `filter_` is a well-formed subscription filter."""
    if not filter_ or "\x00" in filter_:
        return False
    levels = filter_.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(filter_: str, topic: str) -> bool:
    """True if the topic name `topic` matches the (valid) filter `filter_`."""
    if topic.startswith("$") and filter_[:1] in ("+", "#"):
        return False
    flevels = filter_.split("/")
    tlevels = topic.split("/")
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= len(tlevels):
            return False
        if f != "+" and f != tlevels[i]:
            return False
    return len(flevels) == len(tlevels)


class _Node(Generic[K]):
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K]] = {}
        self.subscribers: dict[K, int] = {}


class SubscriptionTree(Generic[K]):
    """Subscribers (any hashable key) by topic filter, matched by walking topic levels.

    A match costs O(levels x matching branches), independent of the number of subscribers that do
    not match. Topics starting with ``$`` are not matched by a leading ``+`` or ``#``.
    """

    def __init__(self) -> None:
        self._root: _Node[K] = _Node()

    def add(self, filter_: str, key: K, qos: int) -> None:
        """Subscribe `key` to `filter_` with `qos`, replacing an earlier qos for the same pair."""
        node = self._root
        for level in filter_.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        node.subscribers[key] = qos

    def remove(self, filter_: str, key: K) -> bool:
        """Unsubscribe `key` from `filter_`; prune empty branches. True if it was subscribed."""
        path: list[tuple[_Node[K], str]] = []
        node = self._root
        for level in filter_.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.subscribers.pop(key, None) is None:
            return False
        for parent, level in reversed(path):
            if node.subscribers or node.children:
                break
            del parent.children[level]
            node = parent
        return True

    def match(self, topic: str) -> dict[K, int]:
        """Every subscriber of `topic`, once each, with the highest qos among its matching filters."""
        result: dict[K, int] = {}
        levels = topic.split("/")
        depth = len(levels)
        dollar = topic.startswith("$")
        stack: list[tuple[_Node[K], int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            children = node.children
            if i == depth:
                _merge(result, node.subscribers)
                multi = children.get("#")
                if multi is not None:
                    _merge(result, multi.subscribers)
                continue
            wild = not (i == 0 and dollar)
            if wild:
                multi = children.get("#")
                if multi is not None:
                    _merge(result, multi.subscribers)
                single = children.get("+")
                if single is not None:
                    stack.append((single, i + 1))
            exact = children.get(levels[i])
            if exact is not None:
                stack.append((exact, i + 1))
        return result

    def __bool__(self) -> bool:
        return bool(self._root.children)


def _merge(result: dict[K, int], subscribers: dict[K, int]) -> None:
    for key, qos in subscribers.items():
        if result.get(key, -1) < qos:
            result[key] = qos
