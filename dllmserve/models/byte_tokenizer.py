"""Byte-level tokenizers with a model family's special tokens and chat template: the tokenizer
of the tiny test checkpoints (`dllmserve.testing.tiny_models`) and of random-weight shapes
(`dllmserve.models.shapes.shape_tokenizer`)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

LLADA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
DREAM_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLADA_SPECIALS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|mdm_mask|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
DREAM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
# LLaDA2: EOS and the mask; turns are <role>NAME</role>, no end-of-turn token
LLADA2_SPECIALS = ["<|endoftext|>", "<|mask|>", "<role>", "</role>"]
LLADA2_CHAT_TEMPLATE = (
    "{% for m in messages %}<role>{{ m['role'] | upper }}</role>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}"
)


def build_byte_tokenizer(specials: list[str]) -> tuple[Tokenizer, dict[str, int]]:
    """A byte-level tokenizer: 256 byte tokens, then the special tokens in order."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    ids = {s: tok.token_to_id(s) for s in specials}
    return tok, ids
