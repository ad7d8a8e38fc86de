"""A tiny Whisper model in faster-whisper's (CTranslate2) format, with seeded random weights.

For the whisper engine's code path, not its accuracy (it transcribes nothing sensible): a
transformers `WhisperForConditionalGeneration` of one layer a side and width 64, with a
byte-level tokenizer made here that holds Whisper's special tokens (start of transcript, the
languages, the tasks, no-timestamps and the 1501 timestamps), converted with CTranslate2's
Transformers converter. Needs torch, transformers and ctranslate2; nothing is downloaded.

    python data/tiny_whisper.py OUT_DIR      # OUT_DIR/{model.bin, config.json, tokenizer.json, vocabulary.json}
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

# Whisper's language tokens, in its order
LANGUAGES = ("en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr "
             "bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn "
             "yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw "
             "su yue").split()
SPECIALS = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{lang}|>" for lang in LANGUAGES]
            + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
               "<|notimestamps|>"] + [f"<|{i * 0.02:.2f}|>" for i in range(1501)])


def write_tiny_whisper(out: Path) -> Path:
    """Writes the model folder `out` (replaced if there) and returns it."""
    import torch
    from ctranslate2.converters import TransformersConverter
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIALS)
    eot, sot = tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id("<|startoftranscript|>")
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=tokenizer.get_vocab_size(), num_mel_bins=80, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, d_model=64, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448,
                           pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
                           suppress_tokens=[], begin_suppress_tokens=[])
    model = WhisperForConditionalGeneration(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save(str(Path(tmp) / "tokenizer.json"))
        if out.exists():
            shutil.rmtree(out)
        TransformersConverter(tmp, copy_files=["tokenizer.json"]).convert(str(out), force=True)
    return out


if __name__ == "__main__":
    print(write_tiny_whisper(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-whisper")))
