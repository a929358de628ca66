"""Tokenizers are read as data: InternLM2's sentencepiece tokenizer without its remote code, and clear errors for
broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmmamba_bench.tokenizer import InternLM2Tokenizer, TokenizerFileError, load_tokenizer

CORPUS = ["the cat sat on the mat", "what colour is the square", "answer with a single word",
          "Describe the image specifically.", "是一个有用无害的人工智能助手", "Yes No A B C D 0 1 2 3"]
ADDED = ("<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>")
PROMPTS = ["<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nthe cat sat<|im_end|>\n<|im_start|>assistant\n",
           "what colour  is the square?", " leading space", "the<|im_end|>cat", "是一个有用 Yes", ""]


@pytest.fixture(scope="module")
def internlm2_dir(tmp_path_factory) -> Path:
    """A directory laid out like a released one: a sentencepiece model whose vocabulary holds the chat markers (as
    InternLM2's does), the image tokens added after it, tokenizer_config.json, and a remote-code file."""
    spm = pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("internlm2")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "m"), vocab_size=60,
                                   user_defined_symbols=list(ADDED[:2]), bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    out = root / "ckpt"
    out.mkdir()
    shutil.copy(root / "m.model", out / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    n = sp.get_piece_size()
    ids = {ADDED[0]: sp.piece_to_id(ADDED[0]), ADDED[1]: sp.piece_to_id(ADDED[1]), "<img>": n, "</img>": n + 1,
           "<IMG_CONTEXT>": n + 2}
    config = {"add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "added_tokens_decoder": {str(i): {"content": c, "special": True, "lstrip": False, "rstrip": False,
                                                "normalized": False, "single_word": False} for c, i in ids.items()},
              "additional_special_tokens": list(ADDED),
              "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    # remote code that would leave a mark if anything ran it
    (out / "tokenization_internlm2.py").write_text(f"open({str(root / 'EXECUTED')!r}, 'w').write('ran')\n")
    return out


def test_internlm2_tokenizer_matches_transformers_sentencepiece_rules(internlm2_dir):
    from transformers import AddedToken
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    ours = load_tokenizer(internlm2_dir)
    assert isinstance(ours, InternLM2Tokenizer)
    # the reference: transformers' own slow sentencepiece tokenizer (legacy mode = what InternLM2's code does)
    ref = SentencePieceBackend(vocab_file=str(internlm2_dir / "tokenizer.model"), legacy=True, bos_token="<s>",
                               eos_token="</s>", unk_token="<unk>")
    ref.add_tokens([AddedToken(c, special=True, normalized=False) for c in ADDED], special_tokens=True)
    for text in PROMPTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    assert ours.eos_token_id == ref.convert_tokens_to_ids("<|im_end|>")
    assert ours.token_to_id("<IMG_CONTEXT>") == ref.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert ours.token_to_id("not-a-piece") is None
    assert ours.bos_token_id == 1 and ours.add_bos_token
    assert not (internlm2_dir.parent / "EXECUTED").exists()  # the checkpoint's Python never ran


def test_convert_does_not_copy_code_into_the_student(internlm2_dir, tmp_path):
    from mmmamba_bench.checkpoint import SIDE_FILES

    assert not [f for f in SIDE_FILES if f.endswith(".py")]


def test_broken_tokenizer_files_are_named(internlm2_dir, tmp_path):
    bad_json = tmp_path / "a"
    bad_json.mkdir()
    (bad_json / "tokenizer.json").write_text('{"model": {"vocab": {1: 2}}}')  # what used to give "key must be a string"
    with pytest.raises(TokenizerFileError, match=r"a/tokenizer.json: not a valid tokenizer.json"):
        load_tokenizer(bad_json)
    bad_model = tmp_path / "b"
    shutil.copytree(internlm2_dir, bad_model)
    (bad_model / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(TokenizerFileError, match=r"b/tokenizer.model: not a readable sentencepiece model"):
        load_tokenizer(bad_model)
    bad_config = tmp_path / "c"
    shutil.copytree(internlm2_dir, bad_config)
    (bad_config / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerFileError, match=r"c/tokenizer_config.json: not valid JSON"):
        load_tokenizer(bad_config)


def test_released_prompt_starts_with_bos_and_the_system_turn(internlm2_dir):
    """The processor of a released-layout checkpoint builds what the released chat() tokenises: BOS, then the
    internlm2-chat prompt with InternVL's system message."""
    from mmmamba_bench.config import make_config
    from mmmamba_bench.preprocessing import chat_prompt
    from mmmamba_bench.processor import Processor

    tok = load_tokenizer(internlm2_dir)
    config = make_config(hidden=64, heads=4, kv_heads=2, emb_layers=1, llm_layers=1, intermediate=128,
                         vocab=tok.vocab_size, image_size=56, patch_size=14)
    enc = Processor(tok, config).encode_prompt("the cat")
    assert enc.input_ids == [tok.bos_token_id] + tok.encode(chat_prompt("the cat"))
    assert enc.input_ids[1] == tok.token_to_id("<|im_start|>")
