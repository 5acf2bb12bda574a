"""Fetching the bytes behind an http(s) URL, with a time limit and a size limit."""

import http.client
import urllib.error
import urllib.request

from imaginairy.errors import ImageDownloadError, InvalidInputError

DEFAULT_TIMEOUT_SECONDS = 30.0
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


def fetch_url_bytes(url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The body of an http(s) GET of `url`.

    Raises ImageDownloadError naming the URL on a bad scheme, an HTTP error status, a network error,
    a timeout, or a body longer than `max_bytes`.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise ImageDownloadError(f"Cannot download {url}: only http:// and https:// URLs are supported.")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared_length = response.headers.get("Content-Length")
            if declared_length and declared_length.isdigit() and int(declared_length) > max_bytes:
                raise _too_large(url, max_bytes)
            return _read_limited(response, url, max_bytes)
    except urllib.error.HTTPError as e:
        raise ImageDownloadError(f"Cannot download {url}: HTTP {e.code} {e.reason}.") from e
    except urllib.error.URLError as e:
        raise ImageDownloadError(f"Cannot download {url}: {_describe_reason(e.reason, timeout)}.") from e
    except TimeoutError as e:
        raise ImageDownloadError(f"Cannot download {url}: no response within {timeout:g} seconds.") from e
    except OSError as e:
        raise ImageDownloadError(f"Cannot download {url}: {e.strerror or e}.") from e
    except http.client.HTTPException as e:
        raise ImageDownloadError(f"Cannot download {url}: broken HTTP response ({type(e).__name__}).") from e


def _read_limited(response, url: str, max_bytes: int) -> bytes:
    chunks = []
    total = 0
    while chunk := response.read(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(url, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(url: str, max_bytes: int) -> ImageDownloadError:
    return ImageDownloadError(f"Cannot download {url}: it is larger than the {max_bytes} byte limit.")


def _describe_reason(reason, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no response within {timeout:g} seconds"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)
