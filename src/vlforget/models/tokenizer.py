"""A word-level tokenizer for the built-in model, built locally from the benchmark's texts.

Lower-cased words; punctuation (`?`, `.`, `,`, ...) are tokens of their own. Decoding
joins words with spaces and removes the space before punctuation, so every sentence
of the benchmark round-trips exactly ("sorry, i cannot identify stars.").
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS, IMAGE, SEP = "<pad>", "<unk>", "<s>", "</s>", "<image>", "<sep>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, IMAGE, SEP]


def _pre_tokenizer():
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def build_vocabulary(texts: list[str]) -> list[str]:
    """Special tokens first, then every word/punctuation of `texts` in sorted order."""
    pre, norm = _pre_tokenizer(), normalizers.Lowercase()
    words: set[str] = set()
    for text in texts:
        words.update(piece for piece, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return SPECIAL_TOKENS + sorted(words - set(SPECIAL_TOKENS))


def build_tokenizer(texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer for `texts` (default: `vlforget.data.benchmark.all_texts()`)."""
    if texts is None:
        from vlforget.data.benchmark import all_texts

        texts = all_texts()
    vocab = {word: i for i, word in enumerate(build_vocabulary(texts))}
    core = Tokenizer(WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = _pre_tokenizer()
    # WordPiece's decoder with no "##" pieces = join with spaces; cleanup=True drops the
    # space before . , ? ! (and handles 's, n't).
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        sep_token=SEP,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=128,
    )
