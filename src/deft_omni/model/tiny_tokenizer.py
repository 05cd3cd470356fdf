"""A tiny byte-level BPE tokenizer standing in for OmniGen's Phi-3 tokenizer in tests.

OmniGen's real tokenizer is the Phi-3 (Llama SentencePiece) one: ``<unk>`` 0, ``<s>`` 1,
``</s>`` 2, BOS prepended on every encode. This one keeps those three ids and that
behaviour so code written against it also runs against the real checkpoint.

Padding: the tiny transformer is built with ``pad_token_id=0`` (its embedding's
``padding_idx``), so the pad token must be id 0. We reuse ``<unk>`` (id 0) as pad rather
than adding a ``<pad>`` token: a byte-level BPE covers every byte, so ``<unk>`` is never
produced by encoding and sharing the id is harmless, while ``<s>``/``</s>`` keep their
Llama ids 1 and 2. Padding side is left, as OmniGen's processor pads text on the left.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

# Order fixes the ids: the BPE trainer gives special tokens the first ids, in this order.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<unk>",  # 0, also the pad token (see module docstring)
    "<s>",  # 1, BOS, as in Phi-3
    "</s>",  # 2, EOS, as in Phi-3
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|diffusion|>",
)
TINY_TOKENIZER_VOCAB_SIZE = 400

# Fixed training text: the OmniGen prompt template plus a few captions, so that the
# template words get real merges (short token sequences) rather than single bytes.
_TRAINING_SENTENCES: tuple[str, ...] = (
    "Generate an image according to the following instructions",
    "Generate an image according to the following instructions\n",
    "a photo of a dog sitting on the grass",
    "a photo of a cat sleeping on a red sofa",
    "a photo of sks dog in the snow",
    "a painting of a mountain lake at sunset",
    "a high-quality image of a wooden table",
    "a depth map of a living room",
    "a canny edge map of a city street",
    "the object in <img><|image_1|></img> placed on a beach",
    "replace the background of <img><|image_1|></img> with a forest",
    "the woman in <img><|image_1|></img> and the man in <img><|image_2|></img>",
    "a grid with 2 rows and 3 columns of images",
    "<cfg>",
    "a red car parked next to a blue house",
    "two people walking a dog in the park",
    "a close-up photo of a flower with water drops",
    "an astronaut riding a horse on the moon",
    "a bowl of fruit with apples, oranges and bananas",
    "a black and white sketch of an old building",
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Train and wrap the tiny byte-level BPE tokenizer (deterministic, offline).

    Returns a ``PreTrainedTokenizerFast`` with bos ``<s>`` (1), eos ``</s>`` (2),
    unk and pad ``<unk>`` (0), left padding, and a post-processor that prepends BOS.
    Its vocabulary (< 512) fits the tiny transformer's embedding table.
    """
    # Imported here so that importing deft_omni.model does not pull in the trainer.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_TOKENIZER_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        # Seeding with the full byte alphabet guarantees any text encodes without <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_TRAINING_SENTENCES), trainer=trainer)
    for i, name in enumerate(SPECIAL_TOKENS[:3]):
        if tok.token_to_id(name) != i:  # the ids other code relies on
            raise RuntimeError(f"tiny tokenizer: {name!r} got id {tok.token_to_id(name)}, expected {i}")
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s> $B",
        special_tokens=[("<s>", bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        padding_side="left",
        model_max_length=4096,
    )
