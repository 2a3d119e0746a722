"""Fine-tune OpenAI's GPT-2 (124M) on Tiny Shakespeare, in GPT-2 BPE tokens.

    python prepare.py --tokenizer gpt2 && python train.py config/finetune_shakespeare.py
    python sample.py --out_dir out-shakespeare --start "ROMEO:"

The pretrained model already knows English; a few steps at a small, constant
learning rate move it toward Shakespeare without overwriting what it knows (the
recipe of nanoGPT's finetune_shakespeare, scaled down for a CPU). Each step is
2,048 tokens through 124M parameters, about 1.5 TFLOP (6 per parameter per
token): over a minute on two CPU cores.
"""
out_dir = "out-shakespeare"
dataset = "shakespeare"  # python prepare.py --tokenizer gpt2
init_from = "gpt2"  # or a local model.safetensors file or folder; gpt2-medium, -large, -xl need their shape below

# gpt2's shape. A start from pretrained weights takes it from them; --init_from=resume checks it.
n_layer = 12
n_head = 12
n_embd = 768
activation = "gelu_tanh"
block_size = 256  # GPT-2 reads 1024 tokens; the position table is cropped, so each step costs a quarter
dropout = 0.1  # what GPT-2 was trained with

eval_interval = 10
eval_iters = 10
log_interval = 1
checkpoint_interval = 10

batch_size = 4
gradient_accumulation_steps = 2  # 4 x 2 x 256 = 2,048 tokens per step
max_iters = 20

learning_rate = 3e-5
decay_lr = False  # constant: too few steps for a schedule to matter
