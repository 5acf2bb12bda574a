"""The `aimg server` command: the Stability-AI gRPC API and the HTTP API (A1111-compatible, jobs, web page)."""

from __future__ import annotations

import click

from imaginairy.cli.errors import reported_errors
from imaginairy.server.defaults import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PORT,
    DEFAULT_PREVIEW_EVERY,
    TOKEN_ENV,
    VRAM_MODES,
)


@click.command("server", context_settings={"help_option_names": ["--help"]})
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to listen on; 0.0.0.0 makes the server reachable from other machines.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port of the gRPC API.")
@click.option("--http-port", type=click.IntRange(0, 65535),
              help="Also serve the HTTP API (A1111's /sdapi/v1, /v1/jobs, docs at /docs) and the web page on this "
                   "port, e.g. 7860.")
@click.option("--no-grpc", is_flag=True, help="Serve HTTP only (with --http-port).")
@click.option("--api-auth", metavar="USER:PASSWORD", help="Require HTTP Basic credentials on every HTTP route.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let web pages from ORIGIN (e.g. https://example.org) call the HTTP API; repeatable. Default: none.")
@click.option("--outdir", type=click.Path(file_okay=False),
              help="Folder where HTTP jobs save their images; the web page's gallery shows it.")
@click.option("--models-dir", type=click.Path(file_okay=False),
              help="Folder with checkpoints/, loras/, embeddings/, vae/: <lora:NAME> and embedding names in prompts "
                   "resolve there, and /sdapi/v1/loras and /embeddings list it [default: $IMAGINAIRY_MODELS_DIR].")
@click.option("--max-body-mb", type=click.FloatRange(min=0.01), default=DEFAULT_MAX_BODY_BYTES / 2**20,
              show_default=True, help="Largest HTTP request body (base64 images are 4/3 of their files).")
@click.option("--preview-every", type=click.IntRange(min=0), default=DEFAULT_PREVIEW_EVERY, show_default=True,
              help="Sampler steps between two live previews over HTTP; 0: none.")
@click.option("--engines-config", type=click.Path(dir_okay=False, exists=True),
              help="YAML file mapping engine ids to models [default: the one in imaginairy/configs/engines.yaml].")
@click.option("--access-token", envvar=TOKEN_ENV, show_envvar=True,
              help="Require `authorization: Bearer TOKEN` on every call of both APIs (in a browser: any user name, "
                   "TOKEN as the password).")
@click.option("--max-queue", type=click.IntRange(min=0), default=DEFAULT_MAX_QUEUE, show_default=True,
              help="Requests that may wait while one generates; more are refused with RESOURCE_EXHAUSTED.")
@click.option(
    "--vram-mode",
    type=click.Choice(VRAM_MODES),
    default="high",
    show_default=True,
    help="high: models stay on the device; mid: half precision on a GPU; low: also only the running submodel on "
    "the device.",
)
@click.option("--device", help="Torch device to generate on, e.g. cuda:1 or cpu [default: the best available].")
@click.option("--no-metadata", is_flag=True, help="Do not embed the generation settings in the PNGs sent back.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
def server_cmd(host, port, http_port, no_grpc, api_auth, cors_origins, outdir, models_dir, max_body_mb, preview_every,
               engines_config, access_token, max_queue, vram_mode, device, no_metadata, log_level):
    """Serve the Stability-AI gRPC generation API (stability-sdk clients work unchanged) and, with --http-port, the
    AUTOMATIC1111-compatible HTTP API and a web page, until Ctrl-C.

    \b
    aimg server --port 50051 --http-port 7860 --outdir outputs/server
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
            grpc=not no_grpc,
            http_port=http_port,
            api_auth=api_auth,
            cors_origins=cors_origins,
            outdir=outdir,
            models_dir=models_dir,
            max_body_bytes=int(max_body_mb * 2**20),
            preview_every=preview_every,
            engines_config=engines_config,
            access_token=access_token,
            max_queue=max_queue,
            vram_mode=vram_mode,
            device=device,
            embed_metadata=not no_metadata,
        ))
