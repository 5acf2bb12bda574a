"""Side-by-side benchmark of imaginairy against Hugging Face diffusers, on the same random SD-1.5-sized weights.

Usage (from the repository root, with the project venv):

    .venv/bin/python scripts/bench.py                          # everything; about 30 min on a 2-core CPU
    .venv/bin/python scripts/bench.py --only unet --repeats 3  # one UNet CFG step, fp32 and bf16
    .venv/bin/python scripts/bench.py --only txt2img --steps 5 --precisions bf16
    .venv/bin/python scripts/bench.py --only startup --only load --only vae2048
    .venv/bin/python scripts/bench.py --workdir /tmp/bench     # keep (and reuse) the generated weights

Parts (`--only`, repeatable; default all):
- unet:    one UNet call at 512x512 with classifier-free guidance: the unconditional and conditional outputs of one
           latent, called the way each library's sampler calls it (diffusers stacks the latent twice; ours passes
           it once and the UNet shares the layers before the first cross-attention).
- txt2img: a whole txt2img (DDIM, `--steps` steps, guidance 7.5, VAE decode) from the same text embeddings and
           initial noise on both sides; the text encoder is left out (it is the same transformers model on both).
- startup: wall time of `imagine --help`.
- load:    our load of the saved SD-1.5-sized .safetensors checkpoint, against reading the file's bytes.
- vae2048: peak memory of our VAE decode of a 2048x2048 image (decoded in tiles).
- lora:    SD-1.5-sized LoRAs in the kohya layout merged into our fp32 model and taken out again (wall time, median
           of --repeats) and peak memory over the plain model: two LoRAs on every transformer and text-encoder linear
           (ranks 32 and 16, kohya's default network), and one of them with a LoCon (rank 32, also every ResBlock 3x3
           convolution: nearly all the UNet's weights); one UNet CFG step with and without the first pair.
- kernels: our CPU linear and attention against PyTorch's F.linear and F.scaled_dot_product_attention (what
           diffusers calls) at the shapes of one SD-1.5 CFG step at 512x512, random inputs, min of 5 calls.

How: the script builds our LatentDiffusion at the full sd-v1.yaml size with seeded random weights (std 1/sqrt(fan
in), so activations stay in a realistic range), saves it as one CompVis-layout .safetensors file, and converts it with
diffusers' own single-file converters into diffusers' UNet and VAE folders. Every configuration (implementation x
precision) then runs in its own worker process, so its peak resident memory (VmHWM, which includes the model) is
its own. The workers of one precision are alive together and called in turn, round after round; each figure is the
median over `--repeats` rounds (after one untimed warm-up call), so load from other processes on the machine hits
both sides alike. Precisions: ours "fp32" / "bf16" (bf16 weights, channels_last); diffusers "fp32", "bf16-autocast"
(fp32 weights under torch.autocast, its usual CPU recipe) and "bf16" (bf16 weights). Ratios compare ours with the
faster diffusers variant. "max |diff|" is the largest absolute difference between our output and diffusers' (UNet
output; image pixels in [0, 1]).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
PARTS = ("unet", "txt2img", "startup", "load", "vae2048", "kernels", "lora")
WORKERS = {
    "fp32": [("ours", "fp32"), ("diffusers", "fp32")],
    "bf16": [("ours", "bf16"), ("diffusers", "bf16-autocast"), ("diffusers", "bf16")],
}
GUIDANCE = 7.5
TIMESTEP = 500.0


# ---------------------------------------------------------------- weights


def random_checkpoint(workdir: Path) -> Path:
    """Our SD-1.5-sized model with seeded random weights, saved once as `sd15-random.safetensors` (+ its yaml)."""
    import shutil

    import torch

    from imaginairy.models.loading import load_model_config
    from imaginairy.models.registry import CONFIGS_DIR
    from imaginairy.models.weights import save_state_dict
    from imaginairy.modules.diffusion import build_latent_diffusion

    path = workdir / "sd15-random.safetensors"
    if path.exists():
        return path
    config = load_model_config(CONFIGS_DIR / "sd-v1.yaml")
    with torch.device("meta"):
        model = build_latent_diffusion(config)
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if tensor.ndim >= 2:
            fan_in = math.prod(tensor.shape[1:]) if "embedding" not in name else 1
            value = torch.randn(tensor.shape, generator=generator) / math.sqrt(fan_in)
        elif name.endswith("weight") and "norm" in name:
            value = 1 + 0.1 * torch.randn(tensor.shape, generator=generator)
        else:
            value = 0.02 * torch.randn(tensor.shape, generator=generator)
        state_dict[name] = value
    save_state_dict(state_dict, path)
    shutil.copy(CONFIGS_DIR / "sd-v1.yaml", path.with_suffix(".yaml"))
    return path


def diffusers_folders(checkpoint: Path) -> Path:
    """diffusers' UNet and VAE converted from the checkpoint by diffusers' single-file converters, saved as folders."""
    import torch
    import yaml
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as convert

    from imaginairy.models.weights import load_state_dict

    folder = checkpoint.parent / "diffusers"
    if (folder / "vae").exists():
        return folder
    state_dict = load_state_dict(checkpoint)
    original_config = yaml.safe_load(checkpoint.with_suffix(".yaml").read_text())
    converters = {
        "unet": (
            UNet2DConditionModel, convert.create_unet_diffusers_config_from_ldm, convert.convert_ldm_unet_checkpoint
        ),
        "vae": (AutoencoderKL, convert.create_vae_diffusers_config_from_ldm, convert.convert_ldm_vae_checkpoint),
    }
    for name, (model_class, make_config, convert_weights) in converters.items():  # "vae" last: it marks "done"
        config = make_config(original_config, state_dict)
        with torch.device("meta"):
            model = model_class(**config)
        model.load_state_dict(convert_weights(state_dict, config), assign=True)
        model.save_pretrained(folder / name)
        del model
    return folder


def shared_inputs(workdir: Path, size: int) -> Path:
    """Text embeddings (cond, uncond) and the initial noise both sides start from."""
    import torch

    path = workdir / f"inputs-{size}.pt"
    if not path.exists():
        generator = torch.Generator().manual_seed(1)
        torch.save(
            {
                "cond": torch.randn(1, 77, 768, generator=generator),
                "uncond": torch.randn(1, 77, 768, generator=generator),
                "noise": torch.randn(1, 4, size // 8, size // 8, generator=generator),
            },
            path,
        )
    return path


# ---------------------------------------------------------------- worker side


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss would also carry the
    parent's peak at fork time (the parent may have just built the 4 GB checkpoint)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


class OurRunner:
    def __init__(self, workdir: Path, precision: str):
        import torch

        from imaginairy.models.loading import load_diffusion_model
        from imaginairy.models.registry import ModelSpec

        checkpoint = workdir / "sd15-random.safetensors"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        spec = ModelSpec("bench", str(checkpoint), checkpoint.with_suffix(".yaml"))
        self.model = load_diffusion_model(spec, dtype=dtype)

    def unet(self, latent, t, context):
        from imaginairy.models.runtime import unet_function

        return unet_function(self.model)(latent, t, context)

    def txt2img(self, inputs: dict, steps: int):
        import torch

        from imaginairy.models.runtime import model_dtype, unet_function
        from imaginairy.samplers import NoiseSchedule, sample

        settings = self.model.settings
        schedule = NoiseSchedule(settings.linear_start, settings.linear_end, settings.num_timesteps)
        latent = sample(
            "ddim", unet_function(self.model), schedule, noise=inputs["noise"], steps=steps, cond=inputs["cond"],
            uncond=inputs["uncond"], guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        pixels = self.model.decode_latent(latent.to(model_dtype(self.model)))
        return (pixels.float() / 2 + 0.5).clamp(0, 1)


class DiffusersRunner:
    def __init__(self, workdir: Path, precision: str):
        import contextlib

        import torch
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

        folder = workdir / "diffusers"
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=self.dtype).eval()
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=self.dtype).eval()
        scheduler = DDIMScheduler(**SD_SCHEDULE, steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                                  timestep_spacing="leading")  # fmt: skip
        self.pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
        self.pipe.set_progress_bar_config(disable=True)
        autocast = precision == "bf16-autocast"
        self.context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

    def unet(self, latent, t, context):
        import torch

        x, t = torch.cat([latent] * 2).to(self.dtype), torch.cat([t] * 2)
        with self.context():
            return self.pipe.unet(x, t, encoder_hidden_states=context.to(self.dtype)).sample.float()

    def txt2img(self, inputs: dict, steps: int):
        with self.context():
            return self.pipe(
                prompt_embeds=inputs["cond"].to(self.dtype), negative_prompt_embeds=inputs["uncond"].to(self.dtype),
                latents=inputs["noise"].to(self.dtype), num_inference_steps=steps, guidance_scale=GUIDANCE,
                output_type="pt", height=inputs["noise"].shape[-2] * 8, width=inputs["noise"].shape[-1] * 8,
            ).images.float()  # fmt: skip


def worker(spec: dict) -> None:
    """Serve timing requests on stdin ("unet" / "txt2img" / "exit"), one JSON line of results per request."""
    import torch

    workdir = Path(spec["workdir"])
    runner_class = OurRunner if spec["impl"] == "ours" else DiffusersRunner
    started = time.perf_counter()
    runner = runner_class(workdir, spec["precision"])
    load_seconds = time.perf_counter() - started
    inputs = torch.load(workdir / f"inputs-{spec['size']}.pt")
    latent = inputs["noise"]
    t = torch.full((1,), TIMESTEP)
    context = torch.cat([inputs["uncond"], inputs["cond"]])
    print(json.dumps({"ready": True, "load_seconds": load_seconds}), flush=True)
    for line in sys.stdin:
        task = line.strip()
        if task == "exit":
            break
        with torch.inference_mode():
            started = time.perf_counter()
            output = runner.unet(latent, t, context) if task == "unet" else runner.txt2img(inputs, spec["steps"])
            seconds = time.perf_counter() - started
        torch.save(output, workdir / f"out-{spec['name']}-{task}.pt")
        peak_mb = peak_rss_mb()
        print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}), flush=True)


def load_worker(spec: dict) -> None:
    """Time our checkpoint load (and touching every parameter, since a memory-mapped load reads lazily)."""
    import torch

    from imaginairy.models.loading import load_diffusion_model
    from imaginairy.models.registry import ModelSpec

    checkpoint = Path(spec["workdir"]) / "sd15-random.safetensors"
    started = time.perf_counter()
    model = load_diffusion_model(ModelSpec("bench", str(checkpoint), checkpoint.with_suffix(".yaml")))
    load_seconds = time.perf_counter() - started
    with torch.inference_mode():
        total = sum(float(p.sum()) for p in model.parameters())
    touched_seconds = time.perf_counter() - started
    peak_mb = peak_rss_mb()
    print(json.dumps({"load": load_seconds, "load_and_touch": touched_seconds, "peak_mb": peak_mb, "sum": total}))


def read_file_worker(spec: dict) -> None:
    """Time reading the checkpoint's bytes into memory (the floor any loader is compared with)."""
    checkpoint = Path(spec["workdir"]) / "sd15-random.safetensors"
    started = time.perf_counter()
    buffer = bytearray(checkpoint.stat().st_size)
    with checkpoint.open("rb", buffering=0) as file:
        file.readinto(buffer)
    print(json.dumps({"read": time.perf_counter() - started}))


def vae_worker(spec: dict) -> None:
    """Decode a 2048x2048 image's latent with our VAE (in tiles, as the pipeline does at that size); peak memory."""
    import torch

    from imaginairy.models.loading import load_diffusion_model
    from imaginairy.models.registry import ModelSpec

    checkpoint = Path(spec["workdir"]) / "sd15-random.safetensors"
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else torch.float32
    model = load_diffusion_model(ModelSpec("bench", str(checkpoint), checkpoint.with_suffix(".yaml")), dtype=dtype)
    del model.model, model.cond_stage_model  # only the VAE is measured
    latent = torch.randn(1, 4, 256, 256, generator=torch.Generator().manual_seed(0), dtype=dtype)
    started = time.perf_counter()
    with torch.inference_mode():
        pixels = model.decode_latent(latent, tiled=True)
    seconds = time.perf_counter() - started
    peak_mb = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "shape": list(pixels.shape)}))


# (tokens, in, out) of the transformer projections at 64x64, 32x32 and 16x16 latents (CFG batch 2 x tokens).
LINEAR_SHAPES = [(8192, 320, 320), (8192, 320, 2560), (8192, 1280, 320), (2048, 640, 640), (2048, 640, 5120),
                 (2048, 2560, 640), (512, 1280, 1280), (512, 1280, 10240), (512, 5120, 1280)]  # fmt: skip
# (tokens, keys, heads, head size): self-attention at the three resolutions, cross-attention at the first.
ATTENTION_SHAPES = [(4096, 4096, 8, 40), (1024, 1024, 8, 80), (256, 256, 8, 160), (4096, 77, 8, 40)]


def kernels_worker(spec: dict) -> None:
    """Time our linear / attention against PyTorch's at SD shapes, per dtype; max |difference| of the outputs."""
    import torch
    import torch.nn.functional as F

    from imaginairy.modules.attention import attention
    from imaginairy.modules.layers import linear

    def fastest(function, *inputs) -> float:
        function(*inputs)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            function(*inputs)
            times.append(time.perf_counter() - started)
        return min(times)

    generator = torch.Generator().manual_seed(0)
    rows = []
    for precision in spec["precisions"]:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        for tokens, features_in, features_out in LINEAR_SHAPES:
            x = torch.randn(tokens, features_in, generator=generator).to(dtype)
            weight = (torch.randn(features_out, features_in, generator=generator) / features_in**0.5).to(dtype)
            rows.append({
                "kernel": f"linear {tokens}x{features_in}->{features_out}", "precision": precision,
                "ours_s": fastest(linear, x, weight), "torch_s": fastest(F.linear, x, weight),
                "max_abs_diff": float((linear(x, weight).float() - F.linear(x, weight).float()).abs().max()),
            })  # fmt: skip
        for tokens, keys, heads, head_size in ATTENTION_SHAPES:
            q, k, v = (torch.randn(2, n, heads * head_size, generator=generator).to(dtype).unflatten(-1, (heads, -1))
                       .transpose(1, 2) for n in (tokens, keys, keys))  # fmt: skip
            rows.append({
                "kernel": f"attention {tokens}x{keys} keys, {heads}x{head_size}", "precision": precision,
                "ours_s": fastest(attention, q, k, v), "torch_s": fastest(F.scaled_dot_product_attention, q, k, v),
                "max_abs_diff": float((attention(q, k, v).float() - F.scaled_dot_product_attention(q, k, v).float())
                                      .abs().max()),
            })  # fmt: skip
    print(json.dumps(rows))


def random_loras(workdir: Path, model) -> list[Path]:
    """Two kohya-layout LoRAs for the model (see the `lora` part), seeded, saved once."""
    import torch
    from torch import nn

    from imaginairy.models.lora import lora_targets
    from imaginairy.models.weights import save_state_dict

    files = {"lora-attention.safetensors": (32, False), "lora-attention-b.safetensors": (16, False),
             "lora-locon.safetensors": (32, True)}  # fmt: skip
    paths = [workdir / name for name in files]
    if all(p.exists() for p in paths):
        return paths
    generator = torch.Generator().manual_seed(5)
    kohya = {name: t for name, t in lora_targets(model).items() if name.startswith(("lora_unet_", "lora_te_"))}
    for path, (rank, with_convolutions) in zip(paths, files.values()):
        state_dict, seen = {}, set()
        for name, target in kohya.items():
            convolution = isinstance(target.module, nn.Conv2d) and target.module.kernel_size != (1, 1)
            attention_or_text = "attentions" in name or name.startswith("lora_te_")
            wanted = attention_or_text or (convolution and with_convolutions)
            if not wanted or id(target.module) in seen:
                continue  # (a layer has a diffusers and an sgm name)
            seen.add(id(target.module))
            out_features, in_features, *kernel = target.shape
            down_shape = (rank, in_features, *kernel)
            up_shape = (out_features, rank, *([1] * len(kernel)))
            state_dict[f"{name}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * 0.01
            state_dict[f"{name}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.01
            state_dict[f"{name}.alpha"] = torch.tensor(float(rank // 2))
        save_state_dict(state_dict, path)
    return paths


def lora_worker(spec: dict) -> None:
    """Time merging and removing two LoRAs; the UNet step with and without them; peak memory."""
    import torch

    from imaginairy.models.lora import applied_loras, lora_layers_for_model

    workdir = Path(spec["workdir"])
    runner = OurRunner(workdir, "fp32")
    paths = random_loras(workdir, runner.model)
    inputs = torch.load(workdir / f"inputs-{spec['size']}.pt")
    latent, t = inputs["noise"], torch.full((1,), TIMESTEP)
    context = torch.cat([inputs["uncond"], inputs["cond"]])
    with torch.inference_mode():
        runner.unet(latent, t, context)  # warm-up
    base_peak = peak_rss_mb()
    merge, plain_steps, lora_steps = [], [], []
    for _ in range(spec["repeats"]):
        with torch.inference_mode():
            started = time.perf_counter()
            runner.unet(latent, t, context)
            plain_steps.append(time.perf_counter() - started)
        started = time.perf_counter()
        with applied_loras(runner.model, [(paths[0], 0.8), (paths[1], 0.5)]):
            applied = time.perf_counter()
            with torch.inference_mode():
                runner.unet(latent, t, context)
                lora_steps.append(time.perf_counter() - applied)
            removing = time.perf_counter()
        merge.append(applied - started + time.perf_counter() - removing)
    pair_peak = peak_rss_mb()
    locon = []
    for _ in range(spec["repeats"]):
        started = time.perf_counter()
        with applied_loras(runner.model, [(paths[0], 0.8), (paths[2], 0.5)]):
            pass
        locon.append(time.perf_counter() - started)
    touched = {id(target.module) for path in paths[:2] for target, _, _ in lora_layers_for_model(runner.model, path)}
    touched_mb = sum(m.weight.numel() * 4 for m in runner.model.modules() if id(m) in touched) / 2**20
    print(json.dumps({"apply_and_remove_s": statistics.median(merge), "unet_s": statistics.median(plain_steps),
                      "unet_with_loras_s": statistics.median(lora_steps), "peak_rise_mb": pair_peak - base_peak,
                      "touched_mb": touched_mb, "lora_mb": sum(p.stat().st_size for p in paths[:2]) / 2**20,
                      "locon_apply_and_remove_s": statistics.median(locon),
                      "locon_peak_rise_mb": peak_rss_mb() - base_peak}))  # fmt: skip


WORKER_FUNCTIONS = {
    "serve": worker, "load": load_worker, "read": read_file_worker, "vae": vae_worker, "kernels": kernels_worker,
    "lora": lora_worker,
}  # fmt: skip


# ---------------------------------------------------------------- parent side


def start_worker(spec: dict) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, __file__, "--worker", json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, cwd=REPO,
    )  # fmt: skip
    reply = json.loads(process.stdout.readline())
    spec["load_seconds"] = reply["load_seconds"]
    return process


def request(process: subprocess.Popen, task: str) -> dict:
    process.stdin.write(task + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"benchmark worker died during {task}")
    return json.loads(line)


def run_one_shot(kind: str, spec: dict) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps({**spec, "kind": kind})], capture_output=True, text=True,
        cwd=REPO, check=True,
    )  # fmt: skip
    return json.loads(output.stdout.strip().splitlines()[-1])


def compare_tasks(args, workdir: Path, precision: str, tasks: list[str]) -> list[dict]:
    """Start the workers of one precision, time each task round-robin `args.repeats` times after a warm-up."""
    import torch

    specs = [
        {"name": f"{impl}-{variant}", "impl": impl, "precision": variant, "workdir": str(workdir), "size": args.size,
         "steps": args.steps}
        for impl, variant in WORKERS[precision]
    ]  # fmt: skip
    processes = [start_worker(spec) for spec in specs]
    rows = []
    try:
        for task in tasks:
            times = {spec["name"]: [] for spec in specs}
            peaks = {}
            # A warm-up round first, unless an earlier task already ran the same UNet shapes in these workers.
            warm_up = task == tasks[0]
            repeats = args.repeats if task == "unet" else args.txt2img_repeats
            for round_index in range(repeats + warm_up):
                for spec, process in zip(specs, processes):
                    reply = request(process, task)
                    if round_index or not warm_up:
                        times[spec["name"]].append(reply["seconds"])
                    peaks[spec["name"]] = reply["peak_mb"]
                    print(f"  {task} {spec['name']:<24} round {round_index}: {reply['seconds']:7.2f} s", flush=True)
            outputs = {spec["name"]: torch.load(workdir / f"out-{spec['name']}-{task}.pt") for spec in specs}
            ours = specs[0]["name"]
            for spec in specs:
                name = spec["name"]
                rows.append({
                    "task": task, "precision": precision, "config": name, "median_s": statistics.median(times[name]),
                    "times": times[name], "peak_mb": peaks[name], "load_s": spec["load_seconds"],
                    "max_abs_diff": float((outputs[name] - outputs[ours]).abs().max()),
                })  # fmt: skip
    finally:
        for process in processes:
            process.stdin.write("exit\n")
            process.stdin.close()
            process.wait()
    return rows


def startup_seconds(repeats: int) -> float:
    imagine = Path(sys.executable).parent / "imagine"
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        subprocess.run([str(imagine), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def print_comparison(rows: list[dict]) -> None:
    print("\n| task | precision | config | median s | ours / this | peak RSS MB | max abs diff vs ours |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        ours = next(r for r in rows if r["task"] == row["task"] and r["precision"] == row["precision"])
        ratio = ours["median_s"] / row["median_s"]
        print(
            f"| {row['task']} | {row['precision']} | {row['config']} | {row['median_s']:.2f} | {ratio:.2f} | "
            f"{row['peak_mb']:.0f} | {row['max_abs_diff']:.2e} |"
        )
    tasks = {row["task"] for row in rows}
    for task in sorted(tasks):
        fp32 = [r for r in rows if r["task"] == task and r["config"] == "ours-fp32"]
        bf16 = [r for r in rows if r["task"] == task and r["config"] == "ours-bf16"]
        if fp32 and bf16:
            print(f"{task}: ours bf16 is {fp32[0]['median_s'] / bf16[0]['median_s']:.2f}x faster than ours fp32")
        for precision in ("fp32", "bf16"):
            these = [r for r in rows if r["task"] == task and r["precision"] == precision]
            if these:
                fastest = min(these[1:], key=lambda r: r["median_s"])
                print(f"{task} {precision}: ours / fastest diffusers ({fastest['config']}) = "
                      f"{these[0]['median_s'] / fastest['median_s']:.2f}")  # fmt: skip


def print_kernels(rows: list[dict]) -> None:
    print("\n| kernel | precision | ours ms | torch ms | ours / torch | max abs diff |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['kernel']} | {row['precision']} | {row['ours_s'] * 1000:.1f} | {row['torch_s'] * 1000:.1f} | "
              f"{row['ours_s'] / row['torch_s']:.2f} | {row['max_abs_diff']:.1e} |")  # fmt: skip
    for precision in sorted({row["precision"] for row in rows}):
        for kind in ("linear", "attention"):
            these = [row for row in rows if row["precision"] == precision and row["kernel"].startswith(kind)]
            ours, theirs = sum(row["ours_s"] for row in these), sum(row["torch_s"] for row in these)
            print(f"{kind} {precision}, all shapes: ours {ours * 1000:.0f} ms, torch {theirs * 1000:.0f} ms "
                  f"({ours / theirs:.2f}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--steps", type=int, default=20, help="txt2img sampler steps")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per task (after one warm-up round)")
    parser.add_argument(
        "--txt2img-repeats", type=int, default=1, help="timed rounds of txt2img (no warm-up after unet)"
    )
    parser.add_argument("--workdir", type=Path, help="where the random weights are kept (default: a temp dir)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        WORKER_FUNCTIONS[spec.get("kind", "serve")](spec)
        return
    parts = args.only or list(PARTS)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imaginairy-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir {workdir}; torch threads {os.cpu_count()} cpus; load average {os.getloadavg()}", flush=True)
    results = {}
    if "startup" in parts:
        results["startup_s"] = startup_seconds(args.repeats)
        print(f"imagine --help: {results['startup_s']:.3f} s (median of {args.repeats})", flush=True)
    if "kernels" in parts:
        results["kernels"] = run_one_shot("kernels", {"precisions": args.precisions.split(",")})
        print_kernels(results["kernels"])
    if not set(parts) - {"startup", "kernels"}:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
        return
    started = time.perf_counter()
    checkpoint = random_checkpoint(workdir)
    print(f"random SD-1.5 checkpoint {checkpoint} ({checkpoint.stat().st_size / 2**30:.2f} GiB) ready in "
          f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    if "load" in parts:
        spec = {"workdir": str(workdir)}
        run_one_shot("read", spec)  # warm the page cache, so neither side pays for the disk
        reads, loads = [], []
        for _ in range(args.repeats):
            reads.append(run_one_shot("read", spec)["read"])
            loads.append(run_one_shot("load", spec))
        read_s = statistics.median(reads)
        load_s = statistics.median(r["load"] for r in loads)
        touch_s = statistics.median(r["load_and_touch"] for r in loads)
        results["load"] = {"read_s": read_s, "load_s": load_s, "load_and_touch_s": touch_s,
                           "peak_mb": max(r["peak_mb"] for r in loads)}  # fmt: skip
        print(f"checkpoint: read {read_s:.2f} s; our load {load_s:.2f} s ({load_s / read_s:.2f}x); load + touching "
              f"every parameter {touch_s:.2f} s ({touch_s / read_s:.2f}x)", flush=True)  # fmt: skip
    tasks = [task for task in ("unet", "txt2img") if task in parts]
    if tasks:
        diffusers_folders(checkpoint)
        shared_inputs(workdir, args.size)
        rows = []
        for precision in args.precisions.split(","):
            rows += compare_tasks(args, workdir, precision, tasks)
        results["rows"] = rows
        print_comparison(rows)
    if "lora" in parts:
        shared_inputs(workdir, args.size)
        lora = results["lora"] = run_one_shot("lora", {"workdir": str(workdir), "size": args.size,
                                                       "repeats": args.repeats})  # fmt: skip
        print(f"two LoRAs ({lora['lora_mb']:.0f} MB, touching {lora['touched_mb']:.0f} MB of weights): apply + remove "
              f"{lora['apply_and_remove_s']:.2f} s, peak RSS +{lora['peak_rise_mb']:.0f} MB; UNet step "
              f"{lora['unet_s']:.2f} s plain, {lora['unet_with_loras_s']:.2f} s with them "
              f"({lora['unet_with_loras_s'] / lora['unet_s']:.2f}x); with a LoCon instead: apply + remove "
              f"{lora['locon_apply_and_remove_s']:.2f} s, peak RSS +{lora['locon_peak_rise_mb']:.0f} MB",
              flush=True)  # fmt: skip
    if "vae2048" in parts:
        for precision in args.precisions.split(","):
            vae = run_one_shot("vae", {"workdir": str(workdir), "precision": precision})
            results[f"vae2048_{precision}"] = vae
            print(f"2048x2048 VAE decode ({precision}, tiled): {vae['seconds']:.1f} s, "
                  f"peak RSS {vae['peak_mb']:.0f} MB",
                  flush=True)  # fmt: skip
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results in {workdir / 'results.json'}")


if __name__ == "__main__":
    main()
