"""Config errors: every problem names the key path it is about, never the secret it saw."""

from __future__ import annotations

from collections.abc import Iterable

import attrs


class ConfigError(ValueError):
    """One config problem at one key path (``tun_mesh/a/b``).

    An empty path is used for problems of the file as a whole (unreadable, malformed YAML).
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """All problems carried by this exception (just itself), so callers can treat both classes alike."""
        return (self,)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigErrors(ConfigError):
    """Several independent problems found in one load; ``str()`` gives one line per problem."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        collected = tuple(errors)
        if not collected:
            raise ValueError("ConfigErrors needs at least one error")
        super().__init__(collected[0].path, collected[0].message)
        self._errors = collected

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self._errors)


@attrs.frozen
class ConfigWarning:
    """A config problem that does not stop the node (an ignored top-level key, a certificate about to expire).

    Same shape as ``ConfigError``: ``str()`` is ``tun_mesh/a/b: message``.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def raise_collected(errors: Iterable[ConfigError]) -> None:
    """Raise the single error, or a ConfigErrors for several; do nothing when there are none."""
    collected = tuple(errors)
    if len(collected) == 1:
        raise collected[0]
    if collected:
        raise ConfigErrors(collected)
