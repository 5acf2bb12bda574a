"""The HTTP API: AUTOMATIC1111's `/sdapi/v1` routes, our `/v1/jobs` with Server-Sent Events, and the web page."""
