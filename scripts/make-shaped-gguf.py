#!/usr/bin/env python3
"""Write a llama GGUF of a real model's shapes with random Q4_0 weights, for benchmarks.

    make-shaped-gguf.py {7b|1b} OUT.gguf [--seed N]

Speed and memory depend on a model's shapes and quantization, not on its weight values,
and no 7B model can be fetched here. So the benchmark generates one:

  7b  LLaMA-2-7B shapes: 32 layers, 4096 wide, 11008 feed-forward, 32 heads (no GQA),
      32,000-token vocabulary; every matrix Q4_0, norms F32; about 3.8 GB.
  1b  TinyLlama-1.1B shapes: 22 layers, 2048 wide, 5632 feed-forward, 32 heads with
      4 key/value heads; about 0.6 GB.

The vocabulary is a SentencePiece-style one (byte fallback tokens, then letter pieces
with descending scores) and the chat template is ChatML, so both llama-server and
`leasehold serve` tokenize prompts and render chats as for a real model. The answers are
noise. Q4_0 scales are chosen so that activations keep unit scale through each matrix.

Needs the `gguf` and `numpy` PyPI packages (scripts/bench.sh installs them in its own
virtualenv). Writes OUT.gguf.partial, then renames it.
"""
import argparse
import itertools
import os
import string
import sys

import numpy as np
import gguf

SHAPES = {
    "7b": dict(layers=32, width=4096, ffn=11008, heads=32, kv_heads=32, vocab=32000, ctx=4096),
    "1b": dict(layers=22, width=2048, ffn=5632, heads=32, kv_heads=4, vocab=32000, ctx=2048),
}
Q4_0_BLOCK = 32  # values per block
Q4_0_BYTES = 18  # f16 scale + 16 bytes of nibbles


def vocabulary(n):
    """<unk>, <s>, </s>, 256 byte tokens, then letter pieces (with and without the
    word-start mark) in order of length, so that every word has a tokenization."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    seen = set(tokens)
    alphabet = string.ascii_lowercase
    singles = list(alphabet + string.ascii_uppercase + string.digits + string.punctuation)

    def pieces():
        for c in singles:
            yield c
            yield "\u2581" + c
        for length in itertools.count(2):
            for combo in itertools.product(alphabet, repeat=length):
                word = "".join(combo)
                yield "\u2581" + word
                yield word

    for piece in pieces():
        if len(tokens) == n:
            break
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    # Longer pieces score higher, so SentencePiece merges whole words where it can.
    scores = [0.0] * 3 + [-1000.0] * 256 + [float(-i) / n + len(t) for i, t in enumerate(tokens[259:])]
    return tokens, scores, types


def q4_0(rng, rows, cols, fan_in):
    """Random Q4_0 rows: a scale per block so that each output has about unit variance
    for unit-variance inputs ((nibble - 8) * d has variance about 21.25 d^2)."""
    assert cols % Q4_0_BLOCK == 0
    blocks = rows * cols // Q4_0_BLOCK
    data = rng.integers(0, 256, size=(blocks, Q4_0_BYTES), dtype=np.uint8)
    d = 1.0 / np.sqrt(21.25 * fan_in)
    scales = (d * rng.uniform(0.8, 1.2, size=blocks)).astype(np.float16)
    data[:, 0:2] = scales.view(np.uint8).reshape(blocks, 2)
    return data.reshape(rows, cols // Q4_0_BLOCK * Q4_0_BYTES)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    s = SHAPES[args.shape]
    rng = np.random.default_rng(args.seed)
    partial = args.out + ".partial"

    w = gguf.GGUFWriter(partial, "llama")
    w.add_name(f"leasehold-bench-llama-{args.shape}-random-q4_0")
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["width"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_dimension_count(s["width"] // s["heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_vocab_size(s["vocab"])
    tokens, scores, types = vocabulary(s["vocab"])
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )

    width, ffn, vocab = s["width"], s["ffn"], s["vocab"]
    kv_width = width // s["heads"] * s["kv_heads"]
    q4 = gguf.GGMLQuantizationType.Q4_0
    norm = np.ones(width, dtype=np.float32)
    # (name, rows, cols): a matrix of `rows` outputs over `cols` inputs (GGUF ne0 = cols).
    matrices = [("token_embd.weight", vocab, width), ("output.weight", vocab, width)]
    for i in range(s["layers"]):
        matrices += [
            (f"blk.{i}.attn_q.weight", width, width),
            (f"blk.{i}.attn_k.weight", kv_width, width),
            (f"blk.{i}.attn_v.weight", kv_width, width),
            (f"blk.{i}.attn_output.weight", width, width),
            (f"blk.{i}.ffn_gate.weight", ffn, width),
            (f"blk.{i}.ffn_up.weight", ffn, width),
            (f"blk.{i}.ffn_down.weight", width, ffn),
        ]
    w.add_tensor("output_norm.weight", norm)
    for i in range(s["layers"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
    total = 0
    for name, rows, cols in matrices:
        data = q4_0(rng, rows, cols, cols)
        total += data.nbytes
        w.add_tensor(name, data, raw_dtype=q4)
    print(f"make-shaped-gguf: {args.shape}: {len(matrices)} Q4_0 matrices, {total / 1e9:.2f} GB; writing", file=sys.stderr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=True)
    w.close()
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
