"""The `aimg server` command: the Stability-AI gRPC API, served from local models."""

from __future__ import annotations

import click

from imaginairy.cli.errors import reported_errors
from imaginairy.server.defaults import DEFAULT_HOST, DEFAULT_MAX_QUEUE, DEFAULT_PORT, TOKEN_ENV, VRAM_MODES


@click.command("server", context_settings={"help_option_names": ["--help"]})
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to listen on; 0.0.0.0 makes the server reachable from other machines.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on.")
@click.option("--engines-config", type=click.Path(dir_okay=False, exists=True),
              help="YAML file mapping engine ids to models [default: the one in imaginairy/configs/engines.yaml].")
@click.option("--access-token", envvar=TOKEN_ENV, show_envvar=True,
              help="Require `authorization: Bearer TOKEN` on every call.")
@click.option("--max-queue", type=click.IntRange(min=0), default=DEFAULT_MAX_QUEUE, show_default=True,
              help="Requests that may wait while one generates; more are refused with RESOURCE_EXHAUSTED.")
@click.option("--vram-mode", type=click.Choice(VRAM_MODES), default="high", show_default=True,
              help="high: models stay on the device; mid: half precision on a GPU; low: also only the running submodel on the device.")
@click.option("--device", help="Torch device to generate on, e.g. cuda:1 or cpu [default: the best available].")
@click.option("--no-metadata", is_flag=True, help="Do not embed the generation settings in the PNGs sent back.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
def server_cmd(host, port, engines_config, access_token, max_queue, vram_mode, device, no_metadata, log_level):
    """Serve the Stability-AI gRPC generation API (stability-sdk clients work unchanged) until Ctrl-C.

    \b
    aimg server --port 50051
    python -c "from stability_sdk.client import StabilityInference as S; \\
      [print(a) for a in S('127.0.0.1:50051', engine='stable-diffusion-v1-5').generate('a dog')]"
    """
    from imaginairy.cli.imagine import configure_logging
    from imaginairy.utils.dependency_noise import quiet_dependency_warnings

    quiet_dependency_warnings()
    configure_logging(log_level)
    with reported_errors():
        from imaginairy.server.app import ServerConfig, serve

        serve(ServerConfig(
            host=host,
            port=port,
            engines_config=engines_config,
            access_token=access_token or None,
            max_queue=max_queue,
            vram_mode=vram_mode,
            device=device,
            embed_metadata=not no_metadata,
        ))
