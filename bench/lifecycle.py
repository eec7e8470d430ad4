"""One shape for the benchmark's resources: started on enter, always stopped on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Managed:
    """`start()` on enter (stopping again if it fails half-way), `stop()` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
