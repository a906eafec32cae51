"""A tiny name -> object registry shared by attention variants, layers and policies."""

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from llmjax.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to implementations; unknown names fail with the list of valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name")` adds the decorated object under `name`."""

        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered; pick another name or "
                    f"unregister the old one first."
                )
            self._items[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str, *, field: str | None = None) -> T:
        """The implementation registered as `name`. With `field` (the config option that named
        it, e.g. "model.norm"), an unknown name is a ConfigError that names the option."""
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(self.names())
            if field is not None:
                raise ConfigError(
                    f"{field}={name!r} is not known; valid choices: {choices}"
                ) from None
            raise ValueError(f"unknown {self.kind} {name!r}; valid choices: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
