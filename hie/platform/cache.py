"""Redis cache for hot reads, invalidated explicitly; never a source of truth, absent when Redis is."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)

_PREFIX = "hie:cache:"


class Cache:
    """JSON values under namespaced keys; every failure degrades to a miss so Redis trouble slows, not breaks."""

    def __init__(self, client: redis.Redis | None, default_ttl: int) -> None:
        self.client = client
        self.default_ttl = default_ttl

    @property
    def enabled(self) -> bool:
        """Whether a Redis is configured."""
        return self.client is not None

    def get(self, key: str) -> Any | None:
        """The cached value, or None on a miss or when Redis is unreachable."""
        if self.client is None:
            return None
        try:
            raw = self.client.get(_PREFIX + key)
        except redis.RedisError as exc:
            log.warning("cache get %s failed: %s", key, exc)
            return None
        return json.loads(raw) if raw is not None else None

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        """Store a JSON-serialisable value with a time to live."""
        if self.client is None:
            return
        try:
            self.client.set(_PREFIX + key, json.dumps(value), ex=ttl or self.default_ttl)
        except redis.RedisError as exc:
            log.warning("cache set %s failed: %s", key, exc)

    def get_bytes(self, key: str) -> bytes | None:
        """A raw cached value (no JSON), for large blobs such as sealed summaries."""
        if self.client is None:
            return None
        try:
            return self.client.get(_PREFIX + key)
        except redis.RedisError as exc:
            log.warning("cache get %s failed: %s", key, exc)
            return None

    def set_bytes(self, key: str, value: bytes, ttl: int | None = None) -> None:
        """Store a raw value with a time to live."""
        if self.client is None:
            return
        try:
            self.client.set(_PREFIX + key, value, ex=ttl or self.default_ttl)
        except redis.RedisError as exc:
            log.warning("cache set %s failed: %s", key, exc)

    def invalidate(self, *keys: str) -> None:
        """Drop keys after the data behind them changed."""
        if self.client is None or not keys:
            return
        try:
            self.client.delete(*(_PREFIX + key for key in keys))
        except redis.RedisError as exc:
            log.error("cache invalidation of %s failed: %s", keys, exc)

    def get_or_load(self, key: str, loader: Callable[[], Any], ttl: int | None = None) -> Any:
        """Read through: on a miss call loader and cache what it returns (None is not cached)."""
        value = self.get(key)
        if value is None:
            value = loader()
            if value is not None:
                self.set(key, value, ttl)
        return value
