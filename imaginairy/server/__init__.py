"""The Stability-AI gRPC generation API served from local models (`aimg server`)."""
