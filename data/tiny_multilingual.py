"""A tiny open_clip model whose text tower is a Hugging Face XLM-RoBERTa (seeded random weights).

It has the layout of open_clip's `xlm-roberta-base-ViT-B-32`, at a size tests can build in
seconds: the text tower's config and a tokenizer trained here (with `tokenizers`, on mixed
Chinese and English text) are saved in Hugging Face layout to a local folder, which the model
config names (`hf_model_name`, `hf_tokenizer_name`); the weights go to a checkpoint file. It
loads through the same code path a user's weights take: `--model CONFIG.json --pretrained FILE`.
Nothing is downloaded.

    python data/tiny_multilingual.py OUT_DIR [tiny|base]   # OUT_DIR/{TinyXlmrCLIP.json, TinyXlmrCLIP.pt, xlmr/}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Training text for the tokenizer: captions in English and Chinese (simplified), with the
# words the tests query (dogs, parks, circles, colours).
CORPUS = [
    "a dog in a park", "a dog running in the park", "公园里的狗", "狗在公园里跑", "一只狗在公园里",
    "a red circle", "一个红色的圆", "红色的圆圈", "a blue square", "蓝色的正方形", "a green star", "绿色的星星",
    "a cat on a sofa", "沙发上的猫", "a yellow star", "黄色的星星", "the sky over the sea", "大海上的天空",
    "a birthday cake", "生日蛋糕", "fireworks over a city", "城市上空的烟花", "a car at night", "夜里的汽车",
    "two people talking in a kitchen", "两个人在厨房里说话", "snow on the mountains", "山上的雪",
    "children playing football", "孩子们在踢足球", "a man riding a bicycle", "一个男人骑自行车",
    # the bench's queries (cliptool.bench), so that they come out in whole words, as XLM-R's own
    # 250,002-piece vocabulary has them, and a query costs as many tokens as it would there
    "a dog running on a beach", "一只狗在海滩上跑", "a red car at night", "two people talking in a kitchen",
    "snow on mountains", "a cat", "fireworks over a city skyline", "warm up",
]


def train_tokenizer(folder: Path, vocab_size: int = 600) -> int:
    """An XLM-R style tokenizer (<s> and </s> around the text, pad 1) saved in HF layout; its size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in XLM-R (pad 1, eos 2)
    # BPE rather than XLM-R's unigram model: on a corpus this small the unigram trainer keeps
    # ~130 pieces and splits English words into letters; BPE keeps the corpus's words whole.
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    # transformers' own XLM-R tokenizer class rebuilds a unigram model: the generic fast class
    # keeps the trained tokenizer.json as it is
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=512)
    fast.save_pretrained(folder)
    return tok.get_vocab_size()


# XLM-RoBERTa's text tower at two sizes: tiny for tests; base as in xlm-roberta-base-ViT-B-32
# (its 250,002-token vocabulary, 12 layers of width 768), for the bench.
SIZES = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
             "max_position_embeddings": 80},
    "base": {"vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 514},
}
VISION = {
    "tiny": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "pool_type": "avg"},
    "base": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
}


def write_tiny_multilingual_model(out_dir: Path, seed: int = 0, size: str = "tiny") -> tuple[Path, Path]:
    """(config JSON, checkpoint) of the XLM-R CLIP of `size`, written once into `out_dir`."""
    from transformers import XLMRobertaConfig

    out_dir = Path(out_dir).resolve()
    name = "TinyXlmrCLIP" if size == "tiny" else "XlmrBaseRandomCLIP"
    config, ckpt, hf_dir = out_dir / f"{name}.json", out_dir / f"{name}.pt", out_dir / "xlmr"
    if config.is_file() and ckpt.is_file():
        return config, ckpt
    hf_dir.mkdir(parents=True, exist_ok=True)
    vocab = train_tokenizer(hf_dir)
    dims = {"vocab_size": vocab, **SIZES[size]}
    XLMRobertaConfig(**dims, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                     layer_norm_eps=1e-5).save_pretrained(hf_dir)
    cfg = {"embed_dim": 64 if size == "tiny" else 512, "vision_cfg": VISION[size],
           "text_cfg": {"hf_model_name": str(hf_dir), "hf_tokenizer_name": str(hf_dir),
                        "hf_pooler_type": "mean_pooler", "hf_proj_type": "mlp"}}
    config.write_text(json.dumps(cfg, indent=2))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_samples import save_seeded_model

    return save_seeded_model(config, ckpt, seed, pretrained_text=False)


if __name__ == "__main__":
    print(*write_tiny_multilingual_model(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-multilingual"),
                                         size=sys.argv[2] if len(sys.argv) > 2 else "tiny"))
