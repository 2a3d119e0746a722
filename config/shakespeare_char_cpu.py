"""A character model of Tiny Shakespeare for a 2-core laptop CPU, a few minutes long.

    python prepare.py && python train.py config/shakespeare_char_cpu.py
"""
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 20
log_interval = 50
checkpoint_interval = 250

batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = max_iters
min_lr = learning_rate / 10
beta2 = 0.99
warmup_iters = 100
