"""Text conditioning (chunks, emphasis, embeddings, clip skip) against independent computations.

The references are transformers' CLIPTextModel on the same random weights (loaded through diffusers' checkpoint
conversion) and diffusers' own textual-inversion loader and clip_skip. Where A1111 has no reference to run, the test
writes A1111's rules out itself: token ids from transformers' tokenizer, the chunk layout, and the emphasis formula
`z * w, then * mean(z) / mean(z * w)` per chunk (`modules/sd_emphasis.py`, EmphasisOriginal).

Everything runs in float64, so the tolerance (1e-10 on activations of order 1) leaves room for summation order only.
"""

import pickle

import pytest
import torch
from clip_reference import clip_tokenizer, reference_clip_text_model
from diffusers import StableDiffusionPipeline

from imaginairy.errors import EmbeddingError, InvalidInputError
from imaginairy.modules.text_encoders import CLIPTextEncoder, OpenCLIPTextEncoder
from imaginairy.modules.tokenizer import END_OF_TEXT, START_OF_TEXT
from imaginairy.prompts.conditioning import encode_conditioning
from imaginairy.schema import WeightedPrompt

TOLERANCE = {"rtol": 0, "atol": 1e-10}
TINY_CLIP = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)


def randomized(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module.double().eval()


@pytest.fixture(scope="module")
def encoder():
    return randomized(CLIPTextEncoder(**TINY_CLIP))


@pytest.fixture(scope="module")
def reference(encoder):
    checkpoint = {f"cond_stage_model.{key}": value for key, value in encoder.state_dict().items()}
    return reference_clip_text_model(checkpoint, **TINY_CLIP).double()


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-tokenizer")
    clip_tokenizer(folder)
    return folder


@pytest.fixture
def hf_tokenizer(tokenizer_folder):
    """A fresh tokenizer per test: diffusers' textual-inversion loader adds tokens to it."""
    return clip_tokenizer(tokenizer_folder)


def encode(encoder, prompt, negative="", **kwargs):
    with torch.inference_mode():
        return encode_conditioning(encoder, [WeightedPrompt(prompt)], [WeightedPrompt(negative)], **kwargs)


def a1111_chunk(reference, tokens, weights):
    """One chunk as A1111 computes it: [start, 75 tokens padded with end-of-text, end], emphasis, mean restored."""
    padding = 75 - len(tokens)
    ids = torch.tensor([[START_OF_TEXT, *tokens, *[END_OF_TEXT] * padding, END_OF_TEXT]])
    w = torch.tensor([1.0, *weights, *[1.0] * padding, 1.0], dtype=torch.float64)
    with torch.inference_mode():
        z = reference(input_ids=ids).last_hidden_state
    weighted = z * w[None, :, None]
    return weighted * (z.mean() / weighted.mean())


def test_long_prompt_with_emphasis_and_break_matches_a1111s_computation(encoder, reference, hf_tokenizer):
    prompt = "a (red:1.3) apple, " + " ".join(["tree"] * 80) + " BREAK [blue] sky"

    def ids(text):
        return hf_tokenizer(text, add_special_tokens=False).input_ids

    tokens = ids("a") + ids("red") + ids("apple, " + " ".join(["tree"] * 80))
    weights = [1.0, 1.3] + [1.0] * (len(tokens) - 2)
    assert len(tokens) == 84  # a, red, apple, ",", 80 trees: 75 + 9, the comma too far back to wrap
    expected = torch.cat([
        a1111_chunk(reference, tokens[:75], weights[:75]),
        a1111_chunk(reference, tokens[75:], weights[75:]),
        a1111_chunk(reference, ids("blue") + ids("sky"), [1 / 1.1, 1.0]),
    ], dim=1)

    text = encode(encoder, prompt)

    assert text.cond.shape == (1, 3 * 77, 32) and text.cond.dtype == torch.float32
    expected_empty = a1111_chunk(reference, [], [])
    # float32 result of a float64 encoder: compare at float32 resolution
    torch.testing.assert_close(text.cond.double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(text.uncond.double(), torch.cat([expected_empty] * 3, dim=1), rtol=0, atol=1e-5)


def test_emphasis_matches_in_float64(encoder, reference, hf_tokenizer):
    """The chunk encoding before the pipeline's float32 cast, at float64 resolution."""
    from imaginairy.prompts.chunks import prompt_chunks
    from imaginairy.prompts.conditioning import encode_chunks
    from imaginairy.prompts.syntax import parse_prompt_attention

    chunks = prompt_chunks(parse_prompt_attention("a ((cat)) on a [[mat]]"))
    with torch.inference_mode():
        hidden = encode_chunks(encoder, chunks)
    tokens = [hf_tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("a", "cat", "on", "a", "mat")]
    expected = a1111_chunk(reference, tokens, [1.0, 1.1 * 1.1, 1.0, 1.0, 1 / 1.1 / 1.1])
    assert hidden.dtype == torch.float64
    torch.testing.assert_close(hidden, expected, **TOLERANCE)


def test_encoder_token_embedding_path_matches_transformers_in_float64(encoder, reference):
    ids = torch.tensor([[START_OF_TEXT, 320, 2368, 1929, *[END_OF_TEXT] * 73]])
    with torch.inference_mode():
        ours = encoder.encode_token_embeddings(encoder.token_embedding(ids))
        outputs = reference(input_ids=ids, output_hidden_states=True)
        skipped = encoder.encode_token_embeddings(encoder.token_embedding(ids), clip_skip=2)
        penultimate = reference.final_layer_norm(outputs.hidden_states[-2])
    torch.testing.assert_close(ours, outputs.last_hidden_state, **TOLERANCE)
    torch.testing.assert_close(skipped, penultimate, **TOLERANCE)


def test_a_word_after_token_75_changes_the_conditioning(encoder):
    head = " ".join(["cat"] * 78)
    dog, red = encode(encoder, head + " dog").cond, encode(encoder, head + " red").cond
    assert dog.shape == red.shape == (1, 154, 32)
    torch.testing.assert_close(dog[:, :77], red[:, :77], rtol=0, atol=0)
    assert (dog[:, 77:] - red[:, 77:]).abs().max() > 1e-2


def test_negative_prompt_longer_than_prompt_pads_the_prompt_with_empty_chunks(encoder):
    long = " ".join(["cat"] * 160)  # 3 chunks
    text = encode(encoder, "dog", negative=long)
    short = encode(encoder, "dog").cond
    empty = encode(encoder, "").cond
    assert text.cond.shape == text.uncond.shape == (1, 3 * 77, 32)
    torch.testing.assert_close(text.cond, torch.cat([short, empty, empty], dim=1), rtol=0, atol=0)


def test_weighted_prompts_of_different_lengths_blend_after_padding(encoder):
    long = " ".join(["cat"] * 100)
    with torch.inference_mode():
        text = encode_conditioning(encoder, [WeightedPrompt(long, 3), WeightedPrompt("dog", 1)], [])
    padded_dog = torch.cat([encode(encoder, "dog").cond, encode(encoder, "").cond], dim=1)
    torch.testing.assert_close(text.cond, (3 * encode(encoder, long).cond + padded_dog) / 4, rtol=1e-6, atol=1e-6)


def test_plain_syntax_is_the_old_literal_encoding(encoder):
    prompt = "(a:1.5) [cat] BREAK " + " ".join(["dog"] * 90)
    with torch.inference_mode():
        old = encoder([prompt]).float()
    plain = encode(encoder, prompt, syntax="plain").cond
    torch.testing.assert_close(plain, old, rtol=0, atol=1e-6)
    assert (encode(encoder, prompt).cond[:, :77] - old).abs().max() > 1e-3  # a1111 reads the syntax


def test_sd2_chunks_pad_with_zero_after_end_of_text():
    encoder = randomized(OpenCLIPTextEncoder(width=32, layers=2, heads=4, output_dim=32))
    with torch.inference_mode():
        old = encoder(["a photo of a cat"]).float()
    torch.testing.assert_close(encode(encoder, "a photo of a cat").cond, old, rtol=0, atol=1e-6)


def test_sd2_long_prompt_chunks_pad_each_chunk_with_zero():
    """A1111's SD 2.x rule, per chunk: the padding after the first end-of-text is id 0 (OpenCLIP's), not
    end-of-text. The expected chunks are encoded by the encoder's id path, checked against diffusers elsewhere."""
    encoder = randomized(OpenCLIPTextEncoder(width=32, layers=2, heads=4, output_dim=32))
    cat = 2368
    ids = torch.tensor([
        [START_OF_TEXT, *[cat] * 75, END_OF_TEXT],
        [START_OF_TEXT, *[cat] * 5, END_OF_TEXT, *[0] * 70],
    ])
    with torch.inference_mode():
        expected = encoder.encode_tokens(ids).float()
    cond = encode(encoder, " ".join(["cat"] * 80)).cond
    torch.testing.assert_close(cond, torch.cat([expected[:1], expected[1:]], dim=1), rtol=0, atol=1e-6)


def diffusers_text_pipeline(reference, tokenizer):
    """StableDiffusionPipeline with only the text side, for encode_prompt. diffusers 0.42's clip_skip still reads
    `text_encoder.text_model.final_layer_norm`, which transformers 5 flattened away: an unregistered alias restores
    the old path (the reference itself is unchanged)."""
    object.__setattr__(reference, "text_model", reference)
    return StableDiffusionPipeline(vae=None, text_encoder=reference, tokenizer=tokenizer, unet=None, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize(("a1111_clip_skip", "diffusers_clip_skip"), [(2, 1), (3, 2)])
def test_clip_skip_matches_diffusers(encoder, reference, hf_tokenizer, a1111_clip_skip, diffusers_clip_skip):
    """diffusers counts the layers skipped (clip_skip=1: the penultimate layer); A1111's "Clip skip" counts from
    the last layer (1 = none, 2 = the penultimate), so ours is diffusers' + 1. diffusers applies it to the prompt
    only, A1111 to the negative prompt too: compare the prompt side."""
    pipe = diffusers_text_pipeline(reference, hf_tokenizer)
    with torch.inference_mode():
        theirs, _ = pipe.encode_prompt("a photo of a cat", "cpu", 1, False, clip_skip=diffusers_clip_skip)
    ours = encode(encoder, "a photo of a cat", clip_skip=a1111_clip_skip).cond
    torch.testing.assert_close(ours.double(), theirs, rtol=0, atol=1e-6)
    assert (ours - encode(encoder, "a photo of a cat").cond).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["tinycat", "tinystyle", "tinyneg"])  # 2, 3 and 1 vectors; three file layouts
def test_textual_inversion_matches_diffusers(encoder, reference, hf_tokenizer, tiny_embeddings, name):
    path = tiny_embeddings[name]
    pipe = diffusers_text_pipeline(reference, hf_tokenizer)
    pipe.load_textual_inversion(str(path), token=name)
    prompt, negative = f"a photo of {name}, blue", f"{name} blurry"
    with torch.inference_mode():
        theirs, theirs_negative = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
    text = encode(encoder, prompt, negative, embedding_paths=[path.parent])

    assert [embedding.name for embedding in text.embeddings] == [name]
    torch.testing.assert_close(text.cond.double(), theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(text.uncond.double(), theirs_negative, rtol=0, atol=1e-6)
    assert (text.cond - encode(encoder, prompt).cond).abs().max() > 1e-2  # the embedding did something


def test_embedding_names_match_case_insensitively_and_only_when_present(encoder, tiny_embeddings):
    folder = tiny_embeddings["tinycat"].parent
    assert [e.name for e in encode(encoder, "A TinyCat", embedding_paths=[folder]).embeddings] == ["tinycat"]
    assert encode(encoder, "a cat", embedding_paths=[folder]).embeddings == ()


# --- bad embedding files: one clear error each ---


def write_pt(path, state):
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        ("empty.pt", b"", "Embedding file is empty"),
        ("broken.pt", b"not a torch file", "Cannot read embedding .*broken.pt: not a torch tensor file"),
        ("broken.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", "Cannot read embedding .*corrupt"),
    ],
)
def test_unreadable_embedding_is_a_clear_error(encoder, tmp_path, file_name, content, message):
    (tmp_path / file_name).write_bytes(content)
    with pytest.raises(EmbeddingError, match=message):
        encode(encoder, f"a {file_name.split('.')[0]}", embedding_paths=[tmp_path])


def test_embedding_of_the_wrong_width_is_refused(encoder, tmp_path):
    write_pt(tmp_path / "wide.pt", {"string_to_param": {"*": torch.ones(2, 768)}, "name": "wide"})
    with pytest.raises(EmbeddingError, match="has 768-dimensional vectors; this model's text encoder takes 32"):
        encode(encoder, "a wide view", embedding_paths=[tmp_path])


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"clip_l": torch.ones(1, 768), "clip_g": torch.ones(1, 1280)}, "is an SDXL embedding"),
        ({"string_to_param": {"*": torch.ones(1, 32), "+": torch.ones(1, 32)}}, "has 2 terms"),
        ({"a": torch.ones(1, 32), "b": torch.ones(1, 32)}, "is not a textual-inversion embedding"),
        ({"emb_params": torch.ones(2, 3, 32)}, r"shape \(2, 3, 32\)"),
        ({"emb_params": torch.ones(76, 32)}, "has 76 vectors; a prompt chunk holds at most 75"),
    ],
)
def test_embedding_of_an_unknown_layout_is_refused(encoder, tmp_path, state, message):
    write_pt(tmp_path / "odd.pt", state)
    with pytest.raises(EmbeddingError, match=message):
        encode(encoder, "odd", embedding_paths=[tmp_path / "odd.pt"])


class CreatesFile:
    """Unpickling this runs `open(path, "w")`: a stand-in for any code hidden in a .pt file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_embedding_with_code_is_refused_without_running_it(encoder, tmp_path):
    marker = tmp_path / "code-ran"
    with open(tmp_path / "evil.pt", "wb") as file:
        pickle.dump({"string_to_param": {"*": CreatesFile(marker)}}, file)
    with open(tmp_path / "evil-zip.pt", "wb") as file:
        torch.save({"string_to_param": {"*": CreatesFile(marker)}}, file)
    marker.unlink(missing_ok=True)  # torch.save pickles without running __reduce__'s result; be sure anyway

    with pytest.raises(EmbeddingError, match="Refused embedding .*could run code .*io.open was not an allowed global"):
        encode(encoder, "evil-zip", embedding_paths=[tmp_path / "evil-zip.pt"])
    with pytest.raises(EmbeddingError, match="Cannot read embedding .*Unsupported operand .*nothing in it was run"):
        encode(encoder, "evil", embedding_paths=[tmp_path / "evil.pt"])
    assert not marker.exists()


def test_old_a1111_parameter_dict_files_load(encoder, tmp_path):
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.ones(1, 32))})
    write_pt(tmp_path / "legacy.pt", {"string_to_param": params, "name": "legacy"})
    assert encode(encoder, "legacy", embedding_paths=[tmp_path]).embeddings[0].vectors.shape == (1, 32)


def test_untriggered_broken_file_in_a_folder_is_not_read(encoder, tmp_path, tiny_embeddings):
    (tmp_path / "broken.pt").write_bytes(b"junk")
    encode(encoder, "a cat", embedding_paths=[tmp_path])


# --- clip skip where it does not apply ---


def test_clip_skip_beyond_the_encoder_is_refused(encoder):
    with pytest.raises(InvalidInputError, match="clip_skip 4 does not fit .* it takes 1 to 3"):
        encode(encoder, "a cat", clip_skip=4)


def test_clip_skip_on_sd2_is_refused():
    encoder = OpenCLIPTextEncoder(width=32, layers=2, heads=4, output_dim=32)
    with pytest.raises(InvalidInputError, match="its layer is fixed, use clip_skip 1"):
        encode(encoder, "a cat", clip_skip=2)
