"""Text encoders that turn prompts into the conditioning the UNet cross-attends to.

- `CLIPTextEncoder` (SD 1.x): OpenAI CLIP ViT-L/14 text tower as a Hugging Face `CLIPTextModel`; its state-dict
  keys are the checkpoint's `cond_stage_model.transformer.text_model.*`.
- `OpenCLIPTextEncoder` (SD 2.x): OpenCLIP ViT-H/14 text tower; its state-dict keys are the checkpoint's
  `cond_stage_model.model.*`.

Both take the CompVis config params (`cond_stage_config.params`) as constructor arguments and compute exactly
what CompVis `FrozenCLIPEmbedder` / Stability `FrozenOpenCLIPEmbedder` compute.
"""

import math

import torch
from open_clip.transformer import LayerNorm, Transformer
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from imaginairy.modules.tokenizer import CONTEXT_LENGTH, SD1_PAD_TOKEN, SD2_PAD_TOKEN, tokenize

CLIP_LAYERS = ("last", "hidden")
OPENCLIP_LAYERS = ("last", "penultimate")

# Older transformers versions saved this buffer; the SD 1.x checkpoints written with them still carry it.
LEGACY_POSITION_IDS_KEY = "transformer.text_model.embeddings.position_ids"


def prepare_position_ids_for_load(module, state_dict, prefix, *unused_load_args):
    """Load-state-dict pre-hook of `CLIPTextEncoder`: position ids come from the model, never from the file.

    Drops the legacy `position_ids` key (some merged checkpoints carry damaged, float-rounded copies), and gives an
    encoder built on the meta device real position ids, since that buffer is not part of the state dict.
    """
    state_dict.pop(prefix + LEGACY_POSITION_IDS_KEY, None)
    embeddings = module.transformer.text_model.embeddings
    if embeddings.position_ids.is_meta:
        embeddings.position_ids = torch.arange(embeddings.position_ids.shape[1]).unsqueeze(0)


class CLIPTextModelHolder(nn.Module):
    """Holds a `CLIPTextModel` as `text_model`, keeping the checkpoint's `transformer.text_model.*` names.

    transformers 5 flattened `CLIPTextModel` (its keys no longer start with `text_model.`), so the name is kept here.
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.text_model = CLIPTextModel(config)


class CLIPTextEncoder(nn.Module):
    """SD 1.x text encoder: prompts -> CLIP hidden states [batch, 77, hidden_size].

    layer="last" returns the final-layer-norm output (`last_hidden_state`); layer="hidden" returns
    `hidden_states[layer_idx]` without the final layer norm, as CompVis FrozenCLIPEmbedder does
    (layer_idx=-2 is the penultimate layer, "clip skip").

    State dicts load strictly with or without the legacy `transformer.text_model.embeddings.position_ids` key, and
    an encoder built on the meta device is complete after `load_state_dict(..., assign=True)`.
    """

    pad_token = SD1_PAD_TOKEN

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        max_position_embeddings: int = CONTEXT_LENGTH,
        vocab_size: int = 49408,
        hidden_act: str = "quick_gelu",
        layer: str = "last",
        layer_idx: int | None = None,
        version=None,
        device=None,
        max_length=None,
        freeze=None,
    ):
        super().__init__()
        if layer not in CLIP_LAYERS:
            raise ValueError(f"CLIP text encoder layer must be one of {CLIP_LAYERS}, not {layer!r}.")
        if layer == "hidden" and (layer_idx is None or abs(layer_idx) > num_hidden_layers):
            raise ValueError(
                f"CLIP text encoder layer='hidden' needs layer_idx between -{num_hidden_layers} "
                f"and {num_hidden_layers}, got {layer_idx!r}."
            )
        self.layer = layer
        self.layer_idx = layer_idx
        self.context_length = max_position_embeddings
        config = CLIPTextConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            vocab_size=vocab_size,
            hidden_act=hidden_act,
            attn_implementation="sdpa",
        )
        self.transformer = CLIPTextModelHolder(config)
        self.register_load_state_dict_pre_hook(prepare_position_ids_for_load)

    def encode_tokens(self, token_ids: torch.LongTensor) -> torch.Tensor:
        """Token ids [batch, 77] -> hidden states [batch, 77, hidden_size]."""
        want_hidden = self.layer == "hidden"
        outputs = self.transformer.text_model(input_ids=token_ids, output_hidden_states=want_hidden)
        if want_hidden:
            return outputs.hidden_states[self.layer_idx]
        return outputs.last_hidden_state

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = self.transformer.text_model.embeddings.token_embedding.weight.device
        token_ids = tokenize(texts, pad_token=self.pad_token, max_length=self.context_length)
        return self.encode_tokens(token_ids.to(device))

    @property
    def token_embedding(self) -> nn.Embedding:
        """The table of input token vectors (where textual-inversion vectors go)."""
        return self.transformer.text_model.embeddings.token_embedding

    @property
    def max_clip_skip(self) -> int:
        """The largest clip skip this encoder takes: every layer with layer="last", none with a fixed hidden layer."""
        return len(self.transformer.text_model.encoder.layers) if self.layer == "last" else 1

    def encode_token_embeddings(self, token_embeddings: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        """Input token vectors [batch, 77, hidden_size] (the token table's rows, or textual-inversion vectors) ->
        hidden states, as `encode_tokens` computes them from ids.

        `clip_skip` (A1111's "Clip skip", layer="last" only): 1 is the last layer; N > 1 stops N - 1 layers before
        the end, i.e. `hidden_states[-N]`, then applies the final layer norm, as A1111 and diffusers do.
        """
        if not 1 <= clip_skip <= self.max_clip_skip:
            raise ValueError(f"clip_skip must be from 1 to {self.max_clip_skip} for this encoder, got {clip_skip}.")
        text_model = self.transformer.text_model
        layers = text_model.encoder.layers
        if self.layer == "hidden":
            layers_run = self.layer_idx % (len(layers) + 1)  # hidden_states[i] is the output of layer i
        else:
            layers_run = len(layers) - (clip_skip - 1)
        x = text_model.embeddings(inputs_embeds=token_embeddings)
        length = x.shape[1]  # causal: a token attends to itself and earlier ones (boolean, so any autocast dtype)
        mask = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()[None, None]
        for layer in layers[:layers_run]:
            x = layer(x, mask)
        return x if self.layer == "hidden" else text_model.final_layer_norm(x)


class OpenCLIPTextTower(nn.Module):
    """The text half of an OpenCLIP model, named exactly like the checkpoint's `cond_stage_model.model.*`.

    `text_projection` and `logit_scale` are unused for conditioning; they exist so real checkpoints load strictly.
    """

    def __init__(self, width, layers, heads, context_length, vocab_size, output_dim, mlp_ratio):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width=width, layers=layers, heads=heads, mlp_ratio=mlp_ratio)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.token_embedding.embedding_dim**-0.5)
        nn.init.constant_(self.logit_scale, math.log(1 / 0.07))


def causal_attention_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask [length, length]: 0 where a token may attend (itself and earlier tokens), -inf after."""
    return torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu_(1)


class OpenCLIPTextEncoder(nn.Module):
    """SD 2.x text encoder: prompts -> OpenCLIP hidden states [batch, 77, width].

    As Stability's FrozenOpenCLIPEmbedder: token + positional embedding, the residual blocks under a causal mask
    (all of them for layer="last", all but the last for layer="penultimate"), then the final layer norm.
    """

    pad_token = SD2_PAD_TOKEN
    max_clip_skip = 1  # the layer is fixed by the model config ("penultimate" for SD 2.x)

    def __init__(
        self,
        width: int = 1024,
        layers: int = 24,
        heads: int = 16,
        context_length: int = CONTEXT_LENGTH,
        vocab_size: int = 49408,
        output_dim: int = 1024,
        mlp_ratio: float = 4.0,
        layer: str = "penultimate",
        arch=None,
        version=None,
        device=None,
        max_length=None,
        freeze=None,
    ):
        super().__init__()
        if layer not in OPENCLIP_LAYERS:
            raise ValueError(f"OpenCLIP text encoder layer must be one of {OPENCLIP_LAYERS}, not {layer!r}.")
        self.layer = layer
        self.context_length = context_length
        self.model = OpenCLIPTextTower(width, layers, heads, context_length, vocab_size, output_dim, mlp_ratio)

    def encode_tokens(self, token_ids: torch.LongTensor) -> torch.Tensor:
        """Token ids [batch, 77] -> hidden states [batch, 77, width]."""
        return self.encode_token_embeddings(self.model.token_embedding(token_ids))

    @property
    def token_embedding(self) -> nn.Embedding:
        """The table of input token vectors (where textual-inversion vectors go)."""
        return self.model.token_embedding

    def encode_token_embeddings(self, token_embeddings: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        """Input token vectors [batch, 77, width] -> hidden states; this encoder's layer is fixed (clip_skip 1)."""
        if clip_skip != 1:
            raise ValueError(f"clip_skip must be 1 for the OpenCLIP encoder, got {clip_skip}.")
        model = self.model
        length = token_embeddings.shape[1]
        x = token_embeddings + model.positional_embedding[:length]
        mask = causal_attention_mask(length, x.dtype, x.device)
        blocks = model.transformer.resblocks
        if self.layer == "penultimate":
            blocks = blocks[:-1]
        for block in blocks:
            x = block(x, attn_mask=mask)
        return model.ln_final(x)

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = self.model.token_embedding.weight.device
        token_ids = tokenize(texts, pad_token=self.pad_token, max_length=self.context_length)
        return self.encode_tokens(token_ids.to(device))
