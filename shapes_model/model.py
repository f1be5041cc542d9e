"""The tiny shapes model's parts: Wan2.1's components (diffusers' WanTransformer3DModel, AutoencoderKLWan,
transformers' UMT5 encoder, the flow-matching UniPC scheduler), small, with a word-level tokenizer built
here so that nothing is downloaded."""

from __future__ import annotations

from typing import Any

import torch

from shapes_model.data import COLOURS, DIRECTIONS, SHAPES
from worker import tiny_model

WORDS = (
    *COLOURS,
    *SHAPES,
    *DIRECTIONS,
    *["a", "an", "the", "is", "that", "it", "its", "to", "towards", "toward"],
    *["moving", "moves", "move", "going", "goes", "sliding", "slides"],
    *["on", "in", "of", "and", "from", "across", "dark", "background"],
)
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

# The tiny model's configs, larger where drawing shapes on cue needs it.
TRANSFORMER_CONFIG: dict[str, Any] = {
    **tiny_model.TRANSFORMER_CONFIG,
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "text_dim": 64,
    "freq_dim": 64,
    "ffn_dim": 384,
    "num_layers": 6,
    "rope_max_seq_len": 64,
}
VAE_CONFIG: dict[str, Any] = {**tiny_model.VAE_CONFIG, "base_dim": 16, "dim_mult": [1, 1, 2, 2]}
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    **tiny_model.TEXT_ENCODER_CONFIG,
    "vocab_size": len(WORDS) + 3,
    "d_model": 64,
    "d_ff": 128,
    "num_heads": 4,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
SCHEDULER_CONFIG = tiny_model.SCHEDULER_CONFIG


def build_tokenizer() -> Any:
    """A word-level tokenizer over our vocabulary: lower-cased, punctuation dropped, unknown words to
    ``<unk>``, ``</s>`` appended as T5 does (so even an empty prompt has one token)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate((PAD, EOS, UNK, *WORDS))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex("[^a-z0-9]+"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=512
    )


def build_text_encoder(seed: int) -> Any:
    """UMT5 with random weights, kept frozen: its outputs tell the words apart, the transformer learns
    to read them."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(**TEXT_ENCODER_CONFIG)).eval().requires_grad_(False)


def build_vae(seed: int) -> Any:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**VAE_CONFIG)


def build_transformer(seed: int) -> Any:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**TRANSFORMER_CONFIG)


def build_scheduler() -> Any:
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**SCHEDULER_CONFIG)
