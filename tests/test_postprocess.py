"""Step 5 of the pipeline on the tiny models: safety check, upscaling and captions as imagine() runs them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from imaginairy import ImaginePrompt, imagine, imagine_image_files
from imaginairy.enhancers.upscale import REALESRGAN_X4PLUS_WEIGHTS
from imaginairy.errors import SafetyCheckUnavailableError
from imaginairy.models.cache import ModelCache
from imaginairy.models.weights import url_cache_path
from imaginairy.utils.metadata import read_metadata


@pytest.fixture(scope="module")
def cache():
    return ModelCache(max_bytes=2**30)


@pytest.fixture(scope="module")
def enhancer_dir(tmp_path_factory):
    from tiny_enhancers import make_tiny_blip, make_tiny_realesrgan, make_tiny_safety_checker

    root = tmp_path_factory.mktemp("tiny-enhancers")
    return {
        "realesrgan": make_tiny_realesrgan(root / "RealESRGAN_x4plus.pth"),
        "blip": make_tiny_blip(root / "blip"),
        "flagging_checker": make_tiny_safety_checker(root / "flags-all", concept_threshold=-1.5),
        "passing_checker": make_tiny_safety_checker(root / "flags-none", concept_threshold=1.5),
    }


def prompt(tiny_models, **kwargs):
    return ImaginePrompt("a dog", model=str(tiny_models["tiny-sd15"]), steps=2, seed=1, **kwargs)


def test_upscale_uses_the_cached_download_and_saves_both_images(tiny_models, cache, enhancer_dir, tmp_path):
    """The default RealESRGAN URL is resolved through the real download cache, seeded with the tiny weights."""
    cached = url_cache_path(REALESRGAN_X4PLUS_WEIGHTS)
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(enhancer_dir["realesrgan"], cached)
    paths = imagine_image_files([prompt(tiny_models, upscale=True)], tmp_path, model_cache=cache, device="cpu",
                                show_progress=False)
    generated = list((tmp_path / "generated").iterdir())
    upscaled = list((tmp_path / "upscaled").iterdir())
    assert len(generated) == 1 and paths == upscaled
    from PIL import Image

    assert Image.open(generated[0]).size == (64, 64)
    assert Image.open(upscaled[0]).size == (256, 256)
    assert read_metadata(upscaled[0])["upscale"] is True


def test_filter_mode_blurs_a_flagged_image_and_records_it(tiny_models, cache, enhancer_dir, monkeypatch):
    monkeypatch.setenv("IMAGINAIRY_SAFETY_CHECKER_MODEL", str(enhancer_dir["flagging_checker"]))
    plain = next(imagine(prompt(tiny_models, safety_mode="off"), model_cache=cache, device="cpu"))
    filtered = next(imagine(prompt(tiny_models, safety_mode="filter"), model_cache=cache, device="cpu"))
    assert filtered.metadata["safety"] == {"is_nsfw": True, "checked": True, "filtered": True}
    assert plain.metadata["safety"]["checked"] is False

    def roughness(image):
        return np.abs(np.diff(np.asarray(image, dtype=np.float32), axis=1)).mean()

    assert roughness(filtered.img) < roughness(plain.img) / 3


def test_classify_mode_flags_without_changing_the_image(tiny_models, cache, enhancer_dir, monkeypatch):
    monkeypatch.setenv("IMAGINAIRY_SAFETY_CHECKER_MODEL", str(enhancer_dir["flagging_checker"]))
    plain = next(imagine(prompt(tiny_models, safety_mode="off"), model_cache=cache, device="cpu"))
    flagged = next(imagine(prompt(tiny_models, safety_mode="classify"), model_cache=cache, device="cpu"))
    assert flagged.metadata["safety"] == {"is_nsfw": True, "checked": True, "filtered": False}
    assert flagged.img.tobytes() == plain.img.tobytes()
    monkeypatch.setenv("IMAGINAIRY_SAFETY_CHECKER_MODEL", str(enhancer_dir["passing_checker"]))
    passed = next(imagine(prompt(tiny_models, safety_mode="filter"), model_cache=cache, device="cpu"))
    assert passed.metadata["safety"] == {"is_nsfw": False, "checked": True, "filtered": False}
    assert passed.img.tobytes() == plain.img.tobytes()


def test_without_checker_weights_classify_records_no_check_and_filter_fails_before_generating(tiny_models, tmp_path):
    result = next(imagine(prompt(tiny_models, safety_mode="classify"), device="cpu",
                          model_cache=ModelCache(max_bytes=2**30)))
    assert result.metadata["safety"] == {"is_nsfw": None, "checked": False, "filtered": False}
    untouched_cache = ModelCache(max_bytes=2**30)
    with pytest.raises(SafetyCheckUnavailableError):
        imagine_image_files([prompt(tiny_models, safety_mode="filter")], tmp_path, model_cache=untouched_cache,
                            device="cpu")
    assert len(untouched_cache) == 0  # failed before any model was loaded
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_caption_is_stored_in_the_metadata(tiny_models, cache, enhancer_dir, monkeypatch):
    from imaginairy.enhancers.describe import generate_caption

    monkeypatch.setenv("IMAGINAIRY_BLIP_MODEL", str(enhancer_dir["blip"]))
    result = next(imagine(prompt(tiny_models, caption=True, safety_mode="off"), model_cache=cache, device="cpu"))
    assert isinstance(result.metadata["caption"], str)
    assert result.metadata["caption"] == generate_caption(result.img, device="cpu")


@pytest.mark.parametrize("step", ["upscale", "fix_faces", "caption"])
def test_missing_enhancer_weights_fail_before_any_generation(tiny_models, tmp_path, monkeypatch, step):
    from imaginairy.errors import WeightsUnavailableError

    monkeypatch.setenv("IMAGINAIRY_CACHE_DIR", str(tmp_path / "empty-cache"))  # other tests seed the shared one

    untouched_cache = ModelCache(max_bytes=2**30)
    with pytest.raises(WeightsUnavailableError):
        imagine_image_files([prompt(tiny_models, **{step: True})], tmp_path, model_cache=untouched_cache, device="cpu")
    assert len(untouched_cache) == 0
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_face_fixing_gets_the_prompts_fidelity_and_its_image_is_the_final_one(monkeypatch):
    from PIL import Image

    from imaginairy import pipeline
    from imaginairy.enhancers import face_fix
    from imaginairy.settings import Settings

    calls = []

    def recording_fix_faces(image, *, fidelity, device):
        calls.append((image, fidelity, device))
        return Image.new("RGB", image.size, "white")

    monkeypatch.setattr(face_fix, "fix_faces", recording_fix_faces)
    generated = Image.new("RGB", (64, 64), "red")
    settings = dict(fix_faces=True, fix_faces_fidelity=0.7, safety_mode="off")
    images, _ = pipeline.postprocess(generated, ImaginePrompt("x", **settings), "cpu", Settings())
    ((image, fidelity, device),) = calls
    assert image.tobytes() == generated.tobytes() and fidelity == 0.7 and device == "cpu"
    assert images["face_fixed"].getpixel((0, 0)) == (255, 255, 255)


def test_every_missing_file_of_a_run_is_named_in_one_error_with_its_local_copy_setting(tmp_path, monkeypatch):
    """Offline with nothing cached: the model, the upscaler, both face models, BLIP, CLIPSeg and the safety checker
    (mode filter) are all named at once, each with the setting that points at a local copy."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # caches other tests of this process did not fill
    monkeypatch.setenv("IMAGINAIRY_CACHE_DIR", str(tmp_path / "empty-cache"))
    from click.testing import CliRunner
    from PIL import Image

    monkeypatch.setenv("IMAGINAIRY_CACHE_DIR", str(tmp_path / "empty-cache"))  # other tests seed the shared one

    from imaginairy.cli.imagine import imagine_cmd

    Image.new("RGB", (64, 64)).save(tmp_path / "init.png")
    result = CliRunner().invoke(imagine_cmd, [
        "a dog", "--init-image", str(tmp_path / "init.png"), "--mask-prompt", "dog", "--fix-faces", "--upscale",
        "--caption", "--safety-mode", "filter", "--outdir", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "Error: 7 weights files this run needs cannot be had:" in result.output
    for setting in ("--model /path/to/sd-v1-5-inpainting.ckpt", "IMAGINAIRY_REALESRGAN_MODEL=",
                    "IMAGINAIRY_RETINAFACE_MODEL=", "IMAGINAIRY_CODEFORMER_MODEL=", "IMAGINAIRY_BLIP_MODEL=",
                    "IMAGINAIRY_CLIPSEG_MODEL=", "IMAGINAIRY_SAFETY_CHECKER_MODEL="):
        assert setting in result.output
    assert not (tmp_path / "out").exists()


def test_helper_weights_come_from_their_environment_variable(tmp_path, monkeypatch):
    from tiny_enhancers import make_tiny_realesrgan

    from imaginairy.enhancers.upscale import REALESRGAN, load_upscaler
    from imaginairy.errors import ModelNotFoundError

    path = make_tiny_realesrgan(tmp_path / "local-esrgan.pth")
    monkeypatch.setenv("IMAGINAIRY_REALESRGAN_MODEL", str(path))
    assert REALESRGAN.resolve() == path
    assert load_upscaler(device="cpu").architecture.id == "ESRGAN"
    monkeypatch.setenv("IMAGINAIRY_REALESRGAN_MODEL", str(tmp_path / "nope.pth"))
    with pytest.raises(
        ModelNotFoundError, match="RealESRGAN upscaler weights from IMAGINAIRY_REALESRGAN_MODEL: .*nope"
    ):
        REALESRGAN.resolve()


def test_an_images_files_share_one_number_across_the_kinds_folders(tiny_models, tmp_path, monkeypatch):
    from tiny_enhancers import make_tiny_realesrgan

    monkeypatch.setenv("IMAGINAIRY_REALESRGAN_MODEL", str(make_tiny_realesrgan(tmp_path / "esrgan.pth")))
    outdir = tmp_path / "out"
    (outdir / "upscaled").mkdir(parents=True)
    (outdir / "upscaled" / "000006_older.jpg").write_bytes(b"")  # e.g. from `aimg upscale` into the same folder
    prompts = [ImaginePrompt("a dog", model=str(tiny_models["tiny-sd15"]), steps=1, seed=1, upscale=True,
                             safety_mode="off")] * 2
    imagine_image_files(prompts, outdir, show_progress=False, device="cpu")
    names = sorted(p.relative_to(outdir).as_posix() for p in outdir.rglob("*.jpg") if p.stat().st_size)
    assert names == ["generated/000007_1_KDPMPP2M1_PS7.5_a_dog.jpg", "generated/000008_1_KDPMPP2M1_PS7.5_a_dog.jpg",
                     "upscaled/000007_1_KDPMPP2M1_PS7.5_a_dog_upscaled.jpg",
                     "upscaled/000008_1_KDPMPP2M1_PS7.5_a_dog_upscaled.jpg"]


def test_make_tiny_models_writes_every_helper_model_and_the_settings_that_find_them(tiny_models, tmp_path,
                                                                                     monkeypatch):
    """With helpers.env's settings, a run needing every helper model (offline, nothing cached) finds them all."""
    from make_tiny_models import HELPER_ENV_VARS, make_tiny_helpers
    from PIL import Image

    from imaginairy.api import fetch_weights_first
    from imaginairy.settings import Settings

    make_tiny_helpers(tmp_path / "helpers")
    settings = dict(line.split("=", 1) for line in (tmp_path / "helpers" / "helpers.env").read_text().splitlines())
    assert sorted(settings) == sorted(variable for variable, _ in HELPER_ENV_VARS.values())
    for variable, value in settings.items():
        monkeypatch.setenv(variable, value)
    Image.new("RGB", (64, 64)).save(tmp_path / "init.png")
    fetch_weights_first(
        [
            ImaginePrompt(
                "a dog",
                model=str(tiny_models["tiny-sd15"]),
                init_image=str(tmp_path / "init.png"),
                mask_prompt="dog",
                fix_faces=True,
                upscale=True,
                caption=True,
                safety_mode="filter",
            )
        ],
        Settings.from_environment(),
    )
