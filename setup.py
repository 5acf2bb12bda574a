from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="imaginairy",
    version="0.1.0",
    description="AI imagined images. Pythonic generation of images with Stable Diffusion, on your own machine.",
    long_description=long_description,
    long_description_content_type="text/markdown",
    # not 3.13 yet: k-diffusion needs dctorch, which needs numpy<2, and numpy 1.x has no wheels for Python 3.13
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=("imaginairy", "imaginairy.*")),
    package_data={"imaginairy": ["configs/*.yaml", "server/web/*"]},
    include_package_data=True,
    entry_points={
        "console_scripts": [
            "imagine=imaginairy.cli.imagine:imagine_cmd",
            "aimg=imaginairy.cli.aimg:aimg",
        ],
    },
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "transformers>=4.56",
        "open-clip-torch>=2.20",
        "k-diffusion>=0.1.1",
        # k-diffusion imports pkg_resources, which setuptools 81 removed
        "setuptools<81",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "omegaconf>=2.3",
        "pyparsing>=3.0",
        "click>=8.1",
        "click-repl>=0.3",
        "grpcio>=1.48",
        "stability-sdk>=0.8.4",
        "protobuf>=4.21",
        "pillow>=10.1",
        # k-diffusion needs dctorch, which needs numpy<2: said here, at the top, so that pip picks numpy 1.x first
        # instead of backtracking through every scipy release (the pip bundled with Python 3.11 ends up compiling
        # an old scipy from source and fails)
        "numpy>=1.24,<2",
        "tqdm>=4.64",
        "spandrel>=0.4",
        "spandrel-extra-arches>=0.2",
        "facexlib>=0.3",
        # face alignment and paste-back (facexlib needs it too)
        "opencv-python>=4.8,<4.12",  # 4.12 and later need numpy>=2 (see numpy above)
        "psutil>=5.9",
        # the HTTP API and web page of `aimg server --http-port`
        "fastapi>=0.110",
        "uvicorn>=0.29",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-xdist>=3.3",
            "diffusers>=0.30",
            "peft>=0.13",  # diffusers needs it to load LoRAs (the LoRA parity reference)
            "scikit-image>=0.21",
            "hypothesis>=6.80",
            "ruff>=0.5",
            # a real A1111 API client, the HTTP client of the native API tests, and the browser driver of the page
            "webuiapi>=0.9.17",
            "httpx>=0.27",
            "selenium>=4.20",
            "openapi-spec-validator>=0.7",
        ],
    },
)
