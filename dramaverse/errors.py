"""One exception tree for the whole server; ``http/`` maps it to status codes.

::

    DramaverseError                 status 500 unless a subclass says otherwise
    ├── ConfigError                 invalid settings: the process stops with one line
    ├── SeedRejected                cli.py: a malformed catalog file; nothing was written
    ├── InvalidSnapshot             domain/room_snapshot.py: a stored room cannot be restored
    ├── RoomFailed                  actors/room.py: a bug in this request; the room restarted
    ├── BadRequest (400)            malformed or invalid input; nothing was changed
    ├── Unauthorized (401)          missing, invalid or expired credentials
    ├── Forbidden (403)             authenticated or not, this is not allowed (e.g. CORS)
    ├── NotFound (404)              the addressed resource does not exist
    ├── MethodNotAllowed (405)
    ├── Conflict (409)              a write lost against a newer stored version
    │   ├── UsernameTaken
    │   └── LastAdmin               storage: the last admin cannot be demoted, banned or deleted
    ├── PayloadTooLarge (413)
    ├── TooManyRequests (429)
    └── ServiceUnavailable (503)    try again later
        ├── StorageUnavailable      the database cannot be reached right now
        ├── BrokerUnavailable       broker/base.py: Redis unreachable; a lease cannot be decided
        └── RoomGone                actors/room.py: the room actor stopped first; join again

Classes without a file are defined here; the others live next to the code that raises them.
``tests/test_errors.py`` checks this drawing against the classes defined. Exceptions that never
leave their module (a protocol violation inside one connection's handler, a playback
``IllegalTransition`` that means a bug) are not part of the tree.

Every error carries ``message``, the human-readable text sent as ``{"message": ...}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DramaverseError(Exception):
    """Base of every error the server raises on purpose."""

    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(DramaverseError):
    """The configuration is invalid; the process refuses to start."""


class BadRequest(DramaverseError):
    status = 400


class Unauthorized(DramaverseError):
    status = 401


class Forbidden(DramaverseError):
    status = 403


class NotFound(DramaverseError):
    status = 404


class MethodNotAllowed(DramaverseError):
    status = 405


class Conflict(DramaverseError):
    """A write lost against a newer version; ``extra`` is merged into the JSON body."""

    status = 409

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class UsernameTaken(Conflict):
    pass


class LastAdmin(Conflict):
    """Demoting, banning or deleting the only admin who is not banned."""


class PayloadTooLarge(DramaverseError):
    status = 413


class TooManyRequests(DramaverseError):
    status = 429


class ServiceUnavailable(DramaverseError):
    status = 503


class StorageUnavailable(ServiceUnavailable):
    """The database is unreachable; requests get 503 and may be retried."""


def lone_error(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups, or ``exc`` itself.

    Nurseries (Trio's, trio-asyncio's) wrap an error raised through them in a group per
    nursery; a start-up error should still reach the command line as the error it is.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
