"""OpenAI's gpt2-xl (1558M parameters) scored on every token of a GPT-2 BPE val split.

    python train.py config/eval_gpt2_xl.py                       # the FineWeb-Edu val shard
    python train.py config/eval_gpt2_xl.py --dataset=shakespeare # python prepare.py --tokenizer gpt2
"""
init_from = "gpt2-xl"
eval_only = True
dataset = "fineweb_edu10B"
batch_size = 8  # windows of the model's 1,024 tokens
