"""Fetching the bytes behind an http(s) URL, bounded in time and size.

Two kinds of limit, because a socket timeout alone bounds only each read (a server sending one byte a second
never trips it):
- an overall deadline (images): when it passes, the connection is shut down from a timer, whatever the server does;
- a stall timeout (weights, which may take an hour on a slow line): a download fails only when no byte arrived for
  that long, and a failed download is resumed from where it stopped on the next try (HTTP Range).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request

from imaginairy.errors import ImageDownloadError, InvalidInputError

DEFAULT_TIMEOUT_SECONDS = 30.0  # connecting, and each read
DEFAULT_DEADLINE_SECONDS = 120.0  # the whole download of an image
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
USER_AGENT = "imaginairy (+https://github.com/brycedrennan/imaginAIry)"


def check_url_scheme(location: str) -> None:
    """InvalidInputError for a URL whose scheme we cannot fetch (ftp://, file://, ...): only http(s) is downloaded."""
    scheme, separator, rest = location.partition("://")
    if not separator or not scheme.isalpha() or scheme.lower() in ("http", "https"):
        return
    if scheme.lower() == "file":
        raise InvalidInputError(f"{location}: file:// URLs are not read; give the path {rest} instead")
    raise InvalidInputError(f"Cannot download {location}: only http:// and https:// URLs are supported")


class Deadline:
    """A point in time after which every connection opened through `opener()` is shut down."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.ends_at = None if seconds is None else time.monotonic() + seconds
        self._timers: list[threading.Timer] = []

    @property
    def expired(self) -> bool:
        return self.ends_at is not None and time.monotonic() >= self.ends_at

    def watch(self, sock: socket.socket) -> None:
        if self.ends_at is None:
            return
        timer = threading.Timer(max(0.0, self.ends_at - time.monotonic()), _shut_down, args=(sock,))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener (redirects and all) whose HTTP and HTTPS connections this deadline watches."""
        deadline = self

        class WatchedHTTPConnection(http.client.HTTPConnection):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        class WatchedHTTPSConnection(http.client.HTTPSConnection):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        class WatchedHTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(WatchedHTTPConnection, req)

        class WatchedHTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(WatchedHTTPSConnection, req, context=self._context)

        return urllib.request.build_opener(WatchedHTTPHandler, WatchedHTTPSHandler)


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def fetch_url_bytes(
    url: str,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
) -> bytes:
    """The body of an http(s) GET of `url`, within `deadline_seconds` overall (`timeout` for connecting and each read).

    Raises ImageDownloadError naming the URL on a bad scheme, an HTTP error status, a redirect loop, a network error,
    a timeout, a passed deadline, or a body longer than `max_bytes`.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise ImageDownloadError(f"Cannot download {url}: only http:// and https:// URLs are supported.")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    deadline = Deadline(deadline_seconds)
    try:
        with deadline.opener().open(request, timeout=min(timeout, deadline_seconds)) as response:
            declared_length = response.headers.get("Content-Length")
            if declared_length and declared_length.isdigit() and int(declared_length) > max_bytes:
                raise _too_large(url, max_bytes)
            body = _read_limited(response, url, max_bytes, deadline)
    except ImageDownloadError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as error:  # URLError, HTTPError and timeouts are OSErrors
        if deadline.expired:
            raise _deadline_passed(url, deadline_seconds) from error
        raise ImageDownloadError(f"Cannot download {url}: {download_failure_reason(error, timeout)}.") from error
    finally:
        deadline.cancel()
    return body


def download_failure_reason(error: BaseException, timeout: float) -> str:
    """What went wrong in a urllib download, in a few words on one line."""
    if isinstance(error, urllib.error.HTTPError):
        if 300 <= error.code < 400:
            return f"too many redirects (HTTP {error.code}: a redirect loop?)"
        return f"HTTP {error.code} {str(error.reason).splitlines()[0] if error.reason else ''}".rstrip()
    if isinstance(error, urllib.error.URLError):
        return _describe_reason(error.reason, timeout)
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"no data for {timeout:g} seconds"
    if isinstance(error, http.client.HTTPException):
        return f"broken HTTP response ({type(error).__name__})"
    return getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]


def _read_limited(response, url: str, max_bytes: int, deadline: Deadline) -> bytes:
    chunks = []
    total = 0
    while chunk := response.read1(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(url, max_bytes)
        chunks.append(chunk)
    if deadline.expired:  # the timer shut the connection: what came is not the whole body
        raise _deadline_passed(url, deadline.seconds)
    declared_length = response.headers.get("Content-Length")
    if declared_length and declared_length.isdigit() and total < int(declared_length):
        raise ImageDownloadError(f"Cannot download {url}: the connection closed after {total} of {declared_length}"
                                 " bytes.")
    return b"".join(chunks)


def _too_large(url: str, max_bytes: int) -> ImageDownloadError:
    return ImageDownloadError(f"Cannot download {url}: it is larger than the {max_bytes} byte limit.")


def _deadline_passed(url: str, seconds: float) -> ImageDownloadError:
    return ImageDownloadError(f"Cannot download {url}: it did not finish within {seconds:g} seconds.")


def _describe_reason(reason, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no response within {timeout:g} seconds"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason).splitlines()[0]
