"""Bearer-token authentication, checked before any handler runs."""

from __future__ import annotations

import hmac

import grpc

from imaginairy.errors import InvalidInputError

AUTHORIZATION_KEY = "authorization"
BEARER_PREFIX = "Bearer "


def check_credentials_config(access_token: str | None, api_auth: str | None) -> None:
    """InvalidInputError for credentials that would open the server by mistake (an empty token) or are malformed."""
    if access_token is not None and not access_token.strip():
        raise InvalidInputError("The access token is empty, which would let everyone in; give a non-empty token "
                                "or none.")
    if api_auth is not None:
        user, colon, password = api_auth.partition(":")
        if not colon or not user or not password:
            raise InvalidInputError("--api-auth must be user:password, both non-empty.")


def is_authorized(metadata, token: str) -> bool:
    """Whether the call's metadata carries `authorization: Bearer <token>` (compared in constant time)."""
    expected = (BEARER_PREFIX + token).encode()
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION_KEY:
            given = value.encode() if isinstance(value, str) else value
            return hmac.compare_digest(given, expected)
    return False


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED, without running the method, to calls without the right bearer token."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("An empty access token would let everyone in; give a non-empty token or none.")
        self.token = token

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or is_authorized(handler_call_details.invocation_metadata, self.token):
            return handler
        return refusing_handler(handler)


def refusing_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that aborts every call with UNAUTHENTICATED."""

    def refuse(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "Missing or wrong access token: send the metadata `authorization: Bearer <token>`.")

    # No request deserializer: a refused call's body is never parsed.
    serializers = {"response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    return grpc.stream_stream_rpc_method_handler(refuse, **serializers)
