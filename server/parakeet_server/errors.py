"""Domain errors: one type per failure class, mapped to gRPC status codes in api/service.py and
to HTTP statuses in http_api/app.py."""


class ParakeetError(Exception):
    """Base class of every error the server reports to a client."""


class InvalidAudio(ParakeetError):
    """The audio cannot be decoded, or its declared format is impossible."""


class InvalidRequest(ParakeetError):
    """A request field has a value the server cannot honour."""


class AudioTooLong(ParakeetError):
    """The audio is longer than the server accepts."""


class Overloaded(ParakeetError):
    """Too much work is queued; the client should retry later."""


class RequestTooLarge(ParakeetError):
    """A message carries more audio than the server's message limit."""


class ModelUnavailable(ParakeetError):
    """The model is not loaded (yet), or the server is shutting down."""


class DeadlineExceeded(ParakeetError):
    """The client's deadline passed before the work could be done."""


class ModelLoadError(ParakeetError):
    """The model could not be loaded at startup."""


class AudioNotCached(ParakeetError):
    """The request named its audio by digest, and the server does not hold that audio."""


class Unauthenticated(ParakeetError):
    """The request does not carry the server's bearer token."""
